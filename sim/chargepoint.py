"""A simulated charge point that speaks OCPP 1.6J or 2.0.1 over a real WebSocket.

:class:`SimChargePoint` owns one charge point's state (connectors, sessions,
active faults, firmware) and its connection: it connects to
``{csms_url}/{id}``, sends BootNotification (after a power-up or reboot, not
after a mere network drop), StatusNotification for every connector (and
connector 0 on 1.6), heartbeats, and reconnects with exponential backoff
(``backoff_s`` initial, doubled up to ``max_backoff_s``, seeded jitter) when
the connection drops.

What it answers (as the ``ocpp`` library's handlers, each returning at once;
follow-up messages are sent from tasks this object owns, never awaited inside
a handler):

* Reset — 1.6 ``Soft``/``Hard``; 2.0.1 ``OnIdle`` (treated as soft; ``Scheduled``
  while a transaction runs) and ``Immediate`` (treated as hard). Running
  sessions are stopped, the socket closes, the unit reboots (``soft_boot_s`` /
  ``hard_boot_s`` simulated seconds), clears the faults its reset kind clears,
  reconnects, boots and reports every connector.
* ChangeAvailability — Inoperative → ``Unavailable``; Operative → the real
  status again (still ``Faulted`` if a fault persists). ``Scheduled`` during a
  transaction.
* UnlockConnector — ``Unlocked``, or ``UnlockFailed`` with a ConnectorLockFailure.
* TriggerMessage — Boot, Heartbeat, StatusNotification (re-sent even if
  unchanged), MeterValues, Firmware/Diagnostics/Log status.
* GetConfiguration / ChangeConfiguration (1.6), GetVariables / SetVariables
  (2.0.1; HeartbeatInterval is the setting it changes), GetDiagnostics / GetLog (with
  Uploading → Uploaded), UpdateFirmware (Downloading → Downloaded → Installing
  → reboot with the new version → Installed; fixes a firmware bug).

Faults follow :mod:`chargesight.sim.faults`: :meth:`SimChargePoint.inject`
activates one; recovery actions clear it only if its ``cleared_by`` allows.

Observing state (for tests)::

    await cp.wait_status(2, "Faulted", timeout=5)
    await cp.wait_for(lambda cp: cp.boots >= 2)
    cp.status(1)            # -> ConnectorView(status, error_code, vendor_error_code, ...)

Sessions: :meth:`SimChargePoint.start_session` runs one (Preparing →
Authorize → Start/TransactionEvent Started → MeterValues → Stop → Finishing →
Available) and returns a :class:`SessionOutcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from chargesight.sim._ocpp import after, on
from chargesight.sim.clock import SimClock
from chargesight.sim.faults import (
    FAULT_TYPES,
    FaultType,
    PlannedFault,
    RecoveryAction,
    bump_version,
)
from chargesight.sim.scenario import ChargerSpec, FaultKind

log = logging.getLogger("chargesight.sim")

BUSY = ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing")
_NET_ERRORS = (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError)


@dataclass
class ActiveFault:
    """A fault currently present on the charge point."""

    planned: PlannedFault
    type: FaultType
    connector: int  # 0 = whole charge point
    code: str
    vendor_code: str | None
    cleared_by: frozenset[RecoveryAction]
    blocks: bool

    @property
    def kind(self) -> FaultKind:
        return self.type.kind


@dataclass(frozen=True, slots=True)
class ConnectorView:
    connector_id: int
    status: str  # OCPP 1.6 vocabulary
    error_code: str = "NoError"
    vendor_error_code: str | None = None
    vendor_id: str | None = None
    info: str | None = None


@dataclass
class SessionOutcome:
    """How one driver's attempt went."""

    charged: bool
    reason: str  # completed | ended_early | failed_start | rejected | unavailable | offline
    energy_wh: float = 0.0
    wanted_wh: float = 0.0
    transaction_id: str | None = None
    blame: PlannedFault | None = None


@dataclass
class _Session:
    connector: int
    id_tag: str
    wanted_wh: float
    ev_power_w: float
    energy_wh: float = 0.0
    tx_id: str | None = None
    seq: int = 0
    stop_reason: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    blame: PlannedFault | None = None

    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str, blame: PlannedFault | None = None) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.blame = blame
        self.wake.set()


class SimChargePoint:
    """One simulated charge point. Start with :meth:`run` (a task you own), stop with :meth:`stop`."""

    def __init__(
        self,
        spec: ChargerSpec,
        csms_url: str,
        clock: SimClock,
        *,
        rng: random.Random | None = None,
        meter_interval_s: float = 60.0,
        heartbeat_s: float | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        soft_boot_s: float = 8.0,
        hard_boot_s: float = 25.0,
        validate: bool = True,
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.url = csms_url.rstrip("/") + "/" + spec.id
        self.version = spec.ocpp
        self.clock = clock
        self.rng = rng or random.Random(spec.id)
        self.meter_interval_s = meter_interval_s
        self.heartbeat_override = heartbeat_s
        self.heartbeat_s: float = heartbeat_s or 300.0
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.soft_boot_s = soft_boot_s
        self.hard_boot_s = hard_boot_s
        self.validate = validate
        self.firmware = spec.firmware
        self.n = spec.connector_count
        self.faults: list[ActiveFault] = []
        self.operative: dict[int, bool] = dict.fromkeys(range(self.n + 1), True)
        self.pending_operative: dict[int, bool] = {}
        self.phase: dict[int, str] = {}  # Preparing | Charging | Finishing
        self.sessions: dict[int, _Session] = {}
        self.psu_severity = 0.0
        self.boots = 0
        self.ready = False  # connected and every connector reported since the last (re)connect
        self.offline_fault: PlannedFault | None = None  # the fault behind the current drop
        self.connects = 0
        self.attempts: list[float] = []  # monotonic time of each connection attempt
        self.waits: list[float] = []  # the backoff before each attempt after a failure
        self.messages_sent = 0
        self.last_reported: dict[int, ConnectorView] = {}
        self.firmware_status: str = "Idle"
        self.pending_reset: str | None = None
        self._ws: ClientConnection | None = None
        self._peer: Cp16 | Cp201 | None = None
        self._online = asyncio.Event()
        self._need_boot = True
        self._offline_until = 0.0  # simulated elapsed seconds
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()  # live as long as the charge point
        self._conn_tasks: set[asyncio.Task[Any]] = set()  # live as long as one connection
        self._changed = asyncio.Event()
        self._report_lock = asyncio.Lock()
        self._boot_reason = "PowerUp"
        self._event_seq = 0

    # ------------------------------------------------------------ observing

    @property
    def connected(self) -> bool:
        return self._online.is_set()

    def dropped_by(self) -> PlannedFault | None:
        """The connectivity fault keeping this charge point offline right now, if any."""
        if self.connected or self.clock.elapsed() >= self._offline_until:
            return None
        return self.offline_fault

    def status(self, connector: int) -> ConnectorView:
        """The status this charge point reports for ``connector`` (1.6 vocabulary)."""
        f = self._blocking_fault(connector)
        if f is not None and not (connector == 0 and f.connector != 0):
            return ConnectorView(
                connector, "Faulted", f.code, f.vendor_code, f.type.vendor_id, f.type.info
            )
        ph = self.phase.get(connector)
        if ph:
            return ConnectorView(connector, ph)
        if not self.operative[connector] or (connector and not self.operative[0]):
            return ConnectorView(connector, "Unavailable")
        return ConnectorView(connector, "Available")

    def fault_on(self, connector: int, kinds: tuple[str, ...] | None = None) -> ActiveFault | None:
        for f in self.faults:
            if (kinds is None or f.kind in kinds) and (
                f.connector in (0, connector) or connector == 0
            ):
                return f
        return None

    def _blocking_fault(self, connector: int) -> ActiveFault | None:
        for f in self.faults:
            if f.blocks and (f.connector == 0 or f.connector == connector):
                return f
        return None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[SimChargePoint], bool], timeout: float = 10.0
    ) -> None:
        """Wait (real seconds) until ``predicate(self)`` holds; raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await self._changed.wait()

    async def wait_status(self, connector: int, status: str, timeout: float = 10.0) -> None:
        """Wait until ``status`` has been *reported* to the CSMS for ``connector``."""

        def reported(cp: SimChargePoint) -> bool:
            v = cp.last_reported.get(connector)
            return v is not None and v.status == status and cp.connected

        await self.wait_for(reported, timeout)

    # ------------------------------------------------------------ lifecycle

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, connection: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this charge point owns (cancelled on stop, or on disconnect)."""
        task = asyncio.get_running_loop().create_task(coro)
        owner = self._conn_tasks if connection else self._tasks
        owner.add(task)
        task.add_done_callback(owner.discard)
        task.add_done_callback(_log_failure)
        return task

    def stopping(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        for t in list(self._tasks) + list(self._conn_tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._conn_tasks, return_exceptions=True)

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff until :meth:`stop`. Cancel-safe."""
        backoff = self.backoff_s
        while not self._stopping:
            wait = self._offline_until - self.clock.elapsed()
            if wait > 0:
                await self.clock.sleep(wait)
                continue
            self.attempts.append(time.monotonic())
            try:
                async with connect(
                    self.url,
                    subprotocols=[f"ocpp{self.version}"],  # type: ignore[list-item]
                    compression=None,
                    open_timeout=10,
                    ping_interval=None,
                    close_timeout=2,
                ) as ws:
                    backoff = self.backoff_s
                    await self._serve(ws)
            except _NET_ERRORS as exc:
                log.debug("%s: connection failed: %r", self.id, exc)
            finally:
                self._ws = None
                self._peer = None
                self._online.clear()
                self._notify()
            if self.stopping():
                break
            if self._offline_until <= self.clock.elapsed():
                wait = backoff * self.rng.uniform(0.8, 1.2)
                self.waits.append(wait)
                await asyncio.sleep(wait)
                backoff = min(self.max_backoff_s, backoff * 2)

    async def _serve(self, ws: ClientConnection) -> None:
        peer: Cp16 | Cp201 = (_Cp16 if self.version == "1.6" else _Cp201)(self.id, ws, self)
        self._ws, self._peer = ws, peer
        self.connects += 1
        recv = self.spawn(peer.start(), connection=True)
        recv.add_done_callback(lambda _: self._end_connection_tasks())
        try:
            if self._need_boot and not await self._boot():
                return
            self._online.set()
            self.last_reported.clear()
            self._notify()
            await self.report_all(force=True)
            self.ready = self._online.is_set()
            self._notify()
            self.spawn(self._heartbeats(), connection=True)
            with contextlib.suppress(ConnectionClosed):
                await recv
        finally:
            self._online.clear()
            for t in list(self._conn_tasks):
                t.cancel()
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)

    def _end_connection_tasks(self) -> None:
        self._online.clear()
        self.ready = False
        for t in list(self._conn_tasks):
            t.cancel()

    async def _boot(self) -> bool:
        while not self._stopping:
            res = await self._call(self._boot_payload(), online_only=False)
            if res is None:
                return False
            interval = float(res.interval or 0)
            if self.heartbeat_override is None and interval > 0:
                self.heartbeat_s = interval
            if res.status == "Accepted":
                self.boots += 1
                self._need_boot = False
                self._boot_reason = "PowerUp"
                if self.firmware_status == "Installing":
                    self.firmware_status = "Installed"
                    self.spawn(self._send_firmware_status("Installed"))
                return True
            await self.clock.sleep(interval or 30)
        return False

    async def _heartbeats(self) -> None:
        while True:
            await self.clock.sleep(self.heartbeat_s)
            await self._call(c16.Heartbeat() if self.version == "1.6" else c201.Heartbeat())

    async def drop_connection(self, offline_s: float, fault: PlannedFault | None = None) -> None:
        """The network goes away for ``offline_s`` simulated seconds (no reboot, no Boot)."""
        self._offline_until = self.clock.elapsed() + offline_s
        self.offline_fault = fault
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    # ------------------------------------------------------------ sending

    async def _call(self, payload: Any, *, online_only: bool = True) -> Any:
        """Send a CALL; ``None`` when offline, on timeout, or on a CALLERROR."""
        peer = self._peer
        if peer is None or (online_only and not self._online.is_set()):
            return None
        self.messages_sent += 1
        # The library waits for a reply even after the socket is gone: run the call as a
        # connection task, which the end of the connection cancels (see _serve).
        task = self.spawn(
            peer.call(payload, suppress=False, skip_schema_validation=not self.validate),
            connection=True,
        )
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
            return None
        except (*_NET_ERRORS, OCPPError) as exc:
            log.debug("%s: %s failed: %r", self.id, type(payload).__name__, exc)
            return None

    async def _call_tx(self, payload: Callable[[], Any]) -> Any:
        """Transaction messages are not lost: wait for the connection and retry."""
        while not self._stopping:
            await self._online.wait()
            res = await self._call(payload())
            if res is not None:
                return res
            await asyncio.sleep(0.05)
        return None

    def _boot_payload(self) -> Any:
        if self.version == "1.6":
            return c16.BootNotification(
                charge_point_model=self.spec.hw.model,
                charge_point_vendor=self.spec.hw.vendor,
                charge_point_serial_number=self.spec.serial,
                firmware_version=self.firmware,
            )
        return c201.BootNotification(
            charging_station={
                "model": self.spec.hw.model,
                "vendor_name": self.spec.hw.vendor,
                "serial_number": self.spec.serial,
                "firmware_version": self.firmware,
            },
            reason=self._boot_reason,
        )

    async def report(self, connector: int, *, force: bool = False) -> None:
        """Send a StatusNotification if the status changed since the last one sent (or ``force``)."""
        async with self._report_lock:  # compare-and-send must not interleave
            await self._report(connector, force)

    async def _report(self, connector: int, force: bool) -> None:
        v = self.status(connector)
        if not force and self.last_reported.get(connector) == v:
            return
        if not self._online.is_set():
            return
        if self.version == "1.6":
            res = await self._call(
                c16.StatusNotification(
                    connector_id=connector,
                    error_code=v.error_code,
                    status=v.status,
                    timestamp=self.clock.iso(),
                    info=v.info if v.status == "Faulted" else None,
                    vendor_id=v.vendor_id if v.status == "Faulted" else None,
                    vendor_error_code=v.vendor_error_code,
                )
            )
        elif connector == 0:
            return
        else:
            res = await self._call(
                c201.StatusNotification(
                    timestamp=self.clock.iso(),
                    connector_status=_STATUS_201.get(v.status, "Occupied"),
                    evse_id=connector,
                    connector_id=1,
                )
            )
        if res is not None:
            self.last_reported[connector] = v
            self._notify()

    async def report_all(self, *, force: bool = False) -> None:
        start = 0 if self.version == "1.6" else 1
        for k in range(start, self.n + 1):
            await self.report(k, force=force)
        if self.version == "2.0.1" and force:
            for f in self.faults:
                if f.blocks:
                    await self._notify_problem(f, active=True)

    async def _notify_problem(self, f: ActiveFault, *, active: bool) -> None:
        if self.version != "2.0.1":
            return
        self._event_seq += 1
        component: dict[str, Any] = {"name": "ChargingStation"}
        if f.connector:
            component = {"name": "Connector", "evse": {"id": f.connector, "connector_id": 1}}
        await self._call(
            c201.NotifyEvent(
                generated_at=self.clock.iso(),
                seq_no=self._event_seq,
                event_data=[
                    {
                        "event_id": self._event_seq,
                        "timestamp": self.clock.iso(),
                        "trigger": "Delta",
                        "actual_value": "true" if active else "false",
                        "event_notification_type": "HardWiredNotification",
                        "component": component,
                        "variable": {"name": "Problem"},
                        "tech_code": f.vendor_code,
                        "tech_info": f.code,
                        "cleared": None if active else True,
                    }
                ],
            )
        )

    # ------------------------------------------------------------ faults

    def inject(
        self,
        kind: FaultKind,
        connector: int | None = None,
        *,
        planned: PlannedFault | None = None,
        code: str | None = None,
        cleared_by: frozenset[RecoveryAction] | None = None,
    ) -> ActiveFault:
        """Activate a fault now. Returns it; the status change is sent from a task."""
        ft = FAULT_TYPES[kind]
        k = ft.default_connector if connector is None else connector
        if planned is None:
            planned = PlannedFault(
                f"live-{kind}-{self.id}-{int(self.clock.elapsed())}",
                kind,
                self.spec.site_id,
                [self.id],
                k,
                self.clock.elapsed(),
            )
        # (a PSU's early phase is psu_severity, not a fault; its trips and its hard
        # failure are faults that block like any other)
        blocks = ft.blocks
        f = ActiveFault(
            planned,
            ft,
            k,
            code or ft.code,
            ft.vendor_code if code is None else None,
            ft.cleared_by if cleared_by is None else cleared_by,
            blocks,
        )
        if planned.first_symptom_s is None:
            planned.first_symptom_s = self.clock.elapsed()
        self.faults.append(f)
        self._notify()
        if f.blocks:
            for c in range(1, self.n + 1):
                s = self.sessions.get(c)
                if s is not None and (k == 0 or k == c):
                    s.stop("Other", planned)
            self.spawn(self._announce(f))
        return f

    async def _announce(self, f: ActiveFault) -> None:
        await self.report_all()
        await self._notify_problem(f, active=True)

    def clear(self, pred: Callable[[ActiveFault], bool]) -> list[ActiveFault]:
        gone = [f for f in self.faults if pred(f)]
        if gone:
            self.faults = [f for f in self.faults if not pred(f)]
            self._notify()
        return gone

    def repair(self, fault_id: str) -> None:
        """A technician fixed it: the fault goes away and the status is reported."""
        gone = self.clear(lambda f: f.planned.fault_id == fault_id)
        if gone:
            self.spawn(self._cleared(gone))

    async def _cleared(self, gone: list[ActiveFault]) -> None:
        await self.report_all()
        for f in gone:
            if f.blocks:
                await self._notify_problem(f, active=False)

    # ------------------------------------------------------------ resets, firmware

    def schedule_reset(self, kind: Literal["soft", "hard"]) -> None:
        self.spawn(self._reboot(kind))

    async def _reboot(self, kind: Literal["soft", "hard"], *, firmware: str | None = None) -> None:
        reason = "SoftReset" if kind == "soft" else "HardReset"
        waits = []
        for s in self.sessions.values():
            s.stop(reason if self.version == "1.6" else "ImmediateReset")
            waits.append(s.done.wait())
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*waits)
        boot_s = self.soft_boot_s if kind == "soft" else self.hard_boot_s
        self._need_boot = True
        self._boot_reason = "RemoteReset" if firmware is None else "FirmwareUpdate"
        self._offline_until = self.clock.elapsed() + boot_s
        action: RecoveryAction = "soft_reset" if kind == "soft" else "hard_reset"
        if firmware is not None:
            self.firmware = firmware
            action = "firmware_update"
        self.clear(
            lambda f: action in f.cleared_by or (kind == "hard" and "soft_reset" in f.cleared_by)
        )
        self.phase.clear()
        await self._close_gracefully()

    async def _close_gracefully(self) -> None:
        """Close the socket once no CALL of ours is waiting for its reply.

        Closing mid-exchange would leave the CSMS blocked sending a reply into a
        closing socket while our last CALLRESULT sits unread behind it.
        """
        ws, peer = self._ws, self._peer
        if ws is None:
            return
        if peer is None:
            await ws.close()
            return
        try:
            async with asyncio.timeout(5):
                await peer._call_lock.acquire()
        except TimeoutError:
            await ws.close()
            return
        try:
            await ws.close()
        finally:
            peer._call_lock.release()

    async def _update_firmware(self, location: str, request_id: int | None) -> None:
        m = re.findall(r"(\d+\.\d+(?:\.\d+)*)", location)
        version = m[-1] if m else bump_version(self.firmware)
        for st in ("Downloading", "Downloaded", "Installing"):
            self.firmware_status = st
            await self._send_firmware_status(st, request_id)
            await self.clock.sleep(5)
        await self._reboot("hard", firmware=version)

    async def _send_firmware_status(self, status: str, request_id: int | None = None) -> None:
        if self.version == "1.6":
            await self._call(c16.FirmwareStatusNotification(status=status))
        else:
            await self._call(c201.FirmwareStatusNotification(status=status, request_id=request_id))

    async def _upload(self, request_id: int | None) -> None:
        for st in ("Uploading", "Uploaded"):
            await self.clock.sleep(2)
            if self.version == "1.6":
                await self._call(c16.DiagnosticsStatusNotification(status=st))
            else:
                await self._call(c201.LogStatusNotification(status=st, request_id=request_id))

    def change_availability(self, connector: int, operative: bool) -> str:
        if connector < 0 or connector > self.n:
            return "Rejected"
        busy = [c for c in self.sessions if connector in (0, c)]
        if busy and not operative:
            self.pending_operative[connector] = operative
            return "Scheduled"
        self.operative[connector] = operative
        self._notify()
        self.spawn(self.report_all())
        return "Accepted"

    # ------------------------------------------------------------ sessions

    async def start_session(
        self,
        connector: int,
        id_tag: str,
        wanted_wh: float,
        ev_power_w: float,
        *,
        fail_start: bool = False,
    ) -> SessionOutcome:
        """A driver plugs in at ``connector`` and wants ``wanted_wh``."""
        out = SessionOutcome(False, "unavailable", wanted_wh=wanted_wh)
        if self.status(connector).status != "Available" or connector in self.sessions:
            out.blame = f.planned if (f := self._blocking_fault(connector)) else None
            return out
        if not self._online.is_set():
            out.reason = "offline"
            return out
        s = _Session(connector, id_tag, wanted_wh, ev_power_w)
        self.sessions[connector] = s
        self.phase[connector] = "Preparing"
        try:
            await self.report(connector)
            if self.version == "1.6":
                res = await self._call(c16.Authorize(id_tag=id_tag))
                status = res.id_tag_info["status"] if res is not None else None
            else:
                res = await self._call(
                    c201.Authorize(id_token={"id_token": id_tag, "type": "ISO14443"})
                )
                status = res.id_token_info["status"] if res is not None else None
            if status is None:
                out.reason = "offline"
                return out
            if status != "Accepted":
                out.reason = "rejected"
                return out
            sf = self.fault_on(connector, ("start_failure",))
            if sf is not None or fail_start:
                await self.clock.sleep(30)  # the EV never starts drawing current
                out.reason = "failed_start"
                if sf is not None:
                    sf.planned.failed_starts += 1
                    out.blame = sf.planned
                return out
            await self._run_session(s, out)
            return out
        finally:
            self.sessions.pop(connector, None)
            if self.phase.get(connector) in ("Preparing", "Charging"):
                self.phase.pop(connector, None)
            s.done.set()
            self._notify()
            if connector in self.pending_operative:
                self.operative[connector] = self.pending_operative.pop(connector)
            if self._online.is_set():
                self.spawn(self.report(connector))
            if self.pending_reset and not self.sessions:
                kind = self.pending_reset
                self.pending_reset = None
                self.schedule_reset("soft" if kind == "soft" else "hard")

    def _power(self, s: _Session) -> float:
        hw = self.spec.hw
        p = min(hw.connector_power_w, s.ev_power_w)
        if self.psu_severity > 0:
            p = min(p, hw.connector_power_w * (1 - 0.35 * self.psu_severity))
        return p * self.rng.uniform(0.9, 0.98)

    async def _run_session(self, s: _Session, out: SessionOutcome) -> None:
        c = s.connector
        if s.stopped():  # a fault or a reset came while the driver was authorising
            out.reason, out.blame = "failed_start", s.blame
            return
        now = self.clock.iso()
        if self.version == "1.6":
            res = await self._call_tx(
                lambda: c16.StartTransaction(
                    connector_id=c, id_tag=s.id_tag, meter_start=0, timestamp=now
                )
            )
            if res is None:
                return
            s.tx_id = str(res.transaction_id)
        else:
            s.tx_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
            await self._call_tx(lambda: self._tx_event(s, "Started", "Authorized"))
        out.transaction_id = s.tx_id
        self.phase[c] = "Charging"
        self._notify()
        await self.report(c)
        early_p = 0.25 * self.psu_severity
        end_early_at = (
            s.wanted_wh * self.rng.uniform(0.1, 0.8) if self.rng.random() < early_p else None
        )
        while s.stop_reason is None:
            power = self._power(s)
            step = self.meter_interval_s
            remaining = s.wanted_wh - s.energy_wh
            if remaining <= power * step / 3600:
                step = remaining / power * 3600
            s.wake.clear()
            t0 = self.clock.elapsed()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.clock.real(step)):
                    await s.wake.wait()
            s.energy_wh += power * (self.clock.elapsed() - t0) / 3600
            if s.stopped():
                break
            if s.energy_wh >= s.wanted_wh - 1e-6:
                s.energy_wh = s.wanted_wh
                s.stop("EVDisconnected")
                break
            if end_early_at is not None and s.energy_wh >= end_early_at:
                s.stop("Other", None)
                break
            await self._meter(s, power)
        reason = s.stop_reason or "Local"
        energy = round(s.energy_wh)
        stop_ts = self.clock.iso()
        self.phase[c] = "Finishing"
        self._notify()
        if self.version == "1.6":
            tx = int(s.tx_id) if s.tx_id and s.tx_id.isdigit() else 0
            await self._call_tx(
                lambda: c16.StopTransaction(
                    meter_stop=energy,
                    timestamp=stop_ts,
                    transaction_id=tx,
                    reason=reason,
                    id_tag=s.id_tag,
                )
            )
        else:
            await self._call_tx(lambda: self._tx_event(s, "Ended", "EVDeparted", reason))
        out.energy_wh = s.energy_wh
        completed = s.energy_wh >= s.wanted_wh - 1
        out.charged = True
        out.reason = "completed" if completed else "ended_early"
        out.blame = s.blame if not completed else None
        if out.blame is None and not completed and reason == "Other":
            psu = next((f for f in self.faults if f.kind == "psu_degradation"), None)
            out.blame = psu.planned if psu else None
        if self._online.is_set() and not self._blocking_fault(c):
            await self.report(c)
            await self.clock.sleep(20)  # cable back on the hook
        self.phase.pop(c, None)

    def _tx_event(
        self, s: _Session, event: str, trigger: str, reason: str | None = None, meter: Any = None
    ) -> Any:
        s.seq += 1
        info: dict[str, Any] = {"transaction_id": s.tx_id}
        if event == "Ended":
            info["stopped_reason"] = _REASON_201.get(reason or "Local", "Other")
            info["charging_state"] = "Idle"
        elif event == "Started" or meter is not None:
            info["charging_state"] = "Charging"
        return c201.TransactionEvent(
            event_type=event,
            timestamp=self.clock.iso(),
            trigger_reason=trigger,
            seq_no=s.seq,
            transaction_info=info,
            evse={"id": s.connector, "connector_id": 1},
            id_token={"id_token": s.id_tag, "type": "ISO14443"} if event == "Started" else None,
            meter_value=meter,
        )

    def _samples(self, s: _Session, power: float) -> list[dict[str, Any]]:
        hw = self.spec.hw
        temp = 22 + 14 * power / hw.connector_power_w + 22 * self.psu_severity
        volts = 400.0 if hw.dc else 230.0
        amps = power / volts if hw.dc else power / (3 * volts)
        ctx = "Sample.Periodic"
        sv: list[dict[str, Any]] = [
            {
                "value": round(s.energy_wh, 1),
                "measurand": "Energy.Active.Import.Register",
                "unit": "Wh",
                "context": ctx,
            },
            {
                "value": round(power, 1),
                "measurand": "Power.Active.Import",
                "unit": "W",
                "context": ctx,
            },
            {"value": volts, "measurand": "Voltage", "unit": "V", "context": ctx},
            {"value": round(amps, 1), "measurand": "Current.Import", "unit": "A", "context": ctx},
            {
                "value": round(temp + self.rng.uniform(-1, 1), 1),
                "measurand": "Temperature",
                "unit": "Celsius",
                "context": ctx,
            },
        ]
        if hw.dc:
            soc = min(100.0, 20 + 80 * s.energy_wh / max(1.0, s.wanted_wh))
            sv.append(
                {"value": round(soc, 1), "measurand": "SoC", "unit": "Percent", "context": ctx}
            )
        if self.version == "1.6":
            for v in sv:
                v["value"] = str(v["value"])
        else:
            # 2.0.1 has no Temperature measurand: it goes out as a NotifyEvent (_temperature_event)
            sv = [v for v in sv if v["measurand"] != "Temperature"]
            for v in sv:
                v["unit_of_measure"] = {"unit": v.pop("unit")}
        return sv

    async def _temperature_event(self, s: _Session, power: float) -> None:
        """2.0.1: the power converter's temperature, as a periodic monitor event."""
        hw = self.spec.hw
        temp = 22 + 14 * power / hw.connector_power_w + 22 * self.psu_severity
        self._event_seq += 1
        await self._call(
            c201.NotifyEvent(
                generated_at=self.clock.iso(),
                seq_no=self._event_seq,
                event_data=[
                    {
                        "event_id": self._event_seq,
                        "timestamp": self.clock.iso(),
                        "trigger": "Periodic",
                        "actual_value": f"{temp + self.rng.uniform(-1, 1):.1f}",
                        "event_notification_type": "PreconfiguredMonitor",
                        "component": {"name": "PowerConverter", "evse": {"id": s.connector}},
                        "variable": {"name": "Temperature"},
                        "transaction_id": s.tx_id,
                    }
                ],
            )
        )

    async def _meter(self, s: _Session, power: float) -> None:
        mv = [{"timestamp": self.clock.iso(), "sampled_value": self._samples(s, power)}]
        if self.version == "1.6":
            tx = int(s.tx_id) if s.tx_id and s.tx_id.isdigit() else None
            await self._call(
                c16.MeterValues(connector_id=s.connector, meter_value=mv, transaction_id=tx)
            )
        else:
            await self._call(self._tx_event(s, "Updated", "MeterValuePeriodic", meter=mv))
            await self._temperature_event(s, power)

    async def send_meter_values(self, connector: int | None = None) -> None:
        for c, s in list(self.sessions.items()):
            if connector in (None, 0, c) and s.tx_id:
                await self._meter(s, self._power(s))

    async def trigger(self, what: str, connector: int | None) -> None:
        if what == "BootNotification":
            await self._call(self._boot_payload())
        elif what == "Heartbeat":
            await self._call(c16.Heartbeat() if self.version == "1.6" else c201.Heartbeat())
        elif what == "StatusNotification":
            if connector is None:
                await self.report_all(force=True)
            else:
                await self.report(connector, force=True)
        elif what == "MeterValues":
            await self.send_meter_values(connector)
        elif what == "FirmwareStatusNotification":
            await self._send_firmware_status(self.firmware_status)
        elif what in ("DiagnosticsStatusNotification", "LogStatusNotification"):
            if self.version == "1.6":
                await self._call(c16.DiagnosticsStatusNotification(status="Idle"))
            else:
                await self._call(c201.LogStatusNotification(status="Idle"))

    def configuration(self) -> dict[str, tuple[str, bool]]:
        return {
            "HeartbeatInterval": (str(int(self.heartbeat_s)), False),
            "MeterValueSampleInterval": (str(int(self.meter_interval_s)), False),
            "NumberOfConnectors": (str(self.n), True),
            "ConnectionTimeOut": ("60", False),
            "MeterValuesSampledData": (
                "Energy.Active.Import.Register,Power.Active.Import,Voltage,Current.Import,Temperature"
                + (",SoC" if self.spec.hw.dc else ""),
                False,
            ),
            "SupportedFeatureProfiles": (
                "Core,FirmwareManagement,RemoteTrigger,LocalAuthListManagement",
                True,
            ),
            "FirmwareVersion": (self.firmware, True),
        }


# the 2.0.1 components the station has variables of (GetVariables, SetVariables)
_COMPONENTS_201 = frozenset(
    {"OCPPCommCtrlr", "SampledDataCtrlr", "ChargingStation", "FirmwareCtrlr", "EVSE"}
)
_STATUS_201 = {
    "Available": "Available",
    "Unavailable": "Unavailable",
    "Faulted": "Faulted",
    "Reserved": "Reserved",
}
_REASON_201 = {
    "Local": "Local",
    "Other": "Other",
    "EVDisconnected": "EVDisconnected",
    "ImmediateReset": "ImmediateReset",
    "SoftReset": "Reboot",
    "HardReset": "ImmediateReset",
    "UnlockCommand": "Other",
    "Remote": "Remote",
}


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, (*_NET_ERRORS, OCPPError)):
            log.error("simulated charge point task failed", exc_info=exc)


# ---------------------------------------------------------------- protocol handlers


class _Cp16(Cp16):  # type: ignore[misc]
    def __init__(self, cp_id: str, ws: ClientConnection, sim: SimChargePoint) -> None:
        super().__init__(cp_id, ws, response_timeout=30)
        self.sim = sim

    @on("Reset")
    def on_reset(self, type: str) -> Any:
        return r16.Reset("Accepted")

    @after("Reset")
    def after_reset(self, type: str) -> None:
        self.sim.schedule_reset("soft" if type == "Soft" else "hard")

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str) -> Any:
        return r16.ChangeAvailability(
            self.sim.change_availability(connector_id, type == "Operative")
        )

    @on("UnlockConnector")
    def on_unlock(self, connector_id: int) -> Any:
        sim = self.sim
        if connector_id < 1 or connector_id > sim.n:
            return r16.UnlockConnector("NotSupported")
        if sim.fault_on(connector_id, ("connector_lock",)):
            return r16.UnlockConnector("UnlockFailed")
        s = sim.sessions.get(connector_id)
        if s is not None:
            s.stop("UnlockCommand")
        return r16.UnlockConnector("Unlocked")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        if connector_id is not None and (connector_id < 0 or connector_id > self.sim.n):
            return r16.TriggerMessage("Rejected")
        return r16.TriggerMessage("Accepted")

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, connector_id: int | None = None) -> None:
        self.sim.spawn(self.sim.trigger(requested_message, connector_id), connection=True)

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        conf = self.sim.configuration()
        keys = key or list(conf)
        known = [{"key": k, "readonly": conf[k][1], "value": conf[k][0]} for k in keys if k in conf]
        unknown = [k for k in keys if k not in conf]
        return r16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str) -> Any:
        if key == "HeartbeatInterval" and value.isdigit() and int(value) > 0:
            self.sim.heartbeat_s = float(value)
            return r16.ChangeConfiguration("Accepted")
        return r16.ChangeConfiguration("NotSupported")

    @on("GetDiagnostics")
    def on_get_diagnostics(self, location: str, **_: Any) -> Any:
        return r16.GetDiagnostics(
            file_name=f"diag-{self.sim.id}-{int(self.sim.clock.elapsed())}.zip"
        )

    @after("GetDiagnostics")
    def after_get_diagnostics(self, location: str, **_: Any) -> None:
        self.sim.spawn(self.sim._upload(None), connection=True)

    @on("UpdateFirmware")
    def on_update_firmware(self, location: str, retrieve_date: str, **_: Any) -> Any:
        return r16.UpdateFirmware()

    @after("UpdateFirmware")
    def after_update_firmware(self, location: str, retrieve_date: str, **_: Any) -> None:
        self.sim.spawn(self.sim._update_firmware(location, None))

    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        return r16.RemoteStartTransaction("Rejected")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int) -> Any:
        for s in self.sim.sessions.values():
            if s.tx_id == str(transaction_id):
                s.stop("Remote")
                return r16.RemoteStopTransaction("Accepted")
        return r16.RemoteStopTransaction("Rejected")


class _Cp201(Cp201):  # type: ignore[misc]
    def __init__(self, cp_id: str, ws: ClientConnection, sim: SimChargePoint) -> None:
        super().__init__(cp_id, ws, response_timeout=30)
        self.sim = sim

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        sim = self.sim
        if evse_id is not None:
            if evse_id < 1 or evse_id > sim.n:
                return r201.Reset("Rejected")
            return r201.Reset("Accepted")
        if type == "OnIdle" and sim.sessions:
            sim.pending_reset = "soft"
            return r201.Reset("Scheduled")
        return r201.Reset("Accepted")

    @after("Reset")
    def after_reset(self, type: str, evse_id: int | None = None, **_: Any) -> None:
        sim = self.sim
        if evse_id is not None:
            # an EVSE-level reset: restarts that EVSE's software, like a soft reset of it
            gone = sim.clear(lambda f: f.connector == evse_id and "soft_reset" in f.cleared_by)
            s = sim.sessions.get(evse_id)
            if s is not None:
                s.stop("ImmediateReset")
            sim.spawn(sim._cleared(gone))
            return
        if sim.pending_reset:
            return
        sim.schedule_reset("soft" if type == "OnIdle" else "hard")

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, evse: Any = None, **_: Any) -> Any:
        k = int(evse["id"]) if evse else 0
        return r201.ChangeAvailability(
            self.sim.change_availability(k, operational_status == "Operative")
        )

    @on("UnlockConnector")
    def on_unlock(self, evse_id: int, connector_id: int, **_: Any) -> Any:
        sim = self.sim
        if evse_id < 1 or evse_id > sim.n or connector_id != 1:
            return r201.UnlockConnector("UnknownConnector")
        if evse_id in sim.sessions:
            return r201.UnlockConnector("OngoingAuthorizedTransaction")
        if sim.fault_on(evse_id, ("connector_lock",)):
            return r201.UnlockConnector("UnlockFailed")
        return r201.UnlockConnector("Unlocked")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, evse: Any = None, **_: Any) -> Any:
        ok = {
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "MeterValues",
            "FirmwareStatusNotification",
            "LogStatusNotification",
            "TransactionEvent",
        }
        return r201.TriggerMessage("Accepted" if requested_message in ok else "NotImplemented")

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, evse: Any = None, **_: Any) -> None:
        k = int(evse["id"]) if evse else None
        what = "MeterValues" if requested_message == "TransactionEvent" else requested_message
        self.sim.spawn(self.sim.trigger(what, k), connection=True)

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        sim = self.sim
        known = {
            ("OCPPCommCtrlr", "HeartbeatInterval"): str(int(sim.heartbeat_s)),
            ("SampledDataCtrlr", "TxUpdatedInterval"): str(int(sim.meter_interval_s)),
            ("ChargingStation", "Model"): sim.spec.hw.model,
            ("ChargingStation", "VendorName"): sim.spec.hw.vendor,
            ("ChargingStation", "AvailabilityState"): sim.status(1).status,
            ("ChargingStation", "Problem"): "true" if sim._blocking_fault(0) else "false",
            ("FirmwareCtrlr", "FirmwareVersion"): sim.firmware,
            ("EVSE", "Power"): str(sim.spec.hw.connector_power_w),
        }
        results = []
        for d in get_variable_data:
            comp, var = d["component"]["name"], d["variable"]["name"]
            value = known.get((comp, var))
            status = (
                "Accepted"
                if value is not None
                else ("UnknownVariable" if comp in _COMPONENTS_201 else "UnknownComponent")
            )
            res: dict[str, Any] = {
                "attribute_status": status,
                "component": d["component"],
                "variable": d["variable"],
            }
            if value is not None:
                res["attribute_value"] = value
            results.append(res)
        return r201.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in set_variable_data:
            comp, var = d["component"]["name"], d["variable"]["name"]
            value = str(d["attribute_value"])
            if (comp, var) == ("OCPPCommCtrlr", "HeartbeatInterval"):
                status = "Accepted" if value.isdigit() and int(value) > 0 else "Rejected"
                if status == "Accepted":
                    self.sim.heartbeat_s = float(value)
            elif comp in _COMPONENTS_201:
                status = "UnknownVariable"
            else:
                status = "UnknownComponent"
            results.append(
                {"attribute_status": status, "component": d["component"], "variable": d["variable"]}
            )
        return r201.SetVariables(set_variable_result=results)

    @on("GetLog")
    def on_get_log(self, log: Any, log_type: str, request_id: int, **_: Any) -> Any:
        return r201.GetLog(
            "Accepted", filename=f"{log_type.lower()}-{self.sim.id}-{request_id}.log"
        )

    @after("GetLog")
    def after_get_log(self, log: Any, log_type: str, request_id: int, **_: Any) -> None:
        self.sim.spawn(self.sim._upload(request_id), connection=True)

    @on("UpdateFirmware")
    def on_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> Any:
        return r201.UpdateFirmware("Accepted")

    @after("UpdateFirmware")
    def after_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> None:
        self.sim.spawn(self.sim._update_firmware(firmware["location"], request_id))

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        for s in self.sim.sessions.values():
            if s.tx_id == transaction_id:
                s.stop("Remote")
                return r201.RequestStopTransaction("Accepted")
        return r201.RequestStopTransaction("Rejected")


__all__ = ["ActiveFault", "Awaitable", "ConnectorView", "SessionOutcome", "SimChargePoint"]
