"""The msgspec digest records mirror the pydantic schema, and accept nothing pydantic refuses.

``cloud/fastdigest.py`` decodes digests on the ingest hot path; pydantic decides whatever it
refuses. These tests hold the two together: field for field (a field added to
``common/messages.py`` and not to the records fails here), and on thousands of mutated
payloads (whatever msgspec accepts, pydantic accepts with the same values)."""

from __future__ import annotations

import json
import random
import types
import typing
from datetime import datetime
from typing import Any

import msgspec
import orjson
import pytest
from pydantic import AwareDatetime, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from chargesight.cloud.fastdigest import (
    INT4_FIELDS,
    INT4_MAX,
    INT4_MIN,
    INT64_MAX,
    INT64_MIN,
    ChargerRecord,
    DigestRecord,
    SelfResolvedRecord,
    decode_digest,
)
from chargesight.cloud.ingest import DeadLetter, classify
from chargesight.common.messages import ChargerCounters, Digest, SelfResolved
from tests.cloud.helpers import T0, blip, counters, digest

PAIRS: list[tuple[type[BaseModel], type[msgspec.Struct]]] = [
    (Digest, DigestRecord),
    (ChargerCounters, ChargerRecord),
    (SelfResolved, SelfResolvedRecord),
]
RECORD_OF = dict(PAIRS)


# ------------------------------------------------------------------ the same fields


def _pydantic_type(annotation: Any, metadata: list[Any]) -> str:
    """A field's type in words both sides can be written in (constraints included)."""
    cons = []
    for m in metadata:
        for attr in ("min_length", "max_length", "pattern", "ge", "le", "gt", "lt"):
            v = getattr(m, attr, None)
            if v is not None:
                cons.append(f"{attr}={v}")
    return _ann(annotation) + (f"{{{','.join(sorted(cons))}}}" if cons else "")


def _ann(a: Any) -> str:
    origin = typing.get_origin(a)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(a)
        return _pydantic_type(base, list(meta))
    if origin in (types.UnionType, typing.Union):
        return "|".join(sorted(_ann(x) for x in typing.get_args(a)))
    if origin is list:
        return f"list[{_ann(typing.get_args(a)[0])}]"
    if origin is dict:
        k, v = typing.get_args(a)
        return f"dict[{_ann(k)},{_ann(v)}]"
    if origin is typing.Literal:
        return "literal" + repr(sorted(typing.get_args(a)))
    if a is AwareDatetime:
        return "datetime+tz"
    if isinstance(a, type) and issubclass(a, BaseModel):
        return f"record:{RECORD_OF[a].__name__}"
    if a is type(None):
        return "none"
    return {str: "str", int: "int", float: "float", bool: "bool"}[a]


def _msgspec_type(t: msgspec.inspect.Type, name: str) -> str:
    i = msgspec.inspect
    if isinstance(t, i.UnionType):
        return "|".join(sorted(_msgspec_type(x, name) for x in t.types))
    if isinstance(t, i.StrType):
        cons = []
        if t.min_length is not None:
            cons.append(f"min_length={t.min_length}")
        if t.max_length is not None:
            cons.append(f"max_length={t.max_length}")
        if t.pattern is not None:
            # \Z is what pydantic's $ means (Python's $ would also match before a newline)
            cons.append(f"pattern={t.pattern.replace(chr(92) + 'Z', '$')}")
        return "str" + (f"{{{','.join(sorted(cons))}}}" if cons else "")
    if isinstance(t, i.IntType):
        if (t.ge, t.le) == (INT4_MIN, INT4_MAX):
            assert name in INT4_FIELDS  # deliberate narrowing: the int columns ...
            return "int"
        if (t.ge, t.le) == (INT64_MIN, INT64_MAX):
            assert name == "faults_by_category"  # ... and the jsonb one orjson writes
            return "int"
        assert (t.ge, t.le, t.gt, t.lt) == (None,) * 4
        return "int"
    if isinstance(t, i.FloatType):
        return "float"
    if isinstance(t, i.NoneType):
        return "none"
    if isinstance(t, i.DateTimeType):
        assert t.tz is True
        return "datetime+tz"
    if isinstance(t, i.ListType):
        return f"list[{_msgspec_type(t.item_type, name)}]"
    if isinstance(t, i.DictType):
        return f"dict[{_msgspec_type(t.key_type, name)},{_msgspec_type(t.value_type, name)}]"
    if isinstance(t, i.LiteralType):
        return "literal" + repr(sorted(t.values))
    if isinstance(t, i.StructType):
        return f"record:{t.cls.__name__}"
    raise AssertionError(f"{name}: no translation for {t}")


def _default(f: FieldInfo) -> object:
    if f.is_required():
        return "required"
    if f.default_factory is not None:
        return ("factory", f.default_factory)
    return ("value", f.default)


@pytest.mark.parametrize(("model", "record"), PAIRS, ids=lambda x: x.__name__)
def test_each_record_has_its_models_fields_types_constraints_and_defaults(
    model: type[BaseModel], record: type[msgspec.Struct]
) -> None:
    # unknown fields are ignored by both (messages may grow: CONTRACT.md)
    assert model.model_config.get("extra") == "ignore"
    assert not record.__struct_config__.forbid_unknown_fields
    # no validators: they would run in pydantic and not in msgspec
    deco = model.__pydantic_decorators__
    assert not (deco.validators or deco.field_validators or deco.root_validators)
    assert not deco.model_validators
    info = msgspec.inspect.type_info(record)
    assert isinstance(info, msgspec.inspect.StructType)
    ours = {
        f.name: (
            _msgspec_type(f.type, f.name),
            "required"
            if f.required
            else ("factory", f.default_factory)
            if f.default_factory is not msgspec.NODEFAULT
            else ("value", f.default),
        )
        for f in info.fields
    }
    theirs = {
        name: (_pydantic_type(f.annotation, f.metadata), _default(f))
        for name, f in model.model_fields.items()
    }
    assert list(ours) == list(theirs)  # same names, same order
    assert ours == theirs


# ------------------------------------------------------------------ the same verdicts


def _plain(x: Any) -> Any:
    """Records and models as plain values, with each leaf's type (3 and 3.0 differ)."""
    if isinstance(x, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(x).items()}
    if isinstance(x, BaseModel):
        return {k: _plain(getattr(x, k)) for k in type(x).model_fields}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, datetime):
        # to the 10 µs: beyond 6 digits of a second msgspec rounds where pydantic truncates
        return ("datetime", round(x.timestamp(), 5), x.utcoffset())
    return (type(x).__name__, x)


def _rich() -> dict[str, Any]:
    full = counters(
        "cp-1",
        faults=2,
        faults_by_category={"power": 2},
        self_resolved=1,
        fixed_by={"soft_reset": 1},
        sessions_started=3,
        energy_wh=12_345.5,
        max_power_w=48_000.0,
        occupied_s=3000.0,
        max_temperature_c=61.5,
        mean_temperature_c=40.0,
        resets=1,
        health_score=72.0,
        connector_health={1: 72.0, 2: 99.0},
        anomaly_score=0.3,
        features={"power_ratio": 0.81, "temp_trend": 1.5},
    )
    b = blip("cp-1", T0).model_copy(update={"sessions_cut": 1, "energy_unmet_wh": 5000.0})
    d = digest("site-a", T0, [full, counters("cp-2")], self_resolved=[b], cleared=["inc-1"])
    out: dict[str, Any] = orjson.loads(d.to_json())
    return out


ODD: list[Any] = [
    None, 0, -1, 1, 3.0, 3.5, -0.0, 1e308, 2**31, -(2**31) - 1, 2**63, 2**64, 10**30, True, False,
    "", "3", "3.5", "x", "x" * 70, "site-a\n", "Site-A", "site a", "connector", "charge_point",
    "bogus", [], [1], {}, {"a": 1}, {"1": 2.0}, {"01": 2.0}, {"-1": 2.0}, {"x": 1.0},
    {"1.0": 1.0}, {"a": "b"}, {"a": None}, "2026-01-05T00:00:00", "2026-01-05T00:00:00Z",
    "2026-01-05T00:00:00+01:00", "2026-01-05 00:00:00Z", "2026-01-05t00:00:00z",
    "2026-01-05T00:00:00.1234567Z", "2026-01-05T24:00:00Z", "2026-01-05T00:00:60Z",
    "2026-01-05T00:00:00+24:00", "2026-02-30T00:00:00Z", "2026-01-05", "20260105T000000Z",
    "2026-01-05T00:00Z", "1767225600", 1767225600, "+002026-01-05T00:00:00Z",
    "2026-01-05T00:00:00-00:00", "2026-01-05T00:00:00.5+05:30",
]  # fmt: skip


def _mutate(doc: Any, rng: random.Random) -> Any:
    """One random change somewhere in the document: a value replaced, a key dropped or added."""
    if isinstance(doc, list) and doc:
        i = rng.randrange(len(doc))
        doc[i] = _mutate(doc[i], rng) if rng.random() < 0.7 else rng.choice(ODD)
        return doc
    if isinstance(doc, dict) and doc:
        key = rng.choice(list(doc))
        r = rng.random()
        if r < 0.1:
            del doc[key]
        elif r < 0.15:
            doc[rng.choice(["extra", "1", "01", "-1"])] = rng.choice(ODD)
        elif r < 0.55 and isinstance(doc[key], dict | list):
            doc[key] = _mutate(doc[key], rng)
        else:
            doc[key] = rng.choice(ODD)
        return doc
    return rng.choice(ODD)


def test_whatever_msgspec_accepts_pydantic_accepts_with_the_same_values() -> None:
    rng = random.Random(20261125)
    base = _rich()
    both = slow_only = neither = 0
    for _ in range(6000):
        doc = orjson.loads(orjson.dumps(base))
        for _ in range(rng.choice([1, 1, 2, 3])):
            doc = _mutate(doc, rng)
        try:
            raw = orjson.dumps(doc)
        except TypeError:  # an int beyond 64 bits, which orjson does not write
            raw = json.dumps(doc).encode()
        fast = decode_digest(raw)
        try:
            slow: Digest | None = Digest.model_validate_json(raw)
        except ValidationError:
            slow = None
        if fast is not None:
            assert slow is not None, raw
            a, b = _plain(fast), _plain(slow)
            for generated in ("message_id", "sent_at"):  # absent: each side made its own
                if not isinstance(doc, dict) or generated not in doc:
                    a[generated] = b[generated] = None
            assert a == b, raw
            both += 1
        elif slow is not None:
            slow_only += 1  # pydantic's lax coercions: it decides, as in ingest
        else:
            neither += 1
    # the mutations reach both verdicts and the lax cases where pydantic alone accepts
    assert both > 300 and slow_only > 100 and neither > 2000, (both, slow_only, neither)


def test_a_counter_beyond_64_bits_is_refused_by_msgspec_and_dead_lettered_by_ingest() -> None:
    doc = _rich()
    for value in ("18446744073709551616", "100000000000000000000000000000"):
        raw = orjson.dumps(doc).replace(b'"resets":1', b'"resets":' + value.encode())
        assert decode_digest(raw) is None
        # pydantic takes it; the collector then refuses it as out of range (int columns)
        res = classify("chargesight/v1/sites/site-a/digests", raw)
        assert isinstance(res, DeadLetter)
        assert res.reason == f"chargers[cp-1].resets: {value} is out of range (int32)"


def test_ingest_takes_the_msgspec_record_and_falls_back_to_pydantics_lax_reading() -> None:
    doc = _rich()
    strict = classify("chargesight/v1/sites/site-a/digests", orjson.dumps(doc))
    assert isinstance(strict, DigestRecord)
    doc["chargers"][1]["connectors"] = "2"  # a string pydantic reads as 2, msgspec refuses
    lax = classify("chargesight/v1/sites/site-a/digests", orjson.dumps(doc))
    assert isinstance(lax, Digest)
    assert lax.chargers[1].connectors == 2
    doc["chargers"][1]["connectors"] = "two"
    bad = classify("chargesight/v1/sites/site-a/digests", orjson.dumps(doc))
    assert isinstance(bad, DeadLetter)
    assert bad.reason.startswith("schema validation failed: chargers.1.connectors")


@pytest.mark.parametrize(
    "bad",
    [b'"\xff"', b'"\xc3"', b'"\xed\xa0\x80"', b'"caf\xe9"'],
    ids=["ff", "truncated", "surrogate", "latin-1"],
)
def test_invalid_utf8_in_a_digest_is_a_dead_letter_not_an_exception(bad: bytes) -> None:
    doc = orjson.dumps(_rich())
    for raw in (
        doc.replace(b'"EUR"', bad),  # in a value
        doc.replace(b'"power"', bad),  # in a key
    ):
        assert decode_digest(raw) is None
        res = classify("chargesight/v1/sites/site-a/digests", raw)
        assert isinstance(res, DeadLetter)
        assert res.reason.startswith("schema validation failed")


def test_a_count_by_category_beyond_64_bits_is_a_dead_letter_saying_so() -> None:
    raw = orjson.dumps(_rich()).replace(b'"power":2', b'"power":' + str(2**64).encode())
    res = classify("chargesight/v1/sites/site-a/digests", raw)
    assert isinstance(res, DeadLetter)
    assert res.reason == (
        f"chargers[cp-1].faults_by_category.power: {2**64} is out of range (64-bit)"
    )
