"""OCPP-J framing, sans I/O: parse a WebSocket text frame once, build CALLERRORs.

OCPP-J messages are JSON arrays:

* CALL        ``[2, "<uniqueId>", "<Action>", {payload}]``
* CALLRESULT  ``[3, "<uniqueId>", {payload}]``
* CALLERROR   ``[4, "<uniqueId>", "<errorCode>", "<errorDescription>", {errorDetails}]``
* OCPP 2.1 adds CALLRESULTERROR ``[5, ...]`` (same shape as CALLERROR) and
  SEND ``[6, "<uniqueId>", "<Action>", {payload}]``.

:func:`parse_frame` never raises on bad input: it returns a :class:`FrameError`
that carries the CALLERROR the OCPP-J spec of the negotiated version names
(CONTRACT.md, "OCPP side"):

============================  ======================  =========================
problem                       OCPP 1.6                OCPP 2.0.1 / 2.1
============================  ======================  =========================
not JSON                      FormationViolation      FormatViolation
not an OCPP-J array           ProtocolError           RpcFrameworkError
unknown message type id       ProtocolError           MessageTypeNotSupported
============================  ======================  =========================

The unique id is ``"-1"`` when it cannot be read from the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

CALL = 2
CALLRESULT = 3
CALLERROR = 4
CALLRESULTERROR = 5  # OCPP 2.1
SEND = 6  # OCPP 2.1

Version = Literal["1.6", "2.0.1", "2.1"]

SUBPROTOCOL_VERSIONS: dict[str, Version] = {
    "ocpp1.6": "1.6",
    "ocpp2.0.1": "2.0.1",
    "ocpp2.1": "2.1",
}


@dataclass(frozen=True, slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]
    message_type: int = CALL


@dataclass(frozen=True, slots=True)
class CallResult:
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    unique_id: str
    error_code: str
    description: str
    details: dict[str, Any]
    message_type: int = CALLERROR


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that must not be forwarded; ``reply`` is the CALLERROR to send back."""

    unique_id: str
    error_code: str
    description: str

    def reply(self) -> bytes:
        return call_error(self.unique_id, self.error_code, self.description)


Frame = Call | CallResult | CallError


def _codes(version: Version) -> tuple[str, str, str]:
    """(not JSON, not an OCPP-J array, unknown message type) for ``version``."""
    if version == "1.6":
        return "FormationViolation", "ProtocolError", "ProtocolError"
    return "FormatViolation", "RpcFrameworkError", "MessageTypeNotSupported"


def parse_frame(raw: bytes | str, version: Version) -> Frame | FrameError:
    """Parse one OCPP-J frame; never raises."""
    not_json, not_array, bad_type = _codes(version)
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return FrameError("-1", not_json, "frame is not valid JSON")
    if not isinstance(msg, list) or len(msg) < 3:
        uid = _readable_id(msg)
        return FrameError(uid, not_array, "frame is not an OCPP-J message array")
    mtype, uid = msg[0], msg[1]
    if not isinstance(uid, str) or not uid:
        return FrameError("-1", not_array, "unique id must be a non-empty string")
    if isinstance(mtype, bool) or not isinstance(mtype, int):
        return FrameError(uid, not_array, "message type id must be an integer")
    if mtype == CALL or (mtype == SEND and version == "2.1"):
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            return FrameError(uid, not_array, "CALL must be [2, id, action, {payload}]")
        return Call(uid, msg[2], msg[3], mtype)
    if mtype == CALLRESULT:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            return FrameError(uid, not_array, "CALLRESULT must be [3, id, {payload}]")
        return CallResult(uid, msg[2])
    if mtype == CALLERROR or (mtype == CALLRESULTERROR and version == "2.1"):
        if len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[3], str):
            return FrameError(
                uid, not_array, "CALLERROR must be [4, id, code, description, {details}]"
            )
        details = msg[4] if isinstance(msg[4], dict) else {}
        return CallError(uid, msg[2], msg[3], details, mtype)
    return FrameError(uid, bad_type, f"message type id {mtype} is not supported")


def _readable_id(msg: Any) -> str:
    if isinstance(msg, list) and len(msg) >= 2 and isinstance(msg[1], str) and msg[1]:
        return msg[1]
    return "-1"


def call(unique_id: str, action: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps([CALL, unique_id, action, payload])


def call_result(unique_id: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps([CALLRESULT, unique_id, payload])


def call_error(
    unique_id: str, code: str, description: str = "", details: dict[str, Any] | None = None
) -> bytes:
    return orjson.dumps([CALLERROR, unique_id, code, description, details or {}])
