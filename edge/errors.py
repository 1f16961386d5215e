"""The edge agent's error tree.

::

    EdgeError
    ├── ChargePointNotConnected   no live connection to that charge point
    ├── CallFailed                an injected CALL did not get a CALLRESULT
    │   ├── CallRejected          the charge point answered with a CALLERROR
    │   └── CallTimeout           no answer within the timeout
    └── ConnectionClosed          the connection closed while a call was waiting

Library errors (websockets, sqlite3, paho) are translated at the boundary
with ``raise ... from exc``; every error carries the charge point id.
"""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    def __init__(self, message: str, *, charge_point_id: str | None = None) -> None:
        super().__init__(message)
        self.charge_point_id = charge_point_id


class ChargePointNotConnected(EdgeError):
    pass


class CallFailed(EdgeError):
    pass


class CallRejected(CallFailed):
    def __init__(
        self,
        message: str,
        *,
        charge_point_id: str | None = None,
        error_code: str = "",
        description: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, charge_point_id=charge_point_id)
        self.error_code = error_code
        self.description = description
        self.details = details or {}


class CallTimeout(CallFailed):
    pass


class ConnectionClosed(CallFailed):
    pass
