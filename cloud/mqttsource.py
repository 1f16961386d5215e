"""The MQTT side of the collector: a paho client feeding a bounded buffer.

Subscribes at QoS 1 to the site topics — through an MQTT 5 shared
subscription (``$share/<group>/...``) so collector replicas split the load,
or plainly on MQTT 3.1.1 — with manual acknowledgements: a message is
PUBACKed only after the batch holding it is committed, so nothing is lost
when the collector or the database stops mid-way. The paho network thread
blocks when the buffer is full (``queue_max``), which pushes back on the
broker instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chargesight.cloud.config import MqttSection
from chargesight.common.logs import get_logger
from chargesight.common.messages import ALL_DIGESTS, ALL_ESCALATIONS, ALL_REPLIES, ALL_STATES

log = get_logger(__name__)

TOPICS = (ALL_ESCALATIONS, ALL_DIGESTS, ALL_STATES, ALL_REPLIES)


class MqttError(Exception):
    """The broker cannot be reached or refused us."""


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: float  # time.monotonic() at receipt


def subscriptions(protocol5: bool, group: str | None) -> list[str]:
    if protocol5 and group:
        return [f"$share/{group}/{t}" for t in TOPICS]
    return list(TOPICS)


class MqttSource:
    """Owns the paho client; ``start`` connects and subscribes, ``batch`` drains."""

    def __init__(self, config: MqttSection, queue_max: int = 20_000) -> None:
        self.config = config
        self._buf: collections.deque[Inbound] = collections.deque()
        self._space = threading.Semaphore(queue_max)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._waiting = False
        self._subscribed = threading.Event()
        self._connect_error: str | None = None
        self._client: mqtt.Client | None = None
        self._protocol5 = config.protocol != "3.1.1"
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._buf)

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        persistent = cfg.client_id is not None
        client_id = cfg.client_id or f"chargesight-collector-{uuid.uuid4().hex[:12]}"
        proto = mqtt.MQTTv5 if self._protocol5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {}
        if not self._protocol5:
            kwargs["clean_session"] = not persistent
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=proto,
            manual_ack=True,
            **kwargs,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if urlsplit(cfg.url).scheme == "mqtts":
            client.tls_set(ca_certs=str(cfg.cafile) if cfg.cafile else None)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(1000)
        return client

    async def start(self, timeout: float = 15.0) -> None:
        """Connect and subscribe; raise MqttError when that fails within ``timeout``."""
        self._loop = asyncio.get_running_loop()
        parts = urlsplit(self.config.url)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        for attempt in (1, 2):
            self._client = client = self._make_client()
            self._subscribed.clear()
            self._connect_error = None
            props = None
            if self._protocol5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if self.config.client_id is not None:
                    props.SessionExpiryInterval = 7 * 86400
            try:
                client.connect(
                    parts.hostname or "127.0.0.1",
                    port,
                    keepalive=self.config.keepalive_s,
                    clean_start=self.config.client_id is None
                    if self._protocol5
                    else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=props,
                )
            except OSError as exc:
                raise MqttError(f"mqtt.url {self.config.url}: cannot connect: {exc}") from exc
            client.loop_start()
            ok = await asyncio.to_thread(self._subscribed.wait, timeout)
            if ok:
                log.info("mqtt subscribed", url=self.config.url, mqtt5=self._protocol5,
                         topics=subscriptions(self._protocol5, self.config.shared_group))  # fmt: skip
                return
            client.loop_stop()
            client.disconnect()
            err = self._connect_error or "no answer"
            if (
                attempt == 1
                and self._protocol5
                and self.config.protocol == "auto"
                and "protocol" in err.lower()
            ):
                self._protocol5 = False  # an MQTT 3.1.1 broker: subscribe plainly
                continue
            raise MqttError(f"mqtt.url {self.config.url}: {err}")

    # paho thread -----------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if rc.is_failure:
            self._connect_error = f"connection refused: {rc}"
            return
        subs = [(t, 1) for t in subscriptions(self._protocol5, self.config.shared_group)]
        client.subscribe(subs)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        bad = [str(r) for r in rcs if r.is_failure]
        if bad:
            self._connect_error = f"subscription refused: {', '.join(bad)}"
            return
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if not self._closed:
            log.warning("mqtt disconnected, paho reconnects", reason=str(rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        while not self._space.acquire(timeout=0.5):
            if self._closed:
                return
        self._buf.append(Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.monotonic()))
        if self._waiting and self._loop is not None:
            self._waiting = False
            self._loop.call_soon_threadsafe(self._wakeup.set)

    # event loop -------------------------------------------------------------

    async def batch(self, max_items: int, delay: float) -> list[Inbound]:
        """Wait for at least one message, then up to ``delay`` s for ``max_items``.

        Cancel-safe: nothing is taken from the buffer before the wait completes.
        """
        while not self._buf:
            self._wakeup.clear()
            self._waiting = True
            if self._buf:
                break
            await self._wakeup.wait()
        if len(self._buf) < max_items and delay > 0:
            await asyncio.sleep(delay)  # linger once so a burst becomes one batch
        out: list[Inbound] = []
        while self._buf and len(out) < max_items:
            out.append(self._buf.popleft())
            self._space.release()
        return out

    def ack(self, items: list[Inbound]) -> None:
        client = self._client
        if client is None:
            return
        for m in items:
            if m.qos > 0:
                client.ack(m.mid, m.qos)

    async def close(self) -> None:
        self._closed = True
        client = self._client
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
