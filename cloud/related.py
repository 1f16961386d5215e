"""Related units: the same fault signature elsewhere, or the same early symptoms (pure).

* **Signature**: another charge point, at any site, escalated with the same
  fault category, code and vendor code on the same hardware vendor and model
  in the recent past. Similarity 1.0 on the same firmware, 0.9 otherwise.
* **Symptoms**: each charge point's recent digest window is compared with its
  own earlier baseline (power delivered vs rated, temperature, sessions ending
  early, failed starts, faults and disconnects per hour). The failing unit's
  deviation *before it failed* is compared with every other unit's current
  deviation by cosine similarity; a unit whose deviation is material and
  points the same way is related, with the shared symptoms in words.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from chargesight.cloud.model import RelatedUnit


@dataclass(frozen=True, slots=True)
class SignatureHit:
    charge_point_id: str
    site_id: str
    firmware: str | None
    started_at: datetime
    issue_id: str | None = None


def related_by_signature(
    charge_point_id: str | None,
    firmware: str | None,
    code: str,
    vendor_code: str | None,
    model: str | None,
    hits: Iterable[SignatureHit],
) -> list[RelatedUnit]:
    """One entry per other charge point with the same signature (its latest occurrence)."""
    latest: dict[str, SignatureHit] = {}
    for h in hits:
        if h.charge_point_id == charge_point_id:
            continue
        prev = latest.get(h.charge_point_id)
        if prev is None or h.started_at > prev.started_at:
            latest[h.charge_point_id] = h
    out = []
    vc = f" (vendor code {vendor_code})" if vendor_code else ""
    for h in sorted(latest.values(), key=lambda h: (h.site_id, h.charge_point_id)):
        same_fw = firmware is not None and h.firmware == firmware
        fw = f", same firmware {firmware}" if same_fw else f", firmware {h.firmware or 'unknown'}"
        out.append(
            RelatedUnit(
                charge_point_id=h.charge_point_id,
                site_id=h.site_id,
                similarity=1.0 if same_fw else 0.9,
                basis="signature",
                issue_id=h.issue_id,
                reason=(
                    f"same fault {code}{vc} on the same model {model or 'unknown'}{fw}, "
                    f"last seen {h.started_at:%Y-%m-%d} at site {h.site_id}"
                ),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Aggregated digest counters of one charge point over one time window."""

    charge_point_id: str
    site_id: str
    hours: float
    sessions_started: float = 0.0
    sessions_failed: float = 0.0
    sessions_ended_early: float = 0.0
    faults: float = 0.0
    disconnects: float = 0.0
    power_ratio: float | None = None  # mean max_power / rated_power
    mean_temperature_c: float | None = None


# (name, scale of a material change, words)
SYMPTOMS: tuple[tuple[str, float, str], ...] = (
    ("power_sag", 0.10, "power delivered sagging below rated"),
    ("temperature_rise", 5.0, "temperature rising"),
    ("early_ends", 0.15, "sessions ending early"),
    ("failed_starts", 0.15, "sessions failing to start"),
    ("fault_rate", 0.05, "more faults per hour"),
    ("disconnect_rate", 0.2, "more disconnects per hour"),
)
MATERIAL = 1.0  # a deviation vector shorter than this (in scale units) is normal wear


def _rate(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def symptom_vector(recent: WindowStats, baseline: WindowStats) -> dict[str, float]:
    """How far ``recent`` has moved from ``baseline``, each symptom in units of its scale."""
    raw: dict[str, float] = {
        "power_sag": (
            (baseline.power_ratio - recent.power_ratio)
            if recent.power_ratio is not None and baseline.power_ratio is not None
            else 0.0
        ),
        "temperature_rise": (
            (recent.mean_temperature_c - baseline.mean_temperature_c)
            if recent.mean_temperature_c is not None and baseline.mean_temperature_c is not None
            else 0.0
        ),
        "early_ends": _rate(recent.sessions_ended_early, recent.sessions_started)
        - _rate(baseline.sessions_ended_early, baseline.sessions_started),
        "failed_starts": _rate(
            recent.sessions_failed, recent.sessions_started + recent.sessions_failed
        )
        - _rate(baseline.sessions_failed, baseline.sessions_started + baseline.sessions_failed),
        "fault_rate": _rate(recent.faults, recent.hours) - _rate(baseline.faults, baseline.hours),
        "disconnect_rate": _rate(recent.disconnects, recent.hours)
        - _rate(baseline.disconnects, baseline.hours),
    }
    # only worsening counts as a symptom
    return {name: max(0.0, raw[name]) / scale for name, scale, _ in SYMPTOMS}


def _norm(v: dict[str, float]) -> float:
    return math.sqrt(sum(x * x for x in v.values()))


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    na, nb = _norm(a), _norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return sum(a[k] * b.get(k, 0.0) for k in a) / (na * nb)


def describe(vector: dict[str, float], other: dict[str, float] | None = None) -> str:
    words = [
        w
        for name, _, w in SYMPTOMS
        if vector.get(name, 0.0) >= 0.5 and (other is None or other.get(name, 0.0) >= 0.5)
    ]
    return ", ".join(words) if words else "no material symptoms"


def related_by_symptoms(
    failing: dict[str, float],
    failing_id: str,
    candidates: Sequence[tuple[WindowStats, WindowStats]],
    *,
    min_similarity: float = 0.8,
    exclude: Iterable[str] = (),
) -> list[RelatedUnit]:
    """Units whose current deviation resembles the failing unit's before it failed."""
    if _norm(failing) < MATERIAL:
        return []
    skip = set(exclude) | {failing_id}
    out = []
    for recent, baseline in candidates:
        if recent.charge_point_id in skip:
            continue
        vec = symptom_vector(recent, baseline)
        if _norm(vec) < MATERIAL:
            continue
        sim = cosine(failing, vec)
        if sim < min_similarity:
            continue
        out.append(
            RelatedUnit(
                charge_point_id=recent.charge_point_id,
                site_id=recent.site_id,
                similarity=round(sim, 3),
                basis="symptoms",
                reason=(
                    f"shows the early symptoms {failing_id} showed before it failed: "
                    f"{describe(failing, vec)}"
                ),
            )
        )
    out.sort(key=lambda r: -r.similarity)
    return out
