"""chargesight.sim — a simulated EV charging network with ground truth.

Real OCPP 1.6J / 2.0.1 over real WebSockets, injected faults whose truth is
recorded, and a fast history generator. The product never imports this
package; tests, benchmarks and the demo do.

Modules:

* :mod:`~chargesight.sim.scenario` — TOML scenarios (:func:`load_scenario`), validated.
* :mod:`~chargesight.sim.catalogue` — hardware models.
* :mod:`~chargesight.sim.faults` — fault models: symptoms, what clears them, the real fix.
* :mod:`~chargesight.sim.drivers` — arrivals by hour of week, energy, power.
* :mod:`~chargesight.sim.history` — :func:`generate_history` (digests, escalations, ground truth).
* :mod:`~chargesight.sim.chargepoint` — :class:`SimChargePoint`, one live charge point.
* :mod:`~chargesight.sim.fleet` — :class:`Simulation`, a whole scenario live (the test API).
* :mod:`~chargesight.sim.csms` — :class:`Csms`, a small recording CSMS.
* :mod:`~chargesight.sim.cli` — ``chargesight sim run|history|check|csms``.

Quick start for a test::

    async with Csms("127.0.0.1", free_port()) as csms, \\
            Simulation(load_scenario("small"), csms.url, speed=60, drivers=False,
                       scheduled_faults=False, only=["berlin-mitte-01"]) as sim:
        await sim.wait_connected()
        sim.inject("berlin-mitte-01", "transient")
        await sim.charge_point("berlin-mitte-01").wait_status(0, "Faulted")
"""

from chargesight.sim.chargepoint import ConnectorView, SessionOutcome, SimChargePoint
from chargesight.sim.csms import Csms, Received
from chargesight.sim.faults import FAULT_TYPES, FaultType, PlannedFault
from chargesight.sim.fleet import Simulation
from chargesight.sim.history import HistorySummary, generate_history
from chargesight.sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = [
    "FAULT_TYPES",
    "ConnectorView",
    "Csms",
    "FaultType",
    "HistorySummary",
    "PlannedFault",
    "Received",
    "Scenario",
    "ScenarioError",
    "SessionOutcome",
    "SimChargePoint",
    "Simulation",
    "generate_history",
    "load_scenario",
    "parse_scenario",
]
