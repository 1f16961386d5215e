"""The history generator writes what the edge would have sent, and the truth behind it."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from chargesight.common.messages import Digest, Escalation
from chargesight.sim.cli import main as sim_main
from chargesight.sim.history import generate_history
from chargesight.sim.scenario import load_scenario

START = datetime(2026, 9, 1, tzinfo=UTC)  # small.toml's start
DAYS = 30


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("history")
    generate_history(load_scenario("small"), DAYS, out)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def digests(history: Path) -> list[Digest]:
    return [
        Digest.model_validate_json(line)
        for line in (history / "digests.jsonl").read_bytes().splitlines()
    ]


@pytest.fixture(scope="module")
def truth(history: Path) -> list[dict[str, Any]]:
    return _lines(history / "ground_truth.jsonl")


def _counters(digests: list[Digest], cp_id: str) -> list[tuple[datetime, Any]]:
    return [
        (d.interval_start, c) for d in digests for c in d.chargers if c.charge_point_id == cp_id
    ]


def test_history_writes_one_schema_valid_digest_per_site_per_hour(digests: list[Digest]) -> None:
    assert len(digests) == 3 * 24 * DAYS
    per_site = defaultdict(list)
    for d in digests:
        per_site[d.site_id].append(d.interval_start)
        assert d.interval_end - d.interval_start == timedelta(hours=1)
        assert d.currency == "EUR" and d.price_per_kwh
    assert per_site["berlin-mitte"][0] == START
    assert len(set(per_site["berlin-mitte"])) == 24 * DAYS
    assert len({d.message_id for d in digests}) == len(digests)
    sessions = sum(c.sessions_started for d in digests for c in d.chargers)
    assert sessions > 1000
    assert all(c.rated_power_w for d in digests for c in d.chargers)


def test_network_file_lists_sites_with_tariff_and_chargers_with_hardware(history: Path) -> None:
    net = orjson.loads((history / "network.json").read_bytes())
    site = next(s for s in net["sites"] if s["id"] == "berlin-mitte")
    assert (site["currency"], site["price_per_kwh"]) == ("EUR", 0.59)
    cp = next(c for c in site["chargers"] if c["charge_point_id"] == "berlin-mitte-03")
    assert (cp["vendor"], cp["model"], cp["firmware"], cp["rated_power_w"]) == (
        "Voltix",
        "VX-DC150",
        "5.2.3",
        150000,
    )
    assert [c["type"] for c in cp["connectors"]] == ["CCS2", "CCS2"]


def test_unresolvable_faults_are_escalated_and_self_resolving_ones_are_not(history: Path) -> None:
    escs = [
        Escalation.model_validate_json(line)
        for line in (history / "escalations.jsonl").read_bytes().splitlines()
    ]
    by_code = {(e.charge_point_id, e.fault.code) for e in escs}
    assert ("berlin-mitte-01", "ConnectorLockFailure") in by_code
    assert ("leipzig-mall-02", "GroundFailure") in by_code
    assert ("hamburg-hafen-03", "SessionStartFailures") in by_code
    psu = {cp for cp, code in by_code if code == "PowerSwitchFailure"}
    assert psu == {"berlin-mitte-03", "hamburg-hafen-01", "hamburg-hafen-02"}
    assert not {code for _, code in by_code} & {"InternalError", "OtherError"}
    lock = next(e for e in escs if e.fault.code == "ConnectorLockFailure")
    assert (lock.scope, lock.connector_id, lock.fault.vendor_code) == ("connector", 2, "CX001")
    assert [a.action for a in lock.recovery_attempts][-1] == "hard_reset"
    ground = next(e for e in escs if e.fault.code == "GroundFailure")
    assert ground.fault.safety_critical and ground.recovery_attempts == []
    assert ground.sent_at - ground.started_at < timedelta(seconds=30)


def test_ground_truth_names_scope_fix_and_revenue_for_every_fault(
    truth: list[dict[str, Any]],
) -> None:
    expected = {
        "connector_lock": ("connector", "field_technician"),
        "ground_failure": ("connector", "field_technician"),
        "psu_degradation": ("charge_point", "component_replacement"),
        "firmware_bug": ("charge_point", "firmware_update"),
        "flaky_connectivity": ("site", "network_fix"),
        "start_failure": ("charge_point", "field_technician"),
        "transient": ("charge_point", "reboot"),
        "stuck": ("charge_point", "reboot"),
    }
    seen = set()
    for rec in truth:
        assert (rec["scope"], rec["fix"]) == expected[rec["kind"]], rec["fault_id"]
        assert rec["revenue_lost"]["currency"] == "EUR"
        seen.add(rec["kind"])
    assert seen >= set(expected) - {"stuck"}
    lock = next(r for r in truth if r["kind"] == "connector_lock")
    assert lock["connector_id"] == 2 and lock["ended_at"] == "2026-09-06T06:00:00Z"
    prices = {"berlin-mitte": 0.59, "hamburg-hafen": 0.62, "leipzig-mall": 0.55}
    for rec in truth:  # revenue = energy the drivers could not get x the site's price
        expected_amount = round(rec["energy_lost_wh"] / 1000 * prices[rec["site_id"]], 2)
        assert rec["revenue_lost"]["amount"] == pytest.approx(expected_amount, abs=0.011)
    start_fail = next(r for r in truth if r["kind"] == "start_failure")
    assert start_fail["sessions_lost"] > 0 and start_fail["revenue_lost"]["amount"] > 0
    flaky = next(r for r in truth if r["kind"] == "flaky_connectivity")
    assert flaky["charge_point_id"] is None
    assert flaky["charge_points"] == ["leipzig-mall-01", "leipzig-mall-02"]
    psu = [r for r in truth if r["kind"] == "psu_degradation"]
    assert {r["related_group"] for r in psu} == {"psu_degradation:voltix-dc150"}
    assert all(r["first_symptom_at"] < r["failed_at"] for r in psu)


def test_psu_degradation_shows_power_sag_and_heat_weeks_before_failure(
    digests: list[Digest],
) -> None:
    def week_stats(cp_id: str, week: int) -> tuple[float, float]:
        lo, hi = START + timedelta(days=7 * week), START + timedelta(days=7 * week + 7)
        rows = [c for t, c in _counters(digests, cp_id) if lo <= t < hi and c.max_power_w]
        return (
            max(c.max_power_w or 0 for c in rows),
            sum(c.mean_temperature_c or 0 for c in rows) / len(rows),
        )

    healthy_p0, _ = week_stats("berlin-mitte-04", 0)
    for cp in ("berlin-mitte-03", "hamburg-hafen-01", "hamburg-hafen-02"):
        p0, t0 = week_stats(cp, 0)
        p2, t2 = week_stats(cp, 2)
        assert p2 < 0.85 * p0, cp  # delivered power sags below rated
        assert t2 > t0 + 5, cp  # the PSU runs hotter
    healthy_p2, _ = week_stats("berlin-mitte-04", 2)
    assert healthy_p2 > 0.9 * healthy_p0
    trips = sum(
        c.faults_by_category.get("contactor", 0) + c.faults_by_category.get("overcurrent", 0)
        for _, c in _counters(digests, "hamburg-hafen-01")
    )
    assert trips >= 2  # occasional PowerSwitchFailure / OverCurrentFailure before the end


def test_firmware_bug_recurs_until_the_update_then_stops(
    digests: list[Digest], truth: list[dict[str, Any]]
) -> None:
    fixed_at = START + timedelta(hours=612)
    bug = [r for r in truth if r["kind"] == "firmware_bug"]
    assert {r["charge_point_id"] for r in bug} == {
        "berlin-mitte-03",
        "berlin-mitte-04",
        "hamburg-hafen-01",
        "hamburg-hafen-02",
    }
    incidents = {i for r in bug for i in r["incident_ids"]}
    episodes_before = episodes_after = 0
    for d in digests:
        for sr in d.self_resolved:
            if sr.incident_id in incidents:
                assert sr.fault_code == "InternalError"
                assert sr.fixed_by == "hard_reset"
                if sr.started_at < fixed_at:
                    episodes_before += 1
                else:
                    episodes_after += 1
    assert episodes_before >= 8 and episodes_after == 0
    firmware = {c.firmware for t, c in _counters(digests, "berlin-mitte-03") if t > fixed_at}
    assert firmware == {"5.2.4"}


def test_flaky_site_disconnects_every_charge_point_and_costs_sessions(
    digests: list[Digest],
) -> None:
    def disconnects(site: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for d in digests:
            if d.site_id == site:
                for c in d.chargers:
                    out[c.charge_point_id] += c.disconnects
        return out

    flaky = disconnects("leipzig-mall")
    assert all(n >= 100 for n in flaky.values()), flaky
    assert all(n < 30 for n in disconnects("berlin-mitte").values())
    offline = [c.connected_s for d in digests if d.site_id == "leipzig-mall" for c in d.chargers]
    assert min(offline) < 3600


def test_charger_that_fails_every_start_still_looks_online(digests: list[Digest]) -> None:
    after = [
        c for t, c in _counters(digests, "hamburg-hafen-03") if t >= START + timedelta(hours=101)
    ]
    assert sum(c.sessions_failed for c in after) > 10
    assert sum(c.sessions_started for c in after) == 0
    assert sum(c.faults for c in after) == 0  # nothing says Faulted
    assert sum(c.connected_s for c in after) > 0.95 * 3600 * len(after)


def test_repaired_escalated_fault_is_reported_cleared_in_a_later_digest(
    history: Path, digests: list[Digest]
) -> None:
    lock = next(
        e
        for e in _lines(history / "escalations.jsonl")
        if e["fault"]["code"] == "ConnectorLockFailure"
    )
    cleared = [d for d in digests if lock["incident_id"] in d.cleared_incidents]
    assert len(cleared) == 1
    assert cleared[0].interval_start == START + timedelta(hours=126)


def test_history_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    sc = load_scenario("small")
    generate_history(sc, 2, tmp_path / "a", seed=3)
    generate_history(sc, 2, tmp_path / "b", seed=3)
    generate_history(sc, 2, tmp_path / "c", seed=4)
    for name in ("digests.jsonl", "ground_truth.jsonl", "escalations.jsonl", "network.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "digests.jsonl").read_bytes() != (
        tmp_path / "c" / "digests.jsonl"
    ).read_bytes()


def test_cli_history_writes_the_four_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = sim_main(["history", "--scenario", "small", "--days", "1", "--out", str(tmp_path)])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digests.jsonl",
        "escalations.jsonl",
        "ground_truth.jsonl",
        "network.json",
    ]
    assert "3 sites, 9 charge points" in capsys.readouterr().out


def test_cli_rejects_a_bad_scenario_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nname = "x"\n[[sites]]\nid = "a"\n')
    assert sim_main(["check", "--scenario", str(bad)]) == 2
    assert "bad.toml:3: sites[0].name: field is required" in capsys.readouterr().err
