"""History generator: months of past operation, fast and without sockets.

:func:`generate_history` plays a scenario over ``days`` of simulated time
(drivers, sessions, faults, the edge's recovery as the playbooks would run
it) and writes what the edge would have sent, plus the truth:

``network.json``
    ``{"scenario", "start", "end", "seed", "sites": [{"id", "name", "lat", "lon",
    "currency", "price_per_kwh", "opening_hours", "uplink", "chargers": [{"charge_point_id",
    "vendor", "model", "firmware", "rated_power_w", "connector_power_w", "dc",
    "connectors": [{"connector_id", "type"}], "ocpp"}]}]}``
``digests.jsonl``
    one :class:`chargesight.common.messages.Digest` per site per hour, in time order.
``escalations.jsonl``
    one :class:`chargesight.common.messages.Escalation` per incident the edge could
    not fix inside its recovery window, in ``sent_at`` order.
``ground_truth.jsonl``
    one object per injected fault (see :func:`ground_truth_record`).

How the edge is assumed to behave: transient faults are fixed by a soft reset
(~3 min), stuck ones by a hard reset (~8 min), firmware-bug episodes by a
hard reset; all of these are *self-resolved* and only counted in digests.
Hardware faults, a PSU's hard failure and a charger that fails every start
are escalated (safety-critical ones at once, others after ``window_s``);
when a technician repairs them (``duration_h``) the next digest lists the
incident in ``cleared_incidents``. Connectivity drops are counted per charge
point (``disconnects``) and as self-resolved ``connectivity`` incidents.

Determinism: the same scenario, days, start and seed give the same bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from array import array
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from chargesight.common.messages import SCHEMA_VERSION, Escalation
from chargesight.common.sessions import DEFAULT_TARGET_SOC, PAST_SESSIONS, unmet_energy_wh
from chargesight.sim.drivers import (
    ambient_c,
    arrival_rate_per_s,
    ev_max_power_w,
    session_energy_wh,
)
from chargesight.sim.faults import FAULT_TYPES, PSU_TRIP_CODES, PlannedFault, plan_faults
from chargesight.sim.scenario import ChargerSpec, Network, Scenario, default_start

SOFT_RESET_FIX_S = (120.0, 240.0)
HARD_RESET_FIX_S = (360.0, 560.0)
OFFLINE_START_FAIL_P = 0.6  # arrival during a connectivity drop: start fails
DROP_ENDS_SESSION_P = 0.3  # a drop during a session ends it
METER_INTERVAL_S = 60.0  # the live simulator's MeterValues interval (SoC with each, DC)


@dataclass(frozen=True, slots=True)
class HistorySummary:
    start: datetime
    end: datetime
    sites: int
    chargers: int
    digests: int
    escalations: int
    faults: int
    sessions: int
    energy_kwh: float
    revenue_lost: dict[str, float]


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Block:
    """Disjoint blocked intervals of one connector, queried in time order."""

    __slots__ = ("ends", "faults", "ptr", "starts")

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.faults: list[PlannedFault] = []
        self.ptr = 0

    def finish(self, raw: list[tuple[float, float, PlannedFault]]) -> None:
        raw.sort(key=lambda x: x[0])
        for s, e, f in raw:
            if self.ends and s <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], e)
                continue
            self.starts.append(s)
            self.ends.append(e)
            self.faults.append(f)

    def at(self, t: float) -> PlannedFault | None:
        ends = self.ends
        while self.ptr < len(ends) and ends[self.ptr] <= t:
            self.ptr += 1
        if self.ptr < len(ends) and self.starts[self.ptr] <= t:
            return self.faults[self.ptr]
        return None

    def next_start(self, t: float) -> tuple[float, PlannedFault] | None:
        i = self.ptr
        while i < len(self.starts) and self.starts[i] <= t:
            i += 1
        return (self.starts[i], self.faults[i]) if i < len(self.starts) else None


class _Gen:
    def __init__(
        self, scenario: Scenario, days: float, start: datetime, seed: int, window_s: float
    ):
        self.sc = scenario
        self.net: Network = scenario.network()
        self.start = start
        self.seed = seed
        self.window_s = window_s
        self.H = max(1, round(days * 24))
        self.T = self.H * 3600.0
        self.rng = random.Random(seed)
        self.faults = plan_faults(scenario, self.net, self.T, random.Random(seed + 1))
        C, H = len(self.net.chargers), self.H
        self.started = array("q", [0]) * (C * H)
        self.failed = array("q", [0]) * (C * H)
        self.early = array("q", [0]) * (C * H)
        self.energy = array("d", [0.0]) * (C * H)
        self.maxp = array("d", [0.0]) * (C * H)
        self.tmax = array("d", [-999.0]) * (C * H)
        self.tsum = array("d", [0.0]) * (C * H)
        self.tn = array("q", [0]) * (C * H)
        self.disc = array("q", [0]) * (C * H)
        self.nfaults = array("q", [0]) * (C * H)
        self.selfres = array("q", [0]) * (C * H)
        self.resets = array("q", [0]) * (C * H)
        self.offline_s = array("d", [0.0]) * (C * H)
        self.occ = array("d", [0.0]) * (C * H)  # connector-seconds a vehicle was plugged in
        self.fbc: dict[tuple[int, int], dict[str, int]] = {}
        self.fixed_by: dict[tuple[int, int], dict[str, int]] = {}
        self.site_selfres: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.site_cleared: dict[tuple[str, int], list[str]] = {}
        self.escalations: list[tuple[float, Escalation]] = []
        # what the edge reports of the sessions each fault cut short: the incident's record
        # (self-resolved dict or escalation) by (charger, connector, start), and per charger
        # the complete sessions the edge has seen (end time, energy) for its estimate
        self.cut_records: dict[tuple[int, int, float], dict[str, Any] | Escalation] = {}
        self.complete: dict[int, deque[tuple[float, float]]] = {}
        self.sessions = 0
        self.energy_total = 0.0
        # per charger: blocking intervals per connector (0 = whole unit)
        self.blocks: dict[tuple[int, int], _Block] = {}
        self.start_fail: dict[int, list[PlannedFault]] = {}
        self.psu: dict[int, PlannedFault] = {}
        self.drops: dict[int, tuple[list[float], list[float], list[PlannedFault | None]]] = {}
        self.fw_changes: dict[int, list[tuple[float, str]]] = {}
        self.incidents: dict[str, list[str]] = {}

    # ------------------------------------------------------------ helpers

    def ts(self, t: float) -> datetime:
        return self.start + timedelta(seconds=t)

    def h(self, t: float) -> int:
        return min(self.H - 1, max(0, int(t // 3600)))

    def count_fault(self, c: int, t: float, category: str) -> None:
        h = self.h(t)
        self.nfaults[c * self.H + h] += 1
        d = self.fbc.setdefault((c, h), {})
        d[category] = d.get(category, 0) + 1

    def self_resolved(
        self,
        c: int,
        connector: int | None,
        kind: str,
        code: str,
        category: str,
        t0: float,
        t1: float,
        fixed_by: str,
        incident: str,
        vendor_code: str | None = None,
    ) -> None:
        if t1 >= self.T:
            return
        h = self.h(t1)
        cp = self.net.chargers[c]
        self.selfres[c * self.H + h] += 1
        d = self.fixed_by.setdefault((c, h), {})
        d[fixed_by] = d.get(fixed_by, 0) + 1
        if fixed_by in ("soft_reset", "hard_reset"):
            self.resets[c * self.H + h] += 1 if fixed_by == "soft_reset" else 2
        rec: dict[str, Any] = {
            "incident_id": incident,
            "charge_point_id": cp.id,
            "connector_id": connector or None,
            "scope": "connector" if connector else "charge_point",
            "kind": kind,
            "fault_code": code,
            "category": category,
            "started_at": iso(self.ts(t0)),
            "ended_at": iso(self.ts(t1)),
            "fixed_by": fixed_by,
            "vendor_code": vendor_code,
            "sessions_cut": 0,
            "energy_unmet_wh": 0.0,
        }
        # the edge claims the sessions a fault stops, or a charge point stops while it is offline
        # (common/sessions.py): report_cut adds them; a drop's record is keyed by connector -1
        self.cut_records[(c, -1 if kind == "connectivity" else connector or 0, t0)] = rec
        self.site_selfres.setdefault((cp.site_id, h), []).append(rec)

    def incident_id(self, f: PlannedFault, suffix: str = "") -> str:
        raw = f"{self.seed}/{f.fault_id}/{suffix}".encode()
        iid = "sim-" + hashlib.blake2b(raw, digest_size=12).hexdigest()
        self.incidents.setdefault(f.fault_id, []).append(iid)
        return iid

    # ------------------------------------------------------------ faults

    def lay_out_faults(self) -> None:
        raw: dict[tuple[int, int], list[tuple[float, float, PlannedFault]]] = {}
        drops_raw: dict[int, list[tuple[float, float, PlannedFault | None]]] = {}
        for f in self.faults:
            ft = f.type
            for cp_id in f.charge_points:
                c = self.net.by_id[cp_id].index
                cp = self.net.chargers[c]
                if f.kind in ("transient", "stuck"):
                    lo, hi = SOFT_RESET_FIX_S if f.kind == "transient" else HARD_RESET_FIX_S
                    t1 = f.start_s + self.rng.uniform(lo, hi)
                    raw.setdefault((c, f.connector), []).append((f.start_s, t1, f))
                    self.count_fault(c, f.start_s, ft.category)
                    self.self_resolved(
                        c,
                        f.connector,
                        "fault",
                        ft.code,
                        ft.category,
                        f.start_s,
                        t1,
                        "soft_reset" if f.kind == "transient" else "hard_reset",
                        self.incident_id(f),
                        ft.vendor_code,
                    )
                    f.first_symptom_s = f.start_s
                elif f.kind in ("connector_lock", "ground_failure"):
                    end = f.end_s if f.end_s is not None else self.T + 1
                    raw.setdefault((c, f.connector), []).append((f.start_s, end, f))
                    self.count_fault(c, f.start_s, ft.category)
                    f.first_symptom_s = f.start_s
                    self.escalate(f, c, f.start_s, ft.code, ft.vendor_code)
                elif f.kind == "psu_degradation":
                    assert f.fail_s is not None
                    self.psu[c] = f
                    f.first_symptom_s = f.start_s + 2 * 86400  # first session showing the sag
                    self.psu_trips(f, c, raw)
                    if f.fail_s < self.T:
                        end = f.end_s if f.end_s is not None else self.T + 1
                        raw.setdefault((c, 0), []).append((f.fail_s, end, f))
                        self.count_fault(c, f.fail_s, ft.category)
                        self.escalate(f, c, f.fail_s, ft.code, ft.vendor_code)
                elif f.kind == "firmware_bug":
                    if cp.firmware != f.buggy_firmware:
                        continue
                    for k, t0 in enumerate(f.episodes):
                        t1 = t0 + self.rng.uniform(*HARD_RESET_FIX_S)
                        raw.setdefault((c, 0), []).append((t0, t1, f))
                        self.count_fault(c, t0, ft.category)
                        self.self_resolved(
                            c,
                            0,
                            "fault",
                            ft.code,
                            ft.category,
                            t0,
                            t1,
                            "hard_reset",
                            self.incident_id(f, str(k)),
                            ft.vendor_code,
                        )
                    if f.episodes:
                        f.first_symptom_s = f.episodes[0]
                    if f.end_s is not None and f.fixed_firmware:
                        self.fw_changes.setdefault(c, []).append((f.end_s, f.fixed_firmware))
                elif f.kind == "flaky_connectivity":
                    for t0, dur in f.drops:
                        drops_raw.setdefault(c, []).append((t0, dur, f))
                    if f.drops:
                        f.first_symptom_s = f.drops[0][0]
                elif f.kind == "start_failure":
                    self.start_fail.setdefault(c, []).append(f)
        # background disconnects, by uplink quality
        bg = self.sc.data.background
        for cp in self.net.chargers:
            uplink = self.net.site_by_id[cp.site_id].spec.uplink
            rate = bg.disconnects_per_charger_day.get(uplink, 0.0) / 86400
            if rate <= 0:
                continue
            t = self.rng.expovariate(rate)
            while t < self.T:
                drops_raw.setdefault(cp.index, []).append((t, self.rng.uniform(5, 60), None))
                t += self.rng.expovariate(rate)
        for c, lst in drops_raw.items():
            lst.sort(key=lambda x: x[0])
            self.drops[c] = ([x[0] for x in lst], [x[0] + x[1] for x in lst], [x[2] for x in lst])
            cp = self.net.chargers[c]
            for t0, dur, fault in lst:
                h = self.h(t0)
                self.disc[c * self.H + h] += 1
                t, end = t0, min(t0 + dur, self.T)
                while t < end:  # offline seconds per hour
                    hh = self.h(t)
                    nxt = min(end, (hh + 1) * 3600.0)
                    self.offline_s[c * self.H + hh] += nxt - t
                    t = nxt
                if t0 + dur < self.T:
                    iid = (
                        self.incident_id(fault, f"{cp.id}/{int(t0)}")
                        if fault is not None
                        else "sim-"
                        + hashlib.blake2b(
                            f"{self.seed}/drop/{cp.id}/{t0}".encode(), digest_size=12
                        ).hexdigest()
                    )
                    self.self_resolved(
                        c,
                        None,
                        "connectivity",
                        "ConnectionLost",
                        "connectivity",
                        t0,
                        t0 + dur,
                        "self",
                        iid,
                    )
        for key, intervals in raw.items():
            b = _Block()
            b.finish(intervals)
            self.blocks[key] = b

    def psu_trips(
        self,
        f: PlannedFault,
        c: int,
        raw: dict[tuple[int, int], list[tuple[float, float, PlannedFault]]],
    ) -> None:
        """Early symptoms: brief trips a soft reset clears, more often as the failure nears."""
        assert f.fail_s is not None
        span = max(1.0, f.fail_s - f.start_s)
        peak = 1.25 / 86400  # trips per second just before the failure
        t = f.start_s
        while True:  # thinning: a Poisson process whose rate grows with the damage
            t += self.rng.expovariate(peak)
            if t >= min(f.fail_s, self.T):
                return
            sev = (t - f.start_s) / span
            if self.rng.random() * 1.25 > 0.05 + 1.2 * sev * sev:
                continue
            code = self.rng.choice(PSU_TRIP_CODES)
            t1 = t + self.rng.uniform(*SOFT_RESET_FIX_S)
            cat = "contactor" if code == "PowerSwitchFailure" else "overcurrent"
            connector = 1 + self.rng.randrange(self.net.chargers[c].connector_count)
            raw.setdefault((c, connector), []).append((t, t1, f))
            self.count_fault(c, t, cat)
            self.self_resolved(
                c,
                connector,
                "fault",
                code,
                cat,
                t,
                t1,
                "soft_reset",
                self.incident_id(f, f"trip/{int(t)}"),
            )

    def psu_severity(self, c: int, t: float) -> float:
        f = self.psu.get(c)
        if f is None or t < f.start_s or f.fail_s is None:
            return 0.0
        return min(1.0, (t - f.start_s) / max(1.0, f.fail_s - f.start_s))

    def escalate(
        self,
        f: PlannedFault,
        c: int,
        t0: float,
        code: str,
        vendor_code: str | None,
        kind: str = "fault",
        sent_s: float | None = None,
    ) -> None:
        ft = f.type
        cp = self.net.chargers[c]
        sent = sent_s if sent_s is not None else t0 + (5.0 if ft.safety_critical else self.window_s)
        if sent >= self.T:
            return
        f.escalated_s = sent
        attempts: list[dict[str, Any]] = []
        if kind == "fault" and not ft.safety_critical:
            step = self.window_s / 5
            for k, action in enumerate(
                ("confirm", "availability_toggle", "soft_reset", "hard_reset")
            ):
                attempts.append(
                    {
                        "action": action,
                        "at": iso(self.ts(t0 + step * (k + 0.5))),
                        "result": "accepted" if action == "confirm" else "no_change",
                    }
                )
        connector = f.connector if f.scope == "connector" else None
        frame = self.status_frame(cp, f.connector, code, vendor_code, ft.vendor_id, t0, f.fault_id)
        iid = self.incident_id(f, "escalation")
        esc = Escalation.model_validate(
            dict(  # noqa: C408 -- keyword form reads like the Escalation model's fields
                message_id=hashlib.blake2b(
                    f"{self.seed}/msg/{iid}".encode(), digest_size=16
                ).hexdigest(),
                site_id=cp.site_id,
                sent_at=self.ts(sent),
                kind="performance" if kind == "performance" else "fault",
                incident_id=iid,
                charge_point_id=cp.id,
                connector_id=connector,
                scope=f.scope,
                fault={
                    "code": code,
                    "vendor_code": vendor_code,
                    "vendor_id": ft.vendor_id,
                    "info": ft.info,
                    "category": ft.category,
                    "component": ft.component,
                    "chargex_code": ft.chargex_code,
                    "safety_critical": ft.safety_critical,
                },
                started_at=self.ts(t0),
                recovery_attempts=attempts,
                hardware={
                    "vendor": cp.hw.vendor,
                    "model": cp.hw.model,
                    "firmware": cp.firmware,
                    "serial": cp.serial,
                },
                evidence=[
                    {
                        "at": self.ts(t0),
                        "direction": "cp->csms",
                        "frame": frame,
                        "charge_point_id": cp.id,
                    }
                ]
                if frame
                else [],
                sessions_cut=0 if kind == "fault" else None,
                energy_unmet_wh=0.0 if kind == "fault" else None,
            )
        )
        self.escalations.append((sent, esc))
        self.cut_records[(c, f.connector if f.scope == "connector" else 0, t0)] = esc
        if f.end_s is not None and f.end_s < self.T and f.end_s > sent:
            self.site_cleared.setdefault((cp.site_id, self.h(f.end_s)), []).append(iid)

    def status_frame(
        self,
        cp: ChargerSpec,
        connector: int,
        code: str,
        vendor_code: str | None,
        vendor_id: str | None,
        t: float,
        uid: str,
    ) -> str:
        if code in ("SessionStartFailures", "ConnectionLost"):
            return ""
        if cp.ocpp == "1.6":
            payload: dict[str, Any] = {
                "connectorId": connector,
                "errorCode": code,
                "status": "Faulted",
                "timestamp": iso(self.ts(t)),
            }
            if vendor_code:
                payload["vendorErrorCode"] = vendor_code
            if vendor_id:
                payload["vendorId"] = vendor_id
            return orjson.dumps([2, uid[-36:], "StatusNotification", payload]).decode()
        return orjson.dumps(
            [
                2,
                uid[-36:],
                "StatusNotification",
                {
                    "timestamp": iso(self.ts(t)),
                    "connectorStatus": "Faulted",
                    "evseId": max(connector, 1),
                    "connectorId": 1,
                },
            ]
        ).decode()

    # ------------------------------------------------------------ sessions

    def drive(self) -> None:
        dr = self.sc.data.drivers
        bg = self.sc.data.background
        nprng = np.random.default_rng(self.seed + 2)
        rng = self.rng
        start_how = self.start.weekday() * 24 + self.start.hour
        for site in self.net.sites:
            price = site.spec.price_per_kwh
            rates = np.array(
                [
                    arrival_rate_per_s(site, dr, start_how + h, (self.start.hour + h) % 24) * 3600
                    for h in range(self.H)
                ]
            )
            counts = nprng.poisson(rates)
            times = (
                np.repeat(np.arange(self.H) * 3600.0, counts)
                + nprng.random(int(counts.sum())) * 3600
            )
            conns = [(cp, k) for cp in site.chargers for k in range(1, cp.connector_count + 1)]
            busy = [0.0] * len(conns)
            empty = _Block()
            blocks0 = [self.blocks.get((cp.index, 0), empty) for cp, _ in conns]
            blocksk = [self.blocks.get((cp.index, k), empty) for cp, k in conns]
            n = len(conns)
            for t in times.tolist():
                first = rng.randrange(n)
                # every fault the driver met on the way (a connector out, a failed start): a
                # driver who leaves without charging is lost to all of them, in equal shares
                met: list[PlannedFault] = []
                gave_up = False  # left after an ordinary failed start: no fault's doing
                tries = 0
                done = False
                for j in range(n):
                    i = (first + j) % n
                    if busy[i] > t:
                        continue
                    cp, k = conns[i]
                    f = blocks0[i].at(t) or blocksk[i].at(t)
                    if f is not None:
                        _meet(met, f)
                        continue
                    c = cp.index
                    h = int(t // 3600)
                    tries += 1
                    sf = self.start_failing(c, t)
                    if sf is not None:
                        self.failed[c * self.H + h] += 1
                        sf.failed_starts += 1
                        if sf.first_symptom_s is None:
                            sf.first_symptom_s = t
                        if sf.failed_starts == 3 and sf.escalated_s is None:
                            # the edge notices the third failed start in a row
                            self.escalate(
                                sf,
                                c,
                                sf.first_symptom_s,
                                "SessionStartFailures",
                                None,
                                kind="performance",
                                sent_s=t + 5.0,
                            )
                        _meet(met, sf)
                        if tries >= 2:
                            break
                        continue
                    drop = self.dropped(c, t)
                    if drop is not False and rng.random() < OFFLINE_START_FAIL_P:
                        self.failed[c * self.H + h] += 1
                        if isinstance(drop, PlannedFault):
                            _meet(met, drop)
                            drop.failed_starts += 1
                        if tries >= 2:
                            break
                        continue
                    if rng.random() < dr.failed_start_ratio:
                        self.failed[c * self.H + h] += 1
                        if rng.random() > 0.7:
                            # the driver gives up after an ordinary failed start: they would
                            # have had the same chance at the connector a fault took away
                            gave_up = True
                            break
                    busy[i] = self.session(cp, c, k, i, t, blocks0[i], blocksk[i], price, dr, bg)
                    done = True
                    break
                if not done and met:
                    want = session_energy_wh(rng, conns[first][0].hw.dc, dr)
                    if not gave_up:
                        share = 1.0 / len(met)
                        for f in met:
                            f.sessions_lost += share
                            f.energy_lost_wh += want * share

    def start_failing(self, c: int, t: float) -> PlannedFault | None:
        for f in self.start_fail.get(c, ()):
            if f.active(t):
                return f
        return None

    def dropped(self, c: int, t: float) -> PlannedFault | bool | None:
        """The drop in progress at ``t`` (its fault, None for a background one), else False."""
        d = self.drops.get(c)
        if not d:
            return False
        i = bisect.bisect_right(d[0], t) - 1
        if i >= 0 and d[1][i] > t:
            return d[2][i]
        return False

    def session(
        self,
        cp: ChargerSpec,
        c: int,
        k: int,
        i: int,
        t: float,
        b0: _Block,
        bk: _Block,
        price: float,
        dr: Any,
        bg: Any,
    ) -> float:
        rng = self.rng
        hw = cp.hw
        want = session_energy_wh(rng, hw.dc, dr)
        ev = ev_max_power_w(rng, hw.dc)
        sev = self.psu_severity(c, t) if hw.dc else 0.0
        power = min(hw.connector_power_w, ev) * rng.uniform(0.85, 0.98)
        if sev > 0:
            power = min(power, hw.connector_power_w * (1 - 0.35 * sev) * rng.uniform(0.9, 1.0))
        dur = want / power * 3600
        if not hw.dc:
            dur = min(dur, dr.ac_max_dwell_h * 3600)
        energy = power * dur / 3600
        end = t + dur
        early = False
        blame: PlannedFault | None = None
        if rng.random() < bg.early_end_ratio + 0.25 * sev:
            end = t + dur * rng.uniform(0.1, 0.8)
            early = True
            if sev > 0 and rng.random() < 0.25 * sev / (bg.early_end_ratio + 0.25 * sev):
                blame = self.psu[c]
        cut_by: tuple[int, int, float] | None = None
        for conn, b in ((0, b0), (k, bk)):
            nxt = b.next_start(t)
            if nxt is not None and nxt[0] < end:
                end, early, blame = nxt[0], True, nxt[1]
                cut_by = (c, conn, nxt[0])
        d = self.drops.get(c)
        if d:
            j = bisect.bisect_right(d[0], t)
            if j < len(d[0]) and d[0][j] < end and rng.random() < DROP_ENDS_SESSION_P:
                end, early, blame = d[0][j], True, d[2][j]
                cut_by = (c, -1, d[0][j])
        delivered = power * (end - t) / 3600
        if early and blame is not None:
            blame.energy_lost_wh += max(0.0, energy - delivered)
        past = self.complete.setdefault(c, deque(maxlen=PAST_SESSIONS))
        if cut_by is not None and cut_by in self.cut_records:
            self.report_cut(self.cut_records[cut_by], hw.dc, want, power, t, end, past)
        elif not early:
            past.append((end, energy))
        self.sessions += 1
        self.energy_total += delivered
        h0 = int(t // 3600)
        self.started[c * self.H + h0] += 1
        if early:
            self.early[c * self.H + min(self.H - 1, int(end // 3600))] += 1
        day = (self.start + timedelta(seconds=t)).timetuple().tm_yday
        temp = (
            ambient_c((self.start.hour + h0) % 24, day)
            + 14 * power / hw.connector_power_w
            + 22 * sev
            + rng.uniform(-1.5, 1.5)
        )
        tt = t
        while tt < end and tt < self.T:
            hh = int(tt // 3600)
            upto = min(end, (hh + 1) * 3600.0)
            self.energy[c * self.H + hh] += power * (upto - tt) / 3600
            if power > self.maxp[c * self.H + hh]:
                self.maxp[c * self.H + hh] = power
            if temp > self.tmax[c * self.H + hh]:
                self.tmax[c * self.H + hh] = temp
            self.tsum[c * self.H + hh] += temp
            self.tn[c * self.H + hh] += 1
            tt = upto
        busy_until = end + rng.uniform(60, 600)  # the driver unplugs and drives off
        tt = t
        while tt < busy_until and tt < self.T:
            hh = int(tt // 3600)
            upto = min(busy_until, (hh + 1) * 3600.0)
            self.occ[c * self.H + hh] += upto - tt
            tt = upto
        return busy_until

    @staticmethod
    def report_cut(
        rec: dict[str, Any] | Escalation,
        dc: bool,
        want: float,
        power: float,
        t: float,
        end: float,
        past: deque[tuple[float, float]],
    ) -> None:
        """Add a session cut at ``end`` to the incident's record, as the edge measures it: from
        the car's SoC in the MeterValues every ``METER_INTERVAL_S`` (DC; the simulator's cars go
        linearly from 20 % to 100 % over what they want, which is also the SoC the edge learns its
        complete sessions end at), else from the unit's complete sessions seen so far."""
        delivered = power * (end - t) / 3600
        first = last = None
        n = int((end - t) // METER_INTERVAL_S)
        if dc and n >= 2:
            e1 = power * METER_INTERVAL_S / 3600
            en = power * n * METER_INTERVAL_S / 3600
            first = (round(20 + 80 * e1 / want, 1), round(e1, 1))
            last = (round(20 + 80 * en / want, 1), round(en, 1))
        seen = [e for ended, e in past if ended <= end]
        unmet = unmet_energy_wh(delivered, first, last, delivered, DEFAULT_TARGET_SOC, seen)
        if isinstance(rec, Escalation):
            rec.sessions_cut = (rec.sessions_cut or 0) + 1
            rec.energy_unmet_wh = (
                None
                if unmet is None or rec.energy_unmet_wh is None
                else round(rec.energy_unmet_wh + unmet, 1)
            )
        else:
            rec["sessions_cut"] = (rec.get("sessions_cut") or 0) + 1
            prev = rec.get("energy_unmet_wh")
            rec["energy_unmet_wh"] = (
                None if unmet is None or prev is None else round(prev + unmet, 1)
            )

    # ------------------------------------------------------------ output

    def write(self, out: Path) -> HistorySummary:
        out.mkdir(parents=True, exist_ok=True)
        self.write_network(out / "network.json")
        n_digests = self.write_digests(out / "digests.jsonl")
        self.escalations.sort(key=lambda x: x[0])
        with (out / "escalations.jsonl").open("wb") as fh:
            for _, esc in self.escalations:
                fh.write(esc.to_json() + b"\n")
        lost: dict[str, float] = {}
        with (out / "ground_truth.jsonl").open("wb") as fh:
            for f in self.faults:
                rec = self.ground_truth(f)
                if rec is None:
                    continue
                cur = rec["revenue_lost"]["currency"]
                lost[cur] = round(lost.get(cur, 0.0) + rec["revenue_lost"]["amount"], 2)
                fh.write(orjson.dumps(rec) + b"\n")
        return HistorySummary(
            self.start,
            self.ts(self.T),
            len(self.net.sites),
            len(self.net.chargers),
            n_digests,
            len(self.escalations),
            len(self.faults),
            self.sessions,
            round(self.energy_total / 1000, 1),
            lost,
        )

    def write_network(self, path: Path) -> None:
        sites = []
        for s in self.net.sites:
            sp = s.spec
            sites.append(
                {
                    "id": sp.id,
                    "name": sp.name,
                    "lat": sp.lat,
                    "lon": sp.lon,
                    "currency": sp.currency,
                    "price_per_kwh": sp.price_per_kwh,
                    "opening_hours": list(sp.opening_hours),
                    "uplink": sp.uplink,
                    "chargers": [charger_json(cp) for cp in s.chargers],
                }
            )
        doc = {
            "scenario": self.sc.data.network.name,
            "start": iso(self.start),
            "end": iso(self.ts(self.T)),
            "seed": self.seed,
            "sites": sites,
        }
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    def write_digests(self, path: Path) -> int:
        H = self.H
        names = (
            "started", "failed", "early", "energy", "maxp", "tmax", "tsum", "tn", "disc",
            "nfaults", "selfres", "resets", "offline_s", "occ",
        )  # fmt: skip
        arrays = {name: getattr(self, name) for name in names}
        hour_iso = [iso(self.ts(h * 3600.0)) for h in range(H + 1)]
        sent_iso = [iso(self.ts(h * 3600.0 + 2)) for h in range(H + 1)]
        n = 0
        fw_now = {cp.index: cp.firmware for cp in self.net.chargers}
        with path.open("wb") as fh:
            for h in range(H):
                col = {name: a[h::H].tolist() for name, a in arrays.items()}
                t_end = (h + 1) * 3600.0
                for c, changes in self.fw_changes.items():
                    for when, fw in changes:
                        if h * 3600.0 <= when < t_end:
                            fw_now[c] = fw
                for site in self.net.sites:
                    sid = site.id
                    chargers = []
                    for cp in site.chargers:
                        c = cp.index
                        d: dict[str, Any] = {
                            "charge_point_id": cp.id,
                            "vendor": cp.hw.vendor,
                            "model": cp.hw.model,
                            "firmware": fw_now[c],
                            "connectors": cp.connector_count,
                            "connected_s": round(max(0.0, 3600.0 - col["offline_s"][c]), 1),
                            "rated_power_w": cp.hw.rated_power_w,
                        }
                        v = col["disc"][c]
                        if v:
                            d["disconnects"] = v
                        v = col["nfaults"][c]
                        if v:
                            d["faults"] = v
                            d["faults_by_category"] = self.fbc.get((c, h), {})
                        v = col["selfres"][c]
                        if v:
                            d["self_resolved"] = v
                            d["fixed_by"] = self.fixed_by.get((c, h), {})
                        v = col["resets"][c]
                        if v:
                            d["resets"] = v
                        v = col["started"][c]
                        if v:
                            d["sessions_started"] = v
                        v = col["failed"][c]
                        if v:
                            d["sessions_failed"] = v
                        v = col["early"][c]
                        if v:
                            d["sessions_ended_early"] = v
                        v = col["energy"][c]
                        if v:
                            d["energy_wh"] = round(v, 1)
                            d["max_power_w"] = round(col["maxp"][c], 1)
                        v = col["occ"][c]
                        if v:
                            d["occupied_s"] = round(v, 1)
                        tn = col["tn"][c]
                        if tn:
                            d["max_temperature_c"] = round(col["tmax"][c], 1)
                            d["mean_temperature_c"] = round(col["tsum"][c] / tn, 1)
                        chargers.append(d)
                    digest: dict[str, Any] = {
                        "schema_version": SCHEMA_VERSION,
                        "message_id": hashlib.blake2b(
                            f"{self.seed}/{sid}/{h}".encode(), digest_size=16
                        ).hexdigest(),
                        "site_id": sid,
                        "sent_at": sent_iso[h + 1],
                        "interval_start": hour_iso[h],
                        "interval_end": hour_iso[h + 1],
                        "currency": site.spec.currency,
                        "price_per_kwh": site.spec.price_per_kwh,
                        "chargers": chargers,
                    }
                    sr = self.site_selfres.get((sid, h))
                    if sr:
                        digest["self_resolved"] = sr
                    cl = self.site_cleared.get((sid, h))
                    if cl:
                        digest["cleared_incidents"] = cl
                    fh.write(orjson.dumps(digest))
                    fh.write(b"\n")
                    n += 1
        return n

    def ground_truth(self, f: PlannedFault) -> dict[str, Any] | None:
        net = self.net
        cp0 = net.by_id[f.charge_points[0]]
        if f.kind == "firmware_bug" and cp0.firmware != f.buggy_firmware:
            return None
        site = net.site_by_id[f.site_id]
        started = f.start_s
        failed_at = f.fail_s if f.kind == "psu_degradation" else None
        if f.kind == "firmware_bug" and f.episodes:
            started = f.episodes[0]
        if started >= self.T:
            return None
        return ground_truth_record(
            f,
            net,
            cp0 if f.scope != "site" else None,
            site.spec.currency,
            site.spec.price_per_kwh,
            self.ts,
            started_s=started,
            failed_s=failed_at,
            incident_ids=self.incidents.get(f.fault_id, []),
            horizon_s=self.T,
        )


def _meet(met: list[PlannedFault], f: PlannedFault) -> None:
    if not any(m is f for m in met):
        met.append(f)


def charger_json(cp: ChargerSpec) -> dict[str, Any]:
    return {
        "charge_point_id": cp.id,
        "vendor": cp.hw.vendor,
        "model": cp.hw.model,
        "model_key": cp.hw.key,
        "firmware": cp.firmware,
        "serial": cp.serial,
        "rated_power_w": cp.hw.rated_power_w,
        "connector_power_w": cp.hw.connector_power_w,
        "dc": cp.hw.dc,
        "ocpp": cp.ocpp,
        "connectors": [{"connector_id": i + 1, "type": t} for i, t in enumerate(cp.hw.connectors)],
    }


def ground_truth_record(
    f: PlannedFault,
    net: Network,
    cp: ChargerSpec | None,
    currency: str,
    price_per_kwh: float,
    ts: Any,
    *,
    started_s: float | None = None,
    failed_s: float | None = None,
    incident_ids: list[str] | None = None,
    horizon_s: float | None = None,
) -> dict[str, Any]:
    """One ground-truth line.

    Fields: ``fault_id, kind, site_id, charge_point_id`` (null for scope site),
    ``charge_points`` (all affected), ``connector_id`` (null unless scope
    connector), ``scope, code, vendor_code, category, safety_critical,
    hardware {vendor, model, firmware}, started_at, first_symptom_at,
    first_symptom, failed_at`` (PSU hard failure), ``ended_at`` (repaired, or
    null), ``fix`` (RecommendedAction), ``cleared_by`` (recovery actions that
    clear it), ``self_resolving`` (the edge clears it inside its window),
    ``escalated_at, incident_ids, related_group, episodes, disconnects,
    failed_starts, sessions_lost, energy_lost_wh, revenue_lost {amount,
    currency, method}, background``.

    A driver who arrives and cannot charge is lost to every fault they met on the way (a
    connector out, a start that failed), in equal shares (so ``sessions_lost`` may be
    fractional); one who gives up after an ordinary failed start (the drivers'
    ``failed_start_ratio``) is lost to none: they had the same chance at the connector a fault
    took away. Sessions a fault cut short count what the driver wanted and did not get.
    """
    ft = FAULT_TYPES[f.kind]
    start = f.start_s if started_s is None else started_s
    first = f.first_symptom_s if f.first_symptom_s is not None else start
    end = f.end_s if f.end_s is not None and (horizon_s is None or f.end_s < horizon_s) else None
    related = None
    if f.kind in ("psu_degradation", "firmware_bug") and cp is not None:
        related = f"{f.kind}:{cp.hw.key}" + (f":{f.buggy_firmware}" if f.buggy_firmware else "")
    amount = round(f.energy_lost_wh / 1000 * price_per_kwh, 2)
    return {
        "fault_id": f.fault_id,
        "kind": f.kind,
        "site_id": f.site_id,
        "charge_point_id": cp.id if cp is not None else None,
        "charge_points": f.charge_points,
        "connector_id": f.connector if f.scope == "connector" else None,
        "scope": f.scope,
        "code": ft.code,
        "vendor_code": ft.vendor_code,
        "category": ft.category,
        "safety_critical": ft.safety_critical,
        "hardware": (
            {
                "vendor": cp.hw.vendor,
                "model": cp.hw.model,
                "firmware": f.buggy_firmware or cp.firmware,
            }
            if cp is not None
            else None
        ),
        "started_at": iso(ts(start)),
        "first_symptom_at": iso(ts(first)),
        "first_symptom": ft.first_symptom,
        "failed_at": iso(ts(failed_s)) if failed_s is not None else None,
        "ended_at": iso(ts(end)) if end is not None else None,
        "fix": ft.fix,
        "cleared_by": sorted(ft.cleared_by),
        "self_resolving": f.kind in ("transient", "stuck") or (f.kind == "firmware_bug"),
        "escalated_at": iso(ts(f.escalated_s)) if f.escalated_s is not None else None,
        "incident_ids": incident_ids or [],
        "related_group": related,
        "episodes": len(f.episodes),
        "disconnects": len(f.drops),
        "failed_starts": f.failed_starts,
        "sessions_lost": round(f.sessions_lost, 2),
        "energy_lost_wh": round(f.energy_lost_wh, 1),
        "revenue_lost": {
            "amount": amount,
            "currency": currency,
            "method": "drivers who arrived and could not charge (shared equally between the faults"
            " each met on the way; not those who left after an ordinary failed start), and sessions"
            " the fault cut short, x energy wanted x price",
        },
        "background": f.background,
    }


def generate_history(
    scenario: Scenario,
    days: float,
    out: str | Path,
    *,
    seed: int | None = None,
    start: datetime | None = None,
    window_s: float = 600.0,
) -> HistorySummary:
    """Write ``network.json``, ``digests.jsonl``, ``escalations.jsonl``, ``ground_truth.jsonl`` to ``out``."""
    if days <= 0:
        raise ValueError("days must be positive")
    seed = scenario.data.network.seed if seed is None else seed
    if start is None:
        start = scenario.data.network.start or default_start(days)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    gen = _Gen(scenario, days, start, seed, window_s)
    gen.lay_out_faults()
    gen.drive()
    return gen.write(Path(out))
