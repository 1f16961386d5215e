"""Recommended action, a one-paragraph diagnosis and a priority for an issue (pure).

The rules, in order (the first that applies wins):

1. an operator fix that worked on the same signature before (``POST .../resolve``
   feedback) → that action again;
2. connectivity evidence (a connectivity escalation, a recurring disconnect
   problem) → ``network_fix``;
3. the signature concentrated on one firmware version (≥ 3 failures, ≥ 80 % of
   them on this firmware while it runs on < 60 % of the model's units) →
   ``firmware_update``;
4. safety-critical faults → ``field_technician``; a degrading module or power
   electronics (power sag, PSU, over-current, over-temperature) →
   ``component_replacement``; other hardware faults (ground, cable, contactor,
   latch, lock, RCD, isolation…) → ``field_technician``;
5. no reset could be tried (sessions running, resets disabled) → ``reboot``;
6. resets were tried and did not help → ``field_technician``;
7. otherwise → ``monitor``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from chargesight.cloud.model import Issue, RepeatSummary
from chargesight.cloud.recurring import is_connectivity
from chargesight.common.messages import Fault, RecommendedAction

ACTIONS: tuple[RecommendedAction, ...] = (
    "reboot",
    "firmware_update",
    "field_technician",
    "component_replacement",
    "configuration_change",
    "network_fix",
    "monitor",
)
HARDWARE_WORDS = (
    "ground",
    "cable",
    "contactor",
    "latch",
    "lock",
    "rcd",
    "isolation",
    "resistance",
    "voltage",
    "hardware",
    "connector",
    "weld",
    "pilot",
)
COMPONENT_WORDS = (
    "psu",
    "power_module",
    "powermodule",
    "module",
    "overcurrent",
    "over_current",
    "powerswitch",
    "power_switch",
    "temperature",
    "thermal",
    "fan",
    "degrad",
    "sag",
)
RESET_ACTIONS = ("soft_reset", "hard_reset")


@dataclass(frozen=True, slots=True)
class FirmwareEvidence:
    """Failures of this signature and fleet share, by firmware, for the issue's model."""

    failures_by_firmware: dict[str, int] = field(default_factory=dict)
    units_by_firmware: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    focus: str | None = None  # the firmware to test when the issue has none (site issues)

    def concentrated_on(self, firmware: str | None) -> tuple[float, float] | None:
        """(share of failures, share of units) when the signature clusters on ``firmware``."""
        if firmware is None:
            return None
        total = sum(self.failures_by_firmware.values())
        units = sum(self.units_by_firmware.values())
        mine = self.failures_by_firmware.get(firmware, 0)
        if total < 3 or units == 0:
            return None
        f_share = mine / total
        u_share = self.units_by_firmware.get(firmware, 0) / units
        if f_share >= 0.8 and u_share < 0.6:
            return f_share, u_share
        return None


@dataclass(frozen=True, slots=True)
class PriorFix:
    action: str
    worked: bool | None


def _words(issue: Issue) -> str:
    f = issue.fault
    return " ".join(
        x.lower() for x in (f.category, f.code, f.component or "", f.vendor_code or "", issue.kind)
    ).replace(" ", "_")


def recommend(
    issue: Issue,
    firmware: FirmwareEvidence | None = None,
    prior_fixes: Sequence[PriorFix] = (),
) -> tuple[RecommendedAction, str]:
    """Return (recommended action, the rule's reason in words)."""
    worked = Counter(p.action for p in prior_fixes if p.worked and p.action in ACTIONS)
    if worked:
        action, n = worked.most_common(1)[0]
        return action, (
            f"the same fault was fixed by {action.replace('_', ' ')} {n} time(s) before "
            "(operator feedback)"
        )
    if issue.recurring is None and (
        issue.kind == "connectivity" or is_connectivity(issue.kind, issue.fault.category)
    ):
        return "network_fix", "the evidence is connectivity: the charge point keeps losing its link"
    if issue.recurring is not None and issue.recurring.connectivity_share >= 0.5:
        return "network_fix", (
            f"{issue.recurring.connectivity_share:.0%} of the recurring incidents are disconnects"
        )
    fw = issue.hardware.firmware or (firmware.focus if firmware else None)
    conc = firmware.concentrated_on(fw) if firmware else None
    if conc is not None:
        model = issue.hardware.model or (firmware.model if firmware else None) or "this model"
        return "firmware_update", (
            f"{conc[0]:.0%} of these faults on {model} are on firmware {fw}, which runs on only "
            f"{conc[1]:.0%} of its units"
        )
    words = _words(issue)
    if issue.fault.category == "configuration" and not issue.fault.safety_critical:
        return "configuration_change", (
            "the charge point's configuration disagrees with the CSMS (e.g. its local"
            " authorisation list); no reset changes it: send the list again from the CSMS"
            " (SendLocalList), or correct the setting behind it (a configuration_change request,"
            " where the site's agent allows it)"
        )
    if issue.repeats is not None and not issue.fault.safety_critical:
        return _recommend_repeat(issue, issue.repeats, firmware, words)
    if issue.fault.safety_critical:
        return "field_technician", "a safety-critical fault that no remote step can fix"
    if any(w in words for w in COMPONENT_WORDS):
        return "component_replacement", "a power component is degrading or failing"
    if any(w in words for w in HARDWARE_WORDS):
        return "field_technician", "a hardware fault that no remote step can fix"
    if issue.kind == "performance":
        return "field_technician", "the charge point underperforms and needs an inspection on site"
    if issue.kind == "predictive":
        return "monitor", "early symptoms only; watch it and plan a visit"
    if issue.recurring is not None:
        return "monitor", "short incidents that cleared by themselves, with no common cause found"
    tried = [a.action for a in issue.recovery_attempts]
    if not any(a in RESET_ACTIONS for a in tried):
        return "reboot", "no reset could be tried yet at the edge"
    return "field_technician", "resets were tried and the fault stayed"


def is_component_fault(fault: Fault) -> bool:
    """A power component's fault (PSU, power module, overcurrent trips, thermal): the kind a
    repeating trip is the early sign of."""
    words = " ".join(
        x.lower() for x in (fault.category, fault.code, fault.component or "")
    ).replace(" ", "_")
    return any(w in words for w in COMPONENT_WORDS)


def _recommend_repeat(
    issue: Issue, r: RepeatSummary, firmware: FirmwareEvidence | None, words: str
) -> tuple[RecommendedAction, str]:
    """A fault on one unit that clears (by a reset or by itself) and keeps coming back."""
    if any(w in words for w in COMPONENT_WORDS):
        return "component_replacement", (
            "a power component trips again and again; each trip clears, the part is wearing out"
        )
    resets = sum(n for a, n in r.fixed_by.items() if a in RESET_ACTIONS)
    fw = issue.hardware.firmware
    model = issue.hardware.model or "this model"
    others = firmware.failures_by_firmware.get(fw or "?", 0) if firmware else 0
    if others >= 2 and resets * 2 >= r.episodes:
        return "firmware_update", (
            f"the same fault keeps returning on {others + 1} units of {model} on firmware {fw} "
            f"and a reset cleared it {resets} of {r.episodes} times: a software defect, not worn"
            " hardware"
        )
    if any(w in words for w in HARDWARE_WORDS):
        return "field_technician", "a hardware fault keeps returning; a reset only hides it"
    return "field_technician", (
        f"this unit alone needed {resets} reset(s) for the same fault in {_span(r.window_s)}; "
        "the cause is on site"
    )


def _span(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds / 3600:g} hours"


def diagnosis_text(issue: Issue, action: RecommendedAction, why: str) -> str:
    """One paragraph a person can act on."""
    f = issue.fault
    where = {
        "connector": f"connector {issue.connector_id} of {issue.charge_point_id}",
        "charge_point": f"charge point {issue.charge_point_id}",
        "site": f"site {issue.site_id} ({len(issue.chargers)} charge points affected)",
    }[issue.scope]
    hw = issue.hardware
    model = " ".join(x for x in (hw.vendor, hw.model) if x) or "unknown hardware"
    fw = f", firmware {hw.firmware}" if hw.firmware else ""
    if issue.repeats is not None:
        p = issue.repeats
        vc = f" (vendor code {f.vendor_code})" if f.vendor_code else ""
        how = ", ".join(f"{n}× by {a.replace('_', ' ')}" for a, n in sorted(p.fixed_by.items()))
        head = (
            f"{where} ({model}{fw}) had {f.code}{vc} {p.episodes} times in the last "
            f"{_span(p.window_s)} ({p.total_episodes} since {issue.started_at:%Y-%m-%d}); each "
            f"episode cleared ({how}) and the fault came back. None was escalated alone."
        )
    elif issue.recurring is not None:
        r = issue.recurring
        cats = ", ".join(f"{n} {c}" for c, n in sorted(r.by_category.items(), key=lambda x: -x[1]))
        head = (
            f"{where} had {r.incidents} small incidents in the last {_span(r.window_s)}, each of "
            f"which cleared by itself ({cats}; trend {r.trend}). None was escalated alone; "
            "together they cost sessions."
        )
    else:
        vc = f", vendor code {f.vendor_code}" if f.vendor_code else ""
        comp = f" in the {f.component}" if f.component else ""
        head = (
            f"{where} ({model}{fw}) reports {f.code}{vc} ({f.category}{comp}) "
            f"since {issue.started_at:%Y-%m-%d %H:%M} UTC."
        )
    tried = [a for a in issue.recovery_attempts if a.action != "wait"]
    if tried and issue.repeats is None:
        steps = "; ".join(f"{a.action} → {a.result}" for a in tried[-6:])
        attempts = f" The edge tried: {steps}, without lasting success."
    elif issue.recurring is None and issue.repeats is None:
        attempts = " The edge did not try any recovery step (safety rules or a session running)."
    else:
        attempts = ""
    rel = ""
    sig = [r for r in issue.related if r.basis == "signature"]
    sym = [r for r in issue.related if r.basis == "symptoms"]
    if sig:
        rel += f" The same fault appeared on {len(sig)} other unit(s) ({', '.join(r.charge_point_id for r in sig[:5])})."
    if sym:
        rel += f" {len(sym)} unit(s) show the same early symptoms ({', '.join(r.charge_point_id for r in sym[:5])}) and may fail next."
    reopened = (
        f" It came back {issue.reopened} time(s) after being resolved." if issue.reopened else ""
    )
    act = action.replace("_", " ")
    return f"{head}{attempts}{rel}{reopened} Recommended: {act} — {why}."


SCOPE_WEIGHT = {"site": 1.0, "charge_point": 0.6, "connector": 0.3}


def priority(
    issue: Issue,
    revenue_per_hour: float,
    sessions_per_hour: float,
) -> float:
    """0..1: revenue at risk, drivers affected, safety, units sharing the pattern, scope."""
    if issue.status == "resolved":
        return 0.0
    money = 1.0 - math.exp(-max(0.0, revenue_per_hour) / 10.0)
    drivers = 1.0 - math.exp(-max(0.0, sessions_per_hour) / 1.0)
    safety = 1.0 if issue.fault.safety_critical else 0.0
    shared = min(1.0, len(issue.related) / 3.0)
    score = (
        0.30 * money
        + 0.20 * drivers
        + 0.25 * safety
        + 0.10 * shared
        + 0.15 * SCOPE_WEIGHT.get(issue.scope, 0.5)
    )
    return round(min(1.0, score), 4)
