"""A configuration change the cloud asks of a charge point (request kind
``configuration_change``).

The agent reads the setting's current value first, so the reply (and the
request audit) says what it was and an operator can put it back, then sets
the new one:

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
may be changed (empty: any).

The request succeeds when the charger answers ``Accepted`` or
``RebootRequired``; any other answer fails it with the answer in the reply's
``result``. A charger that cannot be read still gets the change
(``previous`` is then ``null``); one that is not connected gets nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chargesight.edge.errors import CallFailed, CallRejected
from chargesight.edge.recovery import VERSION_201, CallInjector
from chargesight.edge.requests import RequestFailed

OK_STATUSES = ("Accepted", "RebootRequired")


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


async def change_configuration(
    injector: CallInjector, params: dict[str, Any], allowed_keys: Iterable[str] = ()
) -> dict[str, Any]:
    """Read, then change one setting of a connected charge point; the reply's ``result``.

    Raises ``ValueError`` for missing or disallowed parameters (nothing is sent),
    :class:`ConfigurationRefused` when the charger does not accept the change, and the
    proxy's errors (not connected, CALLERROR, no answer) for the change itself."""
    cp = _name(params, "charge_point_id")
    key = _name(params, "key")
    if "value" not in params:
        raise ValueError("params.value is required")
    value = _text("value", params["value"])
    allowed = frozenset(allowed_keys)
    if allowed and key not in allowed:
        raise ValueError(
            f"key {key!r} may not be changed from the cloud here"
            f" ([uplink] configuration_keys: {', '.join(sorted(allowed))})"
        )
    version = injector.version(cp)
    if version is None:
        raise ValueError(f"charge point {cp} is not connected")
    result: dict[str, Any] = {"charge_point_id": cp, "key": key, "value": value}
    if version in VERSION_201:
        component = _name(params, "component")
        evse = params.get("evse_id")
        if evse is not None and (isinstance(evse, bool) or not isinstance(evse, int) or evse < 1):
            raise ValueError(f"params.evse_id must be a positive integer, not {evse!r}")
        target: dict[str, Any] = {"component": {"name": component}, "variable": {"name": key}}
        if evse is not None:
            target["component"]["evse"] = {"id": evse}
            result["evse_id"] = evse
        result["component"] = component
        result["previous"] = await _read_201(injector, cp, target)
        answer = await injector.call(
            cp, "SetVariables", {"setVariableData": [{**target, "attributeValue": value}]}
        )
        rows = answer.get("setVariableResult") or [{}]
        status = str(rows[0].get("attributeStatus", ""))
        info = rows[0].get("attributeStatusInfo")
        if isinstance(info, dict) and info.get("reasonCode"):
            result["reason"] = str(info["reasonCode"])
    else:
        result["previous"] = await _read_16(injector, cp, key)
        answer = await injector.call(cp, "ChangeConfiguration", {"key": key, "value": value})
        status = str(answer.get("status", ""))
    result["status"] = status
    result["reboot_required"] = status == "RebootRequired"
    if status not in OK_STATUSES:
        raise ConfigurationRefused(
            f"{cp} answered {status or 'nothing'} to {key} = {value}", result
        )
    return result


async def _read_16(injector: CallInjector, cp: str, key: str) -> str | None:
    try:
        answer = await injector.call(cp, "GetConfiguration", {"key": [key]})
    except (CallRejected, CallFailed):
        return None  # a charger that cannot say still gets the change
    for row in answer.get("configurationKey") or []:
        if isinstance(row, dict) and row.get("key") == key:
            v = row.get("value")
            return None if v is None else str(v)
    return None


async def _read_201(injector: CallInjector, cp: str, target: dict[str, Any]) -> str | None:
    try:
        answer = await injector.call(cp, "GetVariables", {"getVariableData": [target]})
    except (CallRejected, CallFailed):
        return None
    for row in answer.get("getVariableResult") or []:
        if isinstance(row, dict) and row.get("attributeStatus") == "Accepted":
            v = row.get("attributeValue")
            return None if v is None else str(v)
    return None
