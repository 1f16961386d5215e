"""A full disk at the gateway: what the outbox cannot commit is held, not lost.

The outbox's SQLite file is capped at its current size (``PRAGMA max_page_count``): SQLite
then refuses to grow it with the error a full disk gives ("database or disk is full"). The
uplink is away meanwhile (nothing drains the outbox), as it often is when a gateway's disk
fills up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chargesight.common.messages import EdgeMessage, Reply
from chargesight.edge import agent as agent_module
from chargesight.edge.agent import Agent
from chargesight.edge.outbox import OutboxError
from tests.edge.conftest import edge_config
from tests.edge.uplink_support import digest, escalation


async def test_an_escalation_refused_by_a_full_disk_is_held_and_committed_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "HELD_RETRY_S", 0.05)
    site = "disk-full"
    config = edge_config(tmp_path, "ws://127.0.0.1:1/csms/{charge_point_id}", site={"id": site})
    agent = Agent(config)
    await agent.start()
    try:
        db = agent.outbox._writer
        assert db is not None
        row = await (await db.execute("PRAGMA page_count")).fetchone()
        assert row is not None
        await db.execute(f"PRAGMA max_page_count = {row[0]}")  # the file cannot grow
        sent, errors = [], []
        n = 0
        while not errors and n < 5000:  # until the room left in the file is used up
            esc = escalation(site, n)
            n += 1
            try:
                await agent.escalate(esc)
                sent.append(esc.message_id)
            except OutboxError as exc:  # the caller hears it (the recovery audit says so) ...
                errors.append(str(exc))
        assert errors and "full" in errors[0]
        refused = [esc.message_id]
        more = escalation(site, n)  # held behind it, to keep the order (a clear after its fault)
        with pytest.raises(OutboxError, match="held behind 1 message"):
            await agent.escalate(more)
        refused.append(more.message_id)
        assert agent.status()["held_uncommitted"] == 2  # ... and nothing is lost
        await db.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert agent._held_task is not None
        await asyncio.wait_for(agent._held_task, 10)
        assert agent.status()["held_uncommitted"] == 0
        rows = await agent.outbox.fetch(limit=10_000)
        assert [r.message_id for r in rows] == sent + refused  # each once, in order
    finally:
        await agent.close()


async def test_beyond_the_bound_held_messages_are_dropped_as_the_outbox_drops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the oldest of the lowest class first (digests, then replies, escalations last), and
    # never the first held, which may be being committed
    monkeypatch.setattr(agent_module, "HELD_MAX", 3)
    site = "held-bound"
    agent = Agent(
        edge_config(tmp_path, "ws://127.0.0.1:1/csms/{charge_point_id}", site={"id": site})
    )
    e = [escalation(site, n) for n in range(4)]
    d = [digest(site) for _ in range(2)]
    r = [Reply(site_id=site, request_id=f"r{n}", ok=True) for n in range(2)]

    def hold(*messages: EdgeMessage) -> list[str]:
        for m in messages:
            agent._hold("t", m)
        return [m.message_id for _, m in agent._held]

    e0, e1, e2, e3 = (m.message_id for m in e)
    r0, r1 = (m.message_id for m in r)
    assert hold(e[0], r[0], d[0], e[1]) == [e0, r0, e1]  # the digest, though a reply is older
    assert hold(d[1]) == [e0, r0, e1]  # the only digest
    assert hold(r[1]) == [e0, e1, r1]  # the oldest reply
    assert hold(e[2]) == [e0, e1, e2]  # the last reply
    assert hold(e[3]) == [e0, e2, e3]  # the oldest escalation but the first
    assert agent._held_task is not None
    agent._held_task.cancel()
