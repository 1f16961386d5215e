"""Hardware-model profiles: what the agent knows about one charge point model.

A profile is a TOML file in ``firmware-hooks/profiles/`` (or
``recovery.profiles_dir``), matched on the BootNotification vendor and model
(shell-style patterns, case-insensitive), an optional firmware range and the
OCPP version. It holds rated power per connector, the vendor error code →
category/component map, playbook overrides and a reset budget::

    [profile]
    name = "voltix-vx-dc150"
    vendor = "Voltix"            # fnmatch pattern, "*" for any
    model = "VX-DC150"
    firmware_min = "5.0"         # optional, inclusive
    firmware_max = "5.99"        # optional, inclusive
    ocpp_versions = ["2.0.1"]    # optional, empty = any

    [power]
    rated_w = 150000             # per connector unless listed below
    connectors = { "1" = 150000, "2" = 150000 }
    min_power_fraction = 0.5     # below this share of rated is "power below rated"

    [vendor_codes."PSU-017"]
    category = "power_loss"
    component = "psu_module"
    chargex = "CX015"            # optional
    safety_critical = false      # optional
    resettable = true            # optional

    [playbooks]                  # category, "category:code" or "default"
    temperature = ["confirm", "availability_toggle", "soft_reset"]

    [recovery]
    max_resets_per_day = 4       # optional, never above the site's recovery.max_resets_per_day
    hook_env = { CHARGESIGHT_RELAY_PATH = "/sys/class/gpio/gpio17/value" }

The most specific match wins (vendor, then model, then firmware range);
generic profiles (``vendor = "*"``) are the fallback per OCPP version.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargesight.common.taxonomy import CATEGORIES, VendorCode
from chargesight.edge.playbooks import validate_steps


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


def default_profiles_dir() -> Path:
    """The repository's ``firmware-hooks/profiles`` (not package data: found from this file)."""
    return Path(__file__).resolve().parent.parent / "firmware-hooks" / "profiles"


def default_hooks_dir() -> Path:
    """The repository's ``firmware-hooks/hooks``."""
    return Path(__file__).resolve().parent.parent / "firmware-hooks" / "hooks"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    vendor: str = "*"
    model: str = "*"
    firmware_min: str | None = None
    firmware_max: str | None = None
    ocpp_versions: tuple[str, ...] = ()
    rated_power_w: float | None = None
    connector_power_w: Mapping[int, float] = field(default_factory=dict)
    min_power_fraction: float = 0.5
    vendor_codes: Mapping[str, VendorCode] = field(default_factory=dict)
    playbooks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_resets_per_day: int | None = None
    hook_env: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    def rated_power(self, connector_id: int) -> float | None:
        """Rated power of one connector in W, when the profile knows it."""
        return self.connector_power_w.get(connector_id, self.rated_power_w)

    def matches(
        self, vendor: str | None, model: str | None, firmware: str | None, version: str | None
    ) -> bool:
        if self.ocpp_versions and version is not None and version not in self.ocpp_versions:
            return False
        if not fnmatch.fnmatchcase((vendor or "").lower(), self.vendor.lower()):
            return False
        if not fnmatch.fnmatchcase((model or "").lower(), self.model.lower()):
            return False
        if firmware is not None:
            fw = _version_key(firmware)
            if self.firmware_min is not None and fw < _version_key(self.firmware_min):
                return False
            if self.firmware_max is not None and fw > _version_key(self.firmware_max):
                return False
        elif self.firmware_min is not None or self.firmware_max is not None:
            return False
        return True

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        return (
            self.vendor != "*",
            self.model != "*",
            self.firmware_min is not None or self.firmware_max is not None,
            bool(self.ocpp_versions),
        )


GENERIC = Profile(name="builtin-generic")
"""Used when no profile file matches (nothing known about the hardware)."""


def _get(table: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ProfileError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def parse_profile(data: Mapping[str, Any], source: Path | None = None) -> Profile:
    """Build a :class:`Profile` from a parsed TOML document; raises ProfileError."""
    where = str(source) if source else "<profile>"
    unknown = set(data) - {"profile", "power", "vendor_codes", "playbooks", "recovery"}
    if unknown:
        raise ProfileError(f"{where}: unknown tables {sorted(unknown)}")
    head = data.get("profile")
    if not isinstance(head, dict) or "name" not in head:
        raise ProfileError(f"{where}: [profile] with a name is required")
    power = data.get("power", {})
    codes: dict[str, VendorCode] = {}
    for code, entry in data.get("vendor_codes", {}).items():
        w = f"{where} [vendor_codes.{code}]"
        if not isinstance(entry, dict) or "category" not in entry:
            raise ProfileError(f"{w}: category is required")
        if entry["category"] not in CATEGORIES:
            raise ProfileError(f"{w}: unknown category {entry['category']!r}")
        codes[str(code)] = VendorCode(
            category=entry["category"],
            component=entry.get("component"),
            chargex_code=entry.get("chargex"),
            safety_critical=bool(entry.get("safety_critical", False)),
            resettable=bool(entry.get("resettable", True)),
            description=entry.get("description"),
        )
    playbooks: dict[str, tuple[str, ...]] = {}
    for key, steps in data.get("playbooks", {}).items():
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ProfileError(f"{where} [playbooks]: {key} must be a list of step names")
        bad = validate_steps(steps)
        if bad:
            raise ProfileError(f"{where} [playbooks]: {key} has unknown steps {bad}")
        playbooks[str(key)] = tuple(steps)
    recovery = data.get("recovery", {})
    connectors = {int(k): float(v) for k, v in power.get("connectors", {}).items()}
    rated = power.get("rated_w")
    budget = recovery.get("max_resets_per_day")
    if budget is not None and (not isinstance(budget, int) or budget < 0):
        raise ProfileError(f"{where} [recovery]: max_resets_per_day must be an integer >= 0")
    return Profile(
        name=_get(head, "name", str, where),
        vendor=str(head.get("vendor", "*")),
        model=str(head.get("model", "*")),
        firmware_min=head.get("firmware_min"),
        firmware_max=head.get("firmware_max"),
        ocpp_versions=tuple(head.get("ocpp_versions", ())),
        rated_power_w=float(rated) if rated is not None else None,
        connector_power_w=connectors,
        min_power_fraction=float(power.get("min_power_fraction", 0.5)),
        vendor_codes=codes,
        playbooks=playbooks,
        max_resets_per_day=budget,
        hook_env={str(k): str(v) for k, v in recovery.get("hook_env", {}).items()},
        source=source,
    )


class ProfileRegistry:
    """All profiles of a directory; :meth:`match` picks one for a charge point."""

    def __init__(self, profiles: list[Profile]) -> None:
        self.profiles = sorted(profiles, key=lambda p: p.specificity, reverse=True)

    @classmethod
    def load(cls, directory: Path | None = None) -> ProfileRegistry:
        """Load every ``*.toml`` of ``directory`` (default: the repository's); raises ProfileError."""
        directory = directory or default_profiles_dir()
        profiles = []
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                try:
                    data = tomllib.loads(path.read_text(encoding="utf-8"))
                except tomllib.TOMLDecodeError as exc:
                    raise ProfileError(f"{path}: {exc}") from exc
                profiles.append(parse_profile(data, path))
        return cls(profiles)

    def match(
        self,
        vendor: str | None,
        model: str | None,
        firmware: str | None = None,
        version: str | None = None,
    ) -> Profile:
        for profile in self.profiles:
            if profile.matches(vendor, model, firmware, version):
                return profile
        return GENERIC
