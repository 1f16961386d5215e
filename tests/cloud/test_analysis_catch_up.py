"""Nothing lost, nothing doubled: what a collector stored and never analysed is analysed once.

The first test kills a real ``chargesight cloud run`` process between a batch's commit (and
PUBACK) and its analysis, on real Mosquitto and PostgreSQL; the next start analyses it.
The others check the pieces in-process: a crash *during* analysis (analysed twice, counted
once), the digests rebuilt from the stored rows, and replicas that never take a live
replica's batches.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from chargesight.cloud.catchup import AnalysisOwner, catch_up, load_stored, retry_failed
from chargesight.cloud.collector import TEST_ANALYSIS_DELAY_ENV
from chargesight.cloud.config import AnalysisSection
from chargesight.cloud.db import Database
from chargesight.cloud.engine import Engine
from chargesight.cloud.ingest import DigestSummary, store_batch
from tests.cloud.conftest import OPERATOR, make_config, start_collector
from tests.cloud.helpers import T0, Publisher, blip, counters, digest, escalation
from tests.servers import Mosquitto, free_port

pytestmark = [pytest.mark.postgres]


def query(url: str, sql: str, *args: object) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def wait_for(what: str, check: Any, timeout: float = 60.0, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None:
            assert proc.poll() is None, f"cloud run exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def start_cloud_run(cfg: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "chargesight.cli.main", "cloud", "run", "--config", str(cfg)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def listening() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            return True
        except httpx.TransportError:
            return False

    try:
        wait_for("cloud run to open its port", listening, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_collector_killed_after_storing_before_analysing_the_next_start_opens_the_issue_once(
    tmp_path: Path, fresh_db: str, mosquitto_private: Mosquitto, workers: int
) -> None:
    port = free_port()
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(
        f'[database]\nurl = "{fresh_db}"\n[mqtt]\nurl = "{mosquitto_private.url}"\n'
        f'shared_group = "crash-{uuid.uuid4().hex[:6]}"\n[ingest]\nworkers = {workers}\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\ntokens = [{{token = "{OPERATOR}", role = "operator"}}]\n'
    )
    # analysis sleeps before every step: whatever is stored is never analysed by this one
    first = start_cloud_run(cfg, port, {TEST_ANALYSIS_DELAY_ENV: "600"})
    helpers = children(first.pid)
    assert len(helpers) == workers
    fault = escalation("crash", "crash-cp-1", incident_id="inc-crash-1")
    other = escalation("crash", "crash-cp-2", incident_id="inc-crash-2")
    # a later digest reports the second healthy again, with a blip on the first
    healthy = digest(
        "crash", T0 + timedelta(hours=1),
        [counters("crash-cp-1", disconnects=1, self_resolved=1), counters("crash-cp-2")],
        self_resolved=[blip("crash-cp-1", T0 + timedelta(hours=1, minutes=5))],
        cleared=["inc-crash-2"],
    )  # fmt: skip
    try:
        pub = Publisher(mosquitto_private.url)
        try:
            pub.send(fault, other, healthy)  # each acknowledged (PUBACK) once committed
        finally:
            pub.close()
        wait_for(
            "the three messages to be stored",
            lambda: query(fresh_db, "SELECT count(*) AS n FROM messages")[0]["n"] == 3,
            proc=first,
        )
        assert query(fresh_db, "SELECT count(*) AS n FROM issues")[0]["n"] == 0  # not analysed
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the workers notice their collector is gone (stdin closed) and exit
    wait_for("the ingest workers to exit", lambda: not any(alive(p) for p in helpers))
    pending = query(fresh_db, "SELECT message_ids FROM unanalysed")
    assert sorted(m for r in pending for m in r["message_ids"]) == sorted(
        m.message_id for m in (fault, other, healthy)
    )

    second = start_cloud_run(cfg, port, {})  # ready only after it caught up
    try:
        issues = query(fresh_db, "SELECT charge_point_id, status, doc FROM issues ORDER BY 1")
        assert [(i["charge_point_id"], i["status"]) for i in issues] == [
            ("crash-cp-1", "open"),
            ("crash-cp-2", "resolved"),  # the digest's cleared incident was applied too
        ]
        assert [i["doc"]["escalations"] for i in issues] == [1, 1]
        assert query(fresh_db, "SELECT count(*) AS n FROM unanalysed")[0]["n"] == 0
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics",
                            headers={"Authorization": f"Bearer {OPERATOR}"}).text  # fmt: skip
        assert "chargesight_analysis_caught_up_total 3.0" in metrics
        # nothing comes back from the broker (it was acknowledged), nothing is analysed again
        time.sleep(1.0)
        assert len(query(fresh_db, "SELECT id FROM issues")) == 2
    finally:
        second.send_signal(signal.SIGTERM)
        rc = second.wait(60)
    assert rc == 0


async def test_a_batch_analysed_twice_after_a_crash_during_analysis_counts_once(
    database: Database,
) -> None:
    engine = Engine(database.pool, AnalysisSection())
    dead = AnalysisOwner(database.url)
    owner = await dead.acquire()
    try:
        esc = escalation("twice", "twice-1")
        async with database.pool.connection() as conn:
            res = await store_batch(conn, [esc], owner=owner)
        assert len(res.batch_keys) == 1
        # the first analysis ran, the collector died before it forgot the batch
        await engine.on_stored(res.escalations, res.digests)
    finally:
        await dead.close()
    assert await catch_up(engine, database.url, None) == 1
    assert await catch_up(engine, database.url, None) == 0  # forgotten now
    await engine.on_stored(res.escalations, [])  # and a third time, for good measure
    await engine.close()
    async with database.pool.connection() as conn:
        rows = await (await conn.execute("SELECT doc FROM issues")).fetchall()
    assert len(rows) == 1
    doc: Any = rows[0]["doc"]
    assert doc["escalations"] == 1
    assert [h["event"] for h in doc["history"]] == ["opened"]


async def test_a_live_replicas_batches_are_left_to_it_a_dead_ones_are_caught_up(
    database: Database,
) -> None:
    engine = Engine(database.pool, AnalysisSection())
    live, gone = AnalysisOwner(database.url), AnalysisOwner(database.url)
    mine, theirs = await live.acquire(), await gone.acquire()
    assert mine != theirs
    try:
        async with database.pool.connection() as conn:
            await store_batch(conn, [escalation("replicas", "live-1")], owner=mine)
            await store_batch(conn, [escalation("replicas", "gone-1")], owner=theirs)
        await gone.close()  # that replica died
        # a third replica starting now: takes the dead one's batch, not the live one's
        assert await catch_up(engine, database.url, None) == 1
        async with database.pool.connection() as conn:
            cur = await conn.execute("SELECT charge_point_id FROM issues")
            assert [r["charge_point_id"] for r in await cur.fetchall()] == ["gone-1"]
            cur = await conn.execute("SELECT owner FROM unanalysed")
            assert [r["owner"] for r in await cur.fetchall()] == [mine]
    finally:
        await live.close()
        await engine.close()


async def test_digests_read_back_for_catch_up_carry_what_analysis_reads(database: Database) -> None:
    d = digest(
        "rebuilt", T0,
        [counters("rebuilt-1", disconnects=3, self_resolved=2, faults=1), counters("rebuilt-2")],
        self_resolved=[blip("rebuilt-1", T0 + timedelta(minutes=5), kind="fault")],
        cleared=["inc-a", "inc-b"],
    )  # fmt: skip
    quiet = digest("rebuilt", T0 + timedelta(hours=1), [counters("rebuilt-1")])
    drops = digest("rebuilt", T0 + timedelta(hours=2), [counters("rebuilt-2", disconnects=1)])
    async with database.pool.connection() as conn:
        await store_batch(conn, [d, quiet, drops], owner=1)
        escalations, digests = await load_stored(
            conn, [drops.message_id, d.message_id, quiet.message_id]
        )
    assert escalations == []
    assert digests == [DigestSummary.of(x) for x in (d, quiet, drops)]  # as ingest summed them
    assert [(x.small_incidents, x.fault_blips) for x in digests] == [
        (True, True), (False, False), (True, False)
    ]  # fmt: skip
    assert digests[0].cleared_incidents == ("inc-a", "inc-b")


async def test_without_an_owner_nothing_is_recorded_as_unanalysed(database: Database) -> None:
    # ``chargesight cloud import`` and the tests store and analyse in one go
    async with database.pool.connection() as conn:
        res = await store_batch(conn, [escalation("plain", "plain-1")])
        assert res.batch_keys == []
        cur = await conn.execute("SELECT count(*) AS n FROM unanalysed")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


@pytest.mark.mqtt
async def test_an_analysis_that_failed_in_a_running_collector_is_tried_again_at_its_refresh(
    database: Database, mosquitto: Mosquitto
) -> None:
    config = make_config(database.url, mosquitto.url, refresh_interval_s=0.3)
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    real = collector.engine.on_stored
    calls = 0

    async def fails_once(*args: Any, **kw: Any) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        return await real(*args, **kw)

    collector.engine.on_stored = fails_once  # type: ignore[method-assign]
    try:
        n = await asyncio.to_thread(pub.send, escalation("retry", "retry-1"))
        await collector.wait_stored(n)
        assert calls == 1 and query(database.url, "SELECT id FROM issues") == []
        # the next refresh analyses the batch again, from what was stored
        await collector.wait_until(lambda: calls >= 2, timeout=30)
        issues = query(database.url, "SELECT charge_point_id FROM issues")
        assert [r["charge_point_id"] for r in issues] == ["retry-1"]
        assert query(database.url, "SELECT batch_key FROM unanalysed") == []
    finally:
        await asyncio.to_thread(pub.close)
        collector.stop()
        await asyncio.wait_for(task, 20)


async def test_a_batch_that_cannot_be_analysed_does_not_use_up_the_attempts_of_its_chunk(
    database: Database,
) -> None:
    # two batches retried together; the analysis fails whenever the poisoned one is in it
    engine = Engine(database.pool, AnalysisSection())
    real = engine.on_stored

    async def poisoned(escalations: Any, digests: Any, **kw: Any) -> set[str]:
        if any(e.charge_point_id == "poison-1" for e in escalations):
            raise ValueError("a bug this batch's data triggers")
        return await real(escalations, digests, **kw)

    engine.on_stored = poisoned  # type: ignore[method-assign]
    me = AnalysisOwner(database.url)
    owner = await me.acquire()
    try:
        keys = []
        for cp in ("poison-1", "fine-1"):
            async with database.pool.connection() as conn:
                keys += (await store_batch(conn, [escalation("chunk", cp)], owner=owner)).batch_keys
        left = await retry_failed(engine, database.url, owner, keys)
    finally:
        await me.close()
        await engine.close()
    assert left == [keys[0]]  # tried again next time; the other batch was analysed
    rows = query(database.url, "SELECT batch_key, attempts FROM unanalysed")
    assert [(r["batch_key"], r["attempts"]) for r in rows] == [(keys[0], 1)]
    issues = query(database.url, "SELECT charge_point_id FROM issues")
    assert [r["charge_point_id"] for r in issues] == ["fine-1"]
