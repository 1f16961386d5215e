"""Executable hooks: site-specific recovery actions the agent may run (e.g. a relay power-cycle).

The contract (also in ``firmware-hooks/hooks/README.md``):

* A hook is an executable file ``<hooks_dir>/<name>``; the playbook step
  ``hook:<name>`` runs it. It is started directly (no shell), with the hooks
  directory as working directory.
* **stdin**: one JSON object::

      {"hook": "power-cycle", "site_id": "...", "charge_point_id": "CP-1",
       "connector_id": 1 | null, "incident_id": "...", "fault": {...},
       "hardware": {"vendor": ..., "model": ..., "firmware": ..., "serial": ...}}

* **environment**: the agent's environment plus ``CHARGESIGHT_HOOK``,
  ``CHARGESIGHT_SITE_ID``, ``CHARGESIGHT_CHARGE_POINT_ID``,
  ``CHARGESIGHT_CONNECTOR_ID`` (empty when none), ``CHARGESIGHT_INCIDENT_ID``,
  and the matching hardware profile's ``[recovery] hook_env`` entries
  (e.g. ``CHARGESIGHT_RELAY_PATH``).
* **exit code**: ``0`` done, ``1`` tried and failed, ``2`` bad input or
  configuration, ``3`` not applicable to this charge point (e.g. no relay
  wired) — the step is recorded as ``skipped``. Anything else is ``error``.
* **timeout**: ``recovery.hook_timeout_s``, and never more than what is left of
  the recovery window; past it the process group gets SIGTERM — a hook that
  switched something off switches it back on then — and SIGKILL
  ``TERM_GRACE_S`` later; the step is recorded as ``timeout``.
* **stdout/stderr**: captured (first 4 KiB each) into the audit log.

Running a hook never blocks the event loop (``asyncio.create_subprocess_exec``).
Cancelling :meth:`HookRunner.run` stops the process the same way and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_APPLICABLE = 3
OUTPUT_LIMIT = 4096
TERM_GRACE_S = 5.0  # a timed-out hook: SIGTERM, then SIGKILL this much later

HookOutcome = Literal["done", "failed", "skipped", "timeout", "error", "missing"]


@dataclass(frozen=True, slots=True)
class HookResult:
    name: str
    outcome: HookOutcome
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.outcome == "done"


def _outcome(code: int) -> HookOutcome:
    if code == EXIT_OK:
        return "done"
    if code == EXIT_FAILED:
        return "failed"
    if code == EXIT_NOT_APPLICABLE:
        return "skipped"
    return "error"


class HookRunner:
    """Runs hooks from one directory with a time limit."""

    def __init__(
        self,
        hooks_dir: Path | None,
        timeout_s: float = 30.0,
        *,
        site_id: str = "",
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.hooks_dir = hooks_dir
        self.timeout_s = timeout_s
        self.site_id = site_id
        self.base_env = dict(os.environ if base_env is None else base_env)

    def path(self, name: str) -> Path | None:
        """The executable for ``name``, or None when there is none (or the name is unsafe)."""
        if self.hooks_dir is None or "/" in name or name.startswith("."):
            return None
        path = self.hooks_dir / name
        return path if path.is_file() and os.access(path, os.X_OK) else None

    def available(self, name: str) -> bool:
        return self.path(name) is not None

    async def run(
        self,
        name: str,
        request: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HookResult:
        """Run hook ``name`` with ``request`` as JSON on stdin. Cancel-safe: kills the process."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        path = self.path(name)
        if path is None:
            return HookResult(name, "missing", None, "", f"no executable hook {name!r}", 0.0)
        connector = request.get("connector_id")
        full_env = {
            **self.base_env,
            "CHARGESIGHT_HOOK": name,
            "CHARGESIGHT_SITE_ID": str(request.get("site_id") or self.site_id),
            "CHARGESIGHT_CHARGE_POINT_ID": str(request.get("charge_point_id") or ""),
            "CHARGESIGHT_CONNECTOR_ID": "" if connector is None else str(connector),
            "CHARGESIGHT_INCIDENT_ID": str(request.get("incident_id") or ""),
            **(env or {}),
        }
        payload = orjson.dumps({"hook": name, "site_id": self.site_id, **request})
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
                cwd=str(path.parent),
                start_new_session=True,
            )
        except OSError as exc:
            return HookResult(name, "error", None, "", str(exc), loop.time() - start)
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            out, err = await asyncio.wait_for(proc.communicate(payload), limit)
        except TimeoutError:
            await _stop(proc)
            return HookResult(
                name,
                "timeout",
                None,
                "",
                f"stopped after {limit:g} s (SIGTERM, then SIGKILL {TERM_GRACE_S:g} s later)",
                loop.time() - start,
            )
        except BaseException:
            await _stop(proc)
            raise
        code = proc.returncode if proc.returncode is not None else -1
        return HookResult(
            name,
            _outcome(code),
            code,
            out[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            err[:OUTPUT_LIMIT].decode("utf-8", "replace"),
            loop.time() - start,
        )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the hook's process group, SIGKILL to what is left ``TERM_GRACE_S`` later."""
    await asyncio.shield(_terminate(proc))


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), TERM_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group: children that ignored SIGTERM
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()
