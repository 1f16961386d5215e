"""The edge agent process: the proxy, the OCPP log, offline serving, recovery and the uplink.

``run(config)`` is what ``chargesight edge run`` calls. Start-up opens the
SQLite stores first, then the recovery engine and the MQTT uplink, and the
OCPP listening port last, so the port is open only once the agent is ready to
serve (CONTRACT.md). SIGTERM and SIGINT trigger the fixed shutdown order:
stop the recovery engine while charge points are still connected (it restores
any connector it left Inoperative), close charge point connections (the
proxy), stop the uplink (it publishes ``offline`` and keeps what was not
acknowledged in the outbox), then flush the logs and close SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from chargesight.common.events import HeartbeatInterval
from chargesight.common.logs import configure_logging, get_logger
from chargesight.common.messages import (
    Digest,
    EdgeMessage,
    Escalation,
    Fault,
    digests_topic,
    escalations_topic,
    utcnow,
)
from chargesight.common.normalise import parse_time
from chargesight.edge.anomaly import AnomalyMonitor
from chargesight.edge.audit import AuditLog
from chargesight.edge.chargerconfig import change_configuration
from chargesight.edge.config import EdgeConfig
from chargesight.edge.identity import IdentityStore
from chargesight.edge.modelstore import ALL_MODELS_TOPIC, ModelStore
from chargesight.edge.ocpplog import OcppLog
from chargesight.edge.offline import DisconnectOffline, OfflineStore, ServeOffline
from chargesight.edge.outbox import KIND_CLASS, Outbox, OutboxClosed, OutboxError, message_kind
from chargesight.edge.proxy import Proxy
from chargesight.edge.recovery import RecoveryEngine
from chargesight.edge.requests import RequestRouter
from chargesight.edge.uplink import Uplink

log = get_logger("chargesight.edge.agent")

STATUS_INTERVAL_S = 2.0
# messages the outbox could not commit, held in memory and committed again (Agent._commit)
HELD_MAX = 10_000
HELD_RETRY_S = 2.0
HELD_RETRY_MAX_S = 60.0


def load_public_key(value: str | None) -> Any:
    """The configured Ed25519 key for model updates, or None (updates are then refused)."""
    if not value:
        return None
    from chargesight.common.modelsign import load_public_key as load

    return load(value)


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
        self.outbox = Outbox.from_config(config.storage)
        self.audit = AuditLog(config.storage.path)
        self.monitor: AnomalyMonitor | None = None
        if config.foresight.enabled:
            store = ModelStore(
                config.foresight.models_dir or config.storage.path.parent / "models",
                load_public_key(config.foresight.public_key),
                on_alarm=self._model_alarm,
            )
            self.monitor = AnomalyMonitor(config.site.id, store, self.escalate)
            self.proxy.subscribe(self.monitor.feed)
        self.engine = RecoveryEngine(
            site_id=config.site.id,
            config=config.recovery,
            call=self.proxy,
            evidence=self.ocpp_log.evidence,
            escalate=self.escalate,
            audit=self.audit,
            currency=config.site.currency,
            price_per_kwh=config.site.price_per_kwh,
            publish_digest=self.publish_digest,
            anomaly_score=self.monitor.anomaly_score if self.monitor is not None else None,
        )
        if self.monitor is not None:
            # one set of windows: the digests' (fed with the engine's decisions) are scored
            self.monitor.attach(self.engine.digest)
        self.router = RequestRouter(
            config.site.id,
            self.outbox,
            config.storage.path,
            allowed_kinds=config.uplink.allowed_requests,
            commit=self._commit,
        )
        self.router.register("status", self._request_status)
        self.router.register("log_excerpt", self._request_log_excerpt)
        self.router.register("maintenance", self._request_maintenance)
        self.router.register("rerun_playbook", self._request_rerun)
        self.router.register("configuration_change", self._request_configuration_change)
        self.uplink = Uplink(config.mqtt, config.site.id, self.outbox, router=self.router)
        if self.monitor is not None:
            self.uplink.subscribe(ALL_MODELS_TOPIC, self._model_update)
        self.identities = IdentityStore(config.storage.path)
        self.proxy.subscribe(self.engine.handle)
        self.proxy.subscribe(self.identities.observe)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # messages the outbox could not commit (a full disk), committed again until it can
        self._held: collections.deque[tuple[str, EdgeMessage]] = collections.deque()
        self._held_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.ocpp_log.open()
        await self.offline_store.open()
        await self.outbox.open()
        await self.audit.open()
        # operators' maintenance switches outlive a restart: a unit being serviced is not
        # reset by the next incident's recovery
        self.engine.restore_maintenance(await self.audit.maintenance_switches())
        # who each charge point is: they reconnect to a restarted agent without booting again
        await self.identities.open()
        self.engine.restore_identities(await self.identities.load())
        # and the resets sent in the last 24 h still count against each charger's daily budget
        self.engine.restore_resets(await self.audit.resets())
        await self.router.open()
        await self.engine.start()
        await self.uplink.start()
        await self.proxy.start()  # last: the port opens only when everything is ready
        self._spawn(self._status_loop(), "status")
        if self.monitor is not None:
            if self.config.foresight.warm_from is not None:
                await self._warm_foresight(self.config.foresight.warm_from)
            self._spawn(self._foresight_loop(), "foresight")
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
        """Stop everything, in order. A part that fails to close is logged and the rest are
        closed all the same (an open SQLite connection's thread would keep the process
        alive); the first failure is raised at the end."""
        errors: list[BaseException] = []

        async def step(name: str, close: Callable[[], Awaitable[object]]) -> None:
            try:
                await close()
            except Exception as exc:
                log.error("close_failed", part=name, error=repr(exc))
                errors.append(exc)

        # restores Operative while charge points are still here
        await step("recovery engine", self.engine.stop)
        await step("proxy", self.proxy.close)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await step("uplink", self.uplink.close)
        await step("request router", self.router.close)
        await step("identity store", self.identities.close)
        await step("audit log", self.audit.close)
        if self._held_task is not None:
            self._held_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._held_task
        while self._held:  # one last try, in order
            topic, message = self._held[0]
            try:
                await self.outbox.put(topic, message)
            except OutboxError:
                break
            self._held.popleft()
        if self._held:
            log.error("held messages lost: the outbox could not commit them before the stop",
                      held=len(self._held), message_ids=[m.message_id for _, m in self._held])  # fmt: skip
        await step("outbox", self.outbox.close)
        await step("offline store", self.offline_store.close)
        await step("OCPP log", self.ocpp_log.close)
        with contextlib.suppress(OSError):
            self.write_status(running=False)
        log.info("edge_agent_stopped", site_id=self.config.site.id)
        if errors:
            raise errors[0]

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
            "recovery": self.engine.status(),
            "foresight": self.monitor.store.status() if self.monitor is not None else None,
            "uplink": self.uplink.status().as_dict(),
            "ocpp_log": {"written": self.ocpp_log.written, "dropped": self.ocpp_log.dropped},
            "held_uncommitted": len(self._held),
        }

    # ------------------------------------------------------------ uplink glue

    async def escalate(self, escalation: Escalation) -> None:
        """Commit an escalation to the durable outbox (published at QoS 1 until acknowledged).

        When the outbox cannot commit it (a full disk, a broken file) this raises, and the
        escalation is kept in memory and committed again until the outbox takes it
        (:meth:`_commit`)."""
        await self._commit(escalations_topic(self.config.site.id), escalation)

    async def publish_digest(self, digest: Digest) -> None:
        """Commit a digest; each charge point carries its latest anomaly score, features and health."""
        if self.monitor is not None:
            digest = digest.model_copy(
                update={
                    "chargers": [
                        c.model_copy(update=self.monitor.digest_fields(c.charge_point_id))
                        for c in digest.chargers
                    ]
                }
            )
        await self._commit(digests_topic(self.config.site.id), digest)

    async def _commit(self, topic: str, message: EdgeMessage) -> None:
        """``outbox.put``; what it cannot commit is held in memory (beyond ``HELD_MAX``, dropped
        as the outbox drops: digests first, escalations last) and committed again every few
        seconds, in order, until the outbox takes it. It is lost only if the agent stops
        before the disk has room again."""
        if self._held:  # behind messages still held: in order (a clear after its escalation)
            self._hold(topic, message)
            raise OutboxError(f"held behind {len(self._held) - 1} message(s) not yet committed")
        try:
            await self.outbox.put(topic, message)
            return
        except OutboxClosed:
            raise
        except OutboxError:
            self._hold(topic, message)
            raise

    def _hold(self, topic: str, message: EdgeMessage) -> None:
        held = self._held
        held.append((topic, message))
        if len(held) > HELD_MAX:
            # by the outbox's own policy: the oldest of the lowest class (digests, then replies,
            # escalations last); never the first, which may be being committed now
            victim = min(
                range(1, len(held)), key=lambda i: (KIND_CLASS[message_kind(held[i][1])], i)
            )
            _, dropped = held[victim]
            del held[victim]
            log.error("held message dropped", message_id=dropped.message_id, held=len(held))
        log.error(
            "message held in memory: the outbox cannot commit (disk full?)",
            message_id=message.message_id,
            held=len(held),
        )
        if self._held_task is None or self._held_task.done():
            self._held_task = asyncio.create_task(self._commit_held(), name="held")

    async def _commit_held(self) -> None:
        delay = HELD_RETRY_S
        while self._held:
            await asyncio.sleep(delay)
            while self._held:
                entry = self._held[0]
                topic, message = entry
                try:
                    await self.outbox.put(topic, message)
                except OutboxClosed:
                    return
                except OutboxError as exc:
                    log.warning("held messages still not committed", held=len(self._held),
                                error=str(exc), retry_in=delay)  # fmt: skip
                    delay = min(delay * 2, HELD_RETRY_MAX_S)
                    break
                if self._held and self._held[0] is entry:
                    self._held.popleft()
                log.info("held message committed", message_id=message.message_id,
                         held=len(self._held))  # fmt: skip

    async def _offline_alarm(
        self, charge_point_id: str, message: str, details: dict[str, Any]
    ) -> None:
        """A queued message the CSMS keeps refusing, or a queue near its bound: tell the cloud."""
        log.error("offline_alarm", charge_point_id=charge_point_id, message=message, **details)
        now = utcnow()
        await self.escalate(
            Escalation(
                site_id=self.config.site.id,
                kind="offline_queue",
                incident_id=f"offline-{charge_point_id}-{int(now.timestamp() * 1000)}",
                charge_point_id=charge_point_id,
                connector_id=None,
                scope="charge_point",
                fault=Fault(
                    code="OfflineQueueAlarm", category="connectivity", component="csms_link"
                ),
                started_at=now,
                detail=f"{message}: {orjson.dumps(details, default=str).decode()}",
                recommended_action="configuration_change",
            )
        )

    # ------------------------------------------------------------ foresight glue

    async def _foresight_loop(self) -> None:
        """Close the feature windows on schedule and score them (in an executor)."""
        assert self.monitor is not None
        while True:
            await asyncio.sleep(self.config.foresight.window_close_s)
            try:
                await self.monitor.close_window(utcnow())
            except Exception as exc:  # scoring trouble must never stop the agent
                log.error("foresight_window_failed", error=repr(exc))

    async def _warm_foresight(self, path: Path) -> None:
        """Score the site's past digests hour by hour (``foresight.warm_from``)."""
        assert self.monitor is not None
        site = self.config.site.id

        def read() -> list[Digest]:
            out = []
            with path.open("rb") as f:
                for line in f:
                    if site.encode() in line:
                        digest = Digest.model_validate_json(line)
                        if digest.site_id == site:
                            out.append(digest)
            return out

        try:
            digests = await asyncio.to_thread(read)
            hours = await self.monitor.catch_up(digests)
        except (OSError, ValueError) as exc:
            log.error("foresight_warm_failed", path=str(path), error=str(exc))
            return
        log.info("foresight_warmed", digests=len(digests), hours_scored=hours)

    async def _model_update(self, topic: str, payload: bytes) -> None:
        assert self.monitor is not None
        store = self.monitor.store
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, store.handle_message, topic, payload
            )
        except Exception as exc:  # refused: the store raised its alarm already
            log.warning("model_update_refused", topic=topic, error=str(exc))

    def _model_alarm(self, model_key: str, reason: str) -> None:
        log.error("model_update_alarm", model_key=model_key, reason=reason)

    async def _request_status(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _request_log_excerpt(self, params: dict[str, Any]) -> dict[str, Any]:
        cp = params.get("charge_point_id")
        start = parse_time(params.get("start"), utcnow() - timedelta(hours=1))
        end = parse_time(params.get("end"), utcnow())
        limit = max(1, min(int(params.get("limit", 200)), 2000))
        frames = await self.ocpp_log.query(str(cp) if cp else None, start, end, limit)
        return {"frames": [f.model_dump(mode="json") for f in frames]}

    async def _request_maintenance(self, params: dict[str, Any]) -> dict[str, Any]:
        cp = str(params["charge_point_id"])
        on = params.get("on", True)
        if not isinstance(on, bool):  # "false" would be truthy: a unit left in maintenance
            raise ValueError(f"params.on must be true or false, not {on!r}")
        await self.engine.switch_maintenance(cp, on)
        return {"charge_point_id": cp, "maintenance": on}

    async def _request_rerun(self, params: dict[str, Any]) -> dict[str, Any]:
        cp = str(params["charge_point_id"])
        connector = params.get("connector_id")
        ids = self.engine.rerun(cp, int(connector) if connector is not None else None)
        return {
            "charge_point_id": cp,
            "incident_ids": ids,
            "window_s": self.config.recovery.window_s,
        }

    async def _request_configuration_change(self, params: dict[str, Any]) -> dict[str, Any]:
        def heartbeat_changed(cp: str, seconds: int) -> None:
            # as if the CSMS had told it: the detector (and the identity store) expect the new
            # interval from now on, not a silence after the old one
            self.proxy.emit(HeartbeatInterval(cp, utcnow(), seconds))

        return await change_configuration(
            self.proxy,
            params,
            self.config.uplink.configuration_keys,
            heartbeat_changed=heartbeat_changed,
        )

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
