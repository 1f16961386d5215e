"""Live runs: a whole scenario's charge points, drivers and faults against one OCPP endpoint.

Python API for tests and the demo::

    from chargesight.sim import Simulation, load_scenario

    async with Simulation(load_scenario("small"), csms.url, speed=60, seed=1,
                          drivers=False, scheduled_faults=False) as sim:
        await sim.wait_connected()                      # every charge point booted
        cp = sim.charge_point("berlin-mitte-01")        # a SimChargePoint
        sim.inject("berlin-mitte-01", "connector_lock", connector=2)
        await cp.wait_status(2, "Faulted")
        ...
    sim.ground_truth()                                  # list of ground-truth dicts

``Simulation`` connects each charge point to ``{csms_url}/{charge_point_id}``.
``csms_url`` may also be a mapping from site id to URL (one edge agent per
site), with an optional ``"*"`` entry for the other sites; a URL containing
``{site_id}`` is formatted with the charge point's site.
With ``drivers=True`` a task per site draws arrivals by hour of week and plays
sessions; with ``scheduled_faults=True`` the scenario's ``[[faults]]`` happen
at ``start_h`` (simulated hours after the start), PSU units degrade and fail,
firmware-bug episodes recur until an UpdateFirmware, flaky sites drop all
their charge points, and ``duration_h`` repairs them. ``only`` restricts the
run to some charge points. Everything random comes from ``seed``.

Time: ``speed`` simulated seconds per real second. ``start`` is the scenario's
time zero (default: now minus ``offset_h``); ``offset_h`` starts the run that
far into the scenario, so a live run can continue a generated history
(``generate_history(..., start=T0, days=D)`` then ``Simulation(..., start=T0,
offset_h=24 * D)``): faults that began earlier are already present, PSUs
already degraded, fixed firmware already installed.

Ground truth: :meth:`Simulation.ground_truth` (and ``write_ground_truth``)
lists every fault injected so far with the sessions it cost, in the same
format as the history's ``ground_truth.jsonl`` and by the same definition: a
driver who leaves without charging is shared equally between the faults met on
the way, and one who leaves after an ordinary failed start is lost to none.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from chargesight.sim.chargepoint import SessionOutcome, SimChargePoint
from chargesight.sim.clock import SimClock
from chargesight.sim.drivers import arrival_rate_per_s, ev_max_power_w, id_tag, session_energy_wh
from chargesight.sim.faults import FAULT_TYPES, PSU_TRIP_CODES, PlannedFault, plan_faults
from chargesight.sim.history import ground_truth_record
from chargesight.sim.scenario import FaultKind, Network, Scenario, Site


def site_url(csms_url: str | Mapping[str, str], site_id: str) -> str:
    """The OCPP endpoint for a site's charge points (see the module docstring)."""
    if isinstance(csms_url, str):
        url = csms_url
    elif site_id in csms_url:
        url = csms_url[site_id]
    elif "*" in csms_url:
        url = csms_url["*"]
    else:
        raise KeyError(f"no CSMS URL for site {site_id!r}")
    return url.replace("{site_id}", site_id)


class _At(Protocol):
    def __call__(
        self, t: float, fn: Callable[[], object], past: Callable[[], object] | None = None
    ) -> None: ...


class Simulation:
    """A running scenario. Use as ``async with``; or ``await start()`` / ``await stop()``."""

    def __init__(
        self,
        scenario: Scenario,
        csms_url: str | Mapping[str, str],
        *,
        speed: float = 1.0,
        seed: int | None = None,
        start: datetime | None = None,
        offset_h: float = 0.0,
        drivers: bool = True,
        scheduled_faults: bool = True,
        background_faults: bool = False,
        only: Iterable[str] | None = None,
        heartbeat_s: float | None = None,
        validate: bool = True,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.scenario = scenario
        self.network: Network = scenario.network()
        self.seed = scenario.data.network.seed if seed is None else seed
        self.clock = SimClock(speed, start, offset_h * 3600)
        self.rng = random.Random(self.seed)
        self.drivers = drivers
        self.scheduled_faults = scheduled_faults
        self.background_faults = background_faults
        wanted = set(only) if only is not None else None
        if wanted is not None:
            unknown = wanted - set(self.network.by_id)
            if unknown:
                raise KeyError(f"unknown charge point(s): {', '.join(sorted(unknown))}")
        self.charge_points: dict[str, SimChargePoint] = {}
        for spec in self.network.chargers:
            if wanted is not None and spec.id not in wanted:
                continue
            self.charge_points[spec.id] = SimChargePoint(
                spec,
                site_url(csms_url, spec.site_id),
                self.clock,
                rng=random.Random(f"{self.seed}/{spec.id}"),
                meter_interval_s=scenario.data.network.meter_interval_s,
                heartbeat_s=heartbeat_s,
                validate=validate,
                backoff_s=backoff_s,
                max_backoff_s=max_backoff_s,
            )
        self.faults: list[PlannedFault] = []
        self.sessions = 0
        self.sessions_failed = 0
        self.energy_wh = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Simulation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("simulation already started")
        self._started = True
        for cp in self.charge_points.values():
            self._spawn(cp.run())
        if self.scheduled_faults or self.background_faults:
            planned = plan_faults(
                self.scenario,
                self.network,
                10 * 365 * 86400.0,
                random.Random(self.seed + 1),
                background=self.background_faults,
            )
            if not self.scheduled_faults:
                planned = [p for p in planned if p.background]
            planned = [p for p in planned if any(c in self.charge_points for c in p.charge_points)]
            self._spawn(self._schedule(planned))
        if self.drivers:
            for site in self.network.sites:
                if any(c.id in self.charge_points for c in site.chargers):
                    self._spawn(self._drive(site))

    async def stop(self) -> None:
        """Stop drivers and schedulers, then every charge point; waits for all tasks."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(
            *(cp.stop() for cp in self.charge_points.values()), return_exceptions=True
        )
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self, duration: float | None = None) -> None:
        """Run for ``duration`` wall-clock seconds (forever if None), then stop."""
        await self.start()
        try:
            if duration is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(duration)
        finally:
            await self.stop()

    # ------------------------------------------------------------ API

    def charge_point(self, charge_point_id: str) -> SimChargePoint:
        return self.charge_points[charge_point_id]

    async def wait_for(
        self, predicate: Callable[[Simulation], bool], timeout: float = 10.0
    ) -> None:
        """Wait (real seconds) until ``predicate(self)`` holds; checked after every driver arrival."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                ev = self._changed
                await ev.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, ids: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until the charge points (default: all) have booted, connected and reported every connector."""
        cps = (
            [self.charge_points[i] for i in ids]
            if ids is not None
            else list(self.charge_points.values())
        )
        async with asyncio.timeout(timeout):
            for cp in cps:
                await cp.wait_for(lambda c: c.ready and c.boots > 0, timeout)

    def inject(
        self,
        target: str,
        kind: FaultKind,
        connector: int | None = None,
        *,
        severity: float = 0.6,
        drop_s: float = 30.0,
    ) -> PlannedFault:
        """Inject a fault now on a charge point (or, for ``flaky_connectivity``, a site).

        ``psu_degradation`` sets the early-symptom ``severity`` (0..1) and does
        not fail yet; call :meth:`fail_psu` for the hard failure.
        ``flaky_connectivity`` drops every charge point of the site for
        ``drop_s`` simulated seconds (once; call again for more drops).
        """
        now = self.clock.elapsed()
        if kind == "flaky_connectivity":
            site = self.network.site_by_id[target]
            cps = [c.id for c in site.chargers if c.id in self.charge_points]
            p = PlannedFault(f"live-{kind}-{target}-{int(now)}", kind, target, cps, 0, now)
            p.drops.append((now, drop_s))
            p.first_symptom_s = now
            self.faults.append(p)
            for cid in cps:
                self._spawn(self.charge_points[cid].drop_connection(drop_s, p))
            return p
        cp = self.charge_points[target]
        ft = FAULT_TYPES[kind]
        k = ft.default_connector if connector is None else connector
        p = PlannedFault(
            f"live-{kind}-{target}-{int(now)}-{len(self.faults)}",
            kind,
            cp.spec.site_id,
            [target],
            k,
            now,
        )
        self.faults.append(p)
        if kind == "psu_degradation":
            cp.psu_severity = severity
            p.first_symptom_s = now
            return p
        if kind == "firmware_bug":
            p.buggy_firmware = cp.firmware
        cp.inject(kind, k, planned=p)
        return p

    def fail_psu(self, charge_point_id: str) -> PlannedFault:
        """The degraded PSU fails for good (PowerSwitchFailure, needs a replacement)."""
        cp = self.charge_points[charge_point_id]
        p = next(
            (
                f
                for f in reversed(self.faults)
                if f.kind == "psu_degradation" and charge_point_id in f.charge_points
            ),
            None,
        )
        if p is None:
            p = self.inject(charge_point_id, "psu_degradation", severity=1.0)
        p.fail_s = self.clock.elapsed()
        cp.psu_severity = 1.0
        cp.inject("psu_degradation", 0, planned=p)
        return p

    def repair(self, fault: PlannedFault) -> None:
        """A technician repaired it (the ground truth gets ``ended_at``)."""
        fault.end_s = self.clock.elapsed()
        for cid in fault.charge_points:
            cp = self.charge_points.get(cid)
            if cp is not None:
                cp.repair(fault.fault_id)
                if fault.kind == "psu_degradation":
                    cp.psu_severity = 0.0

    def ground_truth(self) -> list[dict[str, Any]]:
        out = []
        for f in self.faults:
            site = self.network.site_by_id[f.site_id]
            cp = self.network.by_id[f.charge_points[0]] if f.scope != "site" else None
            if f.kind == "firmware_bug" and not f.first_symptom_s and not f.episodes:
                continue
            out.append(
                ground_truth_record(
                    f,
                    self.network,
                    cp,
                    site.spec.currency,
                    site.spec.price_per_kwh,
                    lambda s: self.clock.start + _td(s),
                    failed_s=f.fail_s,
                )
            )
        return out

    def write_ground_truth(self, path: str | Path) -> None:
        with Path(path).open("wb") as fh:
            for rec in self.ground_truth():
                fh.write(orjson.dumps(rec) + b"\n")

    # ------------------------------------------------------------ scheduled faults

    async def _schedule(self, planned: list[PlannedFault]) -> None:
        """Play planned events in time order. Events before the clock's start (``offset_h``)
        are replayed at once in their ``past`` form (the state they leave), or skipped."""
        heap: list[tuple[float, int, Callable[[], object], Callable[[], object] | None]] = []
        seq = itertools.count()

        def at(
            t: float, fn: Callable[[], object], past: Callable[[], object] | None = None
        ) -> None:
            heapq.heappush(heap, (t, next(seq), fn, past))

        for p in planned:
            self._plan_live(p, at)
        now = self.clock.elapsed()
        while heap:
            t, _, fn, past = heapq.heappop(heap)
            if t < now:
                if past is not None:
                    past()
                continue
            await self.clock.sleep_until(t)
            fn()

    def _plan_live(self, p: PlannedFault, at: _At) -> None:
        cps = [self.charge_points[c] for c in p.charge_points if c in self.charge_points]
        if not cps:
            return

        def register() -> None:
            if p not in self.faults:
                self.faults.append(p)

        if p.kind == "flaky_connectivity":
            at(p.start_s, register, register)
            for t, dur in p.drops:

                def drop(dur: float = dur, t: float = t) -> None:
                    if p.first_symptom_s is None:
                        p.first_symptom_s = t
                    for cp in cps:
                        self._spawn(cp.drop_connection(dur, p))

                at(t, drop)
            return
        cp = cps[0]
        if p.kind == "psu_degradation":
            assert p.fail_s is not None
            span = max(1.0, p.fail_s - p.start_s)
            at(p.start_s, register, register)
            steps = 24
            for i in range(1, steps + 1):
                t = p.start_s + span * i / steps

                def ramp(sev: float = i / steps, t: float = t) -> None:
                    cp.psu_severity = sev
                    if p.first_symptom_s is None:
                        p.first_symptom_s = t
                    if sev < 1 and self.rng.random() < sev:  # an early trip a soft reset clears
                        cp.inject(
                            "psu_degradation",
                            1,
                            planned=p,
                            code=self.rng.choice(PSU_TRIP_CODES),
                            cleared_by=frozenset({"soft_reset", "hard_reset"}),
                        )

                def ramp_past(sev: float = i / steps, t: float = t) -> None:
                    cp.psu_severity = sev
                    if p.first_symptom_s is None:
                        p.first_symptom_s = t

                at(t, ramp, ramp_past)

            def fail() -> None:
                cp.inject("psu_degradation", 0, planned=p)

            at(p.fail_s, fail, fail)
        elif p.kind == "firmware_bug":
            at(p.start_s, register, register)
            for t in p.episodes:

                def episode() -> None:
                    if cp.firmware == p.buggy_firmware and not cp.fault_on(0, ("firmware_bug",)):
                        cp.inject("firmware_bug", 0, planned=p)

                at(t, episode)
            if p.end_s is not None:
                # the fixed firmware is rolled out: the operator's UpdateFirmware
                def updated() -> None:
                    cp.firmware = p.fixed_firmware or cp.firmware

                at(
                    p.end_s,
                    lambda: cp.spawn(cp._update_firmware(p.fixed_firmware or "", None)),
                    updated,
                )
            return
        else:

            def begin() -> None:
                register()
                cp.inject(p.kind, p.connector, planned=p)

            at(p.start_s, begin, begin)
        if p.end_s is not None:

            def repaired() -> None:
                cp.repair(p.fault_id)
                if p.kind == "psu_degradation":
                    cp.psu_severity = 0.0

            at(p.end_s, repaired, repaired)

    # ------------------------------------------------------------ drivers

    async def _drive(self, site: Site) -> None:
        dr = self.scenario.data.drivers
        rng = random.Random(f"{self.seed}/drivers/{site.id}")
        conns = [
            (self.charge_points[c.id], k)
            for c in site.chargers
            if c.id in self.charge_points
            for k in range(1, c.connector_count + 1)
        ]
        while True:
            now = self.clock.now()
            how = now.weekday() * 24 + now.hour
            rate = arrival_rate_per_s(site, dr, how, now.hour)
            to_hour = 3600 - (now.minute * 60 + now.second)
            if rate <= 0:
                await self.clock.sleep(to_hour)
                continue
            dt = rng.expovariate(rate)
            if dt > to_hour:
                await self.clock.sleep(to_hour)
                continue
            await self.clock.sleep(dt)
            self._spawn(self._arrival(conns, rng, site))

    async def _arrival(
        self, conns: list[tuple[SimChargePoint, int]], rng: random.Random, site: Site
    ) -> None:
        try:
            await self._arrive(conns, rng)
        finally:
            self._notify()

    async def _arrive(self, conns: list[tuple[SimChargePoint, int]], rng: random.Random) -> None:
        """One driver walks the site's connectors from a random one, tries at most two starts,
        and books whom a driver who leaves without charging was lost to (see :class:`_Visit`)."""
        dr = self.scenario.data.drivers
        n = len(conns)
        first = rng.randrange(n)
        tag = id_tag(rng, dr)
        visit = _Visit()
        tries = 0
        wanted = 0.0
        for j in range(n):
            cp, k = conns[(first + j) % n]
            v = cp.status(k)
            if v.status == "Faulted":
                # the fault that takes the connector out (not any fault of the unit, such
                # as a start failure that leaves it Available)
                f = cp._blocking_fault(k)
                visit.meet(f.planned if f else None)
                continue
            drop = cp.dropped_by()
            if drop is not None and v.status == "Available":
                # the charge point cannot reach its CSMS: the start fails (no authorisation)
                tries += 1
                self.sessions_failed += 1
                drop.failed_starts += 1
                visit.meet(drop)
                if tries >= 2:
                    break
                continue
            if v.status != "Available" or not cp.connected:
                continue
            dc = cp.spec.hw.dc
            wanted = session_energy_wh(rng, dc, dr)
            tries += 1
            ev_power = ev_max_power_w(rng, dc)
            ordinary_fail = rng.random() < dr.failed_start_ratio
            out: SessionOutcome = await cp.start_session(
                k, tag, wanted, ev_power, fail_start=ordinary_fail
            )
            if out.charged:
                self.sessions += 1
                self.energy_wh += out.energy_wh
                if out.reason == "ended_early" and out.blame is not None:
                    out.blame.energy_lost_wh += max(0.0, out.wanted_wh - out.energy_wh)
                return
            self.sessions_failed += 1
            if out.blame is not None:
                visit.meet(out.blame)
            elif ordinary_fail and out.reason == "failed_start":
                visit.ordinary_failed_start()
            if tries >= 2:
                break
        if visit.met:
            # drawn whenever a fault was met, as before, so runs with one seed stay comparable
            visit.lost(wanted or session_energy_wh(rng, conns[first][0].spec.hw.dc, dr))


class _Visit:
    """The faults one driver met on the way along a site's connectors, and whom a driver
    who leaves without charging is lost to: the history's definition
    (:func:`chargesight.sim.history.ground_truth_record`).

    A driver who cannot charge is lost to every fault they met (a connector out, a start that
    failed, a charge point offline), in equal shares, so identical faults at a site share a
    driver evenly whatever the order the driver tried them in. One who leaves after an
    ordinary failed start (the drivers' ``failed_start_ratio``) is lost to none: they had the
    same chance at the connector a fault took away. What counts is the last thing that went
    wrong: a fault met after an ordinary failed start (the connector the driver would have
    retried at is out, or fails too) makes the driver the faults' again.
    """

    __slots__ = ("gave_up", "met")

    def __init__(self) -> None:
        self.met: list[PlannedFault] = []
        self.gave_up = False

    def meet(self, f: PlannedFault | None) -> None:
        if f is None:
            return
        if not any(m is f for m in self.met):
            self.met.append(f)
        self.gave_up = False

    def ordinary_failed_start(self) -> None:
        self.gave_up = True

    def lost(self, wanted_wh: float) -> None:
        """The driver leaves without charging; ``wanted_wh`` is what they came for."""
        if self.gave_up or not self.met:
            return
        share = 1.0 / len(self.met)
        for f in self.met:
            f.sessions_lost += share
            f.energy_lost_wh += wanted_wh * share


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)
