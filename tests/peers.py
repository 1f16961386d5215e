"""Real OCPP peers for the tests, built on the `ocpp` library (mobilityhouse).

* :class:`TestCsms` – a central system (1.6 and 2.0.1) on a free loopback port
  that records every raw frame it receives and can send CALLs to a charge point.
* :func:`connect_cp` – a charge point (1.6 or 2.0.1) connected to a URL, with
  its raw frames recorded too, and handlers for the calls the agent injects.

Both record the exact text of every frame they receive, so the tests can
check byte identity across the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import RegistrationStatus
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.servers import free_port


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class RecordingConnection:
    """Wraps a websockets connection and records every text frame received and sent."""

    def __init__(
        self,
        ws: ServerConnection | ClientConnection,
        received: list[str] | None = None,
        on_frame: asyncio.Event | None = None,
    ) -> None:
        self.ws = ws
        self.on_frame = on_frame
        self.received: list[str] = [] if received is None else received
        self.sent: list[str] = []
        self.timeline: list[tuple[str, str]] = []  # ("recv" | "sent", frame) in order
        self.new_frame = asyncio.Event()

    async def recv(self) -> str:
        msg = await self.ws.recv()
        assert isinstance(msg, str)
        self.received.append(msg)
        self.timeline.append(("recv", msg))
        self.new_frame.set()
        if self.on_frame is not None:
            self.on_frame.set()
        return msg

    async def send(self, msg: str) -> None:
        self.sent.append(msg)
        self.timeline.append(("sent", msg))
        await self.ws.send(msg)


class RejectingMixin:
    """Answers the actions in ``reject_actions`` with a CALLERROR (InternalError)."""

    reject_actions: set[str] = set()  # noqa: RUF012 - replaced per instance

    async def _handle_call(self, msg: Any) -> Any:
        if msg.action in self.reject_actions:
            raise InternalError(description=f"{msg.action} rejected by the test CSMS")
        return await super()._handle_call(msg)  # type: ignore[misc]


class CsmsCp16(RejectingMixin, Cp16):
    """The CSMS's view of one 1.6 charge point."""

    next_tx = 1000

    @on(Action16.boot_notification)
    def on_boot(self, **kw: Any) -> result16.BootNotification:
        return result16.BootNotification(
            current_time=iso_now(), interval=300, status=RegistrationStatus.accepted
        )

    @on(Action16.heartbeat)
    def on_heartbeat(self) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=iso_now())

    @on(Action16.status_notification)
    def on_status(self, **kw: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @on(Action16.authorize)
    def on_authorize(self, id_tag: str) -> result16.Authorize:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action16.start_transaction)
    def on_start(self, **kw: Any) -> result16.StartTransaction:
        CsmsCp16.next_tx += 1
        return result16.StartTransaction(
            transaction_id=CsmsCp16.next_tx, id_tag_info={"status": "Accepted"}
        )

    @on(Action16.stop_transaction)
    def on_stop(self, **kw: Any) -> result16.StopTransaction:
        return result16.StopTransaction()

    @on(Action16.meter_values)
    def on_meter(self, **kw: Any) -> result16.MeterValues:
        return result16.MeterValues()


class CsmsCp201(RejectingMixin, Cp201):
    @on(Action201.boot_notification)
    def on_boot(self, **kw: Any) -> result201.BootNotification:
        return result201.BootNotification(current_time=iso_now(), interval=300, status="Accepted")

    @on(Action201.heartbeat)
    def on_heartbeat(self) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=iso_now())

    @on(Action201.status_notification)
    def on_status(self, **kw: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @on(Action201.notify_event)
    def on_notify_event(self, **kw: Any) -> result201.NotifyEvent:
        return result201.NotifyEvent()

    @on(Action201.transaction_event)
    def on_tx_event(self, **kw: Any) -> result201.TransactionEvent:
        return result201.TransactionEvent()


@dataclass
class TestCsms:
    """A CSMS on 127.0.0.1:port; ``url`` is the upstream template for the agent."""

    __test__ = False

    port: int = field(default_factory=free_port)
    server: Server | None = None
    cps: dict[str, Cp16 | Cp201] = field(default_factory=dict)
    conns: dict[str, RecordingConnection] = field(default_factory=dict)
    connected: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    connects: int = 0
    reject_actions: set[str] = field(default_factory=set)
    history: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    frame_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/csms/{{charge_point_id}}"

    async def start(self) -> TestCsms:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
            compression=None,
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for t in list(self._tasks):
            t.cancel()

    async def __aenter__(self) -> TestCsms:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = ws.request.path.rsplit("/", 1)[-1]
        self.headers[cp_id] = dict(ws.request.headers.raw_items())
        self.connects += 1
        conn = RecordingConnection(ws, self.history[cp_id], self.frame_arrived)
        cp: Cp16 | Cp201 = (
            CsmsCp16(cp_id, conn) if ws.subprotocol == "ocpp1.6" else CsmsCp201(cp_id, conn)
        )
        cp.reject_actions = self.reject_actions  # type: ignore[union-attr]
        self.cps[cp_id] = cp
        self.conns[cp_id] = conn
        self.connected[cp_id].set()
        with contextlib.suppress(Exception):
            await cp.start()
        self.connected[cp_id] = asyncio.Event()

    def received(self, cp_id: str) -> list[str]:
        """Every frame received from ``cp_id``, across reconnections, in order."""
        return self.history.get(cp_id, [])

    async def wait_frames(self, cp_id: str, n: int, timeout: float = 10) -> list[str]:
        """Wait until ``n`` frames from ``cp_id`` have arrived (across reconnections)."""
        async with asyncio.timeout(timeout):
            while len(self.received(cp_id)) < n:
                self.frame_arrived.clear()
                if len(self.received(cp_id)) >= n:
                    break
                await self.frame_arrived.wait()
        return self.received(cp_id)

    async def wait_calls(self, cp_id: str, n: int, timeout: float = 10) -> list[list[Any]]:
        """Wait until ``n`` CALLs from ``cp_id`` have arrived; return them parsed."""

        def calls() -> list[list[Any]]:
            return [m for m in map(json.loads, self.received(cp_id)) if m[0] == 2]

        async with asyncio.timeout(timeout):
            while len(calls()) < n:
                self.frame_arrived.clear()
                if len(calls()) >= n:
                    break
                await self.frame_arrived.wait()
        return calls()


# ---------------------------------------------------------------- charge points


class Cp16Peer(Cp16):
    """A 1.6 charge point that answers the calls an agent or a CSMS sends."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls_received: list[tuple[str, dict[str, Any]]] = []
        self.reset_event = asyncio.Event()
        self.reply_delay = 0.0

    @on(Action16.reset)
    async def on_reset(self, type: str) -> result16.Reset:
        self.calls_received.append(("Reset", {"type": type}))
        self.reset_event.set()
        await asyncio.sleep(self.reply_delay)
        return result16.Reset(status="Accepted")

    @on(Action16.trigger_message)
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        self.calls_received.append(("TriggerMessage", {"requestedMessage": requested_message}))
        return result16.TriggerMessage(status="Accepted")

    @on(Action16.change_availability)
    def on_change_availability(self, connector_id: int, type: str) -> Any:
        self.calls_received.append(
            ("ChangeAvailability", {"connectorId": connector_id, "type": type})
        )
        return result16.ChangeAvailability(status="Accepted")

    @on(Action16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        self.calls_received.append(("GetConfiguration", {}))
        return result16.GetConfiguration(configuration_key=[])

    @on(Action16.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **kw: Any) -> Any:
        self.calls_received.append(("RemoteStartTransaction", {"idTag": id_tag}))
        return result16.RemoteStartTransaction(status="Accepted")


class Cp201Peer(Cp201):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls_received: list[tuple[str, dict[str, Any]]] = []

    @on(Action201.reset)
    def on_reset(self, type: str, **kw: Any) -> Any:
        self.calls_received.append(("Reset", {"type": type}))
        return result201.Reset(status="Accepted")

    @on(Action201.trigger_message)
    def on_trigger(self, requested_message: str, **kw: Any) -> Any:
        self.calls_received.append(("TriggerMessage", {"requestedMessage": requested_message}))
        return result201.TriggerMessage(status="Accepted")


@dataclass
class ConnectedCp:
    cp: Cp16Peer | Cp201Peer
    conn: RecordingConnection
    ws: ClientConnection
    task: asyncio.Task[None]

    async def call(self, payload: Any) -> Any:
        return await self.cp.call(payload, suppress=False)


@contextlib.asynccontextmanager
async def connect_cp(
    url: str, cp_id: str, version: str = "1.6", **kwargs: Any
) -> AsyncIterator[ConnectedCp]:
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with connect(f"{url}/{cp_id}", subprotocols=[sub], compression=None, **kwargs) as ws:  # type: ignore[list-item]
        conn = RecordingConnection(ws)
        cp: Cp16Peer | Cp201Peer = (
            Cp16Peer(cp_id, conn, response_timeout=10)
            if version == "1.6"
            else Cp201Peer(cp_id, conn, response_timeout=10)
        )
        task = asyncio.create_task(cp.start())
        try:
            yield ConnectedCp(cp, conn, ws, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def boot16() -> call16.BootNotification:
    return call16.BootNotification(charge_point_model="AC22", charge_point_vendor="TestVendor")


def boot201() -> call201.BootNotification:
    return call201.BootNotification(
        charging_station={"model": "DC50", "vendor_name": "TestVendor"}, reason="PowerUp"
    )


async def _serve_forever(port: int) -> None:
    async with TestCsms(port=port):
        await asyncio.Event().wait()


if __name__ == "__main__":  # python -m tests.peers PORT: a CSMS in its own process
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1])))
