"""Benchmark: a 500 charge point site, 10 % faulting at once, through the real proxy and engine.

Measures (issue 4, "Benchmark"):

* time from a fault (the charge point sends StatusNotification Faulted) to
  the first recovery CALL arriving at that charge point: p50 / p99
  (target: p99 under 1 s);
* event-loop lag while it happens: p99 (target: under 50 ms);
* the proxy's forwarding latency (Heartbeat round trip CP → CSMS → CP) idle
  and during the storm (target: within 20 %);
* outbox throughput: escalations committed per second (SQLite, durable).

Charge points and the CSMS are minimal raw OCPP-J 1.6 peers (websockets), in
the same process and event loop as the agent, which makes every figure an
upper bound. Run: ``.venv/bin/python bench/recovery.py [--charge-points N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from chargesight.common.configload import validate_config
from chargesight.common.logs import configure_logging
from chargesight.common.messages import Escalation, Fault, escalations_topic
from chargesight.edge.config import EdgeConfig
from chargesight.edge.hooks import HookRunner
from chargesight.edge.ocpplog import OcppLog
from chargesight.edge.outbox import Outbox
from chargesight.edge.proxy import Proxy
from chargesight.edge.recovery import RecoveryEngine


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def csms_handler(ws: ServerConnection) -> None:
    """Answers every CALL at once."""
    ids = itertools.count(1)
    async for raw in ws:
        msg = orjson.loads(raw)
        if msg[0] != 2:
            continue
        action = msg[2]
        payload: dict[str, Any] = {}
        if action == "BootNotification":
            payload = {"status": "Accepted", "currentTime": now_iso(), "interval": 300}
        elif action == "Heartbeat":
            payload = {"currentTime": now_iso()}
        elif action == "StartTransaction":
            payload = {"transactionId": next(ids), "idTagInfo": {"status": "Accepted"}}
        elif action == "Authorize":
            payload = {"idTagInfo": {"status": "Accepted"}}
        await ws.send(orjson.dumps([3, msg[1], payload]).decode())


class BenchCp:
    """A raw OCPP 1.6 charge point: boots, reports, answers injected CALLs, times them."""

    def __init__(self, cp_id: str, url: str) -> None:
        self.id = cp_id
        self.url = url
        self.ws: ClientConnection | None = None
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.first_call_at: float | None = None
        self.called = asyncio.Event()
        self.calls: list[str] = []
        self.ids = itertools.count()
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws = await connect(f"{self.url}/{self.id}", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        self.reader = asyncio.get_running_loop().create_task(self._read())
        await self.call(
            "BootNotification", {"chargePointVendor": "Voltix", "chargePointModel": "VX-DC50"}
        )
        for c in (1, 2):
            await self.status(c, "Available")

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                msg = orjson.loads(raw)
                if msg[0] == 3 or msg[0] == 4:
                    fut = self.pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg[0] == 2:
                    if self.first_call_at is None:
                        self.first_call_at = time.perf_counter()
                        self.called.set()
                    self.calls.append(msg[2])
                    await self.ws.send(orjson.dumps([3, msg[1], {"status": "Accepted"}]).decode())

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        uid = f"{self.id}-{next(self.ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        await self.ws.send(orjson.dumps([2, uid, action, payload]).decode())
        return await asyncio.wait_for(fut, 30)

    async def status(self, connector: int, status: str, error: str = "NoError") -> None:
        await self.call(
            "StatusNotification",
            {
                "connectorId": connector,
                "status": status,
                "errorCode": error,
                "timestamp": now_iso(),
            },
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def heartbeat_rtts(cps: list[BenchCp], n: int) -> list[float]:
    out = []
    for cp in cps[:n]:
        t = time.perf_counter()
        await cp.call("Heartbeat", {})
        out.append(time.perf_counter() - t)
    return out


async def loop_lag(samples: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period)
        samples.append(time.perf_counter() - t - period)


async def outbox_throughput(path: Path, n: int) -> float:
    fault = Fault(code="InternalError", category="internal")
    async with Outbox(path, max_messages=n * 2) as outbox:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                outbox.put(
                    escalations_topic("bench"),
                    Escalation(
                        site_id="bench",
                        incident_id=f"inc-{i:08d}",
                        charge_point_id=f"CP{i}",
                        connector_id=1,
                        scope="connector",
                        fault=fault,
                        started_at=datetime.now(UTC),
                    ),
                )
                for i in range(n)
            )
        )
        return n / (time.perf_counter() - start)


async def main(n_cps: int, fraction: float) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="chargesight-bench-"))
    csms = await serve(csms_handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    csms_port = next(iter(csms.sockets)).getsockname()[1]
    config = validate_config(
        EdgeConfig,
        {
            "site": {"id": "bench"},
            "ocpp": {
                "listen": "127.0.0.1:0",
                "upstream": f"ws://127.0.0.1:{csms_port}/{{charge_point_id}}",
            },
            "storage": {"path": str(tmp / "edge.sqlite")},
            "recovery": {"window_s": 60, "site_event_min_fraction": 0.9},
        },
        environ={},
    )
    escalations: list[Escalation] = []

    async def escalate(e: Escalation) -> None:
        escalations.append(e)

    async with OcppLog(config.storage.path) as ocpp_log, Proxy(config, frame_log=ocpp_log) as proxy:
        engine = RecoveryEngine(
            site_id="bench",
            config=config.recovery,
            call=proxy,
            evidence=ocpp_log.evidence,
            escalate=escalate,
            hooks=HookRunner(None),
        )
        await engine.start()
        proxy.subscribe(engine.handle)
        url = f"ws://127.0.0.1:{proxy.port}/ocpp"
        cps = [BenchCp(f"CP{i:04d}", url) for i in range(n_cps)]
        t = time.perf_counter()
        for batch in range(0, n_cps, 50):
            await asyncio.gather(*(cp.start() for cp in cps[batch : batch + 50]))
        print(f"connected {n_cps} charge points in {time.perf_counter() - t:.1f} s")
        await asyncio.sleep(0.5)
        idle = await heartbeat_rtts(cps, 100)

        lag: list[float] = []
        stop = asyncio.Event()
        lag_task = asyncio.get_running_loop().create_task(loop_lag(lag, stop))
        faulty = cps[:: max(1, round(1 / fraction))][: int(n_cps * fraction)]
        fault_at: dict[str, float] = {}

        async def fault(cp: BenchCp) -> None:
            fault_at[cp.id] = time.perf_counter()
            await cp.status(1, "Faulted", "InternalError")

        storm_rtts_task = asyncio.get_running_loop().create_task(
            heartbeat_rtts([c for c in cps if c not in faulty], 100)
        )
        await asyncio.gather(*(fault(cp) for cp in faulty))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(cp.called.wait() for cp in faulty)), 10)
        storm = await storm_rtts_task
        await asyncio.sleep(1)
        stop.set()
        await lag_task
        first_call = [
            cp.first_call_at - fault_at[cp.id] for cp in faulty if cp.first_call_at is not None
        ]
        missing = sum(cp.first_call_at is None for cp in faulty)
        for cp in cps:
            await cp.close()
        await engine.stop()
    csms.close()
    await csms.wait_closed()
    rate = await outbox_throughput(tmp / "outbox.sqlite", 2000)

    p99_call = pct(first_call, 99)
    p99_lag = pct(lag, 99)
    idle_p50, storm_p50 = statistics.median(idle), statistics.median(storm)
    print(f"faulted charge points:      {len(faulty)} of {n_cps} (no recovery call: {missing})")
    print(
        f"fault → first recovery call: p50 {pct(first_call, 50) * 1000:.1f} ms, p99 {p99_call * 1000:.1f} ms (target < 1000 ms)"
    )
    print(
        f"event-loop lag:             p50 {pct(lag, 50) * 1000:.1f} ms, p99 {p99_lag * 1000:.1f} ms (target < 50 ms)"
    )
    print(
        f"heartbeat round trip:       idle p50 {idle_p50 * 1000:.2f} ms, during storm p50 {storm_p50 * 1000:.2f} ms"
    )
    print(f"outbox:                     {rate:.0f} escalations/s committed (durable)")
    ok = missing == 0 and p99_call < 1.0 and p99_lag < 0.05
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charge-points", type=int, default=500)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()
    configure_logging("error", "console")
    raise SystemExit(asyncio.run(main(args.charge_points, args.fraction)))
