"""Issues in PostgreSQL: load, save, the per-key lock, and small lookups the rules share.

Each issue write holds a transaction-level advisory lock on the issue key (:func:`lock_key`),
so several collector replicas can run the engine side by side.
"""

from __future__ import annotations

import zlib
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from chargesight.cloud.issues import IssueKey
from chargesight.cloud.model import Issue

Conn = psycopg.AsyncConnection[dict[str, Any]]
Pool = AsyncConnectionPool[Conn]


def key_text(key: IssueKey) -> str:
    return f"{key.site_id}|{key.scope}|{key.charge_point_id}|{key.connector_id}|{key.signature}"


def lock_id(text: str) -> int:
    return zlib.crc32(text.encode()) - 2**31


async def lock_key(conn: Conn, key: IssueKey) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(key_text(key)),))


async def applied_before(conn: Conn, message_id: str) -> bool:
    """Mark the stored escalation ``message_id`` applied (in the transaction that saves its
    issue, under the issue key's lock); True when it already was. One not stored: False."""
    cur = await conn.execute(
        "UPDATE escalations e SET analysed_at = now() FROM escalations old"
        " WHERE e.message_id = %s AND old.message_id = e.message_id"
        " RETURNING old.analysed_at IS NOT NULL AS before",
        (message_id,),
    )
    row = await cur.fetchone()
    return bool(row and row["before"])


def issue_from_row(row: dict[str, Any]) -> Issue:
    doc = row["doc"]
    if isinstance(doc, (bytes, str)):
        doc = orjson.loads(doc)
    return Issue.model_validate(doc)


async def load_issue(conn: Conn, issue_id: str, *, for_update: bool = False) -> Issue | None:
    q = "SELECT doc FROM issues WHERE id = %s" + (" FOR UPDATE" if for_update else "")
    cur = await conn.execute(q.encode(), (issue_id,))
    row = await cur.fetchone()
    return issue_from_row(row) if row else None


async def load_for_key(conn: Conn, key: IssueKey) -> Issue | None:
    """The unresolved issue with ``key``, else the most recently resolved one, else None."""
    cur = await conn.execute(
        "SELECT doc FROM issues WHERE site_id = %s AND scope = %s"
        " AND charge_point_id IS NOT DISTINCT FROM %s AND connector_id IS NOT DISTINCT FROM %s"
        " AND signature = %s ORDER BY (status <> 'resolved') DESC,"
        " coalesce(ended_at, 'infinity') DESC LIMIT 1",
        (key.site_id, key.scope, key.charge_point_id, key.connector_id, key.signature),
    )
    row = await cur.fetchone()
    return issue_from_row(row) if row else None


async def hardware_at(conn: Conn, charge_point_id: str, at: datetime) -> dict[str, Any] | None:
    """Vendor, model and firmware as the charge point's digest covering ``at`` reported them
    (the latest interval starting at or before it)."""
    cur = await conn.execute(
        "SELECT vendor, model, firmware FROM charger_intervals WHERE charge_point_id = %s"
        " AND interval_start <= %s ORDER BY interval_start DESC LIMIT 1",
        (charge_point_id, at),
    )
    row: dict[str, Any] | None = await cur.fetchone()
    return row


async def site_data_end(conn: Conn, site_id: str) -> datetime | None:
    """The end of the newest data from ``site_id`` (windows end there, not at the wall clock)."""
    cur = await conn.execute("SELECT last_data_at FROM sites WHERE site_id = %s", (site_id,))
    row = await cur.fetchone()
    return None if row is None else row["last_data_at"]


async def save_issue(conn: Conn, issue: Issue) -> None:
    doc = issue.model_dump_json()
    await conn.execute(
        "INSERT INTO issues (id, site_id, scope, charge_point_id, connector_id, signature, kind,"
        " status, resolution, started_at, ended_at, last_seen_at, priority, doc, updated_at)"
        " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb, now())"
        " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
        " resolution = EXCLUDED.resolution, started_at = EXCLUDED.started_at,"
        " ended_at = EXCLUDED.ended_at, last_seen_at = EXCLUDED.last_seen_at,"
        " priority = EXCLUDED.priority, kind = EXCLUDED.kind, doc = EXCLUDED.doc,"
        " updated_at = now()",
        (
            issue.id,
            issue.site_id,
            issue.scope,
            issue.charge_point_id,
            issue.connector_id,
            issue.signature,
            issue.kind,
            issue.status,
            issue.resolution,
            issue.started_at,
            issue.ended_at,
            issue.last_seen_at,
            issue.priority,
            doc,
        ),
    )
    if issue.incident_ids:
        await conn.execute(
            "INSERT INTO issue_incidents (site_id, incident_id, issue_id)"
            " SELECT %s, unnest(%s::text[]), %s ON CONFLICT DO NOTHING",
            (issue.site_id, issue.incident_ids, issue.id),
        )
