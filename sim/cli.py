"""``chargesight sim ...``: run a scenario live against an OCPP endpoint, or write its history.

::

    chargesight sim run --scenario FILE --csms ws://HOST:PORT/ocpp [--site-csms SITE=URL ...]
                        [--speed X] [--duration S]
                        [--seed N] [--offset-h H] [--start ISO] [--ground-truth FILE]
                        [--only ID[,ID...]] [--no-drivers]
                        [--no-faults] [--background-faults]
    chargesight sim history --scenario FILE --days N --out DIR [--seed N] [--start ISO]
                        [--window-s S]
    chargesight sim check --scenario FILE
    chargesight sim csms --port P [--host H] [--heartbeat S]

``--scenario`` takes a path or the name of a bundled scenario (``small``, ``demo``).
``--duration`` is in wall-clock seconds. Exit codes: 0 ok, 1 runtime failure,
2 bad usage or a bad scenario (the message names the line and field).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

from chargesight.sim.scenario import ScenarioError, load_scenario


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chargesight sim", description="the fleet simulator")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="connect the simulated charge points to an OCPP endpoint")
    r.add_argument("--scenario", required=True, metavar="FILE")
    r.add_argument(
        "--csms",
        default=None,
        metavar="URL",
        help="base URL for every site ({site_id} is filled in); /{charge_point_id} is appended",
    )
    r.add_argument(
        "--site-csms",
        action="append",
        default=[],
        metavar="SITE=URL",
        help="the URL for one site's charge points (repeatable), e.g. its edge agent",
    )
    r.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    r.add_argument("--duration", type=float, default=None, metavar="S", help="wall-clock seconds")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument(
        "--offset-h",
        type=float,
        default=0.0,
        help="start this many simulated hours into the scenario (e.g. after its history)",
    )
    r.add_argument(
        "--start",
        default=None,
        help="RFC 3339 time zero of the scenario (default: now minus --offset-h)",
    )
    r.add_argument("--ground-truth", type=Path, default=None, metavar="FILE")
    r.add_argument("--only", default=None, metavar="IDS", help="comma-separated charge point ids")
    r.add_argument("--no-drivers", action="store_true")
    r.add_argument("--no-faults", action="store_true", help="do not play the scenario's [[faults]]")
    r.add_argument("--background-faults", action="store_true")

    h = sub.add_parser("history", help="write months of past operation and its ground truth")
    h.add_argument("--scenario", required=True, metavar="FILE")
    h.add_argument("--days", required=True, type=finite_positive)
    h.add_argument("--out", required=True, type=Path, metavar="DIR")
    h.add_argument("--seed", type=int, default=None)
    h.add_argument(
        "--start",
        default=None,
        type=rfc3339,
        help="RFC 3339 start (default: the scenario's, else now - days)",
    )
    h.add_argument("--window-s", type=float, default=600.0, help="the edge's recovery window")

    c = sub.add_parser("check", help="validate a scenario file")
    c.add_argument("--scenario", required=True, metavar="FILE")

    s = sub.add_parser("csms", help="run the small test CSMS")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--heartbeat", type=int, default=300)
    return p


def finite_positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def rfc3339(text: str) -> datetime:
    """An argparse type: an RFC 3339 time (``2026-10-26`` or ``2026-10-26T00:00:00Z``)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time: {exc}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        scenario = load_scenario(args.scenario) if hasattr(args, "scenario") else None
    except ScenarioError as exc:
        print(f"chargesight sim: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "check":
            assert scenario is not None
            net = scenario.network()
            print(
                f"{scenario.source}: ok: {len(net.sites)} sites, {len(net.chargers)} charge points, "
                f"{len(scenario.data.faults)} faults"
            )
            return 0
        if args.command == "history":
            assert scenario is not None
            from chargesight.sim.history import generate_history

            if args.out.exists() and not args.out.is_dir():
                print(f"chargesight sim: --out {args.out} is a file, not a directory",
                      file=sys.stderr)  # fmt: skip
                return 2
            summary = generate_history(
                scenario, args.days, args.out, seed=args.seed, start=args.start,
                window_s=args.window_s,
            )  # fmt: skip
            print(
                f"history {summary.start:%Y-%m-%d} .. {summary.end:%Y-%m-%d}: {summary.sites} sites, "
                f"{summary.chargers} charge points, {summary.sessions} sessions, "
                f"{summary.energy_kwh:.0f} kWh, {summary.digests} digests, "
                f"{summary.escalations} escalations, {summary.faults} faults -> {args.out}"
            )
            return 0
        if args.command == "csms":
            return asyncio.run(_csms(args.host, args.port, args.heartbeat))
        assert scenario is not None
        return asyncio.run(_run(args, scenario))
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError) as exc:
        print(f"chargesight sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"chargesight sim: {exc}", file=sys.stderr)
        return 1


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def _csms(host: str, port: int, heartbeat: int) -> int:
    from chargesight.sim.csms import Csms

    async with Csms(host, port, heartbeat_interval=heartbeat, record=False) as csms:
        print(f"csms listening on {csms.url}", flush=True)
        await asyncio.Event().wait()
    return 0


async def _run(args: argparse.Namespace, scenario: object) -> int:
    from chargesight.sim.fleet import Simulation
    from chargesight.sim.scenario import Scenario

    assert isinstance(scenario, Scenario)
    urls: dict[str, str] = {}
    if args.csms:
        urls["*"] = args.csms
    for item in args.site_csms:
        site, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"--site-csms wants SITE=URL, got {item!r}")
        urls[site] = url
    if not urls:
        raise ValueError("give --csms URL or --site-csms SITE=URL")
    for url in urls.values():
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"a CSMS URL must start with ws:// or wss://, got {url!r}")
    sim = Simulation(
        scenario,
        urls,
        speed=args.speed,
        seed=args.seed,
        offset_h=args.offset_h,
        start=_parse_time(args.start),
        drivers=not args.no_drivers,
        scheduled_faults=not args.no_faults,
        background_faults=args.background_faults,
        only=args.only.split(",") if args.only else None,
    )
    print(
        f"simulating {len(sim.charge_points)} charge points of {scenario.data.network.name!r} "
        f"against {', '.join(f'{k}={v}' for k, v in urls.items())} at speed {args.speed}",
        flush=True,
    )
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await sim.run(args.duration)
    finally:
        if args.ground_truth:
            sim.write_ground_truth(args.ground_truth)
        print(
            f"sessions: {sim.sessions}, failed attempts: {sim.sessions_failed}, "
            f"energy: {sim.energy_wh / 1000:.1f} kWh, faults: {len(sim.faults)}",
            flush=True,
        )
    return 0
