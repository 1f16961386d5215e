"""Operator requests to an edge agent: publish on ``.../requests``, the reply comes back.

The cloud side of CONTRACT.md's ``requests``/``replies`` topics. An operator
(``POST /api/v1/sites/{site_id}/requests``) asks a site's agent for a log
excerpt, its status, a re-run of the recovery playbook for a charge point, or
maintenance mode. The request is recorded in ``edge_requests`` and published
at QoS 1 with paho (a low-rate control path; ingest has its own subscriber);
the agent checks its allow-list and the expiry, answers on ``.../replies``,
and the collector stores the reply like any edge message, where
``GET /api/v1/requests/{id}`` finds it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from psycopg.types.json import Jsonb

from chargesight.common.configload import MqttClientSection
from chargesight.common.logs import get_logger
from chargesight.common.messages import Request, RequestKind, requests_topic

log = get_logger(__name__)

PUBLISH_TIMEOUT_S = 10.0


class RequestNotSent(Exception):
    """The broker did not take the request (unreachable, or no PUBACK in time).

    ``maybe_sent``: it was handed to the MQTT client, which keeps it and may still deliver
    it (no PUBACK in time): the request must be kept, or a retry could run it twice."""

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class RequestSender:
    """One paho client, connected in the background, publishing requests at QoS 1."""

    def __init__(self, config: MqttClientSection) -> None:
        self.config = config
        self._host, self._port = config.host, config.port
        v5 = config.protocol != "3.1.1"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"chargesight-cloud-requests-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        ctx = config.ssl_context()
        if ctx is not None:
            self._client.tls_set_context(ctx)
        self._client.reconnect_delay_set(1, 30)
        self._started = False

    def start(self) -> None:
        """Connect in paho's thread (a broker that is down now is retried)."""
        if self._started:
            return
        self._client.connect_async(self._host, self._port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def publish(self, request: Request) -> None:
        """Publish ``request`` and wait for the broker's PUBACK."""
        if not self._client.is_connected():
            raise RequestNotSent(f"not connected to the MQTT broker at {self._host}:{self._port}")
        info = self._client.publish(
            requests_topic(request.site_id), request.model_dump_json().encode(), qos=1
        )
        if info.rc == paho.MQTT_ERR_NO_CONN:  # the client keeps it and sends it on reconnect
            raise RequestNotSent("the MQTT connection dropped as it was sent", maybe_sent=True)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RequestNotSent(f"publish failed: {paho.error_string(info.rc)}")
        await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise RequestNotSent(
                f"the broker did not acknowledge within {PUBLISH_TIMEOUT_S:g} s", maybe_sent=True
            )


def new_request(
    site_id: str,
    kind: RequestKind,
    params: dict[str, Any],
    expires_in_s: float,
    requested_by: str | None,
) -> Request:
    return Request(
        request_id=uuid.uuid4().hex,
        site_id=site_id,
        kind=kind,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        params=params,
        requested_by=requested_by,
    )


async def record(conn: Any, request: Request) -> None:
    await conn.execute(
        "INSERT INTO edge_requests (request_id, site_id, kind, params, requested_by, sent_at,"
        " expires_at) VALUES (%s, %s, %s, %s, %s, now(), %s)",
        (
            request.request_id,
            request.site_id,
            request.kind,
            Jsonb(request.params),
            request.requested_by,
            request.expires_at,
        ),
    )


async def load(conn: Any, request_id: str) -> dict[str, Any] | None:
    """The request and, once the agent answered, its reply."""
    cur = await conn.execute(
        "SELECT r.request_id, r.site_id, r.kind, r.params, r.requested_by, r.sent_at,"
        " r.expires_at, p.body AS reply FROM edge_requests r LEFT JOIN replies p"
        " ON p.request_id = r.request_id AND p.site_id = r.site_id WHERE r.request_id = %s"
        " ORDER BY p.message_id LIMIT 1",
        (request_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    out = dict(row)
    reply = out.pop("reply")
    out["status"] = "answered" if reply is not None else "sent"
    out["reply"] = (
        None
        if reply is None
        else {k: reply.get(k) for k in ("ok", "error", "result", "sent_at", "message_id")}
    )
    return out
