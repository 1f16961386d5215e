"""The cloud collector's configuration model (CONTRACT.md, "Configuration").

Loaded with :func:`chargesight.common.configload.load_config`, so the same
rules hold as for the edge: TOML, ``CHARGESIGHT_<SECTION>__<KEY>`` overrides,
unknown keys are errors, and every problem names its key (:class:`ConfigError`).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from chargesight.common.configload import (
    ConfigError,
    MqttClientSection,
    Section,
    format_validation_error,
    load_config,
    parse_host_port,
)

Role = Literal["operator", "viewer"]


_Section = Section


class DatabaseSection(_Section):
    url: str = "embedded"  # a postgresql:// URL, or "embedded" for a private server under `path`
    path: Path | None = None  # data directory of the embedded server
    pool_min: int = Field(default=1, ge=1)
    pool_max: int = Field(default=8, ge=1)
    timescale: Literal["auto", "off"] = "auto"  # use TimescaleDB features when the extension exists
    retention_days: int = Field(default=800, ge=30)  # Timescale retention of raw charger intervals
    compress_after_days: int = Field(default=30, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v == "embedded":
            return v
        if urlsplit(v).scheme not in ("postgresql", "postgres"):
            raise ValueError('must be a postgresql:// URL or "embedded"')
        return v

    @model_validator(mode="after")
    def _embedded_needs_path(self) -> DatabaseSection:
        if self.url == "embedded" and self.path is None:
            raise ValueError('url = "embedded" needs `path` (the data directory)')
        if self.pool_max < self.pool_min:
            raise ValueError("pool_max must be >= pool_min")
        return self


class MqttSection(MqttClientSection):
    shared_group: str | None = "chargesight-collector"  # MQTT 5 $share group; None: plain

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("must be a non-empty name without '/', '+' or '#'")
        return v


class TokenEntry(_Section):
    token: str = Field(min_length=8)
    role: Role
    name: str | None = None


class ApiSection(_Section):
    listen: str = "127.0.0.1:8080"
    tokens: tuple[TokenEntry, ...] = ()
    tokens_file: Path | None = None  # TOML ([[tokens]] token=, role=) or JSON list

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v

    def all_tokens(self) -> dict[str, TokenEntry]:
        """Tokens from the config and from ``tokens_file``; raises ConfigError naming the key."""
        entries = list(self.tokens)
        if self.tokens_file is not None:
            entries.extend(load_tokens_file(self.tokens_file))
        return {e.token: e for e in entries}


def load_tokens_file(path: Path) -> list[TokenEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"api.tokens_file: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"api.tokens_file: {path} is not UTF-8 text: {exc.reason}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text).get("tokens", [])
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"api.tokens_file: {path} is not valid: {exc}") from exc
    if isinstance(raw, dict):
        raw = raw.get("tokens", [])
    if not isinstance(raw, list):
        raise ConfigError(f"api.tokens_file: {path} must hold a list of {{token, role}}")
    try:
        return [TokenEntry.model_validate(item) for item in raw]
    except ValidationError as exc:
        raise ConfigError(f"api.tokens_file: {format_validation_error(exc)}") from exc


class AnalysisSection(_Section):
    recurring_min_incidents: int = Field(default=20, ge=1)
    recurring_window_s: int = Field(default=604_800, ge=60)
    # > 0: a site must also have this many times the small incidents per charge point of the
    # fleet's upper-quartile site in the window (background noise many sites share is not a
    # site problem); 0: off
    recurring_min_ratio_to_fleet: float = Field(default=0.0, ge=0)
    # one charge point whose same fault (category, code, vendor code) cleared by itself or by a
    # reset this many times within repeat_window_s gets a charge-point issue of its own; it
    # clears after a whole repeat_window_s without the fault
    repeat_min_incidents: int = Field(default=4, ge=2)
    repeat_window_s: int = Field(default=1_209_600, ge=60)
    revenue_trailing_weeks: int = Field(default=4, ge=1, le=52)
    related_window_days: int = Field(default=90, ge=1)
    symptom_lookback_h: int = Field(default=72, ge=1)
    # new digests move an open issue's running revenue on; under a stream of digests it is
    # recomputed at most this often per issue (the issue's own escalations always recompute it)
    running_total_every_s: float = Field(default=10.0, ge=0)
    refresh_interval_s: float = Field(default=300.0, gt=0)  # re-enrich open issues


class IngestSection(_Section):
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_delay_s: float = Field(default=0.05, ge=0)
    queue_max: int = Field(default=20_000, ge=10)
    # 0: ingest in the collector process; N: N ingest processes, each with its own MQTT 5
    # session in the shared subscription (the broker splits the stream between them), the
    # collector process keeping analysis and the API
    workers: int = Field(default=0, ge=0, le=64)


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class CloudConfig(_Section):
    database: DatabaseSection = DatabaseSection(url="embedded", path=Path("cloud-data"))
    mqtt: MqttSection = MqttSection()
    api: ApiSection = ApiSection()
    analysis: AnalysisSection = AnalysisSection()
    ingest: IngestSection = IngestSection()
    logging: LoggingSection = LoggingSection()
    # ``chargesight cloud train --config``'s settings (cloud/train.py ``TrainConfig``), so one
    # file serves both commands; ``cloud run`` only checks the keys
    train: dict[str, float | int] = Field(default_factory=dict)

    @field_validator("train")
    @classmethod
    def _known_train_keys(cls, v: dict[str, float | int]) -> dict[str, float | int]:
        if v:
            from chargesight.cloud.train import TrainConfig  # numpy: only when there is one

            unknown = sorted(set(v) - set(TrainConfig.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        return v


def load_cloud_config(path: str | Path) -> CloudConfig:
    """Load and validate a cloud config file; raises ConfigError."""
    config = load_config(CloudConfig, path)
    config.api.all_tokens()  # a bad tokens_file is a config error at start, not at first request
    return config
