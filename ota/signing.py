"""Ed25519 signatures of firmware images (the `cryptography` package).

A release's signature is Ed25519 over the 32 raw bytes of the image's SHA-256 digest: the
platform and the device both hash the image as a stream and never hold it whole in memory.
With OpenSSL:

    openssl dgst -sha256 -binary firmware.bin > firmware.sha256
    openssl pkeyutl -sign -inkey release-key.pem -rawin -in firmware.sha256 | base64 -w0

Public keys are given as PEM (`openssl pkey -in release-key.pem -pubout`), or as the 32 raw
bytes in base64 or hex; signatures as base64 or hex of the 64 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEX = re.compile(r"^[0-9a-fA-F]+$")


class KeyFormatError(ValueError):
    """A key or signature that cannot be read; the text says what to give instead."""


def _decode(text: str, length: int, what: str) -> bytes:
    text = "".join(text.split())
    if len(text) == 2 * length and HEX.match(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != length:
        raise KeyFormatError(
            f"The {what} is not {length} bytes in base64 or hex: copy it whole, without spaces "
            "or line breaks."
        )
    return raw


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as PEM, base64 or hex."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as error:
            raise KeyFormatError(f"The PEM public key cannot be read ({error}).") from error
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(
                "The PEM key is not an Ed25519 key: make one with "
                "`openssl genpkey -algorithm ed25519`."
            )
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _decode(text, 32, "public key")


def encode_public_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def fingerprint(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_bytes(text: str) -> bytes:
    return _decode(text, 64, "signature")


def verifies(public_key_b64: str, signature: bytes, digest: bytes) -> bool:
    """Whether `signature` is the key's Ed25519 signature of `digest`."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    try:
        key.verify(signature, digest)
    except InvalidSignature:
        return False
    return True
