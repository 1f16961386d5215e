"""The edge agent process: wires the proxy, the OCPP log and (as they land) recovery and uplink.

``run(config)`` is what ``chargesight edge run`` calls. Start-up opens the
SQLite store first and the OCPP listening port last, so the port is open only
once the agent is ready to serve (CONTRACT.md). SIGTERM and SIGINT trigger the
fixed shutdown order: stop accepting and close charge point connections (the
proxy), then flush the OCPP log and close SQLite, leaving it consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from chargesight.common.logs import configure_logging, get_logger
from chargesight.edge.config import EdgeConfig
from chargesight.edge.ocpplog import OcppLog
from chargesight.edge.offline import DisconnectOffline, OfflineStore, ServeOffline
from chargesight.edge.proxy import Proxy

log = get_logger("chargesight.edge.agent")

STATUS_INTERVAL_S = 2.0


def status_path(config: EdgeConfig) -> Path:
    """Where the running agent writes its status snapshot for ``chargesight edge status``."""
    return config.storage.path.with_name(config.storage.path.name + ".status.json")


class Agent:
    """One site's agent. ``async with Agent(config) as agent: await agent.wait()``."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.ocpp_log = OcppLog(
            config.storage.path,
            max_rows=config.storage.ocpp_log_max_rows,
            max_age_s=config.storage.ocpp_log_max_age_s,
        )
        self.offline_store = OfflineStore(config.storage.path, config.offline)
        self.offline: ServeOffline | DisconnectOffline = (
            ServeOffline(self.offline_store, config.offline, on_alarm=self._offline_alarm)
            if config.ocpp.offline == "serve"
            else DisconnectOffline()
        )
        self.proxy = Proxy(config, frame_log=self.ocpp_log, offline=self.offline)
        if isinstance(self.offline, ServeOffline):
            self.proxy.subscribe(self.offline.observe)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.ocpp_log.open()
        await self.offline_store.open()
        await self.proxy.start()  # last: the port opens only when everything is ready
        self._spawn(self._status_loop(), "status")
        log.info("edge_agent_ready", site_id=self.config.site.id, port=self.proxy.port)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        await self.proxy.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ocpp_log.close()
        await self.offline_store.close()
        with contextlib.suppress(OSError):
            self.write_status(running=False)
        log.info("edge_agent_stopped", site_id=self.config.site.id)

    def status(self) -> dict[str, Any]:
        stats = self.proxy.stats
        return {
            "site_id": self.config.site.id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "ocpp": {
                "listen": self.config.ocpp.listen,
                "connected": [
                    {
                        "charge_point_id": cp_id,
                        "ocpp": session.version,
                        "upstream_connected": session.upstream is not None,
                    }
                    for cp_id, session in sorted(self.proxy.sessions.items())
                ],
                "malformed_frames": stats.malformed_from_cp + stats.malformed_from_csms,
                "answered_locally": stats.answered_locally,
                "injected_calls": stats.injected_calls,
            },
            "offline": self.offline.status(),
            "ocpp_log": {"written": self.ocpp_log.written, "dropped": self.ocpp_log.dropped},
        }

    async def _offline_alarm(
        self, charge_point_id: str, message: str, details: dict[str, Any]
    ) -> None:
        log.error("offline_alarm", charge_point_id=charge_point_id, message=message, **details)

    def write_status(self, running: bool = True) -> None:
        data = self.status()
        data["running"] = running
        path = status_path(self.config)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        tmp.replace(path)

    async def _status_loop(self) -> None:
        while True:
            try:
                self.write_status()
            except OSError as exc:
                log.warning("status_write_failed", error=str(exc))
            await asyncio.sleep(STATUS_INTERVAL_S)


async def run(config: EdgeConfig) -> int:
    """Run the agent until SIGTERM/SIGINT. Returns the process exit code."""
    configure_logging(config.logging.level, config.logging.format)
    loop = asyncio.get_running_loop()
    try:
        agent = Agent(config)
        await agent.start()
    except OSError as exc:
        log.error("edge_agent_start_failed", error=str(exc))
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.wait()
    finally:
        await agent.close()
    return 0
