"""The test servers never outlive their pytest run, even one that was killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import reap_stale_servers

CHILD = """
import sys, time
from tests.servers import start_mosquitto, start_postgres
pg = start_postgres(); mq = start_mosquitto()
print(pg.datadir, mq.workdir, mq.proc.pid, flush=True)
time.sleep(600)
"""


def _running(pattern: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if pattern.encode() in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_servers_of_a_killed_test_run_are_stopped_by_the_next_one() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert child.stdout is not None
    pg_dir, mq_dir, _mq_pid = child.stdout.readline().split()  # (a pid may be reused)
    assert _running(pg_dir) and _running(mq_dir)
    child.send_signal(signal.SIGKILL)  # no teardown runs
    child.wait(10)
    assert _running(pg_dir), "killed without teardown, its PostgreSQL is still up"
    reap_stale_servers()
    deadline = time.monotonic() + 10
    while (_running(pg_dir) or _running(mq_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pg_dir)
    assert not _running(mq_dir)
    assert not Path(pg_dir).exists() and not Path(mq_dir).exists()
