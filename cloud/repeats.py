"""One charge point's same fault that a reset (or time) clears, coming back: the repeat rule.

The rule itself is pure (:func:`chargesight.cloud.recurring.find_repeats` and
:func:`~chargesight.cloud.recurring.repeat_decision`); :class:`RepeatRules` applies it to the
stored self-resolved incidents of a site (the :class:`~chargesight.cloud.engine.Engine` is one),
and :func:`repeat_issue` opens, updates or reopens the issue from a finding.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from chargesight.cloud import diagnosis, recurring, related
from chargesight.cloud.config import AnalysisSection
from chargesight.cloud.issues import IssueKey, apply_cleared, new_issue_id
from chargesight.cloud.issues import fault_signature as issues_fault_signature
from chargesight.cloud.issuestore import (
    Conn,
    Pool,
    hardware_at,
    issue_from_row,
    load_for_key,
    lock_key,
    save_issue,
    site_data_end,
)
from chargesight.cloud.model import Issue, IssueEvent, Outage, RepeatSummary
from chargesight.common.messages import Fault, Hardware, RecoveryAttempt


class RepeatRules:
    """The repeat rule over the database: needs ``pool`` and ``config``."""

    pool: Pool
    config: AnalysisSection

    async def check_repeats(self, site_id: str, window_end: datetime | None = None) -> set[str]:
        """Charge points at ``site_id`` whose same fault keeps coming back (see ``repeat_issue``)."""
        cfg = self.config
        touched: set[str] = set()
        async with self.pool.connection() as conn, conn.transaction():
            window_end = window_end or await site_data_end(conn, site_id)
            if window_end is None:
                return touched
            start = window_end - timedelta(seconds=cfg.repeat_window_s)
            cur = await conn.execute(
                "SELECT charge_point_id, incident_id, fault_code, vendor_code, category, started_at,"
                " ended_at, fixed_by, connector_id, sessions_cut, energy_unmet_wh"
                " FROM self_resolved WHERE site_id = %s"
                " AND started_at > %s AND started_at <= %s AND charge_point_id IS NOT NULL"
                " AND kind <> 'connectivity'",
                (site_id, start, window_end),
            )
            episodes = [recurring.Episode(**r) for r in await cur.fetchall()]
            findings = {
                (
                    f.charge_point_id,
                    issues_fault_signature(f.category, f.fault_code, f.vendor_code),
                ): f
                for f in recurring.find_repeats(episodes, window_end, cfg.repeat_window_s)
            }
            cur = await conn.execute(
                "SELECT doc FROM issues WHERE site_id = %s AND kind = 'repeat'"
                " AND status <> 'resolved'",
                (site_id,),
            )
            open_keys = {
                (i.charge_point_id or "", i.signature)
                for i in map(issue_from_row, await cur.fetchall())
            }
            for cp, sig in sorted(set(findings) | open_keys):
                finding = findings.get((cp, sig))
                count = finding.count if finding else 0
                key = IssueKey(site_id, "charge_point", cp, None, sig)
                await lock_key(conn, key)
                current = await load_for_key(conn, key)
                if (
                    current is not None
                    and current.status != "resolved"
                    and current.kind != "repeat"
                ):
                    continue  # escalated: the edge's escalations and clears own that issue now
                open_now = current is not None and current.status != "resolved"
                failed = await self._component_failed(conn, cp, sig, finding, current, window_end)
                if failed is not None:
                    # the trips were the early signs of a failure that has its own issue now:
                    # one issue for the problem
                    if open_now:
                        assert current is not None
                        new = apply_cleared(current, f"superseded:{failed}", window_end)
                        if new is not None:
                            new.detail = f"superseded: the component failed (issue {failed})"
                            new.history[-1].event = "superseded"
                            new.history[-1].detail = new.detail
                            await save_issue(conn, new)
                            touched.add(new.id)
                    continue
                if finding is not None and current is not None and not open_now:
                    # resolved (cleared, or by an operator): only what came back since counts
                    since = current.ended_at or current.last_seen_at
                    back = [e for e in finding.episodes if e.started_at > since]
                    finding = dataclasses.replace(finding, episodes=back) if back else None
                    count = len(back)
                peers = 0
                if finding is not None and 2 <= count < cfg.repeat_min_incidents and not open_now:
                    peers = await self._repeat_peers(conn, finding, window_end)
                decision = recurring.repeat_decision(
                    count, cfg.repeat_min_incidents, open_now, peers
                )
                why = f"no episode in the last {cfg.repeat_window_s / 86400:g} days"
                if decision == "open" and current is not None and open_now:
                    known = set(current.incident_ids)
                    fresh = finding is not None and any(
                        e.incident_id not in known for e in finding.episodes
                    )
                    updated = await self._firmware_since(conn, current, window_end)
                    if updated and not fresh:  # the update came after the last episode
                        decision = "clear"
                        why = (
                            f"firmware updated from {current.hardware.firmware} to {updated}"
                            " after the last episode"
                        )
                if decision == "none":
                    continue
                if decision == "clear":
                    assert current is not None
                    new = apply_cleared(current, f"repeat:{window_end.isoformat()}", window_end)
                    if new is not None:
                        new.detail = why
                        new.history[-1].detail = new.detail
                        await save_issue(conn, new)
                        touched.add(new.id)
                    continue
                assert finding is not None
                # the hardware as the charge point reported it when the fault last came back
                # (its firmware may have been updated since)
                hw = await hardware_at(conn, cp, finding.episodes[-1].started_at)
                if hw is None:
                    cur = await conn.execute(
                        "SELECT vendor, model, firmware FROM chargers WHERE charge_point_id = %s",
                        (cp,),
                    )
                    hw = await cur.fetchone()
                issue = repeat_issue(current, site_id, sig, finding, cfg.repeat_window_s, hw or {})
                await save_issue(conn, issue)
                touched.add(issue.id)
        return touched

    async def _component_failed(
        self,
        conn: Conn,
        cp: str,
        signature: str,
        finding: recurring.RepeatFinding | None,
        current: Issue | None,
        as_of: datetime,
    ) -> str | None:
        """For repeating power-component trips: the id of the charge point's component failure
        issue when it has failed by ``as_of`` (and is not repaired yet), else None."""
        if finding is not None:
            fault = Fault(
                code=finding.fault_code, vendor_code=finding.vendor_code, category=finding.category
            )
        elif current is not None:
            fault = current.fault
        else:
            return None
        if not diagnosis.is_component_fault(fault):
            return None
        cur = await conn.execute(
            "SELECT id, doc FROM issues WHERE charge_point_id = %s AND kind = 'fault'"
            " AND signature <> %s AND started_at <= %s AND (ended_at IS NULL OR ended_at > %s)"
            " ORDER BY started_at",
            (cp, signature, as_of, as_of),
        )
        for row in await cur.fetchall():
            if diagnosis.is_component_fault(issue_from_row(row).fault):
                return str(row["id"])
        return None

    async def _firmware_since(self, conn: Conn, issue: Issue, as_of: datetime) -> str | None:
        """The firmware the issue's charge point reports now, when it differs from the issue's
        (the firmware it ran when the fault last came back)."""
        if not issue.hardware.firmware:
            return None
        row = await hardware_at(conn, issue.charge_point_id or "", as_of)
        now = None if row is None else row["firmware"]
        return str(now) if now and now != issue.hardware.firmware else None

    async def _repeating_units(
        self,
        conn: Conn,
        fault: tuple[str, str, str | None],
        model: str | None,
        since: datetime,
        until: datetime,
        exclude: str | None,
        min_incidents: int | None = None,
    ) -> list[dict[str, Any]]:
        """Charge points of ``model`` where the fault (category, code, vendor code) repeated.

        Repeated: ``min_incidents`` (default ``repeat_min_incidents``: the rule that opens a
        repeat issue) episodes within ``repeat_window_s`` at some point in ``(since, until]``.
        Each with its site, its latest episode, the firmware it ran then and its most episodes
        within one window (``peak``).
        """
        category, code, vendor_code = fault
        cur = await conn.execute(
            "WITH e AS (SELECT s.charge_point_id, s.site_id, s.started_at, count(*) OVER ("
            "  PARTITION BY s.charge_point_id ORDER BY s.started_at"
            "  RANGE BETWEEN %(w)s PRECEDING AND CURRENT ROW) AS n"
            " FROM self_resolved s WHERE s.category = %(cat)s AND s.fault_code = %(code)s"
            " AND s.vendor_code IS NOT DISTINCT FROM %(vc)s AND s.started_at > %(since)s"
            " AND s.started_at <= %(until)s AND s.charge_point_id IS NOT NULL"
            " AND s.charge_point_id <> %(cp)s),"
            " u AS (SELECT charge_point_id, max(site_id) AS site_id, max(started_at) AS started_at,"
            " max(n) AS peak FROM e GROUP BY 1 HAVING max(n) >= %(min)s)"
            " SELECT u.charge_point_id, u.site_id, u.started_at, u.peak, ci.firmware FROM u"
            " CROSS JOIN LATERAL (SELECT model, firmware FROM charger_intervals i"
            " WHERE i.charge_point_id = u.charge_point_id AND i.interval_start <= u.started_at"
            " ORDER BY i.interval_start DESC LIMIT 1) ci WHERE ci.model IS NOT DISTINCT FROM %(model)s",
            {
                "w": timedelta(seconds=self.config.repeat_window_s),
                "cat": category,
                "code": code,
                "vc": vendor_code,
                "since": since,
                "until": until,
                "cp": exclude or "",
                "min": min_incidents or self.config.repeat_min_incidents,
                "model": model,
            },
        )
        return list(await cur.fetchall())

    async def _repeat_peers(
        self, conn: Conn, finding: recurring.RepeatFinding, as_of: datetime
    ) -> int:
        """Other units of this one's model and firmware where the same fault repeated."""
        hw = await hardware_at(conn, finding.charge_point_id, finding.episodes[-1].started_at)
        if hw is None or hw["model"] is None:
            return 0
        units = await self._repeating_units(
            conn,
            (finding.category, finding.fault_code, finding.vendor_code),
            hw["model"],
            as_of - timedelta(days=self.config.related_window_days),
            as_of,
            finding.charge_point_id,
        )
        return sum(1 for u in units if u["firmware"] == hw["firmware"])

    async def _repeat_hits(
        self, conn: Conn, issue: Issue, since: datetime
    ) -> list[related.SignatureHit]:
        """Other charge points of the model with the same fault: on the same firmware, once is
        the same signature in the recent past; on another firmware, only where it repeated."""
        f = issue.fault
        key = (f.category, f.code, f.vendor_code)
        model, cp, until = issue.hardware.model, issue.charge_point_id, issue.last_seen_at
        units = [
            u
            for u in await self._repeating_units(
                conn, key, model, since, until, cp, min_incidents=RELATED_MIN_EPISODES
            )
            if u["peak"] >= self.config.repeat_min_incidents
            or u["firmware"] == issue.hardware.firmware
        ]
        if not units:
            return []
        cur = await conn.execute(
            "SELECT DISTINCT ON (charge_point_id) charge_point_id, id FROM issues"
            " WHERE signature = %s AND charge_point_id = ANY(%s)"
            " ORDER BY charge_point_id, last_seen_at DESC",
            (issue.signature, [u["charge_point_id"] for u in units]),
        )
        ids = {str(r["charge_point_id"]): str(r["id"]) for r in await cur.fetchall()}
        return [
            related.SignatureHit(
                u["charge_point_id"],
                u["site_id"],
                u["firmware"],
                u["started_at"],
                ids.get(u["charge_point_id"]),
            )
            for u in units
        ]

    async def _repeat_firmware_evidence(
        self, conn: Conn, issue: Issue
    ) -> diagnosis.FirmwareEvidence:
        """Other units of the model where this fault repeated, by the firmware they ran then."""
        f = issue.fault
        since = issue.last_seen_at - timedelta(days=self.config.related_window_days)
        units_rep = await self._repeating_units(
            conn,
            (f.category, f.code, f.vendor_code),
            issue.hardware.model,
            since,
            issue.last_seen_at,
            issue.charge_point_id,
        )
        failures: dict[str, int] = defaultdict(int)
        for u in units_rep:
            failures[str(u["firmware"] or "?")] += 1
        cur = await conn.execute(
            "SELECT coalesce(firmware, '?') AS fw, count(DISTINCT charge_point_id) AS n"
            " FROM charger_daily WHERE model = %s AND day >= %s::date GROUP BY 1",
            (issue.hardware.model, since.date()),
        )
        units = {str(r["fw"]): int(r["n"]) for r in await cur.fetchall()}
        return diagnosis.FirmwareEvidence(dict(failures), units, model=issue.hardware.model)


RELATED_MIN_EPISODES = 1
"""Episodes of the same fault signature (in the related window) that make another unit of the
model and firmware related to a repeat issue: like an escalation, one is the same fault in the
recent past."""
MAX_REPEAT_OUTAGES = 200  # episodes kept on a repeating-fault issue (the newest)


def repeat_issue(
    current: Issue | None,
    site_id: str,
    signature: str,
    finding: recurring.RepeatFinding,
    window_s: int,
    hardware: dict[str, Any],
) -> Issue:
    """Open, update or reopen one charge point's repeating-fault issue from ``finding``.

    Each episode is an outage of the charge point (it was faulted until the reset or the
    fault cleared), so revenue and availability count them like any other outage.
    """
    fresh = current is None or current.status == "resolved"
    known = set() if fresh or current is None else set(current.incident_ids)
    prev = None if fresh or current is None else current.repeats
    new_eps = [e for e in finding.episodes if e.incident_id not in known]
    at = finding.window_end
    summary = RepeatSummary(
        episodes=finding.count,
        window_s=window_s,
        window_start=finding.window_start,
        window_end=finding.window_end,
        fixed_by=finding.fixed_by,
        total_episodes=len(new_eps) + (prev.total_episodes if prev else 0),
        units_same_fault=prev.units_same_fault if prev else 0,
    )
    outages = [
        Outage(
            started_at=e.started_at,
            ended_at=e.ended_at,
            sessions_cut=e.sessions_cut,
            energy_unmet_wh=e.energy_unmet_wh,
        )
        for e in new_eps
    ]
    attempts = [
        RecoveryAttempt(action=e.fixed_by, at=e.ended_at, result="recovered")
        for e in new_eps
        if e.fixed_by not in ("self", "itself")
    ]
    detail = f"{finding.count} episodes of {finding.fault_code} in {window_s // 3600} h"
    connectors = {e.connector_id for e in finding.episodes}
    if fresh:
        reopened = current is not None
        first = finding.episodes[0]
        return Issue(
            id=current.id if current else new_issue_id(),
            site_id=site_id,
            charge_point_id=finding.charge_point_id,
            connector_id=None,
            scope="charge_point",
            kind="repeat",
            signature=signature,
            fault=Fault(
                code=finding.fault_code,
                vendor_code=finding.vendor_code,
                category=finding.category,
            ),
            hardware=Hardware(
                vendor=hardware.get("vendor"),
                model=hardware.get("model"),
                firmware=hardware.get("firmware"),
            ),
            started_at=first.started_at,
            first_seen_at=current.first_seen_at if current else at,
            last_seen_at=at,
            outages=outages[-MAX_REPEAT_OUTAGES:],
            recovery_attempts=attempts[-50:],
            incident_ids=[e.incident_id for e in new_eps][-MAX_REPEAT_OUTAGES:],
            repeats=summary,
            detail=detail
            + (f" on connector(s) {sorted(c for c in connectors if c)}" if any(connectors) else ""),
            reopened=(current.reopened + 1) if current else 0,
            operator_actions=current.operator_actions if current else [],
            history=[
                *(current.history if current else []),
                IssueEvent(at=at, event="reopened" if reopened else "opened", detail=detail),
            ],
        )
    assert current is not None
    issue = current.model_copy(deep=True)
    issue.repeats = summary
    issue.outages = (issue.outages + outages)[-MAX_REPEAT_OUTAGES:]
    issue.recovery_attempts = (issue.recovery_attempts + attempts)[-50:]
    issue.incident_ids = (issue.incident_ids + [e.incident_id for e in new_eps])[
        -MAX_REPEAT_OUTAGES:
    ]
    issue.last_seen_at = max(issue.last_seen_at, at)
    issue.detail = detail
    if hardware.get("model"):
        issue.hardware = Hardware(
            vendor=hardware.get("vendor"),
            model=hardware.get("model"),
            firmware=hardware.get("firmware"),
        )
    if new_eps:
        issue.history.append(IssueEvent(at=at, event="updated", detail=detail))
        del issue.history[:-50]
    return issue
