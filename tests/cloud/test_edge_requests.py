"""Operators' requests to a site's agent through the API: real collector, broker and agent."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chargesight.cloud import requests as edge_requests
from chargesight.edge.agent import Agent
from tests.cloud.conftest import OPERATOR, Running
from tests.edge.conftest import edge_config
from tests.peers import TestCsms
from tests.servers import Mosquitto

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]

SITE = "req-site"


@pytest.fixture
async def agent(running: Running, tmp_path: Path) -> AsyncIterator[Agent]:
    """A real edge agent for ``SITE`` on the collector's broker, known to the cloud."""
    async with TestCsms() as csms:
        config = edge_config(
            tmp_path,
            csms.url,
            site={"id": SITE},
            mqtt={"url": running.config.mqtt.url},
            uplink={"allowed_requests": ["status", "log_excerpt"]},
        )
        async with Agent(config) as edge:
            await edge.uplink.wait_connected()
            # its "online" state message makes the site known to the cloud (other messages,
            # e.g. states retained on the shared broker by earlier tests, may come first)
            async with asyncio.timeout(20):
                while True:
                    if (await running.get(f"/sites/{SITE}")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
            yield edge


async def post(r: Running, site: str, body: dict[str, Any], token: str = OPERATOR) -> Any:
    return await r.api.post(f"/api/v1/sites/{site}/requests", json=body, headers=r.headers(token))


async def answered(r: Running, request_id: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            got = (await r.get(f"/requests/{request_id}")).json()
            if got["status"] == "answered":
                return dict(got)
            await asyncio.sleep(0.1)


async def test_operator_asks_a_site_for_its_status_and_reads_the_agents_reply(
    running: Running, agent: Agent
) -> None:
    resp = await post(running, SITE, {"kind": "status"})
    assert resp.status_code == 202, resp.text
    sent = resp.json()
    assert sent["status"] == "sent" and sent["kind"] == "status" and sent["reply"] is None
    assert sent["requested_by"] == "olga"
    got = await answered(running, sent["request_id"])
    assert got["reply"]["ok"] is True
    assert got["reply"]["result"]["site_id"] == SITE


async def test_a_request_the_agent_does_not_allow_is_answered_with_the_refusal(
    running: Running, agent: Agent
) -> None:
    resp = await post(
        running, SITE, {"kind": "rerun_playbook", "params": {"charge_point_id": "CP-1"}}
    )
    assert resp.status_code == 202, resp.text
    got = await answered(running, resp.json()["request_id"])
    assert got["reply"]["ok"] is False
    assert "not allowed" in got["reply"]["error"]


async def test_requests_need_an_operator_a_known_site_and_a_known_kind(
    running: Running, agent: Agent
) -> None:
    assert (
        await post(running, SITE, {"kind": "status"}, token="viewer-token-456")
    ).status_code == 403
    unknown = await post(running, "nowhere", {"kind": "status"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    bad = await post(running, SITE, {"kind": "format_disk"})
    assert bad.status_code == 422
    assert (await running.get("/requests/no-such-id")).status_code == 404


async def test_a_request_the_broker_is_slow_to_acknowledge_is_kept_and_runs_once(
    running: Running, agent: Agent, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no PUBACK within the wait (the broker is paused): the MQTT client still holds the
    # request and delivers it, so it is kept (a retry under a new id could run it twice)
    monkeypatch.setattr(edge_requests, "PUBLISH_TIMEOUT_S", 0.3)
    mosquitto.proc.send_signal(signal.SIGSTOP)
    try:
        resp = await post(running, SITE, {"kind": "status"})
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)
    assert resp.status_code == 202, resp.text
    sent = resp.json()
    assert sent["status"] == "unconfirmed"
    assert f"see GET /api/v1/requests/{sent['request_id']}" in sent["note"]
    got = await answered(running, sent["request_id"])
    assert got["reply"]["ok"] is True
    assert [r.outcome for r in await agent.router.audit(sent["request_id"])] == ["ok"]
