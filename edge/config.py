"""The edge agent's configuration model (CONTRACT.md, "Configuration").

Only shape and value checks live here; reaching the CSMS and the broker is
``chargesight edge check``'s job (:mod:`chargesight.edge.check`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from chargesight.common.configload import (
    MqttClientSection,
    Section,
    load_config,
    parse_host_port,
)
from chargesight.common.messages import RequestKind

SITE_ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")
SUBPROTOCOLS = ("ocpp1.6", "ocpp2.0.1", "ocpp2.1")


_Section = Section


class SiteSection(_Section):
    id: str
    currency: str = "EUR"
    price_per_kwh: float = Field(default=0.0, ge=0)
    name: str = ""

    @field_validator("id")
    @classmethod
    def _site_id(cls, v: str) -> str:
        if not SITE_ID_RE.match(v):
            raise ValueError("must match [a-z0-9-]{1,64}")
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", v):
            raise ValueError("must be an ISO 4217 code such as EUR")
        return v


class TlsServerSection(_Section):
    """TLS on the charge point side (security profiles 2 and 3)."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None  # set to require client certificates (profile 3)


class TlsClientSection(_Section):
    """TLS towards the CSMS (wss://): trust anchors and an optional client certificate."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    verify: bool = True


class BasicAuthSection(_Section):
    """HTTP Basic credentials the agent checks on the charge point side (profile 1).

    ``passwords`` maps charge point id to password. When empty, whatever
    credentials a charge point sends are passed through to the CSMS unchecked.
    """

    passwords: dict[str, str] = Field(default_factory=dict)


class OcppSection(_Section):
    listen: str = "0.0.0.0:9000"
    upstream: str
    offline: Literal["serve", "disconnect"] = "serve"
    subprotocols: tuple[str, ...] = SUBPROTOCOLS
    default_subprotocol: str | None = None  # for chargers that offer none (steve#1109)
    allowed_charge_points: tuple[str, ...] = ()  # empty: any valid id is accepted
    upstream_username: str | None = None  # credentials to use upstream instead of pass-through
    upstream_password: str | None = None
    basic_auth: BasicAuthSection | None = None
    tls: TlsServerSection | None = None
    upstream_tls: TlsClientSection | None = None
    compression: bool = False  # permessage-deflate roughly halves proxy throughput
    call_timeout_s: float = Field(default=30.0, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    max_frame_bytes: int = Field(default=1_048_576, ge=1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        parts = urlsplit(v.replace("{charge_point_id}", "cp"))
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("must be a ws:// or wss:// URL")
        if "{charge_point_id}" not in v:
            raise ValueError("must contain {charge_point_id} where the charge point id goes")
        return v

    @field_validator("subprotocols")
    @classmethod
    def _subprotocols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in SUBPROTOCOLS]
        if bad:
            raise ValueError(f"unsupported {bad}; choose from {list(SUBPROTOCOLS)}")
        if not v:
            raise ValueError("at least one subprotocol is needed")
        return v

    @model_validator(mode="after")
    def _checks(self) -> OcppSection:
        if (
            self.default_subprotocol is not None
            and self.default_subprotocol not in self.subprotocols
        ):
            raise ValueError(
                f"default_subprotocol {self.default_subprotocol!r} is not in subprotocols"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class MqttSection(MqttClientSection):
    max_inflight: int = Field(default=100, ge=1, le=65000)


class StorageSection(_Section):
    path: Path = Path("/var/lib/chargesight/edge.sqlite")
    ocpp_log_max_rows: int = Field(default=2_000_000, ge=1000)
    ocpp_log_max_age_s: int = Field(default=30 * 86400, ge=60)
    outbox_max_messages: int = Field(default=100_000, ge=10)


class RecoverySection(_Section):
    window_s: float = Field(default=600, ge=20)
    digest_interval_s: float = Field(default=3600, gt=0)
    max_resets_per_day: int = Field(default=6, ge=0)
    flap_period_s: float = Field(default=300, ge=0)
    heartbeat_grace: float = Field(default=2.5, ge=1)  # missed-heartbeat factor
    site_event_window_s: float = Field(default=10, ge=0)
    site_event_min_fraction: float = Field(default=0.5, gt=0, le=1)
    maintenance: tuple[str, ...] = ()
    profiles_dir: Path | None = None  # default: the packaged firmware-hooks/profiles
    hooks_dir: Path | None = None
    hook_timeout_s: float = Field(default=30, gt=0)


class OfflineSection(_Section):
    """Serving charge points while the CSMS is unreachable (``ocpp.offline = "serve"``)."""

    heartbeat_interval_s: int = Field(default=300, ge=10)
    auth_cache_ttl_s: float = Field(default=7 * 86400, gt=0)
    unknown_id_policy: Literal["accept", "reject", "limit"] = "limit"
    unknown_id_limit: int = Field(default=20, ge=0)  # with "limit": unknown ids accepted per outage
    queue_max_messages: int = Field(default=1_000_000, ge=100)  # ~9 weeks of a busy 100-CP site
    replay_timeout_s: float = Field(default=30, gt=0)
    replay_max_attempts: int = Field(default=5, ge=1)
    replay_backoff_s: float = Field(default=1.0, ge=0)


class UplinkSection(_Section):
    """What the cloud may ask this agent over ``.../requests`` (every request is audited)."""

    allowed_requests: tuple[RequestKind, ...] = (
        "status",
        "log_excerpt",
        "maintenance",
    )
    # with "configuration_change" allowed: the charger settings it may change (1.6 keys,
    # 2.0.1 variable names); empty: any
    configuration_keys: tuple[str, ...] = ()


class ForesightSection(_Section):
    """ONNX anomaly scoring at the edge and signed model updates from the cloud."""

    enabled: bool = True
    public_key: str | None = None  # Ed25519 (PEM, a path, or raw base64); none: updates refused
    models_dir: Path | None = None  # accepted updates; default: next to storage.path
    window_close_s: float = Field(default=3600, ge=1)  # features are hourly buckets
    # JSON lines of this site's past digests (e.g. exported from the cloud): scored hour by
    # hour at start, so a new gateway knows at once which units have been degrading.
    warm_from: Path | None = None

    @field_validator("public_key")
    @classmethod
    def _an_ed25519_key(cls, v: str | None) -> str | None:
        """A key that cannot be read is a config error at start, not a traceback."""
        if v:
            from chargesight.common.modelsign import ModelSignatureError, load_public_key

            try:
                load_public_key(v)
            except (ModelSignatureError, OSError) as exc:
                raise ValueError(str(exc)) from exc
        return v


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class EdgeConfig(_Section):
    site: SiteSection
    ocpp: OcppSection
    mqtt: MqttSection = MqttSection()
    storage: StorageSection = StorageSection()
    recovery: RecoverySection = RecoverySection()
    offline: OfflineSection = OfflineSection()
    uplink: UplinkSection = UplinkSection()
    foresight: ForesightSection = ForesightSection()
    logging: LoggingSection = LoggingSection()


def load_edge_config(path: str | Path) -> EdgeConfig:
    """Load and validate an edge config file; raises ConfigError."""
    return load_config(EdgeConfig, path)
