"""Recovery engine scenarios with a fake call injector and a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.messages import Call, validate_payload

from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    ProblemReport,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.messages import Escalation, EvidenceFrame
from chargesight.edge.audit import AuditEntry, AuditLog, Auditor, MemoryAudit
from chargesight.edge.config import RecoverySection
from chargesight.edge.errors import CallTimeout
from chargesight.edge.hooks import HookResult, HookRunner
from chargesight.edge.profiles import ProfileRegistry
from chargesight.edge.recovery import FakeClock, RecoveryEngine
from tests.edge.fake_charger import FakeCharger

WINDOW = 20.0


@dataclass
class Harness:
    engine: RecoveryEngine
    clock: FakeClock
    charger: FakeCharger
    escalations: list[Escalation]
    audit: MemoryAudit

    def status(
        self, cp: str, connector: int, status: str, error: str = "NoError", **kw: Any
    ) -> None:
        self.engine.handle(
            ConnectorStatus(cp, self.clock.now(), connector, status, error_code=error, **kw)
        )

    def connect(
        self,
        cp: str,
        *,
        connectors: int = 2,
        version: str = "1.6",
        vendor: str = "Ampero",
        model: str = "AC22-Duo",
    ) -> None:
        now = self.clock.now()
        self.charger.versions[cp] = version
        self.engine.handle(ConnectionUp(cp, now, version))
        self.engine.handle(
            Boot(cp, now, vendor=vendor, model=model, firmware="3.4.1", serial=f"SN-{cp}")
        )
        for c in range(1, connectors + 1):
            self.status(cp, c, "Available")

    def escalations_for(self, cp: str) -> list[Escalation]:
        return [e for e in self.escalations if e.charge_point_id == cp and e.status == "open"]


_ids = itertools.count()


def _new_id() -> str:
    return f"incident-{next(_ids):06d}"


async def _evidence(cp: str, start: datetime, end: datetime, limit: int) -> list[EvidenceFrame]:
    return [
        EvidenceFrame(
            at=start,
            direction="cp->csms",
            frame='[2,"1","StatusNotification",{}]',
            charge_point_id=cp,
        )
    ]


@pytest.fixture
def recovery_config() -> dict[str, Any]:
    return {
        "window_s": WINDOW,
        "flap_period_s": 5,
        "site_event_window_s": 10,
        "max_resets_per_day": 6,
    }


def build(config: RecoverySection, audit: Auditor | None = None) -> Harness:
    """An engine (not started) on a fake clock and charger, auditing to ``audit`` if given,
    else to the harness's in-memory ``audit``."""
    clock = FakeClock()
    charger = FakeCharger()
    escalations: list[Escalation] = []
    memory = MemoryAudit()

    async def escalate(e: Escalation) -> None:
        escalations.append(e)

    engine = RecoveryEngine(
        site_id="test-site",
        config=config,
        call=charger,
        evidence=_evidence,
        escalate=escalate,
        audit=audit or memory,
        clock=clock,
        profiles=ProfileRegistry.load(),
        hooks=HookRunner(None),
        new_id=_new_id,
    )
    return Harness(engine, clock, charger, escalations, memory)


@pytest.fixture
async def h(recovery_config: dict[str, Any]) -> AsyncIterator[Harness]:
    harness = build(RecoverySection(**recovery_config))
    await harness.engine.start()
    try:
        yield harness
    finally:
        await harness.engine.stop()


def _recover_on(
    h: Harness,
    action: str,
    cp: str = "CP1",
    connector: int = 1,
    match: dict[str, Any] | None = None,
) -> None:
    def handler(charge_point_id: str, payload: dict[str, Any]) -> None:
        if charge_point_id == cp and all(payload.get(k) == v for k, v in (match or {}).items()):
            h.status(cp, connector, "Available")

    h.charger.handlers[action] = handler


# ---------------------------------------------------------------- scenarios


async def test_soft_reset_that_clears_fault_is_not_escalated(h: Harness) -> None:
    h.connect("CP1")
    _recover_on(h, "Reset", match={"type": "Soft"})
    h.status("CP1", 1, "Faulted", "InternalError", vendor_error_code="AMP-E30")
    await h.clock.advance(WINDOW + 30)

    assert h.escalations == []
    actions = [a for _, a, _ in h.charger.sent]
    assert actions == ["TriggerMessage", "ChangeAvailability", "ChangeAvailability", "Reset"]
    assert h.charger.actions("Reset")[0][2] == {"type": "Soft"}
    digest = h.engine.cut_digest()
    assert [(s.fixed_by, s.fault_code, s.category) for s in digest.self_resolved] == [
        ("soft_reset", "InternalError", "internal")
    ]
    counters = {c.charge_point_id: c for c in digest.chargers}["CP1"]
    assert (counters.faults, counters.self_resolved, counters.resets) == (1, 1, 1)


async def test_persisting_fault_is_escalated_exactly_once_with_its_steps(h: Harness) -> None:
    h.connect("CP1")
    h.status(
        "CP1",
        1,
        "Faulted",
        "OtherError",
        vendor_id="Ampero",
        vendor_error_code="X-77",
        info="relay stuck",
    )
    began = h.clock.monotonic()
    await h.clock.advance(WINDOW + 30)
    await h.clock.advance(120)

    assert len(h.escalations) == 1
    e = h.escalations[0]
    assert (e.charge_point_id, e.connector_id, e.scope, e.kind) == ("CP1", 1, "connector", "fault")
    assert (e.fault.code, e.fault.vendor_code, e.fault.vendor_id, e.fault.info) == (
        "OtherError",
        "X-77",
        "Ampero",
        "relay stuck",
    )
    assert [(a.action, a.result) for a in e.recovery_attempts] == [
        ("confirm", "no_change"),
        ("availability_toggle", "no_change"),
        ("soft_reset", "no_change"),
        ("hard_reset", "no_change"),
        ("hook:power-cycle", "skipped"),
    ]
    assert (e.hardware.vendor, e.hardware.model, e.hardware.serial) == (
        "Ampero",
        "AC22-Duo",
        "SN-CP1",
    )
    assert e.evidence and e.evidence[0].charge_point_id == "CP1"
    assert e.recommended_action == "field_technician"
    assert (e.sent_at - e.started_at).total_seconds() <= WINDOW + 30
    assert e.message_id == e.incident_id
    assert began == 0.0


class RecordingHooks(HookRunner):
    """Hooks that take as long as they are let: what time limit each got."""

    def __init__(self) -> None:
        super().__init__(None, timeout_s=600)
        self.limits: list[float | None] = []

    def available(self, name: str) -> bool:
        return True

    async def run(
        self,
        name: str,
        request: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HookResult:
        self.limits.append(timeout_s)
        return HookResult(name, "timeout", None, "", f"killed after {timeout_s} s", 0.0)


@pytest.mark.parametrize("recovery_config", [{"window_s": WINDOW, "hook_timeout_s": 600}])
async def test_a_slow_hook_is_given_only_what_is_left_of_the_window(h: Harness) -> None:
    hooks = RecordingHooks()
    h.engine.hooks = hooks
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "OtherError", vendor_id="Ampero", vendor_error_code="X-77")
    began = h.clock.monotonic()
    await h.clock.advance(WINDOW + 30)
    (limit,) = hooks.limits  # the power-cycle step ran, with the window's rest, not 600 s
    assert limit is not None and limit <= WINDOW
    (e,) = h.escalations
    assert e.recovery_attempts[-1].action == "hook:power-cycle"
    assert h.clock.monotonic() - began <= WINDOW + 30


async def test_escalation_goes_out_no_later_than_window_plus_30s(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 1)
    assert len(h.escalations) == 1


async def test_fault_recovered_inside_window_is_never_escalated(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW - 1)
    h.status("CP1", 1, "Available")
    await h.clock.advance(WINDOW * 3)
    assert h.escalations == []
    assert [s.fixed_by for s in h.engine.cut_digest().self_resolved] == ["self"]


@pytest.mark.parametrize(
    ("error", "vendor_code"),
    [
        ("GroundFailure", None),
        ("OtherError", "CX026"),
        ("OtherError", "CX017"),
        ("OtherError", "VX-412"),
    ],
)
async def test_safety_critical_fault_gets_no_reset_and_is_escalated_at_once(
    h: Harness, error: str, vendor_code: str | None
) -> None:
    h.connect("CP1", vendor="Voltix", model="VX-DC50")
    h.status("CP1", 1, "Faulted", error, vendor_error_code=vendor_code)
    await h.clock.advance(0.5)

    assert h.charger.sent == []
    assert len(h.escalations) == 1
    e = h.escalations[0]
    assert e.fault.safety_critical
    assert e.recovery_attempts == []
    assert e.recommended_action in ("field_technician", "component_replacement")


async def test_non_resettable_emergency_stop_is_escalated_without_reset(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 0, "Faulted", "OtherError", vendor_error_code="CX008")
    await h.clock.advance(0.5)
    assert h.charger.actions("Reset") == []
    assert [e.scope for e in h.escalations] == ["charge_point"]


async def test_charging_connector_protects_charge_point_from_reset(h: Harness) -> None:
    h.connect("CP1")
    h.engine.handle(TransactionStarted("CP1", h.clock.now(), 2, "tx-1", meter_start_wh=0))
    h.status("CP1", 2, "Charging")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 30)

    assert h.charger.actions("Reset") == []
    availability = h.charger.actions("ChangeAvailability")
    assert availability and all(p["connectorId"] == 1 for _, _, p in availability)
    assert len(h.escalations) == 1
    steps = {a.action: a for a in h.escalations[0].recovery_attempts}
    assert steps["soft_reset"].result == "skipped"
    assert "charging" in (steps["soft_reset"].detail or "")
    assert h.escalations[0].active_sessions == 1


async def test_reset_waits_for_the_session_on_another_connector_to_end(h: Harness) -> None:
    h.connect("CP1")
    h.engine.handle(TransactionStarted("CP1", h.clock.now(), 2, "tx-1", meter_start_wh=0))
    h.status("CP1", 1, "Faulted", "InternalError")
    _recover_on(h, "Reset")
    await h.clock.advance(6)
    assert h.charger.actions("Reset") == []
    h.engine.handle(
        TransactionEnded("CP1", h.clock.now(), "tx-1", connector_id=2, meter_stop_wh=5000)
    )
    await h.clock.advance(WINDOW)
    assert len(h.charger.actions("Reset")) == 1
    assert h.escalations == []


@pytest.mark.parametrize(
    "recovery_config", [{"window_s": WINDOW, "max_resets_per_day": 1, "flap_period_s": 5}]
)
async def test_reset_budget_stops_a_reboot_storm(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 5)
    h.status("CP1", 2, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 5)

    assert len(h.charger.actions("Reset")) == 1
    assert len(h.escalations) == 2
    skipped = [a for a in h.escalations[1].recovery_attempts if a.action == "soft_reset"]
    assert skipped[0].result == "skipped" and "budget" in (skipped[0].detail or "")


@pytest.mark.parametrize("recovery_config", [{"window_s": WINDOW, "max_resets_per_day": 0}])
async def test_zero_reset_budget_disables_automatic_resets(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 5)
    assert h.charger.actions("Reset") == []
    assert len(h.escalations) == 1


async def test_site_wide_outage_is_one_incident(h: Harness) -> None:
    for cp in ("CP1", "CP2", "CP3", "CP4"):
        h.connect(cp)
    for cp in ("CP1", "CP2", "CP3"):
        h.engine.handle(ConnectionDown(cp, h.clock.now(), "1006"))
        h.charger.offline.add(cp)
        await h.clock.advance(1)
    await h.clock.advance(WINDOW + 30)

    assert len(h.escalations) == 1
    e = h.escalations[0]
    assert (e.scope, e.charge_point_id, e.connector_id, e.kind) == (
        "site",
        None,
        None,
        "connectivity",
    )
    assert sorted(e.chargers) == ["CP1", "CP2", "CP3"]
    assert e.fault.category == "connectivity"
    assert h.charger.actions("Reset") == []


async def test_site_outage_that_comes_back_inside_window_is_self_resolved(h: Harness) -> None:
    for cp in ("CP1", "CP2", "CP3"):
        h.connect(cp)
    for cp in ("CP1", "CP2", "CP3"):
        h.engine.handle(ConnectionDown(cp, h.clock.now(), "1006"))
    await h.clock.advance(5)
    for cp in ("CP1", "CP2", "CP3"):
        h.connect(cp)
    await h.clock.advance(WINDOW * 2)
    assert h.escalations == []
    resolved = h.engine.cut_digest().self_resolved
    assert [s.scope for s in resolved] == ["site"]


async def test_flapping_fault_is_one_incident(h: Harness) -> None:
    h.connect("CP1")
    for _ in range(3):
        h.status("CP1", 1, "Faulted", "InternalError")
        await h.clock.advance(1)
        h.status("CP1", 1, "Available")
        await h.clock.advance(2)  # returns inside flap_period_s = 5
    await h.clock.advance(WINDOW)
    assert h.escalations == []
    digest = h.engine.cut_digest()
    assert len(digest.self_resolved) == 1
    assert {c.charge_point_id: c.faults for c in digest.chargers}["CP1"] == 1


async def test_repeated_disconnects_are_one_connectivity_incident_with_a_count(h: Harness) -> None:
    h.connect("CP1")
    h.connect("CP2")
    h.connect("CP3")
    h.connect("CP4")
    h.connect("CP5")
    for _ in range(3):
        h.engine.handle(ConnectionDown("CP1", h.clock.now(), "1006"))
        h.charger.offline.add("CP1")
        await h.clock.advance(1)
        h.charger.offline.discard("CP1")
        h.connect("CP1")
        await h.clock.advance(1)
    h.engine.handle(ConnectionDown("CP1", h.clock.now(), "1006"))
    h.charger.offline.add("CP1")
    await h.clock.advance(WINDOW + 30)

    assert len(h.escalations) == 1
    e = h.escalations[0]
    assert (e.kind, e.scope, e.disconnects) == ("connectivity", "charge_point", 4)
    assert e.recommended_action == "network_fix"


async def test_availability_is_restored_when_a_later_step_fails(h: Harness) -> None:
    h.connect("CP1")

    def operative_times_out_once(cp: str, payload: dict[str, Any]) -> None:
        if payload.get("type") == "Operative" and not getattr(
            operative_times_out_once, "done", False
        ):
            operative_times_out_once.done = True  # type: ignore[attr-defined]
            raise CallTimeout("no answer", charge_point_id=cp)

    h.charger.handlers["ChangeAvailability"] = operative_times_out_once
    h.charger.handlers["Reset"] = lambda cp, p: (_ for _ in ()).throw(CallTimeout("x"))
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 30)

    kinds = [p["type"] for _, _, p in h.charger.actions("ChangeAvailability")]
    assert kinds[0] == "Inoperative"
    assert kinds[-1] == "Operative"
    assert kinds.count("Operative") >= 2


async def test_availability_is_restored_when_the_run_is_cancelled(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(0.1)
    await h.clock.advance(WINDOW * 0.05 + 0.1)  # after confirm, inside the Inoperative dwell
    assert [p["type"] for _, _, p in h.charger.actions("ChangeAvailability")] == ["Inoperative"]
    await h.engine.stop()
    assert [p["type"] for _, _, p in h.charger.actions("ChangeAvailability")] == [
        "Inoperative",
        "Operative",
    ]


@pytest.mark.parametrize("recovery_config", [{"window_s": WINDOW, "maintenance": ("CP1",)}])
async def test_charge_point_in_maintenance_is_never_acted_on(h: Harness) -> None:
    h.connect("CP1")
    h.connect("CP2")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 30)
    assert h.charger.sent == []
    assert h.escalations == []
    h.engine.set_maintenance("CP1", False)
    await h.clock.advance(1)
    assert h.charger.sent[0] == (
        "CP1",
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "connectorId": 1},
    )


async def test_lock_fault_is_unlocked_and_recovers(h: Harness) -> None:
    h.connect("CP1")
    h.charger.handlers["UnlockConnector"] = lambda cp, p: (
        h.status(cp, 1, "Available"),
        {"status": "Unlocked"},
    )[1]
    h.status("CP1", 1, "Faulted", "ConnectorLockFailure")
    await h.clock.advance(WINDOW)
    assert h.charger.actions("UnlockConnector") == [("CP1", "UnlockConnector", {"connectorId": 1})]
    assert h.escalations == []


async def test_ocpp16_payloads_follow_the_16_schemas(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 30)
    actions = [a for _, a, _ in h.charger.sent]
    assert {"TriggerMessage", "ChangeAvailability", "Reset"} <= set(actions)
    for n, (_, action, payload) in enumerate(h.charger.sent):
        await validate_payload(Call(unique_id=str(n), action=action, payload=payload), "1.6")


async def test_ocpp201_payloads_follow_the_201_schemas(h: Harness) -> None:
    h.connect("CS1", version="2.0.1", vendor="Voltix", model="VX-DC150")
    h.status("CS1", 1, "Faulted", "NoError")
    await h.clock.advance(WINDOW + 30)
    sent = {a: p for _, a, p in h.charger.sent}
    assert sent["TriggerMessage"] == {
        "requestedMessage": "StatusNotification",
        "evse": {"id": 1, "connectorId": 1},
    }
    assert [p for _, a, p in h.charger.sent if a == "ChangeAvailability"] == [
        {"operationalStatus": "Inoperative", "evse": {"id": 1}},
        {"operationalStatus": "Operative", "evse": {"id": 1}},
    ]
    assert [p["type"] for _, a, p in h.charger.sent if a == "Reset"] == ["OnIdle", "Immediate"]
    # every request the playbook sent is valid against the ocpp library's 2.0.1 JSON schemas
    for n, (_, action, payload) in enumerate(h.charger.sent):
        await validate_payload(Call(unique_id=str(n), action=action, payload=payload), "2.0.1")


async def test_ocpp201_problem_report_naming_a_cut_cable_stops_the_playbook(h: Harness) -> None:
    h.connect("CS1", version="2.0.1", vendor="Voltix", model="VX-DC150")
    h.status("CS1", 1, "Faulted", "NoError")
    await h.clock.advance(0.1)
    h.engine.handle(
        ProblemReport(
            "CS1",
            h.clock.now(),
            "Connector",
            "Problem",
            "true",
            evse_id=1,
            connector_id=1,
            tech_info="OtherError",
            tech_code="CX026",
        )
    )
    await h.clock.advance(WINDOW + 30)
    assert h.charger.actions("Reset") == []
    assert len(h.escalations) == 1
    assert h.escalations[0].fault.chargex_code == "CX026"
    assert h.escalations[0].fault.safety_critical


async def test_fault_cleared_after_escalation_is_reported_as_cleared(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW + 5)
    assert len(h.escalations) == 1
    h.status("CP1", 1, "Available")
    await h.clock.advance(10)
    assert [(e.status, e.incident_id) for e in h.escalations] == [
        ("open", h.escalations[0].incident_id),
        ("cleared", h.escalations[0].incident_id),
    ]
    assert h.escalations[1].ended_at is not None
    assert h.escalations[1].message_id != h.escalations[0].message_id
    digest = h.engine.cut_digest()
    assert digest.cleared_incidents == [h.escalations[0].incident_id]
    assert digest.self_resolved == []


async def test_every_action_is_audited_and_visible_in_status(h: Harness) -> None:
    h.connect("CP1")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW * 0.5)
    status = h.engine.status()
    assert [i["charge_point_id"] for i in status["open_incidents"]] == ["CP1"]
    assert status["open_incidents"][0]["steps"]
    actions = [e["action"] for e in status["recent_actions"]]
    assert "confirm" in actions and "availability_toggle" in actions
    assert all(e.incident_id for e in h.audit.entries if e.action not in ("maintenance",))


async def test_silent_reconnect_is_confirmed_with_trigger_message_then_self_resolved(
    h: Harness,
) -> None:
    for cp in ("CP1", "CP2", "CP3"):
        h.connect(cp)

    def report_all(cp: str, payload: dict[str, Any]) -> None:
        h.status(cp, 1, "Available")
        h.status(cp, 2, "Available")

    h.charger.handlers["TriggerMessage"] = report_all
    h.engine.handle(ConnectionDown("CP1", h.clock.now(), "1006"))
    h.charger.offline.add("CP1")
    await h.clock.advance(2)
    h.charger.offline.discard("CP1")
    h.engine.handle(ConnectionUp("CP1", h.clock.now(), "1.6"))  # back, but reports nothing
    await h.clock.advance(1)
    assert h.charger.actions("TriggerMessage") == [
        ("CP1", "TriggerMessage", {"requestedMessage": "StatusNotification"})
    ]
    await h.clock.advance(WINDOW * 2)
    assert h.escalations == []
    (resolved,) = h.engine.cut_digest().self_resolved
    assert (resolved.kind, resolved.fixed_by) == ("connectivity", "confirm")


async def test_a_charger_back_quietly_after_its_escalation_is_asked_to_report_and_cleared(
    h: Harness,
) -> None:
    h.connect("CP1")
    h.engine.handle(ConnectionDown("CP1", h.clock.now(), "1006"))
    h.charger.offline.add("CP1")
    await h.clock.advance(WINDOW + 5)  # gone for the whole window: escalated
    (lost,) = h.escalations
    assert (lost.kind, lost.status) == ("connectivity", "open")

    def report_all(cp: str, payload: dict[str, Any]) -> None:
        h.status(cp, 1, "Available")
        h.status(cp, 2, "Available")

    h.charger.handlers["TriggerMessage"] = report_all
    sent_before = len(h.charger.actions("TriggerMessage"))
    h.charger.offline.discard("CP1")
    h.engine.handle(ConnectionUp("CP1", h.clock.now(), "1.6"))  # back, but reports nothing
    await h.clock.advance(1)
    assert h.charger.actions("TriggerMessage")[sent_before:] == [
        ("CP1", "TriggerMessage", {"requestedMessage": "StatusNotification"})
    ]
    await h.clock.advance(10)
    assert [(e.status, e.incident_id) for e in h.escalations] == [
        ("open", lost.incident_id),
        ("cleared", lost.incident_id),
    ]


async def test_a_session_the_charger_stopped_while_offline_is_reported_cut_with_the_drop(
    h: Harness,
) -> None:
    h.connect("CP1")
    h.engine.handle(TransactionStarted("CP1", h.clock.now(), 1, "tx-1", meter_start_wh=0))
    h.engine.handle(TransactionStarted("CP1", h.clock.now(), 2, "tx-2", meter_start_wh=0))
    await h.clock.advance(60)
    h.engine.handle(ConnectionDown("CP1", h.clock.now(), "1006"))
    h.charger.offline.add("CP1")
    await h.clock.advance(3)
    stopped_at = h.clock.now()
    h.charger.offline.discard("CP1")
    h.connect("CP1")
    # back: it sends the stop it queued (tx-1 ended while it was offline); tx-2 goes on
    h.engine.handle(
        TransactionEnded("CP1", stopped_at, "tx-1", None, meter_stop_wh=4000, reason="PowerLoss")
    )
    await h.clock.advance(WINDOW * 2)
    h.engine.handle(
        TransactionEnded("CP1", h.clock.now(), "tx-2", None, meter_stop_wh=9000, reason="Local")
    )
    (resolved,) = h.engine.cut_digest().self_resolved
    assert resolved.kind == "connectivity"
    assert resolved.sessions_cut == 1
    assert resolved.energy_unmet_wh is None  # no SoC, no past sessions: not estimated


async def test_session_without_stop_transaction_ends_with_finishing_and_no_longer_blocks_resets(
    h: Harness,
) -> None:
    h.connect("CP1")
    h.engine.handle(TransactionStarted("CP1", h.clock.now(), 2, "tx-9", meter_start_wh=0))
    h.status("CP1", 2, "Finishing")
    _recover_on(h, "Reset")
    h.status("CP1", 1, "Faulted", "InternalError")
    await h.clock.advance(WINDOW)
    assert len(h.charger.actions("Reset")) == 1
    assert h.escalations == []


async def test_escalation_carries_the_anomaly_score_when_one_is_available(
    recovery_config: dict[str, Any],
) -> None:
    clock, charger, escalations = FakeClock(), FakeCharger(), []

    async def escalate(e: Escalation) -> None:
        escalations.append(e)

    engine = RecoveryEngine(
        site_id="test-site",
        config=RecoverySection(**recovery_config),
        call=charger,
        evidence=_evidence,
        escalate=escalate,
        clock=clock,
        hooks=HookRunner(None),
        anomaly_score=lambda cp: 0.93 if cp == "CP1" else None,
    )
    async with engine:
        engine.handle(ConnectionUp("CP1", clock.now(), "1.6"))
        engine.handle(ConnectorStatus("CP1", clock.now(), 1, "Faulted", "InternalError"))
        await clock.advance(WINDOW + 5)
    assert [e.anomaly_score for e in escalations] == [0.93]


async def test_resets_sent_before_a_restart_still_count_against_the_daily_budget(
    tmp_path: Path,
) -> None:
    async with AuditLog(tmp_path / "edge.sqlite") as audit:  # the trail the last run left
        h = build(RecoverySection(window_s=WINDOW, flap_period_s=5, max_resets_per_day=2), audit)
        now = h.clock.now()
        for step, result, hours_ago in [
            ("soft_reset", "accepted", 3),
            ("hook:power-cycle", "timeout", 1),
            ("hard_reset", "accepted", 30),  # yesterday's: no longer counts
            ("soft_reset", "skipped", 2),  # never sent
        ]:
            at = now - timedelta(hours=hours_ago)
            await audit.record(AuditEntry(at=at, action=step, result=result, charge_point_id="CP1"))
        h.engine.restore_resets(await audit.resets())
        await h.engine.start()
        try:
            h.connect("CP1")
            h.status("CP1", 1, "Faulted", "InternalError")
            await h.clock.advance(WINDOW + 30)
        finally:
            await h.engine.stop()
    assert h.charger.actions("Reset") == []  # the budget was spent before the restart
    (e,) = h.escalations
    resets = [a for a in e.recovery_attempts if a.action in ("soft_reset", "hard_reset")]
    assert resets and all(a.result == "skipped" for a in resets)
    assert all("reset budget spent (2/2 in 24 h)" in (a.detail or "") for a in resets)


async def test_restored_resets_count_when_the_clock_starts_behind_the_audit_trail(
    h: Harness,
) -> None:
    # a gateway without a real-time clock boots in 1970-ish time: the trail is "in the future"
    later = h.clock.now() + timedelta(days=3650)
    h.engine.restore_resets(
        [
            ("CP1", later - timedelta(hours=30)),  # a day before the newest: expired
            ("CP1", later - timedelta(hours=2)),
            ("CP1", later),
        ]
    )
    assert h.engine.status()["resets_last_24h"] == {"CP1": 2}
