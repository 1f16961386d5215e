"""``POST /ask``: a rule-based question router over the stored data.

It is not a language model. It recognises ids it finds in the question
(issue, site, charge point) and a handful of topics by keyword — open or
urgent issues, revenue lost, recurring/connectivity problems, related units
and early symptoms, hardware models and firmware, availability — answers
from the data, and lists the data and issues it used. When it recognises
nothing it says so and lists what it can answer.
"""

from __future__ import annotations

import re
from typing import Any

from chargesight.cloud import queries
from chargesight.cloud.engine import Engine
from chargesight.cloud.issuestore import Conn, issue_from_row
from chargesight.cloud.model import Issue

HELP = (
    "I answer from the stored data and understand: an issue id, a site id or a charge point id in "
    "the question; 'open/urgent issues'; 'revenue lost'; 'recurring' or 'connectivity' problems; "
    "'related' units or 'early symptoms'; hardware 'models'/'firmware' reliability; 'availability'."
)

TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "recurring",
        ("recurring", "flaky", "wifi", "wi-fi", "disconnect", "connectivity", "network", "blip"),
    ),
    (
        "related",
        (
            "related",
            "similar",
            "same symptom",
            "early symptom",
            "next to fail",
            "fail next",
            "pattern",
        ),
    ),
    ("fleet", ("model", "firmware", "hardware", "mtbf", "failure rate", "reliab", "vendor")),
    ("revenue", ("revenue", "cost", "money", "lost", "losing", "€", "$", "£")),
    ("availability", ("availability", "uptime", "nevi", "99%", "reliability figure")),
    (
        "issues",
        ("issue", "problem", "wrong", "broken", "urgent", "priority", "fault", "down", "open"),
    ),
)


def _summary(i: Issue) -> str:
    where = i.charge_point_id or f"site {i.site_id}"
    if i.scope == "connector":
        where += f" connector {i.connector_id}"
    rev = (
        f", {i.revenue_lost.amount:.2f} {i.revenue_lost.currency or ''} lost"
        if i.revenue_lost
        else ""
    )
    return f"{where}: {i.fault.code} ({i.status}, {i.recommended_action.replace('_', ' ')}{rev})"


def _ref(i: Issue) -> dict[str, Any]:
    return {"id": i.id, "site_id": i.site_id, "charge_point_id": i.charge_point_id, "summary": _summary(i),
            "priority": i.priority}  # fmt: skip


async def _active(conn: Conn, where: str = "TRUE", args: tuple[Any, ...] = ()) -> list[Issue]:
    cur = await conn.execute(
        f"SELECT doc FROM issues WHERE status <> 'resolved' AND {where} ORDER BY priority DESC LIMIT 20".encode(),
        args,
    )
    return [issue_from_row(r) for r in await cur.fetchall()]


async def answer(conn: Conn, engine: Engine, question: str) -> dict[str, Any]:
    q = question.lower()
    tokens = set(re.findall(r"[a-z0-9][a-z0-9_.:-]*[a-z0-9]", q)) | set(
        re.findall(r"[A-Za-z0-9_.:-]+", question)
    )
    # ---- explicit ids
    if tokens:
        cur = await conn.execute("SELECT doc FROM issues WHERE id = ANY(%s)", (list(tokens),))
        rows = await cur.fetchall()
        if rows:
            i = issue_from_row(rows[0])
            return {"answer": f"Issue {i.id}: {_summary(i)}. {i.diagnosis}", "data": [queries.issue_json(i)],
                    "issues": [_ref(i)], "understood": "issue id"}  # fmt: skip
        cur = await conn.execute(
            "SELECT charge_point_id FROM chargers WHERE charge_point_id = ANY(%s)", (list(tokens),)
        )
        row = await cur.fetchone()
        if row is not None:
            ch = await queries.charger_summary(conn, engine, str(row["charge_point_id"]))
            assert ch is not None
            open_ = [Issue.model_validate(x) for x in ch["open_issues"]]
            text = (
                f"Charge point {ch['charge_point_id']} at site {ch['site_id']}: health {ch['health_score']} "
                f"({ch['health_band']}: {'; '.join(ch['health']['explanation'][:3])}), availability {ch['availability_30d_pct']}% over 30 days, "
                f"{len(open_)} open issue(s)"
                + (": " + "; ".join(_summary(i) for i in open_) if open_ else ".")
            )
            return {
                "answer": text,
                "data": [ch],
                "issues": [_ref(i) for i in open_],
                "understood": "charge point id",
            }
        cur = await conn.execute(
            "SELECT site_id FROM sites WHERE site_id = ANY(%s)", (list(tokens),)
        )
        row = await cur.fetchone()
        if row is not None:
            site = await queries.site_summary(conn, engine, str(row["site_id"]))
            assert site is not None
            open_ = [Issue.model_validate(x) for x in site["open_issues"]]
            av = site["availability"]
            text = (
                f"Site {site['site_id']}: {len(site['chargers'])} charge points, availability "
                f"{av['trailing_30d_pct']}% over 30 days, {site['revenue_lost']['open_issues']} "
                f"{site['currency'] or ''} lost on open issues, {len(open_)} open issue(s)"
                + (": " + "; ".join(_summary(i) for i in open_[:5]) if open_ else ".")
            )
            return {
                "answer": text,
                "data": [site],
                "issues": [_ref(i) for i in open_],
                "understood": "site id",
            }
    topic = next((name for name, words in TOPICS if any(w in q for w in words)), None)
    if topic == "recurring":
        issues = await _active(conn, "kind = 'recurring'")
        if not issues:
            return {"answer": "No site has a recurring small-incident problem right now.", "data": [],
                    "issues": [], "understood": topic}  # fmt: skip
        parts = [
            f"site {i.site_id}: {i.recurring.incidents} self-resolved incidents in "
            f"{i.recurring.window_s // 86400} days ({i.recurring.connectivity_share:.0%} connectivity, "
            f"trend {i.recurring.trend}), {(i.recurring and i.revenue_lost and i.revenue_lost.amount) or 0:.2f} "
            f"{i.revenue_lost.currency if i.revenue_lost else ''} lost, recommended "
            f"{i.recommended_action.replace('_', ' ')}"
            for i in issues
            if i.recurring
        ]
        return {"answer": "Recurring problems: " + "; ".join(parts) + ".",
                "data": [queries.issue_json(i) for i in issues], "issues": [_ref(i) for i in issues],
                "understood": topic}  # fmt: skip
    if topic == "related":
        issues = [i for i in await _active(conn) if i.related]
        if not issues:
            return {"answer": "No open issue has related units right now.", "data": [], "issues": [],
                    "understood": topic}  # fmt: skip
        parts = []
        for i in issues[:5]:
            rel = ", ".join(
                f"{r.charge_point_id} ({r.basis}, {r.similarity:.2f})" for r in i.related[:5]
            )
            parts.append(f"{i.charge_point_id or i.site_id} {i.fault.code}: {rel}")
        return {"answer": "Units related to open issues: " + "; ".join(parts) + ".",
                "data": [{"issue_id": i.id, "related": [r.model_dump() for r in i.related]} for i in issues],
                "issues": [_ref(i) for i in issues], "understood": topic}  # fmt: skip
    if topic == "fleet":
        fl = await engine.fleet_view()
        models = fl["models"]
        if not models:
            return {"answer": "No operating data per hardware model yet.", "data": [fl], "issues": [],
                    "understood": topic}  # fmt: skip
        parts = [
            f"{m['vendor'] or ''} {m['model']} fw {m['firmware']}: {m['failure_rate_per_1000_charger_days']} "
            f"failures per 1,000 charger-days (95% CI {m['failure_rate_ci95']}), {m['verdict']}"
            for m in models[:5]
        ]
        return {"answer": "Hardware reliability, worst first: " + "; ".join(parts) + ".", "data": [fl],
                "issues": [], "understood": topic}  # fmt: skip
    if topic == "revenue":
        issues = await _active(conn)
        costed = sorted(
            (i for i in issues if i.revenue_lost),
            key=lambda i: -(i.revenue_lost.amount if i.revenue_lost else 0),
        )
        total: dict[str, float] = {}
        for i in costed:
            assert i.revenue_lost is not None
            cur_ = i.revenue_lost.currency or "?"
            total[cur_] = total.get(cur_, 0.0) + i.revenue_lost.amount
        tot = ", ".join(f"{v:.2f} {k}" for k, v in total.items()) or "nothing"
        top = "; ".join(_summary(i) for i in costed[:5])
        return {"answer": f"Open issues have cost {tot} so far" + (f". Largest: {top}." if top else "."),
                "data": [{"issue_id": i.id, "revenue_lost": i.revenue_lost.model_dump(mode='json') if i.revenue_lost else None} for i in costed],
                "issues": [_ref(i) for i in costed], "understood": topic}  # fmt: skip
    if topic == "availability":
        cur = await conn.execute("SELECT site_id FROM sites ORDER BY site_id LIMIT 200")
        sites = [str(r["site_id"]) for r in await cur.fetchall()]
        rows = []
        for s in sites:
            summ = await queries.site_summary(conn, engine, s)
            if summ:
                rows.append({"site_id": s, **summ["availability"]})
        rows.sort(key=lambda r: r["trailing_30d_pct"] if r["trailing_30d_pct"] is not None else 101)
        parts = [f"{r['site_id']} {r['trailing_30d_pct']}%" for r in rows[:5]]
        return {"answer": "Lowest availability over 30 days: " + ", ".join(parts) + "." if parts else "No sites yet.",
                "data": rows, "issues": [], "understood": topic}  # fmt: skip
    if topic == "issues":
        issues = await _active(conn)
        if not issues:
            return {
                "answer": "There are no open issues.",
                "data": [],
                "issues": [],
                "understood": topic,
            }
        text = (
            f"{len(issues)} open issue(s), most urgent first: "
            + "; ".join(_summary(i) for i in issues[:5])
            + "."
        )
        return {"answer": text, "data": [queries.issue_json(i) for i in issues[:5]],
                "issues": [_ref(i) for i in issues], "understood": topic}  # fmt: skip
    return {
        "answer": "I did not understand the question. " + HELP,
        "data": [],
        "issues": [],
        "understood": None,
    }
