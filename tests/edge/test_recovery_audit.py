"""The SQLite audit trail (real aiosqlite, WAL) and the engine writing to it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from chargesight.edge.audit import AuditEntry, AuditLog


async def test_audit_rows_are_committed_to_the_shared_edge_database(tmp_path: Path) -> None:
    db = tmp_path / "edge.sqlite"
    async with AuditLog(db) as audit:
        await audit.record(
            AuditEntry(
                at=datetime(2026, 1, 1, tzinfo=UTC),
                action="soft_reset",
                result="accepted",
                charge_point_id="CP1",
                connector_id=1,
                incident_id="i1",
                request={"action": "Reset", "payload": {"type": "Soft"}},
                detail="Reset → Accepted",
            )
        )
        rows = await audit.query(10)
        assert rows[0]["action"] == "soft_reset" and rows[0]["charge_point_id"] == "CP1"
        assert [e.action for e in audit.recent()] == ["soft_reset"]
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT action, result, request FROM audit").fetchall() == [
            ("soft_reset", "accepted", '{"action":"Reset","payload":{"type":"Soft"}}')
        ]
    finally:
        con.close()
