"""Revenue lost end to end: digests with occupancy through the collector into each issue's
estimate, and overlapping issues at one site sharing what they cost together."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from chargesight.cloud import revenue
from tests.cloud.conftest import Running
from tests.cloud.helpers import T0, counters, digest, escalation, usage_history

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]

H = timedelta(hours=1)
WEEK = timedelta(days=7)


async def send(r: Running, *msgs: object) -> None:
    before = r.collector.handled_total
    n = await asyncio.to_thread(r.publisher.send, *msgs)  # type: ignore[arg-type]
    await r.collector.wait_stored(before + n)


async def test_a_lone_charger_loses_every_driver_it_would_have_served(running: Running) -> None:
    r = running
    # two weeks: 2 sessions an hour of 20 kWh, each keeping the one connector 15 minutes
    await send(
        r,
        *usage_history("solo", ["s-1"], T0 - 2 * WEEK, 14 * 24, connectors=1, occupied_s=1800.0),
    )
    await send(r, escalation("solo", "s-1", started_at=T0 + 10 * H))
    await send(r, *usage_history("solo", ["s-1"], T0 + 10 * H, 3, sessions=0, connectors=1))
    (issue,) = (await r.get("/issues")).json()["issues"]
    # 3 hours × 2 sessions × 20 kWh × 0.5 EUR: no other connector to go to
    assert issue["revenue_lost"]["amount"] == pytest.approx(60.0)
    assert "as measured" in issue["revenue_lost"]["method"]


async def test_an_escalated_fault_that_stopped_a_charge_adds_what_that_driver_still_wanted(
    running: Running,
) -> None:
    r = running
    await send(
        r,
        *usage_history("cut", ["c-1"], T0 - 2 * WEEK, 14 * 24, connectors=1, occupied_s=1800.0),
    )
    esc = escalation("cut", "c-1", started_at=T0 + 10 * H).model_copy(
        update={"sessions_cut": 1, "energy_unmet_wh": 30_000.0}
    )
    await send(r, esc)
    await send(r, *usage_history("cut", ["c-1"], T0 + 10 * H, 3, sessions=0, connectors=1))
    (issue,) = (await r.get("/issues")).json()["issues"]
    assert issue["outages"][0]["sessions_cut"] == 1
    assert issue["outages"][0]["energy_unmet_wh"] == 30_000.0
    # 3 hours × 2 sessions × 20 kWh, plus the 30 kWh the cut session missed, × 0.5 EUR
    assert issue["revenue_lost"]["amount"] == pytest.approx(60.0 + 15.0)
    assert "as the edge saw: 30.0 kWh" in issue["revenue_lost"]["method"]


async def test_overlapping_outages_at_one_site_share_the_drivers_they_turn_away(
    running: Running,
) -> None:
    r = running
    units = ["u1", "u2", "u3", "u4"]
    occ = 0.8 * 3600  # one session an hour per unit, 0.8 h each: a busy little site
    await send(r, *usage_history("hub", units, T0 - 2 * WEEK, 14 * 24 + 10, sessions=1,
                                 connectors=1, occupied_s=occ))  # fmt: skip
    await send(
        r,
        escalation("hub", "u1", started_at=T0 + 10 * H),
        escalation("hub", "u2", started_at=T0 + 11 * H, code="GroundFailure", category="safety"),
    )
    outage_hours = [
        digest(
            "hub",
            T0 + h * H,
            [
                counters(cp, sessions_started=0, connectors=1)
                if cp == "u1" or (cp == "u2" and h >= 11)
                else counters(
                    cp, sessions_started=1, energy_wh=20_000.0, connectors=1, occupied_s=occ
                )
                for cp in units
            ],
        )
        for h in range(10, 14)
    ]
    await send(r, *outage_hours)
    issues = {i["charge_point_id"]: i for i in (await r.get("/issues")).json()["issues"]}
    assert set(issues) == {"u1", "u2"}

    # the same figures through the pure model
    rows = [
        revenue.IntervalUsage(cp, T0 + h * H, T0 + (h + 1) * H, 1, 20_000.0, 1, 0, None, occ)
        for h in range(-14 * 24, 10)
        for cp in units
    ] + [
        revenue.IntervalUsage(cp, T0 + h * H, T0 + (h + 1) * H, 0, 0.0, 1)
        if cp == "u1" or (cp == "u2" and h >= 11)
        else revenue.IntervalUsage(cp, T0 + h * H, T0 + (h + 1) * H, 1, 20_000.0, 1, 0, None, occ)
        for h in range(10, 14)
        for cp in units
    ]
    end = T0 + 14 * H
    one = revenue.Outage([revenue.Span(T0 + 10 * H, end)], {"u1": 0})
    two = revenue.Outage([revenue.Span(T0 + 11 * H, end)], {"u2": 0})
    want = revenue.estimate_revenue_lost([], [], rows, 0.5, "EUR", own=[one], overlapping=[two])
    got = issues["u1"]["revenue_lost"]
    assert got["amount"] == pytest.approx(round(want.amount, 2), abs=0.011)
    assert "Shapley" in got["method"] and "as measured" in got["method"]
    both = revenue.estimate_revenue_lost([], [], rows, 0.5, "EUR", own=[one, two])
    total = issues["u1"]["revenue_lost"]["amount"] + issues["u2"]["revenue_lost"]["amount"]
    assert total == pytest.approx(both.amount, abs=0.03)  # together they cost what both cost
