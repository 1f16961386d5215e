"""The fault taxonomy shared by the edge and the cloud (ARCHITECTURE.md, "Fault taxonomy").

A charge point reports a fault as OCPP fields: the 1.6 ``errorCode``
(ChargePointErrorCode), ``vendorId``, ``vendorErrorCode`` and ``info``, or the
2.0.1 ``NotifyEvent`` ``techInfo``/``techCode``. :func:`classify` turns them
into a :class:`~chargesight.common.messages.Fault` with a *category* and a
*component*, keeping every raw field intact (a hidden ``OtherError`` plus a
vendor code is often the real story).

Categories follow the ChargeX Minimum Required Error Codes (MREC, CX001 …
CX026, sent as ``vendorErrorCode``/``techCode`` with vendorId
``https://chargex.inl.gov``) and the OCPP 1.6 ChargePointErrorCode list, plus
two families no charger reports itself: ``connectivity`` (lost connections,
missed heartbeats, weak signal) and ``performance`` (power below rated,
sessions that fail to start).

Two properties drive recovery:

* **safety-critical** (CONTRACT.md, "Recovery semantics"): no automatic reset,
  escalated at once;
* **non-resettable**: no reset can fix it (a cut cable, a broken latch, a
  pressed emergency stop), so resetting only wastes the window.

The MREC numbers CX007, CX012, CX013, CX016 and CX021 are not named here:
their names could not be confirmed from the sources at hand. They classify
as category ``other`` with their CX code kept, and a hardware profile can
map them like any vendor code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from chargesight.common.messages import Fault, RecommendedAction

CHARGEX_VENDOR_ID: Final = "https://chargex.inl.gov"

# ---------------------------------------------------------------- categories

CONNECTOR_LOCK: Final = "connector_lock"
GROUND_FAULT: Final = "ground_fault"
TEMPERATURE: Final = "temperature"
OVERCURRENT: Final = "overcurrent"
VOLTAGE: Final = "voltage"
POWER_LOSS: Final = "power_loss"
EMERGENCY_STOP: Final = "emergency_stop"
EV_COMMUNICATION: Final = "ev_communication"
AUTHORIZATION: Final = "authorization"
CABLE: Final = "cable"
ISOLATION: Final = "isolation"
CONTACTOR: Final = "contactor"
LATCH: Final = "latch"
METERING: Final = "metering"
READER: Final = "reader"
INTERNAL: Final = "internal"
RESET_FAILURE: Final = "reset_failure"
CONFIGURATION: Final = "configuration"
CONNECTIVITY: Final = "connectivity"
PERFORMANCE: Final = "performance"
OTHER: Final = "other"

CATEGORIES: Final = frozenset(
    {
        CONNECTOR_LOCK,
        GROUND_FAULT,
        TEMPERATURE,
        OVERCURRENT,
        VOLTAGE,
        POWER_LOSS,
        EMERGENCY_STOP,
        EV_COMMUNICATION,
        AUTHORIZATION,
        CABLE,
        ISOLATION,
        CONTACTOR,
        LATCH,
        METERING,
        READER,
        INTERNAL,
        RESET_FAILURE,
        CONFIGURATION,
        CONNECTIVITY,
        PERFORMANCE,
        OTHER,
    }
)

# ---------------------------------------------------------------- code tables


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What the taxonomy knows about one error code."""

    name: str
    category: str
    component: str | None
    safety_critical: bool = False
    resettable: bool = True


SAFETY_CRITICAL_CODES: Final = frozenset(
    {"GroundFailure", "CX002", "CX011", "CX017", "CX022", "CX024", "CX025", "CX026"}
)
"""CONTRACT.md, "Recovery semantics": no automatic reset, escalated at once."""

CHARGEX: Final[Mapping[str, CodeInfo]] = {
    "CX001": CodeInfo("ConnectorLockFailure", CONNECTOR_LOCK, "connector_lock"),
    "CX002": CodeInfo("GroundFailure", GROUND_FAULT, "rcd", safety_critical=True, resettable=False),
    "CX003": CodeInfo("HighTemperature", TEMPERATURE, "cooling"),
    "CX004": CodeInfo("OverCurrentFailure", OVERCURRENT, "power_electronics"),
    "CX005": CodeInfo("OverVoltage", VOLTAGE, "power_electronics"),
    "CX006": CodeInfo("UnderVoltage", VOLTAGE, "grid_supply"),
    "CX008": CodeInfo("EmergencyStop", EMERGENCY_STOP, "emergency_stop", resettable=False),
    "CX009": CodeInfo("AuthorizationTimeout", AUTHORIZATION, "authorization"),
    "CX010": CodeInfo("InvalidVehicleMode", EV_COMMUNICATION, "control_pilot"),
    "CX011": CodeInfo(
        "CableCheckFault", CABLE, "isolation_monitor", safety_critical=True, resettable=False
    ),
    "CX014": CodeInfo("PilotFault", EV_COMMUNICATION, "control_pilot"),
    "CX015": CodeInfo("PowerLoss", POWER_LOSS, "grid_supply"),
    "CX017": CodeInfo(
        "EVSEContactorFault", CONTACTOR, "contactor", safety_critical=True, resettable=False
    ),
    "CX018": CodeInfo("CableOverTempDerate", TEMPERATURE, "cable"),
    "CX019": CodeInfo("CableOverTempStop", TEMPERATURE, "cable"),
    "CX020": CodeInfo("PartialInsertion", CABLE, "connector"),
    "CX022": CodeInfo(
        "ResistanceFault", ISOLATION, "isolation_monitor", safety_critical=True, resettable=False
    ),
    "CX023": CodeInfo("ProximityFault", EV_COMMUNICATION, "proximity_pilot"),
    "CX024": CodeInfo(
        "ConnectorVoltageHigh", VOLTAGE, "connector", safety_critical=True, resettable=False
    ),
    "CX025": CodeInfo(
        "BrokenLatch", LATCH, "connector_latch", safety_critical=True, resettable=False
    ),
    "CX026": CodeInfo("CutCable", CABLE, "cable", safety_critical=True, resettable=False),
}
"""ChargeX MREC codes (INL, "Minimum Required Error Codes") this module can name."""

OCPP16_ERROR_CODES: Final[Mapping[str, CodeInfo]] = {
    "ConnectorLockFailure": CodeInfo("ConnectorLockFailure", CONNECTOR_LOCK, "connector_lock"),
    "EVCommunicationError": CodeInfo("EVCommunicationError", EV_COMMUNICATION, "control_pilot"),
    "GroundFailure": CodeInfo(
        "GroundFailure", GROUND_FAULT, "rcd", safety_critical=True, resettable=False
    ),
    "HighTemperature": CodeInfo("HighTemperature", TEMPERATURE, "cooling"),
    "InternalError": CodeInfo("InternalError", INTERNAL, "controller"),
    "LocalListConflict": CodeInfo("LocalListConflict", CONFIGURATION, "local_auth_list"),
    "OtherError": CodeInfo("OtherError", OTHER, None),
    "OverCurrentFailure": CodeInfo("OverCurrentFailure", OVERCURRENT, "power_electronics"),
    "OverVoltage": CodeInfo("OverVoltage", VOLTAGE, "power_electronics"),
    "PowerMeterFailure": CodeInfo("PowerMeterFailure", METERING, "power_meter"),
    "PowerSwitchFailure": CodeInfo("PowerSwitchFailure", CONTACTOR, "contactor"),
    "ReaderFailure": CodeInfo("ReaderFailure", READER, "rfid_reader"),
    "ResetFailure": CodeInfo("ResetFailure", RESET_FAILURE, "controller"),
    "UnderVoltage": CodeInfo("UnderVoltage", VOLTAGE, "grid_supply"),
    "WeakSignal": CodeInfo("WeakSignal", CONNECTIVITY, "modem"),
}
"""OCPP 1.6 ChargePointErrorCode (``NoError`` is not a fault)."""

NON_RESETTABLE_CATEGORIES: Final = frozenset({LATCH, EMERGENCY_STOP})

_CX_RE = re.compile(r"\bCX0*(\d{1,3})\b", re.IGNORECASE)

# Connectivity and performance codes the edge itself raises.
CONNECTION_LOST: Final = "ConnectionLost"
MISSED_HEARTBEATS: Final = "MissedHeartbeats"
SITE_OUTAGE: Final = "SiteOutage"
POWER_BELOW_RATED: Final = "PowerBelowRated"
SESSION_START_FAILURES: Final = "SessionStartFailures"

REPLACEABLE_COMPONENTS: Final = frozenset(
    {"cable", "ccs_cable", "connector_latch", "psu_module", "rfid_reader", "power_meter", "modem"}
)
"""Parts a technician swaps rather than repairs: ``component_replacement``."""


# ---------------------------------------------------------------- profile hook


@dataclass(frozen=True, slots=True)
class VendorCode:
    """A hardware profile's meaning for one vendor error code."""

    category: str
    component: str | None = None
    chargex_code: str | None = None
    safety_critical: bool = False
    resettable: bool = True
    description: str | None = None


class VendorCodeMap(Protocol):
    """What :func:`classify` needs from a hardware profile (``edge.profiles.Profile``)."""

    @property
    def vendor_codes(self) -> Mapping[str, VendorCode]: ...


# ---------------------------------------------------------------- classification


def chargex_code(*fields: str | None) -> str | None:
    """The first ``CXnnn`` code found in ``fields`` (compound codes are comma separated)."""
    for value in fields:
        if not value:
            continue
        m = _CX_RE.search(value)
        if m:
            return f"CX{int(m.group(1)):03d}"
    return None


def classify(
    error_code: str | None,
    vendor_id: str | None = None,
    vendor_error_code: str | None = None,
    info: str | None = None,
    profile: VendorCodeMap | None = None,
) -> Fault:
    """Normalise one reported fault; the raw fields are kept as they came.

    Precedence: the hardware profile's map of ``vendor_error_code`` (the vendor
    knows its codes best), then a ChargeX code in ``vendor_error_code`` or
    ``info``, then the OCPP error code. Safety-critical wins from any source:
    an ``OtherError`` carrying CX026 is a cut cable.
    """
    code = error_code or "OtherError"
    cx = chargex_code(vendor_error_code, info if vendor_id == CHARGEX_VENDOR_ID else None)
    base = OCPP16_ERROR_CODES.get(code)
    known_cx = CHARGEX.get(cx) if cx else None
    mapped = None
    if profile is not None and vendor_error_code:
        mapped = profile.vendor_codes.get(vendor_error_code)
    category = OTHER
    component: str | None = None
    safety = code in SAFETY_CRITICAL_CODES
    if mapped is not None:
        category, component = mapped.category, mapped.component
        cx = mapped.chargex_code or cx
        known_cx = CHARGEX.get(cx) if cx else known_cx
        safety = safety or mapped.safety_critical
    elif known_cx is not None:
        category, component = known_cx.category, known_cx.component
    elif base is not None:
        category, component = base.category, base.component
    if cx is not None:
        safety = safety or cx in SAFETY_CRITICAL_CODES
    return Fault(
        code=code,
        vendor_code=vendor_error_code,
        vendor_id=vendor_id,
        info=info,
        category=category,
        component=component,
        chargex_code=cx,
        safety_critical=safety,
    )


def is_resettable(fault: Fault, profile: VendorCodeMap | None = None) -> bool:
    """False when no reset can fix ``fault`` (safety-critical faults included)."""
    if fault.safety_critical or fault.category in NON_RESETTABLE_CATEGORIES:
        return False
    if profile is not None and fault.vendor_code:
        mapped = profile.vendor_codes.get(fault.vendor_code)
        if mapped is not None and not mapped.resettable:
            return False
    cx = CHARGEX.get(fault.chargex_code or "")
    if cx is not None and not cx.resettable:
        return False
    info = OCPP16_ERROR_CODES.get(fault.code)
    return info is None or info.resettable


def connectivity_fault(code: str = CONNECTION_LOST, info: str | None = None) -> Fault:
    """A fault the edge raises itself: lost connection, missed heartbeats, site outage."""
    return Fault(code=code, category=CONNECTIVITY, component="network", info=info)


def performance_fault(code: str, info: str | None = None) -> Fault:
    """Power delivered below rated, or sessions failing to start."""
    component = "power_electronics" if code == POWER_BELOW_RATED else "control_pilot"
    return Fault(code=code, category=PERFORMANCE, component=component, info=info)


def recommended_action(fault: Fault, *, resets_tried: bool = False) -> RecommendedAction:
    """The edge's first guess at what an operator should do about an unresolved fault."""
    if fault.category == CONNECTIVITY:
        if fault.code == MISSED_HEARTBEATS and not resets_tried:
            return "reboot"
        return "network_fix"
    if fault.category == PERFORMANCE:
        return "field_technician"
    if fault.component in REPLACEABLE_COMPONENTS:
        return "component_replacement"
    if fault.safety_critical or fault.category in (
        GROUND_FAULT,
        CONTACTOR,
        ISOLATION,
        EMERGENCY_STOP,
        CONNECTOR_LOCK,
    ):
        return "field_technician"
    if fault.category == CONFIGURATION:
        return "configuration_change"
    if fault.category in (INTERNAL, RESET_FAILURE) or fault.component == "firmware":
        return "firmware_update" if resets_tried else "reboot"
    return "field_technician" if resets_tried else "reboot"
