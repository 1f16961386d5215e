"""Issue lifecycle: pure functions from escalations and operator actions to issues.

CONTRACT.md "Issue rules": at most one issue that is not ``resolved`` per site,
scope, charge point, connector and fault signature; a repeated escalation
updates it; a fault that returns after the issue was resolved reopens it and
says so; an incident the edge reports healthy again resolves the issue with
``resolution = "cleared"``; an operator's resolve records ``"operator"``, the
action taken and whether it worked. Every time here comes from the data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from chargesight.cloud.model import Issue, IssueEvent, OperatorAction, Outage
from chargesight.common.messages import Escalation, RecommendedAction

MAX_EVIDENCE = 200
MAX_ATTEMPTS = 200


@dataclass(frozen=True, slots=True)
class IssueKey:
    site_id: str
    scope: str
    charge_point_id: str | None
    connector_id: int | None
    signature: str


def fault_signature(category: str, code: str, vendor_code: str | None) -> str:
    """The fault part of an issue's identity: category, code and vendor code."""
    return f"{category}|{code}|{vendor_code or ''}"


def issue_key(esc: Escalation) -> IssueKey:
    return IssueKey(
        esc.site_id,
        esc.scope,
        esc.charge_point_id if esc.scope != "site" else None,
        esc.connector_id if esc.scope == "connector" else None,
        fault_signature(esc.fault.category, esc.fault.code, esc.fault.vendor_code),
    )


def new_issue_id() -> str:
    return uuid.uuid4().hex[:16]


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def _merge_escalation(issue: Issue, esc: Escalation) -> None:
    """Fold an escalation's facts into ``issue`` (attempts, evidence, chargers, hardware)."""
    seen_attempts = {(a.action, a.at, a.result) for a in issue.recovery_attempts}
    for a in esc.recovery_attempts:
        if (a.action, a.at, a.result) not in seen_attempts:
            issue.recovery_attempts.append(a)
            seen_attempts.add((a.action, a.at, a.result))
    issue.recovery_attempts.sort(key=lambda a: a.at)
    del issue.recovery_attempts[:-MAX_ATTEMPTS]
    seen_frames = {(f.at, f.frame) for f in issue.evidence}
    for f in esc.evidence:
        if (f.at, f.frame) not in seen_frames:
            issue.evidence.append(f)
            seen_frames.add((f.at, f.frame))
    issue.evidence.sort(key=lambda f: f.at)
    del issue.evidence[:-MAX_EVIDENCE]
    for cp in esc.chargers:
        if cp not in issue.chargers:
            issue.chargers.append(cp)
    if esc.incident_id not in issue.incident_ids:
        issue.incident_ids.append(esc.incident_id)
    hw = esc.hardware
    if hw.vendor or hw.model or hw.firmware:
        issue.hardware = hw
    issue.fault = esc.fault
    issue.kind = esc.kind
    issue.escalations += 1
    issue.last_seen_at = max(issue.last_seen_at, esc.sent_at)
    issue.active_sessions = esc.active_sessions
    if esc.anomaly_score is not None:
        issue.anomaly_score = esc.anomaly_score
    if esc.recommended_action is not None:
        issue.edge_recommended_action = esc.recommended_action
    if esc.detail:
        issue.detail = esc.detail
    if esc.explanation:
        issue.explanation = list(esc.explanation)


def _clear(issue: Issue, incident_id: str, at: datetime, how: str) -> None:
    issue.status = "resolved"
    issue.resolution = "cleared"
    issue.ended_at = at
    if issue.outages and issue.outages[-1].ended_at is None:
        issue.outages[-1].ended_at = max(at, issue.outages[-1].started_at)
    if incident_id not in issue.cleared_incident_ids:
        issue.cleared_incident_ids.append(incident_id)
    issue.priority = 0.0
    issue.history.append(IssueEvent(at=at, event="cleared", detail=how))


def open_issue_from(esc: Escalation, issue_id: str) -> Issue:
    key = issue_key(esc)
    started = esc.started_at
    issue = Issue(
        id=issue_id,
        site_id=esc.site_id,
        charge_point_id=key.charge_point_id,
        connector_id=key.connector_id,
        scope=esc.scope,
        signature=key.signature,
        kind=esc.kind,
        fault=esc.fault,
        started_at=started,
        first_seen_at=esc.sent_at,
        last_seen_at=esc.sent_at,
        outages=[Outage(started_at=started)],
        history=[
            IssueEvent(
                at=esc.sent_at,
                event="opened",
                detail=f"escalated by the edge ({esc.fault.code}, incident {esc.incident_id})",
            )
        ],
    )
    _merge_escalation(issue, esc)
    return issue


def apply_escalation(
    current: Issue | None, esc: Escalation, new_id: Callable[[], str] = new_issue_id
) -> Issue | None:
    """Return the issue after ``esc``, or None when the escalation changes nothing.

    ``current`` is the unresolved issue with the escalation's key, or, when there
    is none, the most recent resolved one with that key (so a returning fault
    reopens it), or None. The input is not modified.
    """
    issue = _apply(current, esc, new_id)
    if issue is not None and esc.sessions_cut is not None:
        # the sessions its incident cut short, on the outage it began (the edge's running tally)
        o = next((o for o in issue.outages if o.started_at == esc.started_at), None)
        if o is not None:
            o.sessions_cut = esc.sessions_cut
            o.energy_unmet_wh = esc.energy_unmet_wh
    return issue


def _apply(current: Issue | None, esc: Escalation, new_id: Callable[[], str]) -> Issue | None:
    if current is None:
        issue = open_issue_from(esc, new_id())
        if esc.status == "cleared":
            _clear(issue, esc.incident_id, esc.ended_at or esc.sent_at, "the edge saw it clear")
        return issue
    issue = current.model_copy(deep=True)
    if esc.status == "cleared":
        if issue.status == "resolved":
            if esc.incident_id in issue.incident_ids:
                return None  # already resolved; nothing new
            _merge_escalation(issue, esc)
            at = esc.ended_at or esc.sent_at
            issue.outages.append(
                Outage(started_at=esc.started_at, ended_at=max(at, esc.started_at))
            )
            issue.history.append(
                IssueEvent(at=at, event="recurred", detail="the fault returned and cleared again")
            )
            return issue
        _merge_escalation(issue, esc)
        _clear(issue, esc.incident_id, esc.ended_at or esc.sent_at, "the edge saw it clear")
        return issue
    # an open escalation
    if esc.incident_id in issue.cleared_incident_ids:
        return None  # a late copy of an incident that already cleared
    if issue.status != "resolved":
        _merge_escalation(issue, esc)
        issue.history.append(
            IssueEvent(
                at=esc.sent_at, event="updated", detail=f"repeated escalation {esc.incident_id}"
            )
        )
        return issue
    if esc.incident_id in issue.incident_ids and issue.ended_at and esc.sent_at <= issue.ended_at:
        return None  # re-sent before the resolve: not a return of the fault
    previous = issue.resolution
    last_op = next((a for a in reversed(issue.operator_actions) if a.action != "acknowledge"), None)
    how = "it had cleared by itself"
    if previous == "operator" and last_op is not None:
        worked = {True: "reported as worked", False: "reported as not working", None: "unconfirmed"}
        how = f"an operator resolved it with {last_op.action} ({worked[last_op.worked]})"
    issue.status = "open"
    issue.resolution = None
    issue.ended_at = None
    issue.reopened += 1
    issue.started_at = esc.started_at
    issue.outages.append(Outage(started_at=esc.started_at))
    _merge_escalation(issue, esc)
    issue.history.append(
        IssueEvent(
            at=esc.sent_at,
            event="reopened",
            detail=f"the fault returned at {_fmt(esc.started_at)} after {how}",
        )
    )
    return issue


def apply_cleared(issue: Issue, incident_id: str, at: datetime) -> Issue | None:
    """A digest reports ``incident_id`` healthy again: resolve the issue as cleared."""
    if issue.status == "resolved" or incident_id in issue.cleared_incident_ids:
        return None
    out = issue.model_copy(deep=True)
    _clear(out, incident_id, at, "the edge reports the charge point healthy again")
    return out


class IssueStateError(Exception):
    """An operator action that does not fit the issue's state (e.g. ack a resolved issue)."""


def acknowledge(issue: Issue, at: datetime, by: str | None, note: str | None = None) -> Issue:
    if issue.status == "resolved":
        raise IssueStateError("a resolved issue cannot be acknowledged")
    out = issue.model_copy(deep=True)
    out.status = "acknowledged"
    out.operator_actions.append(OperatorAction(at=at, by=by, action="acknowledge", note=note))
    out.history.append(IssueEvent(at=at, event="acknowledged", detail=f"by {by or 'operator'}"))
    return out


def resolve(
    issue: Issue,
    at: datetime,
    by: str | None,
    action: RecommendedAction | str,
    worked: bool | None,
    note: str | None = None,
) -> Issue:
    if issue.status == "resolved":
        raise IssueStateError("the issue is already resolved")
    out = issue.model_copy(deep=True)
    out.status = "resolved"
    out.resolution = "operator"
    out.ended_at = at
    if out.outages and out.outages[-1].ended_at is None:
        out.outages[-1].ended_at = max(at, out.outages[-1].started_at)
    out.priority = 0.0
    out.operator_actions.append(
        OperatorAction(at=at, by=by, action=str(action), worked=worked, note=note)
    )
    verdict = {True: "it worked", False: "it did not work", None: "outcome not stated"}[worked]
    out.history.append(
        IssueEvent(at=at, event="resolved", detail=f"{by or 'operator'}: {action}, {verdict}")
    )
    return out
