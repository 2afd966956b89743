"""Tenancy cases of the OTA API viewsets (see tests/api/tenancy_cases.py)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.uploadedfile import SimpleUploadedFile

from devices.models import Tenant
from ota import services
from ota.api.views import (
    DeviceUpdateViewSet,
    FirmwareReleaseViewSet,
    RolloutViewSet,
    SigningKeyViewSet,
)
from ota.models import DeviceUpdate, FirmwareRelease, Rollout, SigningKey
from tests.api.tenancy_cases import ApiCase
from tests.factories import make_device, make_device_type


def _public_pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _key(tenant: Tenant) -> SigningKey:
    existing = SigningKey.objects.filter(tenant=tenant, name="Harness key").first()
    return existing or services.register_signing_key(tenant, "Harness key", _public_pem())


def _image(version: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(f"fw-{version}.bin", f"image {version}".encode() * 100)


def _release(tenant: Tenant, version: str = "1.0.0") -> FirmwareRelease:
    existing = FirmwareRelease.objects.filter(tenant=tenant, version=version).first()
    return existing or services.create_release(
        tenant=tenant,
        version=version,
        file=_image(version),
        device_types=[make_device_type(tenant, "Harness type")],
    )


def _rollout(tenant: Tenant) -> Rollout:
    existing = Rollout.objects.filter(tenant=tenant, name="Harness rollout").first()
    return existing or services.create_rollout(
        tenant=tenant, release=_release(tenant), name="Harness rollout", wave_plan=[10, 100]
    )


def _device_update(tenant: Tenant) -> DeviceUpdate:
    existing = DeviceUpdate.objects.filter(rollout__tenant=tenant).first()
    if existing:
        return existing
    make_device(
        tenant, f"{tenant.slug}-updating-1", device_type=make_device_type(tenant, "Harness type")
    )
    rollout = services.create_rollout(
        tenant=tenant, release=_release(tenant), name="Harness run", wave_plan=[100]
    )
    services.start_rollout(rollout)
    return DeviceUpdate.objects.get(rollout=rollout)


def _type_ids(release: FirmwareRelease) -> list[int]:
    return sorted(release.device_types.values_list("pk", flat=True))


def _group_ids(rollout: Rollout) -> list[int]:
    return sorted(rollout.groups.values_list("pk", flat=True))


CASES: list[ApiCase] = [
    ApiCase(
        basename="signing-key",
        viewset=SigningKeyViewSet,
        make=_key,
        create_payload=lambda tenant: {"name": "Build key", "public_key": _public_pem()},
        update_payload=lambda obj: {
            "name": f"{obj.name} (retired)",
            "public_key": obj.public_key,
            "is_active": False,
        },
    ),
    ApiCase(
        basename="firmware-release",
        viewset=FirmwareReleaseViewSet,
        make=_release,
        create_payload=lambda tenant: {
            "version": "3.0.0",
            "file": _image("3.0.0"),
            "device_types": [make_device_type(tenant, "Harness type").pk],
            "notes": "New sensor driver",
        },
        update_payload=lambda obj: {
            "notes": f"{obj.notes} (revised)",
            "device_types": [make_device_type(obj.tenant, "Harness other type").pk],
        },
        related_state=_type_ids,
        create_format="multipart",
    ),
    ApiCase(
        basename="rollout",
        viewset=RolloutViewSet,
        make=_rollout,
        create_payload=lambda tenant: {
            "name": "Spring update",
            "release": _release(tenant, "1.1.0").pk,
            "wave_mode": "percent",
            "wave_plan": [1, 10, 100],
            "soak_time": "00:30:00",
            "tags": ["pilot"],
        },
        update_payload=lambda obj: {
            "name": f"{obj.name} v2",
            "release": obj.release_id,
            "wave_mode": "count",
            "wave_plan": [5, 50],
        },
        related_state=_group_ids,
    ),
    ApiCase(basename="device-update", viewset=DeviceUpdateViewSet, make=_device_update),
]
