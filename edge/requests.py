"""Requests from the cloud (``.../requests``) and their replies (``.../replies``).

The uplink hands every payload received on the site's requests topic to
:meth:`RequestRouter.handle`, which

1. validates it against :class:`~chargesight.common.messages.Request`
   (another site's request, or one that is not valid JSON, is refused),
2. refuses it when ``expires_at`` has passed or its ``kind`` is not in the
   configured allow-list,
3. records it in the audit table ``request_audit`` *before* anything runs
   (a request id seen before is not run again: QoS 1 may deliver twice),
4. runs the handler registered for the kind (bounded by a timeout), and
5. commits a :class:`~chargesight.common.messages.Reply` with the same
   ``request_id`` to the outbox, which publishes it at QoS 1.

The audit row is completed with the outcome (``ok``, ``refused_expired``,
``refused_not_allowed``, ``refused_invalid``, ``no_handler``, ``error``,
``timeout``, ``failed``: it ran and did not succeed, e.g. a charger refused a
configuration change) when the reply is committed. Requests are processed at most
once on the edge: a request lost in a crash mid-handling is not retried; the
cloud sees no reply and may ask again with a new id.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiosqlite
import orjson
from pydantic import ValidationError

from chargesight.common.logs import get_logger
from chargesight.common.messages import Reply, Request, replies_topic, utcnow
from chargesight.edge.outbox import Outbox

log = get_logger("chargesight.edge.requests")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

DEFAULT_ALLOWED = ("status", "log_excerpt")


class RequestFailed(Exception):
    """Raised by a handler whose request ran and did not succeed: the reply is not ``ok``,
    its ``error`` is the message and its ``result`` says what happened (e.g. what a charger
    answered)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


SCHEMA = """
CREATE TABLE IF NOT EXISTS request_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id   TEXT NOT NULL,
    kind         TEXT,
    requested_by TEXT,
    received_at  REAL NOT NULL,
    expires_at   TEXT,
    params       TEXT,
    outcome      TEXT NOT NULL,
    error        TEXT,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS request_audit_request_id ON request_audit (request_id);
"""

Outcome = Literal[
    "received",
    "ok",
    "refused_expired",
    "refused_not_allowed",
    "refused_invalid",
    "no_handler",
    "error",
    "timeout",
    "failed",
    "duplicate",
]


@dataclass(frozen=True, slots=True)
class AuditRow:
    request_id: str
    kind: str | None
    requested_by: str | None
    received_at: float
    outcome: str
    error: str | None


class RequestRouter:
    """Validates, authorises, audits and dispatches the cloud's requests.

    ``async with RequestRouter(site_id, outbox, db_path, allowed_kinds=...)``
    opens its own connection to the agent's SQLite file for the audit table.
    Register handlers with :meth:`register` before requests arrive.
    """

    def __init__(
        self,
        site_id: str,
        outbox: Outbox,
        db_path: str | Path,
        *,
        allowed_kinds: Iterable[str] = DEFAULT_ALLOWED,
        handler_timeout_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        busy_timeout_ms: int = 5000,
        commit: Callable[[str, Reply], Awaitable[object]] | None = None,
    ) -> None:
        self.site_id = site_id
        self.outbox = outbox
        # how a reply is committed: the agent's (which holds what a full disk refuses and
        # commits it later), or the outbox's own put
        self._commit = commit or outbox.put
        self.db_path = Path(db_path)
        self.allowed_kinds = frozenset(allowed_kinds)
        self.handler_timeout_s = handler_timeout_s
        self.clock = clock
        self.busy_timeout_ms = busy_timeout_ms
        self._handlers: dict[str, Handler] = {}
        self._db: aiosqlite.Connection | None = None
        self._topic = replies_topic(site_id)

    async def open(self) -> None:
        db = await aiosqlite.connect(self.db_path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        await db.execute(
            "PRAGMA synchronous=NORMAL"
        )  # an audit row lost to a power cut is tolerable
        await db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> RequestRouter:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def register(self, kind: str, handler: Handler) -> None:
        """Route requests of ``kind`` to ``async handler(params) -> result dict``."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = handler

    async def audit(self, request_id: str | None = None) -> list[AuditRow]:
        """Audit rows, oldest first (all, or those of one request)."""
        db = self._require_db()
        sql = (
            "SELECT request_id, kind, requested_by, received_at, outcome, error FROM request_audit"
        )
        args: tuple[Any, ...] = ()
        if request_id is not None:
            sql += " WHERE request_id = ?"
            args = (request_id,)
        async with db.execute(sql + " ORDER BY id", args) as cur:
            rows = await cur.fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def _require_db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("RequestRouter is not open")
        return self._db

    async def handle(self, payload: bytes) -> None:
        """Process one request payload end to end (see the module docstring).

        Cancel-safety: cancelling stops the handler; the audit row stays
        ``received`` and no reply is sent.
        """
        db = self._require_db()
        received = time.time()
        try:
            req = Request.model_validate_json(payload)
        except ValidationError as exc:
            request_id = _peek_request_id(payload)
            error = f"invalid request: {exc.error_count()} validation error(s)"
            log.warning("request_invalid", request_id=request_id, error=str(exc))
            if request_id is not None:
                await self._refuse_invalid(db, request_id, None, received, error)
            return
        if req.site_id != self.site_id:
            error = f"request for site {req.site_id!r} reached site {self.site_id!r}"
            log.warning("request_wrong_site", request_id=req.request_id, error=error)
            await self._refuse_invalid(db, req.request_id, req, received, error)
            return
        if await self._seen(db, req.request_id):
            log.info("request_duplicate_ignored", request_id=req.request_id)
            return
        outcome: Outcome
        if req.expires_at <= self.clock():
            outcome, error = "refused_expired", f"request expired at {req.expires_at.isoformat()}"
        elif req.kind not in self.allowed_kinds:
            outcome, error = "refused_not_allowed", f"request kind {req.kind!r} is not allowed here"
        else:
            outcome, error = "received", ""
        try:
            audit_id = await self._record(db, req.request_id, req, received, outcome, error or None)
        except sqlite3.Error as exc:
            # unrecorded, it could not be told from a redelivery later: not run, and said so
            error = f"the agent cannot record the request ({exc}); not run"
            log.error("request_not_recorded", request_id=req.request_id, error=str(exc))
            await self._reply(req.request_id, ok=False, error=error)
            return
        if outcome != "received":
            log.warning("request_refused", request_id=req.request_id, kind=req.kind, reason=error)
            await self._reply(req.request_id, ok=False, error=error)
            return
        handler = self._handlers.get(req.kind)
        result: dict[str, Any] = {}
        if handler is None:
            outcome, error = "no_handler", f"no handler for request kind {req.kind!r}"
        else:
            try:
                async with asyncio.timeout(self.handler_timeout_s):
                    result = await handler(dict(req.params))
                outcome = "ok"
            except TimeoutError:
                outcome, error = "timeout", f"handler took longer than {self.handler_timeout_s}s"
            except RequestFailed as exc:
                outcome, error, result = "failed", str(exc), exc.result
                log.warning("request_failed", request_id=req.request_id, kind=req.kind, error=error)
            except Exception as exc:
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
                log.exception("request_handler_failed", request_id=req.request_id, kind=req.kind)
        log.info("request_handled", request_id=req.request_id, kind=req.kind, outcome=outcome)
        try:
            await db.execute(
                "UPDATE request_audit SET outcome = ?, error = ?, finished_at = ? WHERE id = ?",
                (outcome, error or None, time.time(), audit_id),
            )
        except sqlite3.Error as exc:  # done all the same: the operator hears how it went
            log.error("request_audit_not_updated", request_id=req.request_id, error=str(exc))
        await self._reply(req.request_id, ok=outcome == "ok", error=error or None, result=result)

    async def _reply(
        self,
        request_id: str,
        *,
        ok: bool,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        reply = Reply(
            site_id=self.site_id, request_id=request_id, ok=ok, error=error, result=result or {}
        )
        try:
            await self._commit(self._topic, reply)
        except Exception as exc:  # the agent holds it and commits it once it can
            log.error("reply_not_committed", request_id=request_id, error=str(exc))

    @staticmethod
    async def _seen(db: aiosqlite.Connection, request_id: str) -> bool:
        async with db.execute(
            "SELECT 1 FROM request_audit WHERE request_id = ? LIMIT 1", (request_id,)
        ) as cur:
            return await cur.fetchone() is not None

    async def _refuse_invalid(
        self,
        db: aiosqlite.Connection,
        request_id: str,
        req: Request | None,
        received: float,
        error: str,
    ) -> None:
        """Record a refused request (``refused_invalid``) and tell the operator.

        The refusal is answered even when it cannot be recorded (a full disk): nothing is
        run, so there is nothing a redelivery could run twice.
        """
        try:
            await self._record(db, request_id, req, received, "refused_invalid", error)
        except sqlite3.Error as exc:
            log.error("request_refusal_not_recorded", request_id=request_id, error=str(exc))
            error = f"{error} (not recorded: {exc})"
        await self._reply(request_id, ok=False, error=error)

    @staticmethod
    async def _record(
        db: aiosqlite.Connection,
        request_id: str,
        req: Request | None,
        received: float,
        outcome: Outcome,
        error: str | None,
    ) -> int:
        """Insert the audit row of ``request_id`` (``req`` is None when it did not validate)
        and return its id; raises :class:`sqlite3.Error` when it cannot be written."""
        cur = await db.execute(
            "INSERT INTO request_audit (request_id, kind, requested_by, received_at, expires_at,"
            " params, outcome, error, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_id,
                None if req is None else req.kind,
                None if req is None else req.requested_by,
                received,
                None if req is None else req.expires_at.isoformat(),
                None if req is None else _params_json(req.params),
                outcome,
                error,
                None if outcome == "received" else time.time(),
            ),
        )
        return int(cur.lastrowid or 0)


def _peek_request_id(payload: bytes) -> str | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    rid = data.get("request_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None


def _params_json(params: dict[str, Any]) -> str:
    try:
        return orjson.dumps(params).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        return json.dumps(params, default=str)
