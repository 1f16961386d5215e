"""``change_configuration``'s own rules, against a scripted charger (the real path, through the
proxy to ``ocpp``-library chargers over MQTT, is in test_recovery_integration.py)."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

from chargesight.edge.chargerconfig import ConfigurationRefused, change_configuration
from chargesight.edge.errors import CallTimeout
from tests.edge.fake_charger import FakeCharger, Handler


def charger(version: str, **answers: Handler) -> FakeCharger:
    return FakeCharger(versions={"CP-1": version}, handlers=answers)


def answer(payload: dict[str, Any]) -> Handler:
    return lambda cp, request: payload


def silent(cp: str, request: dict[str, Any]) -> NoReturn:
    raise CallTimeout("no answer", charge_point_id=cp)


HB = {"charge_point_id": "CP-1", "key": "HeartbeatInterval", "value": 600}


async def test_a_change_the_charger_never_answers_says_it_may_have_been_applied() -> None:
    cp = charger(
        "1.6",
        GetConfiguration=answer(
            {"configurationKey": [{"key": "HeartbeatInterval", "value": "60"}]}
        ),
        ChangeConfiguration=silent,
    )
    with pytest.raises(ConfigurationRefused, match="may or may not have applied it") as exc:
        await change_configuration(cp, HB)
    assert exc.value.result["status"] == "NoAnswer"
    assert exc.value.result["previous"] == "60"
    # the read is short: the change goes ahead without it inside the request's 30 s
    assert cp.timeouts == [5.0, 20.0]


async def test_an_unreadable_setting_is_still_changed_and_a_new_heartbeat_is_handed_on() -> None:
    cp = charger("1.6", GetConfiguration=silent)  # the change: Accepted
    told: list[tuple[str, int]] = []
    result = await change_configuration(cp, HB, heartbeat_changed=lambda c, s: told.append((c, s)))
    assert result["previous"] is None and result["status"] == "Accepted"
    assert told == [("CP-1", 600)]
    refused = charger(
        "1.6", GetConfiguration=answer({}), ChangeConfiguration=answer({"status": "Rejected"})
    )
    with pytest.raises(ConfigurationRefused):
        await change_configuration(refused, HB, heartbeat_changed=lambda c, s: told.append((c, s)))
    assert told == [("CP-1", 600)]  # not on a refusal


@pytest.mark.parametrize(
    ("version", "params", "error"),
    [
        ("1.6", {**HB, "value": "9" * 501}, "params.value is 501 characters; OCPP 1.6 allows 500"),
        ("2.0.1", {**HB, "component": "OCPPCommCtrlr", "value": "x" * 1001}, "OCPP 2.0.1 allows 1000"),
        ("1.6", {**HB, "key": "K" * 51}, "params.key is 51 characters"),
        ("2.0.1", HB, "params.component is required"),
        ("1.6", {**HB, "value": None}, "must be a string, a number or a boolean"),
    ],
)  # fmt: skip
async def test_a_change_ocpp_would_refuse_is_not_sent(
    version: str, params: dict[str, Any], error: str
) -> None:
    cp = charger(version)
    with pytest.raises(ValueError, match=error):
        await change_configuration(cp, params)
    assert cp.sent == []


async def test_a_component_variable_entry_allows_that_component_only() -> None:
    def ok() -> FakeCharger:
        return charger(
            "2.0.1",
            GetVariables=answer({"getVariableResult": []}),
            SetVariables=answer({"setVariableResult": [{"attributeStatus": "Accepted"}]}),
        )

    allowed = ["OCPPCommCtrlr.MessageTimeout"]
    params = {**HB, "key": "MessageTimeout", "value": 30}
    got = await change_configuration(ok(), {**params, "component": "OCPPCommCtrlr"}, allowed)
    assert got["status"] == "Accepted"
    other = ok()
    with pytest.raises(ValueError, match="configuration_keys"):
        await change_configuration(other, {**params, "component": "SampledDataCtrlr"}, allowed)
    assert other.sent == []
