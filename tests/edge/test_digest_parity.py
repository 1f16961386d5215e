"""Digest/feature parity (issue 7): the features the cloud computes from stored digests are the
features the edge computes from the events — one definition per counter, fed by the same signals
(an agent-ordered reset's disconnect is no drop, faults are the incidents detection opened)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Event,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.features import (
    CONNECTOR_FEATURE_NAMES,
    FEATURE_NAMES,
    FeatureBank,
    features_dict,
)
from chargesight.common.messages import Digest, Escalation, EvidenceFrame, SelfResolved
from chargesight.edge.anomaly import AnomalyMonitor
from chargesight.edge.audit import MemoryAudit
from chargesight.edge.config import RecoverySection
from chargesight.edge.digest import DigestCollector
from chargesight.edge.hooks import HookRunner
from chargesight.edge.modelstore import ModelStore
from chargesight.edge.profiles import ProfileRegistry
from chargesight.edge.recovery import FakeClock, RecoveryEngine

T0 = datetime(2026, 9, 1, tzinfo=UTC)
RATED = 150_000.0


def _cloud_features(cloud: FeatureBank, digest: Digest, cps: list[str]) -> np.ndarray:
    cloud.add_digest(Digest.model_validate_json(digest.to_json()))  # through the wire format
    return np.array([cloud.window(cp).features() for cp in cps])


def _hour(cp: str, h: int, sag: float) -> list[Event]:
    at = T0 + timedelta(hours=h)
    tx = f"{cp}-{h}"
    power = RATED * 0.93 * (1 - sag) + (h % 5) * 13.7
    ev: list[Event] = [
        ConnectorStatus(cp, at + timedelta(minutes=1), 1, "Preparing"),
        TransactionStarted(cp, at + timedelta(minutes=2), 1, tx, meter_start_wh=1000.0 * h),
        MeterSample(cp, at + timedelta(minutes=10), 1, tx, {"Power.Active.Import": power}),
        MeterSample(cp, at + timedelta(minutes=20), 1, tx, {"Temperature": 30.0 + 3 * sag}),
        # 1.6: StopTransaction names no connector; its samples come as connector 0
        MeterSample(cp, at + timedelta(minutes=30), 0, tx, {"Power.Active.Import": power - 50}),
        TransactionEnded(
            cp,
            at + timedelta(minutes=40),
            tx,
            None,
            meter_stop_wh=1000.0 * h + 512.3,
            reason="PowerLoss" if h % 7 == 3 else "EVDisconnected",
        ),
        ConnectorStatus(cp, at + timedelta(minutes=41), 1, "Available"),
    ]
    return ev


def test_a_digest_carries_the_edge_windows_so_cloud_features_equal_edge_features() -> None:
    """Through the digest builder the engine feeds: faults it opened, a reset it ordered and the
    reboot's disconnect, a real drop, a failed start, a self-resolved incident, early ends."""
    cps = ["cp-ok", "cp-psu"]
    d = DigestCollector("site-1", T0)
    cloud = FeatureBank()
    for cp in cps:
        d.feed(ConnectionUp(cp, T0, "1.6"))
        d.feed(Boot(cp, T0, "Voltix", "VX-DC150", firmware="5.2.3"))
        d.set_rated_power(cp, RATED)
        d.feed(ConnectorStatus(cp, T0, 1, "Available"))
        d.feed(ConnectorStatus(cp, T0, 2, "Available"))
    digests = []
    for h in range(24 * 9):
        for cp in cps:
            psu = cp == "cp-psu"
            for e in _hour(cp, h, 0.3 * h / (24 * 9) if psu else 0.0):
                d.feed(e)
            at = T0 + timedelta(hours=h, minutes=45)
            if h % 11 == 5:  # a fault on connector 2 the engine opens an incident for ...
                d.feed(ConnectorStatus(cp, at, 2, "Faulted", "OverCurrentFailure"))
                d.fault_opened(cp, "overcurrent")
                # ... reported again: the same incident, no second fault
                d.feed(ConnectorStatus(cp, at + timedelta(seconds=5), 2, "Faulted", "Other"))
                # the engine resets the charge point, which reboots: no drop
                d.reset_sent(cp)
                d.feed(ConnectionDown(cp, at + timedelta(minutes=1)), ordered_reboot=True)
                d.feed(ConnectionUp(cp, at + timedelta(minutes=3), "1.6"))
                d.feed(Boot(cp, at + timedelta(minutes=3), "Voltix", "VX-DC150", "5.2.3"))
                d.feed(ConnectorStatus(cp, at + timedelta(minutes=4), 2, "Available"))
                d.self_resolved(
                    SelfResolved(
                        incident_id=f"i-{cp}-{h}",
                        charge_point_id=cp,
                        connector_id=2,
                        scope="connector",
                        kind="fault",
                        fault_code="OverCurrentFailure",
                        category="overcurrent",
                        started_at=at,
                        ended_at=at + timedelta(minutes=4),
                        fixed_by="soft_reset",
                    )
                )
            if h % 13 == 7:  # a real drop
                d.feed(ConnectionDown(cp, at + timedelta(minutes=6)))
                d.feed(ConnectionUp(cp, at + timedelta(minutes=7), "1.6"))
            if h % 17 == 2:  # an authorised start that never began
                d.feed(ConnectorStatus(cp, at + timedelta(minutes=8), 2, "Preparing"))
                d.feed(ConnectorStatus(cp, at + timedelta(minutes=9), 2, "Available"))
                d.session_failed(cp)
        digest = d.cut(T0 + timedelta(hours=h + 1))
        digests.append(digest)
        edge = np.array([d.bank.window(cp).features() for cp in cps])
        cloud_rows = _cloud_features(cloud, digest, cps)
        assert np.array_equal(edge, cloud_rows), f"hour {h}: edge {edge} != cloud {cloud_rows}"

    total = {
        k: sum(getattr(c, k) for dg in digests for c in dg.chargers if c.charge_point_id == "cp-ok")
        for k in ("disconnects", "faults", "resets", "sessions_failed", "sessions_ended_early")
    }
    hours = 24 * 9
    assert total == {
        "disconnects": len([h for h in range(hours) if h % 13 == 7]),  # the reboots are not drops
        "faults": len([h for h in range(hours) if h % 11 == 5]),  # one per incident
        "resets": len([h for h in range(hours) if h % 11 == 5]),
        "sessions_failed": len([h for h in range(hours) if h % 17 == 2]),
        "sessions_ended_early": len([h for h in range(hours) if h % 7 == 3]),
    }
    ok = features_dict(d.bank.window("cp-ok").features())
    psu = features_dict(d.bank.window("cp-psu").features())
    assert psu["power_ratio_max_48h"] < ok["power_ratio_max_48h"] - 0.05  # 1.6 samples counted
    assert ok["resets_per_day"] > 0 and ok["self_resolved_per_day"] > 0
    assert ok["energy_per_session_kwh"] == pytest.approx(0.5123)
    # the failed starts and faults land on connector 2, the sessions on connector 1
    per = d.bank.window("cp-ok").connector_features()
    assert set(per) == {1, 2}
    c1, c2 = features_dict_c(per[1]), features_dict_c(per[2])
    assert c1["sessions_per_day"] > 0.9 and c1["faults_per_day"] == 0.0
    assert c2["faults_per_day"] > 0 and c2["start_failure_ratio"] == 1.0
    assert c1["power_ratio_max_7d"] == pytest.approx(ok["power_ratio_max_7d"])


def features_dict_c(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(CONNECTOR_FEATURE_NAMES, values, strict=True))


# ---------------------------------------------------------------- the real engine


async def _evidence(cp: str, start: datetime, end: datetime, limit: int) -> list[EvidenceFrame]:
    return []


class RebootingCharger:
    """Stands in for the proxy: a Reset reboots the charge point, which comes back healthy."""

    def __init__(self) -> None:
        self.engine: RecoveryEngine | None = None
        self.clock: FakeClock | None = None
        self.sent: list[str] = []

    async def call(
        self,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        self.sent.append(action)
        if action == "Reset":
            assert self.engine is not None and self.clock is not None
            now = self.clock.now()
            for e in _boot(charge_point_id, now):
                self.engine.handle(e)
        return {"status": "Accepted"}

    def version(self, charge_point_id: str) -> str | None:
        return "1.6"


def _boot(cp: str, at: datetime, *, down: bool = True) -> list[Event]:
    ev: list[Event] = [ConnectionDown(cp, at)] if down else []
    return [
        *ev,
        ConnectionUp(cp, at + timedelta(seconds=1), "1.6"),
        Boot(cp, at + timedelta(seconds=1), "Ampero", "AC22-Duo", firmware="3.4.1"),
        ConnectorStatus(cp, at + timedelta(seconds=2), 1, "Available"),
        ConnectorStatus(cp, at + timedelta(seconds=2), 2, "Available"),
    ]


@pytest.fixture
async def engine() -> AsyncIterator[tuple[RecoveryEngine, FakeClock, RebootingCharger]]:
    clock = FakeClock(T0)
    charger = RebootingCharger()
    escalations: list[Escalation] = []

    async def escalate(e: Escalation) -> None:
        escalations.append(e)

    eng = RecoveryEngine(
        site_id="site-1",
        config=RecoverySection(window_s=20, flap_period_s=5, site_event_window_s=10),
        call=charger,
        evidence=_evidence,
        escalate=escalate,
        audit=MemoryAudit(),
        clock=clock,
        profiles=ProfileRegistry.load(),
        hooks=HookRunner(None),
    )
    charger.engine, charger.clock = eng, clock
    await eng.start()
    try:
        yield eng, clock, charger
    finally:
        await eng.stop()


async def test_an_engine_ordered_reset_is_no_disconnect_in_edge_or_cloud_features(
    engine: tuple[RecoveryEngine, FakeClock, RebootingCharger],
) -> None:
    eng, clock, charger = engine
    monitor = AnomalyMonitor("site-1", ModelStore(None, None, load_defaults=False), lambda e: None)
    monitor.attach(eng.digest)
    cloud = FeatureBank()
    for e in _boot("CP1", clock.now(), down=False) + _boot("CP2", clock.now(), down=False):
        eng.handle(e)
        monitor.feed(e)  # what the agent's proxy subscription does: no double count
    intervals, length = 3, 600.0  # digest intervals of 10 minutes (any length works)
    for k in range(intervals):
        await clock.advance(60)
        # a fault the playbook fixes with a soft reset (the charger reboots, healthy)
        eng.handle(ConnectorStatus("CP1", clock.now(), 1, "Faulted", "InternalError"))
        await clock.advance(120)
        # a real drop on CP2
        eng.handle(ConnectionDown("CP2", clock.now()))
        for e in _boot("CP2", clock.now() + timedelta(seconds=30), down=False):
            eng.handle(e)
        await clock.advance(length - 180)
        digest = eng.cut_digest()
        closed = await monitor.close_window(clock.now())
        assert set(closed) == {"CP1", "CP2"}
        cps = ["CP1", "CP2"]
        edge = np.array([monitor.window(cp).features() for cp in cps])
        assert np.array_equal(edge, _cloud_features(cloud, digest, cps)), f"interval {k}"
    assert charger.sent.count("Reset") == intervals
    cp1 = features_dict(monitor.window("CP1").features())
    cp2 = features_dict(monitor.window("CP2").features())
    per_day = intervals / (intervals * length / 86400)
    assert cp1["disconnects_per_day"] == 0.0  # the reboots it ordered
    assert cp1["resets_per_day"] == pytest.approx(per_day)
    assert cp1["faults_other_per_day"] == pytest.approx(per_day)  # InternalError: one each
    assert cp1["self_resolved_per_day"] == pytest.approx(per_day)
    assert cp1["offline_share"] > 0  # the reboot's seconds offline still count
    assert cp2["disconnects_per_day"] == pytest.approx(per_day)
    assert list(cp1) == list(FEATURE_NAMES)
