"""Issue 4 end to end: faults fixed or escalated by the real agent, seen from outside.

Each scenario is one site: a real CSMS (``tests.peers.TestCsms``), the real
:class:`~chargesight.edge.agent.Agent` in front of it with a 20 s recovery
window, charge points that reboot on Reset (``tests.edge.recovery_peers``),
and a second MQTT client on the site's topics of a real Mosquitto. The tests
assert on what a user sees: the MQTT messages, the frames the CSMS and the
charge points received, ``agent.status()``.

A recovery window cannot be shorter than 20 s, so the scenarios start
together in the module's event loop (:func:`scenarios`) and run side by side,
each on its own site; every test awaits its scenario's record and checks it.
The module costs about one window, not one per scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chargesight.common.messages import (
    Request,
    digests_topic,
    escalations_topic,
    replies_topic,
    requests_topic,
    state_topic,
    utcnow,
)
from chargesight.edge.agent import Agent
from tests.edge.conftest import edge_config
from tests.edge.recovery_peers import RebootingCp
from tests.edge.uplink_support import Observer, PersistentBroker
from tests.peers import TestCsms
from tests.servers import Mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.asyncio(loop_scope="module")]

WINDOW_S = 20.0
SETTLE_S = 3.0  # after the last expected message: time for a wrong extra one to show up


# ---------------------------------------------------------------- one site


class Site:
    """A CSMS, the agent in front of it, and an MQTT observer of the site's topics."""

    def __init__(
        self,
        root: Path,
        site_id: str,
        broker_port: int,
        *,
        observer: Observer | None = None,
        uplink: dict[str, Any] | None = None,
        **recovery: Any,
    ) -> None:
        self.site_id = site_id
        self.broker_port = broker_port
        self.root = root / site_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.recovery = {"window_s": WINDOW_S, **recovery}
        self.uplink = uplink or {}
        self.csms = TestCsms()
        self.observer = observer or Observer(
            broker_port,
            [
                escalations_topic(site_id),
                digests_topic(site_id),
                state_topic(site_id),
                replies_topic(site_id),
            ],
        )
        self.agent: Agent | None = None
        self.cps: dict[str, RebootingCp] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Site:
        await self._stack.__aenter__()
        try:
            await self.csms.start()
            self._stack.push_async_callback(self.csms.stop)
            if not self.observer.client.is_connected():
                await self.observer.start()
                self._stack.push_async_callback(self.observer.stop)
            config = edge_config(
                self.root,
                self.csms.url,
                site={"id": self.site_id},
                mqtt={"url": f"mqtt://127.0.0.1:{self.broker_port}"},
                recovery=self.recovery,
                uplink=self.uplink,
            )
            self.agent = Agent(config)
            await self.agent.start()
            self._stack.push_async_callback(self.agent.close)
            await self.observer.wait_for(
                lambda o: any(p.get("state") == "online" for p in o.payloads("/state"))
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()  # charge points first (pushed last), then agent, observer, CSMS

    @property
    def url(self) -> str:
        assert self.agent is not None
        return f"ws://127.0.0.1:{self.agent.proxy.port}/ocpp"

    async def charge_point(self, cp_id: str, **kw: Any) -> RebootingCp:
        cp = RebootingCp(self.url, cp_id, **kw)
        await cp.power_up()
        self._stack.push_async_callback(cp.close)
        self.cps[cp_id] = cp
        return cp

    def escalations(self, status: str = "open") -> list[dict[str, Any]]:
        return [p for p in self.observer.payloads("/escalations") if p.get("status") == status]

    async def ask(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """The cloud sends a request to the site and waits for the reply."""
        request = Request(
            request_id=uuid.uuid4().hex,
            site_id=self.site_id,
            kind=kind,  # type: ignore[arg-type]
            expires_at=utcnow() + timedelta(minutes=1),
            params=params,
        )
        self.observer.client.publish(requests_topic(self.site_id), request.model_dump_json(), qos=1)

        def replies() -> list[dict[str, Any]]:
            return [
                p
                for p in self.observer.payloads("/replies")
                if p["request_id"] == request.request_id
            ]

        await self.observer.wait_for(lambda _: bool(replies()))
        return replies()[0]

    def digests(self) -> list[dict[str, Any]]:
        return self.observer.payloads("/digests")

    async def escalated(self, n: int = 1, timeout: float = WINDOW_S + 30) -> list[dict[str, Any]]:
        await self.observer.wait_for(lambda o: len(self.escalations()) >= n, timeout=timeout)
        return self.escalations()

    async def record(self, fault_at: float, **extra: Any) -> Record:
        """What a user can see of this site now (after ``SETTLE_S`` for stragglers)."""
        await asyncio.sleep(SETTLE_S)
        assert self.agent is not None
        return Record(
            fault_at=fault_at,
            escalations=self.escalations(),
            arrivals=list(self.observer.arrivals),
            digests=self.digests(),
            cps=self.cps,
            csms={cp: list(self.csms.received(cp)) for cp in self.cps},
            status=json.loads(json.dumps(self.agent.status(), default=str)),
            extra=extra,
        )


@dataclass
class Record:
    """One scenario as seen from outside, for the tests to check."""

    fault_at: float  # loop time the fault was reported
    escalations: list[dict[str, Any]]  # open escalations published for the site
    arrivals: list[tuple[str, dict[str, Any]]]  # every MQTT message the observer got
    digests: list[dict[str, Any]]
    cps: dict[str, RebootingCp]
    csms: dict[str, list[str]]  # raw frames the CSMS received, per charge point
    status: dict[str, Any]  # agent.status()
    extra: dict[str, Any] = field(default_factory=dict)

    def only_escalation(self) -> dict[str, Any]:
        assert len(self.escalations) == 1, [e["fault"] for e in self.escalations]
        return self.escalations[0]


def now() -> float:
    return asyncio.get_running_loop().time()


def steps(escalation: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["action"], a["result"]) for a in escalation["recovery_attempts"]]


async def first_of(*aws: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of ``aws`` finishes (its error raised); cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the scenarios


async def soft_reset_clears_the_fault(root: Path, broker: Mosquitto) -> Record:
    async with Site(
        root, "rec-soft-reset", broker.port, flap_period_s=1, digest_interval_s=1
    ) as site:
        cp = await site.charge_point("CP-1")
        fault_at = now()
        await cp.fault(1, "OtherError", "E-17", info="contactor feedback", cleared_by=("Soft",))

        def self_resolved() -> list[dict[str, Any]]:
            return [s for d in site.digests() for s in d["self_resolved"]]

        await site.observer.wait_for(
            lambda _: any(s["kind"] == "fault" for s in self_resolved()), timeout=WINDOW_S
        )
        # Nothing may be escalated for it, not even when its window runs out.
        await asyncio.sleep(max(0.0, fault_at + WINDOW_S - now()))
        return await site.record(fault_at)


async def fault_cutting_a_session(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-cut", broker.port, flap_period_s=1, digest_interval_s=1) as site:
        cp = await site.charge_point("CP-1")
        await cp.start_transaction(1)
        await cp.meter_values(1, 2000, 25.0)
        await cp.meter_values(1, 12_000, 50.0)  # 400 Wh a point of SoC
        fault_at = now()
        # the charger stops the session first, then says why
        await cp.stop_transaction(1, meter_stop=12_000, reason="Other")
        await cp.fault(1, "OtherError", "E-17", cleared_by=("Soft",))

        def fixed() -> list[dict[str, Any]]:
            return [s for d in site.digests() for s in d["self_resolved"] if s["kind"] == "fault"]

        await site.observer.wait_for(lambda _: bool(fixed()), timeout=WINDOW_S)
        return await site.record(fault_at, fixed=fixed())


async def persisting_fault(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-persist", broker.port) as site:
        cp = await site.charge_point("CP-1", serial="AMP-0042")
        fault_at = now()
        await cp.fault(1, "OtherError", "E-42", vendor_id="Ampero", info="PSU fan stalled")
        await site.escalated()
        escalated_after = now() - fault_at
        return await site.record(fault_at, escalated_after=escalated_after)


async def safety_fault(
    root: Path, broker: Mosquitto, site_id: str, code: str, vendor: str
) -> Record:
    async with Site(root, site_id, broker.port) as site:
        cp = await site.charge_point("CP-1")
        fault_at = now()
        await cp.fault(1, code, vendor or None, cleared_by=("Soft", "Hard"))
        await site.escalated()
        escalated_after = now() - fault_at
        # Keep watching for the rest of the window: no reset may come later either.
        await asyncio.sleep(max(0.0, fault_at + WINDOW_S - now()))
        return await site.record(fault_at, escalated_after=escalated_after)


async def charging_connector(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-charging", broker.port) as site:
        cp = await site.charge_point("CP-1")
        tx = await cp.start_transaction(2)
        fault_at = now()
        await cp.fault(1, "OtherError", "E-9", cleared_by=("Soft", "Hard"))
        # A reset would clear the fault (and cut the session): stop at whichever comes first.
        await first_of(site.escalated(), cp.wait_for(lambda c: bool(c.calls("Reset")), 60))
        return await site.record(fault_at, transaction_id=tx)


async def reset_budget(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-budget", broker.port, max_resets_per_day=1) as site:
        cp = await site.charge_point("CP-1")
        fault_at = now()
        await cp.fault(1, "OtherError", "E-5")
        await site.escalated()
        return await site.record(fault_at)


async def site_wide_drop(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-site-wide", broker.port) as site:
        cps = [await site.charge_point(f"CP-{i}", connectors=1) for i in range(1, 5)]
        fault_at = now()
        await asyncio.gather(*(cp.drop() for cp in cps[:3]))  # the site's network switch dies
        await site.escalated()
        return await site.record(fault_at, dropped=[cp.id for cp in cps[:3]])


async def broker_down_during_window(root: Path) -> Record:
    broker = PersistentBroker()  # sessions survive its restart: the observer misses nothing
    broker.start()
    try:
        site_id = "rec-broker-down"
        observer = Observer(
            broker.port,
            [escalations_topic(site_id), state_topic(site_id)],
            client_id="observer-rec-broker-down",
            persistent=True,
        )
        await observer.start()
        try:
            async with Site(root, site_id, broker.port, observer=observer) as site:
                assert site.agent is not None
                agent = site.agent
                cp = await site.charge_point("CP-1")
                committed = agent.outbox.last_seq
                fault_at = now()
                await cp.fault(1, "OtherError", "E-77")
                broker.stop()
                async with asyncio.timeout(WINDOW_S + 30):
                    await agent.outbox.wait_for_rows(committed)  # the escalation, committed
                queued_while_down = agent.status()["uplink"]
                seen_while_down = list(site.escalations())
                broker.start()
                await site.escalated(timeout=90)
                await agent.outbox.wait_drained()
                return await site.record(
                    fault_at, queued_while_down=queued_while_down, seen_while_down=seen_while_down
                )
        finally:
            await observer.stop()
    finally:
        broker.cleanup()


async def maintenance_requested_by_the_cloud(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-maintenance", broker.port) as site:
        cp = await site.charge_point("CP-1")
        reply = await site.ask("maintenance", {"charge_point_id": "CP-1", "on": True})
        fault_at = now()
        await cp.fault(1, "OtherError", "E-3", cleared_by=("Soft",))
        await asyncio.sleep(max(0.0, fault_at + WINDOW_S + 2 - now()))  # a whole window
        return await site.record(fault_at, reply=reply)


async def cleared_after_escalation(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-cleared", broker.port, flap_period_s=1) as site:
        cp = await site.charge_point("CP-1")
        fault_at = now()
        await cp.fault(1, "OtherError", "E-8")
        await site.escalated()
        await cp.repair(1)
        await site.observer.wait_for(lambda _: bool(site.escalations("cleared")))
        return await site.record(fault_at, cleared=site.escalations("cleared"))


async def rerun_after_the_blocking_session_ended(root: Path, broker: Mosquitto) -> Record:
    allowed = {"allowed_requests": ["status", "rerun_playbook"]}
    async with Site(root, "rec-rerun", broker.port, flap_period_s=1, uplink=allowed) as site:
        cp = await site.charge_point("CP-1")
        nothing = await site.ask("rerun_playbook", {"charge_point_id": "CP-1"})
        await cp.start_transaction(2)
        fault_at = now()
        await cp.fault(1, "OtherError", "E-31", cleared_by=("Soft",))
        (esc,) = await site.escalated()  # the session on connector 2 held every reset back
        resets_before = len(cp.calls("Reset"))
        await cp.stop_transaction(2)
        reply = await site.ask("rerun_playbook", {"charge_point_id": "CP-1"})
        await site.observer.wait_for(lambda _: bool(site.escalations("cleared")), timeout=WINDOW_S)
        return await site.record(
            fault_at,
            nothing=nothing,
            first=esc,
            resets_before=resets_before,
            reply=reply,
            cleared=site.escalations("cleared"),
        )


async def configuration_changed_by_the_cloud(root: Path, broker: Mosquitto) -> Record:
    uplink = {
        "allowed_requests": ["status", "configuration_change"],
        "configuration_keys": ["HeartbeatInterval", "WebSocketPingInterval", "ChargePointModel"],
    }
    async with Site(root, "rec-config", broker.port, uplink=uplink) as site:
        await site.charge_point("CP-1")
        await site.charge_point("CS-2", version="2.0.1", model="DC50", serial="V-2")
        at = now()

        def ask(cp: str, key: str, value: object, **more: Any) -> Awaitable[dict[str, Any]]:
            return site.ask(
                "configuration_change",
                {"charge_point_id": cp, "key": key, "value": value, **more},
            )

        replies = {
            "heartbeat": await ask("CP-1", "HeartbeatInterval", 60),
            "ping": await ask("CP-1", "WebSocketPingInterval", "30"),
            "read_only": await ask("CP-1", "ChargePointModel", "X"),
            "not_listed": await ask("CP-1", "AuthorizationKey", "0badc0de"),
            "no_component": await ask("CS-2", "HeartbeatInterval", 120),
            "v201": await ask("CS-2", "HeartbeatInterval", 120, component="OCPPCommCtrlr"),
            "absent": await ask("CP-9", "HeartbeatInterval", 60),
        }
        assert site.agent is not None
        audit = [r.outcome for r in await site.agent.router.audit()]
        detector = site.agent.engine.detector.charge_points
        heartbeats = {cp: detector[cp].heartbeat_interval_s for cp in ("CP-1", "CS-2")}
        return await site.record(at, audit=audit, heartbeats=heartbeats, **replies)


async def two_charge_points_reset_together(root: Path, broker: Mosquitto) -> Record:
    async with Site(
        root, "rec-two-resets", broker.port, flap_period_s=1, digest_interval_s=1
    ) as site:
        cps = [await site.charge_point(f"CP-{i}", connectors=1) for i in (1, 2)]
        fault_at = now()
        await asyncio.gather(
            *(cp.fault(1, "OtherError", "E-17", cleared_by=("Soft",)) for cp in cps)
        )

        def fixed() -> int:
            resolved = [s for d in site.digests() for s in d["self_resolved"]]
            return sum(1 for s in resolved if s["kind"] == "fault")

        await site.observer.wait_for(lambda _: fixed() == 2, timeout=WINDOW_S)
        return await site.record(fault_at)


async def ocpp201_station(root: Path, broker: Mosquitto) -> Record:
    async with Site(root, "rec-201", broker.port, flap_period_s=1, digest_interval_s=1) as site:
        cs1 = await site.charge_point("CS-1", version="2.0.1", model="DC50", serial="V-1")
        cs2 = await site.charge_point("CS-2", version="2.0.1", model="DC50", serial="V-2")
        fault_at = now()
        await cs1.fault(1, "OtherError", "E-17", cleared_by=("Soft",))
        await cs2.fault(2, "OtherError", "CX002", cleared_by=("Soft", "Hard"))

        def fixed() -> list[dict[str, Any]]:
            return [s for d in site.digests() for s in d["self_resolved"] if s["kind"] == "fault"]

        await site.escalated()
        escalated_after = now() - fault_at
        await site.observer.wait_for(lambda _: bool(fixed()), timeout=WINDOW_S)
        await asyncio.sleep(max(0.0, fault_at + WINDOW_S - now()))  # nothing more comes
        return await site.record(fault_at, escalated_after=escalated_after, fixed=fixed())


SCENARIOS: dict[str, Callable[[Path, Mosquitto], Coroutine[Any, Any, Record]]] = {
    "soft_reset": soft_reset_clears_the_fault,
    "cut_session": fault_cutting_a_session,
    "persisting": persisting_fault,
    "ground_failure": lambda r, b: safety_fault(r, b, "rec-ground", "GroundFailure", ""),
    "cx002": lambda r, b: safety_fault(r, b, "rec-cx002", "OtherError", "CX002"),
    "charging": charging_connector,
    "budget": reset_budget,
    "site_wide": site_wide_drop,
    "broker_down": lambda r, _b: broker_down_during_window(r),
    "maintenance": maintenance_requested_by_the_cloud,
    "cleared": cleared_after_escalation,
    "rerun": rerun_after_the_blocking_session_ended,
    "two_resets": two_charge_points_reset_together,
    "configuration": configuration_changed_by_the_cloud,
    "ocpp201": ocpp201_station,
}


class Scenarios:
    def __init__(self, tasks: dict[str, asyncio.Task[Record]]) -> None:
        self.tasks = tasks

    async def __call__(self, name: str) -> Record:
        async with asyncio.timeout(120):
            return await asyncio.shield(self.tasks[name])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scenarios(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scenarios]:
    root = tmp_path_factory.mktemp("recovery")
    tasks = {
        name: asyncio.create_task(run(root, mosquitto), name=f"scenario-{name}")
        for name, run in SCENARIOS.items()
    }
    try:
        yield Scenarios(tasks)
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def injected_ids(cp: RebootingCp) -> set[str]:
    return {c.unique_id for c in cp.received}


def frames(raw: list[str]) -> list[list[Any]]:
    return [json.loads(f) for f in raw]


# ---------------------------------------------------------------- the tests


async def test_fault_cleared_by_soft_reset_is_not_escalated_and_counted_self_resolved(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("soft_reset")
    cp = seen.cps["CP-1"]
    assert seen.escalations == []
    assert [c["type"] for c in cp.calls("Reset")] == ["Soft"]
    fixed = [s for d in seen.digests for s in d["self_resolved"] if s["kind"] == "fault"]
    assert len(fixed) == 1
    assert fixed[0]["charge_point_id"] == "CP-1"
    assert fixed[0]["connector_id"] == 1
    assert fixed[0]["fault_code"] == "OtherError"
    assert fixed[0]["fixed_by"] == "soft_reset"
    counters = [c for d in seen.digests for c in d["chargers"] if c["charge_point_id"] == "CP-1"]
    assert sum(c["faults"] for c in counters) == 1
    assert sum(c["resets"] for c in counters) == 1
    # The CSMS saw the charge point's own frames (the fault, the reboot) and nothing of the
    # agent's calls: no TriggerMessage/ChangeAvailability/Reset and none of their replies.
    received = frames(seen.csms["CP-1"])
    assert {f[2] for f in received if f[0] == 2} <= {"BootNotification", "StatusNotification"}
    assert not {f[1] for f in received if f[0] in (3, 4)} & injected_ids(cp)
    assert sum(1 for f in received if f[0] == 2 and f[2] == "BootNotification") == 2
    faulted = [f for f in received if f[0] == 2 and f[3].get("status") == "Faulted"]
    assert faulted and faulted[0][3]["vendorErrorCode"] == "E-17"
    assert seen.status["recovery"]["open_incidents"] == []


async def test_reboot_ordered_by_the_agent_is_not_reported_as_a_lost_connection(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("soft_reset")
    resolved = [s for d in seen.digests for s in d["self_resolved"]]
    assert [(s["kind"], s["fixed_by"]) for s in resolved] == [("fault", "soft_reset")]
    counters = [c for d in seen.digests for c in d["chargers"] if c["charge_point_id"] == "CP-1"]
    assert sum(c["disconnects"] for c in counters) == 0


async def test_a_fault_that_stopped_a_session_reports_it_cut_and_what_its_driver_still_wanted(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("cut_session")
    fixed = seen.extra["fixed"]
    assert len(fixed) == 1 and fixed[0]["fixed_by"] == "soft_reset"
    assert fixed[0]["sessions_cut"] == 1
    # stopped at 50 % SoC, 400 Wh a point: 50 points short of a full battery
    assert fixed[0]["energy_unmet_wh"] == pytest.approx(20_000, rel=0.01)


async def test_persisting_fault_is_escalated_once_with_steps_evidence_and_hardware(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("persisting")
    cp = seen.cps["CP-1"]
    esc = seen.only_escalation()
    assert seen.extra["escalated_after"] <= WINDOW_S + 30
    assert esc["site_id"] == "rec-persist"
    assert esc["scope"] == "connector"
    assert (esc["charge_point_id"], esc["connector_id"]) == ("CP-1", 1)
    assert esc["fault"]["code"] == "OtherError"
    assert esc["fault"]["vendor_code"] == "E-42"
    assert esc["fault"]["vendor_id"] == "Ampero"
    assert esc["fault"]["info"] == "PSU fan stalled"
    actions = [a for a, _ in steps(esc)]
    assert actions[:4] == ["confirm", "availability_toggle", "soft_reset", "hard_reset"]
    assert dict(steps(esc))["soft_reset"] == "no_change"
    assert dict(steps(esc))["hard_reset"] == "no_change"
    assert esc["hardware"] == {
        "vendor": "Ampero",
        "model": "TestWallbox 22",
        "firmware": "4.2.1",
        "serial": "AMP-0042",
    }
    evidence = [e["frame"] for e in esc["evidence"]]
    assert any('"Faulted"' in f and "E-42" in f for f in evidence)
    assert esc["message_id"] and esc["incident_id"]
    # what the charge point went through, in order
    assert [c["type"] for c in cp.calls("Reset")] == ["Soft", "Hard"]
    toggles = cp.calls("ChangeAvailability")
    assert toggles[:2] == [
        {"connectorId": 1, "type": "Inoperative"},
        {"connectorId": 1, "type": "Operative"},
    ]
    assert toggles[-1]["type"] == "Operative"
    assert cp.inoperative == set()
    assert cp.status_of(1) == ("Faulted", "OtherError")


@pytest.mark.parametrize("scenario", ["ground_failure", "cx002"])
async def test_safety_critical_fault_gets_no_reset_and_is_escalated_at_once(
    scenarios: Scenarios, scenario: str
) -> None:
    seen = await scenarios(scenario)
    cp = seen.cps["CP-1"]
    esc = seen.only_escalation()
    assert seen.extra["escalated_after"] < 5
    assert esc["fault"]["safety_critical"] is True
    assert esc["recovery_attempts"] == []
    assert cp.received == []  # no Reset, nor anything else: nothing is tried on it
    assert cp.boots == 1
    assert esc["recommended_action"] == "field_technician"


async def test_charging_connector_protects_the_charge_point_from_reset(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("charging")
    cp = seen.cps["CP-1"]
    assert cp.calls("Reset") == []
    esc = seen.only_escalation()
    assert cp.connections == 1 and cp.boots == 1  # never rebooted
    assert cp.transactions == {2: seen.extra["transaction_id"]}
    assert cp.status_of(2) == ("Charging", "NoError")
    assert all(c["connectorId"] == 1 for c in cp.calls("ChangeAvailability"))
    result = dict(steps(esc))
    assert result["soft_reset"] == "skipped"
    assert result["hard_reset"] == "skipped"
    detail = next(a["detail"] for a in esc["recovery_attempts"] if a["action"] == "soft_reset")
    assert "charging" in detail
    assert esc["active_sessions"] == 1
    assert ("confirm", "no_change") in steps(esc)
    # the CSMS never heard of a stop
    calls = [f[2] for f in frames(seen.csms["CP-1"]) if f[0] == 2]
    assert "StopTransaction" not in calls


async def test_reset_budget_of_one_sends_one_reset_and_skips_the_rest(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("budget")
    cp = seen.cps["CP-1"]
    esc = seen.only_escalation()
    assert [c["type"] for c in cp.calls("Reset")] == ["Soft"]
    result = dict(steps(esc))
    assert result["soft_reset"] == "no_change"
    assert result["hard_reset"] == "skipped"
    detail = next(a["detail"] for a in esc["recovery_attempts"] if a["action"] == "hard_reset")
    assert "budget" in detail
    assert seen.status["recovery"]["resets_last_24h"] == {"CP-1": 1}


async def test_several_charge_points_dropping_at_once_are_one_site_incident(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("site_wide")
    esc = seen.only_escalation()  # one for the site, none per charge point
    assert esc["scope"] == "site"
    assert esc["kind"] == "connectivity"
    assert esc["charge_point_id"] is None and esc["connector_id"] is None
    assert sorted(esc["chargers"]) == seen.extra["dropped"]
    assert esc["fault"]["code"] == "SiteOutage"
    assert seen.cps["CP-4"].received == []  # the one still online was left alone


async def test_escalation_made_while_the_broker_is_down_is_delivered_once_when_it_returns(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("broker_down")
    assert seen.extra["seen_while_down"] == []
    assert seen.extra["queued_while_down"]["queued"] == 1
    assert seen.extra["queued_while_down"]["connected"] is False
    esc = seen.only_escalation()
    assert esc["fault"]["vendor_code"] == "E-77"
    ids = [p["message_id"] for t, p in seen.arrivals if t.endswith("/escalations")]
    assert ids == [esc["message_id"]] * len(ids)  # any redelivery under the same id
    assert seen.status["uplink"]["queued"] == 0


async def test_charge_point_put_in_maintenance_by_the_cloud_is_left_alone(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("maintenance")
    assert seen.extra["reply"]["ok"] is True
    assert seen.cps["CP-1"].received == []
    assert seen.escalations == []
    assert seen.status["recovery"]["maintenance"] == ["CP-1"]


async def test_escalated_fault_repaired_later_is_reported_cleared_under_its_incident(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("cleared")
    esc = seen.only_escalation()
    (cleared,) = seen.extra["cleared"]
    assert cleared["incident_id"] == esc["incident_id"]
    assert cleared["message_id"] != esc["message_id"]
    assert cleared["ended_at"] is not None
    assert cleared["fault"]["vendor_code"] == "E-8"


async def test_operator_rerun_after_the_blocking_session_ended_resets_and_clears_the_escalation(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("rerun")
    assert seen.extra["nothing"]["ok"] is False
    assert "no escalated incident" in seen.extra["nothing"]["error"]
    first = seen.extra["first"]
    assert seen.extra["resets_before"] == 0
    assert "soft_reset" in [a for a, _ in steps(first)]  # tried, and skipped for the session
    assert seen.extra["reply"]["ok"] is True
    assert seen.extra["reply"]["result"]["incident_ids"] == [first["incident_id"]]
    assert [c["type"] for c in seen.cps["CP-1"].calls("Reset")] == ["Soft"]
    (cleared,) = seen.extra["cleared"]
    assert cleared["incident_id"] == first["incident_id"]
    # the re-run's fix is the escalation cleared, not a new self-resolved incident
    resolved = [s for d in seen.digests for s in d["self_resolved"]]
    assert [s for s in resolved if s["incident_id"] == first["incident_id"]] == []


async def test_cloud_changes_a_charger_setting_and_hears_what_it_was_and_what_the_charger_said(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("configuration")
    x = seen.extra
    assert x["heartbeat"]["ok"] is True, x["heartbeat"]
    assert x["heartbeat"]["result"] == {
        "charge_point_id": "CP-1",
        "key": "HeartbeatInterval",
        "value": "60",
        "previous": "300",
        "status": "Accepted",
        "reboot_required": False,
    }
    cp, cs = seen.cps["CP-1"], seen.cps["CS-2"]
    assert cp.settings["HeartbeatInterval"] == "60"
    assert x["ping"]["ok"] is True
    assert x["ping"]["result"]["status"] == "RebootRequired"
    assert x["ping"]["result"]["reboot_required"] is True
    # refused by the charger: not ok, and the reply says what it answered and what is set
    assert x["read_only"]["ok"] is False
    assert "Rejected" in x["read_only"]["error"]
    assert x["read_only"]["result"]["status"] == "Rejected"
    assert x["read_only"]["result"]["previous"] == "TestWallbox 22"
    # a key outside [uplink] configuration_keys is not even read
    assert x["not_listed"]["ok"] is False
    assert "configuration_keys" in x["not_listed"]["error"]
    assert cp.calls("ChangeConfiguration") == [
        {"key": "HeartbeatInterval", "value": "60"},
        {"key": "WebSocketPingInterval", "value": "30"},
        {"key": "ChargePointModel", "value": "X"},
    ]
    # 2.0.1: the component is required, then GetVariables and SetVariables
    assert x["no_component"]["ok"] is False
    assert "params.component is required" in x["no_component"]["error"]
    assert x["v201"]["ok"] is True, x["v201"]
    assert x["v201"]["result"]["previous"] == "300"
    assert x["v201"]["result"]["component"] == "OCPPCommCtrlr"
    assert cs.settings["HeartbeatInterval"] == "120"
    assert len(cs.calls("SetVariables")) == 1
    assert x["absent"]["ok"] is False
    assert "CP-9 is not connected" in x["absent"]["error"]
    # injected: the CSMS never saw the calls nor their answers
    for raw in seen.csms.values():
        assert not any("Configuration" in f or "Variables" in f for f in raw)
    # the agent now expects heartbeats at the new intervals (else a slower charger would
    # look silent and be reset)
    assert x["heartbeats"] == {"CP-1": 60.0, "CS-2": 120.0}
    # every request audited at the edge with how it went
    assert sorted(seen.extra["audit"]) == sorted(["ok"] * 3 + ["failed"] + ["error"] * 3)


async def test_resets_the_agent_ordered_at_two_charge_points_are_not_a_site_outage(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("two_resets")
    assert seen.escalations == []
    resolved = [s for d in seen.digests for s in d["self_resolved"]]
    assert [s for s in resolved if s["scope"] == "site"] == []


async def test_ocpp201_station_soft_reset_clears_one_fault_and_cx002_is_escalated_untouched(
    scenarios: Scenarios,
) -> None:
    seen = await scenarios("ocpp201")
    cs1, cs2 = seen.cps["CS-1"], seen.cps["CS-2"]
    # CS-1: the 2.0.1 steps reached the station, were schema-valid (accepted), and fixed it
    assert cs1.calls("TriggerMessage")[0] == {
        "requestedMessage": "StatusNotification",
        "evse": {"id": 1, "connector_id": 1},
    }
    assert cs1.calls("ChangeAvailability")[:2] == [
        {"operationalStatus": "Inoperative", "evse": {"id": 1}},
        {"operationalStatus": "Operative", "evse": {"id": 1}},
    ]
    assert cs1.calls("Reset") == [{"type": "OnIdle"}]
    assert [
        (s["charge_point_id"], s["connector_id"], s["fixed_by"]) for s in seen.extra["fixed"]
    ] == [("CS-1", 1, "soft_reset")]
    actions = [
        a for a in seen.status["recovery"]["recent_actions"] if a["charge_point_id"] == "CS-1"
    ]
    assert [a["result"] for a in actions if a["request"]] == ["accepted"] * 4
    # CS-2: the NotifyEvent's techCode CX002 makes it a ground fault: no reset, escalated at once
    esc = seen.only_escalation()
    assert (esc["charge_point_id"], esc["connector_id"]) == ("CS-2", 2)
    assert esc["fault"]["chargex_code"] == "CX002"
    assert esc["fault"]["vendor_code"] == "CX002"
    assert esc["fault"]["safety_critical"] is True
    assert esc["hardware"]["serial"] == "V-2"
    assert seen.extra["escalated_after"] < 5
    assert cs2.calls("Reset") == [] and cs2.calls("ChangeAvailability") == []
