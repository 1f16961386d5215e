"""The REST API (CONTRACT.md "REST API"), under ``/api/v1``, plus ``/metrics``.

Bearer tokens from the config, two roles: ``viewer`` reads, ``operator`` also
acknowledges and resolves. A missing or unknown token gets 401, a viewer
writing gets 403. Every error is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import psycopg
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from chargesight.cloud import ask, queries
from chargesight.cloud import requests as edge_requests
from chargesight.cloud.config import TokenEntry
from chargesight.cloud.console import mount_console
from chargesight.cloud.db import transient
from chargesight.cloud.engine import Engine
from chargesight.cloud.issues import IssueStateError, acknowledge, resolve
from chargesight.cloud.issuestore import Pool, load_issue, save_issue
from chargesight.cloud.metrics import Metrics
from chargesight.common.logs import get_logger
from chargesight.common.messages import RecommendedAction, RequestKind

PREFIX = "/api/v1"
HEALTH_DB_TIMEOUT_S = 2.0  # /health answers 503 rather than wait for the pool's timeout
# data errors caused by a value in the request: psycopg's own (no SQLSTATE: a NUL character in
# text), untranslatable or unrepresentable characters, text that is not valid for its type
USER_VALUE_SQLSTATES = (None, "22021", "22P05", "22P02")

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


@dataclass
class ApiState:
    pool: Pool
    engine: Engine
    tokens: dict[str, TokenEntry]
    metrics: Metrics
    ready: bool = True
    requests: edge_requests.RequestSender | None = None  # None: the API cannot reach the edge


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = None
    by: str | None = None


class EdgeRequestBody(BaseModel):
    """What an operator asks a site's agent (CONTRACT.md ``.../requests``)."""

    model_config = ConfigDict(extra="forbid")
    kind: RequestKind
    params: dict[str, Any] = Field(default_factory=dict)
    expires_in_s: float = Field(default=300.0, gt=0, le=86_400)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: RecommendedAction | Literal["other"] = Field(description="the action taken")
    worked: bool | None = Field(default=None, description="whether it fixed the problem")
    note: str | None = None
    by: str | None = None


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)


def _error(status: int, code: str, message: str) -> OrjsonResponse:
    return OrjsonResponse({"error": {"code": code, "message": message}}, status_code=status)


def principal(request: Request) -> TokenEntry:
    state: ApiState = request.app.state.cs
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer TOKEN)")
    given = token.strip().encode()
    entry = next(
        (e for t, e in state.tokens.items() if hmac.compare_digest(t.encode(), given)), None
    )
    if entry is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return entry


def operator(who: Annotated[TokenEntry, Depends(principal)]) -> TokenEntry:
    if who.role != "operator":
        raise ApiError(
            403, "forbidden", "this action needs an operator token; yours is a viewer token"
        )
    return who


Viewer = Annotated[TokenEntry, Depends(principal)]
Operator = Annotated[TokenEntry, Depends(operator)]
StatusFilter = Literal["open", "acknowledged", "resolved", "active", "all"]


def create_app(state: ApiState) -> FastAPI:
    app = FastAPI(
        title="chargesight cloud API",
        version="1",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        default_response_class=OrjsonResponse,
    )
    app.state.cs = state
    mount_console(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        return _error(422, "invalid_request", msgs)

    def _internal_error(request: Request, exc: Exception) -> Response:
        log.error("api_internal_error", path=request.url.path, exc_info=exc)
        return _error(500, "internal_error", f"{type(exc).__name__} (details in the log)")

    @app.exception_handler(psycopg.Error)
    async def _database_error(request: Request, exc: psycopg.Error) -> Response:
        if isinstance(exc, psycopg.DataError) and exc.sqlstate in USER_VALUE_SQLSTATES:
            # a value from the request the database cannot hold (a NUL character, a number
            # jsonb does not take): the request's fault
            return _error(422, "invalid_request", f"a value the database cannot take: {exc}")
        if transient(exc):
            return _error(503, "database_unavailable", "the database cannot be reached now")
        return _internal_error(request, exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return _internal_error(request, exc)

    @app.get(f"{PREFIX}/health", response_model=None)
    async def health() -> dict[str, Any] | Response:
        try:  # the whole check, not only taking a connection: a half-open one can hang
            async with asyncio.timeout(HEALTH_DB_TIMEOUT_S):
                async with state.pool.connection(timeout=HEALTH_DB_TIMEOUT_S) as conn:
                    await conn.execute("SELECT 1")
        except (psycopg.OperationalError, TimeoutError) as exc:
            why = str(exc) or f"no answer in {HEALTH_DB_TIMEOUT_S:g} s"
            return _error(503, "database_unavailable", f"the database cannot be reached: {why}")
        return {"status": "ok", "timescale": getattr(state.engine, "timescale", False)}

    @app.get(f"{PREFIX}/issues")
    async def issues(
        who: Viewer,
        status: StatusFilter = "open",
        site_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            return {"issues": await queries.list_issues(conn, status, site_id, limit)}

    @app.get(f"{PREFIX}/issues/{{issue_id}}")
    async def issue(who: Viewer, issue_id: str) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            found = await load_issue(conn, issue_id)
        if found is None:
            raise ApiError(404, "not_found", f"no issue {issue_id}")
        return queries.issue_json(found)

    @app.post(f"{PREFIX}/issues/{{issue_id}}/ack")
    async def ack(who: Operator, issue_id: str, body: AckBody | None = None) -> dict[str, Any]:
        body = body or AckBody()
        async with state.pool.connection() as conn, conn.transaction():
            found = await load_issue(conn, issue_id, for_update=True)
            if found is None:
                raise ApiError(404, "not_found", f"no issue {issue_id}")
            try:
                new = acknowledge(
                    found, datetime.now(UTC), body.by or who.name or "operator", body.note
                )
            except IssueStateError as exc:
                raise ApiError(409, "conflict", str(exc)) from exc
            await save_issue(conn, new)
        return queries.issue_json(new)

    @app.post(f"{PREFIX}/issues/{{issue_id}}/resolve")
    async def resolve_(who: Operator, issue_id: str, body: ResolveBody) -> dict[str, Any]:
        async with state.pool.connection() as conn, conn.transaction():
            found = await load_issue(conn, issue_id, for_update=True)
            if found is None:
                raise ApiError(404, "not_found", f"no issue {issue_id}")
            try:
                new = resolve(
                    found, datetime.now(UTC), body.by or who.name or "operator", body.action, body.worked,
                    body.note,
                )  # fmt: skip
            except IssueStateError as exc:
                raise ApiError(409, "conflict", str(exc)) from exc
            await save_issue(conn, new)
        return queries.issue_json(new)

    @app.get(f"{PREFIX}/sites/{{site_id}}")
    async def site(who: Viewer, site_id: str) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            out = await queries.site_summary(conn, state.engine, site_id)
        if out is None:
            raise ApiError(404, "not_found", f"no site {site_id}")
        return out

    @app.post(f"{PREFIX}/sites/{{site_id}}/requests", status_code=202)
    async def send_request(who: Operator, site_id: str, body: EdgeRequestBody) -> dict[str, Any]:
        sender = state.requests
        if sender is None:
            raise ApiError(503, "unavailable", "this API has no MQTT connection to the edge")
        request = edge_requests.new_request(
            site_id, body.kind, body.params, body.expires_in_s, who.name or "operator"
        )
        async with state.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (site_id,))
            if await cur.fetchone() is None:
                raise ApiError(404, "not_found", f"no site {site_id}")
            note = None
            async with conn.transaction():
                await edge_requests.record(conn, request)
                try:  # a request the broker surely did not take is not kept
                    await sender.publish(request)
                except edge_requests.RequestNotSent as exc:
                    if not exc.maybe_sent:
                        raise ApiError(503, "not_sent", str(exc)) from exc
                    # kept: it may still reach the site, and sending another could run it twice
                    note = (
                        f"{exc}; it may still reach the site: see GET {PREFIX}/requests/"
                        f"{request.request_id} before sending it again"
                    )
            out = await edge_requests.load(conn, request.request_id)
        assert out is not None
        if note is not None:
            out["status"], out["note"] = "unconfirmed", note
        return out

    @app.get(f"{PREFIX}/requests/{{request_id}}")
    async def get_request(who: Viewer, request_id: str) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            out = await edge_requests.load(conn, request_id)
        if out is None:
            raise ApiError(404, "not_found", f"no request {request_id}")
        return out

    @app.get(f"{PREFIX}/chargers/{{charge_point_id}}")
    async def charger(who: Viewer, charge_point_id: str) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            out = await queries.charger_summary(conn, state.engine, charge_point_id)
        if out is None:
            raise ApiError(404, "not_found", f"no charge point {charge_point_id}")
        return out

    @app.get(f"{PREFIX}/fleet/models")
    async def fleet_models(who: Viewer) -> dict[str, Any]:
        return await state.engine.fleet_view()

    @app.post(f"{PREFIX}/ask")
    async def ask_(who: Viewer, body: AskBody) -> dict[str, Any]:
        async with state.pool.connection() as conn:
            return await ask.answer(conn, state.engine, body.question)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
