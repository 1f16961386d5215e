"""`cloud import` of a simulator history directory, the embedded database, and `cloud run` as a process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import structlog

from chargesight.cloud.entry import main as cloud_main
from tests.cloud.conftest import OPERATOR
from tests.cloud.helpers import T0, Publisher, blip, counters, digest, escalation, usage_history
from tests.servers import Mosquitto, free_port

pytestmark = [pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`cloud import` configures logging on the captured stderr; undo it for later tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def write_history(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    network = {"sites": [{"id": "lyon", "name": "Lyon Part-Dieu", "currency": "EUR", "price_per_kwh": 0.45,
                          "charge_points": [{"id": "ly-1", "vendor": "Acme", "model": "DC50", "firmware": "1.2.0",
                                             "connectors": 2},
                                            {"id": "ly-2", "vendor": "Acme", "model": "DC50", "firmware": "1.2.0",
                                             "connectors": 2}]}]}  # fmt: skip
    (d / "network.json").write_bytes(orjson.dumps(network))
    digests = usage_history("lyon", ["ly-1", "ly-2"], T0 - timedelta(days=14), 14 * 24, price=0.45)
    # a flaky stretch: 25 self-resolved disconnects on the day before the fault
    for h in range(25):
        at = T0 - timedelta(days=1) + timedelta(minutes=50 * h)
        digests.append(digest("lyon", at, [counters("ly-2", disconnects=1, self_resolved=1)], hours=0.5,
                              price=0.45, self_resolved=[blip("ly-2", at + timedelta(minutes=1))]))  # fmt: skip
    digests.append(
        digest("lyon", T0 + timedelta(hours=5), [counters("ly-1")], cleared=["inc-9"], price=0.45)
    )
    lines = [m.to_json() for m in digests] + [b'{"site_id": "lyon", "broken": true}']
    (d / "digests.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    escs = [
        escalation("lyon", "ly-1", incident_id="inc-9", started_at=T0, code="InternalError"),
        escalation("lyon", "ly-2", incident_id="inc-10", started_at=T0 + timedelta(hours=1),
                   code="ConnectorLockFailure", category="hardware", scope="connector", connector=2),
    ]  # fmt: skip
    (d / "escalations.jsonl").write_bytes(b"\n".join(e.to_json() for e in escs) + b"\n")


def config_file(
    path: Path, db_url: str, mqtt_url: str = "mqtt://127.0.0.1:1", extra: str = ""
) -> Path:
    path.write_text(
        f'[database]\nurl = "{db_url}"\n{extra}[mqtt]\nurl = "{mqtt_url}"\n'
        f'[api]\nlisten = "127.0.0.1:{free_port()}"\ntokens = [{{token = "{OPERATOR}", role = "operator"}}]\n'
    )
    return path


def test_importing_a_history_twice_stores_it_once_and_finds_its_issues(
    tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_history(tmp_path / "hist")
    cfg = config_file(tmp_path / "cloud.toml", fresh_db)
    args = argparse.Namespace(command="import", config=str(cfg), dir=str(tmp_path / "hist"))
    assert cloud_main(args) == 0
    first = capsys.readouterr().out
    assert "1 dead letters" in first and "0 already stored" in first
    assert cloud_main(args) == 0
    second = capsys.readouterr().out
    assert ": 0 new messages" in second
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT scope, status, resolution, kind, doc->>'recommended_action' FROM issues"
                            " ORDER BY scope").fetchall()  # fmt: skip
        site = conn.execute(
            "SELECT name, price_per_kwh FROM sites WHERE site_id = 'lyon'"
        ).fetchone()
        dead = conn.execute("SELECT topic FROM dead_letters").fetchall()
    assert rows == [
        ("charge_point", "resolved", "cleared", "fault", "field_technician"),
        ("connector", "open", None, "fault", "field_technician"),
        ("site", "open", None, "recurring", "network_fix"),
    ]
    assert site == ("Lyon Part-Dieu", 0.45)
    assert dead == [(f"import:digests.jsonl:{14 * 24 + 25 + 2}",)]


def test_an_import_stopped_after_storing_is_analysed_in_full_by_the_next_run(
    tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first run stored every line and stopped before its analysis (as if interrupted):
    # the second finds only duplicates, and still opens the issues the history holds
    write_history(tmp_path / "hist")
    cfg = config_file(tmp_path / "cloud.toml", fresh_db)
    args = argparse.Namespace(command="import", config=str(cfg), dir=str(tmp_path / "hist"))
    with pytest.MonkeyPatch.context() as mp:
        from chargesight.cloud import importer

        async def stopped(*a: object, **kw: object) -> set[str]:
            raise KeyboardInterrupt

        mp.setattr(importer.Engine, "apply_events", stopped)
        with pytest.raises(KeyboardInterrupt):
            cloud_main(args)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM escalations").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM issues").fetchone() == (0,)
    capsys.readouterr()
    assert cloud_main(args) == 0
    assert ": 0 new messages" in capsys.readouterr().out
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT scope, status FROM issues ORDER BY scope").fetchall()
    assert rows == [("charge_point", "resolved"), ("connector", "open"), ("site", "open")]


def test_a_line_the_database_refuses_is_a_dead_letter_and_the_rest_is_imported(
    tmp_path: Path, fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_history(tmp_path / "hist")
    path = tmp_path / "hist" / "escalations.jsonl"
    lines = path.read_bytes().splitlines()
    bad = escalation("lyon", "ly-1", incident_id="inc-nul", started_at=T0 + timedelta(hours=2))
    lines.append(bad.to_json().replace(b'"inc-nul"', b'"inc\\u0000nul"'))  # valid JSON, no text
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = config_file(tmp_path / "cloud.toml", fresh_db)
    args = argparse.Namespace(command="import", config=str(cfg), dir=str(tmp_path / "hist"))
    assert cloud_main(args) == 0
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM escalations").fetchone() == (2,)
        reasons = [r[0] for r in conn.execute("SELECT reason FROM dead_letters").fetchall()]
    # the reason says who refused it, as the collector's do (cloud/ingest.store_one_by_one)
    assert any(r.startswith("database refused it: DataError: ") for r in reasons), reasons


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cs-embedded-"))
    root.chmod(0o755)  # the server may run as the postgres system user
    try:
        yield root / "pg"
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"collector exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''!r}"
            )
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(url)


@pytest.mark.mqtt
@pytest.mark.slow
def test_cloud_run_on_an_embedded_database_serves_and_stops_cleanly(
    tmp_path: Path, pg_dir: Path, mosquitto: Mosquitto
) -> None:
    cfg_path = config_file(
        tmp_path / "cloud.toml", "embedded", mosquitto.url, extra=f'path = "{pg_dir}"\n'
    )
    port = cfg_path.read_text().split("127.0.0.1:")[-1].split('"')[0]
    proc = subprocess.Popen([sys.executable, "-m", "chargesight.cli.main", "cloud", "run", "--config", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})  # fmt: skip
    try:
        health = wait_http(f"http://127.0.0.1:{port}/api/v1/health", proc)
        assert health.status_code == 200  # the port opened only once the collector was ready
        pub = Publisher(mosquitto.url)
        pub.send(escalation("emb", "e-1"))
        pub.close()
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        deadline = time.monotonic() + 20
        issues: list[object] = []
        while not issues and time.monotonic() < deadline:
            issues = httpx.get(f"http://127.0.0.1:{port}/api/v1/issues", headers=headers).json()[
                "issues"
            ]
        assert len(issues) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not (pg_dir / "data" / "postmaster.pid").exists()  # the embedded server was stopped
    # no [mqtt] client_id in this config: the operator is told what that costs
    assert b"no [mqtt] client_id" in out + err
