"""Builders for edge messages (from the common schemas) and an MQTT publisher for the tests."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.common.messages import (
    ChargerCounters,
    Digest,
    EdgeMessage,
    Escalation,
    EvidenceFrame,
    Fault,
    Hardware,
    RecoveryAttempt,
    SelfResolved,
    digests_topic,
    escalations_topic,
)

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday


def escalation(
    site: str,
    cp: str | None,
    *,
    connector: int | None = None,
    scope: str = "charge_point",
    code: str = "InternalError",
    vendor_code: str | None = "E42",
    category: str = "software",
    component: str | None = None,
    started_at: datetime = T0,
    sent_at: datetime | None = None,
    model: str = "DC50",
    vendor: str = "Acme",
    firmware: str = "1.2.0",
    incident_id: str | None = None,
    status: str = "open",
    chargers: Sequence[str] = (),
    kind: str = "fault",
    safety_critical: bool = False,
    attempts: Sequence[tuple[str, str]] = (
        ("soft_reset", "no_change"),
        ("hard_reset", "no_change"),
    ),
    message_id: str | None = None,
    ended_at: datetime | None = None,
) -> Escalation:
    sent = sent_at or started_at + timedelta(minutes=10)
    return Escalation(
        message_id=message_id or uuid.uuid4().hex,
        site_id=site,
        sent_at=sent,
        kind=kind,  # type: ignore[arg-type]
        incident_id=incident_id or uuid.uuid4().hex[:12],
        charge_point_id=cp,
        connector_id=connector,
        scope=scope,  # type: ignore[arg-type]
        chargers=list(chargers),
        fault=Fault(
            code=code,
            vendor_code=vendor_code,
            category=category,
            component=component,
            safety_critical=safety_critical,
        ),
        started_at=started_at,
        ended_at=ended_at,
        status=status,  # type: ignore[arg-type]
        recovery_attempts=[
            RecoveryAttempt(action=a, at=started_at + timedelta(minutes=2 * (i + 1)), result=r)
            for i, (a, r) in enumerate(attempts)
        ],
        hardware=Hardware(vendor=vendor, model=model, firmware=firmware),
        evidence=[
            EvidenceFrame(
                at=started_at,
                direction="cp->csms",
                frame=f'[2,"1","StatusNotification",{{"connectorId":{connector or 0},'
                f'"errorCode":"{code}","status":"Faulted"}}]',
            )
        ],
    )


def counters(cp: str, **kw: Any) -> ChargerCounters:
    base: dict[str, Any] = {"vendor": "Acme", "model": "DC50", "firmware": "1.2.0", "connectors": 2,
                            "connected_s": 3600.0, "rated_power_w": 50_000.0}  # fmt: skip
    base.update(kw)
    return ChargerCounters(charge_point_id=cp, **base)


def digest(
    site: str,
    start: datetime,
    chargers: Iterable[ChargerCounters],
    *,
    hours: float = 1.0,
    price: float | None = 0.5,
    currency: str | None = "EUR",
    self_resolved: Sequence[SelfResolved] = (),
    cleared: Sequence[str] = (),
) -> Digest:
    end = start + timedelta(hours=hours)
    return Digest(
        site_id=site,
        sent_at=end,
        interval_start=start,
        interval_end=end,
        currency=currency,
        price_per_kwh=price,
        chargers=list(chargers),
        self_resolved=list(self_resolved),
        cleared_incidents=list(cleared),
    )


def usage_history(
    site: str,
    cps: Sequence[str],
    start: datetime,
    hours: int,
    sessions: int = 2,
    energy_wh: float = 20_000.0,
    price: float | None = 0.5,
    **kw: Any,
) -> list[Digest]:
    """Hourly digests: every charger starts ``sessions`` sessions of ``energy_wh`` each hour."""
    return [
        digest(
            site,
            start + timedelta(hours=h),
            [
                counters(cp, sessions_started=sessions, energy_wh=sessions * energy_wh, **kw)
                for cp in cps
            ],
        )
        for h in range(hours)
    ]


def blip(cp: str, at: datetime, minutes: float = 5.0, kind: str = "connectivity") -> SelfResolved:
    return SelfResolved(
        incident_id=uuid.uuid4().hex[:12],
        charge_point_id=cp,
        connector_id=None,
        scope="charge_point",
        kind=kind,
        fault_code="ConnectionLost",
        category="connectivity",
        started_at=at,
        ended_at=at + timedelta(minutes=minutes),
        fixed_by="self",
    )


def topic_for(msg: EdgeMessage) -> str:
    if isinstance(msg, Escalation):
        return escalations_topic(msg.site_id)
    if isinstance(msg, Digest):
        return digests_topic(msg.site_id)
    raise TypeError(type(msg))


class Publisher:
    """A real MQTT client publishing at QoS 1 and waiting for every PUBACK."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        if not connected.wait(10):
            raise TimeoutError("publisher could not connect")

    def raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def send(self, *msgs: EdgeMessage) -> int:
        infos = [self.client.publish(topic_for(m), m.to_json(), qos=1) for m in msgs]
        for i in infos:
            i.wait_for_publish(10)
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
