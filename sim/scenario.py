"""Scenario files: the network, its drivers and its faults, in TOML, validated.

A scenario names sites, the charge points at each (by hardware model), the
drivers' demand and the faults to inject. :func:`load_scenario` parses and
validates it and returns a :class:`Scenario` whose :meth:`Scenario.network`
expands the charger groups into charge points with stable ids
(``{site_id}-{nn}``). Bad input raises :class:`ScenarioError`, whose message
names the file, the line and the field::

    demo.toml:41: sites[3].chargers[0].model: unknown model 'voltix-dc99' (known: ...)

Format (see ``scenarios/small.toml`` for a complete example)::

    [network]            name, seed, start (TOML datetime, optional)
    [drivers]            sessions_per_connector_day, failed_start_ratio, id_tags, ...
    [background]         transient_per_charger_year, stuck_per_charger_year,
                         early_end_ratio, disconnects_per_charger_day.<uplink>
    [models.<key>]       extra hardware models (fields of catalogue.HardwareModel)
    [[sites]]            id, name, lat, lon, currency, price_per_kwh,
                         opening_hours = [open_h, close_h], uplink, demand
    [[sites.chargers]]   model, count, ocpp (optional), firmware (optional)
    [[faults]]           kind + where (charge_point | charge_points | site | model)
                         + when (start_h, duration_h, ...)
"""

from __future__ import annotations

import re
import tomllib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chargesight.sim.catalogue import BUILTIN_MODELS, ConnectorType, HardwareModel

SCENARIO_DIR = Path(__file__).parent / "scenarios"

FaultKind = Literal[
    "transient",
    "stuck",
    "connector_lock",
    "ground_failure",
    "psu_degradation",
    "firmware_bug",
    "flaky_connectivity",
    "start_failure",
]
Uplink = Literal["fiber", "ethernet", "cellular", "wifi"]
OcppVersion = Literal["1.6", "2.0.1"]

NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSection(_Strict):
    name: str
    seed: int = 1
    start: datetime | None = None  # history start; default: now minus the days asked
    heartbeat_s: Annotated[int, Field(gt=0)] = 300
    meter_interval_s: Annotated[int, Field(gt=0)] = 60


class DriversSection(_Strict):
    sessions_per_connector_day: NonNeg = 4.0
    failed_start_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    id_tags: Annotated[int, Field(gt=0)] = 500
    ac_energy_kwh: Pos = 12.0  # median energy per AC session
    dc_energy_kwh: Pos = 28.0  # median energy per DC session
    ac_max_dwell_h: Pos = 8.0


def _default_drops() -> dict[Uplink, float]:
    return {"fiber": 0.01, "ethernet": 0.01, "cellular": 0.15, "wifi": 0.3}


class BackgroundSection(_Strict):
    transient_per_charger_year: NonNeg = 4.0
    stuck_per_charger_year: NonNeg = 1.0
    early_end_ratio: Annotated[float, Field(ge=0, le=1)] = 0.01
    disconnects_per_charger_day: dict[Uplink, NonNeg] = Field(default_factory=_default_drops)


class ModelSection(_Strict):
    vendor: str
    model: str
    firmware: str
    rated_power_w: Pos
    connectors: list[ConnectorType] = Field(min_length=1, max_length=8)
    connector_power_w: Pos
    dc: bool
    psu_modules: Annotated[int, Field(ge=0)] = 0
    ocpp: OcppVersion = "1.6"


class ChargerGroup(_Strict):
    model: str
    count: Annotated[int, Field(gt=0, le=1000)] = 1
    ocpp: OcppVersion | None = None
    firmware: str | None = None


class SiteSection(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,60}$")]
    name: str
    lat: Annotated[float, Field(ge=-90, le=90)] = 0.0
    lon: Annotated[float, Field(ge=-180, le=180)] = 0.0
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    price_per_kwh: NonNeg
    opening_hours: tuple[int, int] = (0, 24)
    uplink: Uplink = "fiber"
    demand: NonNeg = 1.0
    chargers: list[ChargerGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _hours(self) -> SiteSection:
        o, c = self.opening_hours
        if not (0 <= o < c <= 24):
            raise ValueError("opening_hours must be [open, close] with 0 <= open < close <= 24")
        return self


class FaultSection(_Strict):
    """One injected fault. Where: exactly one of charge_point, charge_points, site, model."""

    kind: FaultKind
    charge_point: str | None = None
    charge_points: list[str] | None = None
    site: str | None = None
    model: str | None = None
    firmware: str | None = None  # firmware_bug: the buggy version (default: the model's)
    fixed_firmware: str | None = None  # firmware_bug: the version that fixes it
    count: Annotated[int, Field(gt=0)] | None = None  # with model: how many units
    connector: Annotated[int, Field(ge=0)] | None = None
    start_h: NonNeg = 0.0
    duration_h: Pos | None = None  # repaired after; None = lasts to the end
    fail_after_h: Pos | None = None  # psu_degradation: hard failure after onset
    every_h: Pos = 72.0  # firmware_bug: mean hours between episodes
    drops_per_day: Pos = 16.0  # flaky_connectivity
    drop_s: tuple[NonNeg, NonNeg] = (15.0, 120.0)  # flaky_connectivity: min, max

    @model_validator(mode="after")
    def _where(self) -> FaultSection:
        given = [n for n in ("charge_point", "charge_points", "site", "model") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of charge_point, charge_points, site, model"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.kind == "flaky_connectivity" and not self.site:
            raise ValueError("flaky_connectivity needs site")
        if self.drop_s[0] > self.drop_s[1]:
            raise ValueError("drop_s must be [min, max]")
        return self


class ScenarioFile(_Strict):
    network: NetworkSection
    drivers: DriversSection = Field(default_factory=DriversSection)
    background: BackgroundSection = Field(default_factory=BackgroundSection)
    models: dict[str, ModelSection] = Field(default_factory=dict)
    sites: list[SiteSection] = Field(min_length=1)
    faults: list[FaultSection] = Field(default_factory=list)


# ---------------------------------------------------------------- expanded network


@dataclass(frozen=True, slots=True)
class ChargerSpec:
    """One simulated charge point."""

    id: str
    site_id: str
    index: int  # position in Network.chargers
    hw: HardwareModel
    firmware: str
    ocpp: OcppVersion

    @property
    def connector_count(self) -> int:
        return len(self.hw.connectors)

    @property
    def serial(self) -> str:
        return f"{self.hw.vendor[:3].upper()}-{zlib.crc32(self.id.encode()) % 10**8:08d}"


@dataclass(frozen=True, slots=True)
class Site:
    spec: SiteSection
    chargers: tuple[ChargerSpec, ...]

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class Network:
    sites: tuple[Site, ...]
    chargers: tuple[ChargerSpec, ...]
    by_id: dict[str, ChargerSpec]
    site_by_id: dict[str, Site]


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``source`` is the file it came from (for messages)."""

    data: ScenarioFile
    source: str = "<scenario>"

    @property
    def models(self) -> dict[str, HardwareModel]:
        extra = {
            k: HardwareModel(
                key=k, **m.model_dump(exclude={"connectors"}), connectors=tuple(m.connectors)
            )
            for k, m in self.data.models.items()
        }
        return {**BUILTIN_MODELS, **extra}

    def network(self) -> Network:
        models = self.models
        sites: list[Site] = []
        chargers: list[ChargerSpec] = []
        for s in self.data.sites:
            mine: list[ChargerSpec] = []
            for g in s.chargers:
                hw = models[g.model]
                for _ in range(g.count):
                    cp = ChargerSpec(
                        id=f"{s.id}-{len(mine) + 1:02d}",
                        site_id=s.id,
                        index=len(chargers),
                        hw=hw,
                        firmware=g.firmware or hw.firmware,
                        ocpp=g.ocpp or hw.ocpp,
                    )
                    mine.append(cp)
                    chargers.append(cp)
            sites.append(Site(s, tuple(mine)))
        return Network(
            tuple(sites),
            tuple(chargers),
            {c.id: c for c in chargers},
            {s.id: s for s in sites},
        )


# ---------------------------------------------------------------- loading


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file; a bare name (``"small"``) means a bundled one."""
    p = Path(path)
    if not p.exists() and not p.suffix and (SCENARIO_DIR / f"{p}.toml").exists():
        p = SCENARIO_DIR / f"{p}.toml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        bundled = ", ".join(sorted(f.stem for f in SCENARIO_DIR.glob("*.toml")))
        raise ScenarioError(
            f"{p}: cannot read scenario: {exc.strerror or exc} (bundled: {bundled})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{p}: not UTF-8 text: {exc.reason}") from exc
    return parse_scenario(text, source=str(p))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
    lines = _key_lines(text)
    try:
        data = ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ScenarioError(
            _where(source, lines, err["loc"]) + f": {_explain(err['type'], err['msg'])}"
        ) from exc
    _check_references(data, source, lines)
    return Scenario(data, source)


def _explain(kind: str, msg: str) -> str:
    if kind == "missing":
        return "field is required but missing"
    if kind == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")


def _check_references(data: ScenarioFile, source: str, lines: dict[tuple[Any, ...], int]) -> None:
    known = set(BUILTIN_MODELS) | set(data.models)
    site_ids: set[str] = set()
    cp_ids: set[str] = set()
    for i, s in enumerate(data.sites):
        if s.id in site_ids:
            raise ScenarioError(
                _where(source, lines, ("sites", i, "id")) + f": duplicate site id {s.id!r}"
            )
        site_ids.add(s.id)
        n = 0
        for j, g in enumerate(s.chargers):
            if g.model not in known:
                raise ScenarioError(
                    _where(source, lines, ("sites", i, "chargers", j, "model"))
                    + f": unknown model {g.model!r} (known: {', '.join(sorted(known))})"
                )
            for _ in range(g.count):
                n += 1
                cp_ids.add(f"{s.id}-{n:02d}")
    for i, f in enumerate(data.faults):
        refs: list[tuple[str, str, set[str]]] = []
        if f.charge_point:
            refs.append(("charge_point", f.charge_point, cp_ids))
        for cp in f.charge_points or []:
            refs.append(("charge_points", cp, cp_ids))
        if f.site:
            refs.append(("site", f.site, site_ids))
        if f.model:
            refs.append(("model", f.model, known))
        for field, value, pool in refs:
            if value not in pool:
                raise ScenarioError(
                    _where(source, lines, ("faults", i, field))
                    + f": unknown {field.rstrip('s').replace('_', ' ')} {value!r}"
                )


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map TOML paths (as pydantic ``loc`` tuples) to the line that defines them.

    A small scanner, not a parser: it follows ``[table]`` and ``[[array]]``
    headers and ``key = value`` lines, which is what scenario files use.
    """
    out: dict[tuple[Any, ...], int] = {}
    counters: dict[tuple[Any, ...], int] = {}
    current: tuple[Any, ...] = ()
    for n, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m:
            names = [p.strip().strip('"') for p in m.group(2).split(".")]
            # Resolve each dotted part against the arrays seen so far.
            path: list[Any] = []
            for k, name in enumerate(names):
                path.append(name)
                last = k == len(names) - 1
                key = tuple(path)
                if last and m.group(1) == "[[":
                    counters[key] = counters.get(key, -1) + 1
                    path.append(counters[key])
                elif not last and key in counters:
                    path.append(counters[key])
            current = tuple(path)
            out.setdefault(current, n)
            continue
        m = _KEY.match(line)
        if m:
            out.setdefault((*current, m.group(1)), n)
    return out


def _where(source: str, lines: dict[tuple[Any, ...], int], loc: Sequence[Any]) -> str:
    loc = tuple(loc)
    line = None
    for k in range(len(loc), 0, -1):
        if loc[:k] in lines:
            line = lines[loc[:k]]
            break
    dotted = ""
    for part in loc:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    return f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"


def default_start(days: float, now: datetime | None = None) -> datetime:
    """History start: ``days`` before ``now`` (UTC), on the hour."""
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(days=days)
