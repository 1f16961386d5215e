"""Normalised charge point events: the stream the edge's detection and recovery consume.

The proxy parses every OCPP frame once and turns the interesting ones into
these version-independent events (OCPP 1.6 and 2.0.1 alike). They are plain,
immutable dataclasses with an ``at`` timestamp taken from the message when it
has one (time comes from events, ARCHITECTURE.md principle 6) and from the
receipt time otherwise.

Status values are normalised to the OCPP 1.6 vocabulary plus ``Occupied``
(2.0.1): Available, Preparing, Charging, SuspendedEV, SuspendedEVSE,
Finishing, Reserved, Unavailable, Faulted, Occupied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

HEALTHY_STATUSES = frozenset(
    {"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"}
)
"""Statuses that count as recovered when reported with ``errorCode = NoError`` (CONTRACT.md)."""

BUSY_STATUSES = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE", "Occupied", "Finishing"})


@dataclass(frozen=True, slots=True)
class ConnectionUp:
    charge_point_id: str
    at: datetime
    version: str  # "1.6" | "2.0.1" | "2.1"
    remote: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionDown:
    charge_point_id: str
    at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """The CSMS connection for one charge point went up or down."""

    charge_point_id: str
    at: datetime
    connected: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Boot:
    charge_point_id: str
    at: datetime
    vendor: str
    model: str
    serial: str | None = None
    firmware: str | None = None
    reason: str | None = None  # 2.0.1 BootReason


@dataclass(frozen=True, slots=True)
class Heartbeat:
    charge_point_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class HeartbeatInterval:
    """The CSMS (or the agent) told the charge point its heartbeat interval."""

    charge_point_id: str
    at: datetime
    interval_s: int


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """A StatusNotification. ``connector_id`` 0 means the whole charge point.

    For OCPP 2.0.1 ``connector_id`` is the EVSE id (CONTRACT.md) and
    ``evse_connector_id`` the connector inside that EVSE.
    """

    charge_point_id: str
    at: datetime
    connector_id: int
    status: str
    error_code: str = "NoError"
    vendor_id: str | None = None
    vendor_error_code: str | None = None
    info: str | None = None
    evse_connector_id: int | None = None

    @property
    def healthy(self) -> bool:
        return self.status in HEALTHY_STATUSES and self.error_code == "NoError"

    @property
    def faulted(self) -> bool:
        return self.status == "Faulted"


@dataclass(frozen=True, slots=True)
class ProblemReport:
    """OCPP 2.0.1 NotifyEvent with ``variable = Problem`` (or another trigger worth a look)."""

    charge_point_id: str
    at: datetime
    component: str  # Connector | EVSE | ChargingStation | ...
    variable: str
    value: str  # "true" while the problem is active
    evse_id: int | None = None
    connector_id: int | None = None
    tech_info: str | None = None  # the error code
    tech_code: str | None = None  # the vendor code
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    charge_point_id: str
    at: datetime
    connector_id: int
    transaction_id: str | None  # None until the CSMS assigns it (1.6)
    id_tag: str | None = None
    meter_start_wh: float | None = None


@dataclass(frozen=True, slots=True)
class TransactionEnded:
    charge_point_id: str
    at: datetime
    transaction_id: str | None
    connector_id: int | None = None
    meter_stop_wh: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    charge_point_id: str
    at: datetime
    id_tag: str
    status: str  # Accepted | Blocked | Invalid | Expired | ConcurrentTx | ...


@dataclass(frozen=True, slots=True)
class MeterSample:
    charge_point_id: str
    at: datetime
    connector_id: int
    transaction_id: str | None
    values: dict[str, float] = field(default_factory=dict)
    """Measurand → value in base units: ``Energy.Active.Import.Register`` Wh,
    ``Power.Active.Import`` W, ``Voltage`` V, ``Current.Import`` A,
    ``Temperature`` °C, ``SoC`` %."""


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A malformed frame that was not forwarded."""

    charge_point_id: str
    at: datetime
    direction: Literal["cp->csms", "csms->cp"]
    error_code: str
    description: str


Event = (
    ConnectionUp
    | ConnectionDown
    | UpstreamState
    | Boot
    | Heartbeat
    | HeartbeatInterval
    | ConnectorStatus
    | ProblemReport
    | TransactionStarted
    | TransactionEnded
    | AuthorizeResult
    | MeterSample
    | FrameRejected
)
