"""Turn OCPP 1.6 / 2.0.1 messages into version-independent events (:mod:`.events`).

Pure functions, no I/O. The proxy calls :func:`events_from_call` for every CALL
a charge point sends and :func:`events_from_result` when the CSMS (or the
agent, offline) answers it, because some facts only exist in the answer (the
transaction id a 1.6 CSMS assigns, the heartbeat interval).

Timestamps come from the message when it carries one (``timestamp`` fields),
so replayed and back-filled traffic keeps its own time; otherwise ``now``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from chargesight.common.events import (
    AuthorizeResult,
    Boot,
    ConnectorStatus,
    Event,
    Heartbeat,
    HeartbeatInterval,
    MeterSample,
    ProblemReport,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.logs import get_logger

log = get_logger(__name__)

_UNIT_SCALE = {
    "kWh": ("Wh", 1000.0),
    "kW": ("W", 1000.0),
    "kvarh": ("varh", 1000.0),
    "kvar": ("var", 1000.0),
}
_DEFAULT_MEASURAND = "Energy.Active.Import.Register"


def parse_time(value: Any, default: datetime) -> datetime:
    """Parse an OCPP timestamp (RFC 3339); fall back to ``default`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return default
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return default
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def sampled_values(meter_value: dict[str, Any]) -> dict[str, float]:
    """Collapse one OCPP ``meterValue`` entry into measurand → value in base units.

    Per-phase values are combined: power and current summed, voltage averaged,
    temperature the maximum; a phase-less value wins over the phases.
    """
    direct: dict[str, float] = {}
    phases: dict[str, list[float]] = {}
    broken: set[str] = set()  # a non-finite value anywhere: no reading of that measurand
    for sv in meter_value.get("sampledValue") or []:
        if not isinstance(sv, dict):
            continue
        measurand = sv.get("measurand") or _DEFAULT_MEASURAND
        raw = sv.get("value")
        if raw is None:
            continue
        try:
            value = float(raw)  # 1.6 sends strings, 2.0.1 numbers
        except (TypeError, ValueError):
            continue
        unit = sv.get("unit") or (sv.get("unitOfMeasure") or {}).get("unit")
        if unit in _UNIT_SCALE:
            value *= _UNIT_SCALE[unit][1]
        if not math.isfinite(value):  # "NaN", "Infinity", or beyond a float once scaled
            broken.add(measurand)
            continue
        if sv.get("phase"):
            phases.setdefault(measurand, []).append(value)
        else:
            direct[measurand] = value
    for measurand in broken:
        direct.pop(measurand, None)
        phases.pop(measurand, None)
    for measurand, values in phases.items():
        if measurand in direct:
            continue
        if measurand.startswith("Voltage"):
            direct[measurand] = sum(values) / len(values)
        elif measurand.startswith("Temperature"):
            direct[measurand] = max(values)
        else:
            direct[measurand] = sum(values)
    return {m: v for m, v in direct.items() if math.isfinite(v)}


def events_from_call(
    cp_id: str, version: str, action: str, payload: dict[str, Any], now: datetime
) -> list[Event]:
    """Events implied by a CALL a charge point sent (before any answer). Never raises: a
    frame whose fields have types the spec does not allow (which the charger and its CSMS
    may still accept) implies no event, and is said so in the log."""
    try:
        if version == "1.6":
            return _v16_call(cp_id, action, payload, now)
        return _v201_call(cp_id, action, payload, now)
    except Exception as exc:
        _not_understood(cp_id, action, exc)
        return []


def events_from_result(
    cp_id: str,
    version: str,
    action: str,
    request: dict[str, Any],
    result: dict[str, Any],
    now: datetime,
) -> list[Event]:
    """Events implied by the answer to a charge point's CALL (never raises, as above)."""
    try:
        return _events_from_result(cp_id, version, action, request, result, now)
    except Exception as exc:
        _not_understood(cp_id, action, exc)
        return []


def _not_understood(cp_id: str, action: str, exc: Exception) -> None:
    log.warning(
        "ocpp_fields_not_understood",
        charge_point_id=cp_id,
        action=action,
        error=f"{type(exc).__name__}: {exc}",
        note="the frame is passed on unchanged; it implies no event here",
    )


def _events_from_result(
    cp_id: str,
    version: str,
    action: str,
    request: dict[str, Any],
    result: dict[str, Any],
    now: datetime,
) -> list[Event]:
    out: list[Event] = []
    if action == "BootNotification":
        interval = result.get("interval")
        if isinstance(interval, int) and interval > 0:
            out.append(HeartbeatInterval(cp_id, now, interval))
    elif action == "StartTransaction" and version == "1.6":
        tx = result.get("transactionId")
        status = (result.get("idTagInfo") or {}).get("status", "Accepted")
        at = parse_time(request.get("timestamp"), now)
        out.append(AuthorizeResult(cp_id, at, str(request.get("idTag", "")), str(status)))
        out.append(
            TransactionStarted(
                cp_id,
                at,
                _int(request.get("connectorId")),
                None if tx is None else str(tx),
                _opt_str(request.get("idTag")),
                _float_or_none(request.get("meterStart")),
            )
        )
    elif action == "Authorize":
        info = result.get("idTagInfo") or result.get("idTokenInfo") or {}
        tag = request.get("idTag") or (request.get("idToken") or {}).get("idToken") or ""
        out.append(AuthorizeResult(cp_id, now, str(tag), str(info.get("status", "Unknown"))))
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        f = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return f if f is None or math.isfinite(f) else None


def _v16_call(cp_id: str, action: str, p: dict[str, Any], now: datetime) -> list[Event]:
    if action == "StatusNotification":
        return [
            ConnectorStatus(
                cp_id,
                parse_time(p.get("timestamp"), now),
                _int(p.get("connectorId")),
                str(p.get("status", "")),
                str(p.get("errorCode", "NoError")),
                _opt_str(p.get("vendorId")),
                _opt_str(p.get("vendorErrorCode")),
                _opt_str(p.get("info")),
            )
        ]
    if action == "BootNotification":
        return [
            Boot(
                cp_id,
                now,
                str(p.get("chargePointVendor", "")),
                str(p.get("chargePointModel", "")),
                _opt_str(p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber")),
                _opt_str(p.get("firmwareVersion")),
            )
        ]
    if action == "Heartbeat":
        return [Heartbeat(cp_id, now)]
    if action == "StopTransaction":
        out: list[Event] = []
        tx = _opt_str(p.get("transactionId"))
        for mv in p.get("transactionData") or []:
            if isinstance(mv, dict):
                out.append(
                    MeterSample(
                        cp_id, parse_time(mv.get("timestamp"), now), 0, tx, sampled_values(mv)
                    )
                )
        out.append(
            TransactionEnded(
                cp_id,
                parse_time(p.get("timestamp"), now),
                tx,
                None,
                _float_or_none(p.get("meterStop")),
                _opt_str(p.get("reason")),
            )
        )
        return out
    if action == "MeterValues":
        connector = _int(p.get("connectorId"))
        tx = _opt_str(p.get("transactionId"))
        return [
            MeterSample(
                cp_id, parse_time(mv.get("timestamp"), now), connector, tx, sampled_values(mv)
            )
            for mv in p.get("meterValue") or []
            if isinstance(mv, dict)
        ]
    return []


_V201_STATUS = {"Available", "Occupied", "Reserved", "Unavailable", "Faulted"}


def _v201_call(cp_id: str, action: str, p: dict[str, Any], now: datetime) -> list[Event]:
    if action == "StatusNotification":
        status = str(p.get("connectorStatus", ""))
        return [
            ConnectorStatus(
                cp_id,
                parse_time(p.get("timestamp"), now),
                _int(p.get("evseId")),
                status,
                "NoError" if status != "Faulted" else "Faulted",
                evse_connector_id=_int(p.get("connectorId"), 0) or None,
            )
        ]
    if action == "BootNotification":
        cs = p.get("chargingStation") or {}
        return [
            Boot(
                cp_id,
                now,
                str(cs.get("vendorName", "")),
                str(cs.get("model", "")),
                _opt_str(cs.get("serialNumber")),
                _opt_str(cs.get("firmwareVersion")),
                _opt_str(p.get("reason")),
            )
        ]
    if action == "Heartbeat":
        return [Heartbeat(cp_id, now)]
    if action == "NotifyEvent":
        out: list[Event] = []
        for ev in p.get("eventData") or []:
            if not isinstance(ev, dict):
                continue
            component = ev.get("component") or {}
            variable = (ev.get("variable") or {}).get("name", "")
            if variable == "Temperature":  # 2.0.1 has no Temperature measurand: stations notify it
                evse_id = _int((component.get("evse") or {}).get("id"), 0)
                try:
                    temperature = float(ev.get("actualValue"))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    continue
                out.append(
                    MeterSample(
                        cp_id,
                        parse_time(ev.get("timestamp"), now),
                        evse_id,
                        _opt_str(ev.get("transactionId")),
                        {"Temperature": temperature},
                    )
                )
                continue
            if variable != "Problem" and not ev.get("techInfo") and not ev.get("techCode"):
                continue
            evse = component.get("evse") or {}
            value = str(ev.get("actualValue", ""))
            out.append(
                ProblemReport(
                    cp_id,
                    parse_time(ev.get("timestamp"), now),
                    str(component.get("name", "")),
                    str(variable),
                    value,
                    _int(evse.get("id"), 0) if evse else None,
                    _int(evse.get("connectorId"), 0) or None if evse else None,
                    _opt_str(ev.get("techInfo")),
                    _opt_str(ev.get("techCode")),
                    bool(ev.get("cleared", False)) or value.lower() == "false",
                )
            )
        return out
    if action == "TransactionEvent":
        return _v201_transaction_event(cp_id, p, now)
    if action == "MeterValues":
        evse = _int(p.get("evseId"))
        return [
            MeterSample(cp_id, parse_time(mv.get("timestamp"), now), evse, None, sampled_values(mv))
            for mv in p.get("meterValue") or []
            if isinstance(mv, dict)
        ]
    return []


def _v201_transaction_event(cp_id: str, p: dict[str, Any], now: datetime) -> list[Event]:
    at = parse_time(p.get("timestamp"), now)
    info = p.get("transactionInfo") or {}
    tx = _opt_str(info.get("transactionId"))
    evse = _int((p.get("evse") or {}).get("id"))
    out: list[Event] = []
    energy: float | None = None
    for mv in p.get("meterValue") or []:
        if isinstance(mv, dict):
            values = sampled_values(mv)
            energy = values.get(_DEFAULT_MEASURAND, energy)
            out.append(MeterSample(cp_id, parse_time(mv.get("timestamp"), at), evse, tx, values))
    kind = p.get("eventType")
    if kind == "Started":
        tag = (p.get("idToken") or {}).get("idToken")
        out.insert(0, TransactionStarted(cp_id, at, evse, tx, _opt_str(tag), energy))
    elif kind == "Ended":
        out.append(
            TransactionEnded(
                cp_id, at, tx, evse or None, energy, _opt_str(info.get("stoppedReason"))
            )
        )
    return out
