"""OCPP payloads to events: odd values give no reading, never an exception."""

from __future__ import annotations

from datetime import UTC, datetime

from chargesight.common.normalise import events_from_call, events_from_result, sampled_values

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def test_not_a_number_and_infinite_readings_are_no_reading() -> None:
    mv = {
        "sampledValue": [
            {"value": "NaN", "measurand": "Temperature"},
            {"value": "Infinity", "measurand": "Power.Active.Import"},
            {"value": "-inf", "measurand": "Voltage"},
            {"value": "16", "measurand": "Current.Import", "phase": "L1"},
        ]
    }
    assert sampled_values(mv) == {"Current.Import": 16.0}
    # one phase unreadable: the sum of the other two would understate it, so no reading
    phases = {
        "sampledValue": [
            {"value": v, "measurand": "Power.Active.Import", "phase": p}
            for v, p in (("NaN", "L1"), ("7000", "L2"), ("7000", "L3"))
        ]
    }
    assert sampled_values(phases) == {}
    # finite as sent, infinite once scaled to base units
    huge = {"sampledValue": [{"value": "1e306", "unit": "kWh"}]}
    assert sampled_values(huge) == {}


def test_fields_of_the_wrong_type_imply_no_event_and_raise_nothing() -> None:
    assert (
        events_from_call("cp", "1.6", "MeterValues", {"connectorId": 1, "meterValue": 5}, NOW) == []
    )
    assert events_from_call("cp", "2.0.1", "TransactionEvent", {"eventType": 3}, NOW) == []
    start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "x"}
    assert events_from_result("cp", "1.6", "StartTransaction", start, {"idTagInfo": 7}, NOW) == []
