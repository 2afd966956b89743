"""Demo firmware for `manage.py seed_demo`: Acme's freezers get signed releases 2.0.1 (what some
of them run) and 2.1.0 (ready to roll out from the wizard), so scenario 5 of the demo — ship
firmware in waves, watch it, roll back — works on a fresh `make run`. Safe to repeat."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.uploadedfile import SimpleUploadedFile

from devices.models import DeviceType, Tenant

from . import services
from .models import FirmwareRelease, SigningKey

KEY_NAME = "Demo release key"
RELEASES = (
    ("2.0.1", "Current field release."),
    ("2.1.0", "Faster defrost cycle; compressor current reported every minute."),
)


def demo_image(version: str) -> bytes:
    """A recognisable 64 KiB stand-in for a firmware image."""
    header = f"IOTFLEET-DEMO-FIRMWARE {version}\n".encode()
    body = hashlib.sha256(version.encode()).digest() * 2048
    return header + body[: 64 * 1024 - len(header)]


def seed_demo_firmware(tenant: Tenant, device_type: DeviceType) -> int:
    """Create what is missing; returns how many releases were created. The private key exists
    only for this call: a demo signs with it and forgets it, as no platform should hold one."""
    missing = [
        (version, notes)
        for version, notes in RELEASES
        if not FirmwareRelease.objects.filter(tenant=tenant, version=version).exists()
    ]
    if not missing:
        return 0
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    # A key from an earlier seeding cannot sign anything now: retire it (named by its
    # fingerprint, as several seedings may each leave one), drop those that signed nothing
    # still stored, and register the new one.
    for old in SigningKey.objects.filter(tenant=tenant, name=KEY_NAME):
        old.is_active = False
        old.name = f"{KEY_NAME} (retired {old.fingerprint})"
        old.save(update_fields=["is_active", "name"])
    SigningKey.objects.filter(tenant=tenant, name__startswith=f"{KEY_NAME} (retired").exclude(
        releases__isnull=False
    ).delete()
    services.register_signing_key(tenant, KEY_NAME, base64.b64encode(public).decode())
    for version, notes in missing:
        image = demo_image(version)
        services.create_release(
            tenant=tenant,
            version=version,
            file=SimpleUploadedFile(f"coldbox-{version}.bin", image),
            device_types=[device_type],
            notes=notes,
            signature=base64.b64encode(private.sign(hashlib.sha256(image).digest())).decode(),
        )
    return len(missing)
