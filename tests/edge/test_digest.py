"""Digest counters per charge point per interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.messages import SelfResolved
from chargesight.edge.digest import DigestCollector

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_digest_counts_one_interval_and_restarts() -> None:
    d = DigestCollector("site-1", T0, currency="EUR", price_per_kwh=0.5)
    d.feed(ConnectionUp("CP1", at(0), "1.6"))
    d.feed(Boot("CP1", at(0), "Voltix", "VX-DC50", firmware="2.1.0"))
    d.feed(ConnectorStatus("CP1", at(0), 1, "Available"))
    d.feed(ConnectorStatus("CP1", at(0), 2, "Available"))
    d.feed(TransactionStarted("CP1", at(10), 1, "t1", meter_start_wh=100))
    d.feed(MeterSample("CP1", at(20), 1, "t1", {"Power.Active.Import": 45000, "Temperature": 30}))
    d.feed(MeterSample("CP1", at(30), 1, "t1", {"Power.Active.Import": 48000, "Temperature": 40}))
    d.feed(TransactionEnded("CP1", at(40), "t1", meter_stop_wh=2100))
    d.feed(ConnectionDown("CP1", at(100)))
    d.feed(ConnectionUp("CP1", at(160), "1.6"))
    d.fault_opened("CP1", "temperature")
    d.reset_sent("CP1")
    d.set_rated_power("CP1", 50000)
    d.self_resolved(
        SelfResolved(
            incident_id="i1",
            charge_point_id="CP1",
            connector_id=1,
            scope="connector",
            kind="fault",
            fault_code="HighTemperature",
            category="temperature",
            started_at=at(50),
            ended_at=at(60),
            fixed_by="soft_reset",
        )
    )
    d.cleared("i0")
    digest = d.cut(at(200))
    (c,) = digest.chargers
    assert (c.vendor, c.model, c.connectors) == ("Voltix", "VX-DC50", 2)
    assert c.connected_s == 140.0
    assert (c.disconnects, c.faults, c.self_resolved, c.resets) == (1, 1, 1, 1)
    assert c.faults_by_category == {"temperature": 1}
    assert c.fixed_by == {"soft_reset": 1}
    assert (c.sessions_started, c.energy_wh, c.max_power_w, c.rated_power_w) == (
        1,
        2000.0,
        48000,
        50000,
    )
    assert (c.max_temperature_c, c.mean_temperature_c) == (40, 35.0)
    assert digest.cleared_incidents == ["i0"] and len(digest.self_resolved) == 1
    assert (digest.currency, digest.price_per_kwh) == ("EUR", 0.5)
    assert len(digest.to_json()) < 2000

    nxt = d.cut(at(300))
    (c,) = nxt.chargers
    assert (c.connected_s, c.disconnects, c.faults, c.sessions_started) == (100.0, 0, 0, 0)
    assert nxt.self_resolved == [] and nxt.cleared_incidents == []
    assert nxt.interval_start == at(200)
