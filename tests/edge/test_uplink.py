"""The MQTT uplink against a real Mosquitto: delivery, order, outages, presence."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.common.messages import digests_topic, escalations_topic, model_topic, state_topic
from chargesight.edge import uplink as uplink_module
from chargesight.edge.config import MqttSection
from chargesight.edge.outbox import Outbox, OutboxError
from chargesight.edge.uplink import Uplink
from tests.edge.uplink_support import Observer, PersistentBroker, Relay, digest, escalation
from tests.servers import Mosquitto, find_mosquitto, free_port, wait_port

pytestmark = pytest.mark.mqtt


def mqtt(url: str, **kw: Any) -> MqttSection:
    return MqttSection(url=url, **kw)


@pytest.fixture
def persistent_broker() -> Iterator[PersistentBroker]:
    broker = PersistentBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "edge.sqlite") as box:
        yield box


def ids(observer: Observer, suffix: str = "/escalations") -> list[str]:
    return [p["message_id"] for p in observer.payloads(suffix)]


@pytest.mark.parametrize("protocol", ["auto", "5", "3.1.1"])
async def test_escalation_committed_then_delivered_exactly_once(
    mosquitto: Mosquitto, outbox: Outbox, protocol: str
) -> None:
    site = f"once-{protocol.replace('.', '')}"
    async with Observer(mosquitto.port, [escalations_topic(site)]) as obs:
        async with Uplink(mqtt(mosquitto.url, protocol=protocol), site, outbox) as up:
            first = escalation(site, 1)
            assert await outbox.put(escalations_topic(site), first)
            await obs.wait_for(lambda o: first.message_id in ids(o))
            await outbox.wait_drained()
            # a sentinel behind it: had the first been sent twice, it would show by now
            sentinel = escalation(site, 2)
            await outbox.put(escalations_topic(site), sentinel)
            await obs.wait_for(lambda o: sentinel.message_id in ids(o))
            await outbox.wait_drained()
            status = up.status()
            assert status.connected
            assert status.protocol == ("3.1.1" if protocol == "3.1.1" else "5")
            assert status.delivered == 2
            assert status.queued == 0
        assert ids(obs) == [first.message_id, sentinel.message_id]
        assert obs.payloads("/escalations")[0] == first.model_dump(mode="json")


async def test_online_state_is_retained_and_clean_close_publishes_offline(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    site = "presence"
    topic = state_topic(site)
    async with (
        Observer(mosquitto.port, [topic]) as early,
        Uplink(mqtt(mosquitto.url), site, outbox) as up,
    ):
        await up.wait_connected()
        # the broker has the state (SUBACK alone does not say the online PUBLISH got there)
        await early.wait_for(lambda o: any(m[1]["state"] == "online" for m in o.messages))
        async with Observer(mosquitto.port, [topic]) as late:  # joins after: sees the retained one
            await late.wait_for(lambda o: bool(o.messages))
            _, payload, retained = late.messages[0]
            assert retained
            assert payload["state"] == "online"
            assert payload["site_id"] == site
    async with Observer(mosquitto.port, [topic]) as after:
        await after.wait_for(lambda o: bool(o.messages))
        assert after.messages[-1][1]["state"] == "offline"
        assert after.messages[-1][2]  # retained


async def test_inflight_messages_never_exceed_max_inflight(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    site = "inflight"
    msgs = [escalation(site, i) for i in range(300)]
    async with (
        Observer(mosquitto.port, [escalations_topic(site)]) as obs,
        Uplink(mqtt(mosquitto.url, max_inflight=5), site, outbox) as up,
    ):
        await asyncio.gather(*(outbox.put(escalations_topic(site), m) for m in msgs))
        await obs.wait_for(lambda o: len(ids(o)) >= len(msgs))
        await outbox.wait_drained()
        assert up.status().peak_in_flight == 5
    assert ids(obs) == [m.message_id for m in msgs]


async def test_messages_put_while_broker_is_down_are_delivered_once_in_order_when_it_returns(
    persistent_broker: PersistentBroker, outbox: Outbox
) -> None:
    site = "outage"
    topic = escalations_topic(site)
    before = [escalation(site, i) for i in range(5)]
    during = [escalation(site, 100 + i) for i in range(20)]
    obs = Observer(persistent_broker.port, [topic], client_id="observer-outage", persistent=True)
    await obs.start()
    try:
        async with Uplink(mqtt(persistent_broker.url), site, outbox) as up:
            for m in before:
                await outbox.put(topic, m)
            await obs.wait_for(lambda o: len(ids(o)) == len(before))
            await outbox.wait_drained()
            persistent_broker.stop()
            for m in during:  # the agent keeps committing while the broker is away
                assert await outbox.put(topic, m)
            assert outbox.queued == len(during)
            persistent_broker.start()
            await obs.wait_for(lambda o: len(ids(o)) >= len(before) + len(during), timeout=30)
            await outbox.wait_drained()
            assert up.status().connected
    finally:
        await obs.stop()
    assert ids(obs) == [m.message_id for m in before + during]


async def test_broker_stopped_mid_stream_loses_nothing_and_keeps_order(
    persistent_broker: PersistentBroker, outbox: Outbox
) -> None:
    site = "midstream"
    topic = escalations_topic(site)
    msgs = [escalation(site, i) for i in range(600)]
    obs = Observer(persistent_broker.port, [topic], client_id="observer-mid", persistent=True)
    await obs.start()
    try:
        async with Uplink(mqtt(persistent_broker.url, max_inflight=50), site, outbox):
            await asyncio.gather(*(outbox.put(topic, m) for m in msgs[:300]))
            await obs.wait_for(lambda o: len(ids(o)) >= 50)
            # mid-stream: some delivered, the rest still on their way (in the outbox, in flight)
            assert len(ids(obs)) < 300 and outbox.queued > 0
            persistent_broker.stop()  # a clean stop (SIGTERM): its sessions are saved
            for m in msgs[300:]:
                await outbox.put(topic, m)
            persistent_broker.start()
            want = {m.message_id for m in msgs}
            await obs.wait_for(lambda o: want <= {p["message_id"] for _, p in o.arrivals}, 30)
            await outbox.wait_drained()
    finally:
        await obs.stop()
    got = [p["message_id"] for _, p in obs.arrivals]
    first_seen = list(dict.fromkeys(got))
    assert first_seen == [m.message_id for m in msgs]  # in order, nothing lost
    # The uplink's re-sends are bounded by what it had in flight. The broker's own
    # re-deliveries to the observer after its restart (DUP flag) are not the uplink's.
    sent = [p["message_id"] for _, p, _ in obs.messages]
    assert len(sent) - len(set(sent)) <= 2 * 50


async def test_auto_protocol_falls_back_to_mqtt_311_when_broker_refuses_mqtt_5(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    site = "fallback"
    relay = await Relay(mosquitto.port).start()
    relay.refuse_mqtt5 = True
    try:
        async with Observer(mosquitto.port, [escalations_topic(site)]) as obs:
            url = f"mqtt://127.0.0.1:{relay.port}"
            async with Uplink(mqtt(url, protocol="auto"), site, outbox) as up:
                msg = escalation(site)
                await outbox.put(escalations_topic(site), msg)
                await obs.wait_for(lambda o: msg.message_id in ids(o))
                assert up.status().protocol == "3.1.1"
                assert relay.mqtt5_refused >= 1
    finally:
        await relay.close()


async def test_subscribed_handler_receives_retained_model_update(
    mosquitto_private: Mosquitto, outbox: Outbox
) -> None:
    # A broker of its own: other tests leave retained models on the shared one.
    mosquitto = mosquitto_private
    site = "models"
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_model(topic: str, payload: bytes) -> None:
        await got.put((topic, payload))

    publisher = paho.Client(CallbackAPIVersion.VERSION2)
    await asyncio.to_thread(publisher.connect, "127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        info = publisher.publish(model_topic("dc-fast"), b'{"version": "7"}', qos=1, retain=True)
        await asyncio.to_thread(info.wait_for_publish, 5)
    finally:
        publisher.disconnect()
        await asyncio.to_thread(publisher.loop_stop)
    up = Uplink(mqtt(mosquitto.url), site, outbox)
    up.subscribe(model_topic("+"), on_model)
    async with up:
        async with asyncio.timeout(10):
            topic, payload = await got.get()
    assert (topic, payload) == (model_topic("dc-fast"), b'{"version": "7"}')


@pytest.fixture
def acl_broker() -> Iterator[int]:
    """A broker that lets the edge publish escalations but not digests."""
    d = Path(tempfile.mkdtemp(prefix="cs-mosq-acl-"))
    d.chmod(0o755)  # mosquitto started as root reads these as its own user
    (d / "acl").write_text(
        "topic write chargesight/v1/sites/+/escalations\ntopic write chargesight/v1/sites/+/state\n"
    )
    (d / "acl").chmod(0o644)
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {d}/acl\n"
        "persistence false\nlog_type error\n"
    )
    proc = subprocess.Popen([find_mosquitto(), "-c", str(d / "mosquitto.conf")])
    try:
        wait_port(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(d, ignore_errors=True)


async def test_publish_the_broker_refuses_is_kept_with_an_alarm_and_does_not_block_others(
    acl_broker: int, outbox: Outbox
) -> None:
    site = "acl"
    refused = digest(site)
    allowed = escalation(site)
    async with Uplink(mqtt(f"mqtt://127.0.0.1:{acl_broker}", protocol="5"), site, outbox) as up:
        await outbox.put(digests_topic(site), refused)
        await outbox.put(escalations_topic(site), allowed)
        async with asyncio.timeout(10):
            status = await up.wait_for_status(
                lambda s: s.queued == 1 and any("refused" in a for a in s.alarms)
            )
        assert status.delivered == 1
    assert [r.message_id for r in await outbox.fetch()] == [refused.message_id]


async def test_a_delete_the_outbox_cannot_commit_is_tried_again_and_publishing_goes_on(
    mosquitto: Mosquitto, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the outbox refuses the first two deletes of acknowledged rows (as on a full disk or a
    # lock held too long): the uplink keeps publishing and deletes them once it can
    monkeypatch.setattr(uplink_module, "ACK_RETRY_S", 0.05)
    real_ack = outbox.ack
    refusals = 0

    async def refusing_ack(seqs: Any) -> None:
        nonlocal refusals
        if refusals < 2:
            refusals += 1
            raise OutboxError("outbox commit failed: database or disk is full")
        await real_ack(seqs)

    monkeypatch.setattr(outbox, "ack", refusing_ack)
    site = "ack-retry"
    async with (
        Observer(mosquitto.port, [escalations_topic(site)]) as obs,
        Uplink(mqtt(mosquitto.url), site, outbox),
    ):
        first, second = escalation(site, 1), escalation(site, 2)
        assert await outbox.put(escalations_topic(site), first)
        await obs.wait_for(lambda o: first.message_id in ids(o))
        assert await outbox.put(escalations_topic(site), second)
        await obs.wait_for(lambda o: second.message_id in ids(o))
        async with asyncio.timeout(10):
            await outbox.wait_drained()  # deleted once the outbox took the deletes
    assert refusals == 2
    assert ids(obs) == [first.message_id, second.message_id]  # each once
