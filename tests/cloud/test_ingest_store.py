"""What ``store_batch`` writes for a digest's charger rows (the staging COPY), on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chargesight.cloud.db import Database
from chargesight.cloud.ingest import store_batch
from tests.cloud.helpers import T0, counters, digest

pytestmark = pytest.mark.postgres


async def test_charger_rows_keep_every_counter_and_their_maps(database: Database) -> None:
    d = digest(
        "rows",
        T0,
        [
            counters(
                "rows-1", disconnects=2, faults=3, energy_wh=1234.5, max_temperature_c=41.5,
                health_score=87.0, faults_by_category={"connector_lock": 2, "software": 1},
                features={"energy_per_session": 9.5, "temp_p95": 40.0},
            ),
            counters("rows-2", connectors=None, rated_power_w=None),
        ],
    )  # fmt: skip
    async with database.pool.connection() as conn:
        await store_batch(conn, [d])
        cur = await conn.execute(
            "SELECT charge_point_id, site_id, interval_start, interval_end, message_id, vendor,"
            " model, firmware, connectors, disconnects, faults, energy_wh, max_temperature_c,"
            " health_score, rated_power_w, faults_by_category, features"
            " FROM charger_intervals ORDER BY charge_point_id"
        )
        one, two = await cur.fetchall()
    assert one == {
        "charge_point_id": "rows-1", "site_id": "rows", "interval_start": T0,
        "interval_end": T0 + timedelta(hours=1), "message_id": d.message_id, "vendor": "Acme",
        "model": "DC50", "firmware": "1.2.0", "connectors": 2, "disconnects": 2, "faults": 3,
        "energy_wh": 1234.5, "max_temperature_c": 41.5, "health_score": 87.0,
        "rated_power_w": 50_000.0, "faults_by_category": {"connector_lock": 2, "software": 1},
        "features": {"energy_per_session": 9.5, "temp_p95": 40.0},
    }  # fmt: skip
    # no categories: an empty map; no features: NULL (the edge sent none)
    assert (two["connectors"], two["rated_power_w"]) == (None, None)
    assert (two["faults_by_category"], two["features"]) == ({}, None)


async def test_charger_metadata_follows_the_newest_digest(database: Database) -> None:
    async with database.pool.connection() as conn:
        await store_batch(conn, [digest("meta", T0, [counters("meta-1", firmware="1.0")])])
        await store_batch(
            conn, [digest("meta", T0 + timedelta(hours=1), [counters("meta-1", firmware="1.1")])]
        )
        # an older digest arriving late does not roll the firmware back
        await store_batch(
            conn, [digest("meta", T0 - timedelta(hours=5), [counters("meta-1", firmware="0.9")])]
        )
        cur = await conn.execute(
            "SELECT firmware, last_data_at FROM chargers WHERE charge_point_id = 'meta-1'"
        )
        assert await cur.fetchone() == {"firmware": "1.1", "last_data_at": T0 + timedelta(hours=2)}
        cur = await conn.execute("SELECT sum(intervals) AS n FROM charger_daily")
        assert await cur.fetchone() == {"n": 3}
