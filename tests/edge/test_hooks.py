"""The hook contract: JSON on stdin, env vars, exit codes, time limit; power-cycle with a fake relay."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from chargesight.edge import hooks as hooks_module
from chargesight.edge.hooks import HookRunner
from chargesight.edge.profiles import default_hooks_dir

REQUEST = {
    "charge_point_id": "CP-7",
    "connector_id": 2,
    "incident_id": "inc-1",
    "fault": {"code": "InternalError"},
}


def _script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_power_cycle_hook_drives_the_fake_relay_off_then_on(tmp_path: Path) -> None:
    relay = tmp_path / "relay-{charge_point_id}"
    runner = HookRunner(default_hooks_dir(), timeout_s=10, site_id="s1")
    result = await runner.run(
        "power-cycle",
        REQUEST,
        env={"CHARGESIGHT_RELAY_PATH": str(relay), "CHARGESIGHT_OFF_S": "0.05"},
    )
    assert result.outcome == "done" and result.exit_code == 0
    assert (tmp_path / "relay-CP-7").read_text().strip() == "1"
    report = json.loads(result.stdout)
    assert report["sequence"] == ["0", "1"]
    assert report["relay"] == str(tmp_path / "relay-CP-7")


async def test_power_cycle_hook_without_a_relay_is_not_applicable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGESIGHT_RELAY")}
    runner = HookRunner(default_hooks_dir(), base_env=env)
    result = await runner.run("power-cycle", REQUEST)
    assert (result.outcome, result.exit_code) == ("skipped", 3)


async def test_power_cycle_hook_uses_the_relay_map(tmp_path: Path) -> None:
    relay = tmp_path / "gpio17"
    mapping = tmp_path / "relays.json"
    mapping.write_text(json.dumps({"CP-7": str(relay)}))
    runner = HookRunner(default_hooks_dir())
    result = await runner.run(
        "power-cycle",
        REQUEST,
        env={"CHARGESIGHT_RELAY_MAP": str(mapping), "CHARGESIGHT_OFF_S": "0"},
    )
    assert result.ok
    assert relay.read_text().strip() == "1"


async def test_hook_receives_json_on_stdin_and_the_documented_environment(tmp_path: Path) -> None:
    _script(
        tmp_path,
        "echo",
        "import json, os, sys\n"
        "req = json.load(sys.stdin)\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('CHARGESIGHT_')}\n"
        "print(json.dumps({'req': req, 'env': env, 'cwd': os.getcwd()}))\n",
    )
    runner = HookRunner(tmp_path, site_id="berlin")
    result = await runner.run("echo", REQUEST, env={"CHARGESIGHT_RELAY_PATH": "/x"})
    assert result.outcome == "done"
    out = json.loads(result.stdout)
    assert out["req"]["charge_point_id"] == "CP-7" and out["req"]["hook"] == "echo"
    assert out["req"]["site_id"] == "berlin"
    assert out["env"]["CHARGESIGHT_HOOK"] == "echo"
    assert out["env"]["CHARGESIGHT_CHARGE_POINT_ID"] == "CP-7"
    assert out["env"]["CHARGESIGHT_CONNECTOR_ID"] == "2"
    assert out["env"]["CHARGESIGHT_INCIDENT_ID"] == "inc-1"
    assert out["env"]["CHARGESIGHT_SITE_ID"] == "berlin"
    assert out["env"]["CHARGESIGHT_RELAY_PATH"] == "/x"
    assert Path(out["cwd"]) == tmp_path


@pytest.mark.parametrize(
    ("code", "outcome"), [(0, "done"), (1, "failed"), (2, "error"), (3, "skipped"), (9, "error")]
)
async def test_hook_exit_codes_map_to_outcomes(tmp_path: Path, code: int, outcome: str) -> None:
    _script(tmp_path, "exit", f"import sys\nprint('bye', file=sys.stderr)\nsys.exit({code})\n")
    result = await HookRunner(tmp_path).run("exit", REQUEST)
    assert (result.outcome, result.exit_code) == (outcome, code)
    assert result.stderr.strip() == "bye"


def _alive(pid: int, marker: str) -> bool:
    """``pid`` still runs the process whose command line has ``marker`` (a pid may be reused;
    a zombie, killed and not yet reaped by whoever adopted it, has an empty command line)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def test_hook_past_its_time_limit_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    _script(tmp_path, "hang", (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(31)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(30)\n"
    ))  # fmt: skip
    result = await HookRunner(tmp_path, timeout_s=1.0).run("hang", REQUEST)
    assert result.outcome == "timeout"
    assert result.duration_s < 5
    hook, child = (int(p) for p in pids.read_text().split())
    assert not _alive(hook, "hang")
    for _ in range(50):  # the child was killed with it (its process group); init reaps it
        if not _alive(child, "time.sleep(31)"):
            break
        await asyncio.sleep(0.1)
    assert not _alive(child, "time.sleep(31)")


async def test_a_hook_past_its_time_limit_may_switch_the_power_back_on_before_it_goes(
    tmp_path: Path,
) -> None:
    relay = tmp_path / "relay"
    _script(tmp_path, "cycle", (
        "import signal, sys, time\n"
        f"relay = {str(relay)!r}\n"
        "def back_on(*_):\n"
        "    open(relay, 'w').write('on')\n"
        "    sys.exit(1)\n"
        "signal.signal(signal.SIGTERM, back_on)\n"
        "open(relay, 'w').write('off')\n"
        "time.sleep(30)\n"
    ))  # fmt: skip
    result = await HookRunner(tmp_path, timeout_s=1.0).run("cycle", REQUEST)
    assert result.outcome == "timeout"
    assert relay.read_text() == "on"  # SIGTERM first: it was not killed with the power off


async def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hooks_module, "TERM_GRACE_S", 0.5)
    pids = tmp_path / "pids"
    _script(tmp_path, "stubborn", (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(pids)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(30)\n"
    ))  # fmt: skip
    result = await HookRunner(tmp_path, timeout_s=0.5).run("stubborn", REQUEST)
    assert result.outcome == "timeout"
    assert not _alive(int(pids.read_text()), "stubborn")


async def test_missing_or_non_executable_hook_is_reported_not_run(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("#!/bin/sh\nexit 0\n")
    runner = HookRunner(tmp_path)
    assert (await runner.run("plain", REQUEST)).outcome == "missing"
    assert (await runner.run("../etc/passwd", REQUEST)).outcome == "missing"
    assert (await HookRunner(None).run("power-cycle", REQUEST)).outcome == "missing"


async def test_hook_output_is_bounded(tmp_path: Path) -> None:
    _script(tmp_path, "chatty", "print('x' * 100000)\n")
    result = await HookRunner(tmp_path).run("chatty", REQUEST)
    assert result.ok and len(result.stdout) <= 4096
