"""Fixtures of the OTA tests: a tenant's Ed25519 signing key, signed firmware releases, fleets of
online devices, and device reports fed through the real ingest batch path."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from devices.models import Device, DeviceStatus, DeviceType, Tenant
from devices.services import DeviceSpec, create_devices
from ota import services
from ota.models import FirmwareRelease, Rollout, SigningKey
from telemetry.services import IngestResult, ingest_batch
from telemetry.validation import parse_message
from tests.factories import make_device_type

FIRMWARE = b"IOTFLEET-FW\x00" + bytes(range(256)) * 64


@pytest.fixture
def media(media_root):
    """Where uploaded firmware goes: the test's own folder (tests/conftest.py)."""
    return media_root


class Signer:
    """A tenant's release key: the private half stays with the engineer (here, the test)."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, content: bytes) -> str:
        """What the engineer's build does: Ed25519 over the image's SHA-256 digest, base64."""
        return base64.b64encode(self.private.sign(hashlib.sha256(content).digest())).decode()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def acme_key(acme: Tenant, signer: Signer) -> SigningKey:
    return services.register_signing_key(acme, "Release key", signer.public_pem)


def upload(content: bytes = FIRMWARE, name: str = "firmware.bin") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


@pytest.fixture
def make_release(acme: Tenant, signer: Signer) -> Callable[..., FirmwareRelease]:
    def make(
        version: str = "2.1.0",
        device_types: Iterable[DeviceType] | None = None,
        content: bytes = FIRMWARE,
        tenant: Tenant = acme,
        sign: bool = True,
    ) -> FirmwareRelease:
        if not SigningKey.objects.filter(tenant=tenant).exists() and sign:
            services.register_signing_key(tenant, "Release key", signer.public_pem)
        return services.create_release(
            tenant=tenant,
            version=version,
            file=upload(content + version.encode()),
            device_types=list(device_types or [make_device_type(tenant, "Freezer")]),
            signature=signer.sign(content + version.encode()) if sign else "",
            notes=f"Release {version}",
        )

    return make


def make_fleet(
    tenant: Tenant,
    count: int,
    device_type: DeviceType | None = None,
    prefix: str = "fw",
    version: str = "2.0.0",
    online: bool = True,
    tags: list[str] | None = None,
) -> list[Device]:
    device_type = device_type or make_device_type(tenant, "Freezer")
    specs = [
        DeviceSpec(
            key=f"{prefix}-{n:05d}",
            name=f"Freezer {n}",
            device_type=device_type,
            fields={"firmware_version": version, "tags": list(tags or [])},
        )
        for n in range(count)
    ]
    devices = [credential.device for credential in create_devices(tenant, specs)]
    if online:
        Device.objects.filter(pk__in=[d.pk for d in devices]).update(
            status=DeviceStatus.ONLINE, last_seen=timezone.now()
        )
    return devices


@pytest.fixture
def fleet(acme: Tenant) -> Callable[..., list[Device]]:
    def make(count: int, **options) -> list[Device]:
        return make_fleet(acme, count, **options)

    return make


def draft(release: FirmwareRelease, **fields) -> Rollout:
    defaults = {
        "name": f"{release.version} to the freezers",
        "wave_mode": "percent",
        "wave_plan": [10, 50, 100],
        "soak_time": timedelta(minutes=30),
        "success_threshold": 90,
        "failure_threshold": 10,
        "min_finished": 5,
        "max_concurrent": 1000,
    }
    return services.create_rollout(tenant=release.tenant, release=release, **{**defaults, **fields})


def epoch_ms(moment: datetime | None = None) -> int:
    return int((moment or timezone.now()).timestamp() * 1000) if moment else int(time.time() * 1000)


def device_message(key: str, suffix: str, body: dict, at: datetime | None = None) -> list:
    """One device message as the ingest worker hands it over (validated at the edge)."""
    return parse_message(f"fleet/{key}/{suffix}", json.dumps(body).encode(), epoch_ms(at))


def ingest(messages: list[list]) -> IngestResult:
    return ingest_batch(messages)


def report(update, state: str, at: datetime | None = None, **extra) -> list:
    """The device's OTA progress report for its job, as an ingest entry."""
    return device_message(
        update.device.key, "ota/status", {"job": update.pk, "state": state, **extra}, at
    )


@pytest.fixture
def eager_celery():
    """Tasks queued after commit run at once in this thread (as a worker would run them)."""
    from iotfleet.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    try:
        yield app
    finally:
        app.conf.task_always_eager = False
        app.conf.task_eager_propagates = False


@pytest.fixture
def jobs(mosquitto, settings, eager_celery):
    """The platform publishes to a broker of the test's own; this listener hears every job."""
    from tests.ota.fleet import JobListener

    settings.MQTT_URL = mosquitto.url
    listener = JobListener(mosquitto.port)
    yield listener
    listener.close()


# The platform as real processes (daphne, mqtt_ingest, a Celery worker, the simulator).
from tests.ota.stack import stack  # noqa: E402, F401
