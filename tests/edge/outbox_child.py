"""A minimal edge process for the crash tests: an outbox and an uplink on one SQLite file.

    python -m tests.edge.outbox_child DB_PATH BROKER_URL SITE_ID

Commands on stdin, one per line; answers on stdout:

    put N       commit N escalations  -> "committed <message_id>" for each
    status      -> "status <json>"
    drained     wait until the outbox is empty -> "drained"
    quit        clean shutdown -> "bye"

It prints "ready" once the outbox is open and "connected" when the uplink is.
The tests kill it with SIGKILL at chosen moments.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from chargesight.common.logs import configure_logging
from chargesight.common.messages import escalations_topic
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox
from chargesight.edge.uplink import Uplink
from tests.edge.uplink_support import escalation


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(db: str, url: str, site: str) -> None:
    configure_logging("warning", "json")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with Outbox(db) as outbox:
        say("ready")
        async with Uplink(MqttSection(url=url), site, outbox) as uplink:

            async def announce() -> None:
                await uplink.wait_connected()
                say("connected")

            announcer = asyncio.create_task(announce())
            n = 0
            while line := (await reader.readline()).decode().strip():
                cmd, _, arg = line.partition(" ")
                if cmd == "put":
                    for _ in range(int(arg or 1)):
                        msg = escalation(site, n)
                        n += 1
                        await outbox.put(escalations_topic(site), msg)
                        say(f"committed {msg.message_id}")
                elif cmd == "status":
                    say("status " + orjson.dumps(uplink.status().as_dict()).decode())
                elif cmd == "drained":
                    await outbox.wait_drained()
                    say("drained")
                elif cmd == "quit":
                    break
            announcer.cancel()
    say("bye")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
