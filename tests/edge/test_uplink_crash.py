"""The uplink under ``kill -9``: a child process runs an outbox and an uplink on a
SQLite file; the test kills it with SIGKILL at chosen moments and restarts it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from chargesight.common.messages import SiteState, escalations_topic, state_topic
from chargesight.edge.outbox import Outbox
from tests.edge.uplink_support import Observer, Relay
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.mqtt

REPO = Path(__file__).resolve().parents[2]


class Child:
    """The agent stand-in (tests/edge/outbox_child.py) as a subprocess."""

    def __init__(self, db: Path, url: str, site: str) -> None:
        self.args = (str(db), url, site)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def __aenter__(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.edge.outbox_child",
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        await self.expect("ready")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """The first unread output line starting with ``prefix`` (others stay buffered)."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                for i, line in enumerate(self.lines):
                    if line.startswith(prefix):
                        return self.lines.pop(i)
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise EOFError(f"child exited ({self.proc.returncode}) before {prefix!r}")
                self.lines.append(raw.decode().rstrip("\n"))

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def quit(self) -> None:
        assert self.proc is not None
        await self.send("quit")
        await self.expect("bye")
        assert await self.proc.wait() == 0


def ids(observer: Observer) -> list[str]:
    return [p["message_id"] for p in observer.payloads("/escalations")]


async def queued_rows(db: Path) -> list[str]:
    async with Outbox(db) as outbox:
        return [r.message_id for r in await outbox.fetch(limit=1000)]


async def test_kill_9_between_commit_and_puback_redelivers_with_the_same_message_id(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = "kill-puback"
    db = tmp_path / "edge.sqlite"
    relay = await Relay(mosquitto.port).start()
    try:
        async with Observer(mosquitto.port, [escalations_topic(site)]) as obs:
            async with Child(db, f"mqtt://127.0.0.1:{relay.port}", site) as child:
                await child.expect("connected")
                relay.hold_downstream = True  # from now on no PUBACK reaches the agent
                await child.send("put 1")
                message_id = (await child.expect("committed")).split()[1]
                # the broker has it (and acknowledged it): the agent never heard
                await obs.wait_for(lambda o: message_id in ids(o))
                await child.kill9()
            assert await queued_rows(db) == [message_id]  # still owed

            async with Child(db, mosquitto.url, site) as child:
                await child.send("drained")
                await child.expect("drained")
                await child.quit()
            await obs.wait_for(lambda o: ids(o).count(message_id) == 2)
        # delivered again under the same message_id: the collector keeps one
        first, again = obs.payloads("/escalations")
        assert first == again
        assert await queued_rows(db) == []
    finally:
        await relay.close()


async def test_kill_9_after_commit_before_publishing_delivers_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = "kill-commit"
    db = tmp_path / "edge.sqlite"
    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # the broker is unreachable for the first run
    async with Observer(mosquitto.port, [escalations_topic(site)]) as obs:
        async with Child(db, nowhere, site) as child:
            await child.send("put 3")
            committed = [(await child.expect("committed")).split()[1] for _ in range(3)]
            await child.kill9()
        assert await queued_rows(db) == committed
        async with Child(db, mosquitto.url, site) as child:
            await child.send("drained")
            await child.expect("drained")
            await child.quit()
        await obs.wait_for(lambda o: len(ids(o)) >= 3)
    assert ids(obs) == committed  # each once, in commit order


async def test_last_will_offline_is_published_when_the_agent_is_killed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    site = "kill-will"
    topic = state_topic(site)
    async with Observer(mosquitto.port, [topic]) as obs:
        async with Child(tmp_path / "edge.sqlite", mosquitto.url, site) as child:
            await child.expect("connected")
            await obs.wait_for(lambda o: any(p["state"] == "online" for p in o.payloads()))
            await child.kill9()
        await obs.wait_for(lambda o: o.payloads()[-1]["state"] == "offline")
        will = SiteState.model_validate(obs.payloads()[-1])
        online = SiteState.model_validate(obs.payloads()[0])
        assert will.site_id == site
        assert will.message_id != online.message_id
        # the will is a microsecond newer than its connection's online: the collector takes
        # it whichever arrives last (tests/cloud/test_site_state.py)
        assert will.sent_at > online.sent_at
        assert (will.sent_at - online.sent_at).total_seconds() < 0.001
    async with Observer(mosquitto.port, [topic]) as late:  # and it is the retained state
        await late.wait_for(lambda o: bool(o.messages))
        assert late.messages[-1][1]["state"] == "offline"
        assert late.messages[-1][2]
