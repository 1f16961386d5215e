"""Fault models: what each injected fault looks like, what fixes it, and when it happens.

Each :class:`FaultType` says how a fault shows itself in OCPP (error code,
vendor code, the connector it is reported on), what the agent's recovery
actions do to it (``cleared_by``: ``soft_reset``, ``hard_reset``,
``firmware_update``; a fault with an empty set needs a person), and what
would really fix it (``fix``, in the ``RecommendedAction`` vocabulary of
:mod:`chargesight.common.messages`).

=====================  ==========================  ===========  ==================  =====================
kind                   how it shows                scope        cleared by          fix
=====================  ==========================  ===========  ==================  =====================
transient              InternalError, connector 0  charge_point soft or hard reset  reboot
stuck                  OtherError E-STATE-HANG     charge_point hard reset only     reboot
connector_lock         ConnectorLockFailure CX001  connector    nothing             field_technician
ground_failure         GroundFailure CX002         connector    nothing (safety)    field_technician
psu_degradation        weeks of sag/heat/trips,    charge_point nothing             component_replacement
                       then PowerSwitchFailure
firmware_bug           InternalError FW-0x3E7      charge_point hard reset (for a   firmware_update
                       every few days                           while), update
flaky_connectivity     short WebSocket drops of    site         nothing             network_fix
                       every charge point
start_failure          looks Available, every      charge_point nothing             field_technician
                       session start fails
=====================  ==========================  ===========  ==================  =====================

:func:`plan_faults` turns a scenario's ``[[faults]]`` (plus background
transient and stuck faults drawn from ``[background]`` rates) into
:class:`PlannedFault` instances with concrete charge points and times, for
the history generator and the live runner alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from chargesight.common.messages import RecommendedAction, Scope
from chargesight.sim.scenario import FaultKind, FaultSection, Network, Scenario

CHARGEX_VENDOR_ID = "https://chargex.inl.gov"
RecoveryAction = Literal["soft_reset", "hard_reset", "firmware_update"]


@dataclass(frozen=True, slots=True)
class FaultType:
    kind: FaultKind
    code: str
    vendor_code: str | None
    vendor_id: str | None
    category: str  # chargesight.common.taxonomy category
    component: str | None
    default_connector: int  # 0 = the whole charge point
    fix: RecommendedAction
    cleared_by: frozenset[RecoveryAction]
    safety_critical: bool = False
    blocks: bool = True  # the connector(s) cannot charge while it is active
    info: str | None = None
    first_symptom: str = ""
    chargex_code: str | None = None

    def scope(self, connector: int | None) -> Scope:
        if self.kind == "flaky_connectivity":
            return "site"
        return "connector" if connector else "charge_point"


FAULT_TYPES: dict[FaultKind, FaultType] = {
    t.kind: t
    for t in (
        FaultType(
            "transient",
            "InternalError",
            "E-1012",
            "Voltix",
            "internal",
            "controller",
            0,
            "reboot",
            frozenset({"soft_reset", "hard_reset"}),
            info="watchdog: OCPP task restarted",
            first_symptom="StatusNotification Faulted InternalError on connector 0",
        ),
        FaultType(
            "stuck",
            "OtherError",
            "E-STATE-HANG",
            "Voltix",
            "other",
            "controller",
            0,
            "reboot",
            frozenset({"hard_reset"}),
            info="state machine hung in Preparing",
            first_symptom="StatusNotification Faulted OtherError E-STATE-HANG; soft reset does not clear it",
        ),
        FaultType(
            "connector_lock",
            "ConnectorLockFailure",
            "CX001",
            CHARGEX_VENDOR_ID,
            "connector_lock",
            "connector_lock",
            1,
            "field_technician",
            frozenset(),
            first_symptom="StatusNotification Faulted ConnectorLockFailure CX001",
            chargex_code="CX001",
        ),
        FaultType(
            "ground_failure",
            "GroundFailure",
            "CX002",
            CHARGEX_VENDOR_ID,
            "ground_fault",
            "rcd",
            1,
            "field_technician",
            frozenset(),
            safety_critical=True,
            first_symptom="StatusNotification Faulted GroundFailure CX002",
            chargex_code="CX002",
        ),
        FaultType(
            "psu_degradation",
            "PowerSwitchFailure",
            "VX-PSU-031",
            "Voltix",
            "contactor",
            "psu_module",
            0,
            "component_replacement",
            frozenset(),
            info="PSU module 3 output stage failed",
            first_symptom="delivered power below rated and PSU temperature rising in MeterValues",
        ),
        FaultType(
            "firmware_bug",
            "InternalError",
            "FW-0x3E7",
            "Voltix",
            "internal",
            "firmware",
            0,
            "firmware_update",
            frozenset({"hard_reset", "firmware_update"}),
            info="assertion in charging session manager",
            first_symptom="StatusNotification Faulted InternalError FW-0x3E7 on connector 0",
        ),
        FaultType(
            "flaky_connectivity",
            "ConnectionLost",
            None,
            None,
            "connectivity",
            "network",
            0,
            "network_fix",
            frozenset(),
            blocks=False,
            first_symptom="WebSocket closed by the charge point's network; reconnects within minutes",
        ),
        FaultType(
            "start_failure",
            "SessionStartFailures",
            None,
            None,
            "performance",
            "control_pilot",
            0,
            "field_technician",
            frozenset(),
            blocks=False,
            first_symptom="session start fails after Authorize; charge point still reports Available",
        ),
    )
}

# Early PSU symptoms: brief trips a soft reset clears.
PSU_TRIP_CODES = ("PowerSwitchFailure", "OverCurrentFailure")


@dataclass
class PlannedFault:
    """One injected fault with its concrete place and times (seconds from the run's start)."""

    fault_id: str
    kind: FaultKind
    site_id: str
    charge_points: list[str]
    connector: int  # 0 = whole charge point
    start_s: float
    end_s: float | None = None  # repaired / fixed (None: lasts to the end)
    background: bool = False
    # psu_degradation: onset = start_s, hard failure at fail_s
    fail_s: float | None = None
    # firmware_bug: episodes; flaky_connectivity: drops (start, duration)
    episodes: list[float] = field(default_factory=list)
    drops: list[tuple[float, float]] = field(default_factory=list)
    buggy_firmware: str | None = None
    fixed_firmware: str | None = None
    # outcome, filled by whoever runs it
    sessions_lost: float = 0.0  # drivers lost; shared equally when several faults turned one away
    energy_lost_wh: float = 0.0
    failed_starts: int = 0
    first_symptom_s: float | None = None
    escalated_s: float | None = None

    @property
    def type(self) -> FaultType:
        return FAULT_TYPES[self.kind]

    @property
    def scope(self) -> Scope:
        return self.type.scope(self.connector)

    def active(self, t: float) -> bool:
        return self.start_s <= t and (self.end_s is None or t < self.end_s)


def bump_version(v: str) -> str:
    parts = v.split(".")
    if parts and parts[-1].isdigit():
        parts[-1] = str(int(parts[-1]) + 1)
        return ".".join(parts)
    return v + ".1"


def plan_faults(
    scenario: Scenario,
    network: Network,
    horizon_s: float,
    rng: random.Random,
    *,
    background: bool = True,
) -> list[PlannedFault]:
    """Concrete faults for a run of ``horizon_s`` seconds, in start order."""
    out: list[PlannedFault] = []
    for i, f in enumerate(scenario.data.faults):
        out.extend(_plan_one(i, f, scenario, network, horizon_s, rng))
    if background:
        bg = scenario.data.background
        for cp in network.chargers:
            kinds: tuple[tuple[FaultKind, float], ...] = (
                ("transient", bg.transient_per_charger_year),
                ("stuck", bg.stuck_per_charger_year),
            )
            for kind, per_year in kinds:
                rate = per_year / (365 * 86400)
                t = rng.expovariate(rate) if rate > 0 else horizon_s
                while t < horizon_s:
                    out.append(
                        PlannedFault(
                            f"bg-{kind}-{cp.id}-{int(t)}",
                            kind,
                            cp.site_id,
                            [cp.id],
                            0,
                            t,
                            background=True,
                        )
                    )
                    t += rng.expovariate(rate)
    out.sort(key=lambda p: (p.start_s, p.fault_id))
    return out


def _plan_one(
    i: int,
    f: FaultSection,
    scenario: Scenario,
    net: Network,
    horizon_s: float,
    rng: random.Random,
) -> list[PlannedFault]:
    ft = FAULT_TYPES[f.kind]
    start = f.start_h * 3600
    end = start + f.duration_h * 3600 if f.duration_h else None
    if f.charge_point:
        cps = [f.charge_point]
    elif f.charge_points:
        cps = list(f.charge_points)
    elif f.site:
        cps = [c.id for c in net.site_by_id[f.site].chargers]
    else:
        hw = scenario.models[f.model or ""]
        fw = f.firmware
        pool = [
            c.id for c in net.chargers if c.hw.key == hw.key and (fw is None or c.firmware == fw)
        ]
        cps = pool[: f.count] if f.count else pool
    connector = f.connector if f.connector is not None else ft.default_connector
    out: list[PlannedFault] = []
    if f.kind == "flaky_connectivity":
        site = f.site or net.by_id[cps[0]].site_id
        p = PlannedFault(f"f{i:03d}-{f.kind}-{site}", f.kind, site, cps, 0, start, end)
        stop = min(end if end is not None else horizon_s, horizon_s)
        t = start + rng.expovariate(f.drops_per_day / 86400)
        while t < stop:
            p.drops.append((t, rng.uniform(*f.drop_s)))
            t += rng.expovariate(f.drops_per_day / 86400)
        out.append(p)
        return out
    for cp_id in cps:
        cp = net.by_id[cp_id]
        p = PlannedFault(
            f"f{i:03d}-{f.kind}-{cp_id}", f.kind, cp.site_id, [cp_id], connector, start
        )
        if f.kind == "psu_degradation":
            p.fail_s = start + (f.fail_after_h or 21 * 24) * 3600
            p.end_s = p.fail_s + f.duration_h * 3600 if f.duration_h else None
        elif f.kind == "firmware_bug":
            p.buggy_firmware = f.firmware or cp.firmware
            p.fixed_firmware = f.fixed_firmware or bump_version(p.buggy_firmware)
            p.end_s = end
            stop = min(end if end is not None else horizon_s, horizon_s)
            t = start + rng.expovariate(1 / (f.every_h * 3600))
            while t < stop:
                p.episodes.append(t)
                t += rng.expovariate(1 / (f.every_h * 3600))
        else:
            p.end_s = end
        out.append(p)
    return out
