"""Benchmark: the edge agent's OCPP proxy against the direct path, in one run (issue 2).

    .venv/bin/python bench/proxy.py [--sizes 10,100,1000] [--busy-s 3] [--paced-s 8]

Three kinds of process on loopback, so no side borrows the other's event loop:

* a WebSocket CSMS that answers every CALL at once (``--role csms``);
* the real agent, ``chargesight edge run --config`` (proxy, OCPP log in
  SQLite, detection, recovery engine; its MQTT uplink points at a closed
  port and stays idle);
* a load generator (``--role load``) with N simulated OCPP 1.6 charge points
  that connect (BootNotification, StatusNotification), then

  - **busy**: every charge point sends CALLs back to back (one outstanding
    each; Heartbeat, MeterValues, StatusNotification) for ``--busy-s``:
    round trips per second;
  - **paced**: 100 frames/s for the whole site, spread evenly (at 1,000
    charge points that is one frame every 10 s each): p50/p99 round trip.

For each N the generator runs once against the CSMS directly and once
through the agent; the table gives the agent's figures as ratios against
direct and the added latency in ms. Before the load runs, the agent's RSS is
read (``/proc/PID/status``) with no charge point and with the largest N
connected and idle: the difference per charge point is printed.

Everything is bounded: every phase has a time limit, the whole run stops by
itself (about 1.5 minutes on 2 cores), and every process started is stopped
on success and failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

PACED_RATE = 100.0  # frames/s for the whole site in the paced phase
CONNECT_BATCH = 50
RUN_TIMEOUT_S = 90.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before opening port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------- CSMS role


RESULTS: dict[str, dict[str, Any]] = {
    "BootNotification": {"status": "Accepted", "interval": 300},
    "Heartbeat": {},
    "StatusNotification": {},
    "MeterValues": {},
}


async def csms_handler(ws: ServerConnection) -> None:
    """Answers every CALL at once (a CSMS that costs as little as possible)."""
    async for raw in ws:
        msg = json.loads(raw)
        if msg[0] != 2:
            continue
        payload = dict(RESULTS.get(msg[2], {}))
        if msg[2] in ("BootNotification", "Heartbeat"):
            payload["currentTime"] = now_iso()
        await ws.send(json.dumps([3, msg[1], payload]))


async def run_csms(port: int) -> None:
    raise_fd_limit()
    async with serve(
        csms_handler,
        "127.0.0.1",
        port,
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
        max_queue=None,
    ):
        await asyncio.Event().wait()


# ---------------------------------------------------------------- load role


def frames_for(cp: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Realistic 1.6 traffic: mostly MeterValues, some Heartbeat and StatusNotification."""
    wh = 0
    for i in itertools.count():
        kind = i % 10
        if kind == 0:
            yield "Heartbeat", {}
        elif kind == 5:
            yield (
                "StatusNotification",
                {
                    "connectorId": 1,
                    "errorCode": "NoError",
                    "status": "Charging",
                    "timestamp": now_iso(),
                },
            )
        else:
            wh += 37
            yield (
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": 1000 + cp,
                    "meterValue": [
                        {
                            "timestamp": now_iso(),
                            "sampledValue": [
                                {"value": str(wh), "measurand": "Energy.Active.Import.Register"},
                                {"value": "7400", "measurand": "Power.Active.Import", "unit": "W"},
                            ],
                        }
                    ],
                },
            )


class LoadCp:
    """One simulated charge point: one call outstanding at a time."""

    def __init__(self, n: int, ws: ClientConnection) -> None:
        self.n = n
        self.ws = ws
        self.ids = itertools.count(1)
        self.frames = frames_for(n)

    async def call(self, action: str, payload: dict[str, Any]) -> float:
        """Send one CALL, await its CALLRESULT; return the round trip in seconds."""
        uid = str(next(self.ids))
        frame = json.dumps([2, uid, action, payload])
        t0 = time.perf_counter()
        await self.ws.send(frame)
        while True:
            reply = json.loads(await self.ws.recv())
            if reply[0] in (3, 4) and reply[1] == uid:
                return time.perf_counter() - t0

    async def next_call(self) -> float:
        action, payload = next(self.frames)
        return await self.call(action, payload)


async def open_cp(url: str, prefix: str, n: int) -> LoadCp:
    ws = await connect(
        f"{url}/{prefix}{n:05d}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
        open_timeout=30,
        max_queue=None,
    )
    cp = LoadCp(n, ws)
    await cp.call("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "B1"})
    for connector in (0, 1):
        await cp.call(
            "StatusNotification",
            {
                "connectorId": connector,
                "errorCode": "NoError",
                "status": "Available",
                "timestamp": now_iso(),
            },
        )
    return cp


async def busy(cps: list[LoadCp], seconds: float) -> dict[str, float]:
    done = 0
    end = time.perf_counter() + seconds

    async def loop(cp: LoadCp) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await cp.next_call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(cp) for cp in cps))
    return {"round_trips_per_s": done / (time.perf_counter() - t0)}


async def paced(cps: list[LoadCp], seconds: float) -> dict[str, Any]:
    interval = len(cps) / PACED_RATE  # every charge point, one frame per interval
    samples: list[float] = []
    rng = random.Random(42)
    start = time.perf_counter()
    end = start + seconds

    async def loop(cp: LoadCp) -> None:
        at = start + rng.random() * interval
        while at < end:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            samples.append(await cp.next_call())
            at += interval

    await asyncio.gather(*(loop(cp) for cp in cps))
    return {
        "interval_s": interval,
        "samples": len(samples),
        "p50_ms": pct(samples, 50) * 1000,
        "p99_ms": pct(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000 if samples else float("nan"),
    }


async def run_load(args: argparse.Namespace) -> None:
    raise_fd_limit()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        cps: list[LoadCp] = []
        for first in range(0, args.n, CONNECT_BATCH):
            batch = range(first, min(args.n, first + CONNECT_BATCH))
            cps += await asyncio.gather(*(open_cp(args.url, args.prefix, i) for i in batch))
        print("connected", flush=True)
        if args.wait_go:
            line = await asyncio.to_thread(sys.stdin.readline)
            if line.strip() != "go":
                return
        result: dict[str, Any] = {"n": args.n}
        if args.busy_s > 0:
            result |= await busy(cps, args.busy_s)
        if args.paced_s > 0:
            result |= await paced(cps, args.paced_s)
        await asyncio.gather(*(cp.ws.close() for cp in cps), return_exceptions=True)
        print("result " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- orchestration


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def chargesight_cmd() -> list[str]:
    script = Path(sys.executable).with_name("chargesight")
    if script.exists():
        return [str(script)]
    found = shutil.which("chargesight")
    if found:
        return [found]
    return [
        sys.executable,
        "-c",
        "import sys; from chargesight.cli.main import main; sys.exit(main())",
    ]


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.runs = itertools.count()

    def spawn(self, cmd: list[str], log: str, **kw: Any) -> subprocess.Popen[bytes]:
        out = (self.workdir / log).open("ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def start(self) -> None:
        self.csms_port, self.agent_port = free_port(), free_port()
        csms = self.spawn(
            [sys.executable, __file__, "--role", "csms", "--port", str(self.csms_port)], "csms.log"
        )
        wait_port(self.csms_port, csms)
        config = self.workdir / "edge.toml"
        config.write_text(
            f"""
[site]
id = "bench"

[ocpp]
listen = "127.0.0.1:{self.agent_port}"
upstream = "ws://127.0.0.1:{self.csms_port}/ocpp/{{charge_point_id}}"

[mqtt]
url = "mqtt://127.0.0.1:{free_port()}"

[storage]
path = "{self.workdir / "edge.sqlite"}"

[logging]
level = "warning"
format = "json"
"""
        )
        self.agent = self.spawn(
            [*chargesight_cmd(), "edge", "run", "--config", str(config)], "agent.log"
        )
        wait_port(self.agent_port, self.agent)
        self.direct_url = f"ws://127.0.0.1:{self.csms_port}/ocpp"
        self.agent_url = f"ws://127.0.0.1:{self.agent_port}/ocpp"

    def load(
        self, url: str, n: int, busy_s: float, paced_s: float, *, on_connected: Any = None
    ) -> dict[str, Any]:
        """One load generator process; ``on_connected()`` runs while all N are connected and idle."""
        cmd = [
            sys.executable,
            __file__,
            "--role",
            "load",
            "--url",
            url,
            "--n",
            str(n),
            "--busy-s",
            str(busy_s),
            "--paced-s",
            str(paced_s),
            "--prefix",
            f"R{next(self.runs)}-",
            "--wait-go",
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline().decode().strip()
            if line != "connected":
                raise RuntimeError(f"load generator failed before connecting all {n}: {line!r}")
            if on_connected is not None:
                on_connected()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            for raw in proc.stdout:
                text = raw.decode().strip()
                if text.startswith("result "):
                    return dict(json.loads(text.removeprefix("result ")))
            raise RuntimeError(f"load generator for {n} charge points gave no result")
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def run(self) -> None:
        args = self.args
        sizes = [int(s) for s in args.sizes.split(",")]
        largest = max(sizes)
        print(
            f"proxy benchmark: loopback, {os.cpu_count()} cores, CSMS / agent / load generator "
            "in separate processes",
            flush=True,
        )
        self.start()
        # warm both paths up (imports, schema caches, SQLite pages)
        self.load(self.agent_url, 10, 0.5, 0)
        self.load(self.direct_url, 10, 0.5, 0)
        memory: dict[str, int] = {"before": rss_kib(self.agent.pid)}

        def idle() -> None:
            time.sleep(1.0)  # let the last Boot/Status writes settle
            memory["idle"] = rss_kib(self.agent.pid)

        results: dict[int, dict[str, dict[str, Any]]] = {}
        for n in sorted(
            sizes, reverse=True
        ):  # largest first: the idle RSS is read on a fresh agent
            hook = idle if n == largest else None
            agent = self.load(self.agent_url, n, args.busy_s, args.paced_s, on_connected=hook)
            direct = self.load(self.direct_url, n, args.busy_s, args.paced_s)
            results[n] = {"direct": direct, "agent": agent}
            print(f"  {n} charge points measured", flush=True)
        self.report(sizes, results, memory, largest)

    @staticmethod
    def report(
        sizes: list[int],
        results: dict[int, dict[str, dict[str, Any]]],
        memory: dict[str, int],
        largest: int,
    ) -> None:
        print()
        print(
            f"{'CPs':>5} {'path':>7} {'busy rt/s':>10} {'ratio':>6} | paced "
            f"{'every':>6} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'+p99 ms':>8} "
            f"{'p50 x':>6} {'p99 x':>6}"
        )
        for n in sorted(sizes):
            d, a = results[n]["direct"], results[n]["agent"]
            print(
                f"{n:>5} {'direct':>7} {d['round_trips_per_s']:>10.0f} {'':>6} | "
                f"{d['interval_s']:>5.1f}s {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f}"
            )
            print(
                f"{'':>5} {'agent':>7} {a['round_trips_per_s']:>10.0f} "
                f"{a['round_trips_per_s'] / d['round_trips_per_s']:>6.2f} | "
                f"{a['interval_s']:>5.1f}s {a['p50_ms']:>7.2f} {a['p99_ms']:>7.2f} "
                f"{a['p50_ms'] - d['p50_ms']:>8.2f} {a['p99_ms'] - d['p99_ms']:>8.2f} "
                f"{a['p50_ms'] / d['p50_ms']:>6.2f} {a['p99_ms'] / d['p99_ms']:>6.2f}"
            )
        per_cp = (memory["idle"] - memory["before"]) / largest
        print()
        print(
            f"agent RSS: {memory['before'] / 1024:.1f} MiB with no charge point, "
            f"{memory['idle'] / 1024:.1f} MiB with {largest} idle charge points connected "
            f"-> {per_cp:.0f} KiB per idle charge point (target < 200 KiB)"
        )
        print(
            "busy rt/s: CALL -> CALLRESULT round trips per second, one outstanding per charge point;"
            f" paced: {PACED_RATE:g} frames/s for the site; +p50/+p99: latency the agent adds."
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["main", "csms", "load"], default="main")
    p.add_argument("--sizes", default="10,100,1000", help="charge point counts (main)")
    p.add_argument("--busy-s", type=float, default=3.0)
    p.add_argument("--paced-s", type=float, default=8.0)
    p.add_argument("--port", type=int, help="csms role: port to listen on")
    p.add_argument("--url", help="load role: ws://HOST:PORT/PATH the charge points connect under")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--prefix", default="CP")
    p.add_argument("--wait-go", action="store_true")
    args = p.parse_args()
    if args.role == "csms":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_csms(args.port))
        return 0
    if args.role == "load":
        asyncio.run(run_load(args))
        return 0
    with tempfile.TemporaryDirectory(prefix="cs-bench-proxy-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.run()
        finally:
            bench.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
