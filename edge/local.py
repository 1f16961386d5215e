"""Answers the agent gives a charge point itself while the CSMS is unreachable.

Pure functions over (version, action, payload). The offline store
(:mod:`chargesight.edge.offline`) decides *whether* to answer locally and
queues what the CSMS must still see; this module only knows *what* a sane
local answer is, following ARCHITECTURE.md "When the CSMS is unreachable":
BootNotification Accepted with the configured interval, Heartbeat with the
current time, StatusNotification / MeterValues / NotifyEvent acknowledged,
DataTransfer Rejected, Authorize from the cache decision it is given, and
StartTransaction with a provisional transaction id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chargesight.common.messages import _rfc3339

EMPTY_ACK = frozenset(
    {
        "StatusNotification",
        "MeterValues",
        "NotifyEvent",
        "FirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "LogStatusNotification",
        "SecurityEventNotification",
        "NotifyReport",
        "NotifyMonitoringReport",
        "StopTransaction",
        "ReservationStatusUpdate",
        "NotifyChargingLimit",
        "ClearedChargingLimit",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyDisplayMessages",
        "NotifyCustomerInformation",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
    }
)


class NoLocalAnswer(Exception):
    """The agent cannot answer this action on the CSMS's behalf."""


def local_answer(
    version: str,
    action: str,
    payload: dict[str, Any],
    *,
    now: datetime | None = None,
    heartbeat_interval_s: int = 300,
    authorize_status: str = "Accepted",
    provisional_transaction_id: int | None = None,
) -> dict[str, Any]:
    """The CALLRESULT payload the agent sends for ``action``; raises :class:`NoLocalAnswer`."""
    ts = _rfc3339(now or datetime.now(UTC))
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": ts, "interval": heartbeat_interval_s}
    if action == "Heartbeat":
        return {"currentTime": ts}
    if action == "DataTransfer":
        return {"status": "Rejected"}
    if action == "Authorize":
        if version == "1.6":
            return {"idTagInfo": {"status": authorize_status}}
        return {"idTokenInfo": {"status": authorize_status}}
    if action == "StartTransaction" and version == "1.6":
        if provisional_transaction_id is None:
            raise NoLocalAnswer("no provisional transaction id available")
        return {
            "transactionId": provisional_transaction_id,
            "idTagInfo": {"status": authorize_status},
        }
    if action == "StopTransaction" and version == "1.6":
        return {"idTagInfo": {"status": "Accepted"}} if payload.get("idTag") else {}
    if action == "TransactionEvent":
        if payload.get("idToken") and payload.get("eventType") == "Started":
            return {"idTokenInfo": {"status": authorize_status}}
        return {}
    if action in EMPTY_ACK:
        return {}
    raise NoLocalAnswer(f"{action} needs the CSMS")
