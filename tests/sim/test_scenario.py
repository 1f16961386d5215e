"""Scenario files: the bundled ones load, bad ones are rejected with line and field."""

from __future__ import annotations

import pytest

from chargesight.sim.scenario import ScenarioError, load_scenario, parse_scenario

GOOD_SITE = """
[[sites]]
id = "a"
name = "A"
currency = "EUR"
price_per_kwh = 0.5

  [[sites.chargers]]
  model = "ampero-ac22"
"""


def test_small_scenario_is_three_sites_with_every_fault_kind() -> None:
    sc = load_scenario("small")
    net = sc.network()
    assert len(net.sites) == 3
    assert "berlin-mitte-01" in net.by_id
    kinds = {f.kind for f in sc.data.faults}
    assert kinds == {
        "connector_lock",
        "ground_failure",
        "psu_degradation",
        "firmware_bug",
        "flaky_connectivity",
        "start_failure",
    }


def test_demo_scenario_is_fifty_sites_and_five_hundred_chargers() -> None:
    net = load_scenario("demo").network()
    assert (len(net.sites), len(net.chargers)) == (50, 500)
    assert len({c.id for c in net.chargers}) == 500
    assert {c.ocpp for c in net.chargers} == {"1.6", "2.0.1"}


def test_unknown_model_is_rejected_naming_line_and_field() -> None:
    text = '[network]\nname = "x"\n' + GOOD_SITE.replace("ampero-ac22", "voltix-dc99")
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="bad.toml")
    msg = str(err.value)
    assert msg.startswith("bad.toml:11: sites[0].chargers[0].model:"), msg
    assert "unknown model 'voltix-dc99'" in msg


def test_negative_rate_is_rejected_naming_line_and_field() -> None:
    text = '[network]\nname = "x"\n\n[drivers]\nsessions_per_connector_day = -2\n' + GOOD_SITE
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="bad.toml")
    msg = str(err.value)
    assert msg.startswith("bad.toml:5: drivers.sessions_per_connector_day:"), msg
    assert "greater than or equal to 0" in msg


def test_missing_field_is_rejected_naming_table_and_field() -> None:
    text = '[network]\nname = "x"\n' + GOOD_SITE.replace("price_per_kwh = 0.5\n", "")
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="bad.toml")
    msg = str(err.value)
    assert msg.startswith("bad.toml:4: sites[0].price_per_kwh:"), msg
    assert "required" in msg


def test_fault_on_unknown_charge_point_is_rejected() -> None:
    text = (
        '[network]\nname = "x"\n'
        + GOOD_SITE
        + '\n[[faults]]\nkind = "connector_lock"\ncharge_point = "zz-01"\n'
    )
    with pytest.raises(ScenarioError, match=r"bad.toml:15: faults\[0\].charge_point: unknown"):
        parse_scenario(text, source="bad.toml")


def test_unknown_key_is_an_error_not_ignored() -> None:
    text = '[network]\nname = "x"\nspeed = 3\n' + GOOD_SITE
    with pytest.raises(ScenarioError, match=r"bad.toml:3: network.speed: unknown field"):
        parse_scenario(text, source="bad.toml")


def test_scenario_may_define_its_own_model() -> None:
    text = (
        '[network]\nname = "x"\n[models.mini-dc]\nvendor = "V"\nmodel = "M"\nfirmware = "1.0"\n'
        'rated_power_w = 30000\nconnectors = ["CCS2"]\nconnector_power_w = 30000\ndc = true\n'
        + GOOD_SITE.replace("ampero-ac22", "mini-dc")
    )
    cp = parse_scenario(text).network().by_id["a-01"]
    assert (cp.hw.vendor, cp.connector_count, cp.hw.dc) == ("V", 1, True)
