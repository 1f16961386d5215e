"""The MQTT side of the collector: a small MQTT 5 / 3.1.1 subscriber on asyncio.

Subscribes at QoS 1 to the site topics — through an MQTT 5 shared
subscription (``$share/<group>/...``) so collector replicas and ingest
workers split the load, or plainly on MQTT 3.1.1 — with manual
acknowledgements: a message is PUBACKed only after the batch holding it is
committed, so nothing is lost when the collector or the database stops
mid-way. With a persistent session (``[mqtt] client_id``, or an ingest
worker's own session) the broker re-sends what a lost connection left
unacknowledged when the client comes back.

The collector needs only the subscriber half of MQTT, so it speaks it
itself: :class:`MqttCodec` is that half as a sans-I/O state machine (bytes
in → received messages and control packets out; packets to send as bytes),
:class:`_Connection` the asyncio protocol that moves the bytes. (paho, used
before, read each packet with three to five ``recv`` calls and built about
ten Python objects per message: ~40 µs of CPU per message here, more than
validating it. The codec parses whatever one read returned in one pass,
~3 µs per message, and a batch's acknowledgements leave in one write.)

Flow control: MQTT 5 tells the broker a Receive Maximum (at most that many
unacknowledged messages in flight to us), and the buffer has high and low
water marks: above ``queue_max`` messages the transport stops reading, which
pushes back on the broker, and reading resumes below half of it. Keep-alive
pings go out when nothing else was sent for half the keep-alive interval; a
broker that answers nothing for a whole interval is taken for gone. An
unexpected disconnect is followed by reconnects with backoff; the
subscription is renewed on every connect. Acknowledgements are sent only on
the connection that delivered the message: packet ids belong to a
connection's session, and after a reconnect the broker re-sends what it
still holds under its own ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from chargesight.cloud.config import MqttSection
from chargesight.common.logs import get_logger
from chargesight.common.messages import ALL_DIGESTS, ALL_ESCALATIONS, ALL_REPLIES, ALL_STATES

log = get_logger(__name__)

TOPICS = (ALL_ESCALATIONS, ALL_DIGESTS, ALL_STATES, ALL_REPLIES)
PERSISTENT_SESSION_S = 7 * 86400  # `[mqtt] client_id`: the broker keeps the session this long
RECONNECT_MAX_S = 30.0


class MqttError(Exception):
    """The broker cannot be reached or refused us."""


class ProtocolError(MqttError):
    """The broker sent something that is not MQTT as we speak it."""


class _Closed(MqttError):
    """The broker closed the connection before answering."""


class _Refused(MqttError):
    """CONNACK or SUBACK with a failure reason."""

    def __init__(self, message: str, *, unsupported_version: bool = False) -> None:
        super().__init__(message)
        self.unsupported_version = unsupported_version


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int  # packet id (0 for QoS 0)
    qos: int
    received: float  # time.monotonic() at receipt
    conn: int = 0  # the connection that delivered it: acknowledged only on that one


def subscriptions(protocol5: bool, group: str | None) -> list[str]:
    if protocol5 and group:
        return [f"$share/{group}/{t}" for t in TOPICS]
    return list(TOPICS)


# ------------------------------------------------------------------ codec (sans-I/O)

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 11, 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"

# MQTT 5 reason codes worth a name in an error message (3.1.1 CONNACK codes are mapped onto them)
REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x97: "quota exceeded",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0xA2: "wildcard subscriptions not supported",
}
_V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def reason_text(code: int) -> str:
    return f"{REASONS.get(code, 'error')} (0x{code:02X})"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(head: int, body: bytes) -> bytes:
    return bytes((head,)) + _varint(len(body)) + body


def puback(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int  # 0 accepted; MQTT 5 reason codes (3.1.1 codes mapped to them)
    reason_string: str | None = None
    server_keepalive_s: int | None = None


@dataclass(frozen=True, slots=True)
class Suback:
    mid: int
    reasons: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class ServerDisconnect:
    reason: int
    reason_string: str | None = None


Control = Connack | Suback | Pingresp | ServerDisconnect

# MQTT 5 property identifiers → how their value is encoded (section 2.2.2.2)
_BYTE, _TWO, _FOUR, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_KIND = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT, 0x11: _FOUR,
    0x12: _STR, 0x13: _TWO, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index); ProtocolError past four bytes or the end of ``buf``."""
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ProtocolError("truncated variable byte integer")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer longer than four bytes")


def parse_properties(buf: bytes, i: int) -> tuple[dict[int, Any], int]:
    """MQTT 5 properties at ``buf[i:]`` → ({identifier: value}, index after them)."""
    length, i = _read_varint(buf, i)
    end = i + length
    if end > len(buf):
        raise ProtocolError("properties run past the packet")
    props: dict[int, Any] = {}
    while i < end:
        ident, i = _read_varint(buf, i)
        kind = _PROPERTY_KIND.get(ident)
        value: Any
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02X}")
        if kind == _BYTE:
            value, i = buf[i], i + 1
        elif kind == _TWO:
            value, i = int.from_bytes(buf[i : i + 2], "big"), i + 2
        elif kind == _FOUR:
            value, i = int.from_bytes(buf[i : i + 4], "big"), i + 4
        elif kind == _VARINT:
            value, i = _read_varint(buf, i)
        else:
            n = int.from_bytes(buf[i : i + 2], "big")
            raw = buf[i + 2 : i + 2 + n]
            i += 2 + n
            if kind == _PAIR:
                m = int.from_bytes(buf[i : i + 2], "big")
                value = (
                    raw.decode(errors="replace"),
                    buf[i + 2 : i + 2 + m].decode("utf-8", "replace"),
                )
                i += 2 + m
            else:
                value = raw.decode("utf-8", "replace") if kind == _STR else bytes(raw)
        props[ident] = value
    if i != end:
        raise ProtocolError("properties do not add up to their length")
    return props, end


class MqttCodec:
    """The subscriber half of MQTT 5 / 3.1.1 for one connection, without I/O.

    :meth:`feed` takes bytes as they arrive (any split) and returns the
    messages and control packets they complete; the encoders return the
    bytes to send. Raises :class:`ProtocolError` on anything malformed —
    the connection is then beyond repair and should be closed.
    """

    def __init__(self, protocol5: bool, conn: int = 0) -> None:
        self.protocol5 = protocol5
        self.conn = conn
        self._next_mid = 0
        self._chunks: list[bytes] = []  # an incomplete packet's bytes so far
        self._have = 0
        self._need = 0  # bytes the incomplete packet needs in all (0: not known yet)

    # encoders -------------------------------------------------------------------------

    def connect(
        self,
        client_id: str,
        *,
        keepalive_s: int,
        clean_start: bool,
        session_expiry_s: int = 0,
        username: str | None = None,
        password: str | None = None,
        receive_maximum: int | None = None,
    ) -> bytes:
        flags = 0x02 if clean_start else 0
        payload = _utf8(client_id)
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
        head = b"\x00\x04MQTT" + bytes((5 if self.protocol5 else 4, flags))
        head += struct.pack("!H", keepalive_s)
        if self.protocol5:
            props = b""
            if session_expiry_s:
                props += b"\x11" + struct.pack("!I", session_expiry_s)
            if receive_maximum is not None:
                props += b"\x21" + struct.pack("!H", max(1, min(receive_maximum, 65535)))
            head += _varint(len(props)) + props
        return _packet(CONNECT << 4, head + payload)

    def subscribe(self, topics: Sequence[str], qos: int = 1) -> tuple[int, bytes]:
        """(packet id, SUBSCRIBE packet) for ``topics`` at ``qos``."""
        self._next_mid = self._next_mid % 65535 + 1
        body = struct.pack("!H", self._next_mid) + (b"\x00" if self.protocol5 else b"")
        for t in topics:
            body += _utf8(t) + bytes((qos,))
        return self._next_mid, _packet((SUBSCRIBE << 4) | 0x02, body)

    def disconnect(self, session_expiry_s: int | None = None) -> bytes:
        """DISCONNECT; on MQTT 5 ``session_expiry_s`` replaces the CONNECT's value (0: end it)."""
        if self.protocol5 and session_expiry_s is not None:
            props = b"\x11" + struct.pack("!I", session_expiry_s)
            return _packet(DISCONNECT << 4, b"\x00" + _varint(len(props)) + props)
        return b"\xe0\x00"

    # decoder --------------------------------------------------------------------------

    def feed(self, data: bytes, now: float = 0.0) -> tuple[list[Inbound], list[Control]]:
        """Messages and control packets completed by ``data`` (in order within each list)."""
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return [], []
            data = b"".join(self._chunks)
            self._chunks = []
        msgs: list[Inbound] = []
        controls: list[Control] = []
        end = len(data)
        pos = need = 0
        protocol5 = self.protocol5
        conn = self.conn
        append = msgs.append
        try:
            while end - pos >= 2:
                head = data[pos]
                i = pos + 1
                length = shift = 0
                while i < end:
                    b = data[i]
                    i += 1
                    length |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolError("remaining length longer than four bytes")
                else:
                    break  # the length itself is incomplete
                stop = i + length
                if stop > end:
                    need = stop - pos
                    break
                if head >> 4 == PUBLISH:
                    qos = (head >> 1) & 3
                    j = i + 2 + ((data[i] << 8) | data[i + 1])
                    topic = data[i + 2 : j].decode()
                    mid = 0
                    if qos:
                        if qos != 1:
                            raise ProtocolError(f"PUBLISH at QoS {qos}; we subscribed at QoS 1")
                        mid = (data[j] << 8) | data[j + 1]
                        j += 2
                    if protocol5:  # properties: skipped (no topic aliases were allowed)
                        plen = shift = 0
                        while True:
                            b = data[j]
                            j += 1
                            plen |= (b & 0x7F) << shift
                            if b < 0x80:
                                break
                            shift += 7
                        j += plen
                    if j > stop:
                        raise ProtocolError("PUBLISH header runs past the packet")
                    append(Inbound(topic, data[j:stop], mid, qos, now, conn))
                else:
                    controls.append(self._control(head, data[i:stop]))
                pos = stop
        except IndexError as exc:
            raise ProtocolError("PUBLISH header runs past the packet") from exc
        except UnicodeDecodeError as exc:
            raise ProtocolError("topic is not UTF-8") from exc
        if pos < end:
            rest = data[pos:]
            self._chunks = [rest]
            self._have = len(rest)
            self._need = need  # 0: not known yet, try again with the next bytes
        return msgs, controls

    def _control(self, head: int, body: bytes) -> Control:
        kind = head >> 4
        try:
            if kind == CONNACK:
                return self._connack(body)
            if kind == SUBACK:
                mid = int.from_bytes(body[:2], "big")
                i = parse_properties(body, 2)[1] if self.protocol5 else 2
                return Suback(mid, tuple(body[i:]))
            if kind == PINGRESP:
                return Pingresp()
            if kind == DISCONNECT and self.protocol5:
                reason = body[0] if body else 0
                props = parse_properties(body, 1)[0] if len(body) > 1 else {}
                return ServerDisconnect(reason, props.get(0x1F))
        except IndexError as exc:
            raise ProtocolError(f"packet type {kind} is truncated") from exc
        raise ProtocolError(f"unexpected packet type {kind} from the broker")

    def _connack(self, body: bytes) -> Connack:
        present = bool(body[0] & 1)
        code = body[1]
        if not self.protocol5 or len(body) == 2:
            # 3.1.1 codes (a broker without MQTT 5 answers an MQTT 5 CONNECT this way too)
            reason = code if code >= 0x80 or not code else _V3_CONNACK.get(code, 0x80)
            return Connack(present, reason)
        props = parse_properties(body, 2)[0]
        return Connack(present, code, props.get(0x1F), props.get(0x13))


# ------------------------------------------------------------------ asyncio shell


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker: feeds the codec, hands messages to the source."""

    def __init__(self, source: MqttSource, codec: MqttCodec) -> None:
        self.source = source
        self.codec = codec
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[Connack] = loop.create_future()
        self.subacks: dict[int, asyncio.Future[Suback]] = {}
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_received = self.last_sent = time.monotonic()
        self.ping_sent: float | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_received = now
        try:
            msgs, controls = self.codec.feed(data, now)
        except ProtocolError as exc:
            log.warning("mqtt protocol error, closing the connection", error=str(exc))
            self.abort()
            return
        if msgs:
            self.source._deliver(msgs, self)
        for c in controls:
            if isinstance(c, Connack):
                if not self.connack.done():
                    self.connack.set_result(c)
            elif isinstance(c, Suback):
                fut = self.subacks.pop(c.mid, None)
                if fut is not None and not fut.done():
                    fut.set_result(c)
            elif isinstance(c, Pingresp):
                self.ping_sent = None
            else:
                log.warning(
                    "mqtt broker disconnected us",
                    reason=reason_text(c.reason),
                    detail=c.reason_string,
                )
                self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        gone = _Closed(f"connection closed by the broker{f': {exc}' if exc else ''}")
        futures: list[asyncio.Future[Any]] = [self.connack, *self.subacks.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(gone)
                fut.exception()  # retrieved: nobody may be waiting any more
        self.subacks.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.source._lost(self, exc)

    def send(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.lost and not t.is_closing():
            t.write(data)
            self.last_sent = time.monotonic()

    def expect_suback(self, mid: int) -> asyncio.Future[Suback]:
        fut: asyncio.Future[Suback] = asyncio.get_running_loop().create_future()
        if self.lost:
            fut.set_exception(_Closed("connection closed by the broker"))
        else:
            self.subacks[mid] = fut
        return fut

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class MqttSource:
    """The collector's subscription; ``start`` connects and subscribes, ``batch`` drains,
    ``ack`` acknowledges, ``close`` ends.

    ``client_id``/``session_expiry_s`` override the config's session (ingest workers
    use their own); ``end_session_on_close`` makes :meth:`close` tell an MQTT 5 broker
    to drop the session instead of keeping it for the next start.
    """

    def __init__(
        self,
        config: MqttSection,
        queue_max: int = 20_000,
        *,
        client_id: str | None = None,
        session_expiry_s: int | None = None,
        end_session_on_close: bool = False,
    ) -> None:
        self.config = config
        self.queue_max = queue_max
        self._buf: collections.deque[Inbound] = collections.deque()
        self._wakeup = asyncio.Event()
        self._paused = False
        self._stopped_reading = False
        self._protocol5 = config.protocol != "3.1.1"
        self._closed = False
        self._conn: _Connection | None = None
        self._conn_no = 0
        self._keepalive: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._started = False
        persistent = client_id is not None or config.client_id is not None
        self.client_id = (
            client_id or config.client_id or f"chargesight-collector-{uuid.uuid4().hex[:12]}"
        )
        self._persistent = persistent
        if session_expiry_s is None:
            session_expiry_s = PERSISTENT_SESSION_S if persistent else 0
        self._session_expiry_s = session_expiry_s
        self._end_session_on_close = end_session_on_close
        self._keepalive_s = config.keepalive_s
        self.reconnects = 0

    @property
    def depth(self) -> int:
        return len(self._buf)

    @property
    def protocol5(self) -> bool:
        return self._protocol5

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

    async def start(self, timeout: float = 15.0) -> None:
        """Connect and subscribe; raise MqttError when that fails within ``timeout``."""
        protocol5 = self._protocol5
        for attempt in (1, 2):
            try:
                await self._open(protocol5, timeout)
            except _Refused as exc:
                if (
                    attempt == 1
                    and exc.unsupported_version
                    and self.config.protocol == "auto"
                    and protocol5
                ):
                    protocol5 = False  # an MQTT 3.1.1 broker: subscribe plainly
                    continue
                raise MqttError(f"mqtt.url {self.config.url}: {exc}") from exc
            except _Closed as exc:
                if attempt == 1 and self.config.protocol == "auto" and protocol5:
                    protocol5 = False  # closed on an MQTT 5 CONNECT: try 3.1.1
                    continue
                raise MqttError(f"mqtt.url {self.config.url}: {exc}") from exc
            except MqttError as exc:
                raise MqttError(f"mqtt.url {self.config.url}: {exc}") from exc
            except TimeoutError as exc:
                raise MqttError(f"mqtt.url {self.config.url}: no answer from the broker") from exc
            except OSError as exc:
                raise MqttError(f"mqtt.url {self.config.url}: cannot connect: {exc}") from exc
            break
        self._started = True
        self._keepalive = asyncio.create_task(self._keepalive_loop())
        log.info("mqtt subscribed", url=self.config.url, mqtt5=self._protocol5,
                 topics=subscriptions(self._protocol5, self.config.shared_group))  # fmt: skip

    async def _open(self, protocol5: bool, timeout: float) -> None:
        """One connection: CONNECT, CONNACK, SUBSCRIBE, SUBACK."""
        cfg = self.config
        host, port = cfg.host, cfg.port
        ctx = cfg.ssl_context()
        loop = asyncio.get_running_loop()
        codec = MqttCodec(protocol5, self._conn_no + 1)
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(self, codec),
                host,
                port,
                ssl=ctx,
                server_hostname=host if ctx is not None else None,
            )
            try:
                conn.send(
                    codec.connect(
                        self.client_id,
                        keepalive_s=self._keepalive_s,
                        clean_start=not self._persistent,
                        session_expiry_s=self._session_expiry_s,
                        username=cfg.username,
                        password=cfg.password,
                        receive_maximum=self.queue_max,
                    )
                )
                connack = await conn.connack
                if connack.reason:
                    detail = f": {connack.reason_string}" if connack.reason_string else ""
                    raise _Refused(
                        f"connection refused: {reason_text(connack.reason)}{detail}",
                        unsupported_version=connack.reason == 0x84,
                    )
                if connack.server_keepalive_s:
                    self._keepalive_s = connack.server_keepalive_s
                # messages the broker re-sends right after CONNACK belong to this connection
                self._conn_no = codec.conn
                self._conn = conn
                self._protocol5 = protocol5
                if self._paused:
                    conn.pause_reading()
                mid, packet = codec.subscribe(subscriptions(protocol5, cfg.shared_group))
                waiter = conn.expect_suback(mid)
                conn.send(packet)
                suback = await waiter
                bad = [reason_text(r) for r in suback.reasons if r >= 0x80]
                if bad:
                    raise _Refused(f"subscription refused: {', '.join(bad)}")
            except BaseException:
                if self._conn is conn:
                    self._conn = None
                conn.abort()
                raise

    # from the connection --------------------------------------------------------------

    def _deliver(self, msgs: list[Inbound], conn: _Connection) -> None:
        self._buf.extend(msgs)
        self._wakeup.set()
        if len(self._buf) >= self.queue_max and not self._paused:
            self._paused = True  # high water: stop reading, the broker holds the rest
            conn.pause_reading()

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._closed or not self._started:
            return
        log.warning("mqtt disconnected, reconnecting", reason=str(exc) if exc else "closed")
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                await self._open(self._protocol5, 15.0)
            except (OSError, TimeoutError, MqttError) as exc:
                log.warning("mqtt reconnect failed", error=str(exc) or type(exc).__name__,
                            retry_in=delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self.reconnects += 1
            log.info("mqtt reconnected", url=self.config.url)
            return

    async def _keepalive_loop(self) -> None:
        """PINGREQ when nothing else went out for half the interval; a broker silent for a
        whole interval after a ping is taken for gone (not while we stopped reading)."""
        while not self._closed:
            interval = max(self._keepalive_s / 2, 0.5)
            await asyncio.sleep(interval)
            conn = self._conn
            if conn is None or conn.lost:
                continue
            now = time.monotonic()
            if conn.ping_sent is not None:
                if not self._paused and now - conn.last_received > self._keepalive_s:
                    log.warning("mqtt broker does not answer pings, reconnecting")
                    conn.abort()
                continue
            if now - conn.last_sent >= interval:
                conn.send(PINGREQ_PACKET)
                conn.ping_sent = now

    # consumer -------------------------------------------------------------------------

    async def batch(self, max_items: int, delay: float) -> list[Inbound]:
        """Wait for at least one message, then up to ``delay`` s for ``max_items``.

        Cancel-safe: nothing is taken from the buffer before the wait completes.
        """
        while not self._buf:
            self._wakeup.clear()
            await self._wakeup.wait()
        if len(self._buf) < max_items and delay > 0:
            await asyncio.sleep(delay)  # linger once so a burst becomes one batch
        buf = self._buf
        n = min(max_items, len(buf))
        out = [buf.popleft() for _ in range(n)]
        if self._paused and len(buf) <= self.queue_max // 2 and not self._stopped_reading:
            self._paused = False  # low water: read again
            if self._conn is not None:
                self._conn.resume_reading()
        return out

    def stop_reading(self) -> None:
        """Take no more messages (shutdown); what the broker still holds for us stays
        unacknowledged, for the next session (or for nobody, on a clean session)."""
        self._stopped_reading = self._paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def ack(self, items: Sequence[Inbound]) -> None:
        """Acknowledge stored messages to the broker (QoS 1 PUBACK), in receipt order, in one
        write; messages from an earlier connection are left to the broker's re-delivery."""
        conn = self._conn
        if conn is None or conn.lost:
            return
        no = self._conn_no
        data = b"".join([puback(m.mid) for m in items if m.qos and m.conn == no])
        if data:
            conn.send(data)

    async def close(self) -> None:
        """Disconnect (keeping a persistent session unless told to end it); idempotent."""
        self._closed = True
        for task in (self._keepalive, self._reconnect):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        conn = self._conn
        if conn is not None and not conn.lost and conn.transport is not None:
            expiry = 0 if self._end_session_on_close else None
            conn.send(conn.codec.disconnect(expiry))
            conn.transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await conn.closed
        self._conn = None
