"""Bad input on the command line: a clear message and a usage exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargesight.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def said(res: subprocess.CompletedProcess[str]) -> str:
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    return out


def test_publish_models_with_a_missing_or_broken_key_says_which_and_exits_2(
    tmp_path: Path,
) -> None:
    missing = cli("cloud", "publish-models", "--models", str(tmp_path), "--mqtt",
                  "mqtt://127.0.0.1:1", "--key", str(tmp_path / "nope.pem"))  # fmt: skip
    assert missing.returncode == 2
    assert f"--key {tmp_path / 'nope.pem'}: no such file" in said(missing)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a key\n")
    bad = cli("cloud", "publish-models", "--models", str(tmp_path), "--mqtt",
              "mqtt://127.0.0.1:1", "--key", str(broken))  # fmt: skip
    assert bad.returncode == 2
    assert f"--key {broken}:" in said(bad)


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_bytes(b'[site]\nid = "caf\xe9"\n')
    res = cli("edge", "check", "--config", str(cfg))
    assert res.returncode == 2
    assert "is not UTF-8 text" in said(res)


def test_edge_status_with_an_unreadable_status_file_says_so(tmp_path: Path) -> None:
    storage = tmp_path / "edge.sqlite"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        '[site]\nid = "s"\n[ocpp]\nlisten = "127.0.0.1:9000"\n'
        'upstream = "ws://127.0.0.1:1/{charge_point_id}"\n'
        f'[storage]\npath = "{storage}"\n'
    )
    (tmp_path / "edge.sqlite.status.json").mkdir()  # a directory where the file should be
    res = cli("edge", "status", "--config", str(cfg))
    assert res.returncode == 1
    assert "cannot be read" in said(res)


def test_demo_with_an_unknown_scenario_names_the_bundled_ones() -> None:
    res = cli("demo", "--scenario", "nosuch.toml", "--quiet")
    assert res.returncode == 2
    out = said(res)
    assert "nosuch.toml" in out and "bundled: demo, small" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--days", "inf"), "must be a finite number above 0"),
        (("--days", "nan"), "must be a finite number above 0"),
        (("--days", "1", "--start", "2026-13-01"), "is not an RFC 3339 time"),
    ],
)
def test_sim_history_arguments_are_checked_naming_the_flag(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    res = cli("sim", "history", "--scenario", "small", "--out", str(tmp_path / "h"), *args)
    assert res.returncode == 2
    assert words in said(res)


def test_a_scenario_number_that_is_not_finite_is_refused(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "sim" / "scenarios" / "small.toml").read_text()
    assert "sessions_per_connector_day" in text
    lines = [
        "sessions_per_connector_day = inf" if ln.startswith("sessions_per_connector_day") else ln
        for ln in text.splitlines()
    ]
    bad = tmp_path / "inf.toml"
    bad.write_text("\n".join(lines) + "\n")
    res = cli("sim", "check", "--scenario", str(bad))
    assert res.returncode == 2
    assert "sessions_per_connector_day" in said(res)


def test_cloud_import_of_a_directory_without_a_history_says_so_before_opening_a_database(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[database]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n')
    missing = cli("cloud", "import", "--config", str(cfg), "--dir", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "not a directory" in said(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("cloud", "import", "--config", str(cfg), "--dir", str(empty))
    assert res.returncode == 2
    assert "neither digests.jsonl nor escalations.jsonl" in said(res)
