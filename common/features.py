"""Feature extraction for Foresight: ONE implementation for training (cloud) and inference (edge).

A charge point's recent behaviour is summarised as hourly :class:`HourBucket`
counters (the same figures an hourly :class:`~chargesight.common.messages.ChargerCounters`
carries in a digest) kept in a sliding :data:`WINDOW` (7 days). The feature
vector is a pure function of those buckets and the window's end
(:func:`compute_features`), in the fixed order of :data:`FEATURE_NAMES`
(schema :data:`FEATURE_SCHEMA_VERSION`).

Two ways to fill a :class:`FeatureWindow`, one result:

* the **edge** feeds normalised events (:meth:`FeatureWindow.feed`) plus what
  its recovery engine decides (:meth:`~FeatureWindow.record_fault`,
  :meth:`~FeatureWindow.record_reset`, :meth:`~FeatureWindow.record_self_resolved`,
  :meth:`~FeatureWindow.record_session_failed`, and ``ordered_reboot`` on the
  disconnect a reset it sent caused) and calls :meth:`~FeatureWindow.close`
  at each interval end. The agent's digest builder
  (:class:`chargesight.edge.digest.DigestCollector`) *is* that feeder: its
  counters are the closed buckets (:meth:`HourBucket.to_counters`), so what the
  cloud stores is exactly what the edge scores;
* the **cloud** feeds stored digests (:meth:`FeatureWindow.add_counters`).

One definition per counter (what a digest carries, what the simulator's
history counts, so what the models learn):

* ``disconnects`` — lost connections, *except* one the agent caused with a
  reset it ordered (``feed(..., ordered_reboot=True)``): a reboot we asked
  for is no symptom of the charger (its time offline still counts);
* ``faults`` / ``faults_by_category`` — fault incidents the edge's detection
  opened (:meth:`~FeatureWindow.record_fault`), one per incident however often
  the charger repeats it. A window created with ``infer_faults=True`` (the
  default, for a bank without a recovery engine: tools, tests) counts each
  connector's transition to ``Faulted`` instead;
* ``sessions_failed``, ``resets``, ``self_resolved`` — the engine's decisions;
* ``sessions_started``, ``sessions_ended_early`` (:data:`EARLY_END_REASONS`),
  ``energy_wh``, ``max_power_w`` (> 0 only), temperatures, ``connected_s`` —
  from the events.

Per connector (:data:`CONNECTOR_FEATURE_NAMES`, :meth:`FeatureWindow.connector_features`)
the same window keeps the connector-relevant figures — faults on that
connector, session starts that failed and sessions that ended early, energy
per session, peak power against rated, time Faulted or Unavailable — for the
health score per connector (:func:`chargesight.common.health.window_health`).
They are no model input: the ONNX input schema (:data:`FEATURE_NAMES`) is unchanged.
An engine decision made while it handles an event (a fault opened, a session
failed) belongs to the connector that event concerned (:attr:`FeatureWindow.last_connector`);
connector 0 is the charge point as a whole.

Buckets are quantised when they close to the precision a digest carries, so
a bucket that travels edge → JSON digest → cloud gives bit-identical features.
Time comes from the data (event timestamps, digest intervals), never the wall
clock. Missing readings use sentinels (:data:`NO_POWER`, :data:`NO_TEMPERATURE`)
rather than NaN, so every model sees finite numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from chargesight.common import taxonomy
from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Event,
    MeterSample,
    ProblemReport,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.messages import ChargerCounters, Digest

FEATURE_SCHEMA_VERSION: Final = 1
"""Bump when a feature's meaning, order or the window changes: models declare the version they need."""

WINDOW: Final = timedelta(days=7)
RECENT: Final = timedelta(hours=48)

NO_POWER: Final = -1.0
"""Power ratio when no session delivered energy in the span."""
NO_TEMPERATURE: Final = -100.0
"""Temperature (°C) when the span has no reading."""

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "power_ratio_max_48h",  # highest hourly peak power / rated, last 48 h
    "power_ratio_max_7d",  # same over the whole window
    "power_ratio_drop",  # peak ratio before the last 48 h minus peak ratio in them
    "temp_max_48h",  # °C
    "temp_mean_7d",  # °C, mean of hourly means
    "temp_trend_c_per_day",  # least-squares slope of hourly mean temperature
    "sessions_per_day",
    "start_failure_ratio",  # failed / (started + failed)
    "early_end_ratio",  # ended early / started
    "energy_per_session_kwh",
    "faults_power_per_day",  # overcurrent, voltage, contactor, power loss, metering
    "faults_thermal_per_day",
    "faults_connector_per_day",  # lock, latch, cable, isolation, ground, EV communication
    "faults_other_per_day",
    "faults_48h",
    "disconnects_per_day",
    "offline_share",  # 1 - connected time / covered time
    "resets_per_day",
    "self_resolved_per_day",
)

FEATURE_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "power_ratio_max_48h": "peak power in the last 48 h as a share of rated",
    "power_ratio_max_7d": "peak power over 7 days as a share of rated",
    "power_ratio_drop": "drop of peak power share in the last 48 h against the days before",
    "temp_max_48h": "highest temperature in the last 48 h (°C)",
    "temp_mean_7d": "mean temperature over 7 days (°C)",
    "temp_trend_c_per_day": "temperature trend (°C per day)",
    "sessions_per_day": "sessions per day",
    "start_failure_ratio": "share of session starts that failed",
    "early_end_ratio": "share of sessions that ended early",
    "energy_per_session_kwh": "energy per session (kWh)",
    "faults_power_per_day": "power-electronics faults per day",
    "faults_thermal_per_day": "thermal faults per day",
    "faults_connector_per_day": "connector and cable faults per day",
    "faults_other_per_day": "other faults per day",
    "faults_48h": "faults in the last 48 h",
    "disconnects_per_day": "disconnects per day",
    "offline_share": "share of time offline",
    "resets_per_day": "resets per day",
    "self_resolved_per_day": "self-resolved incidents per day",
}

POWER_CATEGORIES: Final = frozenset(
    {
        taxonomy.OVERCURRENT,
        taxonomy.VOLTAGE,
        taxonomy.CONTACTOR,
        taxonomy.POWER_LOSS,
        taxonomy.METERING,
    }
)
THERMAL_CATEGORIES: Final = frozenset({taxonomy.TEMPERATURE})
CONNECTOR_CATEGORIES: Final = frozenset(
    {
        taxonomy.CONNECTOR_LOCK,
        taxonomy.LATCH,
        taxonomy.CABLE,
        taxonomy.ISOLATION,
        taxonomy.GROUND_FAULT,
        taxonomy.EV_COMMUNICATION,
    }
)

EARLY_END_REASONS: Final = frozenset(
    {
        "EmergencyStop",
        "HardReset",
        "SoftReset",
        "Reboot",
        "PowerLoss",
        "Other",
        "DeAuthorized",
        "UnlockCommand",
        "ImmediateReset",
        "EnergyLimitReached",
        "GroundFault",
        "OvercurrentFault",
        "PowerQuality",
        "Timeout",
        "Faulted",
        "ReqEnergyTransferRejected",
    }
)
"""TransactionEnded reasons (1.6 ``reason``, 2.0.1 ``stoppedReason``) that cut a session short."""


def model_family(vendor: str | None, model: str | None) -> str:
    """The model key of a hardware family, e.g. ``("Voltix", "VX-DC150")`` → ``"voltix-vx-dc150"``.

    ``"generic"`` when either is unknown. Used as ``{model_key}`` in the models topic.
    """
    if not vendor or not model:
        return "generic"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{vendor}-{model}".lower()).strip("-")
    return slug[:64] or "generic"


def _q(x: float, places: int) -> float:
    return float(round(x, places))


# ---------------------------------------------------------------- buckets


@dataclass(slots=True)
class HourBucket:
    """One interval's counters for one charge point (normally an hour)."""

    start: datetime
    end: datetime
    connected_s: float = 0.0
    disconnects: int = 0
    faults: int = 0
    faults_by_category: dict[str, int] = field(default_factory=dict)
    self_resolved: int = 0
    sessions_started: int = 0
    sessions_failed: int = 0
    sessions_ended_early: int = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    rated_power_w: float | None = None
    max_temperature_c: float | None = None
    mean_temperature_c: float | None = None
    resets: int = 0
    occupied_s: float | None = None  # connector-seconds with a vehicle plugged in (None: unknown)
    t0: float = field(init=False, repr=False, compare=False)
    t1: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.t0 = self.start.timestamp()
        self.t1 = self.end.timestamp()

    @classmethod
    def from_counters(cls, counters: ChargerCounters, start: datetime, end: datetime) -> HourBucket:
        """The cloud path: a digest's counters for ``[start, end)``."""
        return cls(
            start=start,
            end=end,
            connected_s=_q(counters.connected_s, 1),
            disconnects=counters.disconnects,
            faults=counters.faults,
            faults_by_category=dict(counters.faults_by_category),
            self_resolved=counters.self_resolved,
            sessions_started=counters.sessions_started,
            sessions_failed=counters.sessions_failed,
            sessions_ended_early=counters.sessions_ended_early,
            energy_wh=_q(counters.energy_wh, 1),
            max_power_w=None if counters.max_power_w is None else _q(counters.max_power_w, 1),
            rated_power_w=counters.rated_power_w,
            max_temperature_c=(
                None if counters.max_temperature_c is None else _q(counters.max_temperature_c, 2)
            ),
            mean_temperature_c=(
                None if counters.mean_temperature_c is None else _q(counters.mean_temperature_c, 2)
            ),
            resets=counters.resets,
            occupied_s=counters.occupied_s,
        )

    def to_counters(self) -> dict[str, Any]:
        """The fields of a :class:`ChargerCounters` this bucket fills (for the edge digest)."""
        return {
            "connected_s": self.connected_s,
            "disconnects": self.disconnects,
            "faults": self.faults,
            "faults_by_category": dict(self.faults_by_category),
            "self_resolved": self.self_resolved,
            "sessions_started": self.sessions_started,
            "sessions_failed": self.sessions_failed,
            "sessions_ended_early": self.sessions_ended_early,
            "energy_wh": self.energy_wh,
            "max_power_w": self.max_power_w,
            "rated_power_w": self.rated_power_w,
            "max_temperature_c": self.max_temperature_c,
            "mean_temperature_c": self.mean_temperature_c,
            "resets": self.resets,
            "occupied_s": self.occupied_s,
        }


# ---------------------------------------------------------------- the pure function

# Columns of a bucket's row. Every quantity is an integer held in a float64
# (seconds, 0.1 Wh, 0.1 s, 0.01 °C, counts), so sums are exact and the result
# does not depend on summation order or batch shape: one window alone and the
# same window in a batch of 1,000 give bit-identical features.
_T0, _T1, _RATIO, _TMAX, _TMEAN, _STARTED, _FAILED, _EARLY, _ENERGY = range(9)
_DISC, _RESETS, _SELFRES, _CONNECTED, _FPOWER, _FTHERMAL, _FCONN, _FTOTAL = range(9, 17)
_NCOLS: Final = 17


def bucket_row(b: HourBucket) -> tuple[float, ...]:
    """One bucket as the integer-valued row :func:`compute_features_batch` reads."""
    t0, t1 = float(round(b.t0)), float(round(b.t1))
    ratio = NO_POWER
    if b.max_power_w and b.rated_power_w and b.rated_power_w > 0 and b.energy_wh > 0:
        ratio = b.max_power_w / b.rated_power_w
    p = t = c = 0
    for cat, n in b.faults_by_category.items():
        if cat in POWER_CATEGORIES:
            p += n
        elif cat in THERMAL_CATEGORIES:
            t += n
        elif cat in CONNECTOR_CATEGORIES:
            c += n
    total = max(b.faults, sum(b.faults_by_category.values()))
    return (
        t0,
        t1,
        ratio,
        np.nan if b.max_temperature_c is None else float(round(b.max_temperature_c * 100)),
        np.nan if b.mean_temperature_c is None else float(round(b.mean_temperature_c * 100)),
        float(b.sessions_started),
        float(b.sessions_failed),
        float(b.sessions_ended_early),
        float(round(b.energy_wh * 10)),
        float(b.disconnects),
        float(b.resets),
        float(b.self_resolved),
        float(round(min(b.connected_s, max(0.0, t1 - t0)) * 10)),
        float(p),
        float(t),
        float(c),
        float(total),
    )


def rows_array(buckets: Iterable[HourBucket]) -> npt.NDArray[np.float64]:
    """Rows ``(k, 17)``, column-major (Fortran order): each quantity is contiguous."""
    rows = [bucket_row(b) for b in buckets]
    return np.asfortranarray(np.array(rows, dtype=np.float64).reshape(len(rows), _NCOLS))


def compute_features_batch(
    windows: Sequence[npt.NDArray[np.float64]], nows: Sequence[datetime]
) -> npt.NDArray[np.float64]:
    """Features of many windows at once: ``windows[i]`` are rows (:func:`rows_array`), ``nows[i]`` its end.

    Returns an ``(n, len(FEATURE_NAMES))`` float64 array. The one implementation
    (:func:`compute_features` calls it with a single window). All windows'
    rows are reduced in one pass per quantity (segment sums and maxima), so
    1,000 windows cost a few milliseconds.
    """
    n = len(windows)
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float64)
    lens = np.fromiter((len(w) for w in windows), dtype=np.int64, count=n)
    # one sentinel row at the end: every segment start is a valid index (empty windows too)
    total_rows = int(lens.sum())
    a = np.empty((total_rows + 1, _NCOLS), dtype=np.float64, order="F")
    if total_rows:
        np.concatenate(windows, axis=0, out=a[:total_rows])
    a[total_rows] = 0.0
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    has = lens > 0
    idx = np.repeat(np.arange(n), lens)
    now = np.fromiter((float(round(x.timestamp())) for x in nows), dtype=np.float64, count=n)
    lo = now - WINDOW.total_seconds()
    k_rows = len(a) - 1
    now_r = np.empty(len(a))
    lo_r = np.empty(len(a))
    now_r[:k_rows], lo_r[:k_rows] = now[idx], lo[idx]
    now_r[k_rows], lo_r[k_rows] = 0.0, 1.0  # the sentinel is never valid
    t0, t1 = a[:, _T0], a[:, _T1]
    valid = (t1 > lo_r) & (t1 <= now_r)
    recent = valid & (t1 > now_r - RECENT.total_seconds())
    before = valid & ~recent

    def seg_sum(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.add.reduceat(v, starts, axis=0)
        return np.where(has, out, 0.0)

    def seg_max(v: npt.NDArray[np.float64], empty: float) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.maximum.reduceat(v, starts)
        return np.where(has, out, empty)

    def total(col: int) -> npt.NDArray[np.float64]:
        return seg_sum(np.where(valid, a[:, col], 0.0))

    covered = seg_sum(np.where(valid, np.maximum(0.0, t1 - np.maximum(t0, lo_r)), 0.0))
    days = covered / 86400.0
    ratio = a[:, _RATIO]
    r_recent = seg_max(np.where(recent, ratio, NO_POWER), NO_POWER)
    r_before = seg_max(np.where(before, ratio, NO_POWER), NO_POWER)
    r_7d = np.maximum(r_recent, r_before)
    drop = np.where((r_recent > NO_POWER) & (r_before > NO_POWER), r_before - r_recent, 0.0)
    tmax = a[:, _TMAX]
    has_tmax = recent & ~np.isnan(tmax)
    tmax_max = seg_max(np.where(has_tmax, tmax, -1e18), -1e18)
    temp_max = np.where(seg_sum(has_tmax.astype(np.float64)) > 0, tmax_max / 100.0, NO_TEMPERATURE)
    tmean = a[:, _TMEAN]
    has_t = valid & ~np.isnan(tmean)
    y = np.where(has_t, tmean, 0.0)  # centi-degrees
    x = np.where(has_t, t0 + a[:, _T1] - 2 * lo_r, 0.0)  # half-seconds since the window opened
    k, sy, sx, sxx, sxy = (seg_sum(v) for v in (has_t.astype(np.float64), y, x, x * x, x * y))
    safe_k = np.maximum(k, 1.0)
    temp_mean = np.where(k > 0, sy / safe_k / 100.0, NO_TEMPERATURE)
    x_hi = seg_max(np.where(has_t, x, -np.inf), -np.inf)
    x_lo = -seg_max(np.where(has_t, -x, -np.inf), -np.inf)
    spread = np.where(k > 0, x_hi - x_lo, 0.0)
    denom = k * sxx - sx * sx
    ok = (k >= 2) & (denom > 0) & (spread >= 86400.0)  # at least half a day apart
    # slope in (centi-degrees per half-second) → °C per day
    slope = np.where(ok, (k * sxy - sx * sy) / np.where(ok, denom, 1.0), 0.0) * 2 * 86400 / 100
    started, failed, early = total(_STARTED), total(_FAILED), total(_EARLY)
    energy = total(_ENERGY) / 10.0
    connected = total(_CONNECTED) / 10.0
    f_power, f_thermal, f_conn = total(_FPOWER), total(_FTHERMAL), total(_FCONN)
    f_total = total(_FTOTAL)
    f_recent = seg_sum(np.where(recent, a[:, _FTOTAL], 0.0))
    safe_days = np.where(days > 0, days, 1.0)

    def per_day(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.where(days > 0, v / safe_days, 0.0)

    attempts = started + failed
    out = np.stack(
        [
            r_recent,
            r_7d,
            drop,
            temp_max,
            temp_mean,
            slope,
            per_day(started),
            np.where(attempts > 0, failed / np.maximum(attempts, 1.0), 0.0),
            np.where(started > 0, early / np.maximum(started, 1.0), 0.0),
            np.where(started > 0, energy / 1000.0 / np.maximum(started, 1.0), 0.0),
            per_day(f_power),
            per_day(f_thermal),
            per_day(f_conn),
            per_day(f_total - f_power - f_thermal - f_conn),
            f_recent,
            per_day(total(_DISC)),
            np.where(
                covered > 0,
                np.maximum(0.0, 1.0 - connected / np.where(covered > 0, covered, 1.0)),
                0.0,
            ),
            per_day(total(_RESETS)),
            per_day(total(_SELFRES)),
        ],
        axis=1,
    )
    return np.round(out, 6)


def compute_features(buckets: Iterable[HourBucket], now: datetime) -> tuple[float, ...]:
    """The feature vector over the buckets ending in ``(now - WINDOW, now]``, in FEATURE_NAMES order.

    Pure and deterministic: the same buckets (in any order) give the same numbers.
    """
    row = compute_features_batch([rows_array(buckets)], [now])[0]
    return tuple(float(v) for v in row)


def features_dict(values: Sequence[float]) -> dict[str, float]:
    """``{name: value}`` in FEATURE_NAMES order (for ``Escalation.features`` and digests)."""
    return dict(zip(FEATURE_NAMES, values, strict=True))


class _Rows:
    """Append-only, column-major rows in time order, the oldest dropped as the window slides.

    :meth:`view` is a read-only slice: appending writes past it and dropping
    moves its start, and a full buffer is replaced rather than rewritten, so a
    view handed to another thread never changes. Appending is O(1) amortised.
    """

    __slots__ = ("buf", "hi", "lo")

    def __init__(self, ncols: int) -> None:
        self.buf: npt.NDArray[np.float64] = np.empty((0, ncols), dtype=np.float64, order="F")
        self.lo = self.hi = 0

    def __len__(self) -> int:
        return self.hi - self.lo

    def view(self) -> npt.NDArray[np.float64]:
        return self.buf[self.lo : self.hi]

    def append(self, row: Sequence[float]) -> None:
        if self.hi == len(self.buf):
            live = self.hi - self.lo
            buf = np.empty(
                (live + max(8, live // 4), self.buf.shape[1]), dtype=np.float64, order="F"
            )
            buf[:live] = self.buf[self.lo : self.hi]
            self.buf, self.lo, self.hi = buf, 0, live
        self.buf[self.hi] = row
        self.hi += 1

    def drop_through(self, col: int, upto: float) -> None:
        """Forget the rows whose ``col`` (a time, ascending) is ``<= upto``."""
        if self.hi > self.lo and self.buf[self.lo, col] <= upto:
            self.lo += int(np.searchsorted(self.buf[self.lo : self.hi, col], upto, side="right"))


# ---------------------------------------------------------------- per connector

CONNECTOR_FEATURE_NAMES: Final[tuple[str, ...]] = (
    "faults_per_day",  # fault incidents on this connector (0 = the charge point as a whole)
    "faults_48h",
    "sessions_per_day",
    "start_failure_ratio",
    "early_end_ratio",
    "energy_per_session_kwh",
    "power_ratio_max_48h",
    "power_ratio_max_7d",
    "power_ratio_drop",
    "unavailable_share",  # share of the connected time spent Faulted or Unavailable
)

CONNECTOR_FEATURE_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "faults_per_day": "faults per day on this connector",
    "faults_48h": "faults in the last 48 h on this connector",
    "sessions_per_day": "sessions per day on this connector",
    "start_failure_ratio": "share of session starts on this connector that failed",
    "early_end_ratio": "share of sessions on this connector that ended early",
    "energy_per_session_kwh": "energy per session on this connector (kWh)",
    "power_ratio_max_48h": "peak power on this connector in the last 48 h as a share of rated",
    "power_ratio_max_7d": "peak power on this connector over 7 days as a share of rated",
    "power_ratio_drop": "drop of this connector's peak power share in the last 48 h",
    "unavailable_share": "share of the time this connector was faulted or unavailable",
}

UNAVAILABLE_STATUSES: Final = frozenset({"Faulted", "Unavailable"})
# a vehicle is plugged in (1.6 statuses; 2.0.1 says Occupied)
OCCUPIED_STATUSES: Final = frozenset(
    {"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"}
)

# Columns of a connector bucket's row (integer-valued like bucket_row). Only
# buckets where something happened on the connector are kept; the time a
# connector's window covers is its charge point's.
_C_T0, _C_T1, _C_STARTED, _C_FAILED, _C_EARLY, _C_ENERGY, _C_RATIO, _C_FAULTS, _C_UNAVAIL = range(9)
_C_NCOLS: Final = 9


def _covered_s(cp_rows: npt.NDArray[np.float64], now: float) -> float:
    lo = now - WINDOW.total_seconds()
    t0, t1 = cp_rows[:, _T0], cp_rows[:, _T1]
    valid = (t1 > lo) & (t1 <= now)
    return float(np.where(valid, np.maximum(0.0, t1 - np.maximum(t0, lo)), 0.0).sum())


def compute_connector_features(
    rows: npt.NDArray[np.float64], cp_rows: npt.NDArray[np.float64], now: datetime
) -> tuple[float, ...]:
    """One connector's features (:data:`CONNECTOR_FEATURE_NAMES` order) over ``(now - WINDOW, now]``.

    ``rows`` are the connector's buckets, ``cp_rows`` its charge point's
    (:func:`rows_array`): rates are per day of the time the charge point's
    window covers, ``unavailable_share`` a share of its connected time.
    """
    end = float(round(now.timestamp()))
    covered = _covered_s(cp_rows, end)
    lo, recent_lo = end - WINDOW.total_seconds(), end - RECENT.total_seconds()
    cv = (cp_rows[:, _T1] > lo) & (cp_rows[:, _T1] <= end)
    connected = float(cp_rows[cv, _CONNECTED].sum()) / 10.0
    t1 = rows[:, _C_T1]
    valid = (t1 > lo) & (t1 <= end)
    recent = valid & (t1 > recent_lo)
    before = valid & ~recent
    days = covered / 86400.0

    def tot(col: int, mask: npt.NDArray[np.bool_] = valid) -> float:
        return float(rows[mask, col].sum())

    def per_day(v: float) -> float:
        return v / days if days > 0 else 0.0

    ratio = rows[:, _C_RATIO]
    r_recent = float(ratio[recent].max()) if recent.any() else NO_POWER
    r_before = float(ratio[before].max()) if before.any() else NO_POWER
    started, failed, early = tot(_C_STARTED), tot(_C_FAILED), tot(_C_EARLY)
    attempts = started + failed
    unavailable = tot(_C_UNAVAIL) / 10.0
    out = (
        per_day(tot(_C_FAULTS)),
        tot(_C_FAULTS, recent),
        per_day(started),
        failed / attempts if attempts > 0 else 0.0,
        early / started if started > 0 else 0.0,
        tot(_C_ENERGY) / 10.0 / 1000.0 / started if started > 0 else 0.0,
        r_recent,
        max(r_recent, r_before),
        r_before - r_recent if r_recent > NO_POWER and r_before > NO_POWER else 0.0,
        min(1.0, unavailable / connected) if connected > 0 else 0.0,
    )
    return tuple(round(float(v), 6) for v in out)


@dataclass(slots=True)
class _ConnOpen:
    started: int = 0
    failed: int = 0
    early: int = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    faults: int = 0
    unavailable_s: float = 0.0

    def empty(self) -> bool:
        return not (
            self.started
            or self.failed
            or self.early
            or self.energy_wh
            or self.max_power_w
            or self.faults
            or self.unavailable_s
        )


# ---------------------------------------------------------------- the accumulator


class FeatureWindow:
    """The sliding window of one charge point; feed it events (edge) or digest counters (cloud).

    Not thread-safe: feed and close on one thread (the event loop), and hand
    :meth:`snapshot` to an executor for scoring.
    """

    def __init__(
        self,
        charge_point_id: str,
        *,
        vendor: str | None = None,
        model: str | None = None,
        firmware: str | None = None,
        rated_power_w: float | None = None,
        infer_faults: bool = True,
    ) -> None:
        self.charge_point_id = charge_point_id
        self.vendor, self.model, self.firmware = vendor, model, firmware
        self.rated_power_w = rated_power_w
        self.infer_faults = infer_faults
        self._now: datetime | None = None
        self._rows = _Rows(_NCOLS)
        self._open_start: datetime | None = None
        self._open = _Open()
        self._connected_since: datetime | None = None
        self._faulted: set[int] = set()
        self._tx: dict[str, float | None] = {}  # transaction id → meter start (Wh)
        # per connector
        self.connector_ids: set[int] = set()  # > 0, as the charge point reported them
        self.last_connector: int | None = None
        """The connector the last event concerned (0: the charge point); None when it named none."""
        self._tx_connector: dict[str, int] = {}
        self._unavailable_since: dict[int, datetime] = {}
        self._occupied_since: dict[int, datetime] = {}
        self._conn_open: dict[int, _ConnOpen] = {}
        self._conn_rows: dict[int, _Rows] = {}

    @property
    def family(self) -> str:
        return model_family(self.vendor, self.model)

    @property
    def now(self) -> datetime | None:
        """The end of the last closed bucket (the window's end)."""
        return self._now

    # -- cloud path

    def add_counters(self, counters: ChargerCounters, start: datetime, end: datetime) -> None:
        """Append one digest interval (in time order)."""
        if counters.vendor:
            self.vendor, self.model = counters.vendor, counters.model
        if counters.firmware:
            self.firmware = counters.firmware
        if counters.rated_power_w:
            self.rated_power_w = counters.rated_power_w
        self._append(HourBucket.from_counters(counters, start, end))

    # -- edge path

    def set_hardware(
        self,
        *,
        vendor: str | None = None,
        model: str | None = None,
        firmware: str | None = None,
        rated_power_w: float | None = None,
    ) -> None:
        """What the hardware profile knows (rated power) and the Boot told."""
        self.vendor = vendor or self.vendor
        self.model = model or self.model
        self.firmware = firmware or self.firmware
        self.rated_power_w = rated_power_w or self.rated_power_w

    def _bucket(self, at: datetime | None) -> _Open:
        if self._open_start is None and at is not None:
            self._open_start = at
        return self._open

    def _conn(self, connector_id: int) -> _ConnOpen:
        c = self._conn_open.get(connector_id)
        if c is None:
            c = self._conn_open[connector_id] = _ConnOpen()
        return c

    def _tx_key(self, transaction_id: str | None, connector_id: int | None) -> str:
        return transaction_id or f"c{connector_id}"

    def _unavailable_until(self, connector_id: int, at: datetime) -> None:
        since = self._unavailable_since.pop(connector_id, None)
        if since is not None:
            begin = max(since, self._open_start or since)
            self._conn(connector_id).unavailable_s += max(0.0, (at - begin).total_seconds())

    def _occupied_until(self, connector_id: int, at: datetime) -> None:
        since = self._occupied_since.pop(connector_id, None)
        if since is not None:
            begin = max(since, self._open_start or since)
            self._open.occupied_s += max(0.0, (at - begin).total_seconds())

    def feed(self, event: Event, *, ordered_reboot: bool = False) -> None:
        """One normalised event of this charge point (events of others are ignored).

        ``ordered_reboot``: this ``ConnectionDown`` is the reboot of a reset the
        agent sent — its offline time counts, a disconnect does not.
        """
        if event.charge_point_id != self.charge_point_id:
            return
        o = self._bucket(event.at)
        self.last_connector = None
        if isinstance(event, ConnectionUp):
            self._connected_since = event.at
        elif isinstance(event, ConnectionDown):
            if self._connected_since is not None:
                o.connected_s += max(
                    0.0,
                    (
                        event.at - max(self._connected_since, self._open_start or event.at)
                    ).total_seconds(),
                )
            self._connected_since = None
            if not ordered_reboot:
                o.disconnects += 1
            for cid in list(self._unavailable_since):  # unknown while it is away
                self._unavailable_until(cid, event.at)
            for cid in list(self._occupied_since):
                self._occupied_until(cid, event.at)
        elif isinstance(event, Boot):
            self.set_hardware(vendor=event.vendor, model=event.model, firmware=event.firmware)
            if self._connected_since is None:
                self._connected_since = event.at
        elif isinstance(event, ConnectorStatus):
            cid = event.connector_id
            self.last_connector = cid
            if cid > 0:
                self.connector_ids.add(cid)
            if event.status in UNAVAILABLE_STATUSES:
                self._unavailable_since.setdefault(cid, event.at)
            else:
                self._unavailable_until(cid, event.at)
            if cid > 0 and event.status in OCCUPIED_STATUSES:
                self._occupied_since.setdefault(cid, event.at)
                o.occupancy_seen = True
            else:
                self._occupied_until(cid, event.at)
            if event.faulted:
                if cid not in self._faulted:
                    self._faulted.add(cid)
                    if self.infer_faults:
                        fault = taxonomy.classify(
                            event.error_code, event.vendor_id, event.vendor_error_code, event.info
                        )
                        self._count_fault(o, fault.category, cid)
            elif event.healthy:
                self._faulted.discard(cid)
                if cid == 0:
                    self._faulted.clear()
        elif isinstance(event, ProblemReport):
            self.last_connector = event.evse_id or 0
        elif isinstance(event, TransactionStarted):
            cid = event.connector_id
            self.last_connector = cid
            if cid > 0:
                self.connector_ids.add(cid)
            o.started += 1
            self._conn(cid).started += 1
            key = self._tx_key(event.transaction_id, cid)
            self._tx[key] = event.meter_start_wh
            self._tx_connector[key] = cid
        elif isinstance(event, TransactionEnded):
            key = self._tx_key(event.transaction_id, event.connector_id)
            if key not in self._tx and event.connector_id is not None:
                key = self._tx_key(None, event.connector_id)  # started before its id came
            start = self._tx.pop(key, None)
            ended: int | None = self._tx_connector.pop(key, None)
            if ended is None:
                ended = event.connector_id
            self.last_connector = ended
            c = self._conn(ended) if ended is not None else None
            if start is not None and event.meter_stop_wh is not None:
                energy = max(0.0, event.meter_stop_wh - start)
                o.energy_wh += energy
                if c is not None:
                    c.energy_wh += energy
            if event.reason in EARLY_END_REASONS:
                o.early += 1
                if c is not None:
                    c.early += 1
        elif isinstance(event, MeterSample):
            cid = event.connector_id or self._tx_connector.get(event.transaction_id or "", 0)
            power = event.values.get("Power.Active.Import")
            if power is not None and power > 0:
                o.max_power_w = max(o.max_power_w or 0.0, power)
                if cid > 0:
                    c = self._conn(cid)
                    c.max_power_w = max(c.max_power_w or 0.0, power)
            temp = event.values.get("Temperature")
            if temp is not None:
                o.temp_max = temp if o.temp_max is None else max(o.temp_max, temp)
                o.temp_sum += temp
                o.temp_n += 1

    def _count_fault(self, o: _Open, category: str, connector_id: int | None) -> None:
        o.faults += 1
        o.by_cat[category] = o.by_cat.get(category, 0) + 1
        self._conn(connector_id or 0).faults += 1

    def record_reset(self, at: datetime | None = None) -> None:
        """The recovery engine sent a Reset (soft or hard)."""
        self._bucket(at).resets += 1

    def record_self_resolved(self, at: datetime | None = None) -> None:
        self._bucket(at).self_resolved += 1

    def record_session_failed(
        self, at: datetime | None = None, *, connector_id: int | None = None
    ) -> None:
        """Detection decided a session failed to start (on ``connector_id``, when known)."""
        self._bucket(at).failed += 1
        if connector_id is not None:
            self._conn(connector_id).failed += 1

    def record_fault(
        self, category: str, at: datetime | None = None, *, connector_id: int | None = None
    ) -> None:
        """Detection opened a fault incident (connector 0 / None: the charge point as a whole)."""
        self._count_fault(self._bucket(at), category, connector_id)

    def close(self, end: datetime, start: datetime | None = None) -> HourBucket:
        """Close the open interval at ``end`` (quantised like a digest) and slide the window."""
        o = self._open
        begin = start or self._open_start or (end - timedelta(hours=1))
        self._open_start = self._open_start or begin
        for cid in list(self._occupied_since):  # still plugged in: counted to the end, carried on
            self._occupied_until(cid, end)
            self._occupied_since[cid] = end
            o.occupancy_seen = True
        connected = o.connected_s
        if self._connected_since is not None:
            connected += max(0.0, (end - max(self._connected_since, begin)).total_seconds())
            self._connected_since = end
        b = HourBucket(
            start=begin,
            end=end,
            connected_s=_q(min(connected, (end - begin).total_seconds()), 1),
            disconnects=o.disconnects,
            faults=o.faults,
            faults_by_category=dict(sorted(o.by_cat.items())),
            self_resolved=o.self_resolved,
            sessions_started=o.started,
            sessions_failed=o.failed,
            sessions_ended_early=o.early,
            energy_wh=_q(o.energy_wh, 1),
            max_power_w=None if o.max_power_w is None else _q(o.max_power_w, 1),
            rated_power_w=self.rated_power_w,
            max_temperature_c=None if o.temp_max is None else _q(o.temp_max, 2),
            mean_temperature_c=_q(o.temp_sum / o.temp_n, 2) if o.temp_n else None,
            resets=o.resets,
            # measured when the charge point reports plugged-in statuses; a session started
            # without any is not measured (some firmware reports no Preparing/Charging)
            occupied_s=(
                _q(
                    min(
                        o.occupied_s,
                        (end - begin).total_seconds() * max(1, len(self.connector_ids)),
                    ),
                    1,
                )
                if o.occupancy_seen or not o.started
                else None
            ),
        )
        self._close_connectors(begin, end)
        self._open = _Open()
        self._open_start = end
        self._append(b)
        return b

    def _close_connectors(self, begin: datetime, end: datetime) -> None:
        for cid in list(self._unavailable_since):
            self._unavailable_until(cid, end)
            self._unavailable_since[cid] = end
        t0, t1 = float(round(begin.timestamp())), float(round(end.timestamp()))
        rated = self.rated_power_w
        for cid, c in self._conn_open.items():
            if c.empty():
                continue
            ratio = NO_POWER
            energy = _q(c.energy_wh, 1)
            if c.max_power_w and rated and rated > 0 and energy > 0:
                ratio = _q(c.max_power_w, 1) / rated
            rows = self._conn_rows.get(cid)
            if rows is None:
                rows = self._conn_rows[cid] = _Rows(_C_NCOLS)
            rows.append(
                (
                    t0,
                    t1,
                    float(c.started),
                    float(c.failed),
                    float(c.early),
                    float(round(energy * 10)),
                    ratio,
                    float(c.faults),
                    float(round(min(c.unavailable_s, max(0.0, t1 - t0)) * 10)),
                )
            )
        self._conn_open = {}
        lo = t1 - WINDOW.total_seconds()
        for cid, rows in list(self._conn_rows.items()):
            rows.drop_through(_C_T1, lo)
            if not len(rows):
                del self._conn_rows[cid]

    def _append(self, b: HourBucket) -> None:
        """Keep the bucket as a row (the window holds rows only: ~30 KiB per charge point)."""
        self._now = b.end
        row = bucket_row(b)
        self._rows.drop_through(_T1, row[_T1] - WINDOW.total_seconds())
        self._rows.append(row)

    # -- output

    def features(self, now: datetime | None = None) -> tuple[float, ...]:
        end = now or self.now
        if end is None:
            raise ValueError(f"{self.charge_point_id}: no closed interval yet")
        return tuple(float(v) for v in compute_features_batch([self._rows.view()], [end])[0])

    @property
    def rows(self) -> npt.NDArray[np.float64]:
        """The closed buckets as :func:`rows_array` rows (read-only use)."""
        return self._rows.view()

    def connector_rows(self, connector_id: int) -> npt.NDArray[np.float64]:
        """One connector's kept buckets (those where something happened on it)."""
        rows = self._conn_rows.get(connector_id)
        return rows.view() if rows is not None else np.zeros((0, _C_NCOLS), dtype=np.float64)

    def connector_features(self, now: datetime | None = None) -> dict[int, tuple[float, ...]]:
        """``{connector: features}`` (:data:`CONNECTOR_FEATURE_NAMES`) for every connector known.

        Connector 0 (the charge point as a whole) is included when something
        happened on it in the window.
        """
        end = now or self.now
        if end is None:
            return {}
        ids = sorted(self.connector_ids | {c for c in self._conn_rows if c == 0})
        return {
            cid: compute_connector_features(self.connector_rows(cid), self._rows.view(), end)
            for cid in ids
        }

    def connector_fault_times(self, connector_id: int) -> list[tuple[datetime, int]]:
        """``(bucket end, faults)`` for each closed bucket with faults on the connector."""
        rows = self.connector_rows(connector_id)
        return [
            (datetime.fromtimestamp(float(r[_C_T1]), tz=UTC), int(r[_C_FAULTS]))
            for r in rows
            if r[_C_FAULTS] > 0
        ]

    def fault_times(self) -> list[tuple[datetime, int]]:
        """``(bucket end, faults)`` for each closed bucket of the charge point with faults."""
        return [
            (datetime.fromtimestamp(float(r[_T1]), tz=UTC), int(r[_FTOTAL]))
            for r in self._rows.view()
            if r[_FTOTAL] > 0
        ]

    def snapshot(self) -> WindowSnapshot:
        """An immutable copy to score in another thread."""
        now = self.now
        if now is None:
            raise ValueError(f"{self.charge_point_id}: no closed interval yet")
        return WindowSnapshot(self.charge_point_id, self.family, now, self._rows.view())


@dataclass(slots=True)
class _Open:
    connected_s: float = 0.0
    disconnects: int = 0
    faults: int = 0
    by_cat: dict[str, int] = field(default_factory=dict)
    self_resolved: int = 0
    started: int = 0
    failed: int = 0
    early: int = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    temp_max: float | None = None
    temp_sum: float = 0.0
    temp_n: int = 0
    resets: int = 0
    occupied_s: float = 0.0
    occupancy_seen: bool = False  # a connector reported a plugged-in status in this interval


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """What scoring needs from one window, safe to hand to another thread."""

    charge_point_id: str
    family: str
    now: datetime
    rows: npt.NDArray[np.float64]

    def features(self) -> tuple[float, ...]:
        return tuple(float(v) for v in compute_features_batch([self.rows], [self.now])[0])

    @property
    def history_h(self) -> float:
        """Hours from the oldest bucket still in the window to its end (at most the window)."""
        if len(self.rows) == 0:
            return 0.0
        return (self.now.timestamp() - float(self.rows[0, _T0])) / 3600.0


def snapshot_features(snapshots: Sequence[WindowSnapshot]) -> npt.NDArray[np.float64]:
    """Features of many windows in one vectorised pass, row i for ``snapshots[i]``."""
    return compute_features_batch([s.rows for s in snapshots], [s.now for s in snapshots])


class FeatureBank:
    """The windows of every charge point of a site (edge) or of a fleet history (cloud).

    ``infer_faults=False`` for a bank fed by a recovery engine (faults are the
    incidents its detection opens, :meth:`FeatureWindow.record_fault`).
    """

    def __init__(self, *, infer_faults: bool = True) -> None:
        self.windows: dict[str, FeatureWindow] = {}
        self.infer_faults = infer_faults

    def window(self, charge_point_id: str) -> FeatureWindow:
        w = self.windows.get(charge_point_id)
        if w is None:
            w = self.windows[charge_point_id] = FeatureWindow(
                charge_point_id, infer_faults=self.infer_faults
            )
        return w

    def feed(self, event: Event, *, ordered_reboot: bool = False) -> None:
        self.window(event.charge_point_id).feed(event, ordered_reboot=ordered_reboot)

    def close(self, end: datetime, start: datetime | None = None) -> dict[str, HourBucket]:
        """Close every window's interval ``[start, end)``; the buckets are the digest's counters."""
        return {cp: w.close(end, start) for cp, w in self.windows.items()}

    def add_digest(self, digest: Digest) -> None:
        """Feed one :class:`~chargesight.common.messages.Digest` (cloud path)."""
        for c in digest.chargers:
            self.window(c.charge_point_id).add_counters(
                c, digest.interval_start, digest.interval_end
            )

    def snapshots(self) -> list[WindowSnapshot]:
        return [w.snapshot() for w in self.windows.values() if w.now is not None]
