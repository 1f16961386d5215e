"""The ``chargesight`` console script: the one thin place that may import every part.

Exit codes (CONTRACT.md): 0 ok, 1 runtime failure, 2 bad usage or bad config.
Each half exposes its own ``run(config)``; this module only parses arguments,
loads configs and dispatches, importing each half lazily so that
``chargesight edge ...`` never loads the cloud's dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from chargesight.common.configload import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chargesight",
        description="Edge agent and cloud collector for EV charging networks.",
    )
    sub = p.add_subparsers(dest="half", required=True, metavar="{edge,cloud,sim,demo,ask}")

    edge = sub.add_parser("edge", help="the site-gateway agent")
    edge_sub = edge.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run a site agent"),
        ("check", "validate the config and reach the CSMS and the broker"),
        ("status", "show connected charge points, open incidents, recent actions, uplink state"),
    ):
        c = edge_sub.add_parser(name, help=text)
        c.add_argument("--config", required=True, metavar="FILE", help="edge TOML config")

    cloud = sub.add_parser("cloud", help="the cloud collector and API")
    cloud_sub = cloud.add_subparsers(dest="command", required=True)
    c = cloud_sub.add_parser("run", help="run collector + API")
    c.add_argument("--config", required=True, metavar="FILE")
    c = cloud_sub.add_parser("import", help="bulk-load a simulator history directory")
    c.add_argument("--config", required=True, metavar="FILE")
    c.add_argument("--dir", required=True, metavar="DIR", help="from `chargesight sim history`")
    c = cloud_sub.add_parser("train", help="train anomaly models from stored data")
    c.add_argument("--config", metavar="FILE", help="train from the collector's database")
    c.add_argument("--history", metavar="DIR", help="train from a simulator history instead")
    c.add_argument("--out", metavar="DIR", default="models")
    c = cloud_sub.add_parser(
        "publish-models", help="sign trained models and publish them (retained) to the gateways"
    )
    c.add_argument("--models", required=True, metavar="DIR", help="*.onnx with *.card.json")
    c.add_argument("--mqtt", required=True, metavar="URL", help="mqtt://HOST:PORT")
    c.add_argument("--key", required=True, metavar="FILE", help="Ed25519 private key (PEM)")

    sim = sub.add_parser("sim", help="the fleet simulator", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser(
        "demo", help="run the whole system on a simulated network", add_help=False
    )
    demo.add_argument("args", nargs=argparse.REMAINDER)

    ask = sub.add_parser("ask", help="ask a question about the network in plain words")
    ask.add_argument("question")
    ask.add_argument("--api", default="http://127.0.0.1:8080", metavar="URL")
    ask.add_argument("--token", default=None, help="API token (default: $CHARGESIGHT_TOKEN)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("sim", "demo"):
        # These parse their own flags (argparse's REMAINDER would not take leading options).
        args = argparse.Namespace(half=argv[0], args=argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"chargesight: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run_fast(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (the proxy forwards ~1.4x more frames), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))


def _entry(module: str, attr: str, what: str) -> Callable[..., Any] | None:
    """Import ``module.attr`` lazily; say plainly when that part is not installed."""
    try:
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        print(f"chargesight: {what} is not available: {exc}", file=sys.stderr)
        return None
    return fn


def _dispatch(args: argparse.Namespace) -> int:
    if args.half == "edge":
        from chargesight.edge.config import load_edge_config

        config = load_edge_config(args.config)
        if args.command == "run":
            from chargesight.edge.agent import run

            return _run_fast(run(config))
        if args.command == "check":
            from chargesight.edge.check import check

            return asyncio.run(check(config))
        from chargesight.edge.status import status

        return status(config)
    target = {
        "cloud": ("chargesight.cloud.entry", "main", "the cloud collector"),
        "sim": ("chargesight.sim.cli", "main", "the simulator"),
        "demo": ("chargesight.cli.demo", "main", "the demo"),
        "ask": ("chargesight.cloud.askcli", "main", "`ask`"),
    }[args.half]
    fn = _entry(*target)
    if fn is None:
        return EXIT_FAILURE
    if args.half == "ask":
        return int(fn(args.question, args.api, args.token))
    if args.half == "cloud" and args.command == "publish-models":
        publish = _entry("chargesight.cloud.foresight", "run_publish", "model publishing")
        if publish is None:
            return EXIT_FAILURE
        return int(publish(models=args.models, mqtt_url=args.mqtt, key=args.key))
    if args.half == "cloud":
        return int(fn(args))
    return int(fn(args.args))


if __name__ == "__main__":
    sys.exit(main())
