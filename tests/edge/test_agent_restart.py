"""What the recovery engine must remember across an agent restart, from the audit trail: an
operator's maintenance switch (a unit being serviced is not reset because the gateway rebooted
meanwhile), the resets sent in the last 24 hours (the daily budget is not refilled), and who
each charge point is (they reconnect without booting again)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from ocpp.v16 import call as call16

from chargesight.common.messages import Request
from chargesight.edge.agent import Agent
from chargesight.edge.audit import AuditEntry
from chargesight.edge.config import EdgeConfig
from tests.edge.conftest import edge_config
from tests.peers import TestCsms, boot16, connect_cp

SITE = "maint-site"


async def ask(agent: Agent, cp: str, on: object) -> str:
    """The request as it arrives from the cloud (through the agent's request router); its
    id."""
    req = Request(
        request_id=uuid.uuid4().hex,
        site_id=SITE,
        kind="maintenance",
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
        params={"charge_point_id": cp, "on": on},
        requested_by="tech@example.com",
    )
    await agent.router.handle(orjson.dumps(req.model_dump(mode="json")))
    return req.request_id


async def in_maintenance(config: EdgeConfig) -> list[str]:
    """Start an agent on ``config`` (a fresh process's view of the same storage)."""
    agent = Agent(config)
    await agent.start()
    try:
        return list(agent.status()["recovery"]["maintenance"])
    finally:
        await agent.close()


async def test_maintenance_switched_by_an_operator_is_still_in_force_after_a_restart(
    tmp_path: Path,
) -> None:
    config = edge_config(
        tmp_path,
        "ws://127.0.0.1:1/csms/{charge_point_id}",  # no CSMS, no broker: the gateway is cut off
        site={"id": SITE},
        recovery={"maintenance": ["CP-config"]},
    )
    agent = Agent(config)
    await agent.start()
    try:
        await ask(agent, "CP-serviced", True)
        await ask(agent, "CP-config", False)  # the installer's unit, back in service for now
        await ask(agent, "CP-brief", True)
        await ask(agent, "CP-brief", False)
        assert sorted(agent.status()["recovery"]["maintenance"]) == ["CP-serviced"]
    finally:
        await agent.close()
    # what an operator left on stays on; the config's list stands (it may be newer)
    assert sorted(await in_maintenance(config)) == ["CP-config", "CP-serviced"]
    # a unit the operator never touched follows the config
    other = edge_config(
        tmp_path,
        "ws://127.0.0.1:1/csms/{charge_point_id}",
        site={"id": SITE},
        recovery={"maintenance": ["CP-config", "CP-new"]},
    )
    assert sorted(await in_maintenance(other)) == ["CP-config", "CP-new", "CP-serviced"]


async def test_a_maintenance_switch_that_is_not_a_boolean_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    config = edge_config(tmp_path, "ws://127.0.0.1:1/csms/{charge_point_id}", site={"id": SITE})
    agent = Agent(config)
    await agent.start()
    try:
        rid = await ask(agent, "CP-1", "false")  # a string: truthy, it would have switched it on
        (row,) = await agent.router.audit(rid)
        assert row.outcome == "error"
        assert row.error is not None and "params.on must be true or false" in row.error
        assert agent.status()["recovery"]["maintenance"] == []
    finally:
        await agent.close()


async def test_resets_sent_before_a_restart_are_counted_by_the_restarted_agent(
    tmp_path: Path,
) -> None:
    config = edge_config(tmp_path, "ws://127.0.0.1:1/csms/{charge_point_id}", site={"id": SITE})
    agent = Agent(config)
    await agent.start()
    try:  # what the last run's recovery did, as its audit trail holds it
        now = agent.engine.clock.now()
        for step, result, hours_ago, detail in [
            ("soft_reset", "accepted", 5, None),
            ("hard_reset", "rejected", 1, None),
            ("soft_reset", "accepted", 25, None),  # yesterday's
            ("soft_reset", "error", 2, "Reset: charge point not connected"),  # never left
            ("hard_reset", "error", 3, "Reset: connection closed"),  # may have reached it
        ]:
            await agent.audit.record(
                AuditEntry(
                    at=now - timedelta(hours=hours_ago),
                    action=step,
                    result=result,
                    charge_point_id="CP-9",
                    detail=detail,
                )
            )
    finally:
        await agent.close()
    agent = Agent(config)
    await agent.start()
    try:
        assert agent.status()["recovery"]["resets_last_24h"] == {"CP-9": 3}
    finally:
        await agent.close()


async def test_a_charge_point_that_reconnects_without_booting_is_still_known_by_its_hardware(
    tmp_path: Path,
) -> None:
    csms = TestCsms()  # answers every boot with a 300 s heartbeat interval
    await csms.start()
    config = edge_config(tmp_path, csms.url, site={"id": SITE})
    try:
        agent = Agent(config)
        await agent.start()
        try:
            url = f"ws://127.0.0.1:{agent.proxy.port}/ocpp"
            async with connect_cp(url, "CP-1") as cp:
                await cp.call(boot16())
        finally:
            await agent.close()
        agent = Agent(config)  # the gateway restarted; the charge point only reconnects
        await agent.start()
        try:
            assert "CP-1" not in agent.engine.detector.charge_points  # not known until heard
            url = f"ws://127.0.0.1:{agent.proxy.port}/ocpp"
            async with connect_cp(url, "CP-1") as cp:
                await cp.call(
                    call16.StatusNotification(
                        connector_id=1, error_code="NoError", status="Available"
                    )
                )
                state = agent.engine.detector.charge_points["CP-1"]
                assert (state.hardware.vendor, state.hardware.model) == ("TestVendor", "AC22")
                assert state.heartbeat_interval_s == 300.0  # missed heartbeats are noticed
                window = agent.engine.digest.bank.window("CP-1")  # its digests carry it too
                assert (window.vendor, window.model) == ("TestVendor", "AC22")
        finally:
            await agent.close()
    finally:
        await csms.stop()


async def test_a_part_that_fails_to_close_does_not_keep_the_others_open(tmp_path: Path) -> None:
    config = edge_config(tmp_path, "ws://127.0.0.1:1/csms/{charge_point_id}", site={"id": SITE})
    agent = Agent(config)
    await agent.start()

    async def broken() -> None:
        raise RuntimeError("uplink would not close")

    agent.uplink.close = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="uplink would not close"):
        await agent.close()
    # everything after it was closed all the same: no SQLite connection (and its thread,
    # which would keep the process from exiting) is left open
    assert agent.audit._db is None
    assert agent.identities._db is None
    assert agent.ocpp_log._db is None
    # the storage is free: the next start works
    again = Agent(config)
    await again.start()
    await again.close()
