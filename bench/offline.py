"""Benchmark: replay after a 24 h outage of a busy site, and the offline queue's size (issue 5).

    .venv/bin/python bench/offline.py [--chargers 100] [--sessions 10] [--quick]

One process, one event loop, loopback only: a CSMS on the ``ocpp`` library
(``tests.peers.TestCsms``), the real agent in process (``Agent``: proxy, OCPP
frame log, offline queue in SQLite with ``synchronous=FULL``, recovery,
foresight; its MQTT uplink points at a closed port and just retries), and
``--chargers`` OCPP 1.6 charge points speaking raw OCPP-J over websockets
(one CALL outstanding each, as a real charger).

A charger-day of a busy site is ``--sessions`` sessions (default 10) of 15
messages each: StatusNotification Preparing, StartTransaction,
StatusNotification Charging, 9 × MeterValues (every 5 min of a 45 min
session: energy, power, current, voltage), StopTransaction,
StatusNotification Finishing and Available, with timestamps spread over the
day: 150 messages per charger, 15,000 for 100 chargers.

Phases:

1. **direct**: the same number of charge points send the same day straight
   to the CSMS: messages/s (the baseline).
2. **outage**: the charge points connect through the agent and boot; the
   CSMS stops; they send their day, answered locally and queued durably.
   The queue's size is read with SQLite's ``dbstat`` (table + index pages),
   ``SUM(LENGTH(payload))``, and the whole file's growth (which also holds
   the OCPP frame log of the same frames).
3. **replay**: the CSMS restarts on the same port; timed from its start until
   every charge point's queue is empty (the store's size polled every 5 ms,
   then ``wait_empty`` per charge point) and the CSMS has received every
   message. Then the replayed stream is checked: per charge
   point the actions arrive in the original order and no transaction id is
   still provisional.

``--quick`` runs 2 sessions per charger and extrapolates to a full day,
labelled as such. The SQLite file lives in the system temp directory: its
fsync cost is part of the figures (set TMPDIR to measure another disk).
Everything is bounded (``RUN_TIMEOUT_S``) and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chargesight.common.logs import configure_logging
from chargesight.edge.agent import Agent
from tests.edge.conftest import edge_config
from tests.peers import TestCsms

RUN_TIMEOUT_S = 300.0
MESSAGES_PER_SESSION = 15
FULL_SESSIONS = 10
TARGET_S = 60.0
TX = "__tx__"  # placeholder for the transaction id the charge point was given


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def charger_day(cp_index: int, sessions: int, day: datetime) -> list[tuple[str, dict[str, Any]]]:
    """One charge point's CP→CSMS messages for a busy day, in order."""
    script: list[tuple[str, dict[str, Any]]] = []
    meter = 1_000_000 + cp_index * 1000
    spacing = timedelta(days=1) / max(sessions, 1)

    def status(t: datetime, s: str) -> dict[str, Any]:
        return {"connectorId": 1, "errorCode": "NoError", "status": s, "timestamp": iso(t)}

    for s in range(sessions):
        t0 = day + s * spacing
        tag = f"TAG-{cp_index:03d}-{s % 4}"
        script.append(("StatusNotification", status(t0, "Preparing")))
        script.append(
            (
                "StartTransaction",
                {
                    "connectorId": 1,
                    "idTag": tag,
                    "meterStart": meter,
                    "timestamp": iso(t0 + timedelta(seconds=30)),
                },
            )
        )
        script.append(("StatusNotification", status(t0 + timedelta(seconds=40), "Charging")))
        for k in range(1, 10):
            meter += 920  # 11 kW for 5 min
            script.append(
                (
                    "MeterValues",
                    {
                        "connectorId": 1,
                        "transactionId": TX,
                        "meterValue": [
                            {
                                "timestamp": iso(t0 + timedelta(minutes=5 * k)),
                                "sampledValue": [
                                    {
                                        "value": str(meter),
                                        "context": "Sample.Periodic",
                                        "measurand": "Energy.Active.Import.Register",
                                        "unit": "Wh",
                                    },
                                    {
                                        "value": "11040",
                                        "measurand": "Power.Active.Import",
                                        "unit": "W",
                                    },
                                    {"value": "16.0", "measurand": "Current.Import", "unit": "A"},
                                    {"value": "230.1", "measurand": "Voltage", "unit": "V"},
                                ],
                            }
                        ],
                    },
                )
            )
        t_end = t0 + timedelta(minutes=46)
        script.append(
            (
                "StopTransaction",
                {
                    "transactionId": TX,
                    "idTag": tag,
                    "meterStop": meter,
                    "timestamp": iso(t_end),
                    "reason": "EVDisconnected",
                },
            )
        )
        script.append(("StatusNotification", status(t_end + timedelta(seconds=5), "Finishing")))
        script.append(("StatusNotification", status(t_end + timedelta(seconds=60), "Available")))
    return script


class RawCp:
    """A 1.6 charge point speaking raw OCPP-J: one CALL outstanding at a time."""

    def __init__(self, cp_id: str, ws: ClientConnection) -> None:
        self.cp_id = cp_id
        self.ws = ws
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, base: str, cp_id: str) -> RawCp:
        ws = await connect(
            f"{base}/{cp_id}",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
            open_timeout=10,
        )
        return cls(cp_id, ws)

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        uid = str(next(self.ids))
        await self.ws.send(orjson.dumps([2, uid, action, payload]).decode())
        while True:
            msg = orjson.loads(await self.ws.recv())
            if msg[0] == 2:  # a CALL to the charge point: not part of this benchmark
                reply = [4, msg[1], "NotSupported", "bench charge point", {}]
                await self.ws.send(orjson.dumps(reply).decode())
                continue
            if msg[1] != uid:
                continue
            if msg[0] == 4:
                raise RuntimeError(f"{self.cp_id} {action}: CALLERROR {msg[2]} {msg[3]}")
            result: dict[str, Any] = msg[2]
            return result

    async def boot(self) -> None:
        await self.call(
            "BootNotification", {"chargePointModel": "AC22", "chargePointVendor": "BenchVendor"}
        )

    async def run(self, script: list[tuple[str, dict[str, Any]]]) -> None:
        tx: int | None = None
        for action, payload in script:
            if payload.get("transactionId") == TX:
                payload = {**payload, "transactionId": tx}
            result = await self.call(action, payload)
            if action == "StartTransaction":
                tx = int(result["transactionId"])

    async def close(self) -> None:
        await self.ws.close()


async def open_all(base: str, ids: list[str]) -> list[RawCp]:
    cps: list[RawCp] = []
    for i in range(0, len(ids), 50):
        cps += await asyncio.gather(*(RawCp.open(base, c) for c in ids[i : i + 50]))
    await asyncio.gather(*(cp.boot() for cp in cps))
    return cps


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def queue_size(db: Path) -> dict[str, int]:
    """Bytes of the offline queue (dbstat: table + index pages) and of the whole file."""
    con = sqlite3.connect(db, timeout=30)
    try:
        pages = con.execute(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat "
            "WHERE name IN ('offline_queue', 'offline_queue_cp')"
        ).fetchone()[0]
        rows, payload = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM offline_queue"
        ).fetchone()
        page_count = con.execute("PRAGMA page_count").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()
    wal = db.with_name(db.name + "-wal")
    return {
        "queue_pages": int(pages),
        "rows": int(rows),
        "payload": int(payload),
        "db_pages": int(page_count) * int(page_size),
        "files": db.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
    }


def check_replayed(
    csms: TestCsms, ids: list[str], scripts: dict[str, list[tuple[str, dict[str, Any]]]]
) -> tuple[int, int]:
    """(charge points whose replay is out of order, transaction ids still <= 0)."""
    bad_order = 0
    provisional = 0
    for cp_id in ids:
        calls = [m for m in map(json.loads, csms.received(cp_id)) if m[0] == 2][1:]  # minus boot
        if [c[2] for c in calls] != [a for a, _ in scripts[cp_id]] or [
            c[3].get("timestamp") for c in calls
        ] != [p.get("timestamp") for _, p in scripts[cp_id]]:
            bad_order += 1
        provisional += sum(
            1 for c in calls if "transactionId" in c[3] and int(c[3]["transactionId"]) <= 0
        )
    return bad_order, provisional


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


async def bench(chargers: int, sessions: int) -> None:
    day = datetime(2026, 1, 15, tzinfo=UTC)
    per_cp = sessions * MESSAGES_PER_SESSION
    total = chargers * per_cp
    full_total = chargers * FULL_SESSIONS * MESSAGES_PER_SESSION
    print(
        f"site: {chargers} charge points × {sessions} sessions × {MESSAGES_PER_SESSION} messages"
        f" = {per_cp} messages per charger, {total} in all"
        f" (a busy charger-day is {FULL_SESSIONS * MESSAGES_PER_SESSION})"
    )
    csms = TestCsms()
    await csms.start()
    csms_base = f"ws://127.0.0.1:{csms.port}/csms"

    # 1. direct baseline
    direct_ids = [f"DIRECT-{i:03d}" for i in range(chargers)]
    cps = await open_all(csms_base, direct_ids)
    t0 = time.perf_counter()
    await asyncio.gather(*(cp.run(charger_day(i, sessions, day)) for i, cp in enumerate(cps)))
    direct_s = time.perf_counter() - t0
    await asyncio.gather(*(cp.close() for cp in cps))
    direct_rate = total / direct_s
    print(f"direct: {total} messages in {direct_s:.2f} s = {direct_rate:.0f} msg/s (no agent)")

    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        config = edge_config(
            Path(tmp),
            csms.url,
            offline={"unknown_id_policy": "accept", "replay_backoff_s": 0.05},
        )
        agent = Agent(config)
        await agent.start()
        try:
            agent_base = f"ws://127.0.0.1:{agent.proxy.port}/ocpp"
            ids = [f"CP-{i:03d}" for i in range(chargers)]
            scripts = {cp_id: charger_day(i, sessions, day) for i, cp_id in enumerate(ids)}
            cps = await open_all(agent_base, ids)
            await wait_for(
                lambda: all(len(csms.received(c)) >= 1 for c in ids), 30, "boots at the CSMS"
            )
            before = queue_size(config.storage.path)

            # 2. outage: the site's day, answered locally and queued
            await csms.stop()
            await wait_for(
                lambda: all(
                    (s := agent.proxy.sessions.get(c)) is not None and s.upstream is None
                    for c in ids
                ),
                30,
                "the agent to see the CSMS gone",
            )
            t0 = time.perf_counter()
            await asyncio.gather(*(cp.run(scripts[cp.cp_id]) for cp in cps))
            outage_s = time.perf_counter() - t0
            queued = agent.offline_store.size()
            if queued != total:
                raise RuntimeError(f"queued {queued} messages, expected {total}")
            print(
                f"outage: {total} messages answered locally and queued in {outage_s:.2f} s"
                f" = {total / outage_s:.0f} msg/s (each committed with synchronous=FULL)"
            )
            after = queue_size(config.storage.path)
            q_bytes = after["queue_pages"] - before["queue_pages"]
            file_bytes = after["files"] - before["files"]
            per_day = FULL_SESSIONS * MESSAGES_PER_SESSION / per_cp  # scale to a busy charger-day
            print(
                f"queue: {after['rows']} rows, payload {kib(after['payload'])}"
                f" ({after['payload'] / after['rows']:.0f} B/message);"
                f" table+index pages {kib(q_bytes)} ({q_bytes / total:.0f} B/message)"
            )
            label = "" if per_day == 1 else " (extrapolated from the measured day fraction)"
            print(
                f"queue per charger-day: {kib(q_bytes / chargers * per_day)} of SQLite pages,"
                f" {kib(after['payload'] / chargers * per_day)} of payload{label};"
                f" whole file incl. OCPP frame log and WAL: +{kib(file_bytes / chargers * per_day)}"
            )
            week_site = q_bytes / chargers * per_day * 7 * 100
            print(f"queue for a week of a busy 100-charger site: {week_site / 2**20:.1f} MiB")

            # 3. replay
            for c in ids:
                csms.connected[c] = asyncio.Event()
            expected = {c: len(csms.received(c)) + per_cp for c in ids}
            t0 = time.perf_counter()
            await csms.start()
            # Poll instead of 100 concurrent wait_empty() calls: those share one event and
            # would wake 100 coroutines per replayed message in this same event loop.
            store = agent.offline_store
            await wait_for(lambda: store.size() == 0, 180, "the offline queues to drain")
            await asyncio.gather(*(store.wait_empty(c, 1) for c in ids))  # all empty: returns
            empty_s = time.perf_counter() - t0
            await wait_for(
                lambda: all(len(csms.received(c)) >= expected[c] for c in ids),
                60,
                "every message at the CSMS",
            )
            replay_s = time.perf_counter() - t0
            replay_rate = total / replay_s
            print(
                f"replay: {total} messages in {replay_s:.2f} s = {replay_rate:.0f} msg/s"
                f" ({replay_rate / direct_rate:.2f} × direct {direct_rate:.0f} msg/s);"
                f" queues empty after {empty_s:.2f} s"
                f" (includes the agent's reconnect, backoff ≤ {config.ocpp.reconnect_max_s} s)"
            )
            bad_order, provisional = check_replayed(csms, ids, scripts)
            parked = agent.offline.status().get("parked", 0)
            print(
                f"check: {chargers - bad_order}/{chargers} charge points replayed in original"
                f" order with original timestamps; {provisional} provisional transaction ids"
                f" reached the CSMS; {parked} parked"
            )
            day_s = full_total / replay_rate
            label = "" if total == full_total else " (extrapolated at the measured rate)"
            verdict = "yes" if day_s < TARGET_S else "NO"
            print(
                f"target: a busy {chargers}-charger day ({full_total} messages) replays in"
                f" {day_s:.1f} s{label}: under {TARGET_S:.0f} s? {verdict}"
            )
            await asyncio.gather(*(cp.close() for cp in cps), return_exceptions=True)
        finally:
            await agent.close()
            await csms.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chargers", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=FULL_SESSIONS, help="sessions per charger-day")
    ap.add_argument("--quick", action="store_true", help="2 sessions per charger, extrapolated")
    args = ap.parse_args()
    sessions = 2 if args.quick else args.sessions
    configure_logging("error", "console")
    started = time.perf_counter()

    async def bounded() -> None:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await bench(args.chargers, sessions)

    asyncio.run(bounded())
    print(f"total run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
