"""Issue 7 through the real agent: a gateway warmed with its site's past digests flags a
degrading PSU as a predictive incident on MQTT, and its digests carry health and anomaly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from chargesight.common.messages import Digest, digests_topic, escalations_topic
from chargesight.edge.agent import Agent
from chargesight.sim import generate_history, load_scenario
from tests.edge.conftest import edge_config
from tests.edge.uplink_support import Observer
from tests.servers import Mosquitto

SITE = "hamburg-hafen"  # two Voltix DC150 units whose PSUs degrade from hour 24 (small.toml)


def site_digests(history: Path, out: Path) -> Path:
    with (history / "digests.jsonl").open("rb") as src, out.open("wb") as dst:
        for line in src:
            if orjson.loads(line)["site_id"] == SITE:
                dst.write(line)
    return out


async def test_warmed_gateway_escalates_degrading_psu_before_it_fails(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    start = datetime(2026, 9, 1, tzinfo=UTC)
    generate_history(load_scenario("small"), 15, tmp_path / "history", start=start)
    warm = site_digests(tmp_path / "history", tmp_path / "site.jsonl")
    observer = await Observer(
        mosquitto.port, [escalations_topic(SITE), digests_topic(SITE)]
    ).start()
    config = edge_config(
        tmp_path,
        "ws://127.0.0.1:1/csms/{charge_point_id}",
        site={"id": SITE},
        mqtt={"url": mosquitto.url},
        foresight={"warm_from": str(warm)},
    )
    agent = Agent(config)
    await agent.start()
    try:
        await observer.wait_for(
            lambda o: any(p.get("kind") == "predictive" for p in o.payloads("/escalations"))
        )
        predictive = [p for p in observer.payloads("/escalations") if p["kind"] == "predictive"]
        flagged = {p["charge_point_id"] for p in predictive}
        assert flagged <= {"hamburg-hafen-01", "hamburg-hafen-02", "hamburg-hafen-03"}
        assert flagged & {"hamburg-hafen-01", "hamburg-hafen-02"}
        first = predictive[0]
        assert first["explanation"], "a predictive incident says why, in words"
        assert first["features"]
        # flagged inside the history, before the PSU fails (480 h after onset)
        started = datetime.fromisoformat(first["started_at"].replace("Z", "+00:00"))
        assert start + timedelta(hours=24) < started < start + timedelta(hours=24 + 480)
        # the next digest carries the health and anomaly scores of the flagged unit
        assert agent.monitor is not None
        cp = first["charge_point_id"]
        digest = Digest(
            site_id=SITE,
            interval_start=started,
            interval_end=started + timedelta(hours=1),
            chargers=[{"charge_point_id": cp}],  # type: ignore[list-item]
        )
        # through the agent's outbox and uplink to the broker, as its digest loop publishes
        await agent.publish_digest(digest)
        await observer.wait_for(
            lambda o: any(p["message_id"] == digest.message_id for p in o.payloads("/digests"))
        )
        (sent,) = [p for p in observer.payloads("/digests") if p["message_id"] == digest.message_id]
        counters = Digest.model_validate(sent).chargers[0]
        assert counters.anomaly_score is not None
        assert counters.health_score is not None
        assert counters.health_score < 90
    finally:
        await agent.close()
        await observer.stop()
