"""``[ingest] workers``: ingest processes in one shared subscription, on real Mosquitto and PostgreSQL."""

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

import httpx
import pytest

from chargesight.cloud.collector import Collector, IngestWorkerError, check_workers
from chargesight.cloud.config import CloudConfig
from chargesight.cloud.db import Database
from chargesight.common.configload import ConfigError
from tests.cloud.conftest import OPERATOR, make_config, start_collector
from tests.cloud.helpers import T0, Publisher, counters, digest, escalation, usage_history
from tests.cloud.test_collector_scenarios import WEEK, flaky_day
from tests.servers import Mosquitto, free_port

# each test on a broker of its own: the session's broker holds other tests' retained messages,
# which a new subscription receives too, and these tests count what arrives
pytestmark = [pytest.mark.postgres, pytest.mark.mqtt, pytest.mark.slow]


def with_workers(config: CloudConfig, workers: int, **ingest: object) -> CloudConfig:
    return config.model_copy(
        update={"ingest": config.ingest.model_copy(update={"workers": workers, **ingest})}
    )


async def count(db: Database, sql: str) -> int:
    async with db.pool.connection() as conn:
        row = await (await conn.execute(sql)).fetchone()
        assert row is not None
        return int(str(next(iter(row.values()))))


async def stop(collector: Collector, task: asyncio.Task[None]) -> None:
    collector.stop()
    await asyncio.wait_for(task, 60)


async def test_two_workers_split_the_stream_and_store_every_message_exactly_once(
    database: Database, mosquitto_private: Mosquitto
) -> None:
    config = with_workers(make_config(database.url, mosquitto_private.url), 2, batch_size=20)
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto_private.url)
    try:
        assert collector.workers is not None and collector.source is None
        sites = [f"split-{i}" for i in range(6)]
        digests = [
            digest(s, T0 + timedelta(hours=h), [counters(f"{s}-cp-{c}") for c in range(3)])
            for h in range(30)
            for s in sites
        ]
        faults = [escalation(s, f"{s}-cp-0") for s in sites]
        n = await asyncio.to_thread(pub.send, *digests, *faults)
        await collector.wait_stored(n, timeout=60)
        # a re-delivery of some of them (a publisher retrying) is stored once
        again = await asyncio.to_thread(pub.send, *digests[:40], *faults)
        await collector.wait_stored(n + again, timeout=60)

        a, b = collector.workers.handled
        assert a > 0 and b > 0 and a + b == n + again  # the broker split the stream
        assert await count(database, "SELECT count(*) FROM messages") == n
        assert await count(database, "SELECT count(*) FROM charger_intervals") == 3 * len(digests)
        assert await count(database, "SELECT sum(intervals) FROM charger_daily") == 3 * len(digests)
        # what the workers stored was analysed here: one issue per faulted charge point
        assert await count(database, "SELECT count(*) FROM issues") == len(sites)
        assert collector.stored_total == n
        pids = [collector.workers.pid(k) for k in range(2)]
    finally:
        await asyncio.to_thread(pub.close)
        await stop(collector, task)
    # stopped with the collector, after storing what they had
    assert collector.workers.exit_codes == [0, 0]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_what_workers_hand_to_the_analysis_still_raises_site_problems_and_clears_faults(
    database: Database, mosquitto_private: Mosquitto
) -> None:
    # workers hand the analysis a summary of each digest (ingest.DigestSummary), not the digest:
    # the flaky site must still be found and costed, and a cleared fault resolved, as in one process
    config = with_workers(
        make_config(database.url, mosquitto_private.url, recurring_min_incidents=20), 2
    )
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto_private.url)
    try:
        cps = ["w-1", "w-2", "w-3"]
        history = usage_history("cafe", cps, T0 - 2 * WEEK, 14 * 24)
        fault = escalation("depot", "d-1", incident_id="inc-d1")
        n = await asyncio.to_thread(pub.send, *history, *flaky_day("cafe", cps), fault)
        await collector.wait_stored(n, timeout=60)
        healed = digest("depot", T0 + timedelta(hours=2), [counters("d-1")], cleared=["inc-d1"])
        n += await asyncio.to_thread(pub.send, healed)
        await collector.wait_stored(n, timeout=60)

        async with database.pool.connection() as conn:
            cur = await conn.execute("SELECT site_id, scope, status, doc FROM issues ORDER BY 1")
            rows = await cur.fetchall()
        assert [(r["site_id"], r["scope"], r["status"]) for r in rows] == [
            ("cafe", "site", "open"),
            ("depot", "charge_point", "resolved"),
        ]
        cafe = rows[0]["doc"]
        assert isinstance(cafe, dict)
        assert cafe["recurring"]["incidents"] == 24
        assert cafe["revenue_lost"]["amount"] == pytest.approx(240.0)  # as in one process
    finally:
        await asyncio.to_thread(pub.close)
        await stop(collector, task)


async def test_a_killed_worker_loses_nothing_its_unacknowledged_messages_come_back(
    database: Database, mosquitto_private: Mosquitto
) -> None:
    # each worker holds what it receives for 3 s before storing it: the kill finds it unstored
    config = with_workers(
        make_config(database.url, mosquitto_private.url), 2, batch_size=10_000, batch_delay_s=3.0
    )
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto_private.url)
    try:
        assert collector.workers is not None
        victim = collector.workers.pid(0)
        assert victim is not None
        faults = [escalation("kill", f"kill-cp-{i}") for i in range(40)]
        n = await asyncio.to_thread(pub.send, *faults)
        assert collector.handled_total == 0  # nothing stored, nothing acknowledged yet
        os.kill(victim, signal.SIGKILL)

        await collector.wait_stored(n, timeout=90)
        assert collector.workers.restarts == 1
        assert collector.workers.pid(0) not in (None, victim)
        assert collector.workers.handled[0] > 0  # the restarted worker got its share back
        assert await count(database, "SELECT count(*) FROM messages") == n
        assert await count(database, "SELECT count(*) FROM issues") == n
    finally:
        await asyncio.to_thread(pub.close)
        await stop(collector, task)


async def test_a_worker_that_cannot_reach_the_broker_fails_the_start_in_words(
    database: Database,
) -> None:
    config = with_workers(make_config(database.url, f"mqtt://127.0.0.1:{free_port()}"), 2)
    collector = Collector(config, database)
    with pytest.raises(
        IngestWorkerError, match=r"mqtt\.url mqtt://127\.0\.0\.1:\d+: cannot connect"
    ):
        await collector.serve()
    assert collector.workers is not None
    assert None not in collector.workers.exit_codes  # both were waited for: none left running


def test_workers_need_an_mqtt5_shared_subscription() -> None:
    base = with_workers(make_config("postgresql://x@127.0.0.1/db", "mqtt://127.0.0.1:1883"), 2)
    for mqtt in ({"protocol": "3.1.1"}, {"shared_group": None}):
        config = base.model_copy(update={"mqtt": base.mqtt.model_copy(update=mqtt)})
        with pytest.raises(ConfigError, match=r"^ingest\.workers: .*MQTT 5 shared subscription"):
            check_workers(config)
    check_workers(base)  # MQTT 5 (or auto) with a shared group: fine


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_cloud_run_with_workers_ingests_and_stops_them_on_sigterm(
    tmp_path: Path, fresh_db: str, mosquitto_private: Mosquitto
) -> None:
    port = free_port()
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(
        f'[database]\nurl = "{fresh_db}"\n[mqtt]\nurl = "{mosquitto_private.url}"\n'
        f'shared_group = "run-{uuid.uuid4().hex[:6]}"\n[ingest]\nworkers = 2\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\ntokens = [{{token = "{OPERATOR}", role = "operator"}}]\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "chargesight.cli.main", "cloud", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # the port opens once both workers have subscribed
            assert proc.poll() is None, f"cloud run exited with {proc.returncode}"
            assert time.monotonic() < deadline, "cloud run did not open its port"
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        workers = children(proc.pid)
        assert len(workers) == 2
        pub = Publisher(mosquitto_private.url)
        pub.send(*[escalation("run", f"run-{i}") for i in range(10)])
        pub.close()
        issues: list[object] = []
        while len(issues) < 10 and time.monotonic() < deadline:
            issues = httpx.get(f"http://127.0.0.1:{port}/api/v1/issues",
                               headers={"Authorization": f"Bearer {OPERATOR}"}).json()["issues"]  # fmt: skip
        assert len(issues) == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0
    for pid in workers:  # the workers stopped with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cloud_run_says_which_key_is_wrong_when_workers_cannot_share(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(
        '[database]\nurl = "postgresql://x@127.0.0.1:1/db"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        'protocol = "3.1.1"\n[ingest]\nworkers = 2\n'
    )
    res = subprocess.run([sys.executable, "-m", "chargesight.cli.main", "cloud", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert "ingest.workers" in res.stderr
