"""Hardware profiles: the shipped files load and match the simulator's models."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargesight.edge.profiles import ProfileError, ProfileRegistry, default_profiles_dir
from chargesight.sim.catalogue import BUILTIN_MODELS


def test_shipped_profiles_load_from_the_repository() -> None:
    registry = ProfileRegistry.load()
    assert default_profiles_dir().name == "profiles"
    names = {p.name for p in registry.profiles}
    assert {"generic-ocpp16-ac", "generic-ocpp201"} <= names


@pytest.mark.parametrize("key", sorted(BUILTIN_MODELS))
def test_every_simulator_model_has_its_own_profile_with_rated_power(key: str) -> None:
    model = BUILTIN_MODELS[key]
    profile = ProfileRegistry.load().match(model.vendor, model.model, model.firmware, model.ocpp)
    assert not profile.name.startswith("generic")
    assert profile.rated_power(1) == model.connector_power_w


def test_unknown_hardware_falls_back_to_the_generic_profile_of_its_ocpp_version() -> None:
    registry = ProfileRegistry.load()
    assert registry.match("Acme", "X1", "1.0", "1.6").name == "generic-ocpp16-ac"
    assert registry.match("Acme", "X1", "1.0", "2.0.1").name == "generic-ocpp201"


def test_firmware_range_and_specificity(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[profile]\nname = "any-acme"\nvendor = "Acme"\n')
    (tmp_path / "b.toml").write_text(
        '[profile]\nname = "acme-x1-old"\nvendor = "acme"\nmodel = "X1"\nfirmware_max = "1.9"\n'
        "[recovery]\nmax_resets_per_day = 2\n"
    )
    registry = ProfileRegistry.load(tmp_path)
    assert registry.match("Acme", "X1", "1.2.0").name == "acme-x1-old"
    assert registry.match("Acme", "X1", "1.2.0").max_resets_per_day == 2
    assert registry.match("Acme", "X1", "2.0.0").name == "any-acme"
    assert registry.match("Other", "X1", "1.0").name == "builtin-generic"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[profile]\nvendor = "x"\n', "name"),
        ('[profile]\nname = "x"\n[vendor_codes."E1"]\ncategory = "nonsense"\n', "unknown category"),
        ('[profile]\nname = "x"\n[playbooks]\ndefault = ["dance"]\n', "unknown steps"),
        ('[profile]\nname = "x"\n[extra]\n', "unknown tables"),
        ('[profile\nname = "x"\n', "a.toml"),
    ],
)
def test_bad_profile_is_refused_with_a_message_naming_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ProfileError, match=message):
        ProfileRegistry.load(tmp_path)
