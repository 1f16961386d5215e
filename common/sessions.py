"""Sessions a fault cut short, and the energy their drivers did not get.

A fault that stops a charge point mid-session costs the driver the rest of the
charge they came for. What that rest was, nobody reports, but the car tells
the charger its state of charge (``SoC`` in MeterValues, DC charging) and the
meter says how much energy went in, so the edge can estimate it:

1. **From the SoC** (DC): energy per SoC point from the session's own samples
   (first and last sample with a SoC: ΔWh ÷ ΔSoC), the SoC when it stopped
   (the last sample's SoC plus the energy after it), and the points still
   missing to the SoC this charge point's sessions end at when nothing
   interrupts them (the median of their final SoC, 100 until five are known):
   ``unmet = (target − SoC at the stop) × Wh per point``.
2. **From the unit's past sessions** (AC, or no SoC): the mean residual of the
   energies of its recent complete sessions that went beyond what this one had
   delivered, ``E[W − d | W > d]``: what a session that had got this far still
   wanted, on average.
3. **Half its past sessions' mean** when none of them got as far.

No estimate (``None``) when the unit has no SoC and too few past sessions.

:class:`SessionTracker` follows sessions from the normalised events
(:mod:`chargesight.common.events`), and the recovery engine *claims* the
sessions an incident cut short when it opens: those in progress on the
affected connectors, and those that ended with an early-end reason just
before (a charger may send StopTransaction before the StatusNotification
that says why). :meth:`SessionTracker.tally` then gives the count and the
unmet energy for the incident's self-resolved record or escalation. The
simulator's history generator calls :func:`unmet_energy_wh` with what the edge
would have seen.

Sans I/O, times from the events.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from chargesight.common.events import Event, MeterSample, TransactionEnded, TransactionStarted
from chargesight.common.features import EARLY_END_REASONS

CLAIM_BEFORE_S: Final = 60.0
"""A session that ended with an early-end reason this long before an incident opened was cut
by it (the stop can arrive before the status that says why)."""
MIN_SOC_SPAN: Final = 2.0
"""SoC points between the first and the last sample for a Wh-per-point estimate."""
MIN_TARGET_SAMPLES: Final = 5
DEFAULT_TARGET_SOC: Final = 100.0
MIN_PAST_SESSIONS: Final = 5
PAST_SESSIONS: Final = 200
"""Complete sessions kept per charge point (energies and final SoC)."""

SocSample = tuple[float, float]
"""(SoC %, meter register Wh) of one sample."""


def soc_at_stop(
    first: SocSample | None, last: SocSample | None, stop_register_wh: float | None
) -> tuple[float, float | None] | None:
    """The SoC when the session stopped, and the Wh per SoC point it was charging at.

    From the first and last samples with a SoC (at least ``MIN_SOC_SPAN`` points apart, else
    ``None``): the last sample's SoC moved on by the energy after it (``stop_register_wh``).
    With no energy between the samples the rate is unknown (``None``) and the SoC is the last
    sample's."""
    if first is None or last is None or last[0] - first[0] < MIN_SOC_SPAN:
        return None
    wh = last[1] - first[1]
    if wh <= 0:
        return min(100.0, last[0]), None
    per_point = wh / (last[0] - first[0])
    after = max(0.0, (stop_register_wh or last[1]) - last[1])
    return min(100.0, last[0] + after / per_point), per_point


def unmet_energy_wh(
    delivered_wh: float,
    first: SocSample | None,
    last: SocSample | None,
    stop_register_wh: float | None,
    target_soc: float,
    past_energies_wh: Sequence[float],
) -> float | None:
    """What the driver of a session cut short at ``delivered_wh`` still wanted (module docstring).

    ``first``/``last``: the session's first and last samples carrying a SoC; ``stop_register_wh``
    the meter register when it stopped (the energy after the last sample moved the SoC on).
    ``past_energies_wh``: the unit's recent complete sessions.
    """
    soc, per_point = soc_at_stop(first, last, stop_register_wh) or (0.0, None)
    if per_point is not None:
        return max(0.0, target_soc - soc) * per_point
    if len(past_energies_wh) < MIN_PAST_SESSIONS:
        return None
    beyond = [w - delivered_wh for w in past_energies_wh if w > delivered_wh]
    if beyond:
        return sum(beyond) / len(beyond)
    return sum(past_energies_wh) / len(past_energies_wh) / 2.0


@dataclass(slots=True)
class _Live:
    connector: int
    start_wh: float | None
    register_wh: float | None = None
    first: SocSample | None = None
    last: SocSample | None = None
    claims: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Ended:
    connector: int | None
    at: datetime
    claimable: bool  # ended early and no incident claimed it yet
    unmet_wh: float | None


@dataclass(slots=True)
class CutTally:
    """The sessions an incident cut short: how many, and what their drivers did not get."""

    sessions: int = 0
    energy_unmet_wh: float | None = 0.0
    """``None`` when one of them could not be estimated."""

    def add(self, unmet_wh: float | None) -> None:
        self.sessions += 1
        if unmet_wh is None or self.energy_unmet_wh is None:
            self.energy_unmet_wh = None
        else:
            self.energy_unmet_wh += unmet_wh


class _Unit:
    __slots__ = ("ended", "energies", "finals", "live")

    def __init__(self) -> None:
        self.live: dict[str, _Live] = {}  # transaction key → session
        self.ended: deque[_Ended] = deque(maxlen=32)
        self.energies: deque[float] = deque(maxlen=PAST_SESSIONS)
        self.finals: deque[float] = deque(maxlen=PAST_SESSIONS)

    def target_soc(self) -> float:
        if len(self.finals) < MIN_TARGET_SAMPLES:
            return DEFAULT_TARGET_SOC
        return statistics.median(self.finals)


def _key(transaction_id: str | None, connector: int | None) -> str:
    return transaction_id if transaction_id else f"connector-{connector}"


class SessionTracker:
    """Sessions per charge point from the events, and what incidents cut short."""

    def __init__(self) -> None:
        self._units: dict[str, _Unit] = {}
        self._tallies: dict[str, CutTally] = {}

    def _unit(self, charge_point_id: str) -> _Unit:
        u = self._units.get(charge_point_id)
        if u is None:
            u = self._units[charge_point_id] = _Unit()
        return u

    # ------------------------------------------------------------ events

    def feed(self, event: Event) -> None:
        u: _Unit | None
        if isinstance(event, TransactionStarted):
            u = self._unit(event.charge_point_id)
            # a new session on a connector: whatever was left there (a stop never seen) is over
            u.live = {k: v for k, v in u.live.items() if v.connector != event.connector_id}
            u.live[_key(event.transaction_id, event.connector_id)] = _Live(
                event.connector_id, event.meter_start_wh, event.meter_start_wh
            )
        elif isinstance(event, MeterSample):
            u = self._units.get(event.charge_point_id)
            if u is None:
                return
            s = self._find(u, event.transaction_id, event.connector_id or None)
            if s is None:
                return
            wh = event.values.get("Energy.Active.Import.Register")
            if wh is not None:
                s.register_wh = wh
                if s.start_wh is None:
                    s.start_wh = wh
            soc = event.values.get("SoC")
            if soc is not None and wh is not None:
                if s.first is None:
                    s.first = (soc, wh)
                s.last = (soc, wh)
        elif isinstance(event, TransactionEnded):
            u = self._units.get(event.charge_point_id)
            if u is None:
                return
            s = self._find(u, event.transaction_id, event.connector_id)
            if s is None:
                return
            u.live = {k: v for k, v in u.live.items() if v is not s}
            if event.meter_stop_wh is not None:
                s.register_wh = event.meter_stop_wh
            early = event.reason in EARLY_END_REASONS
            if not early:  # it ended as the driver wanted, incident or not
                self._complete(u, s)
                return
            unmet = self._unmet(u, s)
            for key in s.claims:
                if key in self._tallies:
                    self._tallies[key].add(unmet)
            u.ended.append(_Ended(s.connector, event.at, not s.claims, unmet))

    def _find(self, u: _Unit, transaction_id: str | None, connector: int | None) -> _Live | None:
        if transaction_id and transaction_id in u.live:
            return u.live[transaction_id]
        for s in u.live.values():
            if connector is not None and s.connector == connector:
                return s
        if connector is None and len(u.live) == 1:
            return next(iter(u.live.values()))
        return None

    @staticmethod
    def _delivered(s: _Live) -> float:
        if s.start_wh is None or s.register_wh is None:
            return 0.0
        return max(0.0, s.register_wh - s.start_wh)

    def _unmet(self, u: _Unit, s: _Live) -> float | None:
        return unmet_energy_wh(
            self._delivered(s), s.first, s.last, s.register_wh, u.target_soc(), list(u.energies)
        )

    def _complete(self, u: _Unit, s: _Live) -> None:
        delivered = self._delivered(s)
        if delivered > 0:
            u.energies.append(delivered)
        stop = soc_at_stop(s.first, s.last, s.register_wh)
        if stop is not None:
            u.finals.append(stop[0])

    # ------------------------------------------------------------ incidents

    def claim(
        self, key: str, charge_point_id: str, connectors: Iterable[int] | None, at: datetime
    ) -> None:
        """Incident ``key`` opened at ``at`` on ``connectors`` of the unit (``None``: all of them):
        the sessions in progress there, and those that ended early just before, are its."""
        u = self._units.get(charge_point_id)
        tally = self._tallies.setdefault(key, CutTally())
        if u is None:
            return
        wanted = None if connectors is None else set(connectors)
        for s in u.live.values():
            if wanted is None or s.connector in wanted:
                s.claims.add(key)
        for e in u.ended:
            if (
                e.claimable
                and (wanted is None or e.connector in wanted)
                and 0.0 <= (at - e.at).total_seconds() <= CLAIM_BEFORE_S
            ):
                e.claimable = False  # one incident's
                tally.add(e.unmet_wh)

    def tally(self, key: str) -> CutTally | None:
        """The sessions ``key`` cut short so far: claimed ones that ended early. A claimed session
        still in progress has not been cut (the fault let it go on)."""
        t = self._tallies.get(key)
        return None if t is None else CutTally(t.sessions, t.energy_unmet_wh)

    def release(self, key: str) -> None:
        self._tallies.pop(key, None)
        for u in self._units.values():
            for s in u.live.values():
                s.claims.discard(key)

    def forget(self, charge_point_id: str) -> None:
        self._units.pop(charge_point_id, None)
