"""Issue 5: a site keeps working while the CSMS is away, and the CSMS gets everything once, in order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import InternalError
from ocpp.v16 import call as call16
from websockets.exceptions import ConnectionClosed

from chargesight.edge.agent import Agent
from chargesight.edge.offline import ServeOffline
from tests.edge.conftest import edge_config
from tests.peers import TestCsms, boot16, connect_cp, iso_now


class Site:
    """An agent in front of a CSMS that can go away and come back on the same port."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.csms = TestCsms()
        self.sections = {
            "offline": {"replay_backoff_s": 0.01, "replay_max_attempts": 2},
            **sections,
        }
        self.agent: Agent | None = None

    async def start_agent(self) -> Agent:
        self.agent = Agent(edge_config(self.tmp_path, self.csms.url, **self.sections))
        await self.agent.start()
        return self.agent

    @property
    def url(self) -> str:
        assert self.agent is not None
        return f"ws://127.0.0.1:{self.agent.proxy.port}/ocpp"

    async def csms_back(self, cp_id: str) -> None:
        self.csms.connected[cp_id] = asyncio.Event()
        await self.csms.start()
        async with asyncio.timeout(10):
            await self.csms.connected[cp_id].wait()

    def calls_seen(self, cp_id: str) -> list[list[Any]]:
        return [m for m in map(json.loads, self.csms.received(cp_id)) if m[0] == 2]

    async def replayed(self, cp_id: str, n: int) -> list[list[Any]]:
        return await self.csms.wait_calls(cp_id, n)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(tmp_path)
    await s.csms.start()
    await s.start_agent()
    try:
        yield s
    finally:
        if s.agent is not None:
            await s.agent.close()
        await s.csms.stop()


def start_tx(tag: str = "TAG-1", connector: int = 1, meter: int = 0) -> call16.StartTransaction:
    return call16.StartTransaction(
        connector_id=connector, id_tag=tag, meter_start=meter, timestamp=iso_now()
    )


def meter(tx: int, wh: int) -> call16.MeterValues:
    return call16.MeterValues(
        connector_id=1,
        transaction_id=tx,
        meter_value=[{"timestamp": iso_now(), "sampled_value": [{"value": str(wh)}]}],
    )


def stop_tx(tx: int, wh: int) -> call16.StopTransaction:
    return call16.StopTransaction(meter_stop=wh, timestamp=iso_now(), transaction_id=tx)


async def test_session_started_and_stopped_offline_reaches_csms_once_with_its_id(
    site: Site,
) -> None:
    async with connect_cp(site.url, "CP-1") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        started = await cp.call(start_tx())
        provisional = started.transaction_id
        assert provisional < 0
        await cp.call(meter(provisional, 500))
        await cp.call(stop_tx(provisional, 1000))
        assert len(site.calls_seen("CP-1")) == 1  # only the Boot, before the outage
        await site.csms_back("CP-1")
        calls = await site.replayed("CP-1", 4)
    assert [c[2] for c in calls] == [
        "BootNotification",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    real = calls[1 + 1][3]["transactionId"]
    assert real > 0
    assert calls[3][3]["transactionId"] == real
    assert calls[3][3]["meterStop"] == 1000
    await asyncio.sleep(0.2)  # give a duplicate the time to show up, if there were one
    assert len(site.calls_seen("CP-1")) == 4  # nothing doubled


async def test_session_started_offline_and_stopped_online_gets_the_csms_id(site: Site) -> None:
    async with connect_cp(site.url, "CP-2") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        provisional = (await cp.call(start_tx())).transaction_id
        await site.csms_back("CP-2")
        await site.replayed("CP-2", 2)
        await cp.call(stop_tx(provisional, 700))  # live, with the id the charger knows
        calls = await site.replayed("CP-2", 3)
    real_from_csms = calls[1][3]
    assert calls[2][2] == "StopTransaction"
    assert calls[2][3]["transactionId"] > 0
    assert calls[2][3]["transactionId"] != provisional
    assert real_from_csms["idTag"] == "TAG-1"


async def test_session_started_online_and_stopped_offline_keeps_its_id(site: Site) -> None:
    async with connect_cp(site.url, "CP-3") as cp:
        await cp.call(boot16())
        real = (await cp.call(start_tx())).transaction_id
        assert real > 0
        await site.csms.stop()
        await cp.call(stop_tx(real, 900))
        await site.csms_back("CP-3")
        calls = await site.replayed("CP-3", 3)
    assert [c[2] for c in calls] == ["BootNotification", "StartTransaction", "StopTransaction"]
    assert calls[2][3]["transactionId"] == real


async def test_session_spanning_two_outages_arrives_in_order(site: Site) -> None:
    async with connect_cp(site.url, "CP-4") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        tx = (await cp.call(start_tx())).transaction_id
        await cp.call(meter(tx, 100))
        await site.csms_back("CP-4")
        await site.replayed("CP-4", 3)
        assert site.agent is not None
        await site.agent.offline_store.wait_empty("CP-4", 10)  # replay acknowledged
        await site.csms.stop()
        await cp.call(meter(tx, 200))
        await cp.call(stop_tx(tx, 300))
        await site.csms_back("CP-4")
        calls = await site.replayed("CP-4", 5)
    real = calls[1 + 1][3]["transactionId"]
    assert [c[2] for c in calls] == [
        "BootNotification",
        "StartTransaction",
        "MeterValues",
        "MeterValues",
        "StopTransaction",
    ]
    assert [c[3]["transactionId"] for c in calls[2:]] == [real, real, real]


async def test_queue_keeps_status_and_transactions_in_order(site: Site) -> None:
    async with connect_cp(site.url, "CP-5") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
        )
        tx = (await cp.call(start_tx())).transaction_id
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging")
        )
        await cp.call(stop_tx(tx, 50))
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Finishing")
        )
        await cp.call(call16.Heartbeat())  # answered locally, never queued
        await site.csms_back("CP-5")
        calls = await site.replayed("CP-5", 6)
    assert [(c[2], c[3].get("status")) for c in calls[1:]] == [
        ("StatusNotification", "Preparing"),
        ("StartTransaction", None),
        ("StatusNotification", "Charging"),
        ("StopTransaction", None),
        ("StatusNotification", "Finishing"),
    ]
    assert all("timestamp" in c[3] for c in calls[1:])  # original times travel with them


async def test_agent_restart_during_outage_loses_nothing(site: Site) -> None:
    async with connect_cp(site.url, "CP-6") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        tx = (await cp.call(start_tx())).transaction_id
        await cp.call(meter(tx, 10))
    assert site.agent is not None
    await site.agent.close()  # the gateway restarts while the CSMS is still away
    await site.start_agent()
    async with connect_cp(site.url, "CP-6") as cp:
        await cp.call(stop_tx(tx, 20))
        await site.csms_back("CP-6")
        calls = await site.replayed("CP-6", 4)
    assert [c[2] for c in calls] == [
        "BootNotification",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    real = calls[2][3]["transactionId"]
    assert real > 0
    assert calls[3][3]["transactionId"] == real


async def test_message_rejected_on_replay_is_retried_then_parked_with_alarm(site: Site) -> None:
    async with connect_cp(site.url, "CP-7") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Available")
        )
        tx = (await cp.call(start_tx())).transaction_id
        site.csms.reject_actions.add("StatusNotification")
        await site.csms_back("CP-7")
        calls = await site.replayed("CP-7", 4)
    # Tried twice (replay_max_attempts = 2), then parked; the queue moved on to the start.
    assert [c[2] for c in calls] == [
        "BootNotification",
        "StatusNotification",
        "StatusNotification",
        "StartTransaction",
    ]
    assert site.agent is not None
    status = site.agent.offline.status()
    assert status["parked"] == 1
    assert "parked" in status["alarms"][-1]["message"]
    assert tx < 0


async def test_authorize_offline_uses_ids_the_csms_accepted(tmp_path: Path) -> None:
    s = Site(tmp_path, offline={"unknown_id_policy": "reject", "replay_backoff_s": 0.01})
    await s.csms.start()
    await s.start_agent()
    try:
        async with connect_cp(s.url, "CP-8") as cp:
            await cp.call(boot16())
            assert (await cp.call(call16.Authorize(id_tag="KNOWN"))).id_tag_info[
                "status"
            ] == "Accepted"
            # learnt from the live answer before it was forwarded (remembered in memory by a
            # task scheduled then, so run before the answer reached us; committed after)
            assert s.agent is not None and isinstance(s.agent.offline, ServeOffline)
            assert "KNOWN" in s.agent.offline.store.auth_cache
            await s.csms.stop()
            known = await cp.call(call16.Authorize(id_tag="KNOWN"))
            unknown = await cp.call(call16.Authorize(id_tag="STRANGER"))
        assert known.id_tag_info["status"] == "Accepted"
        assert unknown.id_tag_info["status"] == "Invalid"
    finally:
        assert s.agent is not None
        await s.agent.close()
        await s.csms.stop()


async def test_stop_with_minus_one_after_start_is_mapped_to_the_open_transaction(
    site: Site,
) -> None:
    async with connect_cp(site.url, "CP-9") as cp:
        await cp.call(boot16())
        real = (await cp.call(start_tx())).transaction_id
        await cp.call(stop_tx(-1, 400))  # EVerest/libocpp#495
        calls = await site.replayed("CP-9", 3)
    assert calls[2][2] == "StopTransaction"
    assert calls[2][3]["transactionId"] == real


async def test_retried_offline_start_does_not_make_a_second_transaction(site: Site) -> None:
    async with connect_cp(site.url, "CP-10") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        start = start_tx()
        first = (await cp.call(start)).transaction_id
        second = (await cp.call(start)).transaction_id  # the charger retries the same start
        assert first == second
        await cp.call(stop_tx(first, 5))
        await site.csms_back("CP-10")
        calls = await site.replayed("CP-10", 3)
    assert [c[2] for c in calls] == ["BootNotification", "StartTransaction", "StopTransaction"]


async def test_disconnect_mode_closes_charge_points_and_accepts_them_again(tmp_path: Path) -> None:
    s = Site(tmp_path, ocpp={"offline": "disconnect"})
    await s.csms.start()
    await s.start_agent()
    try:
        async with connect_cp(s.url, "CP-D") as cp:
            await cp.call(boot16())
            await s.csms.stop()
            async with asyncio.timeout(5):
                await cp.ws.wait_closed()
            assert cp.ws.close_code == 1001
        await s.csms.start()
        async with connect_cp(s.url, "CP-D") as cp:
            await cp.call(call16.Heartbeat())
        assert s.agent is not None
        assert s.agent.offline.status()["mode"] == "disconnect"
    finally:
        assert s.agent is not None
        await s.agent.close()
        await s.csms.stop()


async def test_disconnect_mode_refuses_charge_point_while_csms_is_down(tmp_path: Path) -> None:
    s = Site(tmp_path, ocpp={"offline": "disconnect"})
    await s.start_agent()  # the CSMS never comes up
    try:
        async with connect_cp(s.url, "CP-E") as cp:
            with pytest.raises((ConnectionClosed, asyncio.TimeoutError)):
                await cp.call(call16.Heartbeat())
            async with asyncio.timeout(5):
                await cp.ws.wait_closed()
    finally:
        assert s.agent is not None
        await s.agent.close()


async def test_ocpp201_transaction_during_outage_is_replayed_in_order(site: Site) -> None:
    from ocpp.v201 import call as call201

    from tests.peers import boot201

    async with connect_cp(site.url, "CS-201", version="2.0.1") as cp:
        await cp.call(boot201())
        await site.csms.stop()
        for kind, seq in (("Started", 0), ("Updated", 1), ("Ended", 2)):
            answer = await cp.call(
                call201.TransactionEvent(
                    event_type=kind,
                    timestamp=iso_now(),
                    trigger_reason="Authorized" if kind == "Started" else "MeterValuePeriodic",
                    seq_no=seq,
                    transaction_info={"transaction_id": "tx-201-a"},
                    id_token={"id_token": "TAG-201", "type": "ISO14443"}
                    if kind == "Started"
                    else None,
                )
            )
            if kind == "Started":
                assert answer.id_token_info["status"] == "Accepted"
        await cp.call(call201.Heartbeat())  # answered locally, never queued
        await site.csms_back("CS-201")
        calls = await site.replayed("CS-201", 4)
    assert [c[2] for c in calls] == ["BootNotification", *["TransactionEvent"] * 3]
    assert [c[3]["eventType"] for c in calls[1:]] == ["Started", "Updated", "Ended"]
    assert {c[3]["transactionInfo"]["transactionId"] for c in calls[1:]} == {"tx-201-a"}


async def test_full_queue_thins_meter_values_before_transactions(tmp_path: Path) -> None:
    s = Site(tmp_path, offline={"queue_max_messages": 100, "replay_backoff_s": 0.01})
    await s.csms.start()
    await s.start_agent()
    try:
        async with connect_cp(s.url, "CP-FULL") as cp:
            await cp.call(boot16())
            await s.csms.stop()
            tx = (await cp.call(start_tx())).transaction_id
            for i in range(120):
                await cp.call(meter(tx, i))
            await cp.call(stop_tx(tx, 999))
            assert s.agent is not None
            status = s.agent.offline.status()
            assert status["queued"] <= 100
            assert status["thinned_meter_values"] >= 20
            assert "90% full" in status["alarms"][0]["message"]
            await s.csms_back("CP-FULL")
            calls = await s.replayed("CP-FULL", 3)
            await s.agent.offline_store.wait_empty("CP-FULL", 10)
        calls = s.calls_seen("CP-FULL")
        actions = [c[2] for c in calls]
        # Both transaction messages arrived; only meter values were thinned.
        assert actions.count("StartTransaction") == 1
        assert actions.count("StopTransaction") == 1
        assert actions[-1] == "StopTransaction"
        assert actions.count("MeterValues") < 120
    finally:
        assert s.agent is not None
        await s.agent.close()
        await s.csms.stop()


async def test_stop_for_a_start_the_csms_never_saw_is_delivered_with_an_alarm(site: Site) -> None:
    async with connect_cp(site.url, "CP-LOST") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        await cp.call(stop_tx(-1, 250))  # MicroOcpp#454: the offline start was lost in a reset
        await site.csms_back("CP-LOST")
        calls = await site.replayed("CP-LOST", 2)
    assert calls[1][2] == "StopTransaction"
    assert calls[1][3]["meterStop"] == 250
    assert site.agent is not None
    alarms = site.agent.offline.status()["alarms"]
    assert any("never saw" in a["message"] for a in alarms)


async def test_a_message_a_full_disk_refused_is_refused_to_the_charger_and_replayed_once(
    site: Site,
) -> None:
    # offline, the agent answers for the CSMS only what it has stored; on a full disk (the
    # queue's file capped at its size) it says it cannot take the message, the charge point
    # sends it again later, and the CSMS gets every message once, in order
    async with connect_cp(site.url, "CP-F") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        tx = (await cp.call(start_tx())).transaction_id
        assert site.agent is not None
        db = site.agent.offline_store.db
        row = await (await db.execute("PRAGMA page_count")).fetchone()
        assert row is not None
        await db.execute(f"PRAGMA max_page_count = {row[0]}")
        wh, refusal = 0, ""
        while not refusal and wh < 5000:
            wh += 1
            try:
                await cp.call(meter(tx, wh))
            except InternalError as exc:  # a CALLERROR: not taken
                refusal = str(exc)
        assert "the gateway cannot store the message now" in refusal
        assert site.agent.offline_store.queued_for("CP-F") == wh  # the start and wh - 1 values
        await db.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert await cp.call(meter(tx, wh)) is not None  # the charger's retry is taken
        await site.csms_back("CP-F")
        calls = await site.replayed("CP-F", 2 + wh)
    assert [c[2] for c in calls] == ["BootNotification", "StartTransaction"] + ["MeterValues"] * wh
    values = [int(c[3]["meterValue"][0]["sampledValue"][0]["value"]) for c in calls[2:]]
    assert values == list(range(1, wh + 1))  # each once, in order


async def test_a_replayed_start_the_store_fails_to_record_is_retried_not_sent_again(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the CSMS took the replayed StartTransaction; recording its id fails twice (a full disk
    # for a moment): the agent retries the record, it does not replay the start again
    async with connect_cp(site.url, "CP-R") as cp:
        await cp.call(boot16())
        await site.csms.stop()
        provisional = (await cp.call(start_tx())).transaction_id
        await cp.call(stop_tx(provisional, 1000))
        assert site.agent is not None
        store = site.agent.offline_store
        real_map = store.map_transaction
        failures = 0

        async def failing_map(*args: Any) -> None:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise sqlite3.OperationalError("database or disk is full")
            await real_map(*args)

        monkeypatch.setattr(store, "map_transaction", failing_map)
        await site.csms_back("CP-R")
        calls = await site.replayed("CP-R", 3)
        await store.wait_empty("CP-R", 10)
    assert failures == 2
    assert [c[2] for c in calls] == ["BootNotification", "StartTransaction", "StopTransaction"]
    assert calls[2][3]["transactionId"] > 0  # the CSMS's id, recorded on the third try
    assert [c[2] for c in site.calls_seen("CP-R")].count("StartTransaction") == 1
