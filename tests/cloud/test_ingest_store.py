"""What ``store_batch`` writes for a digest's charger rows (the staging COPY), on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from chargesight.cloud.db import Database
from chargesight.cloud.ingest import IdConflict, store_batch
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


async def test_two_sites_reporting_one_charge_point_id_are_flagged_and_a_real_move_is_not(
    database: Database,
) -> None:
    async with database.pool.connection() as conn:
        with capture_logs() as logs:
            # two sites' digests in one batch
            same = await store_batch(
                conn,
                [
                    digest("dup-a", T0, [counters("dup-1")]),
                    digest("dup-b", T0, [counters("dup-1")]),
                ],
            )
            # and in batches of their own, an hour apart, twice
            alone = [
                await store_batch(
                    conn, [digest(site, T0 + timedelta(hours=h), [counters("dup-2")])]
                )
                for h, site in enumerate(("dup-a", "dup-b", "dup-a"))
            ]
        assert same.id_conflicts == [IdConflict("dup-1", "dup-a", "dup-b")]
        assert [r.id_conflicts for r in alone] == [
            [],
            *[[IdConflict("dup-2", "dup-a", "dup-b")]] * 2,
        ]
        warned = [e for e in logs if e["event"] == "charge_point_id_conflict"]
        assert len(warned) == 2  # once an hour for each id, not once a batch
        assert "unique across the fleet" in warned[0]["error"]

        # a charger moved: three days later at another site, then a late digest of the old one
        moved = [
            await store_batch(conn, [digest(site, T0 + timedelta(days=d), [counters("mov-1")])])
            for d, site in ((0, "mov-a"), (3, "mov-b"), (0.1, "mov-a"))
        ]
        assert [r.id_conflicts for r in moved] == [[], [], []]
        cur = await conn.execute("SELECT site_id FROM chargers WHERE charge_point_id = 'mov-1'")
        assert await cur.fetchone() == {"site_id": "mov-b"}  # the late digest did not move it back
