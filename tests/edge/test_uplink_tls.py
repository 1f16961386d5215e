"""The uplink over ``mqtts://`` with a private CA and a username/password."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chargesight.common.messages import escalations_topic
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox
from chargesight.edge.uplink import Uplink
from tests.edge.uplink_support import escalation
from tests.servers import TlsMosquitto, start_tls_mosquitto

pytestmark = pytest.mark.mqtt

USER, PASSWORD = "edge", "s3cret-pw"


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsMosquitto]:
    broker = start_tls_mosquitto(USER, PASSWORD)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "edge.sqlite") as box:
        yield box


async def test_mqtts_with_private_ca_and_password_delivers(
    tls_broker: TlsMosquitto, outbox: Outbox
) -> None:
    site = "tls-ok"
    cfg = MqttSection(
        url=tls_broker.url, cafile=tls_broker.cafile, username=USER, password=PASSWORD
    )
    async with Uplink(cfg, site, outbox) as up:
        await up.wait_connected()
        await outbox.put(escalations_topic(site), escalation(site))
        await outbox.wait_drained()  # the broker acknowledged it over TLS
        assert up.status().delivered == 1


async def test_wrong_password_is_reported_in_status_and_nothing_is_lost(
    tls_broker: TlsMosquitto, outbox: Outbox
) -> None:
    site = "tls-badpw"
    cfg = MqttSection(url=tls_broker.url, cafile=tls_broker.cafile, username=USER, password="no")
    async with Uplink(cfg, site, outbox) as up:
        await outbox.put(escalations_topic(site), escalation(site))
        async with asyncio.timeout(10):
            status = await up.wait_for_status(lambda s: "refused" in (s.last_error or ""))
        assert not status.connected
        assert status.queued == 1  # kept for when the credentials are fixed
    # the installer fixes the password (the agent restarts with it): the same message goes out
    fixed = cfg.model_copy(update={"password": PASSWORD})
    async with Uplink(fixed, site, outbox) as up:
        await outbox.wait_drained()
        assert up.status().delivered == 1 and up.status().queued == 0


async def test_untrusted_broker_certificate_is_not_accepted(
    tls_broker: TlsMosquitto, outbox: Outbox
) -> None:
    site = "tls-untrusted"
    cfg = MqttSection(url=tls_broker.url, username=USER, password=PASSWORD)  # system CAs only
    async with Uplink(cfg, site, outbox) as up:
        async with asyncio.timeout(10):
            status = await up.wait_for_status(lambda s: s.last_error is not None)
        assert not status.connected
        assert "certificate" in (status.last_error or "").lower()
