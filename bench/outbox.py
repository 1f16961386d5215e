"""Outbox + uplink throughput: escalations/s committed and published end to end
through a real Mosquitto, as a ratio to a bare paho QoS 1 publisher measured
in the same run.

    .venv/bin/python bench/outbox.py [--n 20000] [--inflight 100]

"End to end" means: from the first ``put()`` until a subscriber on the broker
has received every message and the outbox is empty again (every PUBACK
processed and its row deleted). The bare publisher is timed the same way:
from the first ``publish()`` until the subscriber has every message and
every PUBACK has arrived, with paho's in-flight window set to the same size.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chargesight.common.logs import configure_logging
from chargesight.common.messages import escalations_topic
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox
from chargesight.edge.uplink import Uplink
from tests.edge.uplink_support import escalation
from tests.servers import start_mosquitto

Sync = Literal["FULL", "NORMAL"]
SITE = "bench-site"
TOPIC = escalations_topic(SITE)


class Counter:
    """A subscriber that signals when it has seen ``n`` messages."""

    def __init__(self, port: int, n: int) -> None:
        self.n = n
        self.seen = 0
        self.done = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(TOPIC, qos=1)
        ready.wait(5)

    def _on_message(self, *args: object) -> None:
        self.seen += 1
        if self.seen >= self.n:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bare_paho(port: int, payloads: list[bytes], inflight: int) -> float:
    counter = Counter(port, len(payloads))
    acked = threading.Event()
    count = [0]

    def on_publish(*args: object) -> None:
        count[0] += 1
        if count[0] >= len(payloads):
            acked.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.perf_counter()
    for p in payloads:
        client.publish(TOPIC, p, qos=1)
    acked.wait(120)
    counter.done.wait(120)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    counter.close()
    return len(payloads) / elapsed


async def chargesight(
    port: int, n: int, inflight: int, synchronous: Sync, wave: int
) -> tuple[float, float, int]:
    """(end-to-end msg/s, commit-only msg/s, commits) for one outbox configuration."""
    msgs = [escalation(SITE, i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        # commit only (no uplink): how fast producers can hand messages over
        async with Outbox(
            Path(tmp) / "c.sqlite", max_messages=n + 1, synchronous=synchronous
        ) as ob:
            t0 = time.perf_counter()
            for i in range(0, n, wave):
                await asyncio.gather(*(ob.put(TOPIC, m) for m in msgs[i : i + wave]))
            commit_rate = n / (time.perf_counter() - t0)
        counter = await asyncio.to_thread(Counter, port, n)
        async with Outbox(
            Path(tmp) / "e.sqlite", max_messages=n + 1, synchronous=synchronous
        ) as ob:
            mqtt = MqttSection(url=f"mqtt://127.0.0.1:{port}", max_inflight=inflight)
            async with Uplink(mqtt, SITE, ob) as up:
                await up.wait_connected()
                t0 = time.perf_counter()
                for i in range(0, n, wave):
                    await asyncio.gather(*(ob.put(TOPIC, m) for m in msgs[i : i + wave]))
                await asyncio.to_thread(counter.done.wait, 120)
                await ob.wait_drained()
                e2e = n / (time.perf_counter() - t0)
                commits = ob.status().commits
        counter.close()
    return e2e, commit_rate, commits


async def single_put_latency(samples: int, synchronous: Sync) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        async with Outbox(Path(tmp) / "l.sqlite", synchronous=synchronous) as ob:
            lat = []
            for i in range(samples):
                m = escalation(SITE, i)
                t0 = time.perf_counter()
                await ob.put(TOPIC, m)
                lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--wave", type=int, default=500, help="puts issued concurrently")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    configure_logging("warning", "console")
    broker = start_mosquitto()
    try:
        payload_size = len(escalation(SITE, 0).to_json())
        payloads = [escalation(SITE, i).to_json() for i in range(args.n)]
        print(f"n={args.n} payload={payload_size} B inflight={args.inflight} wave={args.wave}")
        syncs: tuple[Sync, ...] = ("FULL", "NORMAL")
        for r in range(args.rounds):
            bare = bare_paho(broker.port, payloads, args.inflight)
            print(f"round {r + 1}: bare paho QoS 1 (MQTT 5)            {bare:9.0f} msg/s")
            for sync in syncs:
                e2e, commit, commits = asyncio.run(
                    chargesight(broker.port, args.n, args.inflight, sync, args.wave)
                )
                print(
                    f"round {r + 1}: outbox+uplink synchronous={sync:<6}  {e2e:9.0f} msg/s"
                    f"  ratio {e2e / bare:.2f}  (commit only {commit:.0f}/s,"
                    f" {commits} transactions)"
                )
        for sync in syncs:
            us = asyncio.run(single_put_latency(300, sync))
            print(f"single put() commit latency, synchronous={sync:<6} median {us:.0f} µs")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
