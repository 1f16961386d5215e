"""The recovery engine: fix a fault locally inside the window, or escalate it once, with evidence.

:class:`RecoveryEngine` consumes the normalised event stream (``handle(event)``,
synchronous, never blocks), feeds the sans-I/O :class:`~.detection.Detector`,
and for every incident runs a playbook (:mod:`.playbooks`) in a task it owns:
confirm, availability toggle, unlock, soft reset, hard reset, hook
power-cycle — waiting for the recovery signal after each step, every timer a
fraction of ``recovery.window_s``.

Rules it enforces (CONTRACT.md, "Recovery semantics"; issue 4):

* safety-critical and non-resettable faults: nothing is sent, escalated at once;
* never a charge point wide step (reset, hook) while another connector of the
  charge point is in a transaction: it waits for the session to end inside the
  window and records ``skipped`` if it does not;
* at most ``max_resets_per_day`` resets per charge point per rolling 24 h
  (0 disables automatic resets; a profile may lower it);
* charge points in maintenance are never acted on, nor escalated;
* an ``Inoperative`` sent by the availability toggle is always followed by
  ``Operative``, also when a later step fails or the run is cancelled;
* recovered inside the window → self-resolved (in the digest), no escalation;
  not recovered → exactly one :class:`Escalation`, at the window's end at the
  latest (``window_s`` + evidence time, well inside ``window_s + 30`` s);
* a fault recovered after its escalation is reported as cleared (digest
  ``cleared_incidents`` and, by default, an ``Escalation`` with
  ``status = "cleared"`` and the same ``incident_id``).

Every action is audited (:mod:`.audit`); :meth:`RecoveryEngine.status` serves
``chargesight edge status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from chargesight.common import taxonomy
from chargesight.common.events import Boot, ConnectionDown, ConnectionUp, Event
from chargesight.common.messages import (
    Digest,
    Escalation,
    EvidenceFrame,
    Hardware,
    RecoveryAttempt,
    SelfResolved,
)
from chargesight.common.sessions import SessionTracker
from chargesight.edge import playbooks
from chargesight.edge.audit import AuditEntry, Auditor, MemoryAudit
from chargesight.edge.config import RecoverySection
from chargesight.edge.detection import (
    Absorbed,
    Closed,
    DetectionParams,
    Detector,
    Incident,
    Opened,
    Output,
    Recovered,
    Reopened,
    SessionFailed,
    Updated,
)
from chargesight.edge.digest import DigestCollector
from chargesight.edge.errors import CallRejected, CallTimeout, ChargePointNotConnected, EdgeError
from chargesight.edge.hooks import HookRunner
from chargesight.edge.identity import Identity
from chargesight.edge.profiles import GENERIC, Profile, ProfileRegistry, default_hooks_dir

log = structlog.get_logger("chargesight.edge.recovery")

EVIDENCE_BEFORE = timedelta(seconds=120)
EVIDENCE_LIMIT = 50
EVIDENCE_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
TICK_S = 1.0
VERSION_201 = ("2.0.1", "2.1")


# ---------------------------------------------------------------- interfaces


class CallInjector(Protocol):
    """The proxy's call injection (``edge/proxy.py``)."""

    async def call(
        self,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a CALL to the charge point, return the CALLRESULT payload.

        Raises CallRejected (CALLERROR), CallTimeout, ChargePointNotConnected.
        """
        ...

    def version(self, charge_point_id: str) -> str | None:
        """ "1.6" | "2.0.1" | "2.1", or None when not connected."""
        ...


EvidenceSource = Callable[[str, datetime, datetime, int], Awaitable[list[EvidenceFrame]]]
"""``evidence(charge_point_id, start, end, limit)`` from the OCPP log."""

EscalationSink = Callable[[Escalation], Awaitable[None]]
"""``escalate(escalation)``: the outbox; returns once committed durably."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The event loop's monotonic time and the UTC wall clock."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time for tests: ``sleep`` waits until :meth:`advance` moves past its deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._mono)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    async def settle(self, rounds: int = 50) -> None:
        """Let every ready task run until they all wait again."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order and letting them run."""
        target = self._mono + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._mono = max(self._mono, deadline)
            fut.set_result(None)
            await self.settle()
        self._mono = target
        await self.settle()


# ---------------------------------------------------------------- engine state


@dataclass(slots=True)
class _Run:
    incident: Incident
    deadline: float
    attempts: list[RecoveryAttempt] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    inoperative: set[int] = field(default_factory=set)  # connectors (0 = CP) left Inoperative
    outcome: str = "running"  # running | self_resolved | escalated | absorbed | maintenance
    fixed_by: str | None = None
    escalated_at: datetime | None = None
    reruns: int = 0  # playbook runs the cloud asked for after the escalation


class RecoveryEngine:
    """One site's detection and recovery. Lifecycle: ``await start()`` … ``await stop()``.

    ``handle(event)`` is synchronous and never blocks; the engine owns every
    task it creates and cancels/awaits them in :meth:`stop` (cancelling a run
    still restores availability).
    """

    def __init__(
        self,
        *,
        site_id: str,
        config: RecoverySection,
        call: CallInjector,
        evidence: EvidenceSource,
        escalate: EscalationSink,
        audit: Auditor | None = None,
        clock: Clock | None = None,
        profiles: ProfileRegistry | None = None,
        hooks: HookRunner | None = None,
        currency: str | None = None,
        price_per_kwh: float | None = None,
        publish_digest: Callable[[Digest], Awaitable[None]] | None = None,
        send_cleared_updates: bool = True,
        anomaly_score: Callable[[str], float | None] | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.site_id = site_id
        self.config = config
        self._call = call
        self._evidence = evidence
        self._escalate = escalate
        self.audit: Auditor = audit or MemoryAudit()
        self.clock: Clock = clock or SystemClock()
        self.profiles = profiles or ProfileRegistry.load(config.profiles_dir)
        hooks_dir = config.hooks_dir or default_hooks_dir()
        self.hooks = hooks or HookRunner(hooks_dir, config.hook_timeout_s, site_id=site_id)
        self._publish_digest = publish_digest
        self._send_cleared = send_cleared_updates
        self._anomaly_score = anomaly_score
        self.detector = Detector(
            DetectionParams(
                flap_period_s=config.flap_period_s,
                heartbeat_grace=config.heartbeat_grace,
                site_event_window_s=config.site_event_window_s,
                site_event_min_fraction=config.site_event_min_fraction,
            ),
            profile_for=self.profile_for,
            new_id=new_id,
        )
        self.digest = DigestCollector(
            site_id, datetime.now(UTC), currency=currency, price_per_kwh=price_per_kwh
        )
        self.sessions = SessionTracker()
        """Sessions per charge point, and those each incident cut short."""
        self.maintenance: set[str] = set(config.maintenance)
        self._identities: dict[str, Identity] = {}
        self._profiles: dict[str, Profile] = {}
        self._runs: dict[str, _Run] = {}
        self._resets: dict[str, deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent_outcomes: deque[dict[str, Any]] = deque(maxlen=100)
        self._started = False
        self._closing = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("recovery engine already started")
        self._started = True
        self.digest.interval_start = self.clock.now()
        self._spawn(self._ticker(), "recovery-ticker")
        if self._publish_digest is not None:
            self._spawn(self._digest_loop(), "digest-loop")

    async def stop(self) -> None:
        """Cancel every run (availability is restored) and wait for all tasks."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> RecoveryEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recovery task failed", task=task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------ public API

    def handle(self, event: Event) -> None:
        """Take one normalised event. Synchronous, never blocks."""
        if self._closing:
            return  # shutting down: events of closing connections are of no use any more
        if not self._started:
            raise RuntimeError("recovery engine is not started")
        if self._identities and event.charge_point_id in self._identities:
            self._take_identity(event.charge_point_id)
        if isinstance(event, Boot | ConnectionUp):
            self._profiles.pop(event.charge_point_id, None)
        mono = self.clock.monotonic()
        ordered = isinstance(event, ConnectionDown) and self.detector.ordered_reboot(
            event.charge_point_id, mono
        )
        self.digest.feed(event, ordered_reboot=ordered)
        self.sessions.feed(event)
        outputs = self.detector.feed(event, mono)
        if isinstance(event, ConnectionUp):
            self.detector.reboot_expected.pop(event.charge_point_id, None)
        if isinstance(event, Boot):
            self._hardware_known(event.charge_point_id)
        if isinstance(event, ConnectionUp):
            for run in self._runs.values():
                inc = run.incident
                if inc.charge_point_id != event.charge_point_id:
                    continue
                run.wake.set()
                if (
                    run.outcome == "escalated"
                    and inc.kind == "connectivity"
                    and (inc.state == "open" and self._started and not self._closing)
                ):
                    # back after the escalation: ask its connectors to report, as inside the
                    # window, or a charger that reconnects quietly stays "lost" for good
                    self._spawn(self._confirm_back(inc), "confirm-after-escalation")
        self._dispatch(outputs)

    def set_maintenance(self, charge_point_id: str, on: bool) -> None:
        """Put a charge point in maintenance (never acted on) or take it out; audited soon
        after (see :meth:`switch_maintenance` for a switch that must outlive a restart)."""
        self._maintenance(charge_point_id, on)
        self._audit_soon(self._maintenance_entry(charge_point_id, on))

    async def switch_maintenance(self, charge_point_id: str, on: bool) -> None:
        """An operator's switch: recorded in the audit trail first (raises when it cannot
        be: then nothing changes), then in effect. The agent restores the latest switch per
        charge point from that trail at start (:meth:`restore_maintenance`)."""
        await self.audit.record(self._maintenance_entry(charge_point_id, on))
        self._maintenance(charge_point_id, on)

    def restore_maintenance(self, switches: dict[str, bool]) -> None:
        """Before start: the charge points operators left in maintenance (latest switch per
        charge point → on), added to the config's ``maintenance`` list. A switch off does
        not take a unit the config lists out of maintenance after a restart: the config may
        be newer than the switch, and in doubt a unit is not touched."""
        self.maintenance.update(cp for cp, on in switches.items() if on)

    def restore_identities(self, identities: dict[str, Identity]) -> None:
        """Before start: what each charge point told a previous run (edge/identity.py), taken
        when it is next heard from (charge points reconnect without booting again). Until
        then it is not a known charge point: one that never comes back does not count in the
        site's share of failing units."""
        self._identities.update(identities)

    def _take_identity(self, charge_point_id: str) -> None:
        hardware, interval = self._identities.pop(charge_point_id)
        state = self.detector.charge_point(charge_point_id)
        if hardware is not None and state.hardware == Hardware():
            state.hardware = hardware
            window = self.digest.bank.window(charge_point_id)
            window.set_hardware(
                vendor=hardware.vendor, model=hardware.model, firmware=hardware.firmware
            )
            self._hardware_known(charge_point_id)
        if interval is not None and state.heartbeat_interval_s is None:
            state.heartbeat_interval_s = interval

    def _hardware_known(self, charge_point_id: str) -> None:
        """The detector has a charge point's hardware (a Boot, or a restored identity): its
        profile follows it, and the digest takes the rated power from that profile."""
        self._profiles.pop(charge_point_id, None)
        self.digest.set_rated_power(
            charge_point_id, self.profile_for(charge_point_id).rated_power(1)
        )

    def restore_resets(self, sent: Iterable[tuple[str, datetime]]) -> None:
        """Before start: resets sent before a restart (charge point, when; from the audit
        trail) count against ``max_resets_per_day`` as if this process had sent them, those
        of the last 24 hours — a gateway rebooting in a loop does not reset a charger
        without bound.

        Ages are taken from the later of the clock and the newest reset: a gateway whose
        clock starts behind (no RTC, no NTP yet) would otherwise see every reset as not
        yet sent and count none."""
        ordered = sorted(sent, key=lambda x: x[1])
        if not ordered:
            return
        now = max(self.clock.now(), ordered[-1][1])
        mono = self.clock.monotonic()
        for cp, at in ordered:
            age = (now - at).total_seconds()
            if age < 86400:
                self._resets.setdefault(cp, deque()).append(mono - age)

    def _maintenance_entry(self, charge_point_id: str, on: bool) -> AuditEntry:
        return AuditEntry(
            at=self.clock.now(),
            actor="operator",
            action="maintenance",
            result="on" if on else "off",
            charge_point_id=charge_point_id,
        )

    def _maintenance(self, charge_point_id: str, on: bool) -> None:
        if on:
            self.maintenance.add(charge_point_id)
        else:
            self.maintenance.discard(charge_point_id)
            # Incidents left alone during maintenance get a fresh window now.
            if self._started and not self._closing:
                for run in list(self._runs.values()):
                    inc = run.incident
                    if (
                        run.outcome == "maintenance"
                        and inc.charge_point_id == charge_point_id
                        and inc.state == "open"
                    ):
                        self._start_run(inc, self.clock.monotonic() + self.config.window_s)

    def profile_for(self, charge_point_id: str) -> Profile:
        profile = self._profiles.get(charge_point_id)
        if profile is None:
            cp = self.detector.charge_points.get(charge_point_id)
            if cp is None:
                return GENERIC
            hw = cp.hardware
            profile = self.profiles.match(hw.vendor, hw.model, hw.firmware, cp.version)
            self._profiles[charge_point_id] = profile
        return profile

    def cut_digest(self) -> Digest:
        """The digest since the last cut (call every ``digest_interval_s``)."""
        return self.digest.cut(self.clock.now())

    def status(self) -> dict[str, Any]:
        """Open incidents, recent actions and outcomes, for ``chargesight edge status``."""
        now_mono = self.clock.monotonic()
        incidents = []
        for run in self._runs.values():
            inc = run.incident
            if inc.state == "closed":
                continue
            incidents.append(
                {
                    "incident_id": inc.id,
                    "kind": inc.kind,
                    "scope": inc.scope,
                    "charge_point_id": inc.charge_point_id,
                    "connector_id": inc.connector_id,
                    "chargers": list(inc.chargers),
                    "fault": inc.fault.model_dump(mode="json"),
                    "state": inc.state,
                    "outcome": run.outcome,
                    "started_at": inc.started_at.isoformat(),
                    "window_left_s": max(0.0, round(run.deadline - now_mono, 1)),
                    "steps": [a.model_dump(mode="json") for a in run.attempts],
                    "flaps": inc.flaps,
                    "disconnects": inc.disconnects,
                }
            )
        return {
            "open_incidents": incidents,
            "recent_actions": [e.as_dict() for e in self.audit.recent(50)],
            "recent_outcomes": list(self._recent_outcomes),
            "maintenance": sorted(self.maintenance),
            "resets_last_24h": {cp: len(self._resets_window(cp)) for cp in self._resets},
        }

    # ------------------------------------------------------------ detection outputs

    def _dispatch(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if isinstance(out, Opened):
                inc = out.incident
                if inc.charge_point_id and inc.kind == "fault":
                    self.digest.fault_opened(inc.charge_point_id, inc.fault.category)
                self._claim_sessions(inc, inc.started_at)
                self._audit_soon(self._entry(inc, "incident_opened", "open", detail=inc.fault.code))
                self._start_run(inc)
            elif isinstance(out, Updated):
                run = self._runs.get(out.incident.id)
                if run is not None:
                    run.wake.set()
            elif isinstance(out, Recovered):
                run = self._runs.get(out.incident.id)
                self._audit_soon(self._entry(out.incident, "incident_recovered", "recovered"))
                if run is not None:
                    run.wake.set()
            elif isinstance(out, Reopened):
                self._claim_sessions(out.incident, self.clock.now())
                self._reopened(out.incident)
            elif isinstance(out, Closed):
                self._closed(out.incident)
            elif isinstance(out, Absorbed):
                self.sessions.release(out.incident.id)  # no record of its own is sent
                run = self._runs.get(out.incident.id)
                if run is not None:
                    run.outcome = "absorbed"
                    if run.task is not None:
                        run.task.cancel()
                self._audit_soon(
                    self._entry(out.incident, "absorbed", "site_incident", detail=out.site.id)
                )
            elif isinstance(out, SessionFailed):
                self.digest.session_failed(out.charge_point_id)

    def _claim_sessions(self, inc: Incident, at: datetime) -> None:
        """A fault stops the sessions on what it takes out, and a charge point that loses its
        connection may stop them too (it says so with the stop it sends when it is back, before
        the incident closes): they are the incident's to report."""
        if inc.kind not in ("fault", "connectivity") or inc.scope == "site":
            return
        if inc.charge_point_id is None:
            return
        connectors = [inc.connector_id] if inc.scope == "connector" and inc.connector_id else None
        self.sessions.claim(inc.id, inc.charge_point_id, connectors, at)

    def _start_run(self, incident: Incident, deadline: float | None = None) -> _Run:
        run = _Run(
            incident,
            deadline if deadline is not None else incident.started_mono + self.config.window_s,
        )
        previous = self._runs.get(incident.id)
        if previous is not None:
            run.attempts = previous.attempts
        self._runs[incident.id] = run
        run.task = self._spawn(self._run(run), f"recovery-{incident.id[:8]}")
        return run

    def rerun(self, charge_point_id: str, connector_id: int | None = None) -> list[str]:
        """Run the playbook again, in a fresh window, for the escalated incidents still open.

        For the cloud's ``rerun_playbook`` request: e.g. a session blocked every reset and has
        ended since. A recovery is then reported as the escalation cleared; a failure
        escalates again (a new message for the same incident). Raises ``LookupError`` when
        nothing is escalated and open there, ``PermissionError`` for a fault no automatic
        step may touch (safety) or a charge point in maintenance.
        """
        where = charge_point_id + (f" connector {connector_id}" if connector_id else "")
        runs = [
            r
            for r in self._runs.values()
            if r.outcome == "escalated"
            and r.incident.charge_point_id == charge_point_id
            and (connector_id is None or r.incident.connector_id in (connector_id, None))
        ]
        if not runs:
            raise LookupError(f"no escalated incident is open on {where}")
        if charge_point_id in self.maintenance:
            raise PermissionError(f"{charge_point_id} is in maintenance")
        if any(self._must_stop(r) for r in runs):
            raise PermissionError(f"the fault on {where} is not resettable (safety rules)")
        ids = []
        for prev in runs:
            inc = prev.incident
            run = _Run(inc, self.clock.monotonic() + self.config.window_s)
            run.escalated_at = prev.escalated_at
            run.reruns = prev.reruns + 1
            self._runs[inc.id] = run
            run.task = self._spawn(self._run(run), f"rerun-{inc.id[:8]}")
            self._audit_soon(self._entry(inc, "rerun_playbook", "started"))
            ids.append(inc.id)
        log.info("playbook_rerun", charge_point_id=charge_point_id, incidents=ids)
        return ids

    def _reopened(self, incident: Incident) -> None:
        run = self._runs.get(incident.id)
        if run is None:
            self._start_run(incident)
            return
        if run.outcome == "running":
            run.wake.set()
            return
        if run.outcome == "self_resolved":
            self._start_run(incident, run.deadline)

    def _closed(self, incident: Incident) -> None:
        cut = self.sessions.tally(incident.id)
        self.sessions.release(incident.id)
        run = self._runs.pop(incident.id, None)
        for member in incident.members:  # a site incident takes its members along
            self._runs.pop(member, None)
        if run is None or run.outcome == "absorbed":
            return
        if run.outcome == "escalated" or run.escalated_at is not None:
            # escalated once: its recovery (after a re-run too) is the escalation cleared
            self.digest.cleared(incident.id)
            if self._send_cleared:
                self._spawn(self._send_cleared_update(run), f"cleared-{incident.id[:8]}")
        elif run.outcome in ("self_resolved", "running"):
            self.digest.self_resolved(
                SelfResolved(
                    incident_id=incident.id,
                    charge_point_id=incident.charge_point_id,
                    connector_id=incident.connector_id,
                    scope=incident.scope,
                    kind=incident.kind,
                    fault_code=incident.fault.code,
                    vendor_code=incident.fault.vendor_code,
                    category=incident.fault.category,
                    started_at=incident.started_at,
                    ended_at=incident.recovered_at or self.clock.now(),
                    fixed_by=run.fixed_by or "self",
                    sessions_cut=cut.sessions if cut else None,
                    energy_unmet_wh=_round(cut.energy_unmet_wh) if cut else None,
                )
            )
        self._recent_outcomes.append(
            {
                "incident_id": incident.id,
                "charge_point_id": incident.charge_point_id,
                "scope": incident.scope,
                "fault": incident.fault.code,
                "outcome": "cleared" if run.outcome == "escalated" else run.outcome,
                "fixed_by": run.fixed_by,
                "closed_at": self.clock.now().isoformat(),
            }
        )

    # ------------------------------------------------------------ the playbook run

    def _remaining(self, run: _Run) -> float:
        return run.deadline - self.clock.monotonic()

    def _recovered(self, run: _Run) -> bool:
        return run.incident.state in ("recovered", "closed")

    def _must_stop(self, run: _Run) -> bool:
        """Safety first: a fault found (or enriched to be) non-resettable stops the playbook."""
        inc = run.incident
        if inc.scope == "site" or inc.charge_point_id is None:
            return False
        return not taxonomy.is_resettable(inc.fault, self.profile_for(inc.charge_point_id))

    async def _wait(
        self, run: _Run, seconds: float, until: Callable[[], bool] | None = None
    ) -> bool:
        """Wait up to ``seconds`` for recovery; True when recovered.

        Returns early on a safety stop, or when ``until()`` becomes true.
        """
        end = self.clock.monotonic() + max(0.0, seconds)
        while True:
            if self._recovered(run):
                return True
            if self._must_stop(run) or (until is not None and until()):
                return False
            left = end - self.clock.monotonic()
            if left <= 0:
                return False
            run.wake.clear()
            loop = asyncio.get_running_loop()
            waiter = loop.create_task(run.wake.wait())
            sleeper = loop.create_task(self.clock.sleep(left))
            try:
                await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (waiter, sleeper):
                    t.cancel()
                await asyncio.gather(waiter, sleeper, return_exceptions=True)

    async def _run(self, run: _Run) -> None:
        inc = run.incident
        cp = inc.charge_point_id
        bound = structlog.contextvars.bound_contextvars(
            incident_id=inc.id, charge_point_id=cp, site_id=self.site_id
        )
        with bound:
            try:
                await self._run_playbook(run)
            finally:
                await asyncio.shield(self._restore_availability(run))

    async def _run_playbook(self, run: _Run) -> None:
        inc = run.incident
        cp = inc.charge_point_id
        if cp is not None and cp in self.maintenance:
            run.outcome = "maintenance"
            await self._audit(
                self._entry(inc, "none", "skipped", detail="charge point in maintenance")
            )
            return
        if run.attempts and self._remaining(run) <= 0:
            # A fault that keeps coming back after the window: escalate it now.
            await self._do_escalate(run, detail=f"fault returned {inc.flaps} times")
            return
        if self._must_stop(run):
            await self._do_escalate(
                run, detail="safety-critical or non-resettable: no automatic reset"
            )
            return
        profile = self.profile_for(cp) if cp else GENERIC
        book = playbooks.choose(
            inc.fault.category, inc.fault.code, scope=inc.scope, overrides=profile.playbooks
        )
        done = {a.action for a in run.attempts}
        for step in book.steps:
            if self._recovered(run) or self._remaining(run) <= 0:
                break
            if step in done and step != playbooks.WAIT:
                continue
            if self._must_stop(run):
                await self._do_escalate(
                    run, detail="safety-critical or non-resettable: no automatic reset"
                )
                return
            attempt = await self._step(run, step, profile)
            wait = min(book.wait_s(step, self.config.window_s), self._remaining(run))
            if step == playbooks.WAIT and inc.kind == "connectivity" and cp is not None:
                # Waiting for a lost charge point: go on as soon as it is back (and silent).
                recovered = await self._wait(run, wait, until=lambda: self._connected(cp))
            elif attempt.result in ("accepted", "no_change") or step == playbooks.WAIT:
                recovered = await self._wait(run, wait)
            else:
                recovered = self._recovered(run)
            final = (
                "recovered"
                if recovered
                else ("no_change" if attempt.result == "accepted" else attempt.result)
            )
            run.attempts[-1] = attempt.model_copy(update={"result": final})
            if recovered:
                run.fixed_by = step
                break
        if not self._recovered(run) and not self._must_stop(run):
            await self._wait(run, self._remaining(run))
        if self._recovered(run):
            run.outcome = "self_resolved"
            run.fixed_by = run.fixed_by or "self"
            await self._audit(self._entry(inc, "self_resolved", "recovered", detail=run.fixed_by))
            return
        await self._do_escalate(run)

    # ------------------------------------------------------------ steps

    async def _step(self, run: _Run, step: str, profile: Profile) -> RecoveryAttempt:
        inc = run.incident
        at = self.clock.now()
        if step == playbooks.WAIT:
            attempt = RecoveryAttempt(action=step, at=at, result="no_change")
        elif inc.charge_point_id is None:
            attempt = RecoveryAttempt(action=step, at=at, result="skipped", detail="site incident")
        elif step == playbooks.CONFIRM:
            attempt = await self._confirm(inc, at)
        elif step == playbooks.AVAILABILITY_TOGGLE:
            attempt = await self._toggle(run, at)
        elif step == playbooks.UNLOCK:
            attempt = await self._unlock(inc, at)
        elif playbooks.is_reset(step):
            attempt = await self._reset(run, step, profile, at)
        else:
            attempt = RecoveryAttempt(action=step, at=at, result="skipped", detail="unknown step")
        run.attempts.append(attempt)
        return attempt

    def _connected(self, cp: str) -> bool:
        state = self.detector.charge_points.get(cp)
        return state is not None and state.connected

    def _version(self, cp: str) -> str:
        v = self._call.version(cp)
        if v is None:
            state = self.detector.charge_points.get(cp)
            v = state.version if state else None
        return v or "1.6"

    async def _send(
        self, inc: Incident, action: str, payload: dict[str, Any], step: str, at: datetime
    ) -> tuple[str, str | None, dict[str, Any] | None]:
        """Send one CALL; return (result, detail, response) and audit it."""
        cp = inc.charge_point_id
        assert cp is not None
        timeout = max(1.0, min(CALL_TIMEOUT_S, self._remaining_for(inc)))
        response: dict[str, Any] | None = None
        try:
            response = await self._call.call(cp, action, payload, timeout=timeout)
            status = str(response.get("status", ""))
            result = "accepted" if status in ("Accepted", "Scheduled", "Unlocked") else "rejected"
            detail: str | None = f"{action} → {status}"
        except CallRejected as exc:
            result, detail = (
                "rejected",
                f"{action} → CALLERROR {exc.error_code} {exc.description}".strip(),
            )
        except CallTimeout:
            result, detail = "timeout", f"{action}: no answer in {timeout:g} s"
        except ChargePointNotConnected:
            result, detail = "error", f"{action}: charge point not connected"
        except EdgeError as exc:
            result, detail = "error", f"{action}: {exc}"
        await self._audit(
            AuditEntry(
                at=at,
                action=step,
                result=result,
                charge_point_id=cp,
                connector_id=inc.connector_id,
                incident_id=inc.id,
                request={"action": action, "payload": payload},
                detail=detail,
            )
        )
        return result, detail, response

    def _remaining_for(self, inc: Incident) -> float:
        run = self._runs.get(inc.id)
        if run is None or run.outcome == "escalated":  # after the window: a call's own limit
            return CALL_TIMEOUT_S
        return self._remaining(run)

    def _evse_connector(self, inc: Incident) -> int:
        """2.0.1: the connector inside the EVSE (as last reported, else 1)."""
        state = self.detector.charge_points.get(inc.charge_point_id or "")
        conn = state.connectors.get(inc.connector_id or 0) if state else None
        return conn.evse_connector_id if conn and conn.evse_connector_id else 1

    async def _confirm_back(self, inc: Incident) -> None:
        await self._confirm(inc, self.clock.now())

    async def _confirm(self, inc: Incident, at: datetime) -> RecoveryAttempt:
        cp = inc.charge_point_id
        assert cp is not None
        payload: dict[str, Any] = {"requestedMessage": "StatusNotification"}
        if self._version(cp) in VERSION_201:
            if inc.connector_id:
                payload["evse"] = {"id": inc.connector_id, "connectorId": self._evse_connector(inc)}
        elif inc.connector_id:
            payload["connectorId"] = inc.connector_id
        result, detail, _ = await self._send(inc, "TriggerMessage", payload, playbooks.CONFIRM, at)
        return RecoveryAttempt(action=playbooks.CONFIRM, at=at, result=result, detail=detail)

    def _availability_payload(self, cp: str, connector: int, operative: bool) -> dict[str, Any]:
        kind = "Operative" if operative else "Inoperative"
        if self._version(cp) in VERSION_201:
            payload: dict[str, Any] = {"operationalStatus": kind}
            if connector:
                payload["evse"] = {"id": connector}
            return payload
        return {"connectorId": connector, "type": kind}

    async def _toggle(self, run: _Run, at: datetime) -> RecoveryAttempt:
        inc = run.incident
        cp = inc.charge_point_id
        assert cp is not None
        connector = inc.connector_id or 0
        step = playbooks.AVAILABILITY_TOGGLE
        sessions = self.detector.active_sessions(cp)
        if connector == 0 and sessions:
            detail = (
                f"sessions running on connectors {sorted(sessions)}: charge point left available"
            )
            await self._audit(self._entry(inc, step, "skipped", detail=detail))
            return RecoveryAttempt(action=step, at=at, result="skipped", detail=detail)
        run.inoperative.add(connector)
        payload = self._availability_payload(cp, connector, operative=False)
        result, sent, _ = await self._send(inc, "ChangeAvailability", payload, step, at)
        if result == "rejected":  # refused (CALLERROR or Rejected): nothing to undo
            run.inoperative.discard(connector)
            return RecoveryAttempt(action=step, at=at, result=result, detail=sent)
        if result == "accepted":
            await self.clock.sleep(playbooks.INOPERATIVE_DWELL_FRACTION * self.config.window_s)
        restored = await self._set_operative(run, connector)
        if result == "accepted" and not restored:
            return RecoveryAttempt(
                action=step, at=at, result="error", detail="Operative not accepted"
            )
        return RecoveryAttempt(action=step, at=at, result=result, detail=sent)

    async def _set_operative(self, run: _Run, connector: int) -> bool:
        inc = run.incident
        cp = inc.charge_point_id
        assert cp is not None
        payload = self._availability_payload(cp, connector, operative=True)
        result, _, _ = await self._send(
            inc, "ChangeAvailability", payload, "availability_restore", self.clock.now()
        )
        if result == "accepted":
            run.inoperative.discard(connector)
            return True
        return False

    async def _restore_availability(self, run: _Run) -> None:
        """Never leave a connector Inoperative: retry Operative a few times."""
        for _ in range(3):
            if not run.inoperative:
                return
            for connector in sorted(run.inoperative):
                with contextlib.suppress(Exception):
                    await self._set_operative(run, connector)
        if run.inoperative:
            await self._audit(
                self._entry(
                    run.incident,
                    "availability_restore",
                    "error",
                    detail=f"connectors {sorted(run.inoperative)} may still be Inoperative",
                )
            )

    async def _unlock(self, inc: Incident, at: datetime) -> RecoveryAttempt:
        cp = inc.charge_point_id
        assert cp is not None
        step = playbooks.UNLOCK
        if not inc.connector_id:
            return RecoveryAttempt(
                action=step, at=at, result="skipped", detail="no connector to unlock"
            )
        if inc.connector_id in self.detector.active_sessions(cp):
            return RecoveryAttempt(
                action=step, at=at, result="skipped", detail="connector in a session"
            )
        if self._version(cp) in VERSION_201:
            payload: dict[str, Any] = {
                "evseId": inc.connector_id,
                "connectorId": self._evse_connector(inc),
            }
        else:
            payload = {"connectorId": inc.connector_id}
        result, detail, _ = await self._send(inc, "UnlockConnector", payload, step, at)
        return RecoveryAttempt(action=step, at=at, result=result, detail=detail)

    def _budget(self, cp: str, profile: Profile) -> int:
        limit = self.config.max_resets_per_day
        if profile.max_resets_per_day is not None:
            limit = min(limit, profile.max_resets_per_day)
        return limit

    def _resets_window(self, cp: str) -> deque[float]:
        window = self._resets.setdefault(cp, deque())
        now = self.clock.monotonic()
        while window and now - window[0] >= 86400:
            window.popleft()
        return window

    def _blocking_sessions(self, inc: Incident) -> dict[int, str | None]:
        assert inc.charge_point_id is not None
        sessions = self.detector.active_sessions(inc.charge_point_id)
        return {c: t for c, t in sessions.items() if c != inc.connector_id}

    async def _reset(self, run: _Run, step: str, profile: Profile, at: datetime) -> RecoveryAttempt:
        inc = run.incident
        cp = inc.charge_point_id
        assert cp is not None
        limit = self._budget(cp, profile)
        used = len(self._resets_window(cp))
        if used >= limit:
            detail = (
                "automatic resets disabled"
                if limit == 0
                else f"reset budget spent ({used}/{limit} in 24 h)"
            )
            await self._audit(self._entry(inc, step, "skipped", detail=detail))
            return RecoveryAttempt(action=step, at=at, result="skipped", detail=detail)
        hook = (
            step.removeprefix(playbooks.HOOK_PREFIX)
            if step.startswith(playbooks.HOOK_PREFIX)
            else None
        )
        if hook is not None and not self.hooks.available(hook):
            return RecoveryAttempt(action=step, at=at, result="skipped", detail=f"no hook {hook!r}")
        # Never interrupt a live session on another connector: wait for it inside the window,
        # keeping a little time after the reset for the charge point to come back.
        keep = min(0.15 * self.config.window_s, max(0.0, self._remaining(run)))
        while (
            self._blocking_sessions(inc)
            and self._remaining(run) > keep
            and not self._recovered(run)
        ):
            await self._wait(run, min(TICK_S * 5, self._remaining(run) - keep))
        if self._recovered(run):
            return RecoveryAttempt(
                action=step, at=at, result="skipped", detail="recovered meanwhile"
            )
        blocking = self._blocking_sessions(inc)
        if blocking:
            detail = f"connector(s) {sorted(blocking)} charging: charge point not reset"
            await self._audit(self._entry(inc, step, "skipped", detail=detail))
            return RecoveryAttempt(action=step, at=at, result="skipped", detail=detail)
        at = self.clock.now()
        stamp = self.clock.monotonic()
        self._resets_window(cp).append(stamp)
        self.detector.expect_reboot(cp, max(run.deadline, stamp + 60.0))
        if hook is not None:
            attempt = await self._run_hook(run, hook, step, profile, at)
            if attempt.result == "skipped":  # not applicable here: nothing was power-cycled
                with contextlib.suppress(ValueError):
                    self._resets_window(cp).remove(stamp)
            else:
                self.digest.reset_sent(cp)
            return attempt
        if self._version(cp) in VERSION_201:
            payload = {"type": "OnIdle" if step == playbooks.SOFT_RESET else "Immediate"}
        else:
            payload = {"type": "Soft" if step == playbooks.SOFT_RESET else "Hard"}
        result, sent, _ = await self._send(inc, "Reset", payload, step, at)
        if result == "error" and not self._connected(cp):  # never reached it: no budget spent
            with contextlib.suppress(ValueError):
                self._resets_window(cp).remove(stamp)
        else:
            self.digest.reset_sent(cp)
        return RecoveryAttempt(action=step, at=at, result=result, detail=sent)

    async def _run_hook(
        self, run: _Run, hook: str, step: str, profile: Profile, at: datetime
    ) -> RecoveryAttempt:
        inc = run.incident
        cp = inc.charge_point_id
        state = self.detector.charge_points.get(cp or "")
        hardware = state.hardware if state else Hardware()
        request = {
            "charge_point_id": cp,
            "connector_id": inc.connector_id,
            "incident_id": inc.id,
            "fault": inc.fault.model_dump(mode="json"),
            "hardware": hardware.model_dump(mode="json"),
        }
        # like every step, inside the window: a hook still running when it ends is killed, so
        # the escalation is not held back past the window by a slow relay script
        limit = max(1.0, min(self.config.hook_timeout_s, self._remaining_for(inc)))
        res = await self.hooks.run(hook, request, env=profile.hook_env, timeout_s=limit)
        result = {
            "done": "accepted",
            "failed": "rejected",
            "skipped": "skipped",
            "timeout": "timeout",
            "error": "error",
            "missing": "skipped",
        }[res.outcome]
        detail = (
            f"exit {res.exit_code}: {res.stdout.strip()[:500]}"
            if res.exit_code is not None
            else res.stderr
        )
        await self._audit(
            AuditEntry(
                at=at,
                actor="hook",
                action=step,
                result=result,
                charge_point_id=cp,
                connector_id=inc.connector_id,
                incident_id=inc.id,
                request=request,
                detail=f"{res.outcome} in {res.duration_s:.1f} s; stdout: {res.stdout[:2000]!r}; "
                f"stderr: {res.stderr[:1000]!r}",
            )
        )
        return RecoveryAttempt(action=step, at=at, result=result, detail=detail)

    # ------------------------------------------------------------ escalation

    async def _collect_evidence(self, inc: Incident) -> list[EvidenceFrame]:
        chargers = (
            inc.chargers
            if inc.scope == "site"
            else [inc.charge_point_id]
            if inc.charge_point_id
            else []
        )
        if not chargers:
            return []
        start = inc.started_at - EVIDENCE_BEFORE
        end = self.clock.now()
        per = max(5, EVIDENCE_LIMIT // len(chargers))
        chosen = chargers[:10]
        # One overall time limit: evidence is best effort, the escalation must go out.
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(self._evidence(cp, start, end, per) for cp in chosen), return_exceptions=True
                ),
                EVIDENCE_TIMEOUT_S,
            )
        except TimeoutError:
            log.warning("evidence timed out", incident_id=inc.id)
            return []
        frames: list[EvidenceFrame] = []
        for cp, got in zip(chosen, results, strict=True):
            if isinstance(got, BaseException):
                log.warning("evidence unavailable", charge_point_id=cp, error=repr(got))
                continue
            frames.extend(got[-per:])
        frames.sort(key=lambda f: f.at)
        return frames[-EVIDENCE_LIMIT:]

    def _build_escalation(
        self, run: _Run, evidence: list[EvidenceFrame], detail: str | None
    ) -> Escalation:
        inc = run.incident
        cp = inc.charge_point_id
        state = self.detector.charge_points.get(cp or "")
        resets_tried = any(
            playbooks.is_reset(a.action) and a.result not in ("skipped",) for a in run.attempts
        )
        sessions = len(state.sessions()) if state else 0
        if inc.scope == "site":
            sessions = sum(len(self.detector.active_sessions(c)) for c in inc.chargers)
        cut = self.sessions.tally(inc.id)
        return Escalation(
            message_id=inc.id if run.reruns == 0 else f"{inc.id}-rerun-{run.reruns}",
            site_id=self.site_id,
            sent_at=self.clock.now(),
            kind=inc.kind,
            incident_id=inc.id,
            charge_point_id=cp if inc.scope != "site" else None,
            connector_id=inc.connector_id if inc.scope == "connector" else None,
            scope=inc.scope,
            chargers=list(inc.chargers),
            fault=inc.fault,
            started_at=inc.started_at,
            recovery_attempts=list(run.attempts),
            hardware=state.hardware if state and inc.scope != "site" else Hardware(),
            evidence=evidence,
            active_sessions=sessions,
            anomaly_score=self._score(cp) if inc.scope != "site" else None,
            recommended_action=taxonomy.recommended_action(inc.fault, resets_tried=resets_tried),
            disconnects=inc.disconnects if inc.kind == "connectivity" else None,
            detail=detail,
            sessions_cut=cut.sessions if cut else None,
            energy_unmet_wh=_round(cut.energy_unmet_wh) if cut else None,
        )

    def _score(self, cp: str | None) -> float | None:
        if cp is None or self._anomaly_score is None:
            return None
        try:
            return self._anomaly_score(cp)
        except Exception as exc:  # a scoring problem must not hold an escalation back
            log.warning("anomaly score unavailable", charge_point_id=cp, error=repr(exc))
            return None

    async def _do_escalate(self, run: _Run, detail: str | None = None) -> None:
        if run.outcome == "escalated":
            return
        inc = run.incident
        evidence = await self._collect_evidence(inc)
        if inc.flaps and detail is None:
            detail = f"flapped {inc.flaps} times"
        escalation = self._build_escalation(run, evidence, detail)
        run.outcome = "escalated"
        run.escalated_at = self.clock.now()
        try:
            await self._escalate(escalation)
            result = "committed"
        except Exception as exc:
            log.error("escalation not committed", incident_id=inc.id, error=repr(exc))
            result = "error"
        await self._audit(self._entry(inc, "escalate", result, detail=detail or inc.fault.code))

    async def _send_cleared_update(self, run: _Run) -> None:
        inc = run.incident
        escalation = self._build_escalation(run, [], "cleared by itself after escalation")
        escalation = escalation.model_copy(
            update={
                "message_id": f"{inc.id}-cleared",
                "status": "cleared",
                "ended_at": inc.recovered_at or self.clock.now(),
            }
        )
        try:
            await self._escalate(escalation)
            result = "committed"
        except Exception as exc:
            log.error("cleared update not committed", incident_id=inc.id, error=repr(exc))
            result = "error"
        await self._audit(self._entry(inc, "escalation_cleared", result))

    # ------------------------------------------------------------ background

    async def _ticker(self) -> None:
        while True:
            await self.clock.sleep(TICK_S)
            try:
                self._dispatch(self.detector.tick(self.clock.now(), self.clock.monotonic()))
            except Exception as exc:  # keep ticking: heartbeats and flap periods depend on it
                log.error("recovery tick failed", error=repr(exc))

    async def _digest_loop(self) -> None:
        assert self._publish_digest is not None
        while True:
            await self.clock.sleep(self.config.digest_interval_s)
            try:  # one bad interval must not end the digests for good
                await self._publish_digest(self.cut_digest())
            except Exception as exc:
                log.error("digest not published", error=repr(exc), exc_info=True)

    # ------------------------------------------------------------ audit

    def _entry(
        self, inc: Incident, action: str, result: str, detail: str | None = None
    ) -> AuditEntry:
        return AuditEntry(
            at=self.clock.now(),
            action=action,
            result=result,
            charge_point_id=inc.charge_point_id,
            connector_id=inc.connector_id,
            incident_id=inc.id,
            detail=detail,
        )

    async def _audit(self, entry: AuditEntry) -> None:
        try:
            await self.audit.record(entry)
        except Exception as exc:  # an audit failure must not stop a recovery
            log.error("audit write failed", action=entry.action, error=repr(exc))

    def _audit_soon(self, entry: AuditEntry) -> None:
        """Audit from synchronous code (``handle``) without blocking it."""
        if self._started and not self._closing:
            self._spawn(self._audit(entry), "audit")


def _round(wh: float | None) -> float | None:
    return None if wh is None else round(wh, 1)


def default_profiles(profiles_dir: Path | None) -> ProfileRegistry:
    """Profiles from ``recovery.profiles_dir`` or the repository's ``firmware-hooks/profiles``."""
    return ProfileRegistry.load(profiles_dir)
