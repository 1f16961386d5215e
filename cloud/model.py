"""The issue object the API returns (CONTRACT.md, "REST API") and its parts.

Stored whole as JSON in ``issues.doc``; the indexed columns beside it
(status, priority, key fields) are derived from it on every write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chargesight.common.messages import (
    EvidenceFrame,
    Fault,
    Hardware,
    RecommendedAction,
    RecoveryAttempt,
    Scope,
    UtcDatetime,
)

IssueStatus = Literal["open", "acknowledged", "resolved"]
Resolution = Literal["cleared", "operator"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Outage(_Model):
    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    sessions_cut: int | None = None  # sessions it cut short, as the edge measured
    energy_unmet_wh: float | None = None  # what their drivers still wanted (edge estimate)


class RevenueLost(_Model):
    amount: float
    currency: str | None
    method: str
    lost_sessions: float = 0.0
    outage_hours: float = 0.0
    as_of: UtcDatetime | None = None


class RelatedUnit(_Model):
    charge_point_id: str
    site_id: str
    reason: str
    similarity: float
    basis: Literal["signature", "symptoms"] = "signature"
    issue_id: str | None = None


class OperatorAction(_Model):
    at: UtcDatetime
    by: str | None = None
    action: str  # "acknowledge" or the recommended-action word the operator took
    worked: bool | None = None
    note: str | None = None


class IssueEvent(_Model):
    at: UtcDatetime
    event: str  # opened | updated | cleared | acknowledged | resolved | reopened | recurring
    detail: str = ""


class RecurringSummary(_Model):
    incidents: int
    window_s: int
    window_start: UtcDatetime
    window_end: UtcDatetime
    connectivity_share: float
    by_category: dict[str, int]
    trend: str  # "rising" | "steady" | "falling"
    first_half: int
    second_half: int


class RepeatSummary(_Model):
    """One charge point's fault that a reset (or time) clears, coming back within the window."""

    episodes: int
    window_s: int
    window_start: UtcDatetime
    window_end: UtcDatetime
    fixed_by: dict[str, int]
    total_episodes: int = 0  # since the issue opened
    units_same_fault: int = 0  # other units of this model and firmware with the same repeats


class Issue(_Model):
    id: str
    site_id: str
    charge_point_id: str | None
    connector_id: int | None
    scope: Scope
    status: IssueStatus = "open"
    resolution: Resolution | None = None
    kind: str = "fault"
    signature: str
    fault: Fault
    hardware: Hardware = Field(default_factory=Hardware)
    chargers: list[str] = Field(default_factory=list)
    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    first_seen_at: UtcDatetime
    last_seen_at: UtcDatetime
    outages: list[Outage] = Field(default_factory=list)
    recovery_attempts: list[RecoveryAttempt] = Field(default_factory=list)
    evidence: list[EvidenceFrame] = Field(default_factory=list)
    incident_ids: list[str] = Field(default_factory=list)
    cleared_incident_ids: list[str] = Field(default_factory=list)
    escalations: int = 0
    reopened: int = 0
    active_sessions: int = 0
    anomaly_score: float | None = None
    edge_recommended_action: RecommendedAction | None = None
    detail: str | None = None
    explanation: list[str] = Field(default_factory=list)
    diagnosis: str = ""
    recommended_action: RecommendedAction = "monitor"
    revenue_lost: RevenueLost | None = None
    related: list[RelatedUnit] = Field(default_factory=list)
    priority: float = 0.0
    recurring: RecurringSummary | None = None
    repeats: RepeatSummary | None = None
    operator_actions: list[OperatorAction] = Field(default_factory=list)
    history: list[IssueEvent] = Field(default_factory=list)


def as_utc(dt: datetime) -> datetime:
    from datetime import UTC

    return dt.astimezone(UTC)
