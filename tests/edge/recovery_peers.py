"""Charge points for the recovery scenarios: they react to the agent's calls like real ones.

:class:`RebootingCp` is an OCPP 1.6 charge point (or, with ``version="2.0.1"``,
a charging station whose EVSEs 1..N have one connector each; a fault is a
``StatusNotification Faulted`` followed by a ``NotifyEvent`` Problem with the
code in ``techInfo`` and the vendor code in ``techCode``), built on the
``ocpp`` library, with connectors 1..N and faults that only some actions clear:

* ``Reset`` — answers ``Accepted``, drops its socket, "reboots" for
  ``boot_delay_s``, reconnects, sends ``BootNotification`` and a
  ``StatusNotification`` for connector 0 (1.6) and every connector; a fault
  whose ``cleared_by`` holds the reset type (``"Soft"``/``"Hard"``; 2.0.1
  ``OnIdle`` counts as Soft, ``Immediate`` as Hard) is gone after it.
* ``ChangeAvailability`` — ``Inoperative`` → the connector reports
  ``Unavailable``; ``Operative`` → it reports its real status again (still
  ``Faulted`` unless ``cleared_by`` holds ``"availability"``).
* ``TriggerMessage StatusNotification`` — re-sends the connector's status.
* ``UnlockConnector`` — ``Unlocked`` (clears a fault with ``"unlock"``).
* ``GetConfiguration``/``ChangeConfiguration`` (1.6) and
  ``GetVariables``/``SetVariables`` (2.0.1, component ``OCPPCommCtrlr``) —
  read and write ``settings``; ``HeartbeatInterval`` takes whole seconds,
  ``WebSocketPingInterval`` answers ``RebootRequired``, a read-only key is
  ``Rejected`` and an unknown one ``NotSupported`` (2.0.1 ``UnknownVariable``).

Every CALL it receives is recorded (``received``: action, payload, unique
id) across reconnections; :meth:`RebootingCp.wait_for` awaits a condition
on it. Follow-up messages go out from tasks the charge point owns, after the
reply was sent, as a real charger's firmware does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.peers import RecordingConnection, iso_now


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """A fault on one connector and the actions that clear it (empty: it persists)."""

    error_code: str
    vendor_error_code: str | None = None
    vendor_id: str | None = None
    info: str | None = None
    cleared_by: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ReceivedCall:
    action: str
    payload: dict[str, Any]
    unique_id: str


class _Firmware(Cp16):
    """The OCPP handlers of one connection; the state lives in :class:`RebootingCp`."""

    def __init__(self, owner: RebootingCp, conn: RecordingConnection) -> None:
        super().__init__(owner.id, conn, response_timeout=10)
        self.owner = owner

    @on(Action.reset)
    def on_reset(self, type: str, call_unique_id: str) -> result16.Reset:
        self.owner._record("Reset", {"type": type}, call_unique_id)
        return result16.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, type: str) -> None:
        self.owner._spawn(self.owner._reboot(type))

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str, call_unique_id: str
    ) -> result16.ChangeAvailability:
        self.owner._record(
            "ChangeAvailability", {"connectorId": connector_id, "type": type}, call_unique_id
        )
        return result16.ChangeAvailability(status="Accepted")

    @after(Action.change_availability)
    def after_change_availability(self, connector_id: int, type: str) -> None:
        self.owner._spawn(self.owner._availability(connector_id, type))

    @on(Action.trigger_message)
    def on_trigger(
        self, requested_message: str, call_unique_id: str, connector_id: int | None = None
    ) -> result16.TriggerMessage:
        payload: dict[str, Any] = {"requestedMessage": requested_message}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        self.owner._record("TriggerMessage", payload, call_unique_id)
        ok = requested_message in ("StatusNotification", "Heartbeat", "BootNotification")
        return result16.TriggerMessage(status="Accepted" if ok else "NotImplemented")

    @after(Action.trigger_message)
    def after_trigger(self, requested_message: str, connector_id: int | None = None) -> None:
        if requested_message == "StatusNotification":
            connectors = [connector_id] if connector_id else self.owner.all_connectors
            self.owner._spawn(self.owner._report(connectors))

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int, call_unique_id: str) -> result16.UnlockConnector:
        self.owner._record("UnlockConnector", {"connectorId": connector_id}, call_unique_id)
        return result16.UnlockConnector(status="Unlocked")

    @after(Action.unlock_connector)
    def after_unlock(self, connector_id: int) -> None:
        self.owner._spawn(self.owner._cleared_by(connector_id, "unlock"))

    @on(Action.get_configuration)
    def on_get_configuration(
        self, call_unique_id: str, key: list[str] | None = None
    ) -> result16.GetConfiguration:
        self.owner._record("GetConfiguration", {"key": key}, call_unique_id)
        known = self.owner.settings
        keys = key or list(known)
        return result16.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": k in self.owner.read_only, "value": known[k]}
                for k in keys
                if k in known
            ],
            unknown_key=[k for k in keys if k not in known] or None,
        )

    @on(Action.change_configuration)
    def on_change_configuration(
        self, key: str, value: str, call_unique_id: str
    ) -> result16.ChangeConfiguration:
        self.owner._record("ChangeConfiguration", {"key": key, "value": value}, call_unique_id)
        return result16.ChangeConfiguration(status=self.owner._set(key, value))


class _Firmware201(Cp201):
    """The 2.0.1 handlers of one connection (EVSE ids stand for connectors)."""

    def __init__(self, owner: RebootingCp, conn: RecordingConnection) -> None:
        super().__init__(owner.id, conn, response_timeout=10)
        self.owner = owner

    @on(Action201.reset)
    def on_reset(self, type: str, call_unique_id: str, **kw: Any) -> result201.Reset:
        self.owner._record("Reset", {"type": type, **kw}, call_unique_id)
        return result201.Reset(status="Accepted")

    @after(Action201.reset)
    def after_reset(self, type: str, **kw: Any) -> None:
        self.owner._spawn(self.owner._reboot({"OnIdle": "Soft", "Immediate": "Hard"}[type]))

    @on(Action201.change_availability)
    def on_change_availability(
        self, operational_status: str, call_unique_id: str, evse: dict[str, Any] | None = None
    ) -> result201.ChangeAvailability:
        payload: dict[str, Any] = {"operationalStatus": operational_status}
        if evse is not None:
            payload["evse"] = evse
        self.owner._record("ChangeAvailability", payload, call_unique_id)
        return result201.ChangeAvailability(status="Accepted")

    @after(Action201.change_availability)
    def after_change_availability(
        self, operational_status: str, evse: dict[str, Any] | None = None
    ) -> None:
        target = int(evse["id"]) if evse else 0
        self.owner._spawn(self.owner._availability(target, operational_status))

    @on(Action201.trigger_message)
    def on_trigger(
        self, requested_message: str, call_unique_id: str, evse: dict[str, Any] | None = None
    ) -> result201.TriggerMessage:
        payload: dict[str, Any] = {"requestedMessage": requested_message}
        if evse is not None:
            payload["evse"] = evse
        self.owner._record("TriggerMessage", payload, call_unique_id)
        return result201.TriggerMessage(status="Accepted")

    @after(Action201.trigger_message)
    def after_trigger(self, requested_message: str, evse: dict[str, Any] | None = None) -> None:
        if requested_message == "StatusNotification":
            targets = [int(evse["id"])] if evse else self.owner.all_connectors
            self.owner._spawn(self.owner._report(targets))

    @on(Action201.unlock_connector)
    def on_unlock(
        self, evse_id: int, connector_id: int, call_unique_id: str
    ) -> result201.UnlockConnector:
        self.owner._record(
            "UnlockConnector", {"evseId": evse_id, "connectorId": connector_id}, call_unique_id
        )
        return result201.UnlockConnector(status="Unlocked")

    @after(Action201.unlock_connector)
    def after_unlock(self, evse_id: int, connector_id: int) -> None:
        self.owner._spawn(self.owner._cleared_by(evse_id, "unlock"))

    @on(Action201.get_variables)
    def on_get_variables(
        self, get_variable_data: list[dict[str, Any]], call_unique_id: str
    ) -> result201.GetVariables:
        self.owner._record("GetVariables", {"getVariableData": get_variable_data}, call_unique_id)
        out = []
        for d in get_variable_data:
            name = d["variable"]["name"]
            value = (
                self.owner.settings.get(name) if d["component"]["name"] == "OCPPCommCtrlr" else None
            )
            row: dict[str, Any] = {
                "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                "component": d["component"],
                "variable": d["variable"],
            }
            if value is not None:
                row["attribute_value"] = value
            out.append(row)
        return result201.GetVariables(get_variable_result=out)

    @on(Action201.set_variables)
    def on_set_variables(
        self, set_variable_data: list[dict[str, Any]], call_unique_id: str
    ) -> result201.SetVariables:
        self.owner._record("SetVariables", {"setVariableData": set_variable_data}, call_unique_id)
        out = []
        for d in set_variable_data:
            status = "UnknownComponent"
            if d["component"]["name"] == "OCPPCommCtrlr":
                status = self.owner._set(d["variable"]["name"], d["attribute_value"])
                status = {"NotSupported": "UnknownVariable"}.get(status, status)
            out.append(
                {"attribute_status": status, "component": d["component"], "variable": d["variable"]}
            )
        return result201.SetVariables(set_variable_result=out)


class RebootingCp:
    """A 1.6 charge point at ``{url}/{id}``. ``async with RebootingCp(url, "CP-1") as cp:``."""

    _tx_ids = itertools.count(1)

    def __init__(
        self,
        url: str,
        cp_id: str,
        *,
        connectors: int = 2,
        vendor: str = "Ampero",
        model: str = "TestWallbox 22",
        firmware: str = "4.2.1",
        serial: str | None = None,
        boot_delay_s: float = 0.3,
        version: str = "1.6",
    ) -> None:
        self.url = url
        self.version = version
        self._events = itertools.count(1)
        self.id = cp_id
        self.connectors = connectors
        self.vendor, self.model, self.firmware = vendor, model, firmware
        self.serial = serial or f"SN-{cp_id}"
        self.boot_delay_s = boot_delay_s
        self.faults: dict[int, InjectedFault] = {}
        self.inoperative: set[int] = set()
        self.transactions: dict[int, int] = {}  # connector → transaction id
        self.settings = {
            "HeartbeatInterval": "300",
            "WebSocketPingInterval": "60",
            "ChargePointModel": model,
        }
        self.read_only = {"ChargePointModel"}
        self.received: list[ReceivedCall] = []
        self.reported: list[tuple[int, str, str]] = []  # (connector, status, errorCode) sent
        self.boots = 0
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._fw: _Firmware | _Firmware201 | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RebootingCp:
        await self.power_up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def power_up(self) -> None:
        """Connect, boot and report every connector."""
        await self._connect()
        await self._boot()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._disconnect()

    @property
    def all_connectors(self) -> list[int]:
        """What a boot reports: 1.6 connector 0 and every connector; 2.0.1 every EVSE."""
        first = 0 if self.version == "1.6" else 1
        return list(range(first, self.connectors + 1))

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def _set(self, key: str, value: str) -> str:
        """A configuration change as firmware takes it: the status it answers."""
        if key not in self.settings:
            return "NotSupported"
        if key in self.read_only:
            return "Rejected"
        if key == "HeartbeatInterval" and not value.isdigit():
            return "Rejected"
        self.settings[key] = value
        return "RebootRequired" if key == "WebSocketPingInterval" else "Accepted"

    # ------------------------------------------------------------ what a test does to it

    async def fault(
        self,
        connector: int,
        error_code: str,
        vendor_error_code: str | None = None,
        *,
        vendor_id: str | None = None,
        info: str | None = None,
        cleared_by: tuple[str, ...] = (),
    ) -> None:
        """The connector faults and says so (StatusNotification Faulted)."""
        self.faults[connector] = InjectedFault(
            error_code, vendor_error_code, vendor_id, info, frozenset(cleared_by)
        )
        await self._report([connector])
        if self.version != "1.6":
            await self._notify_problem(connector)

    async def repair(self, connector: int) -> None:
        """A technician fixed it: the fault is gone and the connector says Available."""
        self.faults.pop(connector, None)
        await self._report([connector])

    async def start_transaction(self, connector: int, id_tag: str = "TAG-1") -> int:
        """A driver plugs in and charges on ``connector``; returns the CSMS's transaction id (1.6)."""
        if self.version != "1.6":
            raise NotImplementedError("sessions are 1.6 only in these peers")
        await self._status(connector, "Preparing")
        res = await self._call(
            call16.StartTransaction(
                connector_id=connector, id_tag=id_tag, meter_start=0, timestamp=iso_now()
            )
        )
        self.transactions[connector] = int(res.transaction_id)
        await self._report([connector])
        return self.transactions[connector]

    async def stop_transaction(
        self, connector: int, meter_stop: int = 10_000, reason: str | None = None
    ) -> None:
        """The driver stops charging on ``connector`` and leaves, or ``reason`` stops it (1.6)."""
        tx = self.transactions.pop(connector)
        await self._call(
            call16.StopTransaction(
                meter_stop=meter_stop, timestamp=iso_now(), transaction_id=tx, reason=reason
            )
        )
        await self._report([connector])

    async def meter_values(self, connector: int, wh: float, soc: float) -> None:
        """One periodic sample of the session on ``connector``: the register and the car's SoC."""
        sampled = [
            {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": str(soc), "measurand": "SoC", "unit": "Percent"},
        ]
        await self._call(
            call16.MeterValues(
                connector_id=connector,
                transaction_id=self.transactions[connector],
                meter_value=[{"timestamp": iso_now(), "sampled_value": sampled}],
            )
        )

    async def drop(self) -> None:
        """The network goes: the socket is cut, nothing is said."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.transport.abort()
        await self._stop_reader()
        self._changed.set()

    async def reconnect(self) -> None:
        """The network is back: reconnect and report every connector (no boot)."""
        await self._connect()
        await self._report(self.all_connectors)

    async def wait_for(self, predicate: Callable[[RebootingCp], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def calls(self, action: str) -> list[dict[str, Any]]:
        """Payloads of the CALLs of ``action`` received so far, in order."""
        return [c.payload for c in self.received if c.action == action]

    def status_of(self, connector: int) -> tuple[str, str]:
        """(status, errorCode) the connector is in now."""
        if connector in self.inoperative:
            return "Unavailable", "NoError"
        fault = self.faults.get(connector)
        if fault is not None:
            return "Faulted", fault.error_code
        if connector in self.transactions:
            return "Charging", "NoError"
        return "Available", "NoError"

    # ------------------------------------------------------------ firmware behaviour

    def _record(self, action: str, payload: dict[str, Any], unique_id: str) -> None:
        self.received.append(ReceivedCall(action, payload, unique_id))
        self._changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        """A follow-up cut short by a closing connection is what a real charger sees too."""
        with contextlib.suppress(ConnectionClosed, ConnectionError, TimeoutError, OSError):
            await coro

    async def _reboot(self, kind: str) -> None:
        await asyncio.sleep(0.05)  # the reply is on its way; then the firmware restarts
        await self._disconnect()
        for connector, fault in list(self.faults.items()):
            if kind in fault.cleared_by:
                del self.faults[connector]
        self.inoperative.clear()
        self.transactions.clear()
        await asyncio.sleep(self.boot_delay_s)
        await self.power_up()

    async def _availability(self, connector: int, kind: str) -> None:
        targets = self.all_connectors if connector == 0 else [connector]
        if kind == "Inoperative":
            self.inoperative.update(targets)
        else:
            self.inoperative.difference_update(targets)
            for c in targets:
                fault = self.faults.get(c)
                if fault is not None and "availability" in fault.cleared_by:
                    del self.faults[c]
        await self._report(targets)

    async def _cleared_by(self, connector: int, action: str) -> None:
        fault = self.faults.get(connector)
        if fault is not None and action in fault.cleared_by:
            del self.faults[connector]
            await self._report([connector])

    async def _report(self, connectors: list[int]) -> None:
        for c in connectors:
            await self._status(c, self.status_of(c)[0])

    async def _status(self, connector: int, status: str) -> None:
        fault = self.faults.get(connector) if status == "Faulted" else None
        error = fault.error_code if fault is not None else "NoError"
        self.reported.append((connector, status, error))
        if self.version != "1.6":
            await self._call(
                call201.StatusNotification(
                    timestamp=iso_now(),
                    connector_status="Occupied" if status == "Charging" else status,
                    evse_id=connector,
                    connector_id=1,
                )
            )
            self._changed.set()
            return
        await self._call(
            call16.StatusNotification(
                connector_id=connector,
                error_code=error,
                status=status,
                vendor_id=fault.vendor_id if fault else None,
                vendor_error_code=fault.vendor_error_code if fault else None,
                info=fault.info if fault else None,
                timestamp=iso_now(),
            )
        )
        self._changed.set()

    async def _notify_problem(self, evse: int) -> None:
        fault = self.faults[evse]
        event: dict[str, Any] = {
            "event_id": next(self._events),
            "timestamp": iso_now(),
            "trigger": "Delta",
            "actual_value": "true",
            "tech_info": fault.error_code,
            "event_notification_type": "HardWiredNotification",
            "component": {"name": "Connector", "evse": {"id": evse, "connector_id": 1}},
            "variable": {"name": "Problem"},
        }
        if fault.vendor_error_code:
            event["tech_code"] = fault.vendor_error_code
        await self._call(
            call201.NotifyEvent(generated_at=iso_now(), seq_no=0, event_data=[event])  # type: ignore[list-item]
        )

    async def _boot(self) -> None:
        if self.version != "1.6":
            await self._call(
                call201.BootNotification(
                    charging_station={
                        "vendor_name": self.vendor,
                        "model": self.model,
                        "firmware_version": self.firmware,
                        "serial_number": self.serial,
                    },  # type: ignore[arg-type]
                    reason="PowerUp" if self.boots == 0 else "RemoteReset",
                )
            )
            self.boots += 1
            await self._report(self.all_connectors)
            return
        await self._call(
            call16.BootNotification(
                charge_point_vendor=self.vendor,
                charge_point_model=self.model,
                firmware_version=self.firmware,
                charge_point_serial_number=self.serial,
            )
        )
        self.boots += 1
        await self._report(self.all_connectors)

    async def _call(self, payload: Any) -> Any:
        if self._fw is None:
            raise ConnectionError(f"{self.id} is not connected")
        return await self._fw.call(payload, suppress=False)

    async def _connect(self) -> None:
        sub = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        ws = await connect(
            f"{self.url}/{self.id}",
            subprotocols=[sub],  # type: ignore[list-item]
            compression=None,
            open_timeout=10,
        )
        self._ws = ws
        conn = RecordingConnection(ws)
        self._fw = _Firmware(self, conn) if self.version == "1.6" else _Firmware201(self, conn)
        self._reader = asyncio.get_running_loop().create_task(self._read(self._fw))
        self.connections += 1
        self._changed.set()

    async def _read(self, fw: _Firmware | _Firmware201) -> None:
        with contextlib.suppress(ConnectionClosed):
            await fw.start()

    async def _stop_reader(self) -> None:
        reader, self._reader, self._fw = self._reader, None, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        await self._stop_reader()
        self._changed.set()
