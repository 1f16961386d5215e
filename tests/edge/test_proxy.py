"""The OCPP proxy with real peers: a CSMS and charge points built on the `ocpp` library."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chargesight.common.events import Boot, ConnectorStatus, ProblemReport
from chargesight.edge.errors import CallRejected, ChargePointNotConnected
from chargesight.edge.proxy import Proxy
from tests.edge.conftest import ProxyFactory, cp_url
from tests.peers import TestCsms, boot16, boot201, connect_cp


async def test_ocpp16_frames_cross_the_proxy_byte_for_byte(proxy: Proxy, csms: TestCsms) -> None:
    async with connect_cp(cp_url(proxy), "CP-1") as cp:
        await cp.call(boot16())
        await cp.call(call16.Heartbeat())
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Available")
        )
        # Exactly what the charge point sent is what the CSMS received, and back.
        assert csms.received("CP-1") == cp.conn.sent
        assert cp.conn.received == csms.conns["CP-1"].sent
        assert len(cp.conn.sent) == 3


async def test_ocpp201_frames_cross_the_proxy_byte_for_byte(proxy: Proxy, csms: TestCsms) -> None:
    async with connect_cp(cp_url(proxy), "CS-201", version="2.0.1") as cp:
        await cp.call(boot201())
        await cp.call(
            call201.StatusNotification(
                timestamp="2026-11-24T10:00:00Z",
                connector_status="Faulted",
                evse_id=1,
                connector_id=1,
            )
        )
        await cp.call(
            call201.NotifyEvent(
                generated_at="2026-11-24T10:00:00Z",
                seq_no=0,
                event_data=[
                    {
                        "event_id": 1,
                        "timestamp": "2026-11-24T10:00:00Z",
                        "trigger": "Delta",
                        "actual_value": "true",
                        "tech_code": "CX017",
                        "tech_info": "EVSEContactorFault",
                        "event_notification_type": "HardWiredNotification",
                        "component": {"name": "Connector", "evse": {"id": 1, "connector_id": 1}},
                        "variable": {"name": "Problem"},
                    }
                ],
            )
        )
        assert csms.received("CS-201") == cp.conn.sent
        assert cp.conn.received == csms.conns["CS-201"].sent
        assert csms.cps["CS-201"]._ocpp_version == "2.0.1"


async def test_events_are_normalised_from_what_charge_points_say(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(csms.url)
    async with connect_cp(cp_url(proxy), "CP-EV") as cp:
        await cp.call(
            call16.BootNotification(
                charge_point_model="DC50",
                charge_point_vendor="Acme",
                firmware_version="1.2.3",
                charge_point_serial_number="SN1",
            )
        )
        await cp.call(
            call16.StatusNotification(
                connector_id=2,
                error_code="OtherError",
                status="Faulted",
                vendor_id="Acme",
                vendor_error_code="E42",
                info="PSU module 3",
            )
        )
    boots = [e for e in make_proxy.events if isinstance(e, Boot)]
    assert boots and (boots[0].vendor, boots[0].model, boots[0].firmware, boots[0].serial) == (
        "Acme",
        "DC50",
        "1.2.3",
        "SN1",
    )
    faults = [e for e in make_proxy.events if isinstance(e, ConnectorStatus) and e.faulted]
    assert len(faults) == 1
    f = faults[0]
    assert (f.connector_id, f.error_code, f.vendor_id, f.vendor_error_code, f.info) == (
        2,
        "OtherError",
        "Acme",
        "E42",
        "PSU module 3",
    )


async def test_ocpp201_problem_report_keeps_tech_code(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(csms.url)
    async with connect_cp(cp_url(proxy), "CS-P", version="2.0.1") as cp:
        await cp.call(
            call201.NotifyEvent(
                generated_at="2026-11-24T10:00:00Z",
                seq_no=0,
                event_data=[
                    {
                        "event_id": 7,
                        "timestamp": "2026-11-24T10:00:00Z",
                        "trigger": "Delta",
                        "actual_value": "true",
                        "tech_code": "CX017",
                        "tech_info": "EVSEContactorFault",
                        "event_notification_type": "HardWiredNotification",
                        "component": {"name": "EVSE", "evse": {"id": 2}},
                        "variable": {"name": "Problem"},
                    }
                ],
            )
        )
    problems = [e for e in make_proxy.events if isinstance(e, ProblemReport)]
    assert len(problems) == 1
    assert (problems[0].evse_id, problems[0].tech_code, problems[0].tech_info) == (
        2,
        "CX017",
        "EVSEContactorFault",
    )


async def test_injected_call_and_its_reply_are_invisible_to_the_csms(
    proxy: Proxy, csms: TestCsms
) -> None:
    async with connect_cp(cp_url(proxy), "CP-INJ") as cp:
        await cp.call(boot16())
        result = await proxy.call("CP-INJ", "TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert result == {"status": "Accepted"}
        assert cp.cp.calls_received == [("TriggerMessage", {"requestedMessage": "Heartbeat"})]
        await cp.call(call16.Heartbeat())
        frames = [json.loads(f) for f in csms.received("CP-INJ")]
        assert [f[2] for f in frames] == ["BootNotification", "Heartbeat"]
        assert all("TriggerMessage" not in f for f in csms.received("CP-INJ"))
        assert len(csms.conns["CP-INJ"].sent) == 2


async def test_injected_call_rejected_by_charge_point_raises(proxy: Proxy, csms: TestCsms) -> None:
    async with connect_cp(cp_url(proxy), "CP-REJ") as cp:
        await cp.call(boot16())
        with pytest.raises(CallRejected) as info:
            await proxy.call("CP-REJ", "UnlockConnector", {"connectorId": 1})
        assert info.value.error_code == "NotImplemented"
        assert info.value.charge_point_id == "CP-REJ"


async def test_injected_call_to_an_unknown_charge_point_raises(proxy: Proxy) -> None:
    with pytest.raises(ChargePointNotConnected):
        await proxy.call("NOPE", "Reset", {"type": "Soft"})


async def test_csms_call_waits_while_an_injected_call_is_outstanding(
    proxy: Proxy, csms: TestCsms
) -> None:
    async with connect_cp(cp_url(proxy), "CP-SER") as cp:
        await cp.call(boot16())
        cp.cp.reply_delay = 0.3  # type: ignore[union-attr]
        injected = asyncio.create_task(proxy.call("CP-SER", "Reset", {"type": "Soft"}))
        await cp.cp.reset_event.wait()  # type: ignore[union-attr]
        remote = asyncio.create_task(
            csms.cps["CP-SER"].call(call16.RemoteStartTransaction(id_tag="TAG1"))
        )
        assert (await injected) == {"status": "Accepted"}
        await remote
        # The charge point saw the CSMS CALL only after it had answered the injected one.
        frames = [(d, orjson.loads(f)) for d, f in _timeline(cp)]
        reset_reply = next(
            i for i, (d, f) in enumerate(frames) if d == "sent" and f[0] == 3 and i > 0
        )
        remote_call = next(
            i
            for i, (d, f) in enumerate(frames)
            if d == "recv" and f[0] == 2 and f[2] == "RemoteStartTransaction"
        )
        assert remote_call > reset_reply
        assert [f[2] for f in map(json.loads, csms.received("CP-SER")) if f[0] == 2] == [
            "BootNotification"
        ]


def _timeline(cp: object) -> list[tuple[str, str]]:
    """Frames in the order the charge point saw them (sent and received interleaved)."""
    conn = cp.conn  # type: ignore[attr-defined]
    return conn.timeline  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("version", "frame", "expected"),
    [
        ("1.6", "this is not json", [4, "-1", "FormationViolation"]),
        ("1.6", '{"an": "object"}', [4, "-1", "ProtocolError"]),
        ("1.6", '[9, "abc", "Heartbeat", {}]', [4, "abc", "ProtocolError"]),
        ("2.0.1", "this is not json", [4, "-1", "FormatViolation"]),
        ("2.0.1", '{"an": "object"}', [4, "-1", "RpcFrameworkError"]),
        ("2.0.1", '[9, "abc", "Heartbeat", {}]', [4, "abc", "MessageTypeNotSupported"]),
    ],
)
async def test_malformed_frame_from_charge_point_gets_the_spec_callerror(
    proxy: Proxy, csms: TestCsms, version: str, frame: str, expected: list[object]
) -> None:
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with connect(f"{cp_url(proxy)}/CP-BAD", subprotocols=[sub], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(frame)
        reply = json.loads(await ws.recv())
        assert reply[:3] == expected
        # The connection stays usable and the CSMS never saw the bad frame.
        await ws.send('[2, "hb-1", "Heartbeat", {}]')
        answer = json.loads(await ws.recv())
        assert answer[0] == 3 and answer[1] == "hb-1"
        assert csms.received("CP-BAD") == ['[2, "hb-1", "Heartbeat", {}]']
    assert proxy.stats.malformed_from_cp == 1


@pytest.mark.parametrize(
    ("version", "frame"),
    [
        ("1.6", '[2, "mv-1", "MeterValues", {"connectorId": 1, "meterValue": 5}]'),
        (
            "1.6",
            '[2, "mv-2", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp":'
            ' "2026-11-25T07:00:00Z", "sampledValue": [{"value": "NaN",'
            ' "measurand": "Temperature"}]}]}]',
        ),
        (
            "2.0.1",
            '[2, "tx-1", "TransactionEvent", {"eventType": "Started", "timestamp":'
            ' "2026-11-25T07:00:00Z", "triggerReason": "Authorized", "seqNo": 0,'
            ' "transactionInfo": {"transactionId": "t1"}, "idToken": "ABC"}]',
        ),
    ],
    ids=["meter-value-not-a-list", "temperature-nan", "id-token-a-string"],
)
async def test_a_well_formed_frame_with_fields_of_the_wrong_type_is_passed_on_unchanged(
    proxy: Proxy, csms: TestCsms, version: str, frame: str
) -> None:
    # the agent cannot read it, the charger and its CSMS may still agree on it: the proxy is
    # transparent, forwards it as received and keeps serving the charge point
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with connect(f"{cp_url(proxy)}/CP-ODD", subprotocols=[sub], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(frame)
        reply = json.loads(await ws.recv())
        assert reply[1] == json.loads(frame)[1]  # the CSMS's own answer (result or error)
        await ws.send('[2, "hb-1", "Heartbeat", {}]')
        answer = json.loads(await ws.recv())
        assert answer[:2] == [3, "hb-1"]
        assert csms.received("CP-ODD") == [frame, '[2, "hb-1", "Heartbeat", {}]']


async def test_reply_for_an_unknown_call_is_dropped(proxy: Proxy, csms: TestCsms) -> None:
    async with connect(f"{cp_url(proxy)}/CP-UNK", subprotocols=["ocpp1.6"], compression=None) as ws:  # type: ignore[list-item]
        await ws.send('[3, "nobody-asked", {}]')
        await ws.send('[2, "hb-2", "Heartbeat", {}]')
        answer = json.loads(await ws.recv())
        assert answer[:2] == [3, "hb-2"]  # no CALLERROR came back for the stray reply
        assert csms.received("CP-UNK") == ['[2, "hb-2", "Heartbeat", {}]']
    assert proxy.stats.unknown_replies == 1


async def test_malformed_frame_from_csms_is_answered_and_not_forwarded(
    proxy: Proxy, csms: TestCsms
) -> None:
    async with connect_cp(cp_url(proxy), "CP-CSMSBAD") as cp:
        await cp.call(boot16())
        csms_conn = csms.conns["CP-CSMSBAD"]
        await csms_conn.ws.send("{broken")
        await csms_conn.new_frame.wait() if not csms_conn.received[1:] else None
        frames = await csms.wait_frames("CP-CSMSBAD", 2)
        assert json.loads(frames[1])[:3] == [4, "-1", "FormationViolation"]
        await cp.call(call16.Heartbeat())
        assert all("{broken" not in f for f in cp.conn.received)
    assert proxy.stats.malformed_from_csms == 1


async def test_charge_point_disconnect_closes_its_upstream(proxy: Proxy, csms: TestCsms) -> None:
    async with connect_cp(cp_url(proxy), "CP-GONE") as cp:
        await cp.call(boot16())
        upstream_ws = csms.conns["CP-GONE"].ws
    async with asyncio.timeout(5):
        await upstream_ws.wait_closed()
    assert "CP-GONE" not in proxy.connected()


async def test_upstream_loss_keeps_charge_point_and_reconnects(
    make_proxy: ProxyFactory,
) -> None:
    csms = await TestCsms().start()
    proxy = await make_proxy(csms.url)
    try:
        async with connect_cp(cp_url(proxy), "CP-UP") as cp:
            await cp.call(boot16())
            await csms.stop()
            # The charge point stays connected and is answered locally.
            answer = await cp.call(call16.Heartbeat())
            assert answer.current_time
            assert not cp.ws.close_code
            csms.connected["CP-UP"] = asyncio.Event()
            await csms.start()
            async with asyncio.timeout(10):
                await csms.connected["CP-UP"].wait()
            await cp.call(call16.Heartbeat())
            assert json.loads(csms.received("CP-UP")[-1])[2] == "Heartbeat"
    finally:
        await csms.stop()
    assert proxy.stats.answered_locally >= 1
    assert proxy.stats.upstream_connects >= 2


async def test_one_silent_charge_point_does_not_delay_another(proxy: Proxy, csms: TestCsms) -> None:
    async with (
        connect(f"{cp_url(proxy)}/CP-MUTE", subprotocols=["ocpp1.6"], compression=None) as mute,  # type: ignore[list-item]
        connect_cp(cp_url(proxy), "CP-BUSY") as busy,
    ):
        await mute.send('[2, "m1", "Heartbeat", {}]')
        await mute.recv()
        # The CSMS calls the mute charge point, which receives the call and never answers...
        call = asyncio.create_task(csms.cps["CP-MUTE"].call(call16.Reset(type="Soft")))
        frame = json.loads(await mute.recv())
        assert frame[0] == 2 and frame[2] == "Reset"
        # ...while the other charge point carries on normally: all its calls are answered
        # while that one is still waiting (no queue behind the silent charge point)
        for _ in range(20):
            await busy.call(call16.Heartbeat())
        assert len(csms.received("CP-BUSY")) == 20
        assert not call.done()
        call.cancel()


async def test_unknown_subprotocol_is_refused_after_handshake(proxy: Proxy) -> None:
    async with connect(f"{cp_url(proxy)}/CP-X", subprotocols=["ocpp9.9"], compression=None) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1002


async def test_charger_without_subprotocol_uses_configured_default(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(csms.url, ocpp={"default_subprotocol": "ocpp1.6"})
    async with connect(f"{cp_url(proxy)}/CP-NOSUB", compression=None) as ws:
        await ws.send('[2, "b1", "Heartbeat", {}]')
        reply = json.loads(await ws.recv())
        assert reply[:2] == [3, "b1"]
    assert csms.cps["CP-NOSUB"]._ocpp_version == "1.6"


async def test_charger_without_subprotocol_is_refused_without_default(proxy: Proxy) -> None:
    async with connect(f"{cp_url(proxy)}/CP-NOSUB2", compression=None) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_unknown_charge_point_gets_404_when_allow_list_is_set(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    proxy = await make_proxy(csms.url, ocpp={"allowed_charge_points": ["CP-OK"]})
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{cp_url(proxy)}/CP-STRANGER", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 404
    async with connect_cp(cp_url(proxy), "CP-OK") as cp:
        await cp.call(boot16())


async def test_invalid_charge_point_id_gets_400(proxy: Proxy) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{cp_url(proxy)}/bad%20id", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 400


async def test_ocpp_log_records_every_frame_for_evidence(
    make_proxy: ProxyFactory, csms: TestCsms
) -> None:
    from datetime import UTC, datetime, timedelta

    proxy = await make_proxy(csms.url)
    start = datetime.now(UTC) - timedelta(seconds=1)
    async with connect_cp(cp_url(proxy), "CP-LOG") as cp:
        await cp.call(boot16())
        await proxy.call("CP-LOG", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    log = make_proxy.logs[0]
    frames = await log.query("CP-LOG", start, datetime.now(UTC) + timedelta(seconds=1))
    assert [f.direction for f in frames] == ["cp->csms", "csms->cp", "agent->cp", "cp->agent"]
    assert frames[0].frame == cp.conn.sent[0]
