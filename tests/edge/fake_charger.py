"""A stand-in for the proxy's call injection (``edge/recovery.py`` ``CallInjector``), for pure
unit tests of what the agent sends and how it reads the answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chargesight.edge.errors import ChargePointNotConnected

Handler = Callable[[str, dict[str, Any]], dict[str, Any] | None]


@dataclass
class FakeCharger:
    """Stands in for the proxy: records injected calls, answers Accepted unless told otherwise
    (a handler may also raise what the proxy raises)."""

    versions: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    handlers: dict[str, Handler] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)
    timeouts: list[float | None] = field(default_factory=list)  # each call's, in order

    async def call(
        self,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if charge_point_id in self.offline:
            raise ChargePointNotConnected("offline", charge_point_id=charge_point_id)
        self.sent.append((charge_point_id, action, payload))
        self.timeouts.append(timeout)
        handler = self.handlers.get(action)
        answer = handler(charge_point_id, payload) if handler else None
        return answer if answer is not None else {"status": "Accepted"}

    def version(self, charge_point_id: str) -> str | None:
        return (
            None if charge_point_id in self.offline else self.versions.get(charge_point_id, "1.6")
        )

    def actions(self, action: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        return [s for s in self.sent if action is None or s[1] == action]
