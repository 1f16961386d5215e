"""Benchmark the fleet simulator.

1. Live: how many simulated charge points one core drives at one OCPP message
   every 10 s each (target: 2,000). The CSMS runs in a separate process
   (``chargesight sim csms``) so only the simulator's CPU is measured; the
   simulator process is single-threaded unless the ``ocpp`` library's
   executor-based schema validation is on (``--async-validation``).
2. History: how fast ``generate_history`` writes a year of the 500-charger
   demo network (target: under a minute).

Usage: .venv/bin/python bench/sim.py [--charge-points 2000] [--seconds 30] [--days 365]
                                     [--skip-live] [--skip-history]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargesight.sim.fleet import Simulation  # noqa: E402
from chargesight.sim.history import generate_history  # noqa: E402
from chargesight.sim.scenario import load_scenario, parse_scenario  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402


def fleet_scenario(n: int) -> str:
    sites = []
    per_site = 20
    for s in range((n + per_site - 1) // per_site):
        count = min(per_site, n - s * per_site)
        sites.append(
            f'[[sites]]\nid = "bench-{s:04d}"\nname = "Bench {s}"\ncurrency = "EUR"\n'
            f'price_per_kwh = 0.5\n[[sites.chargers]]\nmodel = "ampero-ac22"\ncount = {count}\n'
        )
    return '[network]\nname = "bench"\nseed = 1\n' + "\n".join(sites)


def live(n: int, seconds: float, validate: bool) -> dict[str, float]:
    """Start the CSMS in its own process, then drive ``n`` charge points from this one."""
    port = free_port()
    csms = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/chargesight"),
            "sim",
            "csms",
            "--port",
            str(port),
            "--heartbeat",
            "10",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=20, proc=csms)
        return asyncio.run(drive(n, seconds, validate, port))
    finally:
        csms.terminate()
        try:
            csms.wait(10)
        except subprocess.TimeoutExpired:
            csms.kill()
            csms.wait(5)


async def drive(n: int, seconds: float, validate: bool, port: int) -> dict[str, float]:
    sim = Simulation(
        parse_scenario(fleet_scenario(n)),
        f"ws://127.0.0.1:{port}/ocpp",
        drivers=False,
        scheduled_faults=False,
        heartbeat_s=10,
        validate=validate,
        backoff_s=1.0,
    )
    t0 = time.monotonic()
    async with sim:
        await sim.wait_connected(timeout=300)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(2)
        sent0 = sum(cp.messages_sent for cp in sim.charge_points.values())
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        sent1 = sum(cp.messages_sent for cp in sim.charge_points.values())
        connected = sum(cp.connected for cp in sim.charge_points.values())
    wall = wall1 - wall0
    return {
        "charge_points": n,
        "connected": connected,
        "connect_s": connect_s,
        "msg_per_s": (sent1 - sent0) / wall,
        "cpu_fraction": (cpu1 - cpu0) / wall,
    }


def history(days: float) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="cs-bench-history-"))
    try:
        t0 = time.perf_counter()
        summary = generate_history(load_scenario("demo"), days, out)
        elapsed = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.iterdir())
        return {
            "days": days,
            "chargers": summary.chargers,
            "seconds": elapsed,
            "digests": summary.digests,
            "sessions": summary.sessions,
            "mb": size / 1e6,
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--charge-points", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-history", action="store_true")
    ap.add_argument("--no-validation", action="store_true", help="skip OCPP JSON-schema validation")
    ap.add_argument(
        "--async-validation",
        action="store_true",
        help="keep the ocpp library's thread-pool validation (default: inline, single-threaded)",
    )
    args = ap.parse_args()
    if not args.async_validation:
        import ocpp.messages

        ocpp.messages.ASYNC_VALIDATION = False  # one thread: the figure is per core
    if not args.skip_live:
        r = live(args.charge_points, args.seconds, not args.no_validation)
        per_core = r["charge_points"] / r["cpu_fraction"] if r["cpu_fraction"] else float("inf")
        print(
            f"live: {r['connected']:.0f}/{r['charge_points']:.0f} charge points connected in "
            f"{r['connect_s']:.1f} s; steady state {r['msg_per_s']:.0f} msg/s "
            f"(1 per 10 s each) using {100 * r['cpu_fraction']:.1f}% of one core "
            f"-> ~{per_core:.0f} charge points per core at this rate"
        )
    if not args.skip_history:
        h = history(args.days)
        print(
            f"history: {h['days']:.0f} days x {h['chargers']:.0f} chargers in {h['seconds']:.1f} s "
            f"({h['digests']:.0f} digests, {h['sessions']:.0f} sessions, {h['mb']:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
