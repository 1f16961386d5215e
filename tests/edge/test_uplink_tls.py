"""The uplink over ``mqtts://`` with a private CA and a username/password."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chargesight.common.messages import escalations_topic
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox
from chargesight.edge.uplink import Uplink
from tests.certs import make_ca_and_cert
from tests.edge.uplink_support import escalation
from tests.servers import find_mosquitto, free_port, wait_port

pytestmark = pytest.mark.mqtt

USER, PASSWORD = "edge", "s3cret-pw"


@dataclass
class TlsBroker:
    port: int
    cafile: Path

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsBroker]:
    d = Path(tempfile.mkdtemp(prefix="cs-mosq-tls-"))
    d.chmod(0o755)  # mosquitto started as root reads these as its own user
    certs = make_ca_and_cert(d)
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([passwd, "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True)
    for f in d.iterdir():
        f.chmod(0o644)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.cert}\n"
        f"keyfile {certs.key}\nallow_anonymous false\npassword_file {d}/passwd\n"
        "persistence false\nlog_type error\n"
    )
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(d / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield TlsBroker(port, certs.ca)
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "edge.sqlite") as box:
        yield box


async def test_mqtts_with_private_ca_and_password_delivers(
    tls_broker: TlsBroker, outbox: Outbox
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
    tls_broker: TlsBroker, outbox: Outbox
) -> None:
    site = "tls-badpw"
    cfg = MqttSection(url=tls_broker.url, cafile=tls_broker.cafile, username=USER, password="no")
    async with Uplink(cfg, site, outbox) as up:
        await outbox.put(escalations_topic(site), escalation(site))
        async with asyncio.timeout(10):
            status = await up.wait_for_status(lambda s: "refused" in (s.last_error or ""))
        assert not status.connected
        assert status.queued == 1  # kept for when the credentials are fixed


async def test_untrusted_broker_certificate_is_not_accepted(
    tls_broker: TlsBroker, outbox: Outbox
) -> None:
    site = "tls-untrusted"
    cfg = MqttSection(url=tls_broker.url, username=USER, password=PASSWORD)  # system CAs only
    async with Uplink(cfg, site, outbox) as up:
        async with asyncio.timeout(10):
            status = await up.wait_for_status(lambda s: s.last_error is not None)
        assert not status.connected
        assert "certificate" in (status.last_error or "").lower()
