"""The analysis engine: applies the pure analysis functions to the stored data.

It turns new escalations and digests into issues (lifecycle in
:mod:`.issues`), raises site issues for recurring small problems
(:mod:`.recurring`) and issues for one unit's fault that keeps coming back
(:mod:`.repeats`), and enriches issues with related units, revenue lost,
recommended action, diagnosis and priority. Every "now" is the latest data
time of the site concerned, never the wall clock — except operator actions,
which happen when the operator acts.

Each issue write holds a transaction-level advisory lock on the issue key
(:mod:`.issuestore`), so several collector replicas can run the engine side
by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import psycopg

from chargesight.cloud import diagnosis, fleet, foresight, recurring, related, revenue
from chargesight.cloud.config import AnalysisSection
from chargesight.cloud.ingest import DigestSummary
from chargesight.cloud.issues import (
    IssueKey,
    apply_cleared,
    apply_escalation,
    issue_key,
    new_issue_id,
)
from chargesight.cloud.issuestore import (
    Conn,
    Pool,
    applied_before,
    issue_from_row,
    load_for_key,
    load_issue,
    lock_key,
    save_issue,
    site_data_end,
)
from chargesight.cloud.model import (
    Issue,
    IssueEvent,
    RecurringSummary,
    RevenueLost,
)
from chargesight.cloud.repeats import RepeatRules
from chargesight.common.logs import get_logger
from chargesight.common.messages import Escalation, Fault

log = get_logger(__name__)

RECURRING_SIGNATURE = "recurring|site"
RAPID_W = 50_000  # UK regulations: a rapid charge point delivers 50 kW or more
EXCLUDED_WORDS = ("grid", "utility", "maintenance", "vandal", "power_outage")


@dataclass(frozen=True, slots=True)
class Cleared:
    site_id: str
    incident_id: str
    at: datetime


class Engine(RepeatRules):
    """Runs the analysis over the database behind ``pool``."""

    def __init__(self, pool: Pool, config: AnalysisSection) -> None:
        self.pool = pool
        self.config = config
        self.fleet_cache: dict[str, Any] | None = None
        self.fleet_dirty = False
        self.fleet_computed_at = 0.0
        self.timescale = False
        self._fleet_task: asyncio.Task[None] | None = None
        self._enriched_at: dict[str, float] = {}  # issue id → time.monotonic() of enrichment
        self._early_rates: dict[tuple[date, date], tuple[float, float | None]] = {}

    async def fleet_view(self, max_age_s: float = 5.0) -> dict[str, Any]:
        """The fleet view: computed on first use, then served from cache and recomputed in the
        background when new data arrived and the cached one is ``max_age_s`` old."""
        if self.fleet_cache is None:
            return await self.fleet_models()
        age = time.monotonic() - self.fleet_computed_at
        if (
            self.fleet_dirty
            and age >= max_age_s
            and (self._fleet_task is None or self._fleet_task.done())
        ):
            self._fleet_task = asyncio.create_task(self._refresh_fleet())
        return self.fleet_cache

    async def _refresh_fleet(self) -> None:
        try:
            await self.fleet_models()
        except psycopg.Error as exc:
            log.warning("fleet view refresh failed", error=str(exc))

    async def close(self) -> None:
        """Wait for a background fleet refresh (the owner of that task)."""
        if self._fleet_task is not None:
            with contextlib.suppress(Exception):
                await self._fleet_task

    # ---------------------------------------------------------------- lifecycle

    async def on_stored(
        self,
        escalations: Sequence[Escalation],
        digests: Sequence[DigestSummary],
        *,
        recurring_check: bool = True,
    ) -> set[str]:
        """Apply a stored batch: issue lifecycle, recurring problems, then enrichment."""
        if digests or escalations:
            self.fleet_dirty = True
        cleared = [
            Cleared(d.site_id, inc, d.interval_end) for d in digests for inc in d.cleared_incidents
        ]
        touched = await self.apply_events(escalations, cleared)
        if recurring_check and digests:
            # only sites with small incidents in this batch, or a recurring issue still open
            # (which may clear as the window moves), need the recurring rule evaluated
            check = {d.site_id for d in digests if d.small_incidents}
            batch_sites = {d.site_id for d in digests}
            check |= await self._sites_with_open(batch_sites, "recurring")
            for site in sorted(check):
                iid = await self.check_recurring(site)
                if iid:
                    touched.add(iid)
            # one charge point's same fault, cleared again and again
            repeat = {d.site_id for d in digests if d.fault_blips}
            repeat |= await self._sites_with_open(batch_sites, "repeat")
            for site in sorted(repeat):
                touched |= await self.check_repeats(site)
        ids = await self._with_signature_peers(touched) if touched else []
        sites = sorted({d.site_id for d in digests})
        if sites:
            # new data time at these sites: the running revenue of their open issues moves on
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT id FROM issues WHERE site_id = ANY(%s) AND status <> 'resolved'",
                    (sites,),
                )
                now = time.monotonic()
                stale = {
                    str(r["id"])
                    for r in await cur.fetchall()
                    if now - self._enriched_at.get(str(r["id"]), -1e9)
                    >= self.config.running_total_every_s
                }
                ids = sorted(set(ids) | stale)
        await self.enrich_many(ids)
        return touched

    async def apply_events(
        self, escalations: Sequence[Escalation], cleared: Sequence[Cleared]
    ) -> set[str]:
        """Issue lifecycle over escalations and cleared incidents, in data-time order."""
        events: list[tuple[datetime, int, Escalation | Cleared]] = []
        events.extend((e.sent_at, 0, e) for e in escalations)
        events.extend((c.at, 1, c) for c in cleared)
        events.sort(key=lambda x: (x[0], x[1]))
        touched: set[str] = set()
        for _, _, ev in events:
            if isinstance(ev, Escalation):
                iid = await self.apply_escalation(ev)
            else:
                iid = await self.apply_cleared(ev)
            if iid:
                touched.add(iid)
        return touched

    async def apply_escalation(self, esc: Escalation) -> str | None:
        key = issue_key(esc)
        async with self.pool.connection() as conn, conn.transaction():
            await lock_key(conn, key)
            if await applied_before(conn, esc.message_id):
                return None  # analysed again (catch-up after a crash): counted once
            current = await load_for_key(conn, key)
            new = apply_escalation(current, esc, new_issue_id)
            if new is None:
                return None
            await save_issue(conn, new)
            return new.id

    async def apply_cleared(self, ev: Cleared) -> str | None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT issue_id FROM issue_incidents WHERE site_id = %s AND incident_id = %s",
                (ev.site_id, ev.incident_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            issue = await load_issue(conn, str(row["issue_id"]), for_update=True)
            if issue is None:
                return None
            new = apply_cleared(issue, ev.incident_id, ev.at)
            if new is None:
                return None
            await save_issue(conn, new)
            return new.id

    # ---------------------------------------------------------------- recurring

    async def check_recurring(self, site_id: str, window_end: datetime | None = None) -> str | None:
        cfg = self.config
        key = IssueKey(site_id, "site", None, None, RECURRING_SIGNATURE)
        async with self.pool.connection() as conn, conn.transaction():
            window_end = window_end or await site_data_end(conn, site_id)
            if window_end is None:
                return None
            start = window_end - timedelta(seconds=cfg.recurring_window_s)
            cur = await conn.execute(
                "SELECT charge_point_id, kind, category, started_at, ended_at FROM self_resolved"
                " WHERE site_id = %s AND started_at > %s AND started_at <= %s",
                (site_id, start, window_end),
            )
            blips = [recurring.Blip(**r) for r in await cur.fetchall()]
            cur = await conn.execute(
                "SELECT charge_point_id, interval_start, interval_end, disconnects, self_resolved"
                " FROM charger_intervals WHERE site_id = %s AND interval_end > %s"
                " AND interval_end <= %s AND (disconnects > 0 OR self_resolved > 0)",
                (site_id, start, window_end),
            )
            counters = [recurring.CounterRow(**r) for r in await cur.fetchall()]
            finding = recurring.count_recurring(
                site_id, blips, counters, window_end, cfg.recurring_window_s
            )
            await lock_key(conn, key)
            current = await load_for_key(conn, key)
            open_now = current is not None and current.status != "resolved"
            site_rate = fleet_rate = None
            if (
                cfg.recurring_min_ratio_to_fleet > 0
                and finding.incidents >= cfg.recurring_min_incidents / 2
            ):
                site_rate, fleet_rate = await self._small_incident_rates(
                    conn, site_id, start, window_end
                )
            decision = recurring.recurring_decision(
                finding,
                cfg.recurring_min_incidents,
                open_now,
                site_rate=site_rate,
                fleet_rate=fleet_rate,
                min_ratio=cfg.recurring_min_ratio_to_fleet,
            )
            if decision == "none":
                return None
            if decision == "clear":
                assert current is not None
                new = apply_cleared(current, f"recurring:{window_end.isoformat()}", window_end)
                if new is None:
                    return None
                await save_issue(conn, new)
                return new.id
            issue = recurring_issue(current, finding, cfg.recurring_window_s)
            await save_issue(conn, issue)
            return issue.id

    async def _small_incident_rates(
        self, conn: Conn, site_id: str, start: datetime, end: datetime
    ) -> tuple[float | None, float | None]:
        """Small incidents per charge point in the window: this site's, and the fleet's reference."""
        cur = await conn.execute(
            "SELECT site_id, sum(greatest(disconnects, self_resolved))::float8"
            " / count(DISTINCT charge_point_id) AS rate FROM charger_daily"
            " WHERE day >= %s::date AND day <= %s::date GROUP BY site_id",
            (start.date(), end.date()),
        )
        rates = {str(r["site_id"]): float(r["rate"] or 0.0) for r in await cur.fetchall()}
        if not rates:
            return None, None
        return rates.get(site_id), recurring.fleet_reference_rate(list(rates.values()))

    async def recurring_open(self, site_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM issues WHERE site_id = %s AND signature = %s AND status <> 'resolved'",
                (site_id, RECURRING_SIGNATURE),
            )
            return await cur.fetchone() is not None

    async def _sites_with_open(self, sites: Iterable[str], kind: str) -> set[str]:
        """Of ``sites``, those with an issue of ``kind`` still open (it may clear as the window
        moves on, so its rule is evaluated even when the batch has nothing new for it)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT site_id FROM issues WHERE kind = %s"
                " AND status <> 'resolved' AND site_id = ANY(%s)",
                (kind, sorted(sites)),
            )
            return {str(r["site_id"]) for r in await cur.fetchall()}

    # ---------------------------------------------------------------- enrichment

    async def _with_signature_peers(self, ids: Iterable[str]) -> list[str]:
        """``ids`` plus unresolved issues sharing a fault signature with them (related is mutual)."""
        ids = sorted(set(ids))
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT p.id FROM issues i JOIN issues p ON p.signature = i.signature"
                " AND p.id <> i.id AND p.status <> 'resolved' AND p.scope <> 'site'"
                " AND p.doc->'hardware'->>'model' IS NOT DISTINCT FROM i.doc->'hardware'->>'model'"
                " WHERE i.id = ANY(%s) AND i.scope <> 'site'",
                (ids,),
            )
            peers = [str(r["id"]) for r in await cur.fetchall()]
        return sorted(set(ids) | set(peers))

    async def enrich_many(self, ids: Iterable[str]) -> None:
        for iid in ids:
            try:
                await self.enrich(iid)
            except psycopg.Error as exc:
                log.warning("enrichment failed", issue_id=iid, error=str(exc))

    async def refresh_open(self) -> int:
        """Re-enrich every unresolved issue (running revenue totals, new related units)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM issues WHERE status <> 'resolved' ORDER BY id")
            ids = [str(r["id"]) for r in await cur.fetchall()]
        await self.enrich_many(ids)
        return len(ids)

    async def enrich(self, issue_id: str) -> Issue | None:
        self._enriched_at[issue_id] = time.monotonic()
        async with self.pool.connection() as conn, conn.transaction():
            issue = await load_issue(conn, issue_id, for_update=True)
            if issue is None:
                return None
            out = await self._enriched(conn, issue)
            await save_issue(conn, out)
            return out

    async def _enriched(self, conn: Conn, issue: Issue) -> Issue:
        out = issue.model_copy(deep=True)
        cur = await conn.execute(
            "SELECT currency, price_per_kwh, last_data_at FROM sites WHERE site_id = %s",
            (issue.site_id,),
        )
        site = await cur.fetchone() or {
            "currency": None,
            "price_per_kwh": None,
            "last_data_at": None,
        }
        as_of: datetime = max(
            x for x in (site["last_data_at"], issue.last_seen_at) if x is not None
        )
        if out.ended_at is not None:
            as_of = (
                min(as_of, max(out.ended_at, out.started_at)) if out.status == "resolved" else as_of
            )
        # ---- revenue
        rev = await self._revenue(conn, out, as_of, site)
        out.revenue_lost = rev
        # ---- related
        out.related = await self._related(conn, out, as_of) if out.scope != "site" else []
        # ---- action and diagnosis
        fw_evidence = await self._firmware_evidence(conn, out)
        if out.repeats is not None and fw_evidence is not None:
            same = fw_evidence.failures_by_firmware.get(out.hardware.firmware or "?", 0)
            out.repeats.units_same_fault = same
        prior = await self._prior_fixes(conn, out)
        action, why = diagnosis.recommend(out, fw_evidence, prior)
        out.recommended_action = action
        out.diagnosis = diagnosis.diagnosis_text(out, action, why)
        # a rate over at least an hour: a few sessions cut by minutes-long episodes (a repeating
        # fault) are not a site losing money by the hour
        hours = max(rev.outage_hours, 1.0) if rev else 0.0
        per_hour = rev.amount / hours if rev and hours > 0 else 0.0
        sess = rev.lost_sessions / hours if rev and hours > 0 else 0.0
        out.priority = diagnosis.priority(out, per_hour, sess)
        return out

    async def _site_usage(
        self, conn: Conn, site_id: str, since: datetime, until: datetime
    ) -> list[revenue.IntervalUsage]:
        cur = await conn.execute(
            "SELECT charge_point_id, interval_start, interval_end, sessions_started, energy_wh,"
            " connectors, sessions_ended_early, max_power_w, occupied_s FROM charger_intervals"
            " WHERE site_id = %s AND interval_start >= %s AND interval_start < %s",
            (site_id, since, until),
        )
        return [revenue.IntervalUsage(**r) for r in await cur.fetchall()]

    @staticmethod
    def _issue_outage(issue: Issue, as_of: datetime) -> revenue.Outage:
        """The capacity ``issue`` takes away at its site: its outages, on which connectors."""
        spans = [
            revenue.Span(
                o.started_at,
                o.ended_at or max(as_of, o.started_at),
                o.sessions_cut,
                o.energy_unmet_wh,
            )
            for o in issue.outages
        ]
        if not revenue.out_of_service(issue.kind, issue.fault.code):
            units: dict[str, int] = {}
        elif issue.scope == "site":
            units = dict.fromkeys(issue.chargers, 0)
        elif issue.charge_point_id is None:
            units = {}
        else:
            units = {issue.charge_point_id: 1 if issue.scope == "connector" else 0}
        return revenue.Outage(
            spans,
            units,
            tried=revenue.tried_by_drivers(issue.kind, issue.fault.code),
            label=issue.id,
        )

    async def _overlapping_outages(
        self, conn: Conn, issue: Issue, since: datetime, as_of: datetime
    ) -> list[revenue.Outage]:
        """Other issues' outages at the same site that overlap [since, as_of): the drivers they
        turn away together with ``issue`` are shared between them, and the hours they took
        capacity away are no clean reference for expected arrivals."""
        cur = await conn.execute(
            "SELECT doc FROM issues WHERE site_id = %s AND id <> %s AND started_at < %s"
            " AND (ended_at IS NULL OR ended_at > %s) AND kind NOT IN ('recurring', 'predictive')"
            " ORDER BY id",
            (issue.site_id, issue.id, as_of, since),
        )
        out = []
        for row in await cur.fetchall():
            o = self._issue_outage(issue_from_row(row), as_of)
            spans = [s for s in o.spans if s.ended_at > since and s.started_at < as_of]
            if spans and o.connectors:
                out.append(dataclasses.replace(o, spans=spans))
        return out

    async def _revenue(
        self, conn: Conn, issue: Issue, as_of: datetime, site: dict[str, Any]
    ) -> RevenueLost:
        weeks = self.config.revenue_trailing_weeks
        if issue.recurring is not None:
            return await self._recurring_revenue(conn, issue, site)
        own = self._issue_outage(issue, as_of)
        first = min((s.started_at for s in own.spans), default=issue.started_at)
        history = await self._site_usage(conn, issue.site_id, first - timedelta(weeks=weeks), as_of)
        if issue.scope == "site" and not own.connectors:
            own = dataclasses.replace(
                own, connectors=dict.fromkeys(sorted({r.charge_point_id for r in history}), 0)
            )
        early_rate = None
        if issue.scope != "site" and issue.kind in ("fault", "performance"):
            early_rate = await self._fleet_early_rate(conn, first - timedelta(weeks=weeks), first)
        others = (  # from the reference weeks on: they are no clean reference either
            await self._overlapping_outages(conn, issue, first - timedelta(weeks=weeks), as_of)
            if own.spans
            else []
        )
        est = revenue.estimate_revenue_lost(
            [],
            [],
            history,
            site["price_per_kwh"],
            site["currency"],
            weeks=weeks,
            fleet_early_rate=early_rate,
            own=[own],
            overlapping=others,
        )
        return est.as_model(as_of)

    async def _fleet_early_rate(self, conn: Conn, since: datetime, until: datetime) -> float | None:
        """A healthy charge point's early-end rate over whole days in [since, until)."""
        key = (since.date(), until.date())
        hit = self._early_rates.get(key)
        if hit is not None and time.monotonic() - hit[0] < 600.0:
            return hit[1]
        cur = await conn.execute(
            "SELECT sum(sessions_started) AS s, sum(sessions_ended_early) AS e FROM charger_daily"
            " WHERE day >= %s AND day < %s GROUP BY charge_point_id",
            key,
        )
        rate = revenue.typical_early_rate(
            (int(r["s"] or 0), int(r["e"] or 0)) for r in await cur.fetchall()
        )
        if len(self._early_rates) > 1000:
            self._early_rates.clear()
        self._early_rates[key] = (time.monotonic(), rate)  # a fleet median: stable for minutes
        return rate

    async def _recurring_revenue(
        self, conn: Conn, issue: Issue, site: dict[str, Any]
    ) -> RevenueLost:
        assert issue.recurring is not None
        weeks = self.config.revenue_trailing_weeks
        r = issue.recurring
        since = min(issue.started_at, r.window_start)  # a running total since the problem began
        cur = await conn.execute(
            "SELECT charge_point_id, kind, started_at, ended_at, sessions_cut, energy_unmet_wh"
            " FROM self_resolved WHERE site_id = %s AND started_at >= %s AND started_at <= %s"
            " AND charge_point_id IS NOT NULL",
            (issue.site_id, since, r.window_end),
        )
        rows = await cur.fetchall()
        spans = [
            revenue.Span(
                row["started_at"], row["ended_at"], row["sessions_cut"], row["energy_unmet_wh"]
            )
            for row in rows
        ]
        # what the edge saw the incidents cut short (every incident measured, else the estimate
        # from early ends below): sessions, the energy their drivers still wanted, unestimated
        measured = bool(spans) and all(sp.sessions_cut is not None for sp in spans)
        cut_n, cut_wh, cut_unpriced = revenue.measured_cuts([revenue.Outage(spans, {})])
        offline_h = 0.0
        by_cp: dict[str, list[revenue.Span]] = defaultdict(list)
        for row, span in zip(rows, spans, strict=True):
            if row["kind"] == "connectivity":
                # offline for minutes, a unit may well still charge (local authorisation): the
                # drivers it failed are in the failed starts below, not in its capacity
                offline_h += (span.ended_at - span.started_at).total_seconds() / 3600.0
                continue
            by_cp[str(row["charge_point_id"])].append(span)
        history = await self._site_usage(
            conn, issue.site_id, since - timedelta(weeks=weeks), r.window_end
        )
        own = [revenue.Outage(sp, {cp: 0}, label=cp) for cp, sp in sorted(by_cp.items())]
        n = len(rows)
        est = revenue.estimate_revenue_lost(
            [],
            [],
            history,
            site["price_per_kwh"],
            site["currency"],
            weeks=weeks,
            own=own,
            cut_at_start=False,  # the sessions blips cut short are counted below, site-wide
            reference_before_outage=False,  # minutes-long blips never suppressed their reference
        )
        amount, sessions, hours = est.amount, est.lost_sessions, est.outage_hours + offline_h
        kwh = est.kwh_per_session
        price = site["price_per_kwh"] or 0.0
        if kwh is None:
            kwh = revenue.wanted_energy_kwh(history)
        # sessions the blips cut short or stopped from starting, beyond the fleet's normal rate
        cur = await conn.execute(
            "SELECT site_id = %s AS mine, sum(sessions_started) AS started,"
            " sum(sessions_ended_early) AS early, sum(sessions_failed) AS failed"
            " FROM charger_daily WHERE day >= %s::date AND day <= %s::date GROUP BY 1",
            (issue.site_id, since.date(), r.window_end.date()),
        )
        totals = {bool(x["mine"]): x for x in await cur.fetchall()}
        excess = {"early": 0.0, "failed": 0.0}
        mine, rest = totals.get(True), totals.get(False)
        if mine is not None:
            healthy = await self._fleet_early_rate(conn, since, r.window_end + timedelta(days=1))
            for col in ("early", "failed"):
                rate = (  # no other site to compare with: every one counts
                    float(rest[col] or 0) / max(1.0, float(rest["started"] or 0))
                    if rest is not None
                    else 0.0
                )
                if col == "early" and healthy is not None:
                    rate = healthy
                normal = rate * float(mine["started"] or 0)
                excess[col] = max(0.0, float(mine[col] or 0) - normal)
        # a driver whose start fails tries again; one who fails twice leaves
        gave_up = excess["failed"] / 2.0
        head = (
            f"the {n} self-resolved incidents with a known duration since the problem began "
            f"({hours:.1f} charger-hours out, {offline_h:.1f} of them offline)"
            + (f", faults priced together: {est.method}" if by_cp else "")
            + f"; plus {gave_up:.1f} drivers who left after a second failed start "
            f"({excess['failed']:.1f} failed starts beyond the fleet's rate over the same days), "
            f"each at a mean {kwh or 0.0:.1f} kWh; plus "
        )
        amount += gave_up * (kwh or 0.0) * price
        sessions += gave_up
        if measured:
            interrupted = (cut_wh / 1000.0 + cut_unpriced / 2.0 * (kwh or 0.0)) * price
            cut_sessions = cut_n / 2.0  # a session cut short counts half, as below
            method = head + (
                f"{cut_n} session(s) the incidents cut short, as the edge saw: {cut_wh / 1000.0:.1f}"
                " kWh their drivers still wanted (from the car's state of charge, else from the "
                "unit's past sessions)"
                + (f", {cut_unpriced} of them at half a mean session" if cut_unpriced else "")
            )
        else:
            interrupted = excess["early"] / 2.0 * (kwh or 0.0) * price
            cut_sessions = excess["early"] / 2.0
            method = head + (
                f"{excess['early']:.1f} sessions cut short beyond a healthy unit's early-end rate "
                "(the fleet's lower quartile) over the same days, each at half a mean session"
            )
        return RevenueLost(
            amount=round(amount + interrupted, 2),
            currency=site["currency"],
            method=method,
            lost_sessions=round(sessions + cut_sessions, 2),
            outage_hours=round(hours, 2),
            as_of=r.window_end,
        )

    async def _related(self, conn: Conn, issue: Issue, as_of: datetime) -> list[Any]:
        cfg = self.config
        f, hw = issue.fault, issue.hardware
        since = as_of - timedelta(days=cfg.related_window_days)
        cur = await conn.execute(
            "SELECT e.charge_point_id, e.site_id, e.hw_firmware AS firmware, e.started_at,"
            " ii.issue_id FROM escalations e LEFT JOIN issue_incidents ii"
            " ON ii.site_id = e.site_id AND ii.incident_id = e.incident_id"
            " WHERE e.category = %s AND e.fault_code = %s AND e.vendor_code IS NOT DISTINCT FROM %s"
            " AND e.hw_vendor IS NOT DISTINCT FROM %s AND e.hw_model IS NOT DISTINCT FROM %s"
            " AND e.started_at >= %s AND e.charge_point_id IS NOT NULL AND e.charge_point_id <> %s",
            (
                f.category,
                f.code,
                f.vendor_code,
                hw.vendor,
                hw.model,
                since,
                issue.charge_point_id or "",
            ),
        )
        hits = [related.SignatureHit(**r) for r in await cur.fetchall()]
        if issue.kind == "repeat":
            hits.extend(await self._repeat_hits(conn, issue, since))
        out = related.related_by_signature(
            issue.charge_point_id, hw.firmware, f.code, f.vendor_code, hw.model, hits
        )
        if issue.charge_point_id and hw.model:
            out.extend(
                await self._related_symptoms(conn, issue, as_of, {r.charge_point_id for r in out})
            )
        return out

    async def _window_stats(
        self,
        conn: Conn,
        where: str,
        params: tuple[Any, ...],
        r0: datetime,
        r1: datetime,
        b0: datetime,
    ) -> dict[str, tuple[related.WindowStats, related.WindowStats]]:
        agg = (
            "sum(extract(epoch FROM interval_end - interval_start) / 3600.0) FILTER (WHERE {w}) AS {p}hours,"
            " sum(sessions_started) FILTER (WHERE {w}) AS {p}started,"
            " sum(sessions_failed) FILTER (WHERE {w}) AS {p}failed,"
            " sum(sessions_ended_early) FILTER (WHERE {w}) AS {p}early,"
            " sum(faults) FILTER (WHERE {w}) AS {p}faults,"
            " sum(disconnects) FILTER (WHERE {w}) AS {p}disc,"
            " avg(max_power_w / nullif(rated_power_w, 0)) FILTER (WHERE {w}) AS {p}power,"
            " avg(mean_temperature_c) FILTER (WHERE {w}) AS {p}temp"
        )
        recent_w = "interval_start >= %(r0)s"
        base_w = "interval_start < %(r0)s"
        sql = (
            "SELECT charge_point_id, max(site_id) AS site_id, "
            + agg.format(w=recent_w, p="r_")
            + ", "
            + agg.format(w=base_w, p="b_")
            + f" FROM charger_intervals WHERE {where} AND interval_start >= %(b0)s"
            " AND interval_start < %(r1)s GROUP BY charge_point_id"
        )
        args: dict[str, Any] = {"r0": r0, "r1": r1, "b0": b0}
        for i, p in enumerate(params):
            args[f"p{i}"] = p
        cur = await conn.execute(sql.encode(), args)
        out = {}
        for row in await cur.fetchall():

            def ws(p: str, row: dict[str, Any] = row) -> related.WindowStats:
                return related.WindowStats(
                    charge_point_id=row["charge_point_id"],
                    site_id=row["site_id"],
                    hours=float(row[f"{p}hours"] or 0.0),
                    sessions_started=float(row[f"{p}started"] or 0),
                    sessions_failed=float(row[f"{p}failed"] or 0),
                    sessions_ended_early=float(row[f"{p}early"] or 0),
                    faults=float(row[f"{p}faults"] or 0),
                    disconnects=float(row[f"{p}disc"] or 0),
                    power_ratio=None if row[f"{p}power"] is None else float(row[f"{p}power"]),
                    mean_temperature_c=None if row[f"{p}temp"] is None else float(row[f"{p}temp"]),
                )

            recent, base = ws("r_"), ws("b_")
            if recent.hours > 0 and base.hours > 0:
                out[str(row["charge_point_id"])] = (recent, base)
        return out

    async def _related_symptoms(
        self, conn: Conn, issue: Issue, as_of: datetime, exclude: set[str]
    ) -> list[Any]:
        cfg = self.config
        look = timedelta(hours=cfg.symptom_lookback_h)
        base = timedelta(days=14)
        start = issue.outages[0].started_at if issue.outages else issue.started_at
        mine = await self._window_stats(
            conn,
            "charge_point_id = %(p0)s",
            (issue.charge_point_id,),
            start - look,
            start,
            start - look - base,
        )
        if issue.charge_point_id not in mine:
            return []
        vec = related.symptom_vector(*mine[issue.charge_point_id])
        others = await self._window_stats(
            conn,
            "model = %(p0)s",
            (issue.hardware.model,),
            as_of - look,
            as_of,
            as_of - look - base,
        )
        return related.related_by_symptoms(
            vec, issue.charge_point_id or "", list(others.values()), exclude=exclude
        )

    async def _recurring_firmware_evidence(
        self, conn: Conn, issue: Issue
    ) -> diagnosis.FirmwareEvidence | None:
        """Self-resolved faults in the recurring window, by firmware of the model most affected."""
        assert issue.recurring is not None
        r = issue.recurring
        cur = await conn.execute(
            "SELECT c.model, coalesce(c.firmware, '?') AS fw, count(*) AS n FROM self_resolved s"
            " JOIN chargers c ON c.charge_point_id = s.charge_point_id WHERE s.site_id = %s"
            " AND s.started_at > %s AND s.started_at <= %s AND c.model IS NOT NULL"
            " AND s.kind <> 'connectivity' AND s.category <> 'connectivity' GROUP BY 1, 2",
            (issue.site_id, r.window_start, r.window_end),
        )
        rows = [(str(x["model"]), str(x["fw"]), int(x["n"])) for x in await cur.fetchall()]
        if not rows:
            return None
        by_model: dict[str, int] = defaultdict(int)
        for m, _, n in rows:
            by_model[m] += n
        model = max(by_model.items(), key=lambda x: x[1])[0]
        failures = {fw: n for m, fw, n in rows if m == model}
        focus = max(failures.items(), key=lambda x: x[1])[0]
        cur = await conn.execute(
            "SELECT coalesce(firmware, '?') AS fw, count(*) AS n FROM chargers WHERE model = %s"
            " GROUP BY 1",
            (model,),
        )
        units = {str(x["fw"]): int(x["n"]) for x in await cur.fetchall()}
        return diagnosis.FirmwareEvidence(failures, units, model=model, focus=focus)

    async def _firmware_evidence(
        self, conn: Conn, issue: Issue
    ) -> diagnosis.FirmwareEvidence | None:
        f, hw = issue.fault, issue.hardware
        if issue.recurring is not None:
            return await self._recurring_firmware_evidence(conn, issue)
        if issue.kind == "repeat" and hw.model:
            return await self._repeat_firmware_evidence(conn, issue)
        if not hw.model or issue.scope == "site":
            return None
        cur = await conn.execute(
            "SELECT coalesce(hw_firmware, '?') AS fw, count(DISTINCT (site_id, incident_id)) AS n"
            " FROM escalations WHERE category = %s AND fault_code = %s"
            " AND vendor_code IS NOT DISTINCT FROM %s AND hw_model = %s GROUP BY 1",
            (f.category, f.code, f.vendor_code, hw.model),
        )
        failures = {str(r["fw"]): int(r["n"]) for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT coalesce(firmware, '?') AS fw, count(*) AS n FROM chargers WHERE model = %s GROUP BY 1",
            (hw.model,),
        )
        units = {str(r["fw"]): int(r["n"]) for r in await cur.fetchall()}
        return diagnosis.FirmwareEvidence(failures, units)

    async def _prior_fixes(self, conn: Conn, issue: Issue) -> list[diagnosis.PriorFix]:
        cur = await conn.execute(
            "SELECT doc FROM issues WHERE signature = %s AND resolution = 'operator' AND id <> %s"
            " ORDER BY ended_at DESC LIMIT 50",
            (issue.signature, issue.id),
        )
        out = []
        for row in await cur.fetchall():
            other = issue_from_row(row)
            if other.hardware.model != issue.hardware.model:
                continue
            for a in other.operator_actions:
                if a.action != "acknowledge":
                    out.append(diagnosis.PriorFix(a.action, a.worked))
        # the issue's own history counts too: a fix that worked before and the fault came back
        # is not evidence that it works, so only other issues are used.
        return out

    # ---------------------------------------------------------------- fleet views

    async def fleet_models(self) -> dict[str, Any]:
        self.fleet_dirty = False
        self.fleet_computed_at = time.monotonic()
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT max(day) AS d FROM model_daily")
            row = await cur.fetchone()
            last = row["d"] if row else None
            if last is None:
                return {
                    "as_of": None,
                    "window_days": 365,
                    "fleet_rate_per_1000_charger_days": None,
                    "models": [],
                }
            as_of = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
            since = as_of - timedelta(days=365)
            cur = await conn.execute(
                "SELECT m.vendor, m.model, m.firmware, coalesce(u.units, 0) AS units,"
                " m.charger_days, m.self_resolved, m.mean_health FROM ("
                "  SELECT vendor, model, firmware, sum(covered_s) / 86400.0 AS charger_days,"
                "   sum(self_resolved) AS self_resolved,"
                "   sum(health_sum) / nullif(sum(health_n), 0) AS mean_health"
                "  FROM model_daily WHERE day >= %s::date GROUP BY 1, 2, 3) m"
                " LEFT JOIN (SELECT coalesce(model, '') AS model, coalesce(firmware, '') AS firmware,"
                "  count(*) AS units FROM chargers GROUP BY 1, 2) u"
                " ON u.model = m.model AND u.firmware = m.firmware",
                (since.date(),),
            )
            exposure = [
                {
                    **r,
                    "vendor": r["vendor"] or None,
                    "model": r["model"] or None,
                    "firmware": r["firmware"] or None,
                }
                for r in await cur.fetchall()
            ]
            cur = await conn.execute(
                "SELECT doc->'hardware'->>'model' AS model, doc->'hardware'->>'firmware' AS firmware,"
                " doc->'outages' AS outages FROM issues WHERE scope <> 'site' AND kind NOT IN ('recurring', 'predictive')"
                " AND last_seen_at >= %s",
                (since,),
            )
            failures: dict[tuple[str | None, str | None], int] = defaultdict(int)
            for r in await cur.fetchall():
                outs = (
                    r["outages"] if isinstance(r["outages"], list) else orjson.loads(r["outages"])
                )
                n = sum(1 for o in outs if datetime.fromisoformat(o["started_at"]) >= since)
                failures[(r["model"], r["firmware"])] += n
        rows = [
            fleet.ModelExposure(
                vendor=r["vendor"],
                model=r["model"],
                firmware=r["firmware"],
                units=int(r["units"]),
                charger_days=float(r["charger_days"] or 0.0),
                failures=failures.get((r["model"], r["firmware"]), 0),
                self_resolved=int(r["self_resolved"] or 0),
                mean_health=None if r["mean_health"] is None else round(float(r["mean_health"]), 3),
            )
            for r in exposure
        ]
        rate = fleet.fleet_failure_rate(rows)
        models = fleet.model_reliability(rows, rate)
        models.sort(key=lambda m: (-(m.failure_rate_per_1000_charger_days or 0.0), m.model or ""))
        result = {
            "as_of": as_of,
            "window_days": 365,
            "fleet_rate_per_1000_charger_days": None if rate is None else round(rate, 4),
            "method": (
                "failures = escalated outages of charge point and connector issues; charger-days ="
                " digest coverage / 86,400 s; 95% intervals are exact Poisson (Garwood); MTBF ="
                " operating hours / failures"
            ),
            "models": [dataclasses.asdict(m) for m in models],
            "availability": await self._fleet_availability(as_of),
            "degradation": await self._fleet_degradation(),
        }
        self.fleet_cache = result
        return result

    async def _fleet_degradation(self) -> dict[str, Any]:
        """Which hardware model and firmware degrade faster than their peers (issue 7).

        A unit counts as showing early symptoms while it has an open predictive
        issue (the edge's ONNX model crossed its threshold for long enough); the
        features of its latest digest add the power evidence.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT c.charge_point_id, c.vendor, c.model, c.firmware, ci.features,"
                " EXISTS (SELECT 1 FROM issues i WHERE i.charge_point_id = c.charge_point_id"
                "  AND i.kind = 'predictive' AND i.status <> 'resolved') AS early"
                " FROM chargers c LEFT JOIN LATERAL (SELECT features FROM charger_intervals x"
                "  WHERE x.charge_point_id = c.charge_point_id AND x.features IS NOT NULL"
                "  ORDER BY x.interval_end DESC LIMIT 1) ci ON TRUE"
            )
            rows = await cur.fetchall()
        units = []
        for r in rows:
            feats = r["features"]
            if isinstance(feats, str | bytes):
                feats = orjson.loads(feats)
            units.append(
                foresight.UnitState(
                    charge_point_id=str(r["charge_point_id"]),
                    vendor=r["vendor"] or None,
                    model=r["model"] or None,
                    firmware=r["firmware"] or None,
                    anomaly_score=1.0 if r["early"] else 0.0,
                    features={k: float(v) for k, v in (feats or {}).items()},
                    threshold=0.5,
                )
            )
        groups = foresight.degradation_by_model(units)
        return {
            "groups": [dataclasses.asdict(g) for g in groups],
            "faster_than_peers": [g.evidence for g in groups if g.faster_than_peers],
            "method": (
                "share of each model and firmware's units with an open predictive issue, against"
                " the rest of the fleet; faster than its peers at ≥ 2 × the rest's share, with at"
                " least 3 units and 2 showing symptoms"
            ),
        }

    async def _fleet_availability(self, as_of: datetime) -> dict[str, Any]:
        """NEVI uptime and the UK rapid-charger reliability figure over the whole fleet."""
        async with self.pool.connection() as conn:
            spans = await self.outage_spans(conn)
            cur = await conn.execute("SELECT charge_point_id, rated_power_w FROM chargers")
            chargers = {str(r["charge_point_id"]): r["rated_power_w"] for r in await cur.fetchall()}
        if not chargers:
            return {"charge_points": 0}
        per_cp = {cp: spans.get(cp, []) for cp in chargers}
        rapid = {cp: v for cp, v in per_cp.items() if (chargers[cp] or 0) >= RAPID_W}
        nevi = [fleet.nevi_uptime(v, as_of) for v in per_cp.values()]
        return {
            "charge_points": len(per_cp),
            "nevi_uptime_pct_mean": round(sum(nevi) / len(nevi), 3),
            "nevi_below_97_pct": sorted(
                cp for cp, v in per_cp.items() if fleet.nevi_uptime(v, as_of) < 97.0
            ),
            "uk_rapid_reliability": fleet.uk_reliability(rapid, as_of),
            "method": (
                "NEVI: ((525,600 − (T_outage − T_excluded)) / 525,600) × 100 per charge point over the"
                " trailing 365 days (23 CFR 680.116(b); the rule asks for > 97 %); UK: mean availability"
                f" of rapid charge points (≥ {RAPID_W // 1000} kW) over the trailing year, ≥ 99 % required"
                " (Public Charge Point Regulations 2023); outages come from issues"
            ),
        }

    async def outage_spans(
        self, conn: Conn, site_id: str | None = None, charge_point_id: str | None = None
    ) -> dict[str, list[fleet.OutageSpan]]:
        """Outage spans per charge point from issues (connector outages weighted 1/connectors)."""
        cur = await conn.execute(
            "SELECT i.doc, c.connectors FROM issues i LEFT JOIN chargers c"
            " ON c.charge_point_id = i.charge_point_id"
            " WHERE kind NOT IN ('recurring', 'predictive') AND (%s::text IS NULL OR i.site_id = %s)"
            " AND (%s::text IS NULL OR i.charge_point_id = %s OR i.doc->'chargers' ? %s)",
            (site_id, site_id, charge_point_id, charge_point_id, charge_point_id or ""),
        )
        out: dict[str, list[fleet.OutageSpan]] = defaultdict(list)
        for row in await cur.fetchall():
            issue = issue_from_row(row)
            excluded = any(w in issue.fault.category.lower() for w in EXCLUDED_WORDS)
            weight = 1.0
            if issue.scope == "connector":
                weight = 1.0 / max(1, int(row["connectors"] or 1))
            cps = issue.chargers if issue.scope == "site" else [issue.charge_point_id or ""]
            end_default = issue.last_seen_at
            for o in issue.outages:
                end = o.ended_at or max(end_default, o.started_at)
                for cp in cps:
                    out[cp].append(fleet.OutageSpan(o.started_at, end, weight, excluded))
        return out


def recurring_issue(
    current: Issue | None, finding: recurring.RecurringFinding, window_s: int
) -> Issue:
    """Open, update or reopen the site's recurring-problem issue from ``finding``."""
    summary = RecurringSummary(
        incidents=finding.incidents,
        window_s=window_s,
        window_start=finding.window_start,
        window_end=finding.window_end,
        connectivity_share=finding.connectivity_share,
        by_category=finding.by_category,
        trend=finding.trend,
        first_half=finding.first_half,
        second_half=finding.second_half,
    )
    conn_ = finding.connectivity
    faults_only = {c: n for c, n in finding.by_category.items() if c != "connectivity"}
    fault = Fault(
        code="RecurringDisconnects" if conn_ else "RecurringShortFaults",
        category="connectivity"
        if conn_
        else (max(faults_only.items(), key=lambda x: x[1])[0] if faults_only else "other"),
        component="uplink" if conn_ else None,
    )
    first_blip = finding.blips[0].started_at if finding.blips else finding.window_start
    at = finding.window_end
    detail = f"{finding.incidents} self-resolved incidents in {window_s // 3600} h"
    if current is None or current.status == "resolved":
        reopened = current is not None
        issue = Issue(
            id=current.id if current else new_issue_id(),
            site_id=finding.site_id,
            charge_point_id=None,
            connector_id=None,
            scope="site",
            kind="recurring",
            signature=RECURRING_SIGNATURE,
            fault=fault,
            chargers=finding.chargers,
            started_at=first_blip,
            first_seen_at=current.first_seen_at if current else at,
            last_seen_at=at,
            outages=[],
            recurring=summary,
            reopened=(current.reopened + 1) if current else 0,
            operator_actions=current.operator_actions if current else [],
            history=[
                *(current.history if current else []),
                IssueEvent(at=at, event="reopened" if reopened else "opened", detail=detail),
            ],
        )
        return issue
    issue = current.model_copy(deep=True)
    issue.fault = fault
    issue.recurring = summary
    issue.chargers = sorted(set(issue.chargers) | set(finding.chargers))
    issue.last_seen_at = max(issue.last_seen_at, at)
    if not issue.history or issue.history[-1].detail != detail:
        issue.history.append(IssueEvent(at=at, event="recurring", detail=detail))
        del issue.history[:-50]
    return issue


__all__ = ["Cleared", "Engine", "recurring_issue"]
