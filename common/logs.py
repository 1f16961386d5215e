"""Structured logging set-up shared by every chargesight process.

JSON lines when stderr is not a terminal (production, CI), a readable
console renderer otherwise. Per-connection context (charge point id, site
id, incident id) is bound with ``structlog.contextvars.bound_contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _StreamFactory:
    """PrintLoggers on ``stream``, or on whatever ``sys.stderr`` is *now* when none was given.

    Binding the stderr object of configuration time would keep writing to a
    stream that was replaced and closed since (pytest's capture, a daemon).
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(self.stream if self.stream is not None else sys.stderr)


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream: Any = None
) -> None:
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_StreamFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (websockets, ocpp, paho) stay quiet below warning.
    logging.basicConfig(
        level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s"
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
