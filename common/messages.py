"""MQTT message schemas and topic names shared by the edge and the cloud (CONTRACT.md).

Every edge message carries ``schema_version``, ``message_id`` (unique, stable
across retries), ``site_id`` and ``sent_at`` (RFC 3339 UTC). The collector
ignores a ``message_id`` it has already stored. Models are versioned by
``SCHEMA_VERSION``; a breaking change bumps the topic prefix (``chargesight/v2``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

SCHEMA_VERSION = 1
TOPIC_PREFIX = "chargesight/v1"


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[AwareDatetime, PlainSerializer(_rfc3339, return_type=str)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_message_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------- topics


def escalations_topic(site_id: str) -> str:
    return f"{TOPIC_PREFIX}/sites/{site_id}/escalations"


def digests_topic(site_id: str) -> str:
    return f"{TOPIC_PREFIX}/sites/{site_id}/digests"


def state_topic(site_id: str) -> str:
    return f"{TOPIC_PREFIX}/sites/{site_id}/state"


def requests_topic(site_id: str) -> str:
    return f"{TOPIC_PREFIX}/sites/{site_id}/requests"


def replies_topic(site_id: str) -> str:
    return f"{TOPIC_PREFIX}/sites/{site_id}/replies"


def model_topic(model_key: str) -> str:
    return f"{TOPIC_PREFIX}/models/{model_key}"


# Wildcards the collector subscribes to.
ALL_ESCALATIONS = f"{TOPIC_PREFIX}/sites/+/escalations"
ALL_DIGESTS = f"{TOPIC_PREFIX}/sites/+/digests"
ALL_STATES = f"{TOPIC_PREFIX}/sites/+/state"
ALL_REPLIES = f"{TOPIC_PREFIX}/sites/+/replies"
ALL_MODELS = f"{TOPIC_PREFIX}/models/+"


def parse_site_topic(topic: str) -> tuple[str, str] | None:
    """Return ``(site_id, kind)`` for a ``chargesight/v1/sites/{site}/{kind}`` topic."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:2]) == TOPIC_PREFIX and parts[2] == "sites":
        return parts[3], parts[4]
    return None


# ---------------------------------------------------------------- models


class _Model(BaseModel):
    # CONTRACT.md: "anything here may grow". A reader ignores fields it does not know, so a
    # newer edge (or cloud) adding one is understood by an older peer instead of having its
    # messages refused; what a field means never changes within a ``schema_version``.
    model_config = ConfigDict(extra="ignore")


class EdgeMessage(_Model):
    """Fields every edge → cloud message carries."""

    schema_version: int = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_message_id, min_length=8, max_length=64)
    site_id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    sent_at: UtcDatetime = Field(default_factory=utcnow)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


Scope = Literal["connector", "charge_point", "site"]

RecommendedAction = Literal[
    "reboot",
    "firmware_update",
    "field_technician",
    "component_replacement",
    "configuration_change",
    "network_fix",
    "monitor",
]


class Fault(_Model):
    code: str  # OCPP errorCode (1.6) or techInfo / the NotifyEvent problem (2.0.1)
    vendor_code: str | None = None  # vendorErrorCode (1.6) / techCode (2.0.1)
    vendor_id: str | None = None
    info: str | None = None
    category: str  # taxonomy category (chargesight.common.taxonomy)
    component: str | None = None
    chargex_code: str | None = None  # CX001 … CX026 when known
    safety_critical: bool = False


class RecoveryAttempt(_Model):
    action: (
        str  # confirm | availability_toggle | unlock | soft_reset | hard_reset | hook:<name> | wait
    )
    at: UtcDatetime
    result: str  # accepted | rejected | no_change | recovered | timeout | error | skipped
    detail: str | None = None


class Hardware(_Model):
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    serial: str | None = None


class EvidenceFrame(_Model):
    at: UtcDatetime
    direction: Literal[
        "cp->csms", "csms->cp", "agent->cp", "cp->agent", "agent->csms", "csms->agent"
    ]
    frame: str
    charge_point_id: str | None = None


class Escalation(EdgeMessage):
    """One unresolved incident (topic ``.../escalations``)."""

    kind: Literal["fault", "connectivity", "predictive", "performance", "offline_queue"] = "fault"
    incident_id: str
    charge_point_id: str | None  # null for scope "site"
    connector_id: int | None  # null unless scope is "connector"
    scope: Scope
    chargers: list[str] = Field(default_factory=list)  # scope "site": those affected
    fault: Fault
    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None  # set when the edge saw it clear after escalating
    status: Literal["open", "cleared"] = "open"
    recovery_attempts: list[RecoveryAttempt] = Field(default_factory=list)
    hardware: Hardware = Field(default_factory=Hardware)
    evidence: list[EvidenceFrame] = Field(default_factory=list)
    active_sessions: int = 0  # sessions running on the charge point when it was escalated
    anomaly_score: float | None = None
    recommended_action: RecommendedAction | None = None  # the edge's first guess
    disconnects: int | None = None  # connectivity incidents: how many drops
    detail: str | None = None
    features: dict[str, float] = Field(default_factory=dict)
    explanation: list[str] = Field(default_factory=list)  # predictive: why, in words
    sessions_cut: int | None = None  # sessions the fault cut short (common/sessions.py)
    energy_unmet_wh: float | None = None  # what their drivers still wanted, estimated


class ChargerCounters(_Model):
    """Per charge point counters for one digest interval."""

    charge_point_id: str
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    connectors: int | None = None
    connected_s: float = 0.0
    disconnects: int = 0
    faults: int = 0
    faults_by_category: dict[str, int] = Field(default_factory=dict)
    self_resolved: int = 0
    fixed_by: dict[str, int] = Field(default_factory=dict)  # action → count
    sessions_started: int = 0
    sessions_failed: int = 0
    sessions_ended_early: int = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    # connector-seconds a vehicle occupied the unit's connectors in the interval (status
    # Preparing, Charging, SuspendedEV/EVSE or Finishing), summed over its connectors; None when
    # the edge does not report it. The revenue model's occupancy per session.
    occupied_s: float | None = None
    rated_power_w: float | None = None
    max_temperature_c: float | None = None
    mean_temperature_c: float | None = None
    resets: int = 0
    health_score: float | None = None  # 0–100: the minimum of connector_health when given
    connector_health: dict[int, float] | None = None  # 0–100 per connector (1..n)
    anomaly_score: float | None = None
    features: dict[str, float] = Field(default_factory=dict)


class SelfResolved(_Model):
    """One incident the edge fixed inside the window (carried in digests, not escalated)."""

    incident_id: str
    charge_point_id: str | None
    connector_id: int | None
    scope: Scope
    kind: str
    fault_code: str
    category: str
    started_at: UtcDatetime
    ended_at: UtcDatetime
    fixed_by: str  # the action after which it recovered, or "self" when it cleared on its own
    vendor_code: str | None = None  # the fault's vendorErrorCode / techCode, when it had one
    sessions_cut: int | None = None  # sessions the fault cut short (common/sessions.py)
    energy_unmet_wh: float | None = None  # what their drivers still wanted, estimated


class Digest(EdgeMessage):
    """Periodic per-charger counters (topic ``.../digests``)."""

    interval_start: UtcDatetime
    interval_end: UtcDatetime
    currency: str | None = None  # the site's tariff, so the cloud can cost outages
    price_per_kwh: float | None = None
    chargers: list[ChargerCounters] = Field(default_factory=list)
    self_resolved: list[SelfResolved] = Field(default_factory=list)
    cleared_incidents: list[str] = Field(default_factory=list)  # escalated earlier, now healthy


class SiteState(EdgeMessage):
    """Retained ``online``/``offline`` (also the last will)."""

    state: Literal["online", "offline"]


RequestKind = Literal[
    "log_excerpt", "status", "rerun_playbook", "maintenance", "configuration_change"
]


class Request(_Model):
    """Cloud → edge request (topic ``.../requests``).

    A command, so the one message that does not tolerate unknown fields: an older agent
    must refuse a request whose new field might restrict what it asks (a dry run, a
    narrower scope) rather than run it without that restriction."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    request_id: str
    site_id: str
    kind: RequestKind
    expires_at: UtcDatetime
    params: dict[str, Any] = Field(default_factory=dict)
    requested_by: str | None = None


class Reply(EdgeMessage):
    """Edge → cloud reply, correlated by ``request_id``."""

    request_id: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class ModelUpdate(_Model):
    """Signed ONNX model announcement (topic ``chargesight/v1/models/{model_key}``)."""

    schema_version: int = SCHEMA_VERSION
    model_key: str
    version: str
    created_at: UtcDatetime
    feature_names: list[str]
    threshold: float
    onnx_b64: str
    signature_b64: str  # Ed25519 over sha256(onnx bytes) || canonical metadata
    card: dict[str, Any] = Field(default_factory=dict)


def parse_edge_message(kind: str, payload: bytes) -> EdgeMessage:
    """Validate a payload received on a site topic of ``kind``; raises pydantic.ValidationError."""
    model: type[EdgeMessage]
    if kind == "escalations":
        model = Escalation
    elif kind == "digests":
        model = Digest
    elif kind == "state":
        model = SiteState
    elif kind == "replies":
        model = Reply
    else:
        raise ValueError(f"unknown message kind {kind!r}")
    return model.model_validate_json(payload)
