"""Health scores in the API: 0–100, a band, and components in words (chargesight.common.health)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from chargesight.cloud.health import ChargerEvidence, charger_health
from chargesight.cloud.issues import open_issue_from
from chargesight.cloud.model import Issue, OperatorAction
from chargesight.common.messages import EdgeMessage
from tests.cloud.conftest import Running
from tests.cloud.helpers import T0, counters, digest, escalation


def _issue(**kw: object) -> Issue:
    return open_issue_from(escalation("s", "cp-1", **kw), "issue-1")  # type: ignore[arg-type]


def test_a_quiet_charger_is_healthy_and_says_so_in_words() -> None:
    h = charger_health(ChargerEvidence(now=T0, connectors=2, availability=1.0))
    assert h["score"] == 100.0 and h["band"] == "healthy"
    assert h["explanation"] and set(h["connectors"]) == {"1", "2"}


def test_an_unacknowledged_safety_fault_holds_the_score_down_until_an_operator_acknowledges() -> (
    None
):
    issue = _issue(code="GroundFailure", category="safety", safety_critical=True,
                   started_at=T0 - timedelta(days=20))  # fmt: skip
    issue = issue.model_copy(update={"status": "resolved", "resolution": "cleared"})
    held = charger_health(ChargerEvidence(now=T0, connectors=1, availability=1.0, issues=[issue]))
    assert held["score"] <= 25.0 and held["band"] == "critical"
    assert any("not yet acknowledged" in line for line in held["explanation"])
    acked = issue.model_copy(
        update={"operator_actions": [OperatorAction(at=T0, action="acknowledge")]}
    )
    ok = charger_health(ChargerEvidence(now=T0, connectors=1, availability=1.0, issues=[acked]))
    assert ok["score"] > 85.0


def test_a_connector_fault_marks_that_connector_and_the_charge_point_takes_the_worst() -> None:
    issue = _issue(connector=2, scope="connector", started_at=T0 - timedelta(hours=1))
    h = charger_health(ChargerEvidence(now=T0, connectors=2, availability=0.9, issues=[issue]))
    assert h["connectors"]["2"]["score"] < h["connectors"]["1"]["score"]
    assert h["score"] == h["connectors"]["2"]["score"]


def test_low_peak_power_against_the_models_fleet_median_costs_points_in_words() -> None:
    h = charger_health(
        ChargerEvidence(
            now=T0, connectors=1, peak_power_w=20_000, typical_peak_power_w=48_000, resets=14,
            covered_days=7.0, anomaly_score=0.5,
        )
    )  # fmt: skip
    names = {c["name"]: c for c in h["components"]}
    assert names["performance"]["penalty"] > 10
    assert "42% of what this model typically delivers" in names["performance"]["detail"]
    assert "2.0 resets per day" in names["resets"]["detail"]
    assert "early symptoms" in names["anomaly"]["detail"]
    assert h["band"] in ("at risk", "critical")


@pytest.mark.postgres
@pytest.mark.mqtt
async def test_charger_and_site_endpoints_show_the_health_score_band_and_reasons(
    running: Running,
) -> None:
    r = running
    msgs: list[EdgeMessage] = [
        digest(
            "hs",
            T0 + timedelta(hours=h),
            [
                counters("hs-1", sessions_started=1, energy_wh=20_000, max_power_w=48_000.0),
                counters("hs-2", sessions_started=1, energy_wh=20_000, max_power_w=47_000.0),
                counters(
                    "hs-3",
                    sessions_started=1,
                    energy_wh=9_000,
                    max_power_w=15_000.0,
                    anomaly_score=0.6,
                    health_score=40.0,
                    connector_health={1: 40.0, 2: 88.5},
                ),
            ],
        )
        for h in range(24)
    ]
    msgs.append(escalation("hs", "hs-2", started_at=T0 + timedelta(hours=20)))
    before = r.collector.handled_total
    n = await asyncio.to_thread(r.publisher.send, *msgs)
    await r.collector.wait_stored(before + n)

    ch = (await r.get("/chargers/hs-3")).json()
    assert 0 <= ch["health_score"] <= 100 and ch["health_band"] == ch["health"]["band"]
    assert ch["health"]["edge_score"] == 40.0
    assert ch["health"]["edge_connectors"] == {"1": 40.0, "2": 88.5}  # as the edge scored them
    details = " ".join(ch["health"]["explanation"])
    assert "typically delivers" in details and "Foresight risk 0.60" in details
    healthy = (await r.get("/chargers/hs-1")).json()
    assert healthy["health"]["band"] == "healthy"
    faulted = (await r.get("/chargers/hs-2")).json()
    assert faulted["health_score"] < healthy["health_score"]
    assert any("fault(s) on record" in line for line in faulted["health"]["explanation"])

    site = (await r.get("/sites/hs")).json()
    by_cp = {c["charge_point_id"]: c["health"] for c in site["chargers"]}
    assert by_cp["hs-3"]["score"] == ch["health_score"]
    assert site["health"]["min_score"] == min(h["score"] for h in by_cp.values())
    assert site["health"]["worst"][0]["charge_point_id"] in ("hs-2", "hs-3")
    assert "hs-1" not in [w["charge_point_id"] for w in site["health"]["worst"]]
