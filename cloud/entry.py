"""``chargesight cloud ...`` subcommands: ``run``, ``import`` (and ``train``, elsewhere).

Exit codes (CONTRACT.md): 0 ok, 1 runtime failure, 2 bad config (a
:class:`ConfigError` propagates to the CLI, which prints it and exits 2).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from chargesight.cloud.collector import ApiBindError, IngestWorkerError, open_store, run
from chargesight.cloud.config import load_cloud_config
from chargesight.cloud.db import DatabaseError
from chargesight.cloud.embedded import EmbeddedError
from chargesight.cloud.engine import Engine
from chargesight.cloud.importer import NetworkFileError, import_dir
from chargesight.cloud.mqttsource import MqttError
from chargesight.common.logs import configure_logging

RUNTIME_ERRORS = (DatabaseError, EmbeddedError, MqttError, ApiBindError, IngestWorkerError, OSError)


async def _import(config_path: str, directory: Path) -> int:
    config = load_cloud_config(config_path)
    db, embedded = await open_store(config)
    try:
        engine = Engine(db.pool, config.analysis)
        try:
            report = await import_dir(db.pool, engine, directory)
        except NetworkFileError as exc:
            print(f"chargesight: {exc}", file=sys.stderr)
            return 2
        print(report.text())
        return 0
    finally:
        await db.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "command", None)
    try:
        if command == "run":
            config = load_cloud_config(args.config)
            configure_logging(config.logging.level, config.logging.format)
            return asyncio.run(run(config))
        if command == "import":
            directory = Path(args.dir)
            # nothing to import is a usage error, said before any database starts
            if not directory.is_dir():
                print(f"chargesight: --dir {directory}: not a directory", file=sys.stderr)
                return 2
            if not any((directory / f).is_file() for f in ("digests.jsonl", "escalations.jsonl")):
                print(f"chargesight: --dir {directory}: neither digests.jsonl nor"
                      " escalations.jsonl (a `chargesight sim history` directory)",
                      file=sys.stderr)  # fmt: skip
                return 2
            configure_logging("info")
            return asyncio.run(_import(args.config, directory))
        if command == "train":
            train = importlib.import_module("chargesight.cloud.train")
            return int(
                train.run_train(
                    out=args.out, history=getattr(args, "history", None), config=args.config
                )
            )
    except RUNTIME_ERRORS as exc:
        print(f"chargesight: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        print(f"chargesight: cloud {command} is not available: {exc}", file=sys.stderr)
        return 1
    print(f"chargesight: unknown cloud command {command!r}", file=sys.stderr)
    return 2
