"""Simulated time for live runs: wall-clock time sped up by a factor.

``now()`` is the simulated instant (it starts at ``start``, default the wall
clock, and runs ``speed`` times faster); ``sleep(s)`` waits ``s`` simulated
seconds. Every timestamp a simulated charge point puts in a message comes
from here, so a run at speed 60 produces an hour of OCPP traffic a minute.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    def __init__(
        self, speed: float = 1.0, start: datetime | None = None, offset_s: float = 0.0
    ) -> None:
        """``start`` is simulated time zero; the clock begins ``offset_s`` after it."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.offset_s = offset_s
        self.start = start or datetime.now(UTC) - timedelta(seconds=offset_s)
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Simulated seconds since ``start`` (time zero of the scenario)."""
        return self.offset_s + (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed())

    def iso(self) -> str:
        return self.now().isoformat(timespec="seconds").replace("+00:00", "Z")

    def real(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds) / self.speed

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(self.real(sim_seconds))

    async def sleep_until(self, sim_elapsed: float) -> None:
        await asyncio.sleep(self.real(sim_elapsed - self.elapsed()))
