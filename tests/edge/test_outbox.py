"""The durable outbox on its own: commit, order, idempotence, the full policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
from structlog.testing import capture_logs

from chargesight.common.messages import digests_topic, escalations_topic
from chargesight.edge.outbox import Outbox
from tests.edge.uplink_support import digest, escalation

SITE = "outbox-site"
ESC = escalations_topic(SITE)
DIG = digests_topic(SITE)


async def test_put_commits_before_returning_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "edge.sqlite"
    sent = [escalation(SITE, i) for i in range(3)]
    async with Outbox(db) as outbox:
        for msg in sent:
            assert await outbox.put(ESC, msg) is True
        assert outbox.queued == 3
    async with Outbox(db) as outbox:
        rows = await outbox.fetch()
    assert [r.message_id for r in rows] == [m.message_id for m in sent]
    assert [r.payload for r in rows] == [m.to_json() for m in sent]
    assert all(r.topic == ESC and r.kind == "escalation" for r in rows)


async def test_concurrent_puts_share_few_commits(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite") as outbox:
        msgs = [escalation(SITE, i) for i in range(500)]
        results = await asyncio.gather(*(outbox.put(ESC, m) for m in msgs))
        assert all(results)
        assert outbox.queued == 500
        assert outbox.status().commits < 50
        rows = await outbox.fetch(limit=1000)
    assert [r.message_id for r in rows] == [m.message_id for m in msgs]


async def test_same_message_put_twice_is_stored_once(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite") as outbox:
        msg = escalation(SITE)
        assert await outbox.put(ESC, msg)
        assert await outbox.put(ESC, msg)
        assert outbox.queued == 1
        assert len(await outbox.fetch()) == 1


async def test_ack_deletes_only_the_acknowledged_rows(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite") as outbox:
        for i in range(4):
            await outbox.put(ESC, escalation(SITE, i))
        rows = await outbox.fetch()
        await outbox.ack([rows[0].seq, rows[2].seq, 10_000])
        left = await outbox.fetch()
        assert [r.seq for r in left] == [rows[1].seq, rows[3].seq]
        assert outbox.queued == 2


async def test_sequence_numbers_are_never_reused_after_the_outbox_empties(tmp_path: Path) -> None:
    db = tmp_path / "edge.sqlite"
    async with Outbox(db) as outbox:
        await outbox.put(ESC, escalation(SITE, 1))
        first = (await outbox.fetch())[0].seq
        await outbox.ack([first])
        assert outbox.queued == 0
    async with Outbox(db) as outbox:
        await outbox.put(ESC, escalation(SITE, 2))
        assert (await outbox.fetch())[0].seq > first


async def test_full_outbox_drops_oldest_digests_before_any_escalation(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite", max_messages=10) as outbox:
        digests = [digest(SITE) for _ in range(3)]
        for d in digests:
            await outbox.put(DIG, d)
        escs = [escalation(SITE, i) for i in range(7)]
        for e in escs:
            await outbox.put(ESC, e)
        assert outbox.status().full
        with capture_logs() as logs:
            newer = [escalation(SITE, 100 + i) for i in range(4)]
            for e in newer:
                assert await outbox.put(ESC, e) is True
        kept = [r.message_id for r in await outbox.fetch(limit=100)]
        # the three digests went first, then only the oldest escalation
        assert kept == [e.message_id for e in escs[1:] + newer]
        status = outbox.status()
        assert status.dropped["digest"] == 3
        assert status.dropped["escalation"] == 1
        assert status.queued == 10
        assert any("outbox full" in a for a in status.alarms)
        assert any("3 digest" in a for a in status.alarms)
        full_logs = [e for e in logs if e["event"] == "outbox_full"]
        assert full_logs
        assert all(e["log_level"] == "warning" for e in full_logs)


async def test_digest_into_an_outbox_full_of_escalations_is_refused(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite", max_messages=10) as outbox:
        escs = [escalation(SITE, i) for i in range(10)]
        for e in escs:
            await outbox.put(ESC, e)
        assert await outbox.put(DIG, digest(SITE)) is False
        assert [r.message_id for r in await outbox.fetch(limit=100)] == [e.message_id for e in escs]
        assert outbox.status().dropped["digest"] == 1
        assert outbox.status().dropped["escalation"] == 0


async def test_nearly_full_outbox_raises_an_alarm(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "edge.sqlite", max_messages=10) as outbox:
        for i in range(9):
            await outbox.put(ESC, escalation(SITE, i))
        assert any("nearly full" in a for a in outbox.status().alarms)


async def test_put_waits_out_another_component_holding_the_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "edge.sqlite"
    async with Outbox(db, busy_timeout_ms=100) as outbox:
        other = await aiosqlite.connect(db, isolation_level=None)
        try:
            await other.execute("BEGIN IMMEDIATE")  # e.g. the OCPP log writing a big batch
            with capture_logs() as logs:
                put = asyncio.create_task(outbox.put(ESC, escalation(SITE)))
                await asyncio.sleep(0.15)  # hold the lock past the outbox's busy timeout
                await other.execute("COMMIT")
                assert await put is True
        finally:
            await other.close()
        assert outbox.queued == 1
    assert any(e["event"] == "outbox_busy_retry" for e in logs)
