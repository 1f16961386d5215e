"""The transparent OCPP-J proxy between charge points and the CSMS.

Charge points connect to ``ws(s)://HOST:PORT/ocpp/{charge_point_id}``; for
each one the proxy opens one upstream connection to the configured CSMS URL
with the same negotiated subprotocol, and forwards every text frame
byte-for-byte, in order, in both directions. It parses each frame once
(:mod:`chargesight.common.ocppj`) to

* reject malformed frames with the CALLERROR the OCPP-J spec names, never
  forwarding them and never closing anything because of them;
* turn what charge points say into normalised events
  (:mod:`chargesight.common.normalise`) for detection and recovery;
* match replies, so the agent can inject its own CALLs (:meth:`Proxy.call`)
  whose replies are consumed, never forwarded: the CSMS cannot tell.

OCPP-J allows one outstanding CALL per direction. Towards a charge point, the
CSMS's CALLs and the agent's injected CALLs share one :class:`CallSlot`
(first come, first served), so they are serialised, never interleaved, and
neither starves the other. When no injected call is outstanding, a CSMS CALL
goes straight through, keeping its order relative to the CALLRESULTs around it.

Shutdown order (STYLE.md): stop accepting, close charge point connections,
which closes their upstream connections, then wait for the handlers.

While the upstream is away the charge point stays connected; what happens to
its CALLs is decided by an :class:`UpstreamUnavailable` policy (answer locally
and queue, in ``serve`` mode; close the socket in ``disconnect`` mode).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import random
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from chargesight.common import ocppj
from chargesight.common.configload import parse_host_port
from chargesight.common.events import (
    ConnectionDown,
    ConnectionUp,
    Event,
    FrameRejected,
    UpstreamState,
)
from chargesight.common.logs import get_logger
from chargesight.common.normalise import events_from_call, events_from_result
from chargesight.edge.config import EdgeConfig
from chargesight.edge.errors import (
    CallRejected,
    CallTimeout,
    ChargePointNotConnected,
)
from chargesight.edge.errors import (
    ConnectionClosed as CallConnectionClosed,
)
from chargesight.edge.local import NoLocalAnswer, local_answer
from chargesight.edge.ocpplog import OcppLog

log = get_logger("chargesight.edge.proxy")

CHARGE_POINT_ID_RE = re.compile(r"^[A-Za-z0-9._~*\-+=@#$%&!]{1,64}$")
PATH_PREFIX = "/ocpp/"

Subscriber = Callable[[Event], None]


def now_utc() -> datetime:
    return datetime.now(UTC)


class FrameLog(Protocol):
    def record(
        self, charge_point_id: str, direction: str, frame: bytes | str, at: float | None = None
    ) -> None: ...


class _NullLog:
    def record(
        self, charge_point_id: str, direction: str, frame: bytes | str, at: float | None = None
    ) -> None:
        return None


class UpstreamUnavailable(Protocol):
    """What the proxy does with a charge point's CALL while its CSMS link is down."""

    async def handle_call(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> None:
        """Answer (or refuse) ``call`` on the CSMS's behalf. Must reply to the charge point."""

    async def upstream_lost(self, session: ChargePointSession) -> None:
        """The upstream connection of ``session`` went away."""

    async def upstream_restored(self, session: ChargePointSession) -> None:
        """The upstream is back, before live traffic resumes (replay queued messages here)."""

    def rewrite_to_csms(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        """The frame to forward for a charge point's CALL (``raw`` unless ids must be mapped)."""

    def rewrite_to_cp(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        """The frame to forward for a CSMS CALL (``raw`` unless ids must be mapped)."""


class LocalAnswers:
    """Default offline policy: answer the common CALLs locally, refuse the rest.

    Queueing and replay of what the CSMS must still see live in
    :mod:`chargesight.edge.offline`, which replaces this policy in the agent.
    """

    def __init__(self, heartbeat_interval_s: int = 300) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self._next_tx = -1

    async def handle_call(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> None:
        tx: int | None = None
        if call.action == "StartTransaction":
            tx, self._next_tx = self._next_tx, self._next_tx - 1
        try:
            payload = local_answer(
                session.version,
                call.action,
                call.payload,
                heartbeat_interval_s=self.heartbeat_interval_s,
                provisional_transaction_id=tx,
            )
        except NoLocalAnswer as exc:
            await session.reply_error(call.unique_id, "InternalError", f"CSMS unreachable: {exc}")
            return
        await session.reply_locally(call, payload)

    async def upstream_lost(self, session: ChargePointSession) -> None:
        return None

    async def upstream_restored(self, session: ChargePointSession) -> None:
        return None

    def rewrite_to_csms(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        return raw

    def rewrite_to_cp(self, session: ChargePointSession, call: ocppj.Call, raw: bytes) -> bytes:
        return raw


class CallSlot:
    """One outstanding CALL towards a charge point at a time, first come first served.

    :meth:`try_acquire` takes a free slot without waiting; :meth:`acquire`
    waits its turn (cancel-safe: a cancelled waiter gives up its place, or
    passes the slot on if it had just been handed it). :meth:`release` hands
    the slot to the oldest waiter.
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> bool:
        return self._busy

    def try_acquire(self) -> bool:
        if self._busy or self._waiters:
            return False
        self._busy = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed the slot as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # ownership passes on; stays busy
                return
        self._busy = False


@dataclass(slots=True)
class _Outstanding:
    """A CALL sent to the charge point whose reply we are waiting for."""

    injected: bool
    future: asyncio.Future[tuple[ocppj.Frame, bytes]] | None
    timer: asyncio.TimerHandle | None = None
    action: str = ""


@dataclass(slots=True)
class _PendingFromCp:
    """A CALL sent to the CSMS whose reply we are waiting for.

    ``future`` is set for CALLs the agent replays on the charge point's behalf
    (offline queue): their replies are consumed, never forwarded.
    """

    action: str
    payload: dict[str, Any]
    future: asyncio.Future[ocppj.Frame] | None = None


@dataclass
class ProxyStats:
    frames_cp_to_csms: int = 0
    frames_csms_to_cp: int = 0
    malformed_from_cp: int = 0
    malformed_from_csms: int = 0
    unknown_replies: int = 0
    injected_calls: int = 0
    answered_locally: int = 0
    upstream_connects: int = 0
    upstream_failures: int = 0
    rejected_connections: dict[str, int] = field(default_factory=dict)


class ChargePointSession:
    """One charge point connection and its upstream twin."""

    def __init__(
        self,
        proxy: Proxy,
        charge_point_id: str,
        ws: ServerConnection,
        subprotocol: str,
        auth_header: str | None,
    ) -> None:
        self.proxy = proxy
        self.charge_point_id = charge_point_id
        self.ws = ws
        self.subprotocol = subprotocol
        self.version: ocppj.Version = ocppj.SUBPROTOCOL_VERSIONS[subprotocol]
        self.auth_header = auth_header
        self.upstream: ClientConnection | None = None
        self.replaying = False  # offline queue being replayed: live CALLs queue behind it
        self.first_attempt = asyncio.Event()  # set after the first upstream attempt ends
        self.slot = CallSlot()
        self.outstanding: dict[str, _Outstanding] = {}
        self.pending_from_cp: dict[str, _PendingFromCp] = {}
        self.connected_at = time.monotonic()
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(charge_point_id=charge_point_id, ocpp=self.version)

    # ------------------------------------------------------------ plumbing

    def is_closed(self) -> bool:
        return self.closed

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"{name}:{self.charge_point_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(
                "session_task_failed", task=task.get_name(), error=repr(task.exception())
            )

    def _record(self, direction: str, raw: bytes | str) -> None:
        self.proxy.frame_log.record(self.charge_point_id, direction, raw)

    async def send_to_cp(self, raw: bytes, direction: str = "csms->cp") -> None:
        self._record(direction, raw)
        await self.ws.send(raw, text=True)

    async def reply_locally(self, call: ocppj.Call, payload: dict[str, Any]) -> None:
        """Answer a charge point's CALL on the CSMS's behalf (offline)."""
        self.pending_from_cp.pop(call.unique_id, None)
        self.proxy.stats.answered_locally += 1
        self.proxy.emit_many(
            events_from_result(
                self.charge_point_id, self.version, call.action, call.payload, payload, now_utc()
            )
        )
        await self.send_to_cp(ocppj.call_result(call.unique_id, payload), "agent->cp")

    async def reply_error(self, unique_id: str, code: str, description: str) -> None:
        self.pending_from_cp.pop(unique_id, None)
        await self.send_to_cp(ocppj.call_error(unique_id, code, description), "agent->cp")

    async def send_upstream(self, raw: bytes, direction: str = "cp->csms") -> bool:
        """Send to the CSMS if connected; False when the upstream is not there."""
        up = self.upstream
        if up is None:
            return False
        try:
            await up.send(raw, text=True)
        except ConnectionClosed:
            return False
        self._record(direction, raw)
        return True

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until the charge point goes away."""
        self._spawn(self._upstream_loop(), "upstream")
        try:
            await self._read_cp()
        finally:
            self.closed = True
            up = self.upstream
            if up is not None:  # close first, so the upstream reader ends on its own
                await up.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.upstream = None
            for out in self.outstanding.values():
                if out.timer is not None:
                    out.timer.cancel()
                if out.future is not None and not out.future.done():
                    out.future.set_exception(
                        CallConnectionClosed(
                            "charge point disconnected", charge_point_id=self.charge_point_id
                        )
                    )
            self.outstanding.clear()

    async def _reject(
        self,
        frame: ocppj.FrameError,
        raw: bytes,
        direction: Literal["cp->csms", "csms->cp"],
        answer: Callable[[bytes, str], Awaitable[None]],
    ) -> None:
        """A malformed frame: log, count, record, never forward; answer its sender with a CALLERROR."""
        self._record(direction, raw)
        if direction == "cp->csms":
            self.proxy.stats.malformed_from_cp += 1
        else:
            self.proxy.stats.malformed_from_csms += 1
        self._log.warning(
            "malformed_frame", direction=direction, code=frame.error_code, why=frame.description
        )
        self.proxy.emit(
            FrameRejected(
                self.charge_point_id, now_utc(), direction, frame.error_code, frame.description
            )
        )
        with contextlib.suppress(ConnectionClosed):
            await answer(frame.reply(), "agent->cp" if direction == "cp->csms" else "agent->csms")

    # ------------------------------------------------------------ charge point side

    async def _read_cp(self) -> None:
        ws = self.ws
        proxy = self.proxy
        while True:
            try:
                raw = await ws.recv(decode=False)
            except ConnectionClosed:
                return
            frame = ocppj.parse_frame(raw, self.version)
            if isinstance(frame, ocppj.FrameError):
                await self._reject(frame, raw, "cp->csms", self.send_to_cp)
                continue
            if isinstance(frame, ocppj.Call):
                proxy.stats.frames_cp_to_csms += 1
                proxy.emit_many(
                    events_from_call(
                        self.charge_point_id, self.version, frame.action, frame.payload, now_utc()
                    )
                )
                if frame.message_type == ocppj.SEND:  # OCPP 2.1 SEND: no answer expected
                    if not await self.send_upstream(raw):
                        self._record("cp->csms", raw)
                    continue
                self.pending_from_cp[frame.unique_id] = _PendingFromCp(frame.action, frame.payload)
                if self.upstream is None and not self.first_attempt.is_set():
                    # The charge point spoke before the first upstream connect finished.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.first_attempt.wait(), proxy.config.ocpp.open_timeout_s
                        )
                if self.replaying or not await self.send_upstream(
                    proxy.offline.rewrite_to_csms(self, frame, raw)
                ):
                    self._record("cp->csms", raw)
                    await proxy.offline.handle_call(self, frame, raw)
                continue
            # A reply from the charge point.
            out = self.outstanding.pop(frame.unique_id, None)
            if out is None:
                self._record("cp->csms", raw)
                proxy.stats.unknown_replies += 1
                self._log.warning(
                    "reply_for_unknown_call", direction="cp->csms", unique_id=frame.unique_id
                )
                continue
            if out.timer is not None:
                out.timer.cancel()
            if out.injected:
                self._record("cp->agent", raw)
                if out.future is not None and not out.future.done():
                    out.future.set_result((frame, raw))
            else:
                proxy.stats.frames_cp_to_csms += 1
                if not await self.send_upstream(raw):
                    self._record("cp->csms", raw)
                    self._log.info("reply_not_delivered_upstream_down", unique_id=frame.unique_id)
                self.slot.release()

    # ------------------------------------------------------------ CSMS side

    def _upstream_url(self) -> str:
        return self.proxy.config.ocpp.upstream.replace(
            "{charge_point_id}", quote(self.charge_point_id, safe="")
        )

    def _upstream_headers(self) -> dict[str, str]:
        o = self.proxy.config.ocpp
        if o.upstream_password is not None:
            user = (o.upstream_username or "{charge_point_id}").replace(
                "{charge_point_id}", self.charge_point_id
            )
            token = base64.b64encode(f"{user}:{o.upstream_password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if self.auth_header:
            return {"Authorization": self.auth_header}
        return {}

    async def _upstream_loop(self) -> None:
        o = self.proxy.config.ocpp
        backoff = o.reconnect_min_s
        was_connected = False
        while not self.closed:
            try:
                up = await connect(
                    self._upstream_url(),
                    subprotocols=[Subprotocol(self.subprotocol)],
                    additional_headers=self._upstream_headers(),
                    ssl=self.proxy.upstream_ssl,
                    compression="deflate" if o.compression else None,
                    open_timeout=o.open_timeout_s,
                    max_size=o.max_frame_bytes,
                    ping_interval=None,
                    user_agent_header=None,
                )
                if up.subprotocol != self.subprotocol:
                    await up.close(1002, "subprotocol not accepted")
                    raise InvalidHandshake(f"CSMS did not accept subprotocol {self.subprotocol}")
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                self.proxy.stats.upstream_failures += 1
                self._log.warning(
                    "upstream_connect_failed",
                    error=str(exc) or type(exc).__name__,
                    retry_s=round(backoff, 2),
                )
                if was_connected is False and not self.first_attempt.is_set():
                    self.first_attempt.set()
                    await self.proxy.offline.upstream_lost(self)
                delay = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, o.reconnect_max_s)
                await asyncio.sleep(delay)
                continue
            backoff = o.reconnect_min_s
            self.proxy.stats.upstream_connects += 1
            self._log.info("upstream_connected")
            self.replaying = True  # queued messages first, live traffic after
            self.upstream = up
            self.first_attempt.set()
            was_connected = True
            self.proxy.emit(UpstreamState(self.charge_point_id, now_utc(), True))
            self._spawn(self._replay(), "replay")
            try:
                await self._read_upstream(up)
            finally:
                self.upstream = None
                self.replaying = False
                for pending in self.pending_from_cp.values():
                    if pending.future is not None and not pending.future.done():
                        pending.future.set_exception(
                            CallConnectionClosed(
                                "upstream lost", charge_point_id=self.charge_point_id
                            )
                        )
            if self.is_closed():
                return
            self._log.warning("upstream_lost", code=up.close_code, reason=up.close_reason)
            self.proxy.emit(
                UpstreamState(self.charge_point_id, now_utc(), False, "upstream closed")
            )
            # CALLs the CSMS will never answer now: answer them locally.
            for uid, pending in list(self.pending_from_cp.items()):
                if pending.future is None:
                    await self.proxy.offline.handle_call(
                        self, ocppj.Call(uid, pending.action, pending.payload), b""
                    )
            self.pending_from_cp.clear()
            await self.proxy.offline.upstream_lost(self)

    async def _replay(self) -> None:
        try:
            await self.proxy.offline.upstream_restored(self)
        except CallConnectionClosed:
            return
        except Exception as exc:
            self._log.error("offline_replay_failed", error=repr(exc))
        self.replaying = False

    async def call_upstream(
        self, action: str, payload: dict[str, Any], timeout: float, unique_id: str | None = None
    ) -> ocppj.Frame:
        """Send a CALL to the CSMS on the charge point's behalf and return its reply (replay).

        Raises :class:`CallTimeout`, or ``ConnectionClosed`` when the upstream goes away.
        """
        uid = unique_id or str(uuid.uuid4())
        fut: asyncio.Future[ocppj.Frame] = asyncio.get_running_loop().create_future()
        self.pending_from_cp[uid] = _PendingFromCp(action, payload, fut)
        try:
            if not await self.send_upstream(ocppj.call(uid, action, payload), "agent->csms"):
                raise CallConnectionClosed(
                    "upstream not connected", charge_point_id=self.charge_point_id
                )
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                raise CallTimeout(
                    f"{action}: CSMS did not answer within {timeout:.1f}s",
                    charge_point_id=self.charge_point_id,
                ) from None
        finally:
            self.pending_from_cp.pop(uid, None)

    async def _read_upstream(self, up: ClientConnection) -> None:
        proxy = self.proxy
        while True:
            try:
                raw = await up.recv(decode=False)
            except ConnectionClosed:
                return
            frame = ocppj.parse_frame(raw, self.version)
            if isinstance(frame, ocppj.FrameError):

                async def answer_csms(
                    reply: bytes, direction: str, up: ClientConnection = up
                ) -> None:
                    self._record(direction, reply)
                    await up.send(reply, text=True)

                await self._reject(frame, raw, "csms->cp", answer_csms)
                continue
            if isinstance(frame, ocppj.Call):
                proxy.stats.frames_csms_to_cp += 1
                raw = proxy.offline.rewrite_to_cp(self, frame, raw)
                if frame.message_type == ocppj.SEND:
                    await self.send_to_cp(raw)
                elif self.slot.try_acquire():
                    await self._send_csms_call(frame, raw)
                else:
                    self._spawn(self._queued_csms_call(frame, raw), "queued-csms-call")
                continue
            pending = self.pending_from_cp.pop(frame.unique_id, None)
            if pending is None:
                self._record("csms->cp", raw)
                proxy.stats.unknown_replies += 1
                self._log.warning(
                    "reply_for_unknown_call", direction="csms->cp", unique_id=frame.unique_id
                )
                continue
            if pending.future is not None:  # the answer to a replayed CALL: consumed
                self._record("csms->agent", raw)
                if not pending.future.done():
                    pending.future.set_result(frame)
                continue
            proxy.stats.frames_csms_to_cp += 1
            if isinstance(frame, ocppj.CallResult):
                proxy.emit_many(
                    events_from_result(
                        self.charge_point_id,
                        self.version,
                        pending.action,
                        pending.payload,
                        frame.payload,
                        now_utc(),
                    )
                )
            try:
                await self.send_to_cp(raw)
            except ConnectionClosed:
                return

    async def _queued_csms_call(self, frame: ocppj.Call, raw: bytes) -> None:
        await self.slot.acquire()
        await self._send_csms_call(frame, raw)

    async def _send_csms_call(self, frame: ocppj.Call, raw: bytes) -> None:
        """Send a CSMS CALL holding the slot; the reply (or a timeout) releases it."""
        loop = asyncio.get_running_loop()
        out = _Outstanding(injected=False, future=None, action=frame.action)
        out.timer = loop.call_later(
            self.proxy.config.ocpp.call_timeout_s, self._expire, frame.unique_id, out
        )
        self.outstanding[frame.unique_id] = out
        try:
            await self.send_to_cp(raw)
        except ConnectionClosed:
            self._expire(frame.unique_id, out)

    def _expire(self, unique_id: str, out: _Outstanding) -> None:
        if self.outstanding.get(unique_id) is out:
            del self.outstanding[unique_id]
            if out.timer is not None:
                out.timer.cancel()
            if not out.injected:
                self._log.warning(
                    "charge_point_did_not_answer", unique_id=unique_id, action=out.action
                )
                self.slot.release()

    # ------------------------------------------------------------ injected calls

    async def inject(self, action: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send the agent's own CALL and return the CALLRESULT payload.

        Cancel-safe: a cancelled call gives up its place in the queue, or, once
        sent, releases the slot; a late reply is then dropped as unknown.
        """
        unique_id = str(uuid.uuid4())
        deadline = asyncio.get_running_loop().time() + timeout
        self.proxy.stats.injected_calls += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self.slot.acquire()
        except TimeoutError:
            raise CallTimeout(
                f"{action}: the charge point was busy with another call for {timeout:.1f}s",
                charge_point_id=self.charge_point_id,
            ) from None
        fut: asyncio.Future[tuple[ocppj.Frame, bytes]] = asyncio.get_running_loop().create_future()
        self.outstanding[unique_id] = _Outstanding(injected=True, future=fut, action=action)
        try:
            try:
                await self.send_to_cp(ocppj.call(unique_id, action, payload), "agent->cp")
            except ConnectionClosed as exc:
                raise CallConnectionClosed(
                    "charge point disconnected", charge_point_id=self.charge_point_id
                ) from exc
            try:
                async with asyncio.timeout_at(deadline):
                    frame, _raw = await fut
            except TimeoutError:
                raise CallTimeout(
                    f"{action}: no answer within {timeout:.1f}s",
                    charge_point_id=self.charge_point_id,
                ) from None
        finally:
            self.outstanding.pop(unique_id, None)
            self.slot.release()
        if isinstance(frame, ocppj.CallError):
            raise CallRejected(
                f"{action} rejected: {frame.error_code} {frame.description}".strip(),
                charge_point_id=self.charge_point_id,
                error_code=frame.error_code,
                description=frame.description,
                details=frame.details,
            )
        assert isinstance(frame, ocppj.CallResult)
        return frame.payload


class Proxy:
    """The OCPP proxy server. ``async with Proxy(config) as proxy: ...``."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        frame_log: FrameLog | OcppLog | None = None,
        offline: UpstreamUnavailable | None = None,
    ) -> None:
        self.config = config
        self.frame_log: FrameLog = frame_log if frame_log is not None else _NullLog()
        self.offline: UpstreamUnavailable = offline if offline is not None else LocalAnswers()
        self.stats = ProxyStats()
        self.sessions: dict[str, ChargePointSession] = {}
        self._subscribers: list[Subscriber] = []
        self._server: Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.upstream_ssl = self._upstream_ssl_context()
        self._server_ssl = self._server_ssl_context()

    # ------------------------------------------------------------ events

    def subscribe(self, callback: Subscriber) -> None:
        """Receive every normalised event. Callbacks run in the proxy's tasks: never block."""
        self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        for cb in self._subscribers:
            try:
                cb(event)
            except Exception as exc:  # a subscriber bug must not break forwarding
                log.error("subscriber_failed", error=repr(exc), event_type=type(event).__name__)

    def emit_many(self, events: list[Event]) -> None:
        for event in events:
            self.emit(event)

    # ------------------------------------------------------------ public API

    async def call(
        self,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Inject a CALL to a charge point; the CSMS never sees it or its reply.

        Raises :class:`ChargePointNotConnected`, :class:`CallRejected` (CALLERROR),
        :class:`CallTimeout` or :class:`~chargesight.edge.errors.ConnectionClosed`.
        """
        session = self.sessions.get(charge_point_id)
        if session is None or session.closed:
            raise ChargePointNotConnected(
                f"charge point {charge_point_id} is not connected", charge_point_id=charge_point_id
            )
        return await session.inject(
            action, payload, self.config.ocpp.call_timeout_s if timeout is None else timeout
        )

    def version(self, charge_point_id: str) -> str | None:
        session = self.sessions.get(charge_point_id)
        return None if session is None else session.version

    def connected(self) -> list[str]:
        return sorted(self.sessions)

    def upstream_connected(self, charge_point_id: str) -> bool:
        session = self.sessions.get(charge_point_id)
        return session is not None and session.upstream is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy is not started")
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    # ------------------------------------------------------------ server

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        host, port = parse_host_port(self.config.ocpp.listen)
        o = self.config.ocpp
        self._server = await serve(
            self._handler,
            host,
            port,
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            compression="deflate" if o.compression else None,
            max_size=o.max_frame_bytes,
            ssl=self._server_ssl,
            server_header=None,
            ping_interval=None,
        )
        log.info("proxy_listening", listen=o.listen, port=self.port)

    async def close(self) -> None:
        """Stop accepting, close every charge point (and so its upstream), wait for handlers."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self._server = None

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Any
    ) -> Subprotocol | None:
        for offered in subprotocols:
            if offered in self.config.ocpp.subprotocols:
                return Subprotocol(offered)
        return None  # finish the handshake without the header; the handler closes if needed

    def _reject(
        self, connection: ServerConnection, status: http.HTTPStatus, why: str, **kw: Any
    ) -> Response:
        self.stats.rejected_connections[why] = self.stats.rejected_connections.get(why, 0) + 1
        log.warning("connection_rejected", status=int(status), why=why, **kw)
        return connection.respond(status, why + "\n")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if not path.startswith(PATH_PREFIX):
            return self._reject(
                connection,
                http.HTTPStatus.NOT_FOUND,
                "path must be /ocpp/{charge_point_id}",
                path=path,
            )
        cp_id = unquote(path[len(PATH_PREFIX) :])
        if not CHARGE_POINT_ID_RE.match(cp_id):
            return self._reject(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                "invalid charge point id",
                charge_point_id=cp_id,
            )
        o = self.config.ocpp
        if o.allowed_charge_points and cp_id not in o.allowed_charge_points:
            return self._reject(
                connection,
                http.HTTPStatus.NOT_FOUND,
                "unknown charge point id",
                charge_point_id=cp_id,
            )
        if (
            o.basic_auth is not None
            and o.basic_auth.passwords
            and not _basic_auth_ok(request.headers, cp_id, o.basic_auth.passwords)
        ):
            response = self._reject(
                connection,
                http.HTTPStatus.UNAUTHORIZED,
                "basic authentication failed",
                charge_point_id=cp_id,
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="chargesight"'
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve_connection(ws)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve_connection(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        cp_id = unquote(request.path.split("?", 1)[0][len(PATH_PREFIX) :])
        subprotocol: str | None = ws.subprotocol
        offered = [
            p.strip()
            for h in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in h.split(",")
            if p.strip()
        ]
        if subprotocol is None:
            default = self.config.ocpp.default_subprotocol
            if offered or default is None:
                why = (
                    f"no supported subprotocol offered ({', '.join(offered)})"
                    if offered
                    else "no subprotocol offered and no ocpp.default_subprotocol configured"
                )
                self.stats.rejected_connections[why] = (
                    self.stats.rejected_connections.get(why, 0) + 1
                )
                log.warning("connection_rejected", charge_point_id=cp_id, why=why)
                await ws.close(1002, why[:120])
                return
            subprotocol = default
        with structlog.contextvars.bound_contextvars(charge_point_id=cp_id):
            session = ChargePointSession(
                self, cp_id, ws, str(subprotocol), request.headers.get("Authorization")
            )
            old = self.sessions.get(cp_id)
            if old is not None:
                log.info("replacing_stale_connection", charge_point_id=cp_id)
                await old.ws.close(1000, "replaced by a new connection")
            self.sessions[cp_id] = session
            remote = ws.remote_address
            self.emit(
                ConnectionUp(
                    cp_id, now_utc(), session.version, f"{remote[0]}:{remote[1]}" if remote else ""
                )
            )
            log.info("charge_point_connected", charge_point_id=cp_id, ocpp=session.version)
            try:
                await session.run()
            finally:
                if self.sessions.get(cp_id) is session:
                    del self.sessions[cp_id]
                self.emit(ConnectionDown(cp_id, now_utc(), f"close code {ws.close_code}"))
                log.info("charge_point_disconnected", charge_point_id=cp_id, code=ws.close_code)

    # ------------------------------------------------------------ TLS

    def _server_ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.ocpp.tls
        if tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
        if tls.cafile is not None:  # security profile 3: client certificates
            ctx.load_verify_locations(tls.cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _upstream_ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.ocpp.upstream.startswith("wss://"):
            return None
        tls = self.config.ocpp.upstream_tls
        ctx = ssl.create_default_context(cafile=str(tls.cafile) if tls and tls.cafile else None)
        if tls is not None:
            if tls.certfile is not None:
                ctx.load_cert_chain(tls.certfile, tls.keyfile)
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _basic_auth_ok(headers: Headers, cp_id: str, passwords: dict[str, str]) -> bool:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return False
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    expected = passwords.get(cp_id)
    return user == cp_id and expected is not None and _consteq(password, expected)


def _consteq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
