"""Cloud collector benchmark: ingest through a real broker into PostgreSQL, and API latency.

Run: ``.venv/bin/python bench/cloud.py [--messages N] [--chargers-per-digest C] [--fleet CPS]``

Measured in the same run, on the same Mosquitto and PostgreSQL:

1. a bare paho subscriber (MQTT 5, shared subscription, QoS 1) receiving N
   messages from a publisher process — the ceiling, measured before and after
   the collector runs (the mean is the reference: the machine's load drifts);
   A paho subscriber that validates each message with pydantic and stores nothing is
   measured too: what the schema check alone leaves of (1).
2. the collector receiving the same N messages and storing them (validated,
   idempotent, acknowledged after commit) — as a ratio to (1): in one process
   (``[ingest] workers = 0``), and with ``--workers`` ingest processes;
3. both again from a queue the broker already holds (each subscriber's persistent
   session subscribed, went away while the publisher sent everything, and came back):
   what each drains with no publisher sharing the machine — the bare subscriber then
   gets what the broker can deliver, the collector what storing allows;
4. a raw binary COPY of the same charger rows into a bare table — the write
   ceiling, as rows/s and as a ratio;
5. API latency (p50/p99 over 200 requests each) for ``GET /issues`` and
   ``GET /fleet/models`` on a database holding a year of daily roll-ups for
   ``--fleet`` charge points and 5,000 issues.

``--accuracy DIR`` instead imports a simulator history (``chargesight sim history``)
through ``cloud import`` and scores the issues against its ``ground_truth.jsonl``:
recall and precision of issues, scope and action right, related units (pairs within
the simulator's ``related_group``) and the revenue estimate's error.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chargesight.cloud.collector import Collector, tune_gc
from chargesight.cloud.config import CloudConfig
from chargesight.cloud.db import open_database
from chargesight.cloud.issues import apply_escalation
from chargesight.cloud.issuestore import save_issue
from chargesight.common.logs import configure_logging
from chargesight.common.messages import (
    ChargerCounters,
    Digest,
    Escalation,
    Fault,
    Hardware,
    digests_topic,
    escalations_topic,
    parse_edge_message,
)
from tests.servers import start_mosquitto, start_postgres

T0 = datetime(2026, 1, 5, tzinfo=UTC)
BATCH_SIZE = 1000
BATCH_DELAY = 0.02


def build_payloads(n: int, per_digest: int, sites: int = 200) -> list[tuple[str, bytes]]:
    """``n`` messages from ``sites`` sites: hourly digests of ``per_digest`` chargers each, with
    the counters a real edge agent's digest carries (``occupied_s`` and ``connectors`` too:
    without occupancy the revenue estimate takes a much slower fallback), and 1 % escalations.
    Each is sent when a real agent would send it — a digest as its interval ends, an escalation
    at the end of the recovery window after its fault began — not at the wall clock's now: an
    escalation whose ``sent_at`` is months after its start is an open outage of months, which
    the analysis then prices hour by hour."""
    out = []
    for i in range(n):
        site = f"site-{i % sites}"
        if i % 100 == 99:
            msg: Digest | Escalation = Escalation(
                site_id=site, incident_id=uuid.uuid4().hex[:12], charge_point_id=f"{site}-cp-0",
                connector_id=None, scope="charge_point",
                fault=Fault(code="InternalError", vendor_code="E1", category="software"),
                started_at=T0 + timedelta(hours=i // sites), hardware=Hardware(vendor="Acme", model="DC50"),
                sent_at=T0 + timedelta(hours=i // sites, seconds=630),
            )  # fmt: skip
            out.append((escalations_topic(site), msg.to_json()))
        else:
            start = T0 + timedelta(hours=i // sites)
            msg = Digest(
                site_id=site, interval_start=start, interval_end=start + timedelta(hours=1), currency="EUR",
                price_per_kwh=0.5, sent_at=start + timedelta(hours=1, seconds=2),
                chargers=[ChargerCounters(charge_point_id=f"{site}-cp-{c}", model="DC50", firmware="1.0",
                                          connectors=2, connected_s=3600, sessions_started=2, energy_wh=40000,
                                          occupied_s=3300, max_power_w=48000, rated_power_w=50000,
                                          mean_temperature_c=35)
                          for c in range(per_digest)],
            )  # fmt: skip
            out.append((digests_topic(site), msg.to_json()))
    return out


def publisher(url: str, payloads: list[tuple[str, bytes]], start: mp.Event) -> None:  # type: ignore[valid-type]
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, int(port))
    c.loop_start()
    start.wait()  # type: ignore[attr-defined]
    infos = [c.publish(t, p, qos=1) for t, p in payloads]
    for i in infos:
        i.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def run_publisher(url: str, payloads: list[tuple[str, bytes]]) -> tuple[mp.Process, object]:
    ctx = mp.get_context("fork")
    ev = ctx.Event()
    p = ctx.Process(target=publisher, args=(url, payloads, ev))
    p.start()
    return p, ev


class _Receiver:
    """A paho subscriber's ``on_message``: counts what arrives (each validated by pydantic
    with ``validate``) and when the last came."""

    def __init__(self, n: int, validate: bool = False) -> None:
        self.n = n
        self.validate = validate
        self.got = 0
        self.last = 0.0
        self.done = threading.Event()

    def on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if self.validate:
            parse_edge_message(m.topic.rsplit("/", 1)[1], m.payload)
        self.got += 1
        self.last = time.perf_counter()
        if self.got >= self.n:
            self.done.set()

    def rate(self, t0: float) -> float:
        """Messages/s from ``t0`` to the last one, once all have come (300 s at most)."""
        self.done.wait(300)
        if self.got != self.n:
            raise RuntimeError(f"the subscriber got {self.got} of {self.n} messages")
        return self.n / (self.last - t0)


def _publish_all(url: str, payloads: list[tuple[str, bytes]]) -> float:
    """Send everything from a publisher process; returns when it began sending."""
    proc, ev = run_publisher(url, payloads)
    time.sleep(0.3)  # let the publisher connect
    t0 = time.perf_counter()
    ev.set()  # type: ignore[attr-defined]
    proc.join()
    return t0


def bare_subscriber(url: str, payloads: list[tuple[str, bytes]], validate: bool = False) -> float:
    """Messages/s a paho subscriber receives; with ``validate``, each validated by pydantic
    as it arrives (the schema check alone, nothing stored)."""
    host, port = url.removeprefix("mqtt://").split(":")
    rx = _Receiver(len(payloads), validate)
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    c.on_message = rx.on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_connect = lambda cl, *a: cl.subscribe([("$share/bare/chargesight/v1/sites/+/digests", 1),
                                               ("$share/bare/chargesight/v1/sites/+/escalations", 1)])  # fmt: skip
    c.connect(host, int(port))
    c.loop_start()
    subscribed.wait(10)
    t0 = _publish_all(url, payloads)
    try:
        return rx.rate(t0)
    finally:
        c.disconnect()
        c.loop_stop()


def bare_drain(url: str, payloads: list[tuple[str, bytes]]) -> float:
    """Messages/s a paho subscriber receives from a queue the broker already holds: its
    persistent session subscribes, goes away, the publisher sends everything, and the
    subscriber comes back (no publisher sharing the machine while it is timed)."""
    host, port = url.removeprefix("mqtt://").split(":")
    topics = [("chargesight/v1/sites/+/digests", 1), ("chargesight/v1/sites/+/escalations", 1)]
    expiry = Properties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 3600
    first = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-drain", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    first.on_subscribe = lambda *a: subscribed.set()
    first.connect(host, int(port), clean_start=True, properties=expiry)
    first.loop_start()
    first.subscribe(topics)
    subscribed.wait(10)
    first.disconnect()
    first.loop_stop()
    _publish_all(url, payloads)
    rx = _Receiver(len(payloads))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-drain", protocol=mqtt.MQTTv5)
    c.on_message = rx.on_message
    t0 = time.perf_counter()
    c.connect(host, int(port), clean_start=False, properties=expiry)
    c.loop_start()
    try:
        return rx.rate(t0)
    finally:
        c.disconnect()
        c.loop_stop()


async def collector_drain(db_url: str, mqtt_url: str, payloads: list[tuple[str, bytes]]) -> float:
    """The collector (one process) storing a queue the broker already holds, as ``bare_drain``."""
    cfg = CloudConfig.model_validate({
        "database": {"url": db_url, "pool_max": 6},
        "mqtt": {"url": mqtt_url, "shared_group": None, "client_id": "bench-collector-drain"},
        "api": {"listen": "127.0.0.1:0"}, "analysis": {"refresh_interval_s": 3600},
        "ingest": {"batch_size": BATCH_SIZE, "batch_delay_s": BATCH_DELAY, "workers": 0},
        "logging": {"level": "warning"},
    })  # fmt: skip
    db = await open_database(db_url, max_size=6)
    n = len(payloads)

    async def session(drain: bool) -> float:
        collector = Collector(cfg, db)
        ready = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(collector.serve(ready))
        await ready.wait()
        if drain:
            await collector.wait_until(lambda: collector.handled_total >= n, timeout=600)
        elapsed = time.perf_counter() - t0
        collector.stop()
        await task
        return n / elapsed

    await session(drain=False)  # the session keeps the subscription while the queue fills
    await asyncio.to_thread(_publish_all, mqtt_url, payloads)
    rate = await session(drain=True)
    await db.close()
    return rate


async def collector_ingest(
    db_url: str, mqtt_url: str, payloads: list[tuple[str, bytes]], workers: int = 0
) -> tuple[float, float]:
    cfg = CloudConfig.model_validate({
        "database": {"url": db_url, "pool_max": 6}, "mqtt": {"url": mqtt_url, "shared_group": "bench"},
        "api": {"listen": "127.0.0.1:0"}, "analysis": {"refresh_interval_s": 3600},
        "ingest": {"batch_size": BATCH_SIZE, "batch_delay_s": BATCH_DELAY, "workers": workers},
        "logging": {"level": "warning"},
    })  # fmt: skip
    db = await open_database(db_url, max_size=6)
    collector = Collector(cfg, db)
    ready = asyncio.Event()
    task = asyncio.create_task(collector.serve(ready))
    await ready.wait()
    proc, ev = run_publisher(mqtt_url, payloads)
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    ev.set()  # type: ignore[attr-defined]
    n = len(payloads)
    await collector.wait_until(lambda: collector.handled_total >= n, timeout=600)
    stored = time.perf_counter() - t0
    await collector.wait_until(collector.idle, timeout=600)
    analysed = time.perf_counter() - t0
    await asyncio.to_thread(proc.join)
    collector.stop()
    await task
    await db.close()
    return n / stored, n / analysed


def raw_copy(db_url: str, payloads: list[tuple[str, bytes]]) -> tuple[float, int]:
    rows = []
    for topic, p in payloads:
        if topic.endswith("digests"):
            d = Digest.model_validate_json(p)
            rows.extend((d.site_id, c.charge_point_id, d.interval_start, d.interval_end, c.sessions_started,
                         c.energy_wh) for c in d.chargers)  # fmt: skip
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE TABLE raw_rows (site text, cp text, s timestamptz, e timestamptz, n int, wh float8)"
        )
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY raw_rows FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "timestamptz", "timestamptz", "int4", "float8"])
            for r in rows:
                copy.write_row(r)
        conn.commit()
        elapsed = time.perf_counter() - t0
    return len(rows) / elapsed, len(rows)


def seed_fleet(db_url: str, chargers: int, issues: int) -> None:
    models = [
        ("Acme", "DC50", "1.0"),
        ("Acme", "DC50", "1.1"),
        ("Volt", "AC22", "3.2"),
        ("Volt", "HPC150", "0.9"),
    ]
    end = date(2026, 1, 1)
    with psycopg.connect(db_url) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY charger_daily (charge_point_id, day, site_id, vendor, model, firmware, intervals, covered_s,"
                " connected_s, sessions_started, energy_wh) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "date", "text", "text", "text", "text", "int4", "float8", "float8", "int4",
                            "float8"])  # fmt: skip
            for c in range(chargers):
                v, m, f = models[c % len(models)]
                for d in range(365):
                    copy.write_row((f"cp-{c}", end - timedelta(days=d), f"site-{c // 10}", v, m, f, 24, 86400.0,
                                    86400.0, 12, 240000.0))  # fmt: skip
        conn.execute(
            "INSERT INTO model_daily SELECT day, coalesce(vendor, ''), coalesce(model, ''),"
            " coalesce(firmware, ''), sum(covered_s), sum(self_resolved), sum(health_sum), sum(health_n)"
            " FROM charger_daily GROUP BY 1, 2, 3, 4"
        )
        conn.execute(
            "INSERT INTO chargers (charge_point_id, site_id, vendor, model, firmware)"
            " SELECT DISTINCT ON (charge_point_id) charge_point_id, site_id, vendor, model, firmware"
            " FROM charger_daily ORDER BY charge_point_id"
        )
        conn.commit()

    async def add_issues() -> None:
        db = await open_database(db_url)
        async with db.pool.connection() as aconn:
            for i in range(issues):
                v, m, f = models[i % len(models)]
                esc = Escalation(
                    site_id=f"site-{i % (chargers // 10)}", incident_id=f"inc-{i}", charge_point_id=f"cp-{i}",
                    connector_id=None, scope="charge_point",
                    fault=Fault(code="InternalError", vendor_code=f"E{i % 7}", category="software"),
                    started_at=T0 - timedelta(hours=i), hardware=Hardware(vendor=v, model=m, firmware=f),
                )  # fmt: skip
                issue = apply_escalation(None, esc)
                assert issue is not None
                issue.priority = (i % 997) / 997
                if i % 3 == 0:
                    issue.status = "resolved"
                await save_issue(aconn, issue)
            await aconn.commit()
        await db.close()

    asyncio.run(add_issues())


async def api_latency(db_url: str, mqtt_url: str) -> dict[str, tuple[float, float]]:
    cfg = CloudConfig.model_validate({
        "database": {"url": db_url}, "mqtt": {"url": mqtt_url},
        "api": {"listen": "127.0.0.1:0", "tokens": [{"token": "bench-token", "role": "viewer"}]},
        "analysis": {"refresh_interval_s": 3600},
    })  # fmt: skip
    db = await open_database(db_url)
    collector = Collector(cfg, db)
    ready = asyncio.Event()
    task = asyncio.create_task(collector.serve(ready))
    await ready.wait()
    t0 = time.perf_counter()
    await collector.engine.fleet_models()
    cold = time.perf_counter() - t0
    out: dict[str, tuple[float, float]] = {
        "fleet view computation (cold, once per refresh)": (cold * 1000, cold * 1000)
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{collector.api_port}",
                                 headers={"Authorization": "Bearer bench-token"}) as client:  # fmt: skip
        for path in (
            "/api/v1/issues",
            "/api/v1/issues?status=all&limit=500",
            "/api/v1/fleet/models",
        ):
            times = []
            for _ in range(200):
                t = time.perf_counter()
                r = await client.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            times.sort()
            out[path] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    collector.stop()
    await task
    await db.close()
    return out


async def migrate_only(url: str) -> None:
    db = await open_database(url)
    await db.close()


def score(issues: list[dict[str, object]], truth: list[dict[str, object]]) -> dict[str, object]:
    """Match issues to injected faults that needed the cloud; see the module docstring."""
    # what the cloud must raise: faults the edge escalated, and the flaky-connectivity sites
    # (predictive warnings before a failure are the foresight models' job, scored elsewhere)
    # and faults a reset clears every time but that came back at least once within the history
    # (a firmware bug): the edge never escalates them, the cloud sees the repeats
    expected = [
        t
        for t in truth
        if not t.get("background")
        and (
            t.get("escalated_at")
            or t.get("kind") == "flaky_connectivity"
            or (
                t.get("self_resolving")
                and t.get("fix") != "reboot"
                and int(t.get("episodes") or 0) >= 2
            )
        )
    ]
    used: set[str] = set()
    matches: list[tuple[dict[str, object], dict[str, object]]] = []
    for t in expected:
        cands = []
        for i in issues:
            if i["site_id"] != t["site_id"] or str(i["id"]) in used:
                continue
            if t["scope"] == "site" and t["kind"] == "flaky_connectivity":
                ok = (i["kind"] == "recurring" and i["recommended_action"] == "network_fix") or i[
                    "scope"
                ] == "site"
            else:
                fault = i["fault"]
                assert isinstance(fault, dict)
                ok = i["charge_point_id"] == t["charge_point_id"] and fault["code"] == t["code"]
            if ok:
                cands.append(i)
        if cands:
            used.add(str(cands[0]["id"]))
            matches.append((t, cands[0]))
    n = len(matches)

    # an unmatched issue about a real fault of the same charge point while it was active (e.g.
    # a PSU's trips repeating before it fails) is a second issue for a real problem, not a
    # false one: counted apart
    def about_real_fault(i: dict[str, object]) -> bool:
        for t in truth:
            if t.get("background") or t["site_id"] != i["site_id"]:
                continue
            if t["charge_point_id"] is not None and t["charge_point_id"] != i["charge_point_id"]:
                continue
            end = str(t.get("ended_at") or "9999")
            if str(t["started_at"]) <= str(i["started_at"]) <= end:
                return True
        return False

    extra = [i for i in issues if str(i["id"]) not in used and about_real_fault(i)]
    scope_ok = sum(1 for t, i in matches if i["scope"] == t["scope"])
    action_ok = sum(1 for t, i in matches if i["recommended_action"] == t["fix"])
    # related units: ordered pairs within a related group, among the matched faults
    members: dict[object, set[str]] = {}  # a unit can be in several groups (a PSU and a bug)
    for t in truth:
        if t.get("related_group"):
            members.setdefault(t["related_group"], set()).add(str(t["charge_point_id"]))
    truth_pairs = set()
    found_pairs = set()
    for t, i in matches:
        cp = str(t["charge_point_id"])
        g = t.get("related_group")
        if g:
            truth_pairs |= {(cp, o) for o in members[g] if o != cp}
        rel = i["related"]
        assert isinstance(rel, list)
        if g:  # scored where the simulator knows the relatives (its related_group)
            found_pairs |= {(cp, str(r["charge_point_id"])) for r in rel}
    tp = len(truth_pairs & found_pairs)
    errs = []
    by_kind: dict[str, list[float]] = {}
    by_site: dict[str, list[float]] = {}
    sum_ours = sum_truth = 0.0
    floor: list[float] = []
    for t, i in matches:
        tr = t["revenue_lost"]
        ours = i["revenue_lost"]
        assert isinstance(tr, dict)
        if tr["amount"] and isinstance(ours, dict):
            e = abs(float(ours["amount"]) - float(tr["amount"])) / float(tr["amount"])
            errs.append(e)
            by_kind.setdefault(str(t["kind"]), []).append(e)
            sum_ours += float(ours["amount"])
            sum_truth += float(tr["amount"])
            lost = float(t.get("sessions_lost") or 0)  # type: ignore[arg-type]
            if lost > 0:
                # the truth is what happened: how many drivers came is a Poisson draw around
                # the rate an estimate from past weeks can know; its median relative deviation
                # (normal approximation) is the error no estimate of the rate gets below
                floor.append(0.6745 / math.sqrt(lost))
            site = by_site.setdefault(str(t["site_id"]), [0.0, 0.0])
            site[0] += float(ours["amount"])
            site[1] += float(tr["amount"])
    # a site's issues together: how the simulator splits a driver lost to several faults at
    # once (equal shares of each fault met) and the estimate (Shapley shares of the capacity
    # each took) differ by convention, not by what was lost
    site_errs = [abs(o - t) / t for o, t in by_site.values() if t]
    return {
        "faults needing the cloud": len(expected),
        "issues": len(issues),
        "recall": n / len(expected) if expected else None,
        "precision": (n + len(extra)) / len(issues) if issues else None,
        "second issues, real fault": [
            f"{i['site_id']}/{i['charge_point_id']}/{i['fault']['code']} ({i['status']})"  # type: ignore[index]
            for i in extra
        ],
        "scope right": scope_ok / n if n else None,
        "action right": action_ok / n if n else None,
        "related precision": tp / len(found_pairs) if found_pairs else None,
        "related recall": tp / len(truth_pairs) if truth_pairs else None,
        "revenue error (median)": statistics.median(errs) if errs else None,
        "revenue error by kind": {
            k: f"median {statistics.median(v):.3f} over {len(v)}"
            for k, v in sorted(by_kind.items())
        },
        "revenue error floor, drivers' arrivals alone (median)": (
            statistics.median(floor) if floor else None
        ),
        "revenue error per site (median)": statistics.median(site_errs) if site_errs else None,
        "revenue, all issues (sum ours / sum truth)": sum_ours / sum_truth if sum_truth else None,
        "revenue (ours / truth)": [
            f"{t['kind']}@{t['charge_point_id'] or t['site_id']}: "
            f"{i['revenue_lost']['amount'] if isinstance(i['revenue_lost'], dict) else None} / "
            f"{t['revenue_lost']['amount']}"  # type: ignore[index]
            for t, i in matches
        ],
        "wrong action (ours / truth)": [
            f"{t['kind']}@{t['charge_point_id'] or t['site_id']}: {i['recommended_action']} / {t['fix']}"
            for t, i in matches
            if i["recommended_action"] != t["fix"]
        ],
        "unmatched issues": [
            f"{i['site_id']}/{i['charge_point_id']}/{i['fault']['code']}"
            for i in issues  # type: ignore[index]
            if str(i["id"]) not in used and i not in extra
        ],
        "missed faults": [
            f"{t['kind']}@{t['site_id']}/{t['charge_point_id']}"
            for t in expected
            if t not in [m[0] for m in matches]
        ],
    }


def accuracy(directory: Path, ratio: float) -> int:
    import orjson

    from chargesight.cloud.config import AnalysisSection
    from chargesight.cloud.engine import Engine
    from chargesight.cloud.importer import import_dir
    from chargesight.cloud.queries import list_issues

    pg = start_postgres()
    try:

        async def run() -> list[dict[str, object]]:
            db = await open_database(pg.url)
            engine = Engine(db.pool, AnalysisSection(recurring_min_ratio_to_fleet=ratio))
            t0 = time.perf_counter()
            report = await import_dir(db.pool, engine, directory)
            print(f"{report.text()} in {time.perf_counter() - t0:.1f}s")
            async with db.pool.connection() as conn:
                issues = await list_issues(conn, "all", None, 500)
            await db.close()
            return issues

        issues = asyncio.run(run())
    finally:
        pg.stop()
    truth = [
        orjson.loads(line)
        for line in (directory / "ground_truth.jsonl").read_bytes().splitlines()
        if line
    ]
    for k, v in score(issues, truth).items():
        print(f"{k:26s} {v:.3f}" if isinstance(v, float) else f"{k:26s} {v}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--chargers-per-digest", type=int, default=10)
    ap.add_argument("--fleet", type=int, default=10_000)
    ap.add_argument(
        "--workers", type=int, default=2, help="[ingest] workers measured beside the in-process run"
    )
    ap.add_argument(
        "--accuracy", type=Path, metavar="DIR", help="score a simulator history instead"
    )
    ap.add_argument(
        "--recurring-ratio", type=float, default=0.0, help="[analysis] recurring_min_ratio_to_fleet"
    )
    args = ap.parse_args()
    configure_logging("warning")
    if args.accuracy:
        return accuracy(args.accuracy, args.recurring_ratio)
    broker, pg = start_mosquitto(), start_postgres()
    try:
        payloads = build_payloads(args.messages, args.chargers_per_digest)
        size = sum(len(p) for _, p in payloads) / len(payloads)
        print(f"messages: {len(payloads)} (99% digests of {args.chargers_per_digest} chargers, 1% escalations), "
              f"mean {size:.0f} bytes")  # fmt: skip
        bare = bare_subscriber(broker.url, payloads)
        print(f"bare paho subscriber:         {bare:10.0f} msg/s")
        with psycopg.connect(pg.url, autocommit=True) as c:
            for w in sorted({0, args.workers}):
                c.execute(f"CREATE DATABASE bench_ingest_{w}")
            c.execute("CREATE DATABASE bench_api")
            c.execute("CREATE DATABASE bench_drain")
        base = pg.url.rsplit("/", 1)[0]
        tune_gc()  # as `chargesight cloud run` does (its ingest workers do it too)
        runs = {}
        for w in sorted({0, args.workers}):
            runs[w] = asyncio.run(
                collector_ingest(f"{base}/bench_ingest_{w}", broker.url, payloads, workers=w)
            )
        # the machine's load drifts: the ceiling is measured again after the collector runs
        bare_after = bare_subscriber(broker.url, payloads)
        print(f"bare paho subscriber, again:  {bare_after:10.0f} msg/s")
        bare = (bare + bare_after) / 2
        validating = bare_subscriber(broker.url, payloads, validate=True)
        print(f"paho subscriber validating each message (pydantic), nothing stored: "
              f"{validating:8.0f} msg/s = {validating / bare:.0%}")  # fmt: skip
        for w, (stored, analysed) in runs.items():
            who = "1 process" if w == 0 else f"{w} ingest workers"
            print(f"collector ({who}), stored + acked:    {stored:8.0f} msg/s  = {stored / bare:.0%}"
                  " of the bare subscriber (mean of both)")  # fmt: skip
            print(f"collector ({who}), stored + analysed: {analysed:8.0f} msg/s  = "
                  f"{analysed / bare:.0%}")  # fmt: skip
        # the same, from a queue the broker holds: no publisher sharing the machine meanwhile
        drain_bare = bare_drain(broker.url, payloads)
        drain = asyncio.run(collector_drain(f"{base}/bench_drain", broker.url, payloads))
        print(f"from a queue the broker holds (publisher done first): bare paho subscriber "
              f"{drain_bare:8.0f} msg/s, collector (1 process) {drain:8.0f} msg/s = "
              f"{drain / drain_bare:.0%}")  # fmt: skip
        stored = max(r[0] for r in runs.values())
        rows_s, rows = raw_copy(f"{base}/bench_ingest_0", payloads)
        print(f"raw binary COPY of the same {rows} charger rows: {rows_s:10.0f} rows/s; collector wrote "
              f"{stored * args.chargers_per_digest * 0.99:.0f} rows/s = "
              f"{stored * args.chargers_per_digest * 0.99 / rows_s:.0%} of it")  # fmt: skip
        t0 = time.perf_counter()
        asyncio.run(migrate_only(f"{base}/bench_api"))
        seed_fleet(f"{base}/bench_api", args.fleet, 5000)
        print(
            f"seeded {args.fleet} chargers × 365 daily roll-ups + 5000 issues in {time.perf_counter() - t0:.1f}s"
        )
        for path, (p50, p99) in asyncio.run(api_latency(f"{base}/bench_api", broker.url)).items():
            print(f"{path:55s} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")
    finally:
        broker.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
