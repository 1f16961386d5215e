"""Ed25519 model signatures: what the cloud signs, the edge can verify — and nothing else."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chargesight.common.features import FEATURE_NAMES
from chargesight.common.messages import ModelUpdate
from chargesight.common.modelsign import (
    ModelSignatureError,
    generate_key,
    load_private_key,
    load_public_key,
    private_pem,
    public_pem,
    sign_model,
    verify_model,
)

ONNX = b"\x08\x07fake-onnx-bytes" * 10


def _signed() -> tuple[ModelUpdate, Ed25519PrivateKey]:
    key = generate_key()
    update = sign_model(
        ONNX,
        model_key="voltix-vx-dc150",
        version="20260901-abcd",
        feature_names=FEATURE_NAMES,
        threshold=0.4,
        key=key,
        card={"kind": "supervised"},
        created_at=datetime(2026, 9, 1, tzinfo=UTC),
    )
    return update, key


def test_a_signed_update_verifies_with_the_public_key_and_yields_the_onnx_bytes() -> None:
    update, key = _signed()
    pub = load_public_key(public_pem(key))
    assert verify_model(update, pub) == ONNX
    # and survives the trip through MQTT as JSON
    again = ModelUpdate.model_validate_json(update.model_dump_json())
    assert verify_model(again, pub) == ONNX


def test_changing_any_field_or_the_model_breaks_the_signature() -> None:
    update, key = _signed()
    pub = load_public_key(public_pem(key))
    tampered = [
        update.model_copy(update={"threshold": 0.9}),
        update.model_copy(update={"feature_names": list(reversed(FEATURE_NAMES))}),
        update.model_copy(update={"card": {"kind": "unsupervised"}}),
        update.model_copy(update={"onnx_b64": base64.b64encode(ONNX + b"x").decode()}),
    ]
    for bad in tampered:
        with pytest.raises(ModelSignatureError, match="does not verify"):
            verify_model(bad, pub)


def test_an_update_signed_by_another_key_or_unsigned_is_refused() -> None:
    update, _ = _signed()
    other = load_public_key(public_pem(generate_key()))
    with pytest.raises(ModelSignatureError, match="does not verify"):
        verify_model(update, other)
    with pytest.raises(ModelSignatureError, match="not signed"):
        verify_model(update.model_copy(update={"signature_b64": ""}), other)


def test_keys_load_from_pem_files_and_raw_base64(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "model.key"
    path.write_bytes(private_pem(key))
    assert load_private_key(path).public_key() == key.public_key()
    raw = key.public_key().public_bytes_raw()
    assert load_public_key(base64.b64encode(raw).decode()) == key.public_key()
    with pytest.raises(ModelSignatureError):
        load_public_key("not a key")
