"""``kill -9`` of a real agent process (``chargesight edge run``) between commit and PUBACK.

The agent runs as its own process in front of a CSMS in the test process. A
TCP relay between it and Mosquitto swallows everything the broker sends once
the agent is connected, so the escalation reaches the broker (and the
cloud's subscriber) but its PUBACK never reaches the agent. The agent is
killed with SIGKILL, started again on the same SQLite file, and publishes the
escalation again under the same ``message_id``: the cloud keeps one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chargesight.common.messages import escalations_topic, state_topic
from chargesight.edge.outbox import Outbox
from tests.edge.recovery_peers import RebootingCp
from tests.edge.uplink_support import Observer, Relay
from tests.peers import TestCsms
from tests.servers import Mosquitto, free_port, wait_port

pytestmark = pytest.mark.mqtt

SITE = "kill-agent"
CHARGESIGHT = Path(sys.executable).with_name("chargesight")


class AgentProcess:
    """``chargesight edge run --config FILE`` as a child process; its output goes to a log file."""

    def __init__(self, config: Path, port: int, log: Path, **env: str) -> None:
        self.config, self.port, self.log = config, port, log
        self.env = {**os.environ, **env}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> AgentProcess:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(CHARGESIGHT),
                "edge",
                "run",
                "--config",
                str(self.config),
                stdout=out,
                stderr=out,
                env=self.env,
            )
        # The port opens only once the agent is ready (CONTRACT.md).
        await asyncio.to_thread(wait_port, self.port, 30.0)
        return self

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await self.proc.wait()

    async def stop(self) -> None:
        """Whatever happened: the process is gone afterwards."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def write_config(path: Path, *, listen_port: int, upstream: str, mqtt: str, db: Path) -> None:
    path.write_text(
        f"""
[site]
id = "{SITE}"
currency = "EUR"
price_per_kwh = 0.5

[ocpp]
listen = "127.0.0.1:{listen_port}"
upstream = "{upstream}"

[mqtt]
url = "{mqtt}"

[storage]
path = "{db}"

[recovery]
window_s = 20

[logging]
level = "info"
format = "json"
"""
    )


@pytest.fixture
async def relay(mosquitto: Mosquitto) -> AsyncIterator[Relay]:
    r = await Relay(mosquitto.port).start()
    try:
        yield r
    finally:
        await r.close()


async def queued(db: Path) -> list[str]:
    async with Outbox(db) as outbox:
        return [r.message_id for r in await outbox.fetch(limit=100) if "escalations" in r.topic]


async def test_agent_killed_between_commit_and_puback_delivers_again_under_the_same_message_id(
    mosquitto: Mosquitto, relay: Relay, tmp_path: Path
) -> None:
    db = tmp_path / "edge.sqlite"
    config = tmp_path / "edge.toml"
    port = free_port()
    log = tmp_path / "agent.log"
    topics = [escalations_topic(SITE), state_topic(SITE)]
    async with TestCsms() as csms, Observer(mosquitto.port, topics) as cloud:
        write_config(
            config,
            listen_port=port,
            upstream=csms.url,
            mqtt=f"mqtt://127.0.0.1:{relay.port}",
            db=db,
        )

        def escalation_ids() -> list[str]:
            return [p["message_id"] for p in cloud.payloads("/escalations")]

        first = AgentProcess(config, port, log)
        try:
            await first.start()
            await cloud.wait_for(
                lambda o: any(p["state"] == "online" for p in o.payloads("/state"))
            )
            relay.hold_downstream = True  # from now on no PUBACK reaches the agent
            async with RebootingCp(f"ws://127.0.0.1:{port}/ocpp", "CP-1") as cp:
                await cp.fault(1, "GroundFailure")  # escalated at once, no recovery window
                await cloud.wait_for(lambda _: len(escalation_ids()) == 1)
                await first.kill9()
        finally:
            await first.stop()
        message_id = escalation_ids()[0]
        assert await queued(db) == [message_id]  # committed, never acknowledged: still owed

        second = AgentProcess(config, port, log, CHARGESIGHT_MQTT__URL=f'"{mosquitto.url}"')
        try:
            await second.start()
            await cloud.wait_for(lambda _: len(escalation_ids()) == 2)
            assert await second.terminate() == 0
        finally:
            await second.stop()
    first_copy, again = cloud.payloads("/escalations")
    assert again["message_id"] == message_id  # the collector stores it once
    assert again == first_copy
    assert again["fault"]["code"] == "GroundFailure"
    assert await queued(db) == []  # acknowledged after the restart, then deleted
