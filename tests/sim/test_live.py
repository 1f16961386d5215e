"""Simulated charge points over real WebSockets: what the CSMS sees, and how faults react.

Every test runs a real :class:`Csms` on a free loopback port and real
:class:`SimChargePoint` connections; simulated time runs 60-600x faster, and
tests await messages and states rather than sleeping.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from chargesight.sim import Csms, Simulation, load_scenario, parse_scenario
from tests.servers import free_port

AC16 = "berlin-mitte-01"  # Ampero AC22-Duo, OCPP 1.6, 2 connectors
DC201 = "berlin-mitte-03"  # Voltix VX-DC150, OCPP 2.0.1, 2 EVSEs


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    async with Csms("127.0.0.1", free_port()) as server:
        yield server


@asynccontextmanager
async def running(csms: Csms, *ids: str, speed: float = 60, **kw: Any) -> AsyncIterator[Simulation]:
    kw.setdefault("drivers", False)
    kw.setdefault("scheduled_faults", False)
    sim = Simulation(load_scenario("small"), csms.url, speed=speed, seed=1, only=ids, **kw)
    async with sim:
        await sim.wait_connected(timeout=10)
        yield sim


def status16(
    connector: int, status: str, error: str | None = None
) -> Callable[[dict[str, Any]], bool]:
    return lambda p: (
        p["connectorId"] == connector
        and p["status"] == status
        and (error is None or p["errorCode"] == error)
    )


async def test_charge_point_boots_and_reports_every_connector_including_zero(csms: Csms) -> None:
    async with running(csms, AC16, DC201):
        boot = csms.received(AC16, "BootNotification")[0].payload
        assert (boot["chargePointVendor"], boot["chargePointModel"], boot["firmwareVersion"]) == (
            "Ampero",
            "AC22-Duo",
            "3.4.1",
        )
        for k in (0, 1, 2):
            await csms.wait_for(AC16, "StatusNotification", status16(k, "Available"))
        boot201 = csms.received(DC201, "BootNotification")[0].payload
        assert boot201["chargingStation"]["firmwareVersion"] == "5.2.3"
        for evse in (1, 2):
            await csms.wait_for(
                DC201,
                "StatusNotification",
                lambda p, e=evse: p["evseId"] == e and p["connectorStatus"] == "Available",
            )


async def test_soft_reset_clears_transient_fault_reboot_boot_and_available(csms: Csms) -> None:
    async with running(csms, AC16) as sim:
        cp = sim.charge_point(AC16)
        sim.inject(AC16, "transient")
        await csms.wait_for(AC16, "StatusNotification", status16(0, "Faulted", "InternalError"))
        mark = len(csms.received(AC16))
        assert (await csms.call(AC16, c16.Reset(type="Soft"))).status == "Accepted"
        await csms.wait_for(AC16, "BootNotification", after=mark)
        await csms.wait_for(
            AC16, "StatusNotification", status16(0, "Available", "NoError"), after=mark
        )
        assert cp.boots == 2 and not cp.faults


async def test_stuck_state_survives_soft_reset_and_clears_on_hard_reset(csms: Csms) -> None:
    async with running(csms, AC16) as sim:
        cp = sim.charge_point(AC16)
        sim.inject(AC16, "stuck")
        await csms.wait_for(AC16, "StatusNotification", status16(0, "Faulted", "OtherError"))
        mark = len(csms.received(AC16))
        await csms.call(AC16, c16.Reset(type="Soft"))
        await csms.wait_for(AC16, "BootNotification", after=mark)
        after_soft = await csms.wait_for(
            AC16, "StatusNotification", lambda p: p["connectorId"] == 0, after=mark
        )
        assert after_soft.payload["status"] == "Faulted"
        assert after_soft.payload["vendorErrorCode"] == "E-STATE-HANG"
        mark = len(csms.received(AC16))
        await csms.call(AC16, c16.Reset(type="Hard"))
        await csms.wait_for(AC16, "StatusNotification", status16(0, "Available"), after=mark)
        assert cp.boots == 3


async def test_connector_lock_failure_survives_every_reset_and_unlock_fails(csms: Csms) -> None:
    async with running(csms, AC16) as sim:
        sim.inject(AC16, "connector_lock", connector=2)
        faulted = await csms.wait_for(AC16, "StatusNotification", status16(2, "Faulted"))
        assert faulted.payload["errorCode"] == "ConnectorLockFailure"
        assert faulted.payload["vendorErrorCode"] == "CX001"
        assert (await csms.call(AC16, c16.UnlockConnector(connector_id=2))).status == "UnlockFailed"
        assert (await csms.call(AC16, c16.UnlockConnector(connector_id=1))).status == "Unlocked"
        # availability toggled: the lock is still broken when the connector comes back
        for kind in ("Inoperative", "Operative"):
            await csms.call(AC16, c16.ChangeAvailability(connector_id=2, type=kind))
        mark = len(csms.received(AC16))
        trigger = c16.TriggerMessage(requested_message="StatusNotification", connector_id=2)
        assert (await csms.call(AC16, trigger)).status == "Accepted"
        await csms.wait_for(
            AC16, "StatusNotification", status16(2, "Faulted", "ConnectorLockFailure"), after=mark
        )
        for reset in ("Soft", "Hard"):  # and after each reset and reboot
            mark = len(csms.received(AC16))
            await csms.call(AC16, c16.Reset(type=reset))
            await csms.wait_for(AC16, "BootNotification", after=mark)
            await csms.wait_for(
                AC16,
                "StatusNotification",
                status16(2, "Faulted", "ConnectorLockFailure"),
                after=mark,
            )
            await csms.wait_for(AC16, "StatusNotification", status16(1, "Available"), after=mark)
            await csms.wait_for(AC16, "StatusNotification", status16(0, "Available"), after=mark)
        assert (await csms.call(AC16, c16.UnlockConnector(connector_id=2))).status == "UnlockFailed"


async def test_ground_failure_on_2_0_1_sends_faulted_and_a_problem_event_with_chargex_code(
    csms: Csms,
) -> None:
    async with running(csms, DC201) as sim:
        sim.inject(DC201, "ground_failure", connector=1)
        await csms.wait_for(
            DC201,
            "StatusNotification",
            lambda p: p["evseId"] == 1 and p["connectorStatus"] == "Faulted",
        )
        ev = await csms.wait_for(DC201, "NotifyEvent")
        data = ev.payload["eventData"][0]
        assert data["variable"]["name"] == "Problem" and data["actualValue"] == "true"
        assert (data["techInfo"], data["techCode"]) == ("GroundFailure", "CX002")
        assert data["component"]["name"] == "Connector" and data["component"]["evse"]["id"] == 1
        mark = len(csms.received(DC201))
        assert (await csms.call(DC201, c201.Reset(type="Immediate"))).status == "Accepted"
        await csms.wait_for(
            DC201, "BootNotification", lambda p: p["reason"] == "RemoteReset", after=mark
        )
        await csms.wait_for(
            DC201,
            "StatusNotification",
            lambda p: p["evseId"] == 1 and p["connectorStatus"] == "Faulted",
            after=mark,
        )


async def test_stuck_2_0_1_station_needs_immediate_reset_not_on_idle(csms: Csms) -> None:
    async with running(csms, DC201) as sim:
        cp = sim.charge_point(DC201)
        sim.inject(DC201, "stuck")
        await cp.wait_status(1, "Faulted")
        await csms.call(DC201, c201.Reset(type="OnIdle"))
        await cp.wait_for(lambda c: c.boots == 2 and c.connected)
        await cp.wait_status(1, "Faulted")
        await csms.call(DC201, c201.Reset(type="Immediate"))
        await cp.wait_for(lambda c: c.boots == 3 and c.connected)
        await cp.wait_status(1, "Available")


async def test_change_availability_toggle_reports_unavailable_then_the_real_status(
    csms: Csms,
) -> None:
    async with running(csms, AC16) as sim:
        sim.inject(AC16, "connector_lock", connector=1)
        await csms.wait_for(AC16, "StatusNotification", status16(1, "Faulted"))
        res = await csms.call(AC16, c16.ChangeAvailability(connector_id=2, type="Inoperative"))
        assert res.status == "Accepted"
        await csms.wait_for(AC16, "StatusNotification", status16(2, "Unavailable"))
        mark = len(csms.received(AC16))
        await csms.call(AC16, c16.ChangeAvailability(connector_id=2, type="Operative"))
        await csms.wait_for(AC16, "StatusNotification", status16(2, "Available"), after=mark)
        await csms.call(AC16, c16.ChangeAvailability(connector_id=1, type="Inoperative"))
        await csms.call(AC16, c16.ChangeAvailability(connector_id=1, type="Operative"))
        assert (
            sim.charge_point(AC16).status(1).status == "Faulted"
        )  # a toggle does not fix hardware


async def test_firmware_update_fixes_the_firmware_bug_for_good(csms: Csms) -> None:
    async with running(csms, DC201) as sim:
        cp = sim.charge_point(DC201)
        sim.inject(DC201, "firmware_bug")
        ev = await csms.wait_for(DC201, "NotifyEvent")
        assert ev.payload["eventData"][0]["techCode"] == "FW-0x3E7"
        res = await csms.call(
            DC201,
            c201.UpdateFirmware(
                request_id=7,
                firmware={
                    "location": "https://fw.example/vx-dc150-5.2.4.bin",
                    "retrieve_date_time": "2026-01-01T00:00:00Z",
                },
            ),
        )
        assert res.status == "Accepted"
        boot = await csms.wait_for(
            DC201, "BootNotification", lambda p: p["reason"] == "FirmwareUpdate"
        )
        assert boot.payload["chargingStation"]["firmwareVersion"] == "5.2.4"
        await csms.wait_for(
            DC201, "FirmwareStatusNotification", lambda p: p["status"] == "Installed"
        )
        statuses = [m.payload["status"] for m in csms.received(DC201, "FirmwareStatusNotification")]
        assert statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
        await cp.wait_status(1, "Available")
        assert cp.firmware == "5.2.4" and not cp.faults


async def test_trigger_configuration_variables_and_diagnostics_answer_like_a_charger(
    csms: Csms,
) -> None:
    async with running(csms, AC16, DC201):
        mark = len(csms.received(AC16))
        res = await csms.call(
            AC16, c16.TriggerMessage(requested_message="StatusNotification", connector_id=1)
        )
        assert res.status == "Accepted"
        await csms.wait_for(AC16, "StatusNotification", status16(1, "Available"), after=mark)
        conf = await csms.call(AC16, c16.GetConfiguration(key=["HeartbeatInterval", "Nope"]))
        assert conf.configuration_key[0]["key"] == "HeartbeatInterval" and conf.unknown_key == [
            "Nope"
        ]
        diag = await csms.call(AC16, c16.GetDiagnostics(location="ftp://x/"))
        assert diag.file_name.startswith("diag-")
        await csms.wait_for(
            AC16, "DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded"
        )
        got = await csms.call(
            DC201,
            c201.GetVariables(
                get_variable_data=[
                    {
                        "component": {"name": "FirmwareCtrlr"},
                        "variable": {"name": "FirmwareVersion"},
                    },
                    {"component": {"name": "Nope"}, "variable": {"name": "X"}},
                ]
            ),
        )
        assert [r["attribute_status"] for r in got.get_variable_result] == [
            "Accepted",
            "UnknownComponent",
        ]
        hb = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
        changed = await csms.call(
            DC201,
            c201.SetVariables(
                set_variable_data=[
                    {**hb, "attribute_value": "120"},
                    {
                        "component": {"name": "Nope"},
                        "variable": {"name": "X"},
                        "attribute_value": "1",
                    },
                ]
            ),
        )
        assert [r["attribute_status"] for r in changed.set_variable_result] == [
            "Accepted",
            "UnknownComponent",
        ]
        again = await csms.call(DC201, c201.GetVariables(get_variable_data=[hb]))
        assert again.get_variable_result[0]["attribute_value"] == "120"
        log = await csms.call(
            DC201,
            c201.GetLog(
                log={"remote_location": "ftp://x/"}, log_type="DiagnosticsLog", request_id=3
            ),
        )
        assert log.status == "Accepted"
        await csms.wait_for(DC201, "LogStatusNotification", lambda p: p["status"] == "Uploaded")


async def test_session_1_6_sends_authorize_start_meter_values_and_stop(csms: Csms) -> None:
    async with running(csms, AC16, speed=600) as sim:
        cp = sim.charge_point(AC16)
        out = await cp.start_session(1, "TAG00001", 2000.0, 11000.0)
        assert out.charged and out.reason == "completed"
        assert out.energy_wh == pytest.approx(2000, abs=1)
        actions = [m.action for m in csms.received(AC16)]
        assert (
            actions.index("Authorize")
            < actions.index("StartTransaction")
            < actions.index("StopTransaction")
        )
        mv = csms.received(AC16, "MeterValues")
        assert mv, "no MeterValues during the session"
        measurands = {s["measurand"] for s in mv[0].payload["meterValue"][0]["sampledValue"]}
        assert {
            "Energy.Active.Import.Register",
            "Power.Active.Import",
            "Voltage",
            "Current.Import",
            "Temperature",
        } <= measurands
        stop = csms.received(AC16, "StopTransaction")[0].payload
        assert stop["meterStop"] == 2000 and stop["transactionId"] == int(out.transaction_id or 0)
        await csms.wait_for(AC16, "StatusNotification", status16(1, "Charging"))
        await csms.wait_for(AC16, "StatusNotification", status16(1, "Finishing"))


async def test_session_2_0_1_uses_transaction_events_with_soc(csms: Csms) -> None:
    async with running(csms, DC201, speed=600) as sim:
        out = await sim.charge_point(DC201).start_session(2, "TAG00002", 5000.0, 150000.0)
        assert out.charged
        events = csms.received(DC201, "TransactionEvent")
        kinds = [e.payload["eventType"] for e in events]
        assert kinds[0] == "Started" and kinds[-1] == "Ended" and "Updated" in kinds
        updated = next(e for e in events if e.payload["eventType"] == "Updated")
        measurands = {s.get("measurand") for s in updated.payload["meterValue"][0]["sampledValue"]}
        assert {"SoC", "Power.Active.Import", "Energy.Active.Import.Register"} <= measurands
        temp = await csms.wait_for(
            DC201, "NotifyEvent", lambda p: p["eventData"][0]["variable"]["name"] == "Temperature"
        )
        assert temp.payload["eventData"][0]["component"]["name"] == "PowerConverter"
        assert 10 < float(temp.payload["eventData"][0]["actualValue"]) < 80
        assert {e.payload["transactionInfo"]["transactionId"] for e in events} == {
            out.transaction_id
        }


async def test_fault_during_a_session_stops_it_and_reports_faulted(csms: Csms) -> None:
    async with running(csms, AC16, speed=60) as sim:
        cp = sim.charge_point(AC16)
        session = cp.spawn(cp.start_session(1, "TAG1", 50_000.0, 11_000.0))
        await csms.wait_for(AC16, "StartTransaction")
        sim.inject(AC16, "ground_failure", connector=1)
        out = await session
        assert out.reason == "ended_early" and out.blame is not None
        stop = await csms.wait_for(AC16, "StopTransaction")
        assert stop.payload["reason"] == "Other"
        await csms.wait_for(AC16, "StatusNotification", status16(1, "Faulted", "GroundFailure"))


async def test_charger_that_fails_every_start_still_reports_available(csms: Csms) -> None:
    async with running(csms, AC16, speed=600) as sim:
        cp = sim.charge_point(AC16)
        sim.inject(AC16, "start_failure")
        out = await cp.start_session(1, "TAG1", 5000.0, 11000.0)
        assert (out.charged, out.reason) == (False, "failed_start")
        assert not csms.received(AC16, "StartTransaction")
        assert csms.received(AC16, "Authorize")
        await cp.wait_status(1, "Available")
        assert all(
            m.payload["status"] != "Faulted" for m in csms.received(AC16, "StatusNotification")
        )


async def test_psu_degradation_shows_sagging_power_and_heat_in_meter_values(csms: Csms) -> None:
    async with running(csms, DC201, speed=600) as sim:
        cp = sim.charge_point(DC201)
        await cp.start_session(1, "TAG1", 20_000.0, 150_000.0)
        sim.inject(DC201, "psu_degradation", severity=0.8)
        mark = len(csms.received(DC201))
        await cp.start_session(1, "TAG2", 20_000.0, 150_000.0)

        def peak_power(msgs: list[Any]) -> float:
            return max(
                float(s["value"])
                for m in msgs
                if m.action == "TransactionEvent" and m.payload.get("meterValue")
                for s in m.payload["meterValue"][0]["sampledValue"]
                if s.get("measurand") == "Power.Active.Import"
            )

        def peak_temperature(msgs: list[Any]) -> float:
            return max(
                float(m.payload["eventData"][0]["actualValue"])
                for m in msgs
                if m.action == "NotifyEvent"
                and m.payload["eventData"][0]["variable"]["name"] == "Temperature"
            )

        before, after = csms.received(DC201)[:mark], csms.received(DC201)[mark:]
        assert peak_power(after) < 0.8 * peak_power(before)
        assert peak_temperature(after) > peak_temperature(before) + 10
        sim.fail_psu(DC201)
        await csms.wait_for(
            DC201,
            "NotifyEvent",
            lambda p: p["eventData"][0].get("techInfo") == "PowerSwitchFailure",
        )
        await cp.wait_status(1, "Faulted")


async def test_charge_point_reconnects_with_backoff_after_a_csms_outage(csms: Csms) -> None:
    async with running(csms, AC16, backoff_s=0.05, max_backoff_s=1.0) as sim:
        cp = sim.charge_point(AC16)
        await csms.stop()
        mark = len(csms.received(AC16))
        await cp.wait_for(lambda c: not c.connected)
        tried = len(cp.attempts)
        await cp.wait_for(lambda c: len(c.attempts) >= tried + 5)  # refused while it is down
        # waits[k] came before attempts[k + 1] (the first attempt had none): each about twice
        # the last (±20 % jitter), exponential backoff and not a hammering; and the attempts
        # were at least that far apart (a loaded machine only adds to it)
        waits = cp.waits[tried - 1 : tried + 3]
        assert len(waits) == 4 and all(b > 1.3 * a for a, b in itertools.pairwise(waits)), waits
        for k in range(tried, tried + 4):
            assert cp.attempts[k + 1] - cp.attempts[k] >= cp.waits[k] * 0.99
        await csms.start()
        await csms.wait_connected(AC16)
        await cp.wait_for(lambda c: c.connected and c.connects >= 2)
        assert cp.boots == 1  # a network drop is not a reboot: no second BootNotification
        assert len(csms.received(AC16, "BootNotification")) == 1
        await csms.wait_for(AC16, "StatusNotification", status16(0, "Available"), after=mark)


async def test_flaky_site_drops_every_charge_point_which_come_back(csms: Csms) -> None:
    ids = ("leipzig-mall-01", "leipzig-mall-02")
    async with running(csms, *ids) as sim:
        fault = sim.inject("leipzig-mall", "flaky_connectivity", drop_s=60)
        for cid in ids:
            await sim.charge_point(cid).wait_for(lambda c: c.connects >= 2 and c.connected)
        assert fault.scope == "site" and fault.charge_points == list(ids)
        truth = sim.ground_truth()[0]
        assert (truth["scope"], truth["fix"], truth["disconnects"]) == ("site", "network_fix", 1)


async def test_drivers_lose_sessions_to_a_fault_and_ground_truth_costs_them(
    tmp_path: Any, csms: Csms
) -> None:
    scenario = parse_scenario(
        '[network]\nname = "one"\nseed = 5\nmeter_interval_s = 600\n'
        "[drivers]\nsessions_per_connector_day = 200\nfailed_start_ratio = 0\n"
        '[[sites]]\nid = "solo"\nname = "Solo"\ncurrency = "EUR"\nprice_per_kwh = 0.5\n'
        '[[sites.chargers]]\nmodel = "ampero-ac11"\n'
    )
    async with Simulation(scenario, csms.url, speed=3600, seed=2, scheduled_faults=False) as sim:
        await sim.wait_connected()
        fault = sim.inject("solo-01", "ground_failure", connector=1)
        await sim.wait_for(lambda s: fault.sessions_lost >= 2, timeout=20)
        sim.write_ground_truth(tmp_path / "gt.jsonl")
    import orjson

    rec = orjson.loads((tmp_path / "gt.jsonl").read_bytes().splitlines()[0])
    assert rec["kind"] == "ground_failure" and rec["sessions_lost"] >= 2
    assert rec["revenue_lost"]["amount"] > 0 and rec["revenue_lost"]["currency"] == "EUR"
    assert rec["connector_id"] == 1 and rec["scope"] == "connector"


SCHEDULED = """
[network]
name = "scheduled"
seed = 9

[drivers]
sessions_per_connector_day = 0

[[sites]]
id = "north"
name = "North"
currency = "EUR"
price_per_kwh = 0.5

  [[sites.chargers]]
  model = "ampero-ac22"

[[sites]]
id = "south"
name = "South"
currency = "SEK"
price_per_kwh = 5.0

  [[sites.chargers]]
  model = "voltix-dc150"

[[faults]]
kind = "connector_lock"
charge_point = "north-01"
connector = 2
start_h = 0.02
duration_h = 0.05
"""


async def test_scheduled_fault_starts_and_is_repaired_on_time_per_site_endpoints(
    csms: Csms,
) -> None:
    async with Csms("127.0.0.1", free_port()) as south:
        urls = {"north": csms.url, "south": south.url}
        async with Simulation(parse_scenario(SCHEDULED), urls, speed=600, seed=3) as sim:
            await sim.wait_connected()
            assert csms.connected() == {"north-01"} and south.connected() == {"south-01"}
            faulted = await csms.wait_for("north-01", "StatusNotification", status16(2, "Faulted"))
            repaired = await csms.wait_for(
                "north-01",
                "StatusNotification",
                status16(2, "Available"),
                after=csms.received("north-01").index(faulted),
            )
            assert repaired.at > faulted.at
            truth = sim.ground_truth()
        assert [(t["kind"], t["connector_id"], t["fix"]) for t in truth] == [
            ("connector_lock", 2, "field_technician")
        ]
        assert truth[0]["ended_at"] is not None


async def test_cli_run_connects_the_scenario_and_writes_ground_truth(
    csms: Csms, tmp_path: Any
) -> None:
    import asyncio
    import sys

    gt = tmp_path / "truth.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chargesight.cli.main",
        "sim",
        "run",
        "--scenario",
        "small",
        "--csms",
        csms.url,
        "--speed",
        "60",
        "--duration",
        "1.5",
        "--only",
        f"{AC16},{DC201}",
        "--ground-truth",
        str(gt),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await csms.wait_for(AC16, "BootNotification", timeout=20)
    await csms.wait_for(DC201, "BootNotification", timeout=20)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "simulating 2 charge points" in out.decode()
    assert gt.exists()


def test_cli_run_without_an_endpoint_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from chargesight.sim.cli import main

    assert main(["run", "--scenario", "small"]) == 2
    assert "--csms" in capsys.readouterr().err


async def test_run_that_starts_after_the_history_begins_with_faults_already_present(
    csms: Csms,
) -> None:
    scenario = parse_scenario(SCHEDULED)
    async with Simulation(
        scenario, csms.url, speed=600, seed=3, offset_h=0.03, only=["north-01"]
    ) as sim:
        await sim.wait_connected()
        cp = sim.charge_point("north-01")
        await cp.wait_status(2, "Faulted")  # began at 0.02 h, before this run's start
        first = csms.received("north-01", "StatusNotification")
        assert any(
            m.payload["connectorId"] == 2 and m.payload["status"] == "Faulted" for m in first
        )
        await cp.wait_status(2, "Available", timeout=10)  # repaired at 0.07 h
        assert sim.clock.elapsed() >= 0.07 * 3600


async def test_on_idle_reset_waits_for_the_running_session_then_reboots(csms: Csms) -> None:
    async with running(csms, DC201, speed=60) as sim:
        cp = sim.charge_point(DC201)
        session = cp.spawn(cp.start_session(1, "TAG1", 3000.0, 150_000.0))
        await csms.wait_for(DC201, "TransactionEvent", lambda p: p["eventType"] == "Started")
        assert (await csms.call(DC201, c201.Reset(type="OnIdle"))).status == "Scheduled"
        out = await session
        assert out.reason == "completed"  # not interrupted
        boot = await csms.wait_for(
            DC201, "BootNotification", lambda p: p["reason"] == "RemoteReset"
        )
        ended = await csms.wait_for(DC201, "TransactionEvent", lambda p: p["eventType"] == "Ended")
        assert ended.at <= boot.at


async def test_unsupported_request_gets_a_call_error(csms: Csms) -> None:
    from ocpp.exceptions import OCPPError

    async with running(csms, AC16):
        with pytest.raises(OCPPError):
            await csms.call(AC16, c16.ClearCache())
