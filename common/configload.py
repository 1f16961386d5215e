"""Load a TOML config file, apply ``CHARGESIGHT_<SECTION>__<KEY>`` overrides, validate it.

Both halves (edge and cloud) use this loader so installers meet one set of
rules (CONTRACT.md, "Configuration"):

* the file is TOML; unknown keys are an error, not ignored;
* every key can be overridden by ``CHARGESIGHT_<SECTION>__<KEY>`` (upper case),
  whose value is parsed as a TOML value (``30`` is an integer, ``"a"`` or a bare
  ``a`` a string);
* every problem is reported as a :class:`ConfigError` whose message names the
  key (``recovery.window_s``) and says what is wrong, so the CLI can print it
  and exit with status 2.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "CHARGESIGHT_"

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file or override is unusable; the message names the key."""


def parse_env_value(raw: str) -> Any:
    """Parse an override as a TOML value; fall back to the raw string for bare words."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return ``data`` with every ``CHARGESIGHT_<SECTION>__<KEY>`` variable applied.

    Nested keys use further ``__`` separators (``CHARGESIGHT_OCPP__TLS__CERTFILE``).
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"environment variable {name}: empty section or key name")
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"environment variable {name}: {'.'.join(path[:-1])} is not a section"
                )
            node = child
        node[path[-1]] = parse_env_value(raw)
    return out


def format_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's error list into lines an installer can act on."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are not ignored)"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if "input" in err and kind not in ("model_type", "dict_type"):
                msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{key}: {msg}")
    return "\n".join(lines)


def load_config(model: type[M], path: str | Path, environ: Mapping[str, str] | None = None) -> M:
    """Read ``path``, apply environment overrides and validate against ``model``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text: {exc.reason}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    return validate_config(model, data, environ, source=str(p))


def validate_config(
    model: type[M],
    data: dict[str, Any],
    environ: Mapping[str, str] | None = None,
    source: str = "config",
) -> M:
    """Validate an already-parsed mapping (with overrides) against ``model``."""
    merged = apply_env_overrides(data, environ)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{format_validation_error(exc)}") from exc


# ---------------------------------------------------------------- shared config pieces


class Section(BaseModel):
    """A config table: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:9000``); raise ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:9000")
    try:
        port_no = int(port)
    except ValueError:
        raise ValueError(f"port {port!r} is not a number") from None
    if not 0 <= port_no <= 65535:
        raise ValueError(f"port {port_no} is out of range 0-65535")
    return host.strip("[]"), port_no


class MqttClientSection(Section):
    """``[mqtt]``: what both halves need to reach the broker."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    cafile: Path | None = None
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: int = Field(default=30, ge=5)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must be mqtt://HOST:PORT or mqtts://HOST:PORT")
        return v

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The URL's port, else MQTT's default (8883 with TLS, 1883 without)."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    def ssl_context(self) -> ssl.SSLContext | None:
        """For ``mqtts://``: verifying the broker against ``cafile`` (else the system's CAs)."""
        if not self.tls:
            return None
        return ssl.create_default_context(
            cafile=str(self.cafile) if self.cafile is not None else None
        )
