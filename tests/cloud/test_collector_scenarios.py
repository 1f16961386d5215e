"""The collector end to end: real Mosquitto, real PostgreSQL, messages built from the common schemas."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from datetime import datetime, timedelta

import psycopg
import pytest

from chargesight.cloud.db import Database
from chargesight.common.messages import Digest
from tests.cloud.conftest import OPERATOR, VIEWER, Running, make_config, start_collector
from tests.cloud.helpers import T0, Publisher, blip, counters, digest, escalation, usage_history
from tests.servers import Mosquitto, Postgres

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]

WEEK = timedelta(days=7)


async def send(r: Running, *msgs: object) -> None:
    before = r.collector.handled_total
    n = await asyncio.to_thread(r.publisher.send, *msgs)  # type: ignore[arg-type]
    await r.collector.wait_stored(before + n)


async def test_persistent_fault_becomes_an_issue_with_every_contract_field(
    running: Running,
) -> None:
    r = running
    # two weeks of usage before the fault: 2 sessions per hour of 20 kWh at 0.5 EUR/kWh
    await send(r, *usage_history("berlin", ["cp-1", "cp-2"], T0 - 2 * WEEK, 14 * 24))
    fault_at = T0 + timedelta(hours=10)
    await send(
        r,
        escalation(
            "berlin",
            "cp-1",
            code="PowerSwitchFailure",
            vendor_code="PSU-7",
            category="power",
            component="psu",
            started_at=fault_at,
        ),
    )
    # three hours of outage pass in the data
    await send(r, *usage_history("berlin", ["cp-2"], fault_at, 3))

    resp = await r.get("/issues")
    assert resp.status_code == 200
    issues = resp.json()["issues"]
    assert len(issues) == 1
    issue = issues[0]
    for key in (
        "id",
        "site_id",
        "charge_point_id",
        "connector_id",
        "scope",
        "status",
        "fault",
        "started_at",
        "ended_at",
        "recovery_attempts",
        "diagnosis",
        "recommended_action",
        "revenue_lost",
        "related",
        "evidence",
        "priority",
    ):
        assert key in issue, key
    assert issue["site_id"] == "berlin"
    assert issue["charge_point_id"] == "cp-1"
    assert issue["scope"] == "charge_point"
    assert issue["connector_id"] is None
    assert issue["status"] == "open"
    assert issue["fault"]["code"] == "PowerSwitchFailure"
    assert issue["fault"]["vendor_code"] == "PSU-7"
    assert [a["action"] for a in issue["recovery_attempts"]] == ["soft_reset", "hard_reset"]
    assert issue["evidence"][0]["direction"] == "cp->csms"
    assert issue["recommended_action"] == "component_replacement"
    assert "cp-1" in issue["diagnosis"] and "soft_reset" in issue["diagnosis"]
    # 3 outage hours × 2 expected sessions × 20 kWh × 0.5 EUR
    assert issue["revenue_lost"]["currency"] == "EUR"
    assert issue["revenue_lost"]["amount"] == pytest.approx(60.0)
    assert "same hour of week" in issue["revenue_lost"]["method"]
    assert 0 < issue["priority"] <= 1
    whole = await r.get(f"/issues/{issue['id']}")
    assert whole.json()["id"] == issue["id"]


async def test_same_signature_on_three_chargers_at_two_sites_lists_the_others_as_related(
    running: Running,
) -> None:
    r = running
    units = [("north", "n-1"), ("north", "n-2"), ("south", "s-1")]
    await send(
        r,
        *[
            escalation(
                site,
                cp,
                code="OverCurrentFailure",
                vendor_code="OC-3",
                category="power",
                model="HPC150",
                started_at=T0 + timedelta(hours=i),
            )
            for i, (site, cp) in enumerate(units)
        ],
    )
    # an unrelated fault on the same model must not be listed
    await send(
        r,
        escalation(
            "south",
            "s-2",
            code="GroundFailure",
            vendor_code="GF",
            category="hardware",
            model="HPC150",
            started_at=T0,
        ),
    )
    issues = {i["charge_point_id"]: i for i in (await r.get("/issues")).json()["issues"]}
    assert set(issues) == {"n-1", "n-2", "s-1", "s-2"}
    for _site, cp in units:
        related = {(x["site_id"], x["charge_point_id"]) for x in issues[cp]["related"]}
        assert related == {u for u in units if u[1] != cp}, cp
        assert all("OverCurrentFailure" in x["reason"] for x in issues[cp]["related"])
    assert issues["s-2"]["related"] == []
    assert issues["s-2"]["recommended_action"] == "field_technician"


def flaky_day(site: str, cps: list[str], cut_hours: int = 0) -> list[Digest]:
    """24 half-hour disconnects over one day, one an hour in turn over ``cps`` (none escalated),
    each costing two failed starts (the driver who came while it was offline, twice); in the
    first ``cut_hours`` the edge saw the drop stop a session 10 kWh from done."""
    digests = []
    for h in range(24):
        cp = cps[h % 3]
        cut = h < cut_hours
        b = blip(cp, T0 + timedelta(hours=h, minutes=10), minutes=30).model_copy(
            update={"sessions_cut": int(cut), "energy_unmet_wh": 10_000.0 if cut else 0.0}
        )
        counters_h = [
            counters(c, sessions_started=2, energy_wh=40_000, disconnects=int(c == cp),
                     self_resolved=int(c == cp), sessions_failed=2 * int(c == cp))
            for c in cps
        ]  # fmt: skip
        digests.append(digest(site, T0 + timedelta(hours=h), counters_h, self_resolved=[b]))
    return digests


async def test_flaky_wifi_site_gets_one_site_issue_with_its_cost(running: Running) -> None:
    r = running
    cps = ["w-1", "w-2", "w-3"]
    await send(r, *usage_history("cafe", cps, T0 - 2 * WEEK, 14 * 24))
    day = flaky_day("cafe", cps)
    await send(r, *day)
    issues = (await r.get("/issues")).json()["issues"]
    assert len(issues) == 1
    issue = issues[0]
    assert issue["scope"] == "site"
    assert issue["charge_point_id"] is None and issue["connector_id"] is None
    assert sorted(issue["chargers"]) == cps
    assert issue["recommended_action"] == "network_fix"
    assert issue["recurring"]["incidents"] == 24
    # 24 drivers who failed twice and left (48 failed starts) × 20 kWh × 0.5 EUR = 240 EUR
    assert issue["revenue_lost"]["amount"] == pytest.approx(240.0)
    site = (await r.get("/sites/cafe")).json()
    assert [p["id"] for p in site["recurring_problems"]] == [issue["id"]]
    # each charger's last report is its newest digest, though its metadata never changed
    last = max(d.interval_end for d in day)
    seen = {datetime.fromisoformat(c["last_data_at"]) for c in site["chargers"]}
    assert seen == {last}


async def test_a_flaky_sites_cost_counts_the_sessions_its_drops_cut_as_the_edge_saw_them(
    running: Running,
) -> None:
    r = running
    cps = ["m-1", "m-2", "m-3"]
    await send(r, *usage_history("mall", cps, T0 - 2 * WEEK, 14 * 24))
    await send(r, *flaky_day("mall", cps, cut_hours=3))
    (issue,) = (await r.get("/issues")).json()["issues"]
    assert issue["scope"] == "site" and issue["recurring"]["incidents"] == 24
    # 240 EUR of drivers who left (as above) + 3 × 10 kWh × 0.5 EUR the cut sessions missed
    assert issue["revenue_lost"]["amount"] == pytest.approx(255.0)
    method = issue["revenue_lost"]["method"]
    assert "3 session(s) the incidents cut short, as the edge saw: 30.0 kWh" in method


async def test_duplicate_deliveries_make_one_issue(running: Running) -> None:
    r = running
    esc = escalation("dup", "d-1")
    await send(r, esc, esc, esc)
    await send(r, esc)
    issues = (await r.get("/issues?status=all")).json()["issues"]
    assert len(issues) == 1
    assert issues[0]["escalations"] == 1
    text = (await r.api.get("/metrics")).text
    assert "chargesight_ingest_duplicates_total 3.0" in text


async def test_repeated_escalation_of_the_same_problem_updates_the_one_issue(
    running: Running,
) -> None:
    r = running
    await send(r, escalation("rep", "r-1", connector=1, scope="connector", incident_id="inc-a"))
    await send(
        r,
        escalation(
            "rep",
            "r-1",
            connector=1,
            scope="connector",
            incident_id="inc-b",
            started_at=T0 + timedelta(hours=1),
        ),
    )
    issues = (await r.get("/issues")).json()["issues"]
    assert len(issues) == 1
    assert issues[0]["connector_id"] == 1 and issues[0]["escalations"] == 2


async def test_malformed_message_goes_to_dead_letters_and_the_collector_keeps_going(
    running: Running, database: object
) -> None:
    r = running
    before = r.collector.handled_total
    await asyncio.to_thread(r.publisher.raw, "chargesight/v1/sites/bad/escalations", b"{not json")
    await asyncio.to_thread(
        r.publisher.raw, "chargesight/v1/sites/bad/digests", b'{"site_id": "bad"}'
    )
    await r.collector.wait_stored(before + 2)
    await send(r, escalation("good", "g-1"))
    assert len((await r.get("/issues")).json()["issues"]) == 1
    async with r.collector.db.pool.connection() as conn:
        cur = await conn.execute("SELECT topic, reason FROM dead_letters ORDER BY id")
        rows = await cur.fetchall()
    assert [row["topic"] for row in rows] == [
        "chargesight/v1/sites/bad/escalations",
        "chargesight/v1/sites/bad/digests",
    ]
    assert all("schema validation failed" in row["reason"] for row in rows)
    assert "chargesight_ingest_dead_letters_total 2.0" in (await r.api.get("/metrics")).text


async def test_a_counter_too_large_to_store_is_a_dead_letter_and_the_rest_is_stored(
    running: Running,
) -> None:
    # valid JSON and schema, but 3e9 connectors do not fit the database's int column (a binary
    # COPY would have wrapped it silently): that digest alone becomes a dead letter, saying why
    r = running
    huge = digest("vast", T0, [counters("v-1", connectors=3_000_000_000)])
    fine = digest("vast", T0 + timedelta(hours=1), [counters("v-1")])
    await send(r, huge, fine)
    async with r.collector.db.pool.connection() as conn:
        cur = await conn.execute("SELECT topic, reason, payload FROM dead_letters")
        (row,) = await cur.fetchall()
        cur = await conn.execute("SELECT message_id, connectors FROM charger_intervals")
        stored = [(x["message_id"], x["connectors"]) for x in await cur.fetchall()]
    assert row["topic"] == "chargesight/v1/sites/vast/digests"
    assert row["reason"] == "chargers[v-1].connectors: 3000000000 is out of range (int32)"
    assert Digest.model_validate_json(row["payload"]) == huge
    assert stored == [(fine.message_id, 2)]


async def test_an_escalation_whose_number_cannot_be_stored_is_a_dead_letter_not_a_crash(
    running: Running,
) -> None:
    # valid to the schema (ints are unbounded), but 10**25 cannot be written as the stored
    # JSON body: that message alone becomes a dead letter, and the collector carries on
    r = running
    bad = escalation("huge", "h-1")
    raw = bad.to_json().replace(b'"active_sessions":0', b'"active_sessions":' + b"9" * 25)
    before = r.collector.handled_total
    await asyncio.to_thread(r.publisher.raw, "chargesight/v1/sites/huge/escalations", raw)
    await r.collector.wait_stored(before + 1)
    await send(r, escalation("huge", "h-2"))
    issues = (await r.get("/issues")).json()["issues"]
    assert [i["charge_point_id"] for i in issues] == ["h-2"]
    async with r.collector.db.pool.connection() as conn:
        cur = await conn.execute("SELECT topic, reason, payload FROM dead_letters")
        (row,) = await cur.fetchall()
    assert row["topic"] == "chargesight/v1/sites/huge/escalations"
    assert row["reason"].startswith("cannot store it: ")
    assert bytes(row["payload"]) == raw  # as received


async def test_fault_reported_healthy_again_resolves_the_issue_as_cleared(running: Running) -> None:
    r = running
    await send(r, escalation("clr", "c-1", incident_id="inc-1"))
    await send(r, digest("clr", T0 + timedelta(hours=1), [counters("c-1")], cleared=["inc-1"]))
    assert (await r.get("/issues")).json()["issues"] == []
    issue = (await r.get("/issues?status=resolved")).json()["issues"][0]
    assert issue["resolution"] == "cleared"
    assert issue["ended_at"] == "2026-03-02T02:00:00Z"


async def test_fault_returning_after_operator_resolve_reopens_the_issue_and_says_so(
    running: Running,
) -> None:
    r = running
    await send(r, escalation("ro", "o-1", incident_id="first"))
    issue_id = (await r.get("/issues")).json()["issues"][0]["id"]
    resp = await r.api.post(
        f"/api/v1/issues/{issue_id}/resolve",
        headers=r.headers(OPERATOR),
        json={"action": "reboot", "worked": True, "note": "power cycled"},
    )
    assert resp.status_code == 200
    assert resp.json()["resolution"] == "operator"
    assert resp.json()["operator_actions"][-1] == {
        **resp.json()["operator_actions"][-1],
        "action": "reboot",
        "worked": True,
        "by": "olga",
    }
    await send(r, escalation("ro", "o-1", incident_id="second", started_at=T0 + timedelta(days=1)))
    issues = (await r.get("/issues")).json()["issues"]
    assert [i["id"] for i in issues] == [issue_id]
    assert issues[0]["reopened"] == 1
    assert "after an operator resolved it with reboot" in issues[0]["history"][-1]["detail"]
    assert "came back 1 time" in issues[0]["diagnosis"]


async def test_site_outage_is_one_site_issue_listing_its_chargers(running: Running) -> None:
    r = running
    await send(
        r,
        escalation(
            "site",
            None,
            scope="site",
            chargers=["a", "b", "c"],
            code="ConnectionLost",
            category="connectivity",
            kind="connectivity",
        ),
    )
    issue = (await r.get("/issues")).json()["issues"][0]
    assert issue["scope"] == "site" and issue["chargers"] == ["a", "b", "c"]
    assert issue["recommended_action"] == "network_fix"


async def test_api_rejects_missing_or_unknown_tokens_and_viewers_writing(running: Running) -> None:
    r = running
    await send(r, escalation("auth", "x-1"))
    issue_id = (await r.get("/issues")).json()["issues"][0]["id"]
    no_token = await r.api.get("/api/v1/issues")
    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == "unauthorized"
    assert (await r.get("/issues", token="wrong-token-000")).status_code == 401
    viewer_ack = await r.api.post(f"/api/v1/issues/{issue_id}/ack", headers=r.headers(VIEWER))
    assert viewer_ack.status_code == 403
    assert viewer_ack.json()["error"]["code"] == "forbidden"
    ack = await r.api.post(
        f"/api/v1/issues/{issue_id}/ack", headers=r.headers(OPERATOR), json={"note": "on it"}
    )
    assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
    missing = await r.get("/issues/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad_limit = await r.get("/issues?limit=501")
    assert bad_limit.status_code == 422 and "limit" in bad_limit.json()["error"]["message"]
    assert (await r.api.get("/api/v1/health")).status_code == 200
    spec = (await r.api.get("/api/v1/openapi.json")).json()
    assert "/api/v1/issues/{issue_id}/resolve" in spec["paths"]


async def test_values_the_database_cannot_take_are_a_422_and_its_absence_a_503(
    running: Running, fresh_db: str, postgres: Postgres
) -> None:
    r = running
    await send(r, escalation("nul", "n-1"))
    (issue,) = (await r.get("/issues")).json()["issues"]
    for resp in (
        await r.get("/issues/a%00b"),
        await r.get("/issues?site_id=%00"),
        await r.api.post(
            f"/api/v1/issues/{issue['id']}/ack",
            json={"note": "\u0000"},
            headers=r.headers(OPERATOR),
        ),
    ):
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "invalid_request"
    name = fresh_db.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            health = await r.api.get("/api/v1/health")
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert health.status_code == 503, health.text
    assert health.json()["error"]["code"] == "database_unavailable"
    assert (await r.api.get("/api/v1/health")).status_code == 200  # and back


async def test_ask_answers_from_the_data_and_lists_the_issues_it_used(running: Running) -> None:
    r = running
    await send(
        r,
        escalation("askme", "q-1", code="GroundFailure", category="hardware", safety_critical=True),
    )
    resp = await r.api.post(
        "/api/v1/ask", headers=r.headers(), json={"question": "What is broken right now?"}
    )
    body = resp.json()
    assert resp.status_code == 200
    assert "GroundFailure" in body["answer"] and len(body["issues"]) == 1
    site = (
        await r.api.post(
            "/api/v1/ask", headers=r.headers(), json={"question": "how is askme doing?"}
        )
    ).json()
    assert site["understood"] == "site id" and "askme" in site["answer"]
    unknown = (
        await r.api.post("/api/v1/ask", headers=r.headers(), json={"question": "sing me a song"})
    ).json()
    assert "did not understand" in unknown["answer"]


async def test_fleet_models_show_failure_rate_with_confidence_interval(running: Running) -> None:
    r = running
    await send(
        r, *usage_history("fl", ["f-1", "f-2"], T0 - WEEK, 7 * 24, model="AC22", firmware="3.1")
    )
    await send(
        r, escalation("fl", "f-1", model="AC22", firmware="3.1", started_at=T0 - timedelta(days=2))
    )
    body = (await r.get("/fleet/models")).json()
    (m,) = body["models"]
    assert m["model"] == "AC22" and m["units"] == 2 and m["failures"] == 1
    assert m["charger_days"] == pytest.approx(14.0)
    assert m["failure_rate_per_1000_charger_days"] == pytest.approx(1000 / 14, rel=1e-3)
    lo, hi = m["failure_rate_ci95"]
    assert lo < m["failure_rate_per_1000_charger_days"] < hi


async def test_messages_received_while_the_database_is_unreachable_are_stored_once_it_is_back(
    running: Running, fresh_db: str, postgres: Postgres
) -> None:
    r = running
    name = fresh_db.rsplit("/", 1)[1]
    before, handled = r.collector.stored_total, r.collector.handled_total
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        # the database goes away: its connections are cut and new ones are refused
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            esc = escalation("outage", "o-1")
            healthy = digest("outage", T0, [counters("o-2")])
            n = await asyncio.to_thread(r.publisher.send, esc, healthy)
            await asyncio.sleep(1.5)  # received, retried, not stored (nor acknowledged)
            assert r.collector.stored_total == before
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    # (the shared broker may also hand over retained messages of other tests' sites)
    await r.collector.wait_stored(handled + n, timeout=60)
    # and the broker's redelivery of the same messages stores nothing twice
    await send(r, esc, healthy)
    async with await psycopg.AsyncConnection.connect(fresh_db) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM messages WHERE message_id = ANY(%s)",
            ([esc.message_id, healthy.message_id],),
        )
        assert (await cur.fetchone()) == (2,)
        for table, rows in (("escalations", 1), ("digests", 1), ("issues", 1)):
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            assert (await cur.fetchone()) == (rows,), table
    metrics = (await r.api.get("/metrics")).text
    retried = re.search(r"^chargesight_ingest_db_errors_total (\S+)$", metrics, re.M)
    assert retried is not None and float(retried.group(1)) >= 1  # it did meet the outage


async def test_collector_on_mqtt_3_1_1_subscribes_plainly_and_ingests(
    database: Database, mosquitto: Mosquitto
) -> None:
    config = make_config(database.url, mosquitto.url)
    config = config.model_copy(
        update={"mqtt": config.mqtt.model_copy(update={"protocol": "3.1.1"})}
    )
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    try:
        assert not collector.source.protocol5
        n = await asyncio.to_thread(pub.send, escalation("old", "v3-1"))
        await collector.wait_stored(n)
        async with database.pool.connection() as conn:
            cur = await conn.execute("SELECT charge_point_id FROM issues")
            assert [r["charge_point_id"] for r in await cur.fetchall()] == ["v3-1"]
    finally:
        await asyncio.to_thread(pub.close)
        collector.stop()
        await asyncio.wait_for(task, 20)


async def test_chargesight_ask_prints_the_answer_and_the_issues_it_used(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    from chargesight.cloud.askcli import main as ask_main

    r = running
    await send(
        r, escalation("cli", "k-1", code="GroundFailure", category="hardware", safety_critical=True)
    )
    url = f"http://127.0.0.1:{r.collector.api_port}"
    assert await asyncio.to_thread(ask_main, "which issues are open?", url, VIEWER) == 0
    out = capsys.readouterr().out
    assert "k-1" in out and "issues used:" in out
    assert (
        await asyncio.to_thread(ask_main, "which issues are open?", url, "not-a-token-at-all") == 2
    )
    assert "unauthorized" in capsys.readouterr().err


async def test_fleet_view_reports_nevi_and_uk_availability_from_outages(running: Running) -> None:
    r = running
    await send(r, *usage_history("av", ["a-1", "a-2"], T0 - WEEK, 7 * 24, rated_power_w=150_000.0))
    await send(r, escalation("av", "a-1", started_at=T0 - timedelta(days=3), incident_id="x"))
    await send(r, digest("av", T0, [counters("a-1", rated_power_w=150_000.0)], cleared=["x"]))
    avail = (await r.get("/fleet/models")).json()["availability"]
    assert avail["charge_points"] == 2
    # a-1 was out 3 days + 1 h: NEVI (525,600 − 4,380) / 525,600 = 99.167 %; a-2 100 %
    assert avail["nevi_uptime_pct_mean"] == pytest.approx((99.167 + 100) / 2, abs=1e-3)
    assert avail["uk_rapid_reliability"]["charge_points"] == 2
    assert avail["uk_rapid_reliability"]["meets_99"] is True


async def test_messages_sent_while_the_collector_is_down_arrive_after_restart(
    database: Database, mosquitto: Mosquitto
) -> None:
    """With `[mqtt] client_id` the broker keeps the session and queues what the collector missed."""
    config = make_config(database.url, mosquitto.url)
    config = config.model_copy(
        update={
            "mqtt": config.mqtt.model_copy(update={"client_id": f"durable-{uuid.uuid4().hex[:8]}"})
        }
    )
    collector, task = await start_collector(config, database)
    collector.stop()
    await asyncio.wait_for(task, 20)
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    try:
        await asyncio.to_thread(pub.send, *[escalation("down", f"d-{i}") for i in range(3)])
        collector, task = await start_collector(config, database)
        try:
            await collector.wait_stored(3)
            async with database.pool.connection() as conn:
                cur = await conn.execute("SELECT charge_point_id FROM issues ORDER BY 1")
                assert [r["charge_point_id"] for r in await cur.fetchall()] == ["d-0", "d-1", "d-2"]
        finally:
            collector.stop()
            await asyncio.wait_for(task, 20)
    finally:
        await asyncio.to_thread(pub.close)


async def test_collector_reconnects_and_resubscribes_after_a_broker_restart(
    database: Database, mosquitto_private: Mosquitto
) -> None:
    config = make_config(database.url, mosquitto_private.url)
    collector, task = await start_collector(config, database)
    try:
        await asyncio.to_thread(mosquitto_private.restart)
        # publish until the collector is back: QoS 1 messages sent before it resubscribed are
        # not for it (clean session), so each attempt is a new escalation
        deadline = asyncio.get_running_loop().time() + 30
        sent = 0
        while collector.stored_total == 0:
            assert asyncio.get_running_loop().time() < deadline, "collector did not come back"
            pub = await asyncio.to_thread(Publisher, mosquitto_private.url)
            await asyncio.to_thread(pub.send, escalation("back", f"b-{sent}"))
            sent += 1
            await asyncio.to_thread(pub.close)
            with contextlib.suppress(TimeoutError):
                await collector.wait_until(lambda: collector.stored_total > 0, timeout=1)
        assert collector.stored_total >= 1
    finally:
        collector.stop()
        await asyncio.wait_for(task, 20)


async def test_fleet_view_names_the_model_whose_units_show_early_symptoms(
    running: Running,
) -> None:
    r = running
    dc = ["dg-dc-1", "dg-dc-2", "dg-dc-3"]
    ac = ["dg-ac-1", "dg-ac-2", "dg-ac-3"]
    await send(r, *usage_history("dg", dc, T0 - WEEK, 24, model="DC150", firmware="5.2.3"))
    await send(r, *usage_history("dg", ac, T0 - WEEK, 24, model="AC22", firmware="3.4.1"))
    await send(
        r,
        *(
            escalation(
                "dg",
                cp,
                kind="predictive",
                code="PredictedFailure",
                vendor_code=None,
                category="performance",
                model="DC150",
                firmware="5.2.3",
                attempts=(),
            )
            for cp in dc[:2]
        ),
    )
    r.collector.engine.fleet_dirty = True
    body = (await r.get("/fleet/models")).json()
    groups = {(g["model"], g["firmware"]): g for g in body["degradation"]["groups"]}
    assert groups[("DC150", "5.2.3")]["elevated"] == 2
    assert groups[("DC150", "5.2.3")]["faster_than_peers"] is True
    assert groups[("AC22", "3.4.1")]["faster_than_peers"] is False
    assert any("DC150" in e for e in body["degradation"]["faster_than_peers"])
