"""A small CSMS for tests and the demo, built on the ``ocpp`` library.

It accepts OCPP 1.6J and 2.0.1 charge points at ``ws://HOST:PORT/<anything>/{charge_point_id}``
(the last path segment is the id), answers what charge points send
(Boot, Heartbeat, StatusNotification, Authorize, Start/StopTransaction,
MeterValues, TransactionEvent, NotifyEvent, firmware/diagnostics/log status),
assigns transaction ids, and records every CALL it received::

    async with Csms("127.0.0.1", port) as csms:
        ...                                   # point charge points at csms.url
        boot = await csms.wait_for("cp-01", "BootNotification")
        csms.received("cp-01")                # list[Received], oldest first
        await csms.call("cp-01", v16.call.Reset(type="Soft"))   # as a CSMS would

``stop()`` closes the listener and every connection; ``start()`` opens it
again on the same port (an upstream outage in tests). Ids listed in
``reject_id_tags`` are answered ``Invalid`` by Authorize.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargesight.sim._ocpp import on

SUBPROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Received:
    """One CALL the CSMS received."""

    at: datetime
    charge_point_id: str
    action: str
    payload: dict[str, Any]
    unique_id: str


class _Recorder:
    csms: Csms
    id: str

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            msg = orjson.loads(raw_msg)
        except orjson.JSONDecodeError:
            msg = None
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
            self.csms._record(Received(datetime.now(UTC), self.id, msg[2], msg[3], str(msg[1])))
        await super().route_message(raw_msg)  # type: ignore[misc]


class _Csms16(_Recorder, Cp16):  # type: ignore[misc]
    @on("BootNotification")
    def _boot(self, **_: Any) -> Any:
        return r16.BootNotification(_now(), self.csms.heartbeat_interval, "Accepted")

    @on("Heartbeat")
    def _hb(self) -> Any:
        return r16.Heartbeat(_now())

    @on("StatusNotification")
    def _status(self, **_: Any) -> Any:
        return r16.StatusNotification()

    @on("Authorize")
    def _auth(self, id_tag: str) -> Any:
        return r16.Authorize({"status": self.csms._tag_status(id_tag)})

    @on("StartTransaction")
    def _start(self, id_tag: str, **_: Any) -> Any:
        return r16.StartTransaction(
            next(self.csms._tx_ids), {"status": self.csms._tag_status(id_tag)}
        )

    @on("StopTransaction")
    def _stop(self, **_: Any) -> Any:
        return r16.StopTransaction()

    @on("MeterValues")
    def _meter(self, **_: Any) -> Any:
        return r16.MeterValues()

    @on("FirmwareStatusNotification")
    def _fw(self, **_: Any) -> Any:
        return r16.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def _diag(self, **_: Any) -> Any:
        return r16.DiagnosticsStatusNotification()

    @on("DataTransfer")
    def _dt(self, **_: Any) -> Any:
        return r16.DataTransfer("Accepted")


class _Csms201(_Recorder, Cp201):  # type: ignore[misc]
    @on("BootNotification")
    def _boot(self, **_: Any) -> Any:
        return r201.BootNotification(_now(), self.csms.heartbeat_interval, "Accepted")

    @on("Heartbeat")
    def _hb(self, **_: Any) -> Any:
        return r201.Heartbeat(_now())

    @on("StatusNotification")
    def _status(self, **_: Any) -> Any:
        return r201.StatusNotification()

    @on("Authorize")
    def _auth(self, id_token: dict[str, Any], **_: Any) -> Any:
        return r201.Authorize({"status": self.csms._tag_status(id_token["id_token"])})

    @on("TransactionEvent")
    def _tx(self, **kw: Any) -> Any:
        tok = kw.get("id_token")
        if tok:
            return r201.TransactionEvent(
                id_token_info={"status": self.csms._tag_status(tok["id_token"])}
            )
        return r201.TransactionEvent()

    @on("MeterValues")
    def _meter(self, **_: Any) -> Any:
        return r201.MeterValues()

    @on("NotifyEvent")
    def _event(self, **_: Any) -> Any:
        return r201.NotifyEvent()

    @on("FirmwareStatusNotification")
    def _fw(self, **_: Any) -> Any:
        return r201.FirmwareStatusNotification()

    @on("LogStatusNotification")
    def _log(self, **_: Any) -> Any:
        return r201.LogStatusNotification()

    @on("SecurityEventNotification")
    def _sec(self, **_: Any) -> Any:
        return r201.SecurityEventNotification()

    @on("NotifyReport")
    def _report(self, **_: Any) -> Any:
        return r201.NotifyReport()


class Csms:
    """A recording CSMS on ``host:port`` (port 0 picks a free one at the first start)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        heartbeat_interval: int = 300,
        reject_id_tags: frozenset[str] = frozenset(),
        record: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.reject_id_tags = set(reject_id_tags)
        self.record = record
        self._server: Server | None = None
        self._log: dict[str, list[Received]] = {}
        self._peers: dict[str, Cp16 | Cp201] = {}
        self._changed = asyncio.Event()
        self._tx_ids = itertools.count(1)
        self.messages = 0

    @property
    def url(self) -> str:
        """Base URL; charge points connect to ``{url}/{charge_point_id}``."""
        return f"ws://{self.host}:{self.port}/ocpp"

    async def __aenter__(self) -> Csms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("CSMS already started")
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
            compression=None,
            ping_interval=None,
        )
        if self.port == 0:
            self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, close every charge point's connection, wait for the handlers."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self._peers.clear()

    # ------------------------------------------------------------ observing

    def received(self, charge_point_id: str, action: str | None = None) -> list[Received]:
        return [
            m for m in self._log.get(charge_point_id, []) if action is None or m.action == action
        ]

    def connected(self) -> set[str]:
        return set(self._peers)

    async def wait_for(
        self,
        charge_point_id: str,
        action: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        after: int = 0,
        timeout: float = 10.0,
    ) -> Received:
        """The first CALL ``action`` from the charge point, at index >= ``after`` of its log,
        whose payload satisfies ``predicate``. Raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while True:
                log = self._log.get(charge_point_id, [])
                for m in log[after:]:
                    if m.action == action and (predicate is None or predicate(m.payload)):
                        return m
                await self._wait_change()

    async def wait_connected(self, charge_point_id: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while charge_point_id not in self._peers:
                await self._wait_change()

    async def call(self, charge_point_id: str, payload: Any, timeout: float = 10.0) -> Any:
        """Send a CALL to a connected charge point and return its result; CALLERRORs raise."""
        peer = self._peers[charge_point_id]
        peer._response_timeout = timeout
        return await peer.call(payload, suppress=False)

    # ------------------------------------------------------------ internals

    async def _wait_change(self) -> None:
        ev = self._changed
        await ev.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, m: Received) -> None:
        self.messages += 1
        if self.record:
            self._log.setdefault(m.charge_point_id, []).append(m)
            self._notify()

    def _tag_status(self, tag: str) -> str:
        return "Invalid" if tag in self.reject_id_tags else "Accepted"

    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        cp_id = path.rstrip("/").rsplit("/", 1)[-1]
        cls: type[Any] = _Csms201 if ws.subprotocol == "ocpp2.0.1" else _Csms16
        peer = cls(cp_id, ws)
        peer.csms = self
        self._peers[cp_id] = peer
        self._notify()
        try:
            await peer.start()
        except ConnectionClosed:
            pass
        finally:
            if self._peers.get(cp_id) is peer:
                del self._peers[cp_id]
                self._notify()
