"""Sessions a fault cut short and the energy their drivers did not get (common/sessions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chargesight.common.events import MeterSample, TransactionEnded, TransactionStarted
from chargesight.common.normalise import events_from_call
from chargesight.common.sessions import SessionTracker, unmet_energy_wh

T0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
CP = "cp-1"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def dc_session(
    tr: SessionTracker,
    tx: str,
    start_s: float,
    *,
    wanted_wh: float,
    until_wh: float,
    reason: str,
    connector: int = 1,
    step_wh: float = 2000.0,
    final_soc: float = 100.0,
) -> None:
    """A DC session whose car goes from 20 % to ``final_soc`` over ``wanted_wh`` (linear),
    sampled every ``step_wh``, stopped at ``until_wh`` with ``reason``."""
    tr.feed(TransactionStarted(CP, at(start_s), connector, tx, meter_start_wh=0.0))
    e = 0.0
    t = start_s
    while e + step_wh < until_wh:
        e += step_wh
        t += 60
        soc = 20 + (final_soc - 20) * e / wanted_wh
        tr.feed(
            MeterSample(
                CP, at(t), connector, tx, {"Energy.Active.Import.Register": e, "SoC": round(soc, 1)}
            )
        )
    tr.feed(TransactionEnded(CP, at(t + 30), tx, connector, meter_stop_wh=until_wh, reason=reason))


def test_a_dc_session_the_fault_stopped_just_before_it_was_reported_misses_what_its_soc_says() -> (
    None
):
    tr = SessionTracker()
    dc_session(tr, "a", 0, wanted_wh=40_000, until_wh=15_000, reason="Other")
    # the StopTransaction came first, the Faulted status 20 s later
    tr.claim("inc-1", CP, None, at(60 * 7 + 30 + 20))
    t = tr.tally("inc-1")
    assert t is not None and t.sessions == 1
    assert t.energy_unmet_wh == pytest.approx(25_000, rel=0.01)


def test_the_target_soc_is_what_this_units_sessions_end_at_when_nothing_stops_them() -> None:
    tr = SessionTracker()
    for k in range(5):  # these drivers stop at 80 %
        dc_session(
            tr, f"c{k}", k * 3600, wanted_wh=30_000, until_wh=30_000, reason="Local", final_soc=80.0
        )
    # this car would go from 20 % to 80 % on 30 kWh (0.5 kWh a point); cut at 10 kWh (40 %)
    tr.feed(TransactionStarted(CP, at(50_000), 1, "x", meter_start_wh=0.0))
    for k in range(1, 6):
        e = 2000.0 * k
        tr.feed(
            MeterSample(
                CP,
                at(50_000 + 60 * k),
                1,
                "x",
                {"Energy.Active.Import.Register": e, "SoC": 20 + 60 * e / 30_000},
            )
        )
    tr.claim("inc-2", CP, [1], at(50_400))
    tr.feed(TransactionEnded(CP, at(50_401), "x", 1, meter_stop_wh=10_000, reason="EmergencyStop"))
    t = tr.tally("inc-2")
    assert t is not None and t.sessions == 1
    assert t.energy_unmet_wh == pytest.approx(20_000, rel=0.01)  # 40 points to 80 % at 0.5 kWh


def test_a_session_the_fault_let_finish_was_not_cut_and_other_connectors_are_not_claimed() -> None:
    tr = SessionTracker()
    tr.feed(TransactionStarted(CP, at(0), 1, "one", meter_start_wh=0.0))
    tr.feed(TransactionStarted(CP, at(0), 2, "two", meter_start_wh=0.0))
    tr.claim("inc-3", CP, [1], at(100))
    tr.feed(TransactionEnded(CP, at(200), "one", 1, meter_stop_wh=5000, reason="EVDisconnected"))
    tr.feed(TransactionEnded(CP, at(200), "two", 2, meter_stop_wh=5000, reason="Other"))
    t = tr.tally("inc-3")
    assert t is not None and t.sessions == 0 and t.energy_unmet_wh == 0.0


def test_an_early_end_long_before_the_fault_is_not_its_doing() -> None:
    tr = SessionTracker()
    dc_session(tr, "a", 0, wanted_wh=40_000, until_wh=15_000, reason="Other")
    tr.claim("inc-4", CP, None, at(3600))
    t = tr.tally("inc-4")
    assert t is not None and t.sessions == 0


def test_without_soc_the_units_past_sessions_say_what_a_session_this_far_still_wanted() -> None:
    tr = SessionTracker()
    for k, wh in enumerate([4000, 8000, 12_000, 16_000, 20_000]):
        tr.feed(TransactionStarted(CP, at(k * 3600), 1, f"p{k}", meter_start_wh=0.0))
        tr.feed(
            TransactionEnded(CP, at(k * 3600 + 1800), f"p{k}", 1, meter_stop_wh=wh, reason="Local")
        )
    tr.feed(TransactionStarted(CP, at(20_000), 1, "cut", meter_start_wh=100.0))
    tr.claim("inc-5", CP, None, at(20_500))
    tr.feed(TransactionEnded(CP, at(20_510), "cut", 1, meter_stop_wh=10_100.0, reason="PowerLoss"))
    t = tr.tally("inc-5")
    # delivered 10 kWh; the past sessions beyond it wanted 12, 16 and 20: 2, 6 and 10 more
    assert t is not None and t.sessions == 1 and t.energy_unmet_wh == pytest.approx(6000.0)


def test_with_nothing_to_go_on_the_cut_is_counted_and_its_energy_is_unknown() -> None:
    tr = SessionTracker()
    tr.feed(TransactionStarted(CP, at(0), 1, "a", meter_start_wh=0.0))
    tr.claim("inc-6", CP, None, at(10))
    tr.feed(TransactionEnded(CP, at(20), "a", 1, meter_stop_wh=3000.0, reason="Other"))
    t = tr.tally("inc-6")
    assert t is not None and t.sessions == 1 and t.energy_unmet_wh is None
    tr.release("inc-6")
    assert tr.tally("inc-6") is None


def test_one_early_end_belongs_to_one_incident() -> None:
    tr = SessionTracker()
    dc_session(tr, "a", 0, wanted_wh=40_000, until_wh=15_000, reason="Other")
    tr.claim("first", CP, None, at(470))
    tr.claim("second", CP, None, at(475))
    first, second = tr.tally("first"), tr.tally("second")
    assert first is not None and first.sessions == 1
    assert second is not None and second.sessions == 0


def test_unmet_energy_from_soc_counts_the_energy_after_the_last_sample() -> None:
    # 1 kWh per point; last sample at 50 % / 30 kWh; 5 kWh more went in before the stop
    assert unmet_energy_wh(
        35_000, (20.0, 0.0), (50.0, 30_000.0), 35_000.0, 100.0, []
    ) == pytest.approx(45_000)
    # too few points of SoC to say: the past sessions are used, and none: unknown
    assert unmet_energy_wh(1000, (20.0, 0.0), (20.5, 1000.0), 1000.0, 100.0, []) is None


def test_an_ocpp201_session_ended_by_a_fault_is_measured_from_its_transaction_events() -> None:
    tr = SessionTracker()

    def tx_event(kind: str, seq: int, wh: float, soc: float, reason: str | None = None) -> None:
        info: dict[str, object] = {"transactionId": "T-201"}
        if reason:
            info["stoppedReason"] = reason
        sampled = [
            {"value": wh, "measurand": "Energy.Active.Import.Register"},
            {"value": soc, "measurand": "SoC"},
        ]
        payload = {
            "eventType": kind,
            "timestamp": at(60 * seq).isoformat(),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": seq,
            "transactionInfo": info,
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": at(60 * seq).isoformat(), "sampledValue": sampled}],
        }
        for e in events_from_call("CS-1", "2.0.1", "TransactionEvent", payload, at(60 * seq)):
            tr.feed(e)

    tx_event("Started", 0, 0.0, 20.0)
    tx_event("Updated", 1, 5_000.0, 30.0)  # 500 Wh a point
    tx_event("Updated", 2, 10_000.0, 40.0)
    tr.claim("inc-201", "CS-1", [1], at(125))
    tx_event("Ended", 3, 10_000.0, 40.0, reason="Other")
    t = tr.tally("inc-201")
    assert t is not None and t.sessions == 1
    assert t.energy_unmet_wh == pytest.approx(60 * 500.0)  # 60 points short at 500 Wh
