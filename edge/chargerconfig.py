"""A configuration change the cloud asks of a charge point (request kind
``configuration_change``).

The agent reads the setting's current value first, so the reply says what
it was and an operator can put it back, then sets the new one:

======  ==========================================  ==================================
OCPP    read                                        write
======  ==========================================  ==================================
1.6     ``GetConfiguration`` ``{key: [key]}``       ``ChangeConfiguration`` ``{key, value}``
2.0.1+  ``GetVariables`` (component, variable)      ``SetVariables`` (component, variable)
======  ==========================================  ==================================

Parameters: ``charge_point_id``, ``key`` (the 1.6 key, or the 2.0.1
variable name), ``value`` (a string; a number or a boolean is sent as its
OCPP text), and for 2.0.1 and 2.1 ``component`` (e.g. ``OCPPCommCtrlr``) with
an optional ``evse_id``. ``[uplink] configuration_keys`` limits which keys
may be changed (empty: any); on 2.0.1 an entry ``Component.Variable`` allows
that one, a bare ``Variable`` the variable of every component. Names and
values longer than OCPP allows (names 50, values 500 on 1.6, 1000 on 2.0.1,
2500 on 2.1) are refused before anything is sent.

The request succeeds when the charger answers ``Accepted`` or
``RebootRequired``; any other answer fails it with the answer in the reply's
``result``. The read is bounded by :data:`READ_TIMEOUT_S`: a charger that
cannot be read in time still gets the change (``previous`` is then
``null``); one that is not connected gets nothing. A change sent and not
answered in :data:`WRITE_TIMEOUT_S` fails with status ``NoAnswer``: the
charger may or may not have applied it. A changed heartbeat interval is
handed to the agent's detector, which would otherwise keep expecting the old
one (and take a slower charger for a silent one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chargesight.edge.errors import CallRejected, CallTimeout, EdgeError
from chargesight.edge.recovery import VERSION_201, CallInjector
from chargesight.edge.requests import RequestFailed

OK_STATUSES = ("Accepted", "RebootRequired")
READ_TIMEOUT_S = 5.0  # the read is a courtesy: the change goes ahead without it
WRITE_TIMEOUT_S = 20.0  # with the read, inside the request router's 30 s
NAME_MAX = 50  # CiString50: a 1.6 key, a 2.0.1 component or variable name
VALUE_MAX = {"1.6": 500, "2.0.1": 1000, "2.1": 2500}


class ConfigurationRefused(RequestFailed):
    """The charger answered the change with something other than :data:`OK_STATUSES`;
    ``result`` is what the reply carries."""


def _text(name: str, value: object) -> str:
    """An OCPP configuration value: a string; numbers and booleans as their OCPP text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"params.{name} must be a string, a number or a boolean, not {value!r}")


def _name(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"params.{name} is required (a non-empty string)")
    return value.strip()


def _allowed(allowed: frozenset[str], key: str, component: str | None) -> bool:
    return (
        not allowed or key in allowed or (component is not None and f"{component}.{key}" in allowed)
    )


def _short(name: str, text: str, limit: int, version: str) -> str:
    if len(text) > limit:
        raise ValueError(f"params.{name} is {len(text)} characters; OCPP {version} allows {limit}")
    return text


async def change_configuration(
    injector: CallInjector,
    params: dict[str, Any],
    allowed_keys: Iterable[str] = (),
    *,
    heartbeat_changed: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Read, then change one setting of a connected charge point; the reply's ``result``.

    Raises ``ValueError`` for missing, too long or disallowed parameters (nothing is sent),
    :class:`ConfigurationRefused` when the charger does not accept the change or does not
    answer it, and the proxy's errors (not connected, CALLERROR) for the change itself.
    ``heartbeat_changed(charge_point_id, seconds)`` is called when a heartbeat interval
    was changed."""
    cp = _name(params, "charge_point_id")
    key = _name(params, "key")
    if "value" not in params:
        raise ValueError("params.value is required")
    value = _text("value", params["value"])
    version = injector.version(cp)
    if version is None:
        raise ValueError(f"charge point {cp} is not connected")
    v201 = version in VERSION_201
    component = _name(params, "component") if v201 else None
    _short("key", key, NAME_MAX, version)
    if component is not None:
        _short("component", component, NAME_MAX, version)
    _short("value", value, VALUE_MAX.get(version, 500), version)
    allowed = frozenset(allowed_keys)
    if not _allowed(allowed, key, component):
        raise ValueError(
            f"key {key!r} may not be changed from the cloud here"
            f" ([uplink] configuration_keys: {', '.join(sorted(allowed))})"
        )
    result: dict[str, Any] = {"charge_point_id": cp, "key": key, "value": value}
    try:
        if component is not None:
            evse = params.get("evse_id")
            if evse is not None and (
                isinstance(evse, bool) or not isinstance(evse, int) or evse < 1
            ):
                raise ValueError(f"params.evse_id must be a positive integer, not {evse!r}")
            target: dict[str, Any] = {
                "component": {"name": component},
                "variable": {"name": key},
            }
            if evse is not None:
                target["component"]["evse"] = {"id": evse}
                result["evse_id"] = evse
            result["component"] = component
            result["previous"] = await _read_201(injector, cp, target)
            answer = await injector.call(
                cp,
                "SetVariables",
                {"setVariableData": [{**target, "attributeValue": value}]},
                timeout=WRITE_TIMEOUT_S,
            )
            rows = answer.get("setVariableResult") or [{}]
            status = str(rows[0].get("attributeStatus", ""))
            info = rows[0].get("attributeStatusInfo")
            if isinstance(info, dict) and info.get("reasonCode"):
                result["reason"] = str(info["reasonCode"])
        else:
            result["previous"] = await _read_16(injector, cp, key)
            answer = await injector.call(
                cp, "ChangeConfiguration", {"key": key, "value": value}, timeout=WRITE_TIMEOUT_S
            )
            status = str(answer.get("status", ""))
    except CallTimeout as exc:
        result.update(status="NoAnswer", reboot_required=False)
        raise ConfigurationRefused(
            f"{cp} did not answer the change of {key} in {WRITE_TIMEOUT_S:g} s: it may or may"
            " not have applied it; check it before retrying",
            result,
        ) from exc
    result["status"] = status
    result["reboot_required"] = status == "RebootRequired"
    if status not in OK_STATUSES:
        raise ConfigurationRefused(
            f"{cp} answered {status or 'nothing'} to {key} = {value}", result
        )
    heartbeat = key == "HeartbeatInterval" and component in (None, "OCPPCommCtrlr")
    if heartbeat and heartbeat_changed is not None and value.isdigit() and int(value) > 0:
        heartbeat_changed(cp, int(value))
    return result


async def _read_16(injector: CallInjector, cp: str, key: str) -> str | None:
    try:
        answer = await injector.call(cp, "GetConfiguration", {"key": [key]}, timeout=READ_TIMEOUT_S)
    except (CallRejected, EdgeError):
        return None  # a charger that cannot say (in time) still gets the change
    for row in answer.get("configurationKey") or []:
        if isinstance(row, dict) and row.get("key") == key:
            v = row.get("value")
            return None if v is None else str(v)
    return None


async def _read_201(injector: CallInjector, cp: str, target: dict[str, Any]) -> str | None:
    try:
        answer = await injector.call(
            cp, "GetVariables", {"getVariableData": [target]}, timeout=READ_TIMEOUT_S
        )
    except (CallRejected, EdgeError):
        return None
    for row in answer.get("getVariableResult") or []:
        if isinstance(row, dict) and row.get("attributeStatus") == "Accepted":
            v = row.get("attributeValue")
            return None if v is None else str(v)
    return None
