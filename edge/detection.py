"""Fault detection: per connector and per charge point state machines (sans I/O).

:class:`Detector` is fed the normalised events of :mod:`chargesight.common.events`
with a monotonic time (``feed(event, mono)``) and ticked periodically
(``tick(mono)``); it returns what changed as :data:`Output` values. It never
sleeps, sends or stores anything: the recovery engine acts on its outputs.

What it detects (CONTRACT.md, "Recovery semantics"):

* **faults** — 1.6 ``StatusNotification`` Faulted (connector 0 = the whole
  charge point), 2.0.1 Faulted + ``NotifyEvent`` Problem (the NotifyEvent's
  ``techInfo``/``techCode`` enrich the incident whichever comes first; a
  ``ChargingStation`` problem opens a charge point incident by itself);
* **connectivity** — a lost connection, missed heartbeats
  (``heartbeat_grace`` × the interval with no message at all; the incident
  starts at the last message);
* **performance** — sessions failing to start (``session_fail_threshold``
  sessions in a row ending with no energy) and power below rated
  (``low_power_threshold`` sessions in a row whose peak stayed under the
  profile's ``min_power_fraction`` of rated).

Incident rules:

* **Recovered** = the faulted connector reports Available, Preparing,
  Charging, SuspendedEV/EVSE, Finishing or Occupied with ``NoError``; for
  connector 0, connector 0 healthy or every known connector healthy since;
  a lost connection when the charge point reconnects and has reported all its
  known connectors again; a performance incident when a good session follows.
* **Flapping**: a recovered incident stays *recovered* for ``flap_period_s``
  before it is *closed*; a fault on the same key in that time reopens it (one
  incident, ``flaps`` counted); a charge point that keeps dropping is one
  connectivity incident with a ``disconnects`` count.
* **Site**: when at least two charge points, and at least
  ``site_event_min_fraction`` of the site's known charge points, open an
  incident within ``site_event_window_s``, they are absorbed into ONE site
  incident, recovered when all its members are.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from chargesight.common import taxonomy
from chargesight.common.events import (
    AuthorizeResult,
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Event,
    HeartbeatInterval,
    MeterSample,
    ProblemReport,
    TransactionEnded,
    TransactionStarted,
    UpstreamState,
)
from chargesight.common.messages import Fault, Hardware, Scope
from chargesight.edge.profiles import GENERIC, Profile

IncidentKind = Literal["fault", "connectivity", "performance"]
IncidentState = Literal["open", "recovered", "closed", "absorbed"]

_TRUE = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True, slots=True)
class DetectionParams:
    flap_period_s: float = 300.0
    heartbeat_grace: float = 2.5
    site_event_window_s: float = 10.0
    site_event_min_fraction: float = 0.5
    session_fail_threshold: int = 3
    failed_session_max_wh: float = 10.0
    low_power_threshold: int = 3
    low_power_min_session_s: float = 300.0


@dataclass(slots=True)
class Incident:
    """One real problem, from its first symptom until it is closed."""

    id: str
    kind: IncidentKind
    scope: Scope
    charge_point_id: str | None
    connector_id: int | None  # the connector (2.0.1: EVSE) for scope "connector", else None
    fault: Fault
    started_at: datetime
    started_mono: float
    key: tuple[object, ...]
    state: IncidentState = "open"
    recovered_at: datetime | None = None
    recovered_mono: float | None = None
    flaps: int = 0
    disconnects: int = 0
    chargers: list[str] = field(default_factory=list)  # scope "site"
    members: list[str] = field(default_factory=list)  # scope "site": absorbed incident ids
    site_incident: str | None = None  # set when absorbed into a site incident

    @property
    def is_open(self) -> bool:
        return self.state == "open"


@dataclass(frozen=True, slots=True)
class Opened:
    incident: Incident


@dataclass(frozen=True, slots=True)
class Updated:
    incident: Incident
    what: str  # "fault" | "disconnect"


@dataclass(frozen=True, slots=True)
class Recovered:
    incident: Incident


@dataclass(frozen=True, slots=True)
class Reopened:
    incident: Incident


@dataclass(frozen=True, slots=True)
class Closed:
    incident: Incident


@dataclass(frozen=True, slots=True)
class Absorbed:
    incident: Incident
    site: Incident


@dataclass(frozen=True, slots=True)
class SessionFailed:
    charge_point_id: str
    connector_id: int


Output = Opened | Updated | Recovered | Reopened | Closed | Absorbed | SessionFailed


@dataclass(slots=True)
class ConnectorState:
    status: str | None = None
    error_code: str = "NoError"
    reported_mono: float | None = None
    transaction_id: str | None = None
    in_transaction: bool = False
    session_start_mono: float | None = None
    meter_start_wh: float | None = None
    last_energy_wh: float | None = None
    session_max_power_w: float | None = None
    failed_sessions: int = 0
    low_power_sessions: int = 0
    evse_connector_id: int | None = None  # 2.0.1: the connector inside the EVSE
    preparing_since: float | None = None  # a start attempt: Preparing, no transaction yet
    authorized: bool = False  # an Authorize was accepted during that attempt

    @property
    def healthy(self) -> bool:
        return self.status in _HEALTHY and self.error_code == "NoError"


_SESSION_OVER = frozenset({"Available", "Unavailable", "Faulted", "Finishing"})
_HEALTHY = frozenset(
    {"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"}
)


@dataclass(slots=True)
class ChargePointState:
    id: str
    connected: bool = False
    version: str | None = None
    hardware: Hardware = field(default_factory=Hardware)
    connectors: dict[int, ConnectorState] = field(default_factory=dict)
    last_seen_mono: float | None = None
    heartbeat_interval_s: float | None = None
    reconnected_mono: float | None = None
    problems: dict[int, ProblemReport] = field(default_factory=dict)  # evse id (0 = station)

    def connector(self, connector_id: int) -> ConnectorState:
        state = self.connectors.get(connector_id)
        if state is None:
            state = self.connectors[connector_id] = ConnectorState()
        return state

    def sessions(self) -> dict[int, str | None]:
        """Connectors in a transaction → transaction id."""
        return {cid: c.transaction_id for cid, c in self.connectors.items() if c.in_transaction}


class Detector:
    """All charge points of one site. Not thread-safe; call from one task."""

    def __init__(
        self,
        params: DetectionParams | None = None,
        *,
        profile_for: Callable[[str], Profile] | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.params = params or DetectionParams()
        self._profile_for = profile_for or (lambda _cp: GENERIC)
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self.charge_points: dict[str, ChargePointState] = {}
        self.incidents: dict[str, Incident] = {}
        # charge point → monotonic deadline: the agent ordered a reboot, the drop is expected
        self.reboot_expected: dict[str, float] = {}
        self._by_key: dict[tuple[object, ...], Incident] = {}
        # Per site-event family ("network", "supply"): (mono, cp, incident id) of recent incidents.
        self._recent: dict[str, deque[tuple[float, str, str]]] = {}
        self._sites: dict[str, Incident] = {}

    # ------------------------------------------------------------ queries

    def charge_point(self, charge_point_id: str) -> ChargePointState:
        state = self.charge_points.get(charge_point_id)
        if state is None:
            state = self.charge_points[charge_point_id] = ChargePointState(charge_point_id)
        return state

    def active_sessions(self, charge_point_id: str) -> dict[int, str | None]:
        state = self.charge_points.get(charge_point_id)
        return state.sessions() if state else {}

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.state in ("open", "recovered")]

    # ------------------------------------------------------------ input

    def feed(self, event: Event, mono: float) -> list[Output]:
        """Take one event; return what changed."""
        out: list[Output] = []
        cp = self.charge_point(event.charge_point_id)
        if not isinstance(event, ConnectionDown | UpstreamState):
            cp.last_seen_mono = mono
            self._heartbeat_recovered(cp, event.at, mono, out)
        if isinstance(event, ConnectionUp):
            cp.connected = True
            cp.version = event.version
            cp.reconnected_mono = mono
        elif isinstance(event, ConnectionDown):
            self._connection_lost(cp, event, mono, out)
        elif isinstance(event, Boot):
            cp.hardware = Hardware(
                vendor=event.vendor, model=event.model, firmware=event.firmware, serial=event.serial
            )
        elif isinstance(event, HeartbeatInterval):
            cp.heartbeat_interval_s = float(event.interval_s) if event.interval_s > 0 else None
        elif isinstance(event, ConnectorStatus):
            self._status(cp, event, mono, out)
        elif isinstance(event, ProblemReport):
            self._problem(cp, event, mono, out)
        elif isinstance(event, AuthorizeResult):
            if event.status == "Accepted":
                for conn in cp.connectors.values():
                    if conn.preparing_since is not None:
                        conn.authorized = True
        elif isinstance(event, TransactionStarted):
            conn = cp.connector(event.connector_id)
            conn.preparing_since = None
            conn.authorized = False
            conn.in_transaction = True
            conn.transaction_id = event.transaction_id
            conn.session_start_mono = mono
            conn.meter_start_wh = event.meter_start_wh
            conn.last_energy_wh = event.meter_start_wh
            conn.session_max_power_w = None
        elif isinstance(event, TransactionEnded):
            self._transaction_ended(cp, event, mono, out)
        elif isinstance(event, MeterSample):
            conn = cp.connector(event.connector_id)
            power = event.values.get("Power.Active.Import")
            if power is not None:
                conn.session_max_power_w = max(conn.session_max_power_w or 0.0, power)
            energy = event.values.get("Energy.Active.Import.Register")
            if energy is not None:
                conn.last_energy_wh = energy
        self._connectivity_recovered(cp, event.at, mono, out)
        return out

    def tick(self, now: datetime, mono: float) -> list[Output]:
        """Time-driven changes: missed heartbeats, recovered incidents closing after the flap period."""
        out: list[Output] = []
        for cp in self.charge_points.values():
            interval = cp.heartbeat_interval_s
            if (
                cp.connected
                and interval
                and cp.last_seen_mono is not None
                and mono - cp.last_seen_mono > interval * self.params.heartbeat_grace
            ):
                key = ("connectivity", cp.id)
                current = self._by_key.get(key)
                if current is None or current.state != "open":
                    silent = mono - cp.last_seen_mono
                    fault = taxonomy.connectivity_fault(
                        taxonomy.MISSED_HEARTBEATS,
                        f"no message for {silent:.0f} s (heartbeat interval {interval:.0f} s)",
                    )
                    # the outage counts from the last message, not from when the silence
                    # grew long enough to notice (``heartbeat_grace`` intervals later)
                    since = now - timedelta(seconds=silent)
                    self._open_or_reopen(
                        key, "connectivity", "charge_point", cp.id, None, fault, since, mono, out
                    )
        for incident in list(self.incidents.values()):
            if (
                incident.state == "recovered"
                and incident.recovered_mono is not None
                and mono - incident.recovered_mono >= self.params.flap_period_s
            ):
                incident.state = "closed"
                self._forget(incident)
                out.append(Closed(incident))
        for recent in self._recent.values():
            while recent and mono - recent[0][0] > self.params.site_event_window_s:
                recent.popleft()
        return out

    # ------------------------------------------------------------ handlers

    def expect_reboot(self, charge_point_id: str, until_mono: float) -> None:
        """The agent is about to reset ``charge_point_id``: its disconnect is no connectivity problem."""
        self.reboot_expected[charge_point_id] = until_mono

    def ordered_reboot(self, charge_point_id: str, mono: float) -> bool:
        until = self.reboot_expected.get(charge_point_id)
        return until is not None and mono <= until

    def _connection_lost(
        self, cp: ChargePointState, event: ConnectionDown, mono: float, out: list[Output]
    ) -> None:
        cp.connected = False
        cp.reconnected_mono = None
        if self.ordered_reboot(cp.id, mono):
            return
        key = ("connectivity", cp.id)
        current = self._by_key.get(key)
        if current is not None and current.state == "open":
            current.disconnects += 1
            if current.fault.code != taxonomy.CONNECTION_LOST:
                current.fault = taxonomy.connectivity_fault(
                    taxonomy.CONNECTION_LOST, event.reason or None
                )
            out.append(Updated(current, "disconnect"))
            return
        fault = taxonomy.connectivity_fault(taxonomy.CONNECTION_LOST, event.reason or None)
        incident = self._open_or_reopen(
            key, "connectivity", "charge_point", cp.id, None, fault, event.at, mono, out
        )
        incident.disconnects += 1

    def _status(
        self, cp: ChargePointState, event: ConnectorStatus, mono: float, out: list[Output]
    ) -> None:
        conn = cp.connector(event.connector_id)
        previous = conn.status
        conn.status = event.status
        conn.error_code = event.error_code
        conn.reported_mono = mono
        if event.evse_connector_id is not None:
            conn.evse_connector_id = event.evse_connector_id
        if event.status == "Preparing" and previous != "Preparing" and not conn.in_transaction:
            conn.preparing_since, conn.authorized = mono, False
        elif event.status == "Available" and conn.preparing_since is not None:
            # Back to Available from an authorised start attempt without a transaction:
            # the session failed to start.
            if conn.authorized and not conn.in_transaction:
                self._session_failed(cp, event.connector_id, event.at, mono, out)
            conn.preparing_since, conn.authorized = None, False
        if event.status in _SESSION_OVER and conn.in_transaction:
            # The session is over even if StopTransaction has not come (yet).
            conn.in_transaction = False
        if event.faulted:
            profile = self._profile_for(cp.id)
            fault = taxonomy.classify(
                event.error_code, event.vendor_id, event.vendor_error_code, event.info, profile
            )
            problem = cp.problems.get(event.connector_id)
            if problem is not None and (
                fault.code in ("NoError", "OtherError") or not fault.vendor_code
            ):
                fault = _from_problem(problem, profile)
            scope: Scope = "charge_point" if event.connector_id == 0 else "connector"
            key = ("fault", cp.id, event.connector_id)
            station = self._by_key.get(("fault", cp.id, 0))
            if (
                event.connector_id != 0
                and station is not None
                and station.state == "open"
                and station.fault.code == fault.code
            ):
                # The whole charge point is already faulted with this code: its connectors
                # reporting the same fault are part of that one incident, not new ones.
                return
            current = self._by_key.get(key)
            if current is not None and current.state == "open":
                if _more_specific(fault, current.fault):
                    current.fault = fault
                    out.append(Updated(current, "fault"))
                return
            self._open_or_reopen(
                key,
                "fault",
                scope,
                cp.id,
                event.connector_id if scope == "connector" else None,
                fault,
                event.at,
                mono,
                out,
            )
            return
        if not event.healthy:
            return
        cp.problems.pop(event.connector_id, None)
        self._recover(("fault", cp.id, event.connector_id), event.at, mono, out)
        station = self._by_key.get(("fault", cp.id, 0))
        if station is not None and station.state == "open" and event.connector_id != 0:
            others = [c for cid, c in cp.connectors.items() if cid != 0]
            if others and all(
                c.healthy
                and c.reported_mono is not None
                and c.reported_mono >= station.started_mono
                for c in others
            ):
                self._recover(station.key, event.at, mono, out)

    def _problem(
        self, cp: ChargePointState, event: ProblemReport, mono: float, out: list[Output]
    ) -> None:
        evse = event.evse_id or 0
        active = not event.cleared and event.value.strip().lower() in _TRUE
        key = ("fault", cp.id, evse)
        current = self._by_key.get(key)
        if not active:
            cp.problems.pop(evse, None)
            if evse == 0 and current is not None:
                self._recover(key, event.at, mono, out)
            return
        cp.problems[evse] = event
        fault = _from_problem(event, self._profile_for(cp.id))
        if current is not None and current.state == "open":
            if _more_specific(fault, current.fault) or current.fault.code in (
                "NoError",
                "OtherError",
            ):
                current.fault = fault
                out.append(Updated(current, "fault"))
            return
        if evse == 0 or (event.component == "ChargingStation" and cp.connectors.get(evse) is None):
            self._open_or_reopen(
                key, "fault", "charge_point", cp.id, None, fault, event.at, mono, out
            )
        elif cp.connector(evse).status == "Faulted":
            self._open_or_reopen(key, "fault", "connector", cp.id, evse, fault, event.at, mono, out)

    def _transaction_ended(
        self, cp: ChargePointState, event: TransactionEnded, mono: float, out: list[Output]
    ) -> None:
        cid = event.connector_id
        if cid is None:
            cid = next(
                (k for k, c in cp.connectors.items() if c.transaction_id == event.transaction_id),
                None,
            )
        if cid is None:
            # 1.6 before the CSMS assigned an id: the one connector in a session without one.
            unnamed = [
                k for k, c in cp.connectors.items() if c.in_transaction and c.transaction_id is None
            ]
            cid = unnamed[0] if len(unnamed) == 1 else None
        if cid is None:
            return
        conn = cp.connector(cid)
        conn.in_transaction = False
        start = conn.meter_start_wh
        stop = event.meter_stop_wh if event.meter_stop_wh is not None else conn.last_energy_wh
        energy = (stop - start) if start is not None and stop is not None else None
        duration = mono - conn.session_start_mono if conn.session_start_mono is not None else None
        conn.transaction_id = None
        if energy is not None and energy <= self.params.failed_session_max_wh:
            self._session_failed(cp, cid, event.at, mono, out)
            return
        conn.failed_sessions = 0
        self._recover(
            ("performance", cp.id, cid, taxonomy.SESSION_START_FAILURES), event.at, mono, out
        )
        profile = self._profile_for(cp.id)
        rated = profile.rated_power(cid)
        peak = conn.session_max_power_w
        if rated is None or peak is None or duration is None:
            return
        if duration < self.params.low_power_min_session_s:
            return
        if peak < profile.min_power_fraction * rated:
            conn.low_power_sessions += 1
            if conn.low_power_sessions >= self.params.low_power_threshold:
                fault = taxonomy.performance_fault(
                    taxonomy.POWER_BELOW_RATED,
                    f"peak {peak / 1000:.1f} kW of {rated / 1000:.0f} kW rated "
                    f"in {conn.low_power_sessions} sessions in a row",
                )
                self._open_perf(cp, cid, fault, event.at, mono, out)
        else:
            conn.low_power_sessions = 0
            self._recover(
                ("performance", cp.id, cid, taxonomy.POWER_BELOW_RATED), event.at, mono, out
            )

    def _session_failed(
        self, cp: ChargePointState, cid: int, at: datetime, mono: float, out: list[Output]
    ) -> None:
        conn = cp.connector(cid)
        conn.failed_sessions += 1
        out.append(SessionFailed(cp.id, cid))
        if conn.failed_sessions >= self.params.session_fail_threshold:
            fault = taxonomy.performance_fault(
                taxonomy.SESSION_START_FAILURES,
                f"{conn.failed_sessions} session starts in a row failed (no energy delivered)",
            )
            self._open_perf(cp, cid, fault, at, mono, out)

    def _open_perf(
        self,
        cp: ChargePointState,
        cid: int,
        fault: Fault,
        at: datetime,
        mono: float,
        out: list[Output],
    ) -> None:
        key = ("performance", cp.id, cid, fault.code)
        current = self._by_key.get(key)
        if current is not None and current.state == "open":
            return
        self._open_or_reopen(key, "performance", "connector", cp.id, cid, fault, at, mono, out)

    def _heartbeat_recovered(
        self, cp: ChargePointState, at: datetime, mono: float, out: list[Output]
    ) -> None:
        current = self._by_key.get(("connectivity", cp.id))
        if (
            current is not None
            and current.state == "open"
            and current.fault.code == taxonomy.MISSED_HEARTBEATS
            and cp.connected
        ):
            self._recover(current.key, at, mono, out)

    def _connectivity_recovered(
        self, cp: ChargePointState, at: datetime, mono: float, out: list[Output]
    ) -> None:
        current = self._by_key.get(("connectivity", cp.id))
        if current is None or current.state != "open" or not cp.connected:
            return
        since = cp.reconnected_mono
        if since is None:
            return
        known = [c for cid, c in cp.connectors.items() if cid != 0] or list(cp.connectors.values())
        if not known:
            return
        if all(c.reported_mono is not None and c.reported_mono >= since for c in known):
            self._recover(current.key, at, mono, out)

    # ------------------------------------------------------------ incidents

    def _open_or_reopen(
        self,
        key: tuple[object, ...],
        kind: IncidentKind,
        scope: Scope,
        charge_point_id: str,
        connector_id: int | None,
        fault: Fault,
        at: datetime,
        mono: float,
        out: list[Output],
    ) -> Incident:
        current = self._by_key.get(key)
        if current is not None and current.state == "recovered":
            current.state = "open"
            current.flaps += 1
            current.recovered_at = None
            current.recovered_mono = None
            if _more_specific(fault, current.fault):
                current.fault = fault
            out.append(Reopened(current))
            site = self.incidents.get(current.site_incident or "")
            if site is not None and site.state == "recovered":
                site.state = "open"
                site.flaps += 1
                out.append(Reopened(site))
            return current
        incident = Incident(
            id=self._new_id(),
            kind=kind,
            scope=scope,
            charge_point_id=charge_point_id,
            connector_id=connector_id,
            fault=fault,
            started_at=at,
            started_mono=mono,
            key=key,
        )
        self.incidents[incident.id] = incident
        self._by_key[key] = incident
        out.append(Opened(incident))
        self._site_check(incident, at, mono, out)
        return incident

    def _recover(
        self, key: tuple[object, ...], at: datetime, mono: float, out: list[Output]
    ) -> None:
        incident = self._by_key.get(key)
        if incident is None or incident.state != "open":
            return
        incident.state = "recovered"
        incident.recovered_at = at
        incident.recovered_mono = mono
        out.append(Recovered(incident))
        site = self.incidents.get(incident.site_incident or "")
        if site is not None and site.state == "open":
            members = [self.incidents[m] for m in site.members if m in self.incidents]
            if all(m.state in ("recovered", "closed") for m in members):
                site.state = "recovered"
                site.recovered_at = at
                site.recovered_mono = mono
                out.append(Recovered(site))

    def _forget(self, incident: Incident) -> None:
        if self._by_key.get(incident.key) is incident:
            del self._by_key[incident.key]
        for family, site in list(self._sites.items()):
            if site is incident:
                del self._sites[family]
        # Members of a closed site incident go with it.
        if incident.scope == "site":
            for member_id in incident.members:
                member = self.incidents.pop(member_id, None)
                if member is not None and self._by_key.get(member.key) is member:
                    del self._by_key[member.key]
        if incident.site_incident is None or incident.scope == "site":
            self.incidents.pop(incident.id, None)

    def _site_check(self, incident: Incident, at: datetime, mono: float, out: list[Output]) -> None:
        family = _site_family(incident)
        if family is None or incident.charge_point_id is None:
            return
        window = self.params.site_event_window_s
        recent = self._recent.setdefault(family, deque())
        while recent and mono - recent[0][0] > window:
            recent.popleft()
        recent.append((mono, incident.charge_point_id, incident.id))
        site = self._sites.get(family)
        if site is not None and site.state == "open":
            self._absorb(site, [incident], out)
            return
        affected = {cp for _, cp, _ in recent}
        known = len(self.charge_points)
        if len(affected) < 2 or len(affected) < self.params.site_event_min_fraction * known:
            return
        members = [
            self.incidents[iid]
            for _, _, iid in recent
            if iid in self.incidents and self.incidents[iid].state in ("open", "recovered")
        ]
        kind: IncidentKind = "connectivity" if family == "network" else "fault"
        fault = Fault(
            code=taxonomy.SITE_OUTAGE,
            category=taxonomy.CONNECTIVITY if family == "network" else taxonomy.POWER_LOSS,
            component="site_network" if family == "network" else "site_supply",
            info=f"{len(affected)} of {known} charge points within {window:g} s",
        )
        site = Incident(
            id=self._new_id(),
            kind=kind,
            scope="site",
            charge_point_id=None,
            connector_id=None,
            fault=fault,
            started_at=min(m.started_at for m in members),
            started_mono=min(m.started_mono for m in members),
            key=("site", family, self._new_id()),
        )
        self.incidents[site.id] = site
        self._sites[family] = site
        out.append(Opened(site))
        self._absorb(site, members, out)

    def _absorb(self, site: Incident, members: Iterable[Incident], out: list[Output]) -> None:
        for member in members:
            if member.site_incident is not None or member.scope == "site":
                continue
            member.site_incident = site.id
            site.members.append(member.id)
            if member.charge_point_id and member.charge_point_id not in site.chargers:
                site.chargers.append(member.charge_point_id)
            out.append(Absorbed(member, site))
        site.fault = site.fault.model_copy(
            update={"info": f"{len(site.chargers)} of {len(self.charge_points)} charge points"}
        )


def _site_family(incident: Incident) -> str | None:
    """Which site-wide event an incident can be part of: a network or a supply outage.

    Only these add up to a site incident; unrelated faults on several charge
    points at once stay separate incidents, each with its own playbook.
    """
    if incident.kind == "connectivity":
        return "network"
    if incident.kind == "fault" and incident.fault.category in _SUPPLY_CATEGORIES:
        return "supply"
    return None


_SUPPLY_CATEGORIES = frozenset({taxonomy.POWER_LOSS, taxonomy.VOLTAGE})


def _from_problem(problem: ProblemReport, profile: Profile) -> Fault:
    fault = taxonomy.classify(
        problem.tech_info or "OtherError", None, problem.tech_code, None, profile
    )
    return fault.model_copy(update={"component": fault.component or problem.component})


def _more_specific(new: Fault, old: Fault) -> bool:
    """Does ``new`` say more than ``old`` (a vendor code, a CX code, a known category)?"""
    if new == old:
        return False
    if new.safety_critical and not old.safety_critical:
        return True
    score_new = (
        (new.chargex_code is not None) + (new.vendor_code is not None) + (new.category != "other")
    )
    score_old = (
        (old.chargex_code is not None) + (old.vendor_code is not None) + (old.category != "other")
    )
    return score_new > score_old
