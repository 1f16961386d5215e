"""A site's presence as the collector keeps it (real PostgreSQL): the edge's retained
``online``, its clean ``offline``, and the last will the broker sends when the gateway dies —
which carries the time of the ``online`` it follows (edge/uplink.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chargesight.cloud.db import Database
from chargesight.cloud.ingest import store_batch
from chargesight.common.messages import SiteState
from tests.cloud.helpers import T0

pytestmark = pytest.mark.postgres


async def state_of(database: Database, site: str) -> str:
    async with database.pool.connection() as conn:
        cur = await conn.execute("SELECT state FROM sites WHERE site_id = %s", (site,))
        row = await cur.fetchone()
    assert row is not None
    return str(row["state"])


async def test_a_gateway_that_dies_shows_offline_through_its_last_will(database: Database) -> None:
    online = SiteState(site_id="will", state="online", sent_at=T0)
    will = SiteState(site_id="will", state="offline", sent_at=T0 + timedelta(microseconds=1))
    async with database.pool.connection() as conn:
        await store_batch(conn, [online])
        assert await state_of(database, "will") == "online"
        await store_batch(conn, [will])
    assert await state_of(database, "will") == "offline"
    # stored in the other order (two ingest workers, each with one of them): still offline
    online3 = SiteState(site_id="will3", state="online", sent_at=T0)
    will3 = SiteState(site_id="will3", state="offline", sent_at=T0 + timedelta(microseconds=1))
    async with database.pool.connection() as conn:
        await store_batch(conn, [will3])
        await store_batch(conn, [online3])
    assert await state_of(database, "will3") == "offline"
    # both in one batch with the same time (an agent from before the microsecond), in the
    # order they were received: the will still wins
    again = SiteState(site_id="will2", state="online", sent_at=T0)
    will2 = SiteState(site_id="will2", state="offline", sent_at=T0)
    async with database.pool.connection() as conn:
        await store_batch(conn, [again, will2])
    assert await state_of(database, "will2") == "offline"


async def test_an_old_state_delivered_late_does_not_undo_a_newer_one(database: Database) -> None:
    newer = SiteState(site_id="late", state="online", sent_at=T0 + timedelta(minutes=5))
    older = SiteState(site_id="late", state="offline", sent_at=T0)  # a previous connection's
    async with database.pool.connection() as conn:
        await store_batch(conn, [newer])
        await store_batch(conn, [older])
    assert await state_of(database, "late") == "online"
