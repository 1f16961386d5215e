"""The cloud asks a running agent over MQTT (``.../requests``) and reads its answer (``.../replies``).

A real Mosquitto, the real :class:`~chargesight.edge.agent.Agent` in front of
a real CSMS, a charge point connected through it, and a second MQTT client
playing the cloud.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chargesight.common.messages import Request, replies_topic, requests_topic, utcnow
from chargesight.edge.agent import Agent
from tests.edge.conftest import edge_config
from tests.edge.recovery_peers import RebootingCp
from tests.edge.uplink_support import Observer
from tests.peers import TestCsms
from tests.servers import Mosquitto

pytestmark = pytest.mark.mqtt

SITE = "requests-site"


class Cloud(Observer):
    """The cloud's side of the request/reply topics."""

    def ask(self, kind: str, params: dict[str, Any] | None = None, ttl_s: float = 60) -> str:
        request = Request(
            request_id=uuid.uuid4().hex,
            site_id=SITE,
            kind=kind,  # type: ignore[arg-type]
            expires_at=utcnow() + timedelta(seconds=ttl_s),
            params=params or {},
            requested_by="operator@test",
        )
        self.client.publish(requests_topic(SITE), request.model_dump_json(), qos=1)
        return request.request_id

    def replies(self, request_id: str) -> list[dict[str, Any]]:
        return [p for p in self.payloads("/replies") if p["request_id"] == request_id]

    async def reply(self, request_id: str) -> dict[str, Any]:
        await self.wait_for(lambda _: bool(self.replies(request_id)))
        return self.replies(request_id)[0]


@pytest.fixture
async def site(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[tuple[Agent, Cloud]]:
    async with TestCsms() as csms, Cloud(mosquitto.port, [replies_topic(SITE)]) as cloud:
        config = edge_config(tmp_path, csms.url, site={"id": SITE}, mqtt={"url": mosquitto.url})
        agent = Agent(config)
        await agent.start()
        try:
            await agent.uplink.wait_connected()
            yield agent, cloud
        finally:
            await agent.close()


async def test_cloud_asks_for_status_and_log_excerpt_and_gets_replies(
    site: tuple[Agent, Cloud],
) -> None:
    agent, cloud = site
    async with RebootingCp(f"ws://127.0.0.1:{agent.proxy.port}/ocpp", "CP-7") as cp:
        await cp.fault(1, "OtherError", "E-99", cleared_by=("availability",))
        status_id = cloud.ask("status")
        excerpt_id = cloud.ask("log_excerpt", {"charge_point_id": "CP-7", "limit": 50})
        status = await cloud.reply(status_id)
        excerpt = await cloud.reply(excerpt_id)
    assert status["ok"] is True and status["error"] is None
    assert status["site_id"] == SITE
    connected = status["result"]["ocpp"]["connected"]
    assert [c["charge_point_id"] for c in connected] == ["CP-7"]
    assert connected[0]["upstream_connected"] is True
    assert status["result"]["uplink"]["connected"] is True
    assert excerpt["ok"] is True
    frames = excerpt["result"]["frames"]
    assert frames and all(f["charge_point_id"] == "CP-7" for f in frames)
    texts = [f["frame"] for f in frames]
    assert any('"BootNotification"' in t and "TestWallbox 22" in t for t in texts)
    assert any('"Faulted"' in t and "E-99" in t for t in texts)
    assert len(cloud.replies(status_id)) == len(cloud.replies(excerpt_id)) == 1


async def test_expired_request_is_refused_and_not_run(site: tuple[Agent, Cloud]) -> None:
    agent, cloud = site
    expired = cloud.ask("status", ttl_s=-1)
    fresh = cloud.ask("status")
    await cloud.reply(fresh)
    reply = await cloud.reply(expired)
    assert reply["ok"] is False
    assert "expired" in (reply["error"] or "")
    assert reply["result"] == {}
    outcomes = {r.request_id: r.outcome for r in await agent.router.audit()}
    assert outcomes == {expired: "refused_expired", fresh: "ok"}
