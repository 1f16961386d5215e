"""Ed25519 signing of Foresight model updates (topic ``chargesight/v1/models/{model_key}``).

The cloud signs, the edge verifies; the key pair is configured on both sides
(private key in the cloud, public key on every gateway). What is signed is
``sha256(onnx bytes) || canonical metadata`` where the canonical metadata is
the update's other fields (schema version, model key, version, creation
time, feature names, threshold, card) as JSON with sorted keys — so nothing
in the message can change without breaking the signature.

Keys travel as PEM (PKCS#8 private, SubjectPublicKeyInfo public) or as the
raw 32-byte key in base64, whichever an operator finds easier to paste.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from chargesight.common.messages import SCHEMA_VERSION, ModelUpdate, utcnow


class ModelSignatureError(Exception):
    """A model update whose signature is missing, malformed or does not verify."""


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _material(value: str | bytes | Path) -> bytes:
    if isinstance(value, Path):
        return value.read_bytes()
    data = value.encode() if isinstance(value, str) else value
    if (
        b"-----BEGIN" not in data
        and len(data) < 200
        and Path(data.decode(errors="ignore")).is_file()
    ):
        return Path(data.decode()).read_bytes()
    return data


def load_private_key(value: str | bytes | Path) -> Ed25519PrivateKey:
    """From PEM, a path to a PEM file, or the raw 32-byte key in base64."""
    data = _material(value)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip()))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ModelSignatureError(f"not an Ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelSignatureError("the private key is not an Ed25519 key")
    return key


def load_public_key(value: str | bytes | Path) -> Ed25519PublicKey:
    """From PEM, a path to a PEM file, or the raw 32-byte key in base64."""
    data = _material(value)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip()))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ModelSignatureError(f"not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ModelSignatureError("the public key is not an Ed25519 key")
    return key


def signed_bytes(update: ModelUpdate, onnx: bytes) -> bytes:
    """What the signature covers: sha256(onnx) || canonical metadata."""
    meta = update.model_dump(mode="json", exclude={"onnx_b64", "signature_b64"})
    return hashlib.sha256(onnx).digest() + orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)


def sign_model(
    onnx: bytes,
    *,
    model_key: str,
    version: str,
    feature_names: Sequence[str],
    threshold: float,
    key: Ed25519PrivateKey,
    card: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> ModelUpdate:
    """A signed :class:`ModelUpdate` carrying ``onnx``."""
    update = ModelUpdate(
        schema_version=SCHEMA_VERSION,
        model_key=model_key,
        version=version,
        created_at=created_at or utcnow(),
        feature_names=list(feature_names),
        threshold=threshold,
        onnx_b64=base64.b64encode(onnx).decode(),
        signature_b64="",
        card=dict(card or {}),
    )
    sig = key.sign(signed_bytes(update, onnx))
    return update.model_copy(update={"signature_b64": base64.b64encode(sig).decode()})


def verify_model(update: ModelUpdate, public_key: Ed25519PublicKey) -> bytes:
    """The ONNX bytes of ``update`` if its signature verifies; raises :class:`ModelSignatureError`."""
    if not update.signature_b64:
        raise ModelSignatureError(f"model {update.model_key} {update.version} is not signed")
    try:
        onnx = base64.b64decode(update.onnx_b64, validate=True)
        sig = base64.b64decode(update.signature_b64, validate=True)
    except binascii.Error as exc:
        raise ModelSignatureError(f"model {update.model_key}: bad base64: {exc}") from exc
    try:
        public_key.verify(sig, signed_bytes(update, onnx))
    except InvalidSignature as exc:
        raise ModelSignatureError(
            f"model {update.model_key} {update.version}: signature does not verify"
        ) from exc
    return onnx
