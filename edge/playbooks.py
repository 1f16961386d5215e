"""Recovery playbooks: which steps to try for a fault, and how long each may wait.

A playbook is an ordered list of step names. The engine
(:mod:`chargesight.edge.recovery`) runs them one by one, waiting after each
for the recovery signal; a step's wait is a fraction of ``recovery.window_s``
so every timer scales inside the window (600 s by default, 20 s in tests).

Steps:

``confirm``              ``TriggerMessage StatusNotification`` — is it still faulted?
``availability_toggle``  ``ChangeAvailability`` Inoperative → Operative (always restored)
``unlock``               ``UnlockConnector`` (lock faults)
``soft_reset``           ``Reset Soft`` (2.0.1 ``OnIdle``) — charge point wide
``hard_reset``           ``Reset Hard`` (2.0.1 ``Immediate``) — charge point wide
``hook:NAME``            run the executable hook ``NAME`` (e.g. ``hook:power-cycle``)
``wait``                 do nothing, just wait for the signal (lost connections)

Hardware profiles override the list per category (``[playbooks]`` in
``firmware-hooks/profiles/*.toml``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from chargesight.common import taxonomy

CONFIRM: Final = "confirm"
AVAILABILITY_TOGGLE: Final = "availability_toggle"
UNLOCK: Final = "unlock"
SOFT_RESET: Final = "soft_reset"
HARD_RESET: Final = "hard_reset"
WAIT: Final = "wait"
HOOK_PREFIX: Final = "hook:"

RESET_STEPS: Final = frozenset({SOFT_RESET, HARD_RESET})
CONNECTOR_STEPS: Final = frozenset({CONFIRM, AVAILABILITY_TOGGLE, UNLOCK, WAIT})
KNOWN_STEPS: Final = frozenset({CONFIRM, AVAILABILITY_TOGGLE, UNLOCK, SOFT_RESET, HARD_RESET, WAIT})

STEP_WAIT_FRACTION: Final[Mapping[str, float]] = {
    CONFIRM: 0.05,
    AVAILABILITY_TOGGLE: 0.15,
    UNLOCK: 0.10,
    SOFT_RESET: 0.25,
    HARD_RESET: 0.25,
    WAIT: 0.25,
}
"""How long to wait for the recovery signal after a step, as a fraction of the window."""

HOOK_WAIT_FRACTION: Final = 0.20
INOPERATIVE_DWELL_FRACTION: Final = 0.02
"""How long a connector stays Inoperative during the availability toggle."""

DEFAULT: Final = (CONFIRM, AVAILABILITY_TOGGLE, SOFT_RESET, HARD_RESET, "hook:power-cycle")

DEFAULT_PLAYBOOKS: Final[Mapping[str, tuple[str, ...]]] = {
    taxonomy.CONNECTOR_LOCK: (CONFIRM, UNLOCK, AVAILABILITY_TOGGLE, SOFT_RESET, HARD_RESET),
    taxonomy.CONNECTIVITY: (WAIT, CONFIRM, "hook:power-cycle"),
    f"{taxonomy.CONNECTIVITY}:{taxonomy.MISSED_HEARTBEATS}": (
        CONFIRM,
        SOFT_RESET,
        HARD_RESET,
        "hook:power-cycle",
    ),
    taxonomy.PERFORMANCE: (AVAILABILITY_TOGGLE, SOFT_RESET),
    "site": (WAIT,),
}
"""Default playbook per category; ``"category:CODE"`` keys are more specific."""


@dataclass(frozen=True, slots=True)
class Playbook:
    """The steps chosen for one incident."""

    key: str
    steps: tuple[str, ...]

    def wait_s(self, step: str, window_s: float) -> float:
        """How long to wait for the recovery signal after ``step``."""
        if step.startswith(HOOK_PREFIX):
            return HOOK_WAIT_FRACTION * window_s
        return STEP_WAIT_FRACTION.get(step, 0.1) * window_s


def is_reset(step: str) -> bool:
    """Steps that restart (or power-cycle) the whole charge point, and count against the budget."""
    return step in RESET_STEPS or step.startswith(HOOK_PREFIX)


def validate_steps(steps: Sequence[str]) -> list[str]:
    """Return the unknown step names in ``steps`` (for profile validation)."""
    return [s for s in steps if s not in KNOWN_STEPS and not s.startswith(HOOK_PREFIX)]


def choose(
    category: str,
    code: str,
    *,
    scope: str,
    overrides: Mapping[str, Sequence[str]] | None = None,
) -> Playbook:
    """The playbook for a fault: the profile's override first, then the defaults.

    Lookup order, most specific first: ``"category:code"``, ``"category"``,
    ``"default"``. A site incident always waits: nothing the agent can send
    fixes a site's power or uplink.
    """
    if scope == "site":
        return Playbook("site", tuple(DEFAULT_PLAYBOOKS["site"]))
    keys = (f"{category}:{code}", category, "default")
    for key in keys:
        for table in (overrides or {}, DEFAULT_PLAYBOOKS):
            if key in table:
                return Playbook(key, tuple(table[key]))
    return Playbook("default", DEFAULT)
