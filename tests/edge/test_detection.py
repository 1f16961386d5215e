"""Detection state machines, fed events and a monotonic time (pure, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from chargesight.common.events import (
    AuthorizeResult,
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Heartbeat,
    HeartbeatInterval,
    MeterSample,
    ProblemReport,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.edge.detection import (
    Absorbed,
    Closed,
    DetectionParams,
    Detector,
    Opened,
    Output,
    Recovered,
    Reopened,
)
from chargesight.edge.profiles import ProfileRegistry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def make(**params: float) -> Detector:
    ids = itertools.count()
    registry = ProfileRegistry.load()
    det: Detector

    def profile_for(cp: str):  # type: ignore[no-untyped-def]
        st = det.charge_points[cp]
        return registry.match(
            st.hardware.vendor, st.hardware.model, st.hardware.firmware, st.version
        )

    det = Detector(
        DetectionParams(**params), profile_for=profile_for, new_id=lambda: f"i{next(ids)}"
    )
    return det


def up(det: Detector, cp: str, t: float, connectors: int = 2) -> list[Output]:
    out = det.feed(ConnectionUp(cp, at(t), "1.6"), t)
    out += det.feed(Boot(cp, at(t), "Voltix", "VX-DC50", firmware="2.1.0"), t)
    for c in range(1, connectors + 1):
        out += det.feed(ConnectorStatus(cp, at(t), c, "Available"), t)
    return out


def kinds(out: list[Output]) -> list[str]:
    return [type(o).__name__ for o in out]


def test_connector_zero_fault_is_a_charge_point_incident() -> None:
    det = make()
    up(det, "CP1", 0)
    out = det.feed(ConnectorStatus("CP1", at(1), 0, "Faulted", "InternalError"), 1)
    assert isinstance(out[0], Opened)
    assert (out[0].incident.scope, out[0].incident.connector_id) == ("charge_point", None)
    out = det.feed(ConnectorStatus("CP1", at(2), 1, "Available"), 2)
    assert kinds(out) == []
    out = det.feed(ConnectorStatus("CP1", at(3), 2, "Available"), 3)
    assert kinds(out) == ["Recovered"]


def test_connector_fault_recovers_only_on_a_healthy_status_with_no_error() -> None:
    det = make()
    up(det, "CP1", 0)
    det.feed(ConnectorStatus("CP1", at(1), 1, "Faulted", "HighTemperature"), 1)
    assert kinds(det.feed(ConnectorStatus("CP1", at(2), 1, "Unavailable"), 2)) == []
    assert (
        kinds(det.feed(ConnectorStatus("CP1", at(3), 1, "Available", "HighTemperature"), 3)) == []
    )
    assert kinds(det.feed(ConnectorStatus("CP1", at(4), 1, "Preparing"), 4)) == ["Recovered"]


def test_vendor_code_is_mapped_through_the_hardware_profile() -> None:
    det = make()
    up(det, "CP1", 0)
    out = det.feed(
        ConnectorStatus("CP1", at(1), 1, "Faulted", "OtherError", vendor_error_code="VX-204"), 1
    )
    assert isinstance(out[0], Opened)
    fault = out[0].incident.fault
    assert (fault.category, fault.component, fault.chargex_code) == (
        "temperature",
        "liquid_cooling",
        "CX003",
    )


def test_lost_connection_recovers_after_reconnect_and_connector_reports() -> None:
    det = make()
    up(det, "CP1", 0)
    up(det, "CP2", 0)
    up(det, "CP3", 0)
    out = det.feed(ConnectionDown("CP1", at(1)), 1)
    assert kinds(out) == ["Opened"] and out[0].incident.kind == "connectivity"  # type: ignore[union-attr]
    assert kinds(det.feed(ConnectionUp("CP1", at(5), "1.6"), 5)) == []
    assert kinds(det.feed(ConnectorStatus("CP1", at(6), 1, "Available"), 6)) == []
    assert kinds(det.feed(ConnectorStatus("CP1", at(6), 2, "Available"), 6)) == ["Recovered"]


def test_missed_heartbeats_open_an_incident_from_the_last_message_and_any_message_recovers_it() -> (
    None
):
    det = make(heartbeat_grace=2)
    up(det, "CP1", 0)
    det.feed(HeartbeatInterval("CP1", at(0), 60), 0)
    det.feed(Heartbeat("CP1", at(10)), 10)
    assert kinds(det.tick(at(100), 100)) == []
    out = det.tick(at(131), 131)
    assert kinds(out) == ["Opened"] and out[0].incident.fault.code == "MissedHeartbeats"  # type: ignore[union-attr]
    # silent since the last message: the outage counts from then, not from its detection
    assert out[0].incident.started_at == at(10)  # type: ignore[union-attr]
    assert kinds(det.tick(at(140), 140)) == []
    assert kinds(det.feed(Heartbeat("CP1", at(141)), 141)) == ["Recovered"]


def test_flapping_fault_reopens_the_same_incident_then_closes_after_the_flap_period() -> None:
    det = make(flap_period_s=60)
    up(det, "CP1", 0)
    first = det.feed(ConnectorStatus("CP1", at(1), 1, "Faulted", "InternalError"), 1)[0]
    det.feed(ConnectorStatus("CP1", at(2), 1, "Available"), 2)
    again = det.feed(ConnectorStatus("CP1", at(30), 1, "Faulted", "InternalError"), 30)
    assert isinstance(again[0], Reopened) and again[0].incident is first.incident  # type: ignore[attr-defined]
    assert again[0].incident.flaps == 1
    det.feed(ConnectorStatus("CP1", at(31), 1, "Available"), 31)
    assert kinds(det.tick(at(60), 60)) == []
    closed = det.tick(at(92), 92)
    assert kinds(closed) == ["Closed"]
    new = det.feed(ConnectorStatus("CP1", at(100), 1, "Faulted", "InternalError"), 100)
    assert isinstance(new[0], Opened) and new[0].incident is not first.incident  # type: ignore[attr-defined]


def test_charge_point_dropping_repeatedly_is_one_incident_with_a_disconnect_count() -> None:
    det = make(flap_period_s=60)
    for cp in ("CP1", "CP2", "CP3", "CP4", "CP5"):
        up(det, cp, 0)
    incidents = set()
    for t in (10, 20, 30):
        for o in det.feed(ConnectionDown("CP1", at(t)), t):
            if isinstance(o, Opened | Reopened):
                incidents.add(o.incident.id)
        up(det, "CP1", t + 2)
    assert len(incidents) == 1
    incident = det.incidents[incidents.pop()]
    assert incident.disconnects == 3


def test_several_charge_points_dropping_together_are_one_site_incident() -> None:
    det = make(site_event_window_s=10, site_event_min_fraction=0.5)
    for cp in ("CP1", "CP2", "CP3", "CP4"):
        up(det, cp, 0)
    out = det.feed(ConnectionDown("CP1", at(1)), 1)
    assert kinds(out) == ["Opened"]
    out = det.feed(ConnectionDown("CP2", at(3)), 3)
    assert kinds(out) == ["Opened", "Opened", "Absorbed", "Absorbed"]
    site = out[1].incident  # type: ignore[union-attr]
    assert site.scope == "site" and sorted(site.chargers) == ["CP1", "CP2"]
    out = det.feed(ConnectionDown("CP3", at(5)), 5)
    assert [type(o).__name__ for o in out] == ["Opened", "Absorbed"]
    assert isinstance(out[1], Absorbed) and out[1].site is site
    for cp in ("CP1", "CP2"):
        up(det, cp, 20)
    out = up(det, "CP3", 21)
    assert any(isinstance(o, Recovered) and o.incident is site for o in out)


def test_one_charge_point_of_many_dropping_is_not_a_site_incident() -> None:
    det = make(site_event_window_s=10, site_event_min_fraction=0.5)
    for cp in ("CP1", "CP2", "CP3", "CP4", "CP5"):
        up(det, cp, 0)
    det.feed(ConnectionDown("CP1", at(1)), 1)
    out = det.feed(ConnectionDown("CP2", at(30)), 30)
    assert [o.incident.scope for o in out if isinstance(o, Opened)] == ["charge_point"]


def test_ocpp201_problem_report_enriches_the_faulted_status() -> None:
    det = make()
    det.feed(ConnectionUp("CS1", at(0), "2.0.1"), 0)
    det.feed(
        ProblemReport(
            "CS1",
            at(1),
            "Connector",
            "Problem",
            "true",
            evse_id=1,
            tech_info="OtherError",
            tech_code="CX011",
        ),
        1,
    )
    out = det.feed(ConnectorStatus("CS1", at(1), 1, "Faulted"), 1)
    assert isinstance(out[0], Opened)
    assert out[0].incident.fault.chargex_code == "CX011"
    assert out[0].incident.fault.safety_critical


def test_ocpp201_charging_station_problem_is_a_charge_point_incident() -> None:
    det = make()
    det.feed(ConnectionUp("CS1", at(0), "2.0.1"), 0)
    out = det.feed(
        ProblemReport(
            "CS1", at(1), "ChargingStation", "Problem", "true", tech_info="InternalError"
        ),
        1,
    )
    assert isinstance(out[0], Opened) and out[0].incident.scope == "charge_point"
    out = det.feed(
        ProblemReport("CS1", at(2), "ChargingStation", "Problem", "false", cleared=True), 2
    )
    assert kinds(out) == ["Recovered"]


def _session(
    det: Detector, cp: str, t: float, wh: float, peak_w: float, duration: float = 600
) -> list[Output]:
    out = det.feed(TransactionStarted(cp, at(t), 1, f"tx{t}", meter_start_wh=1000), t)
    out += det.feed(
        MeterSample(cp, at(t + 10), 1, f"tx{t}", {"Power.Active.Import": peak_w}), t + 10
    )
    out += det.feed(
        TransactionEnded(cp, at(t + duration), f"tx{t}", meter_stop_wh=1000 + wh), t + duration
    )
    return out


def test_sessions_failing_to_start_open_a_performance_incident() -> None:
    det = make()
    up(det, "CP1", 0)
    out: list[Output] = []
    for i in range(3):
        out += _session(det, "CP1", i * 1000, wh=0, peak_w=0, duration=30)
    opened = [o for o in out if isinstance(o, Opened)]
    assert [o.incident.fault.code for o in opened] == ["SessionStartFailures"]
    assert opened[0].incident.kind == "performance"
    out = _session(det, "CP1", 5000, wh=8000, peak_w=40000)
    assert kinds([o for o in out if isinstance(o, Recovered)]) == ["Recovered"]


def test_power_below_rated_opens_a_performance_incident() -> None:
    det = make()
    up(det, "CP1", 0)  # Voltix VX-DC50: 50 kW rated, min fraction 0.4
    out: list[Output] = []
    for i in range(3):
        out += _session(det, "CP1", i * 1000, wh=5000, peak_w=12000)
    assert [o.incident.fault.code for o in out if isinstance(o, Opened)] == ["PowerBelowRated"]


def test_closed_incidents_are_forgotten() -> None:
    det = make(flap_period_s=5)
    up(det, "CP1", 0)
    det.feed(ConnectorStatus("CP1", at(1), 1, "Faulted", "InternalError"), 1)
    det.feed(ConnectorStatus("CP1", at(2), 1, "Available"), 2)
    assert any(isinstance(o, Closed) for o in det.tick(at(10), 10))
    assert det.open_incidents() == []
    assert det.incidents == {}


def test_authorised_start_attempts_that_never_start_a_transaction_are_failed_sessions() -> None:
    det = make()
    up(det, "CP1", 0)
    out: list[Output] = []
    for i in range(3):
        t = i * 100
        out += det.feed(ConnectorStatus("CP1", at(t + 1), 1, "Preparing"), t + 1)
        out += det.feed(AuthorizeResult("CP1", at(t + 2), "TAG", "Accepted"), t + 2)
        out += det.feed(ConnectorStatus("CP1", at(t + 32), 1, "Available"), t + 32)
    assert kinds(out).count("SessionFailed") == 3
    (opened,) = [o for o in out if isinstance(o, Opened)]
    assert (opened.incident.fault.code, opened.incident.scope) == (
        "SessionStartFailures",
        "connector",
    )


def test_driver_who_plugs_in_and_leaves_without_authorising_is_not_a_failed_session() -> None:
    det = make()
    up(det, "CP1", 0)
    out: list[Output] = []
    for i in range(5):
        out += det.feed(ConnectorStatus("CP1", at(i * 10 + 1), 1, "Preparing"), i * 10 + 1)
        out += det.feed(ConnectorStatus("CP1", at(i * 10 + 5), 1, "Available"), i * 10 + 5)
    assert out == []


def test_unrelated_faults_on_several_charge_points_at_once_stay_separate_incidents() -> None:
    det = make(site_event_window_s=10, site_event_min_fraction=0.5)
    for cp in ("CP1", "CP2", "CP3"):
        up(det, cp, 0)
    out = det.feed(ConnectorStatus("CP1", at(1), 1, "Faulted", "InternalError"), 1)
    out += det.feed(ConnectorStatus("CP2", at(2), 2, "Faulted", "ConnectorLockFailure"), 2)
    out += det.feed(ConnectorStatus("CP3", at(3), 0, "Faulted", "HighTemperature"), 3)
    assert kinds(out) == ["Opened", "Opened", "Opened"]
    assert all(o.incident.scope != "site" for o in out if isinstance(o, Opened))


def test_power_loss_on_most_charge_points_is_one_site_supply_incident() -> None:
    det = make(site_event_window_s=10, site_event_min_fraction=0.5)
    for cp in ("CP1", "CP2", "CP3"):
        up(det, cp, 0)
    out = det.feed(
        ConnectorStatus("CP1", at(1), 0, "Faulted", "OtherError", vendor_error_code="CX015"), 1
    )
    out += det.feed(ConnectorStatus("CP2", at(2), 0, "Faulted", "UnderVoltage"), 2)
    sites = [o.incident for o in out if isinstance(o, Opened) and o.incident.scope == "site"]
    assert len(sites) == 1
    assert (sites[0].kind, sites[0].fault.category) == ("fault", "power_loss")
    assert sorted(sites[0].chargers) == ["CP1", "CP2"]
