"""The collector's MQTT subscriber: the sans-I/O codec, and the source against real Mosquitto."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chargesight.cloud.config import MqttSection
from chargesight.cloud.mqttsource import (
    Connack,
    Inbound,
    MqttCodec,
    MqttError,
    MqttSource,
    Pingresp,
    ProtocolError,
    ServerDisconnect,
    Suback,
)
from tests.cloud.helpers import Publisher
from tests.servers import (
    Mosquitto,
    TlsMosquitto,
    start_tls_mosquitto,
)

USER, PASSWORD = "collector", "s3cret-pw"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, mid: int, *, qos: int = 1, v5: bool = True) -> bytes:
    """A PUBLISH packet as a broker sends it (MQTT 5: with a property to skip)."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"")
    if v5:
        props = b"\x01\x01"  # payload format indicator: UTF-8
        body += varint(len(props)) + props
    return bytes((0x30 | (qos << 1),)) + varint(len(body) + len(payload)) + body + payload


# ------------------------------------------------------------------ codec


@pytest.mark.parametrize("v5", [True, False])
def test_messages_split_at_every_byte_come_out_whole_and_in_order(v5: bool) -> None:
    big = bytes(range(256)) * 800  # 200 KiB: a three-byte remaining length
    stream = (
        publish("chargesight/v1/sites/a/digests", b'{"x":1}', 7, v5=v5)
        + publish("chargesight/v1/sites/b/state", b"online", 0, qos=0, v5=v5)
        + publish("chargesight/v1/sites/c/escalations", big, 65535, v5=v5)
        + b"\xd0\x00"  # PINGRESP
    )
    codec = MqttCodec(v5, conn=3)
    got: list[Inbound] = []
    controls = []
    for i in range(len(stream)):
        msgs, ctl = codec.feed(stream[i : i + 1], now=1.5)
        got += msgs
        controls += ctl
    assert [(m.topic, m.payload, m.mid, m.qos, m.conn) for m in got] == [
        ("chargesight/v1/sites/a/digests", b'{"x":1}', 7, 1, 3),
        ("chargesight/v1/sites/b/state", b"online", 0, 0, 3),
        ("chargesight/v1/sites/c/escalations", big, 65535, 1, 3),
    ]
    assert controls == [Pingresp()]
    # the same bytes in one piece and in uneven chunks give the same messages
    for size in (len(stream), 4096, 3):
        codec = MqttCodec(v5)
        out: list[Inbound] = []
        for i in range(0, len(stream), size):
            out += codec.feed(stream[i : i + size])[0]
        assert [m.payload for m in out] == [m.payload for m in got]


def test_connack_suback_and_server_disconnect_are_read_with_their_reasons() -> None:
    codec = MqttCodec(True)
    reason = b"\x1f\x00\x04busy"
    connack = b"\x20" + varint(3 + len(reason) + 3) + b"\x01\x00" + varint(len(reason) + 3)
    connack += reason + b"\x13\x00\x3c"  # server keep alive 60 s
    suback = b"\x90\x06\x00\x01\x00\x01\x01\x87"  # mid 1, no props, granted QoS 1, 1, refused
    disconnect = b"\xe0\x02\x8b\x00"  # server shutting down
    _, ctl = codec.feed(connack + suback + disconnect)
    assert ctl == [
        Connack(session_present=True, reason=0, reason_string="busy", server_keepalive_s=60),
        Suback(1, (1, 1, 0x87)),
        ServerDisconnect(0x8B),
    ]
    # MQTT 3.1.1: return codes mapped onto MQTT 5 reasons (5 = not authorized)
    assert MqttCodec(False).feed(b"\x20\x02\x00\x05")[1] == [Connack(False, 0x87)]


@pytest.mark.parametrize(
    "data",
    [
        publish("t", b"x", 1, qos=2),  # we subscribe at QoS 1
        b"\x30\xff\xff\xff\xff\x01",  # remaining length over four bytes
        b"\xf0\x00",  # AUTH: not something we asked for
        b"\x30\x05\x00\x09ab\x00",  # topic length past the packet
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
    ],
)
def test_malformed_packets_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        MqttCodec(True).feed(data)


def test_connect_and_subscribe_encode_what_the_broker_needs() -> None:
    codec = MqttCodec(True)
    pkt = codec.connect(
        "cid",
        keepalive_s=30,
        clean_start=False,
        session_expiry_s=3600,
        username="u",
        password="p",
        receive_maximum=100_000,
    )
    # flags: username, password, no clean start; properties: session expiry, receive maximum
    assert pkt.startswith(b"\x10")
    assert b"\x00\x04MQTT\x05\xc0\x00\x1e" in pkt
    assert b"\x11\x00\x00\x0e\x10" in pkt and b"\x21\xff\xff" in pkt
    assert pkt.endswith(b"\x00\x03cid\x00\x01u\x00\x01p")
    mid, sub = codec.subscribe(["$share/g/a/+"])
    assert mid == 1
    assert sub == b"\x82\x12\x00\x01\x00\x00\x0c$share/g/a/+\x01"
    assert MqttCodec(False).disconnect(0) == b"\xe0\x00"
    assert codec.disconnect(0) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"


# ------------------------------------------------------------------ against Mosquitto


def section(url: str, **kw: object) -> MqttSection:
    return MqttSection.model_validate(
        {"url": url, "shared_group": f"g{uuid.uuid4().hex[:6]}", **kw}
    )


async def drain(source: MqttSource, n: int, topic: str, *, ack: bool = True) -> list[Inbound]:
    """The next ``n`` messages on ``topic`` (the session broker's retained messages of other
    tests' sites arrive too, and are acknowledged and left aside)."""
    got: list[Inbound] = []
    async with asyncio.timeout(20):
        while len(got) < n:
            items = await source.batch(100, 0)
            if ack:
                source.ack(items)
            else:
                source.ack([m for m in items if m.topic != topic])
            got += [m for m in items if m.topic == topic]
    return got


@pytest.mark.mqtt
async def test_a_burst_larger_than_the_buffer_arrives_whole_through_backpressure(
    mosquitto: Mosquitto,
) -> None:
    source = MqttSource(section(mosquitto.url), queue_max=10)
    await source.start()
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    try:
        topic = "chargesight/v1/sites/bp/state"
        for i in range(300):
            await asyncio.to_thread(pub.raw, topic, f"{i}".encode())
        got = await drain(source, 300, topic)
        assert [int(m.payload) for m in got] == list(range(300))
        assert source.depth == 0
    finally:
        await asyncio.to_thread(pub.close)
        await source.close()


@pytest.mark.mqtt
async def test_unacknowledged_messages_come_back_after_the_connection_drops(
    mosquitto: Mosquitto,
) -> None:
    """Persistent session: what was received but never acknowledged is re-sent on reconnect
    (a late acknowledgement for the dead connection changes nothing)."""
    cfg = section(mosquitto.url, client_id=f"durable-{uuid.uuid4().hex[:8]}")
    source = MqttSource(cfg)
    await source.start()
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    try:
        topic = "chargesight/v1/sites/re/state"
        for i in range(5):
            await asyncio.to_thread(pub.raw, topic, f"m{i}".encode())
        first = await drain(source, 5, topic, ack=False)
        conn = source._conn
        assert conn is not None
        conn.abort()  # the connection dies before the batch was stored
        again = await drain(source, 5, topic, ack=False)
        source.ack(first)  # too late: not for this connection
        source.ack(again)
        assert sorted(m.payload for m in again) == sorted(m.payload for m in first)
        assert all(m.conn != first[0].conn for m in again)
    finally:
        await asyncio.to_thread(pub.close)
        await source.close()


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[TlsMosquitto]:
    broker = start_tls_mosquitto(USER, PASSWORD)
    try:
        yield broker
    finally:
        broker.stop()


def tls_publish(broker: TlsMosquitto, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(broker.cafile))
    c.username_pw_set(USER, PASSWORD)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.mqtt
async def test_mqtts_with_a_private_ca_and_a_password_receives(tls_broker: TlsMosquitto) -> None:
    cfg = section(tls_broker.url, cafile=tls_broker.cafile, username=USER, password=PASSWORD)
    source = MqttSource(cfg)
    await source.start()
    try:
        assert source.protocol5
        topic = "chargesight/v1/sites/tls/state"
        await asyncio.to_thread(tls_publish, tls_broker, topic, b"on")
        (m,) = await drain(source, 1, topic)
        assert (m.topic, m.payload) == ("chargesight/v1/sites/tls/state", b"on")
    finally:
        await source.close()


@pytest.mark.mqtt
async def test_a_wrong_password_is_an_error_that_names_the_url_and_the_reason(
    tls_broker: TlsMosquitto,
) -> None:
    cfg = section(tls_broker.url, cafile=tls_broker.cafile, username=USER, password="wrong")
    with pytest.raises(MqttError, match=r"mqtts://127\.0\.0\.1:\d+: connection refused: (bad|not)"):
        await MqttSource(cfg).start()


@pytest.mark.mqtt
async def test_an_unknown_certificate_authority_is_refused(tls_broker: TlsMosquitto) -> None:
    cfg = section(tls_broker.url, username=USER, password=PASSWORD)  # no cafile: system CAs
    with pytest.raises(MqttError, match=r"cannot connect: .*CERTIFICATE_VERIFY_FAILED"):
        await MqttSource(cfg).start()


@pytest.mark.mqtt
def test_the_source_runs_on_uvloop_too(mosquitto: Mosquitto) -> None:
    uvloop = pytest.importorskip("uvloop")
    topic = "chargesight/v1/sites/uv/state"

    async def main() -> list[bytes]:
        source = MqttSource(section(mosquitto.url))
        await source.start()
        pub = await asyncio.to_thread(Publisher, mosquitto.url)
        try:
            await asyncio.to_thread(pub.raw, topic, b"uv")
            return [m.payload for m in await drain(source, 1, topic)]
        finally:
            await asyncio.to_thread(pub.close)
            await source.close()

    assert uvloop.run(main()) == [b"uv"]
