"""The fault taxonomy: categories, safety-critical and non-resettable faults, raw fields kept."""

from __future__ import annotations

import pytest

from chargesight.common import taxonomy
from chargesight.common.taxonomy import VendorCode, classify, is_resettable


class _Profile:
    def __init__(self, codes: dict[str, VendorCode]) -> None:
        self.vendor_codes = codes


@pytest.mark.parametrize(
    ("error_code", "vendor_code"),
    [
        ("GroundFailure", None),
        ("OtherError", "CX002"),
        ("OtherError", "CX011"),
        ("OtherError", "CX017"),
        ("OtherError", "CX022"),
        ("OtherError", "CX024"),
        ("OtherError", "CX025"),
        ("OtherError", "CX026"),
    ],
)
def test_contract_safety_critical_list_is_safety_critical_and_not_resettable(
    error_code: str, vendor_code: str | None
) -> None:
    fault = classify(error_code, "https://chargex.inl.gov", vendor_code)
    assert fault.safety_critical
    assert not is_resettable(fault)


def test_hidden_vendor_code_behind_other_error_is_kept_and_classified() -> None:
    fault = classify("OtherError", "https://chargex.inl.gov", "CX026", "cable severed")
    assert (fault.code, fault.vendor_id, fault.vendor_code, fault.info) == (
        "OtherError",
        "https://chargex.inl.gov",
        "CX026",
        "cable severed",
    )
    assert (fault.category, fault.chargex_code, fault.component) == ("cable", "CX026", "cable")


def test_compound_evgo_style_codes_pick_the_chargex_code() -> None:
    assert classify("OtherError", None, "F001,CX003").chargex_code == "CX003"


def test_ocpp16_error_codes_have_categories() -> None:
    assert classify("ConnectorLockFailure").category == "connector_lock"
    assert classify("HighTemperature").category == "temperature"
    assert classify("WeakSignal").category == "connectivity"
    assert classify("PowerMeterFailure").component == "power_meter"
    assert is_resettable(classify("InternalError"))


def test_profile_vendor_code_map_wins_and_can_mark_non_resettable() -> None:
    profile = _Profile(
        {"E-9": VendorCode(category="latch", component="latch_motor", resettable=False)}
    )
    fault = classify("OtherError", "Acme", "E-9", None, profile)
    assert (fault.category, fault.component) == ("latch", "latch_motor")
    assert not is_resettable(fault, profile)
    assert not fault.safety_critical


def test_emergency_stop_is_not_resettable_but_not_safety_critical() -> None:
    fault = classify("OtherError", None, "CX008")
    assert not fault.safety_critical
    assert not is_resettable(fault)


def test_recommended_action_first_guess() -> None:
    assert taxonomy.recommended_action(taxonomy.connectivity_fault()) == "network_fix"
    assert taxonomy.recommended_action(classify("GroundFailure")) == "field_technician"
    assert taxonomy.recommended_action(classify("OtherError", None, "CX026")) == (
        "component_replacement"
    )
    assert taxonomy.recommended_action(classify("InternalError"), resets_tried=True) == (
        "firmware_update"
    )


def test_every_category_is_declared() -> None:
    for info in (*taxonomy.CHARGEX.values(), *taxonomy.OCPP16_ERROR_CODES.values()):
        assert info.category in taxonomy.CATEGORIES
