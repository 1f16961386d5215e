"""The MQTT uplink: publishes the outbox to the broker and receives the cloud's requests.

Threading. paho-mqtt runs its network loop in its own thread
(``loop_start()``); the asyncio side never touches the socket. We chose
this over paho's socket-callback integration because paho's ``connect()``
and ``reconnect()`` resolve the host, open the TCP connection and run the
TLS handshake *blocking*: driven from the event loop they would stall it for
as long as a dead broker takes to time out, or need an executor anyway. In
its thread paho also owns keep-alive and reconnection with exponential
backoff, which outlive broker outages of any length. The two sides meet
only in small callbacks: paho's thread hands PUBACKs, connection changes and
incoming requests to the loop with ``call_soon_threadsafe`` (PUBACKs in
batches, one wake-up for many); ``publish()`` from the loop only appends to
paho's queue under its lock and never blocks on the network.

Delivery. Outbox rows are published at QoS 1 in ``seq`` order, at most
``mqtt.max_inflight`` unacknowledged at a time (paho wraps packet ids past
65,535 in flight and loses messages; an MQTT 5 broker's Receive Maximum
lowers the bound further), and deleted from the outbox on PUBACK. On every
new connection the uplink drops paho's own copies of what the last one left
unacknowledged (paho would re-send them only after ``on_connect``, racing
new publishes, which broke the order) and replays the outbox from its first
row: the outbox is the one source of truth, in this process and after a
restart or ``kill -9`` alike. A lock and a connection counter keep the loop
from publishing on a connection it has not yet been told about. Replayed
messages keep their ``message_id``, so the collector drops what it already
has. A PUBACK with an MQTT 5 failure reason (e.g. not authorised) leaves the
row in the outbox, raises an alarm and is retried on the next connection.

Presence. Each connection announces a retained ``online``
:class:`~chargesight.common.messages.SiteState` (QoS 1) and carries a
retained ``offline`` last will, rebuilt before every connection attempt so
that each has its own ``message_id``. :meth:`Uplink.close` publishes
``offline`` itself, then disconnects cleanly (no will).

Protocol. ``mqtt.protocol = "auto"`` starts with MQTT 5 and falls back to
3.1.1 (for the rest of the process) when the broker answers "unsupported
protocol version" or hangs up on an MQTT 5 CONNECT twice in a row.

Sessions are persistent (3.1.1 ``clean_session=False``; MQTT 5
``clean_start=False`` with a session expiry) so that the cloud's requests
sent during a short outage are delivered when the link returns. Incoming
messages (requests, and whatever :meth:`Uplink.subscribe` adds, e.g. model
updates) are handled in tasks the uplink owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from chargesight.common.logs import get_logger
from chargesight.common.messages import SiteState, requests_topic, state_topic, utcnow
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox, OutboxClosed, OutboxEntry, OutboxError

if TYPE_CHECKING:
    from chargesight.edge.requests import RequestRouter

log = get_logger("chargesight.edge.uplink")

MessageHandler = Callable[[str, bytes], Coroutine[Any, Any, None]]

UNSUPPORTED_PROTOCOL_VERSION = 0x84
# a delete of acknowledged rows the outbox could not commit: tried again after this, doubling
ACK_RETRY_S = 1.0
ACK_RETRY_MAX_S = 30.0
_FALLBACK_AFTER_HANGUPS = 2


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    connected: bool
    protocol: str | None  # "5" or "3.1.1" once decided
    broker: str
    queued: int  # messages in the outbox (committed, not acknowledged)
    in_flight: int
    in_flight_limit: int
    peak_in_flight: int
    delivered: int  # PUBACKs for outbox messages since start
    last_error: str | None
    last_connected_at: datetime | None
    alarms: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class UplinkError(Exception):
    """Misuse of the uplink (e.g. started twice)."""


class Uplink:
    """Publishes an :class:`Outbox` over MQTT and routes incoming requests.

    ``async with Uplink(cfg.mqtt, cfg.site.id, outbox, router=router):`` runs it
    in background tasks the uplink owns; leaving the block is a clean
    shutdown (:meth:`close`). The outbox must stay open until then.
    """

    def __init__(
        self,
        mqtt: MqttSection,
        site_id: str,
        outbox: Outbox,
        *,
        router: RequestRouter | None = None,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 60,
        session_expiry_s: int = 86_400,
        shutdown_timeout_s: float = 5.0,
        fetch_batch: int = 500,
        max_pending_requests: int = 64,
    ) -> None:
        self.cfg = mqtt
        self.site_id = site_id
        self.outbox = outbox
        self.router = router
        self.reconnect_min_s = max(1, reconnect_min_s)
        self.reconnect_max_s = max(self.reconnect_min_s, reconnect_max_s)
        self.session_expiry_s = session_expiry_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.fetch_batch = fetch_batch
        self.max_pending_requests = max_pending_requests

        self._tls = mqtt.tls
        self._host = mqtt.host
        self._port = mqtt.port
        self._client_id = mqtt.client_id or f"chargesight-edge-{site_id}"
        self._state_topic = state_topic(site_id)
        self._requests_topic = requests_topic(site_id)
        self._protocol: Literal["5", "3.1.1"] = "3.1.1" if mqtt.protocol == "3.1.1" else "5"
        self._protocol_decided = mqtt.protocol != "auto"

        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._request_tasks: set[asyncio.Task[None]] = set()  # incoming-message handlers
        self._subscriptions: dict[str, MessageHandler] = {}
        if router is not None:
            self._subscriptions[self._requests_topic] = self._handle_request
        self._state: Literal["unopened", "running", "closing", "closed"] = "unopened"

        # asyncio-side state (touched only on the event loop)
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()  # SUBACK for this connection's subscriptions
        self._room = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._fallback = asyncio.Event()
        self._changed = asyncio.Event()  # any status change
        self._replay = asyncio.Event()  # a new connection: the publisher starts over
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._waiters: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._acked: list[int] = []
        self._deleting: set[int] = set()  # acknowledged, delete not committed yet
        self._cursor = 0
        self._generation = 0  # bumped when a new paho client must replay the outbox
        self._limit = mqtt.max_inflight
        self._peak = 0
        self._delivered = 0
        self._last_error: str | None = None
        self._last_connected_at: datetime | None = None
        self._alarms: dict[str, str] = {}

        # paho-thread → loop hand-off for PUBACKs
        self._acks: deque[tuple[int, ReasonCode | None]] = deque()
        self._ack_lock = threading.Lock()
        # publishing vs. a new connection: held by the loop around publishes and by
        # paho's thread in on_connect; _conn_gen counts connections (paho's thread)
        self._pub_lock = threading.Lock()
        self._conn_gen = 0
        self._pub_gen = -1  # the connection the loop publishes on
        self._ack_scheduled = False
        self._hangups = 0  # MQTT 5 CONNECTs the broker hung up on (paho thread)
        self._got_connack = False
        self._connected_at = utcnow()  # when the current connection began (its will's time)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._state != "unopened":
            raise UplinkError(f"uplink is {self._state}; it starts once")
        self._loop = asyncio.get_running_loop()
        self._state = "running"
        self._start_client()
        for coro, name in (
            (self._publish_loop(), "uplink-publish"),
            (self._ack_loop(), "uplink-ack"),
            (self._fallback_loop(), "uplink-fallback"),
        ):
            task = asyncio.create_task(coro, name=name)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._last_error = f"{task.get_name()} failed: {exc!r}"
            log.error("uplink_task_failed", task=task.get_name(), error=repr(exc))

    async def close(self) -> None:
        """Clean shutdown: stop publishing, wait (bounded) for PUBACKs of what is
        in flight, publish the retained ``offline`` state, disconnect, delete
        what was acknowledged from the outbox. Idempotent.

        Cancel-safety: cancelling ``close()`` may leave paho's thread running
        and acknowledged rows undeleted (they are re-sent after a restart).
        """
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closing"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout_s
        if self._request_tasks:  # let running requests commit their replies, within the deadline
            await asyncio.wait(list(self._request_tasks), timeout=max(0.0, deadline - loop.time()))
        for t in list(self._request_tasks):
            t.cancel()
        await asyncio.gather(*self._request_tasks, return_exceptions=True)
        publisher = [t for t in self._tasks if t.get_name() == "uplink-publish"]
        for t in publisher:
            t.cancel()
        await asyncio.gather(*publisher, return_exceptions=True)

        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while self._inflight:
                        self._idle.clear()
                        await self._idle.wait()
            offline = SiteState(site_id=self.site_id, state="offline")
            info = client.publish(self._state_topic, offline.to_json(), qos=1, retain=True)
            fut: asyncio.Future[ReasonCode | None] = loop.create_future()
            self._waiters[info.mid] = fut
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
                log.info("uplink_offline_published", site_id=self.site_id)
            except TimeoutError:
                log.warning("uplink_offline_not_acknowledged", site_id=self.site_id)
        await self._stop_client()
        self._drain_acks()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._acked:
            seqs, self._acked = self._acked, []
            try:
                await self.outbox.ack(seqs)
            except OutboxError as exc:  # the rows stay: re-sent after the restart, deduplicated
                log.error("uplink_ack_not_committed", rows=len(seqs), error=str(exc))
        self._connected.clear()
        self._state = "closed"
        log.info("uplink_closed", queued=self.outbox.queued)

    async def __aenter__(self) -> Uplink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once connected to the broker and, when it subscribes to anything (requests,
        models), once the broker has acknowledged those subscriptions. Cancel-safe."""
        await self._connected.wait()
        if self._subscriptions:
            await self._subscribed.wait()

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Route messages on ``topic_filter`` (QoS 1, wildcards allowed) to
        ``async handler(topic, payload)``, e.g. ``model_topic("+")`` for model
        updates. Re-subscribed on every connection; may be called before or
        after :meth:`start`. Handlers run as tasks the uplink owns."""
        if topic_filter in self._subscriptions:
            raise UplinkError(f"{topic_filter!r} already has a handler")
        self._subscriptions[topic_filter] = handler
        client = self._client
        if client is not None and self._connected.is_set():
            client.subscribe(topic_filter, qos=1)

    async def wait_for_status(self, predicate: Callable[[UplinkStatus], bool]) -> UplinkStatus:
        """Return the first :meth:`status` for which ``predicate`` holds, re-checked on
        every change (connection, error, PUBACK). Cancel-safe; wrap it in a timeout."""
        while not predicate(status := self.status()):
            self._changed.clear()
            await self._changed.wait()
        return status

    def status(self) -> UplinkStatus:
        ob = self.outbox.status()
        return UplinkStatus(
            connected=self._connected.is_set(),
            protocol=self._protocol if self._protocol_decided else None,
            broker=f"{self._host}:{self._port}",
            queued=ob.queued,
            in_flight=len(self._inflight),
            in_flight_limit=self._limit,
            peak_in_flight=self._peak,
            delivered=self._delivered,
            last_error=self._last_error,
            last_connected_at=self._last_connected_at,
            alarms=[*ob.alarms, *self._alarms.values()],
        )

    # ------------------------------------------------------------ paho client

    def _build_client(self) -> paho.Client:
        v5 = self._protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        client.max_inflight_messages_set(0)  # we bound what is in flight ourselves
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(self.reconnect_min_s, self.reconnect_max_s)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        ctx = self.cfg.ssl_context()
        if ctx is not None:
            client.tls_set_context(ctx)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _start_client(self) -> None:
        client = self._build_client()
        self._client = client
        properties: Properties | None = None
        if self._protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
        client.connect_async(
            self._host,
            self._port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False if self._protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.loop_start()
        log.info(
            "uplink_starting",
            broker=f"{self._host}:{self._port}",
            tls=self._tls,
            protocol=self._protocol,
            client_id=self._client_id,
        )

    async def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (from paho's thread)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to tell
            loop.call_soon_threadsafe(fn, *args)

    # -- callbacks, in paho's thread: short, and hand everything to the loop

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self._got_connack = False
        # the connection's ``online`` carries its start, the will a microsecond more: the
        # collector keeps the newest state, so the will (sent by the broker after that
        # ``online``, when this connection dies) wins over it in any order of arrival
        self._connected_at = utcnow()
        will = SiteState(
            site_id=self.site_id,
            state="offline",
            sent_at=self._connected_at + timedelta(microseconds=1),
        )
        client.will_set(self._state_topic, will.to_json(), qos=1, retain=True)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._got_connack = True
        if reason_code.is_failure:
            self._call(self._connect_refused, int(reason_code.value), str(reason_code))
            return
        self._hangups = 0
        with self._pub_lock:
            # A new connection: paho would re-send what the last one left unacknowledged,
            # but only after this callback, racing the publisher's new messages. Drop its
            # copies; the loop replays them from the outbox, in order, before anything new.
            self._conn_gen += 1
            gen = self._conn_gen
            client.drop_out_messages()
            online = SiteState(site_id=self.site_id, state="online", sent_at=self._connected_at)
            client.publish(self._state_topic, online.to_json(), qos=1, retain=True)
            subs = [(topic, 1) for topic in list(self._subscriptions)]
            if subs:
                client.subscribe(subs)
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._call(self._on_connected, gen, receive_max, flags.session_present)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call(self._subscribed.set)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the cause is still at hand
        exc = sys.exc_info()[1]
        cause = f": {exc}" if exc is not None else ""
        self._call(self._set_error, f"cannot reach the broker at {self._host}:{self._port}{cause}")

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._got_connack and self._protocol == "5" and not self._protocol_decided:
            self._hangups += 1
            if self._hangups >= _FALLBACK_AFTER_HANGUPS:
                self._call(self._fallback.set)
        self._call(self._on_disconnected, str(reason_code))

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acks.append((mid, reason_code))
        with self._ack_lock:
            if self._ack_scheduled:
                return
            self._ack_scheduled = True
        self._call(self._drain_acks)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._call(self._on_incoming, msg.topic, bytes(msg.payload))

    # -- the same events, on the loop

    def _on_connected(self, gen: int, receive_max: int | None, session_present: bool) -> None:
        if self._state != "running":
            return
        self._drain_acks()  # PUBACKs that came before the connection was lost still count
        # replay every unacknowledged row from the outbox, in order, on this connection
        self._pub_gen = gen
        self._inflight.clear()
        self._cursor = 0
        self._generation += 1
        self._replay.set()
        self._protocol_decided = True
        limit = self.cfg.max_inflight
        if receive_max:
            limit = max(1, min(limit, receive_max - 1))  # one slot for the state message
        self._limit = limit
        self._last_connected_at = utcnow()
        self._connected.set()
        self._room.set()
        self._changed.set()
        log.info(
            "uplink_connected",
            broker=f"{self._host}:{self._port}",
            protocol=self._protocol,
            session_present=session_present,
            in_flight_limit=limit,
            queued=self.outbox.queued,
        )

    def _on_disconnected(self, reason: str) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._changed.set()
        if self._state == "running" and was:  # a refused CONNECT keeps its own error
            self._last_error = f"disconnected: {reason}"
            log.warning("uplink_disconnected", reason=reason, in_flight=len(self._inflight))

    def _connect_refused(self, code: int, reason: str) -> None:
        self._last_error = f"broker refused the connection: {reason}"
        self._changed.set()
        log.warning("uplink_connect_refused", reason=reason, protocol=self._protocol)
        if code == UNSUPPORTED_PROTOCOL_VERSION and not self._protocol_decided:
            self._fallback.set()

    def _set_error(self, error: str) -> None:
        if self._last_error != error:
            log.warning("uplink_unreachable", error=error)
        self._last_error = error
        self._changed.set()

    def _drain_acks(self) -> None:
        with self._ack_lock:
            self._ack_scheduled = False
        while self._acks:
            mid, rc = self._acks.popleft()
            waiter = self._waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(rc)
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue
            if rc is not None and rc.is_failure:
                key = f"refused:{seq}"
                self._alarms[key] = (
                    f"broker refused outbox message seq {seq}: {rc}; kept, re-sent on the next connection"
                )
                log.error("uplink_publish_refused", seq=seq, reason=str(rc))
                continue
            self._alarms.pop(f"refused:{seq}", None)
            self._acked.append(seq)
            self._deleting.add(seq)
            self._delivered += 1
        self._room.set()
        self._ack_ready.set()
        self._changed.set()
        if not self._inflight:
            self._idle.set()

    def _on_incoming(self, topic: str, payload: bytes) -> None:
        if self._state != "running":
            return
        for topic_filter, handler in list(self._subscriptions.items()):
            if not paho.topic_matches_sub(topic_filter, topic):
                continue
            if len(self._request_tasks) >= self.max_pending_requests:
                log.warning("incoming_dropped_too_many_pending", topic=topic)
                return
            task = asyncio.create_task(handler(topic, payload), name=f"uplink-in:{topic}")
            self._request_tasks.add(task)
            task.add_done_callback(self._request_done)

    async def _handle_request(self, topic: str, payload: bytes) -> None:
        assert self.router is not None
        await self.router.handle(payload)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._request_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("incoming_handler_failed", error=repr(task.exception()))

    # ------------------------------------------------------------ tasks

    async def _publish_loop(self) -> None:
        """Publish committed rows in order, at most ``_limit`` unacknowledged.

        Rows are read ahead in batches of ``fetch_batch`` (one SQLite read for
        many publishes); only the in-flight window limits what goes out.
        """
        ahead: deque[OutboxEntry] = deque()
        generation = self._generation
        while True:
            await self._connected.wait()
            if generation != self._generation:  # a new connection replays from the outbox
                ahead.clear()
                generation = self._generation
                self._replay.clear()
            room = self._limit - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if not ahead:
                try:
                    rows = await self.outbox.fetch(self._cursor, self.fetch_batch)
                except OutboxClosed:
                    return
                except (OutboxError, sqlite3.Error) as exc:  # e.g. locked too long: again soon
                    log.error("uplink_fetch_failed", error=str(exc), retry_in=ACK_RETRY_S)
                    await asyncio.sleep(ACK_RETRY_S)
                    continue
                if not rows:
                    await self._wait_for_rows_or_replay()
                    continue
                ahead.extend(rows)
                continue
            client = self._client
            if client is None or not self._connected.is_set():
                continue
            with self._pub_lock:
                if self._conn_gen != self._pub_gen:
                    # paho reconnected and the loop has not been told yet: wait for it
                    self._connected.clear()
                    continue
                room = self._publish_some(client, ahead, room)
            if room < 0:
                await asyncio.sleep(0.1)  # paho refused a publish: do not spin
            self._idle.clear()
            self._peak = max(self._peak, len(self._inflight))

    async def _wait_for_rows_or_replay(self) -> None:
        """Wait for a new outbox row, or for a new connection that must replay."""
        if self._replay.is_set():
            return
        waits = {
            asyncio.create_task(self.outbox.wait_for_rows(self._cursor)),
            asyncio.create_task(self._replay.wait()),
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        for t in done:
            t.result()  # OutboxClosed surfaces here

    def _publish_some(self, client: paho.Client, ahead: deque[OutboxEntry], room: int) -> int:
        """Publish from ``ahead`` while there is room; the room left, -1 if paho refused."""
        while ahead and room > 0:
            row = ahead.popleft()
            if row.seq in self._deleting:  # acknowledged already, delete not committed yet
                self._cursor = row.seq
                continue
            try:
                info = client.publish(row.topic, row.payload, qos=1)
            except ValueError as exc:  # e.g. an invalid topic: skip it, never wedge the queue
                self._alarms[f"unpublishable:{row.seq}"] = (
                    f"outbox message seq {row.seq} cannot be published: {exc}"
                )
                log.error("uplink_unpublishable", seq=row.seq, error=str(exc))
                self._cursor = row.seq
                continue
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._last_error = f"publish failed: {paho.error_string(info.rc)}"
                log.error("uplink_publish_failed", seq=row.seq, error=self._last_error)
                ahead.appendleft(row)
                return -1
            self._inflight[info.mid] = row.seq
            self._cursor = row.seq
            room -= 1
        return room

    async def _ack_loop(self) -> None:
        """Delete acknowledged rows, many per commit. A delete the outbox cannot commit (a
        full disk, a lock held too long) is tried again later with what came since: the
        rows stay until then (a restart meanwhile re-sends them, and the collector drops
        the duplicates by ``message_id``)."""
        delay = ACK_RETRY_S
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            if self._acked:
                seqs, self._acked = self._acked, []
                try:
                    await self.outbox.ack(seqs)
                except OutboxClosed:
                    return
                except OutboxError as exc:
                    log.error("uplink_ack_not_committed", rows=len(seqs), error=str(exc),
                              retry_in=delay)  # fmt: skip
                    self._acked = seqs + self._acked
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, ACK_RETRY_MAX_S)
                    self._ack_ready.set()
                    continue
                delay = ACK_RETRY_S
                self._deleting.difference_update(seqs)
                self._changed.set()  # queued went down

    async def _fallback_loop(self) -> None:
        """``protocol = "auto"``: rebuild the client for MQTT 3.1.1 when MQTT 5 is refused."""
        await self._fallback.wait()
        if self._protocol_decided or self._state != "running":
            return
        log.warning("uplink_protocol_fallback", frm="5", to="3.1.1")
        self._connected.clear()
        await self._stop_client()
        self._protocol = "3.1.1"
        self._protocol_decided = True
        # The old client's unacknowledged messages went with it: replay from the outbox.
        self._inflight.clear()
        self._cursor = 0
        self._generation += 1
        self._room.set()
        self._start_client()
