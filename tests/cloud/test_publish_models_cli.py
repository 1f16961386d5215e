"""`chargesight cloud publish-models`: the shipped models, signed, land retained on the broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from chargesight.common.messages import ALL_MODELS, ModelUpdate
from chargesight.common.modelsign import generate_key, private_pem, verify_model
from tests.edge.uplink_support import Observer
from tests.servers import Mosquitto

MODELS = Path(__file__).resolve().parents[2] / "edge" / "models"


async def test_publish_models_signs_and_retains_every_shipped_model(
    tmp_path: Path, mosquitto_private: Mosquitto
) -> None:
    key = generate_key()
    key_file = tmp_path / "model-signing.pem"
    key_file.write_bytes(private_pem(key))
    res = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "chargesight.cli.main", "cloud", "publish-models",
            "--models", str(MODELS), "--mqtt", mosquitto_private.url, "--key", str(key_file),
        ],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    shipped = {p.name.removesuffix(".onnx") for p in MODELS.glob("*.onnx")}
    # a gateway that connects afterwards gets every model, retained, and can verify each one
    observer = await Observer(mosquitto_private.port, [ALL_MODELS]).start()
    try:
        await observer.wait_for(lambda o: len(o.messages) >= len(shipped))
    finally:
        await observer.stop()
    updates = [ModelUpdate.model_validate(p) for _t, p, retained in observer.messages if retained]
    assert {u.model_key for u in updates} == shipped
    for update in updates:
        verify_model(update, key.public_key())


def test_publish_models_reads_percent_encoded_broker_credentials_from_the_url() -> None:
    from chargesight.cloud.foresight import _client

    client, host, port = _client("mqtts://ops%40site:p%40ss%3Aw0rd@broker.example", "t")
    assert (client.username, client.password) == ("ops@site", "p@ss:w0rd")
    assert (host, port) == ("broker.example", 8883)
