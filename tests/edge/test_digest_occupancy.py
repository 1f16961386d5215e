"""Digests say how long vehicles kept connectors (``occupied_s``): the cloud's revenue estimate
needs it to know when a site is full (see cloud/revenue.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chargesight.common.events import ConnectionUp, ConnectorStatus, TransactionStarted
from chargesight.edge.digest import DigestCollector

T0 = datetime(2026, 9, 1, tzinfo=UTC)
M = timedelta(minutes=1)


def test_plugged_in_time_is_summed_over_connectors_and_carried_across_digests() -> None:
    d = DigestCollector("s", T0)
    d.feed(ConnectionUp("cp", T0, "1.6"))
    # connector 1: plugged in 10 min before the hour ends and still charging at the cut
    d.feed(ConnectorStatus("cp", T0 + 50 * M, 1, "Preparing"))
    d.feed(ConnectorStatus("cp", T0 + 51 * M, 1, "Charging"))
    # connector 2: a 20-minute visit, unplugged (Available) before the cut
    d.feed(ConnectorStatus("cp", T0 + 5 * M, 2, "Preparing"))
    d.feed(ConnectorStatus("cp", T0 + 20 * M, 2, "Finishing"))
    d.feed(ConnectorStatus("cp", T0 + 25 * M, 2, "Available"))
    first = d.cut(T0 + 60 * M).chargers[0]
    assert first.occupied_s == (10 + 20) * 60
    # next hour: connector 1 leaves after 15 more minutes
    d.feed(ConnectorStatus("cp", T0 + 75 * M, 1, "Finishing"))
    d.feed(ConnectorStatus("cp", T0 + 80 * M, 1, "Available"))
    second = d.cut(T0 + 120 * M).chargers[0]
    assert second.occupied_s == 20 * 60


def test_sessions_without_any_plugged_in_status_leave_occupancy_unknown() -> None:
    d = DigestCollector("s", T0)
    d.feed(ConnectionUp("cp", T0, "1.6"))
    d.feed(TransactionStarted("cp", T0 + 5 * M, 1, "tx-1", meter_start_wh=0.0))
    counters = d.cut(T0 + 60 * M).chargers[0]
    assert counters.sessions_started == 1
    assert counters.occupied_s is None  # not 0: the charger just does not say
