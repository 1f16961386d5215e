"""One charge point's fault that a reset clears every time, coming back: an issue of its own.

End to end through real Mosquitto and PostgreSQL (the ``running`` collector), plus the
pure rule in ``cloud/recurring.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from chargesight.cloud import recurring
from chargesight.common.messages import SelfResolved
from tests.cloud.conftest import Running
from tests.cloud.helpers import T0, counters, digest, escalation, usage_history

H = timedelta(hours=1)
DAY = timedelta(days=1)
HPC = {"vendor": "Helion", "model": "HPC-300"}


def episode(
    cp: str,
    at: datetime,
    code: str = "InternalError",
    vendor_code: str = "FW-0x3E7",
    category: str = "internal",
    fixed_by: str = "hard_reset",
    sessions_cut: int | None = None,
    energy_unmet_wh: float | None = None,
) -> SelfResolved:
    return SelfResolved(
        incident_id=uuid.uuid4().hex[:16],
        charge_point_id=cp,
        connector_id=None,
        scope="charge_point",
        kind="fault",
        fault_code=code,
        vendor_code=vendor_code,
        category=category,
        started_at=at,
        ended_at=at + timedelta(minutes=4),
        fixed_by=fixed_by,
        sessions_cut=sessions_cut,
        energy_unmet_wh=energy_unmet_wh,
    )


async def send(r: Running, *msgs: object) -> None:
    before = r.collector.handled_total
    n = await asyncio.to_thread(r.publisher.send, *msgs)  # type: ignore[arg-type]
    await r.collector.wait_stored(before + n)


def day_of_digests(
    site: str, fleet: dict[str, str], start: datetime, eps: dict[int, list[SelfResolved]]
) -> list[object]:
    """24 hourly digests for ``fleet`` (charge point → firmware); ``eps`` by hour."""
    out: list[object] = []
    for h in range(24):
        blips = eps.get(h, [])
        out.append(
            digest(
                site,
                start + h * H,
                [
                    counters(
                        cp,
                        sessions_started=1,
                        energy_wh=20_000,
                        firmware=fw,
                        faults=sum(1 for b in blips if b.charge_point_id == cp),
                        self_resolved=sum(1 for b in blips if b.charge_point_id == cp),
                        **HPC,
                    )
                    for cp, fw in fleet.items()
                ],
                self_resolved=blips,
            )
        )
    return out


async def test_firmware_fault_a_reset_clears_every_time_on_four_units_becomes_firmware_update_issues(
    running: Running,
) -> None:
    r = running
    airport = {"ap-1": "1.9.7", "ap-2": "1.9.7", "ap-3": "2.0.1"}
    mall = {"ml-1": "1.9.7", "ml-2": "1.9.7", "ml-3": "2.0.1", "ml-4": "1.9.7"}
    for site, fleet in (("airport", airport), ("mall", mall)):
        for fw in set(fleet.values()):
            cps = [c for c, f in fleet.items() if f == fw]
            await send(
                r, *usage_history(site, cps, T0 - 7 * DAY, 7 * 24, sessions=1, firmware=fw, **HPC)
            )
    buggy = ["ap-1", "ap-2", "ml-1", "ml-2"]
    # five days: each 1.9.7 unit has the fault on days 0, 1, 3 and 4; a 2.0.1 unit once (noise)
    for d in range(5):
        for site, fleet in (("airport", airport), ("mall", mall)):
            eps: dict[int, list[SelfResolved]] = {}
            if d != 2:
                for i, cp in enumerate(c for c in buggy if c in fleet):
                    eps.setdefault(8 + i, []).append(
                        episode(cp, T0 + d * DAY + (8 + i) * H + 10 * timedelta(minutes=1))
                    )
            if d in (3, 4) and site == "mall":  # twice only, but like its four peers
                eps.setdefault(20, []).append(episode("ml-4", T0 + d * DAY + 20 * H))
            if d == 1 and site == "mall":
                eps.setdefault(3, []).append(
                    episode("ml-3", T0 + d * DAY + 3 * H + timedelta(minutes=5))
                )
            await send(r, *day_of_digests(site, fleet, T0 + d * DAY, eps))

    issues = (await r.get("/issues")).json()["issues"]
    # ml-4 twice only, next to four units with the same repeats; not ml-3: once is noise
    assert sorted(i["charge_point_id"] for i in issues) == [*buggy, "ml-4"]
    late = next(i for i in issues if i["charge_point_id"] == "ml-4")
    assert late["recommended_action"] == "firmware_update"
    assert late["repeats"]["episodes"] == 2 and late["repeats"]["units_same_fault"] == 4
    assert {x["charge_point_id"] for x in late["related"]} == set(buggy)
    for issue in (i for i in issues if i is not late):
        assert issue["kind"] == "repeat" and issue["scope"] == "charge_point"
        assert issue["fault"]["vendor_code"] == "FW-0x3E7"
        assert issue["recommended_action"] == "firmware_update", issue["diagnosis"]
        assert "4 times" in issue["diagnosis"] and "1.9.7" in issue["diagnosis"]
        assert issue["repeats"]["episodes"] == 4
        assert issue["repeats"]["fixed_by"] == {"hard_reset": 4}
        assert issue["repeats"]["units_same_fault"] == 3
        # every other 1.9.7 unit with the fault (ml-4 twice), not ml-3 (once, on 2.0.1)
        others = {x["charge_point_id"] for x in issue["related"] if x["basis"] == "signature"}
        assert others == {*buggy, "ml-4"} - {issue["charge_point_id"]}
        # each episode was a few minutes out of service while a driver an hour arrived
        assert len(issue["outages"]) == 4
        assert issue["revenue_lost"]["amount"] > 0
        assert issue["status"] == "open" and issue["ended_at"] is None

    # the next day ap-1 reports the fixed firmware and the fault does not come back: its issue
    # clears at once, saying why; the others stay open
    airport["ap-1"] = "1.9.8"
    await send(r, *day_of_digests("airport", airport, T0 + 5 * DAY, {}))
    issues = {i["charge_point_id"]: i for i in (await r.get("/issues?status=all")).json()["issues"]}
    assert issues["ap-1"]["status"] == "resolved" and issues["ap-1"]["resolution"] == "cleared"
    assert "firmware updated from 1.9.7 to 1.9.8" in issues["ap-1"]["history"][-1]["detail"]
    assert all(issues[cp]["status"] == "open" for cp in ("ap-2", "ml-1", "ml-2", "ml-4"))

    # two whole quiet weeks later the repeats have stopped: each issue clears by itself
    for site, fleet in (("airport", airport), ("mall", mall)):
        for fw in set(fleet.values()):
            cps = [c for c, f in fleet.items() if f == fw]
            await send(
                r, *usage_history(site, cps, T0 + 6 * DAY, 15 * 24, sessions=1, firmware=fw, **HPC)
            )
    issues = (await r.get("/issues?status=all")).json()["issues"]
    assert sorted(i["charge_point_id"] for i in issues) == [*buggy, "ml-4"]
    assert all(i["status"] == "resolved" and i["resolution"] == "cleared" for i in issues)


async def test_one_unit_needing_resets_for_the_same_fault_gets_a_field_technician(
    running: Running,
) -> None:
    r = running
    fleet = {"cafe-1": "3.4.1", "cafe-2": "3.4.1"}
    await send(
        r,
        *usage_history(
            "cafe", list(fleet), T0 - 7 * DAY, 7 * 24, sessions=1, firmware="3.4.1", **HPC
        ),
    )
    eps = {
        h: [
            episode(
                "cafe-1",
                T0 + h * H,
                code="OtherError",
                vendor_code="E-STATE-HANG",
                category="other",
                fixed_by="soft_reset",
                # the edge saw the first two cut a session short, 12 kWh from a full charge
                sessions_cut=1 if h < 10 else 0,
                energy_unmet_wh=12_000.0 if h < 10 else 0.0,
            )
        ]
        for h in (2, 9, 17, 22)
    }
    await send(r, *day_of_digests("cafe", fleet, T0, eps))
    issues = (await r.get("/issues")).json()["issues"]
    assert len(issues) == 1
    issue = issues[0]
    assert issue["charge_point_id"] == "cafe-1" and issue["kind"] == "repeat"
    assert issue["recommended_action"] == "field_technician", issue["diagnosis"]
    assert issue["repeats"]["units_same_fault"] == 0
    assert [x for x in issue["related"] if x["basis"] == "signature"] == []
    method = issue["revenue_lost"]["method"]
    assert "2 session(s) the outage cut short as it began, as the edge saw: 24.0 kWh" in method
    assert issue["revenue_lost"]["amount"] >= 24.0 * 0.5


async def test_psu_trips_repeating_until_it_fails_are_one_problem_with_the_failure(
    running: Running,
) -> None:
    r = running
    fleet = {"dc-1": "5.2.3", "dc-2": "5.2.3"}
    await send(
        r,
        *usage_history(
            "hub", list(fleet), T0 - 7 * DAY, 7 * 24, sessions=1, firmware="5.2.3", **HPC
        ),
    )
    trips = {
        h: [
            episode(
                "dc-1",
                T0 + h * H,
                code="OverCurrentFailure",
                vendor_code=None,
                category="overcurrent",
                fixed_by="soft_reset",
            )
        ]
        for h in (3, 9, 15, 21)
    }
    await send(r, *day_of_digests("hub", fleet, T0, trips))
    (early,) = (await r.get("/issues")).json()["issues"]
    assert early["kind"] == "repeat" and early["charge_point_id"] == "dc-1"
    assert early["recommended_action"] == "component_replacement", early["diagnosis"]
    # the next day the PSU fails for good: its failure issue takes over
    failed_at = T0 + DAY + 2 * H
    await send(
        r,
        escalation(
            "hub",
            "dc-1",
            code="PowerSwitchFailure",
            vendor_code="VX-PSU-031",
            category="contactor",
            component="psu_module",
            started_at=failed_at,
            **HPC,
        ),
        *day_of_digests("hub", fleet, T0 + DAY, {}),
    )
    issues = {i["kind"]: i for i in (await r.get("/issues?status=all")).json()["issues"]}
    assert issues["fault"]["status"] == "open"
    trips_issue = issues["repeat"]
    assert trips_issue["status"] == "resolved"
    assert trips_issue["history"][-1]["event"] == "superseded"
    assert issues["fault"]["id"] in trips_issue["history"][-1]["detail"]
    assert [i["id"] for i in (await r.get("/issues")).json()["issues"]] == [issues["fault"]["id"]]


def test_repeats_are_grouped_by_charge_point_and_fault_and_leave_disconnects_out() -> None:
    def ep(
        cp: str, at: datetime, code: str = "InternalError", cat: str = "internal"
    ) -> recurring.Episode:
        return recurring.Episode(cp, uuid.uuid4().hex, code, None, cat, at, at + H, "soft_reset")

    end = T0 + 7 * DAY
    eps = [ep("a", T0 + i * DAY) for i in (1, 2, 3)] + [ep("a", T0 + 2 * DAY, code="OtherError")]
    eps += [ep("b", T0 + i * DAY, code="ConnectionLost", cat="connectivity") for i in (1, 2, 3)]
    eps.append(ep("a", T0 - DAY))  # before the window
    found = recurring.find_repeats(eps, end, 7 * 86400)
    assert [(f.charge_point_id, f.fault_code, f.count) for f in found] == [
        ("a", "InternalError", 3),
        ("a", "OtherError", 1),
    ]


@pytest.mark.parametrize(
    ("count", "open_now", "expected"),
    [
        (4, False, "open"),
        (3, False, "none"),
        (1, True, "open"),
        (0, True, "clear"),
        (0, False, "none"),
    ],
)
def test_a_repeat_issue_opens_at_the_threshold_and_clears_after_a_whole_quiet_window(
    count: int, open_now: bool, expected: str
) -> None:
    assert recurring.repeat_decision(count, 4, open_now) == expected
