"""Messages may grow (CONTRACT.md): a field a newer agent adds is ignored by an older
collector, not a reason to refuse the message. Requests to an agent are commands: an unknown
field there is refused (it might restrict what is asked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from chargesight.cloud.fastdigest import DigestRecord
from chargesight.cloud.ingest import DeadLetter, classify, validate
from chargesight.common.messages import Escalation, Request, digests_topic, escalations_topic
from tests.cloud.helpers import T0, counters, digest, escalation


def grown(payload: bytes, **extra: object) -> bytes:
    doc = orjson.loads(payload)
    doc.update(extra)
    return orjson.dumps(doc)


def test_a_digest_with_fields_added_by_a_newer_agent_is_accepted_as_it_was() -> None:
    d = digest("grow", T0, [counters("grow-1", energy_wh=1234.0)])
    doc = orjson.loads(d.to_json())
    doc["chargers"][0]["battery_health"] = {"soh": 0.93}  # a new counter of a later version
    doc["weather"] = "rain"
    got = classify(digests_topic("grow"), orjson.dumps(doc))
    assert isinstance(got, DigestRecord)  # the fast path, not a fallback
    assert got.message_id == d.message_id
    assert got.chargers[0].energy_wh == 1234.0
    # what is known is still checked: a bad value next to the new field is refused
    doc["chargers"][0]["energy_wh"] = "lots"
    assert isinstance(classify(digests_topic("grow"), orjson.dumps(doc)), DeadLetter)


def test_an_escalation_with_a_new_field_is_accepted_and_the_field_dropped() -> None:
    e = escalation("grow", "grow-1")
    got = classify(escalations_topic("grow"), grown(e.to_json(), root_cause_hint="psu"))
    assert isinstance(got, Escalation)
    assert got == e
    assert "root_cause_hint" not in got.model_dump()


def test_a_request_with_a_field_an_older_agent_does_not_know_is_refused_not_run() -> None:
    req = Request(
        request_id="r-grow",
        site_id="grow",
        kind="status",
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )
    payload = grown(orjson.dumps(req.model_dump(mode="json")), dry_run=True)
    # a command: the new field might restrict it, so it is not run without it
    with pytest.raises(ValidationError, match="dry_run"):
        Request.model_validate_json(payload)


def test_a_newer_schema_version_is_a_dead_letter_for_the_collector_and_the_importer_alike() -> None:
    # one validation serves both: classify (MQTT) and cloud import (lines of a file)
    newer = grown(escalation("grow", "grow-1").to_json(), schema_version=99)
    for got in (
        classify(escalations_topic("grow"), newer),
        validate("escalations", newer, "import:escalations.jsonl:1"),
    ):
        assert isinstance(got, DeadLetter)
        assert got.reason == "unsupported schema_version 99"
