"""Helpers for the uplink tests: an observing MQTT client, a cuttable TCP relay,
a broker with persistence (sessions survive its restart), and message factories."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.common.messages import Digest, Escalation, Fault
from tests.servers import find_mosquitto, free_port, wait_port


def escalation(site_id: str, n: int = 0) -> Escalation:
    return Escalation(
        site_id=site_id,
        incident_id=f"inc-{n}",
        charge_point_id=f"CP{n:04d}",
        connector_id=1,
        scope="connector",
        fault=Fault(code="OtherError", vendor_code="E42", category="hardware"),
        started_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
    )


def digest(site_id: str) -> Digest:
    now = datetime.now(UTC)
    return Digest(site_id=site_id, interval_start=now - timedelta(hours=1), interval_end=now)


class Observer:
    """A second MQTT client that records what arrives on some topics.

    ``persistent=True`` keeps a session (fixed client id, QoS 1) so that a
    broker with persistence queues for it while it is away.
    """

    def __init__(
        self,
        port: int,
        topics: Iterable[str],
        *,
        client_id: str = "",
        persistent: bool = False,
    ) -> None:
        self.port = port
        self.topics = list(topics)
        self.messages: list[tuple[str, dict[str, Any], bool]] = []  # topic, payload, retained
        # the broker's own re-deliveries to us (DUP flag set after its restart): not the sender's
        self.redelivered: list[tuple[str, dict[str, Any], bool]] = []
        self.arrivals: list[tuple[str, dict[str, Any]]] = []  # everything, in arrival order
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=paho.MQTTv311,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        item = (msg.topic, orjson.loads(msg.payload) if msg.payload else {}, bool(msg.retain))
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._record, item, bool(msg.dup))

    def _record(self, item: tuple[str, dict[str, Any], bool], dup: bool) -> None:
        (self.redelivered if dup else self.messages).append(item)
        self.arrivals.append((item[0], item[1]))
        self._changed.set()

    async def start(self) -> Observer:
        def connect() -> None:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
            self.client.loop_start()
            if not self._subscribed.wait(10):
                raise TimeoutError("observer did not get its SUBACK")

        await asyncio.to_thread(connect)
        return self

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def payloads(self, topic_suffix: str = "") -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if t.endswith(topic_suffix)]

    async def wait_for(self, predicate: Callable[[Observer], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def __aenter__(self) -> Observer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Relay:
    """A TCP relay in front of the broker; ``hold_downstream`` swallows what the
    broker sends (CONNACK already passed: PUBACKs never reach the client).
    ``refuse_mqtt5`` answers an MQTT 5 CONNECT like a 3.1.1-only broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold_downstream = False
        self.refuse_mqtt5 = False
        self.mqtt5_refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        first = await reader.read(65536)
        if self.refuse_mqtt5 and _connect_level(first) == 5:
            self.mqtt5_refused += 1
            writer.write(b"\x20\x02\x00\x01")  # CONNACK: unacceptable protocol version
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(up_writer)
        up_writer.write(first)
        for coro in (self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if downstream and self.hold_downstream:
                    continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def _connect_level(packet: bytes) -> int | None:
    """The protocol level of an MQTT CONNECT packet, or None."""
    if not packet or packet[0] != 0x10:
        return None
    i = 1
    while i < len(packet) and packet[i] & 0x80:
        i += 1
    i += 1  # past the remaining length
    name_len = int.from_bytes(packet[i : i + 2], "big")
    level_at = i + 2 + name_len
    return packet[level_at] if level_at < len(packet) else None


class PersistentBroker:
    """Mosquitto with persistence: client sessions and queued QoS 1 messages
    survive ``stop()`` / ``start()`` on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="cs-mosq-persist-"))
        self.workdir.chmod(0o777)  # mosquitto started as root drops to its own user to write
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            "max_inflight_messages 0\nmax_queued_messages 0\nlog_type error\n"
        )
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its database
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
