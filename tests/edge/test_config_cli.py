"""Edge configuration and the command line: errors name the key, exit codes follow CONTRACT.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargesight.common.configload import ConfigError, load_config
from chargesight.edge.config import EdgeConfig
from tests.servers import free_port, wait_port

GOOD = """
[site]
id = "berlin-mitte"
currency = "EUR"
price_per_kwh = 0.59

[ocpp]
listen = "127.0.0.1:{port}"
upstream = "ws://127.0.0.1:{csms_port}/steve/websocket/CentralSystemService/{{charge_point_id}}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"

[storage]
path = "{tmp}/edge.sqlite"

[recovery]
window_s = 600
digest_interval_s = 3600
max_resets_per_day = 6
"""


def write(tmp_path: Path, text: str | None = None, **fmt: object) -> Path:
    values: dict[str, object] = {
        "port": 9000,
        "csms_port": 8180,
        "mqtt_port": 1883,
        "tmp": tmp_path,
    }
    values.update(fmt)
    p = tmp_path / "edge.toml"
    p.write_text((text or GOOD).format(**values))
    return p


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargesight.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_good_config_loads_with_contract_keys(tmp_path: Path) -> None:
    cfg = load_config(EdgeConfig, write(tmp_path), environ={})
    assert cfg.site.id == "berlin-mitte"
    assert cfg.recovery.window_s == 600
    assert cfg.ocpp.offline == "serve"


def test_environment_overrides_are_parsed_as_toml_values(tmp_path: Path) -> None:
    cfg = load_config(
        EdgeConfig,
        write(tmp_path),
        environ={
            "CHARGESIGHT_RECOVERY__WINDOW_S": "30",
            "CHARGESIGHT_SITE__ID": "hamburg",
            "CHARGESIGHT_OCPP__OFFLINE": '"disconnect"',
        },
    )
    assert cfg.recovery.window_s == 30
    assert cfg.site.id == "hamburg"
    assert cfg.ocpp.offline == "disconnect"


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        (("window_s = 600", "window_s = 5"), "recovery.window_s", "greater than or equal to 20"),
        (("window_s = 600", "window_s = 600\nwindow = 3"), "recovery.window", "unknown key"),
        (('id = "berlin-mitte"', 'id = "Berlin Mitte"'), "site.id", "[a-z0-9-]"),
        (
            ("max_resets_per_day = 6", 'max_resets_per_day = "six"'),
            "recovery.max_resets_per_day",
            "integer",
        ),
        (("{{charge_point_id}}", "x"), "ocpp.upstream", "{charge_point_id}"),
        (
            (
                "max_resets_per_day = 6",
                'max_resets_per_day = 6\n[foresight]\npublic_key = "bm90IGEga2V5"',
            ),
            "foresight.public_key",
            "not an Ed25519 public key",
        ),
    ],
)
def test_bad_config_is_rejected_naming_the_key(
    tmp_path: Path, patch: tuple[str, str], key: str, words: str
) -> None:
    p = write(tmp_path, GOOD.replace(*patch))
    with pytest.raises(ConfigError) as info:
        load_config(EdgeConfig, p, environ={})
    assert key in str(info.value)
    assert words in str(info.value)


def test_cli_exits_2_with_the_key_for_a_broken_config(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace("window_s = 600", "window_s = -1"))
    res = cli("edge", "check", "--config", str(p))
    assert res.returncode == 2
    assert "recovery.window_s" in res.stderr


def test_cli_exits_2_for_a_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    res = cli("edge", "run", "--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 2
    assert "does not exist" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nid=")
    res = cli("edge", "run", "--config", str(bad))
    assert res.returncode == 2
    assert "not valid TOML" in res.stderr


def test_cli_exits_2_for_bad_usage() -> None:
    assert cli("edge", "fly").returncode == 2


def test_edge_check_says_what_is_unreachable(tmp_path: Path) -> None:
    p = write(tmp_path, port=free_port(), csms_port=free_port(), mqtt_port=free_port())
    res = cli("edge", "check", "--config", str(p))
    assert res.returncode == 1
    assert "cannot reach the CSMS" in res.stdout
    assert "cannot reach the broker" in res.stdout
    assert "storage" in res.stdout and "writable" in res.stdout


def test_edge_check_warns_that_a_site_without_a_price_has_no_revenue_figures(
    tmp_path: Path,
) -> None:
    p = write(tmp_path, GOOD.replace("price_per_kwh = 0.59\n", ""), port=free_port(),
              csms_port=free_port(), mqtt_port=free_port())  # fmt: skip
    res = cli("edge", "check", "--config", str(p))
    assert "warn  site.price_per_kwh is 0" in res.stdout
    priced = cli("edge", "check", "--config", str(write(tmp_path, port=free_port())))
    assert "price_per_kwh" not in priced.stdout


def test_edge_check_warns_that_configuration_keys_do_nothing_without_the_request_kind(
    tmp_path: Path,
) -> None:
    listed = GOOD + '\n[uplink]\nconfiguration_keys = ["HeartbeatInterval"]\n'
    res = cli("edge", "check", "--config", str(write(tmp_path, listed, port=free_port())))
    assert "cannot change any charger setting" in res.stdout
    allowed = listed.replace(
        "[uplink]\n", '[uplink]\nallowed_requests = ["status", "configuration_change"]\n'
    )
    res = cli("edge", "check", "--config", str(write(tmp_path, allowed, port=free_port())))
    assert "charger setting" not in res.stdout


def test_edge_config_allows_no_configuration_change_unless_asked() -> None:
    from chargesight.edge.config import UplinkSection

    assert "configuration_change" not in UplinkSection().allowed_requests
    with pytest.raises(ValueError, match="allowed_requests"):
        UplinkSection.model_validate({"allowed_requests": ["reboot_everything"]})


def test_edge_check_passes_when_csms_and_broker_answer(tmp_path: Path, mosquitto: object) -> None:
    from tests.servers import Mosquitto

    assert isinstance(mosquitto, Mosquitto)
    csms_port = free_port()
    csms = subprocess.Popen(
        [sys.executable, "-m", "tests.peers", str(csms_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(csms_port, proc=csms)
        p = write(tmp_path, port=free_port(), csms_port=csms_port, mqtt_port=mosquitto.port)
        res = cli("edge", "check", "--config", str(p))
        assert res.returncode == 0, res.stdout
        assert "speaks ocpp1.6" in res.stdout
        assert "all checks passed" in res.stdout
    finally:
        csms.terminate()
        csms.wait(10)


def test_edge_run_opens_its_port_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    p = write(tmp_path, port=port, csms_port=free_port(), mqtt_port=free_port())
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargesight.cli.main", "edge", "run", "--config", str(p)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc=proc)
        deadline = time.monotonic() + 10
        status_file = tmp_path / "edge.sqlite.status.json"
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        res = cli("edge", "status", "--config", str(p))
        assert res.returncode == 0, res.stdout
        assert "agent running" in res.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = cli("edge", "status", "--config", str(p))
    assert "NOT running" in res.stdout


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "edge.example.toml"
    cfg = load_config(EdgeConfig, example, environ={})
    assert cfg.site.id == "berlin-mitte"
    assert cfg.mqtt.url.startswith("mqtts://")


def test_edge_status_says_what_the_agent_is_doing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import orjson

    from chargesight.edge.agent import status_path
    from chargesight.edge.status import status

    cfg = load_config(EdgeConfig, write(tmp_path), environ={})
    status_path(cfg).write_bytes(
        orjson.dumps(
            {
                "site_id": "berlin-mitte",
                "pid": 1,
                "running": True,
                "updated_at": time.time(),
                "ocpp": {
                    "listen": "127.0.0.1:9000",
                    "connected": [
                        {"charge_point_id": "CP-1", "ocpp": "1.6", "upstream_connected": False}
                    ],
                },
                "recovery": {
                    "open_incidents": [
                        {
                            "charge_point_id": "CP-1",
                            "connector_id": 2,
                            "fault": {"code": "ConnectorLockFailure", "category": "connector_lock"},
                            "started_at": "2026-11-24T10:00:00Z",
                            "outcome": "running",
                            "window_left_s": 412.0,
                            "steps": [{"action": "unlock", "result": "rejected"}],
                        }
                    ],
                    "recent_actions": [
                        {
                            "at": "2026-11-24T10:00:05Z",
                            "charge_point_id": "CP-1",
                            "action": "unlock",
                            "result": "rejected",
                        }
                    ],
                },
                "uplink": {
                    "connected": False,
                    "broker": "127.0.0.1:1883",
                    "protocol": "5",
                    "queued": 3,
                    "delivered": 0,
                    "last_error": "connection refused",
                    "alarms": [],
                },
                "offline": {"mode": "serve", "queued": 7, "parked": 0, "alarms": []},
                "held_uncommitted": 2,
            }
        )
    )
    assert status(cfg) == 0
    out = capsys.readouterr().out
    assert "CP-1" in out and "CSMS UNREACHABLE" in out
    assert "CP-1 connector 2: ConnectorLockFailure" in out
    assert "unlock→rejected" in out
    assert "uplink: NOT connected" in out and "3 queued" in out and "connection refused" in out
    assert "7 messages queued for the CSMS" in out
    assert "ALARM 2 message(s) held in memory: the outbox cannot commit (disk full?)" in out
