"""Prometheus metrics of the collector (served at ``/metrics``).

A private registry per collector, so tests and several collectors in one
process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "chargesight_ingest_received", "MQTT messages received", ["kind"], registry=r
        )
        self.stored = Counter(
            "chargesight_ingest_stored", "New messages stored", ["kind"], registry=r
        )
        self.duplicates = Counter(
            "chargesight_ingest_duplicates", "Re-deliveries ignored by message_id", registry=r
        )
        self.dead_letters = Counter(
            "chargesight_ingest_dead_letters", "Invalid messages kept in dead_letters", registry=r
        )
        self.batch_seconds = Histogram(
            "chargesight_ingest_batch_seconds", "Time to store one batch", registry=r
        )
        self.lag_seconds = Gauge(
            "chargesight_ingest_lag_seconds",
            "Receipt-to-commit delay of the last batch's oldest message",
            registry=r,
        )
        self.queue_depth = Gauge(
            "chargesight_ingest_queue_depth", "Messages received, not yet stored", registry=r
        )
        self.db_errors = Counter(
            "chargesight_ingest_db_errors", "Batches retried after a database error", registry=r
        )
        self.id_conflicts = Counter(
            "chargesight_ingest_charger_id_conflicts",
            "Batches in which two sites reported the same charge point id (logged as"
            " charge_point_id_conflict)",
            registry=r,
        )
        self.issues = Gauge("chargesight_issues", "Issues by status", ["status"], registry=r)
        self.analysis_seconds = Histogram(
            "chargesight_analysis_seconds", "Time to analyse one stored batch", registry=r
        )
        self.caught_up = Counter(
            "chargesight_analysis_caught_up",
            "Messages a collector now gone stored and never analysed, analysed at catch-up",
            registry=r,
        )
