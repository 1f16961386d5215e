"""Requests from the cloud: validation, expiry, allow-list, audit, correlated replies."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.common.messages import Reply, Request, replies_topic, requests_topic
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox
from chargesight.edge.requests import RequestRouter
from chargesight.edge.uplink import Uplink
from tests.edge.uplink_support import Observer
from tests.servers import Mosquitto

SITE = "req-site"


def request(kind: str = "status", *, expires_in_s: float = 60, **params: Any) -> Request:
    return Request(
        request_id=f"req-{kind}-{expires_in_s}",
        site_id=SITE,
        kind=kind,  # type: ignore[arg-type]
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        params=params,
        requested_by="operator@example.com",
    )


def payload(req: Request) -> bytes:
    return orjson.dumps(req.model_dump(mode="json"))


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "edge.sqlite") as box:
        yield box


@pytest.fixture
async def router(tmp_path: Path, outbox: Outbox) -> AsyncIterator[RequestRouter]:
    async with RequestRouter(
        SITE, outbox, tmp_path / "edge.sqlite", allowed_kinds=("status", "log_excerpt")
    ) as r:
        yield r


async def replies(outbox: Outbox) -> list[Reply]:
    rows = await outbox.fetch(limit=100)
    assert all(r.topic == replies_topic(SITE) for r in rows)
    return [Reply.model_validate_json(r.payload) for r in rows]


class Calls:
    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []

    async def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        self.params.append(params)
        return {"echo": params, "connected_charge_points": 3}


async def test_expired_request_is_refused_audited_and_not_run(
    router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("status", calls)
    req = request("status", expires_in_s=-1)
    await router.handle(payload(req))
    assert calls.params == []
    (reply,) = await replies(outbox)
    assert reply.request_id == req.request_id
    assert not reply.ok
    assert reply.error is not None and "expired" in reply.error
    (row,) = await router.audit(req.request_id)
    assert row.outcome == "refused_expired"
    assert row.requested_by == "operator@example.com"


async def test_request_kind_not_in_allow_list_is_refused_and_audited(
    router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("maintenance", calls)
    req = request("maintenance", charge_point_id="CP1", on=True)
    await router.handle(payload(req))
    assert calls.params == []
    (reply,) = await replies(outbox)
    assert (reply.request_id, reply.ok) == (req.request_id, False)
    assert reply.error is not None and "not allowed" in reply.error
    assert [r.outcome for r in await router.audit(req.request_id)] == ["refused_not_allowed"]


async def test_same_request_delivered_twice_runs_once(
    router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("status", calls)
    req = request("status")
    await router.handle(payload(req))
    await router.handle(payload(req))  # QoS 1 may deliver twice
    assert len(calls.params) == 1
    assert len(await replies(outbox)) == 1


async def test_failing_handler_answers_not_ok_with_the_error(
    router: RequestRouter, outbox: Outbox
) -> None:
    async def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("log store unavailable")

    router.register("log_excerpt", broken)
    req = request("log_excerpt", charge_point_id="CP1")
    await router.handle(payload(req))
    (reply,) = await replies(outbox)
    assert not reply.ok
    assert reply.error == "RuntimeError: log store unavailable"
    assert [r.outcome for r in await router.audit(req.request_id)] == ["error"]


async def test_malformed_request_and_other_sites_request_are_refused(
    router: RequestRouter, outbox: Outbox
) -> None:
    await router.handle(b"not json at all")  # nothing to answer to
    await router.handle(b'{"request_id": "bad-1", "kind": "status"}')
    other = request("status").model_copy(update={"site_id": "elsewhere", "request_id": "o-1"})
    await router.handle(payload(other))
    by_id = {r.request_id: r for r in await replies(outbox)}
    assert set(by_id) == {"bad-1", "o-1"}
    assert not by_id["bad-1"].ok and not by_id["o-1"].ok
    assert [r.outcome for r in await router.audit()] == ["refused_invalid", "refused_invalid"]


@pytest.mark.mqtt
async def test_request_over_mqtt_is_answered_with_its_request_id(
    mosquitto: Mosquitto, router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("status", calls)
    req = request("status", verbose=True)
    async with (
        Observer(mosquitto.port, [replies_topic(SITE)]) as cloud,
        Uplink(MqttSection(url=mosquitto.url), SITE, outbox, router=router) as up,
    ):
        await up.wait_connected()
        sender = paho.Client(CallbackAPIVersion.VERSION2)
        await asyncio.to_thread(sender.connect, "127.0.0.1", mosquitto.port)
        sender.loop_start()
        try:
            info = sender.publish(requests_topic(SITE), payload(req), qos=1)
            await asyncio.to_thread(info.wait_for_publish, 5)
            await cloud.wait_for(lambda o: bool(o.payloads("/replies")))
        finally:
            sender.disconnect()
            await asyncio.to_thread(sender.loop_stop)
        reply = Reply.model_validate(cloud.payloads("/replies")[0])
        assert reply.request_id == req.request_id
        assert reply.ok
        assert reply.result == {"echo": {"verbose": True}, "connected_charge_points": 3}
        assert calls.params == [{"verbose": True}]
        await outbox.wait_drained()
    assert [r.outcome for r in await router.audit(req.request_id)] == ["ok"]


async def test_a_request_that_cannot_be_recorded_is_not_run_and_the_operator_is_told(
    router: RequestRouter, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the audit row is what makes a redelivery a duplicate: without it (a full disk), running
    # the request could run it twice, so it is refused, in words
    calls = Calls()
    router.register("status", calls)

    async def full(*args: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(router, "_record", full)
    req = request("status")
    await router.handle(payload(req))
    assert calls.params == []
    (reply,) = await replies(outbox)
    assert (reply.request_id, reply.ok) == (req.request_id, False)
    assert reply.error == "the agent cannot record the request (database or disk is full); not run"


async def test_parameters_with_an_integer_beyond_64_bits_are_recorded_and_answered(
    router: RequestRouter, outbox: Outbox
) -> None:
    seen: list[dict[str, Any]] = []

    async def status(params: dict[str, Any]) -> dict[str, Any]:
        seen.append(params)
        return {"connected_charge_points": 3}

    router.register("status", status)
    req = request("status", n=10**25)
    await router.handle(json.dumps(req.model_dump(mode="json")).encode())  # orjson cannot
    assert seen == [{"n": 10**25}]
    (reply,) = await replies(outbox)
    assert reply.ok and [r.outcome for r in await router.audit(req.request_id)] == ["ok"]


async def fill_the_audit_database(router: RequestRouter) -> None:
    """Cap the router's SQLite file at its size and use up the room left in it, as a full disk
    does (see test_disk_full.py). The filler rows are the smallest an audit row can be, with
    the lowest request id (""), so any real request's row and index entry are larger and go
    after them: SQLite refuses them with "database or disk is full"."""
    db = router._db
    assert db is not None
    row = await (await db.execute("PRAGMA page_count")).fetchone()
    assert row is not None
    await db.execute(f"PRAGMA max_page_count = {row[0]}")  # the file cannot grow
    refused = ""
    for _ in range(100_000):  # until the room left in the file is used up
        try:
            await db.execute(
                "INSERT INTO request_audit (request_id, received_at, outcome) VALUES ('', 0, '')"
            )
        except sqlite3.OperationalError as exc:
            refused = str(exc)
            break
    assert refused == "database or disk is full"


async def test_an_invalid_request_is_still_refused_in_words_when_the_disk_is_full(
    router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("status", calls)
    await fill_the_audit_database(router)
    before = len(await router.audit())
    await router.handle(b'{"request_id": "bad-1", "kind": "status"}')  # does not raise
    assert calls.params == []
    (reply,) = await replies(outbox)
    assert (reply.request_id, reply.ok, reply.result) == ("bad-1", False, {})
    assert reply.error == (
        "invalid request: 2 validation error(s) (not recorded: database or disk is full)"
    )
    assert await router.audit("bad-1") == []
    assert len(await router.audit()) == before


async def test_another_sites_request_is_still_refused_in_words_when_the_disk_is_full(
    router: RequestRouter, outbox: Outbox
) -> None:
    calls = Calls()
    router.register("status", calls)
    await fill_the_audit_database(router)
    other = request("status").model_copy(update={"site_id": "elsewhere", "request_id": "o-1"})
    await router.handle(payload(other))  # does not raise
    assert calls.params == []
    (reply,) = await replies(outbox)
    assert (reply.request_id, reply.ok, reply.result) == ("o-1", False, {})
    assert reply.error == (
        "request for site 'elsewhere' reached site 'req-site'"
        " (not recorded: database or disk is full)"
    )
    assert await router.audit("o-1") == []
