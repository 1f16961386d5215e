"""Digests decoded by msgspec on the ingest hot path, into structs that mirror the schema.

Digests are 99 % of what the collector receives. Validating a 10-charger digest with
pydantic costs ~30 µs on its own, ~75 µs on a loaded 2-core machine, and leaves some 40
objects per message for the cyclic GC to scan; msgspec decodes and validates the same JSON
in ~7 µs into structs the GC never tracks. With it the collector's CPU per digest fell from
~150 to ~65 µs (``bench/cloud.py``).

The schema is still ``common/messages.py``'s. The structs below repeat ``Digest``,
``ChargerCounters`` and ``SelfResolved`` field for field — names, types, constraints and
defaults — and ``tests/cloud/test_fastdigest.py`` compares them with the pydantic models, so
a field added there and not here fails the tests. msgspec is the stricter of the two (no lax
coercion such as ``"3"`` → 3 or ``3.0`` → 3), so :func:`decode_digest` returns ``None`` for
anything it refuses and the caller validates that payload with pydantic, whose verdict (and
dead-letter reason) stands: a digest is accepted exactly when pydantic accepts it, with the
same values (the same test fuzzes payloads to check that) — but for time stamps with more
than six digits of a second, which msgspec rounds to the microsecond and pydantic truncates.
Counters beyond the int columns (int32) are refused too: a binary COPY would wrap them.

The store path reads both kinds alike (attribute for attribute); the analysis gets a
``DigestSummary`` of each (cloud/ingest.py), never the records.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from chargesight.common.messages import SCHEMA_VERSION, Digest, new_message_id, utcnow

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# \Z, not $: Python's ``$`` also matches before a final newline, pydantic's (Rust) does not
SiteId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,64}\Z")]
MessageId = Annotated[str, msgspec.Meta(min_length=8, max_length=64)]
Scope = Literal["connector", "charge_point", "site"]
# the counters go to int columns by binary COPY, which would wrap a larger value silently:
# msgspec refuses one outside int4, and ``ingest.classify`` makes a digest pydantic accepted
# with one a dead letter (``out_of_range``); the same for counts by fault category and 64 bits
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
# a count by fault category goes to a jsonb column through orjson, which writes 64-bit ints
# (and msgspec bounds no further than int64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Int4 = Annotated[int, msgspec.Meta(ge=INT4_MIN, le=INT4_MAX)]


# gc=False: decoded from JSON, a record can hold no reference cycle, so the cyclic GC need not
# track it (a batch of 1,000 digests would otherwise add ~11,000 objects to every young scan)
class ChargerRecord(msgspec.Struct, kw_only=True, gc=False):
    """``ChargerCounters``."""

    charge_point_id: str
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    connectors: Int4 | None = None
    connected_s: float = 0.0
    disconnects: Int4 = 0
    faults: Int4 = 0
    faults_by_category: dict[str, Int64] = msgspec.field(default_factory=dict)
    self_resolved: Int4 = 0
    fixed_by: dict[str, int] = msgspec.field(default_factory=dict)
    sessions_started: Int4 = 0
    sessions_failed: Int4 = 0
    sessions_ended_early: Int4 = 0
    energy_wh: float = 0.0
    max_power_w: float | None = None
    occupied_s: float | None = None
    rated_power_w: float | None = None
    max_temperature_c: float | None = None
    mean_temperature_c: float | None = None
    resets: Int4 = 0
    health_score: float | None = None
    connector_health: dict[int, float] | None = None
    anomaly_score: float | None = None
    features: dict[str, float] = msgspec.field(default_factory=dict)


class SelfResolvedRecord(msgspec.Struct, kw_only=True, gc=False):
    """``SelfResolved``."""

    incident_id: str
    charge_point_id: str | None
    connector_id: int | None
    scope: Scope
    kind: str
    fault_code: str
    category: str
    started_at: UtcDatetime
    ended_at: UtcDatetime
    fixed_by: str
    vendor_code: str | None = None
    sessions_cut: int | None = None
    energy_unmet_wh: float | None = None


class DigestRecord(msgspec.Struct, kw_only=True, gc=False):
    """``Digest`` (with ``EdgeMessage``'s fields first)."""

    schema_version: int = SCHEMA_VERSION
    message_id: MessageId = msgspec.field(default_factory=new_message_id)
    site_id: SiteId
    sent_at: UtcDatetime = msgspec.field(default_factory=utcnow)
    interval_start: UtcDatetime
    interval_end: UtcDatetime
    currency: str | None = None
    price_per_kwh: float | None = None
    chargers: list[ChargerRecord] = msgspec.field(default_factory=list)
    self_resolved: list[SelfResolvedRecord] = msgspec.field(default_factory=list)
    cleared_incidents: list[str] = msgspec.field(default_factory=list)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


_decoder = msgspec.json.Decoder(DigestRecord)


def decode_digest(payload: bytes) -> DigestRecord | None:
    """The digest in ``payload``, or None when msgspec refuses it (pydantic then decides)."""
    try:
        return _decoder.decode(payload)
    except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8 in a string
        return None


INT4_FIELDS = tuple(
    name for name, hint in ChargerRecord.__annotations__.items() if hint in ("Int4", "Int4 | None")
)


def out_of_range(digest: Digest) -> str | None:
    """Why a digest pydantic accepted cannot be stored (a counter beyond the int columns, or
    a count by fault category beyond what the jsonb column's encoder writes), or None. Only
    digests msgspec refused get here (its records are bounded alike), so this costs nothing
    on the hot path."""
    for c in digest.chargers:
        for name in INT4_FIELDS:
            v = getattr(c, name)
            if v is not None and not INT4_MIN <= v <= INT4_MAX:
                return f"chargers[{c.charge_point_id}].{name}: {v} is out of range (int32)"
        for cat, n in c.faults_by_category.items():
            if not INT64_MIN <= n <= INT64_MAX:
                return (
                    f"chargers[{c.charge_point_id}].faults_by_category.{cat}: {n} is out of"
                    " range (64-bit)"
                )
    return None
