"""The cloud config: unknown keys, missing values and bad tokens are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from chargesight.cli.main import main as cli_main
from chargesight.cloud.config import CloudConfig, load_cloud_config
from chargesight.common.configload import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cloud.toml"
    p.write_text(text)
    return p


GOOD = """
[database]
url = "postgresql://postgres@127.0.0.1:5432/postgres"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[api]
listen = "127.0.0.1:8080"
tokens = [{token = "operator-secret", role = "operator"}]
"""


def test_a_good_config_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_cloud_config(write(tmp_path, GOOD))
    assert cfg.analysis.recurring_min_incidents == 20
    assert cfg.analysis.recurring_window_s == 604_800
    assert cfg.api.all_tokens()["operator-secret"].role == "operator"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GOOD + "[analysis]\nrecuring_min_incidents = 3\n", "analysis.recuring_min_incidents"),
        (GOOD.replace('role = "operator"', 'role = "admin"'), "api.tokens.0.role"),
        (GOOD.replace("postgresql://", "mysql://"), "database.url"),
        ('[database]\nurl = "embedded"\n', "database"),
        (GOOD.replace("127.0.0.1:8080", "nowhere"), "api.listen"),
        (GOOD + "[train]\nmin_failure = 3\n", "train"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_cloud_config(write(tmp_path, text))
    assert key in str(exc.value)


def test_the_same_file_carries_the_training_settings_for_cloud_train(tmp_path: Path) -> None:
    from chargesight.cloud.train import load_train_config

    path = write(tmp_path, GOOD + "[train]\nmin_failures = 3\nhorizon_days = 7\n")
    assert load_cloud_config(path).train == {"min_failures": 3, "horizon_days": 7}
    assert load_train_config(path).min_failures == 3  # what `cloud train --config` reads


def test_environment_overrides_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGESIGHT_ANALYSIS__RECURRING_MIN_INCIDENTS", "7")
    assert load_cloud_config(write(tmp_path, GOOD)).analysis.recurring_min_incidents == 7


def test_tokens_file_adds_tokens_and_a_broken_one_is_a_config_error(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\ntoken = "viewer-secret"\nrole = "viewer"\n')
    cfg = load_cloud_config(write(tmp_path, GOOD + f'tokens_file = "{tokens}"\n'))
    assert cfg.api.all_tokens()["viewer-secret"].role == "viewer"
    tokens.write_text('[[tokens]]\ntoken = "short"\nrole = "viewer"\n')
    with pytest.raises(ConfigError, match=r"api\.tokens_file"):
        load_cloud_config(write(tmp_path, GOOD + f'tokens_file = "{tokens}"\n'))


def test_cloud_run_with_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + "[api2]\n")
    assert cli_main(["cloud", "run", "--config", str(path)]) == 2
    assert "api2" in capsys.readouterr().err


def test_shipped_example_config_is_valid_and_keeps_a_broker_session() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "cloud.example.toml"
    cfg = load_config(CloudConfig, example, environ={})
    # without a client_id the broker keeps no session: what agents publish while the
    # collector is down would be lost
    assert cfg.mqtt.client_id
    assert cfg.mqtt.shared_group is not None
