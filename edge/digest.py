"""Digest counters: per charge point, per interval, small (bytes per hour, not megabytes).

:class:`DigestCollector` is fed the same events as detection plus what the
recovery engine decides (incidents opened, self-resolved, cleared, resets)
and :meth:`DigestCollector.cut` turns the interval into a
:class:`~chargesight.common.messages.Digest` and starts the next one.
Sans I/O: times come from the events and the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from chargesight.common.events import (
    Boot,
    ConnectionDown,
    ConnectionUp,
    ConnectorStatus,
    Event,
    MeterSample,
    TransactionEnded,
    TransactionStarted,
)
from chargesight.common.messages import ChargerCounters, Digest, SelfResolved


@dataclass(slots=True)
class _Charger:
    id: str
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    connectors: set[int] = field(default_factory=set)
    rated_power_w: float | None = None
    connected_since: datetime | None = None
    # interval counters
    connected_s: float = 0.0
    disconnects: int = 0
    faults: int = 0
    faults_by_category: dict[str, int] = field(default_factory=dict)
    self_resolved: int = 0
    fixed_by: dict[str, int] = field(default_factory=dict)
    sessions_started: int = 0
    sessions_failed: int = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    temp_max: float | None = None
    temp_sum: float = 0.0
    temp_n: int = 0
    resets: int = 0
    meter_start: dict[str, float] = field(default_factory=dict)  # transaction id → Wh

    def reset_interval(self) -> None:
        self.connected_s = 0.0
        self.disconnects = self.faults = self.self_resolved = 0
        self.faults_by_category = {}
        self.fixed_by = {}
        self.sessions_started = self.sessions_failed = self.resets = 0
        self.energy_wh = 0.0
        self.max_power_w = self.temp_max = None
        self.temp_sum, self.temp_n = 0.0, 0


class DigestCollector:
    def __init__(
        self,
        site_id: str,
        start: datetime,
        *,
        currency: str | None = None,
        price_per_kwh: float | None = None,
    ) -> None:
        self.site_id = site_id
        self.currency = currency
        self.price_per_kwh = price_per_kwh
        self.interval_start = start
        self._chargers: dict[str, _Charger] = {}
        self._self_resolved: list[SelfResolved] = []
        self._cleared: list[str] = []

    def _charger(self, cp: str) -> _Charger:
        c = self._chargers.get(cp)
        if c is None:
            c = self._chargers[cp] = _Charger(cp)
        return c

    # ------------------------------------------------------------ events

    def feed(self, event: Event, *, ordered_reboot: bool = False) -> None:
        """Count one event. A disconnect the agent caused with a reset is not counted as a drop."""
        c = self._charger(event.charge_point_id)
        if isinstance(event, ConnectionUp):
            c.connected_since = event.at
        elif isinstance(event, ConnectionDown):
            if c.connected_since is not None:
                c.connected_s += max(
                    0.0, (event.at - max(c.connected_since, self.interval_start)).total_seconds()
                )
            c.connected_since = None
            if not ordered_reboot:
                c.disconnects += 1
        elif isinstance(event, Boot):
            c.vendor, c.model, c.firmware = event.vendor, event.model, event.firmware
        elif isinstance(event, ConnectorStatus):
            if event.connector_id > 0:
                c.connectors.add(event.connector_id)
        elif isinstance(event, TransactionStarted):
            c.sessions_started += 1
            if event.meter_start_wh is not None:
                c.meter_start[event.transaction_id or f"connector:{event.connector_id}"] = (
                    event.meter_start_wh
                )
        elif isinstance(event, TransactionEnded):
            start = c.meter_start.pop(event.transaction_id or "", None)
            if start is None and event.connector_id is not None:
                start = c.meter_start.pop(f"connector:{event.connector_id}", None)
            if start is not None and event.meter_stop_wh is not None:
                c.energy_wh += max(0.0, event.meter_stop_wh - start)
        elif isinstance(event, MeterSample):
            power = event.values.get("Power.Active.Import")
            if power is not None:
                c.max_power_w = max(c.max_power_w or 0.0, power)
            temp = event.values.get("Temperature")
            if temp is not None:
                c.temp_max = max(c.temp_max if c.temp_max is not None else temp, temp)
                c.temp_sum += temp
                c.temp_n += 1

    # ------------------------------------------------------------ engine decisions

    def set_rated_power(self, charge_point_id: str, rated_power_w: float | None) -> None:
        self._charger(charge_point_id).rated_power_w = rated_power_w

    def fault_opened(self, charge_point_id: str, category: str) -> None:
        c = self._charger(charge_point_id)
        c.faults += 1
        c.faults_by_category[category] = c.faults_by_category.get(category, 0) + 1

    def session_failed(self, charge_point_id: str) -> None:
        self._charger(charge_point_id).sessions_failed += 1

    def reset_sent(self, charge_point_id: str) -> None:
        self._charger(charge_point_id).resets += 1

    def self_resolved(self, record: SelfResolved) -> None:
        self._self_resolved.append(record)
        for cp in [record.charge_point_id] if record.charge_point_id else []:
            c = self._charger(cp)
            c.self_resolved += 1
            c.fixed_by[record.fixed_by] = c.fixed_by.get(record.fixed_by, 0) + 1

    def cleared(self, incident_id: str) -> None:
        self._cleared.append(incident_id)

    # ------------------------------------------------------------ output

    def cut(self, end: datetime) -> Digest:
        """The digest for ``[interval_start, end)``; counters restart at ``end``."""
        chargers = []
        for c in self._chargers.values():
            connected = c.connected_s
            if c.connected_since is not None:
                connected += max(
                    0.0, (end - max(c.connected_since, self.interval_start)).total_seconds()
                )
            chargers.append(
                ChargerCounters(
                    charge_point_id=c.id,
                    vendor=c.vendor,
                    model=c.model,
                    firmware=c.firmware,
                    connectors=len(c.connectors) or None,
                    connected_s=round(connected, 1),
                    disconnects=c.disconnects,
                    faults=c.faults,
                    faults_by_category=dict(c.faults_by_category),
                    self_resolved=c.self_resolved,
                    fixed_by=dict(c.fixed_by),
                    sessions_started=c.sessions_started,
                    sessions_failed=c.sessions_failed,
                    energy_wh=round(c.energy_wh, 1),
                    max_power_w=c.max_power_w,
                    rated_power_w=c.rated_power_w,
                    max_temperature_c=c.temp_max,
                    mean_temperature_c=round(c.temp_sum / c.temp_n, 2) if c.temp_n else None,
                    resets=c.resets,
                )
            )
            c.reset_interval()
        digest = Digest(
            site_id=self.site_id,
            interval_start=self.interval_start,
            interval_end=end,
            currency=self.currency,
            price_per_kwh=self.price_per_kwh,
            chargers=chargers,
            self_resolved=self._self_resolved,
            cleared_incidents=self._cleared,
        )
        self._self_resolved, self._cleared = [], []
        self.interval_start = end
        return digest
