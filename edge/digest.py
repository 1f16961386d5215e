"""Digest counters: per charge point, per interval, small (bytes per hour, not megabytes).

:class:`DigestCollector` is fed the same events as detection plus what the
recovery engine decides (incidents opened, sessions failed, self-resolved,
cleared, resets) and :meth:`DigestCollector.cut` turns the interval into a
:class:`~chargesight.common.messages.Digest` and starts the next one.

The counting is Foresight's (:mod:`chargesight.common.features`): the
collector feeds a :class:`~chargesight.common.features.FeatureBank` and a
digest's counters are its closed buckets
(:meth:`~chargesight.common.features.HourBucket.to_counters`). So the features
the cloud computes from stored digests are, bit for bit, those the edge
computes from the events — one definition per counter, written down in that
module. An edge :class:`~chargesight.edge.anomaly.AnomalyMonitor` attached to
the collector (:meth:`~chargesight.edge.anomaly.AnomalyMonitor.attach`) scores
these very windows.

The engine calls :meth:`fault_opened` and :meth:`session_failed` while it
handles the event that caused them (right after :meth:`feed`), so they are
counted on that event's connector too.

Sans I/O: times come from the events and the caller.
"""

from __future__ import annotations

from datetime import datetime

from chargesight.common.events import Event
from chargesight.common.features import FeatureBank, HourBucket
from chargesight.common.messages import ChargerCounters, Digest, SelfResolved


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
        self.bank = FeatureBank(infer_faults=False)
        """The feature windows of every charge point, fed with the engine's signals."""
        self.last_cut: dict[str, HourBucket] = {}
        """The buckets of the latest :meth:`cut` (what its digest carries)."""
        self._fixed_by: dict[str, dict[str, int]] = {}
        self._self_resolved: list[SelfResolved] = []
        self._cleared: list[str] = []

    # ------------------------------------------------------------ events

    def feed(self, event: Event, *, ordered_reboot: bool = False) -> None:
        """Count one event. A disconnect the agent caused with a reset is not counted as a drop."""
        self.bank.feed(event, ordered_reboot=ordered_reboot)

    # ------------------------------------------------------------ engine decisions

    def set_rated_power(self, charge_point_id: str, rated_power_w: float | None) -> None:
        self.bank.window(charge_point_id).set_hardware(rated_power_w=rated_power_w)

    def fault_opened(self, charge_point_id: str, category: str) -> None:
        w = self.bank.window(charge_point_id)
        w.record_fault(category, connector_id=w.last_connector)

    def session_failed(self, charge_point_id: str) -> None:
        w = self.bank.window(charge_point_id)
        w.record_session_failed(connector_id=w.last_connector)

    def reset_sent(self, charge_point_id: str) -> None:
        self.bank.window(charge_point_id).record_reset()

    def self_resolved(self, record: SelfResolved) -> None:
        self._self_resolved.append(record)
        cp = record.charge_point_id
        if cp:
            self.bank.window(cp).record_self_resolved()
            fixed = self._fixed_by.setdefault(cp, {})
            fixed[record.fixed_by] = fixed.get(record.fixed_by, 0) + 1

    def cleared(self, incident_id: str) -> None:
        self._cleared.append(incident_id)

    # ------------------------------------------------------------ output

    def cut(self, end: datetime) -> Digest:
        """The digest for ``[interval_start, end)``; counters restart at ``end``."""
        self.last_cut = self.bank.close(end, self.interval_start)
        chargers = []
        for cp, bucket in self.last_cut.items():
            w = self.bank.windows[cp]
            chargers.append(
                ChargerCounters(
                    charge_point_id=cp,
                    vendor=w.vendor,
                    model=w.model,
                    firmware=w.firmware,
                    connectors=len(w.connector_ids) or None,
                    fixed_by=self._fixed_by.pop(cp, {}),
                    **bucket.to_counters(),
                )
            )
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
        self._self_resolved, self._cleared, self._fixed_by = [], [], {}
        self.interval_start = end
        return digest
