"""Live ground truth: whom a driver who leaves without charging is lost to.

Same definition as the history's (``ground_truth_record``): shared equally between the faults
the driver met on the way, and lost to none when the driver left after an ordinary failed
start. The live runs use real charge points against a real :class:`Csms`; one driver is played
through ``Simulation._arrive`` with a random source that always starts at the first connector.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from chargesight.sim import Csms, Simulation, parse_scenario
from chargesight.sim.faults import PlannedFault
from chargesight.sim.fleet import _Visit
from tests.servers import free_port


def scenario(failed_start_ratio: float, sessions_per_connector_day: float = 0) -> str:
    # one site, two single-connector AC chargers: solo-01 and solo-02
    return (
        '[network]\nname = "pair"\nseed = 5\nmeter_interval_s = 600\n'
        f"[drivers]\nsessions_per_connector_day = {sessions_per_connector_day}\n"
        f"failed_start_ratio = {failed_start_ratio}\n"
        '[[sites]]\nid = "solo"\nname = "Solo"\ncurrency = "EUR"\nprice_per_kwh = 0.5\n'
        '[[sites.chargers]]\nmodel = "ampero-ac11"\n'
        '[[sites.chargers]]\nmodel = "ampero-ac11"\n'
    )


class FromFirstConnector(random.Random):
    """Draws like ``random.Random`` except that every ``randrange`` is its lowest value: the
    driver starts at the first connector listed (and has the first id tag)."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 0 if stop is None else start


def fault(name: str) -> PlannedFault:
    return PlannedFault(name, "ground_failure", "solo", ["solo-01"], 1, 0.0)


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    async with Csms("127.0.0.1", free_port()) as server:
        yield server


# ------------------------------------------------------------ the bookkeeping


def test_driver_turned_away_by_two_identical_faults_is_shared_half_and_half() -> None:
    a, b = fault("a"), fault("b")
    visit = _Visit()
    visit.meet(a)
    visit.meet(b)
    visit.meet(a)  # met again (a unit's second connector): still one share
    visit.lost(20_000.0)
    assert (a.sessions_lost, b.sessions_lost) == (0.5, 0.5)
    assert (a.energy_lost_wh, b.energy_lost_wh) == (10_000.0, 10_000.0)


def test_driver_who_leaves_after_an_ordinary_failed_start_is_lost_to_no_fault() -> None:
    a = fault("a")
    visit = _Visit()
    visit.meet(a)  # walked past the broken connector
    visit.ordinary_failed_start()  # then the next one failed to start, as any may
    visit.lost(20_000.0)
    assert (a.sessions_lost, a.energy_lost_wh) == (0.0, 0.0)


def test_fault_met_after_an_ordinary_failed_start_loses_the_driver_again() -> None:
    # the start failed for no fault's reason; the connector the driver would have retried at is
    # out: the driver leaves because of the fault
    a = fault("a")
    visit = _Visit()
    visit.ordinary_failed_start()
    visit.meet(a)
    visit.lost(20_000.0)
    assert (a.sessions_lost, a.energy_lost_wh) == (1.0, 20_000.0)


# ------------------------------------------------------------ live


def arrivals_by_hand(csms: Csms, failed_start_ratio: float) -> Simulation:
    """The two-charger site, live, with no drivers or faults of its own: the test brings both."""
    return Simulation(
        parse_scenario(scenario(failed_start_ratio=failed_start_ratio)),
        csms.url,
        speed=600,
        seed=3,
        drivers=False,
        scheduled_faults=False,
    )


async def test_live_ordinary_failed_start_after_a_broken_connector_is_not_the_faults(
    csms: Csms,
) -> None:
    sim = arrivals_by_hand(csms, failed_start_ratio=1.0)
    async with sim:
        await sim.wait_connected(timeout=10)
        broken = sim.inject("solo-01", "ground_failure", connector=1)
        await sim.charge_point("solo-01").wait_for(lambda c: c.status(1).status == "Faulted")
        conns = [(sim.charge_point("solo-01"), 1), (sim.charge_point("solo-02"), 1)]
        # solo-01 is out; the start at solo-02 fails (failed_start_ratio = 1); no connector left
        await sim._arrive(conns, FromFirstConnector(7))
        assert (sim.sessions, sim.sessions_failed) == (0, 1)
        assert (broken.sessions_lost, broken.energy_lost_wh) == (0.0, 0.0)
        truth = sim.ground_truth()[0]
    assert truth["sessions_lost"] == 0 and truth["revenue_lost"]["amount"] == 0


async def test_live_driver_turned_away_by_two_identical_faults_is_shared_half_and_half(
    csms: Csms,
) -> None:
    sim = arrivals_by_hand(csms, failed_start_ratio=0.0)
    async with sim:
        await sim.wait_connected(timeout=10)
        one = sim.inject("solo-01", "ground_failure", connector=1)
        two = sim.inject("solo-02", "ground_failure", connector=1)
        conns = [(sim.charge_point("solo-01"), 1), (sim.charge_point("solo-02"), 1)]
        await sim._arrive(conns, FromFirstConnector(7))
        assert (one.sessions_lost, two.sessions_lost) == (0.5, 0.5)
        assert one.energy_lost_wh == two.energy_lost_wh > 0
        truths = sim.ground_truth()
    assert [t["sessions_lost"] for t in truths] == [0.5, 0.5]
    assert truths[0]["revenue_lost"] == truths[1]["revenue_lost"]
    assert truths[0]["revenue_lost"]["amount"] > 0


async def test_live_drivers_share_identical_simultaneous_faults_equally(csms: Csms) -> None:
    # drivers arrive at random connectors; every one meets both faults, whichever first
    sim = Simulation(
        parse_scenario(scenario(failed_start_ratio=0.0, sessions_per_connector_day=200)),
        csms.url,
        speed=3600,
        seed=2,
        scheduled_faults=False,
    )
    async with sim:
        await sim.wait_connected()
        one = sim.inject("solo-01", "ground_failure", connector=1)
        two = sim.inject("solo-02", "ground_failure", connector=1)
        await sim.wait_for(lambda s: one.sessions_lost >= 2, timeout=20)
        assert one.sessions_lost == two.sessions_lost
        assert one.sessions_lost * 2 == int(one.sessions_lost * 2)  # halves of drivers
