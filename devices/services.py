"""Every change of device state goes through a function here; each owns its transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from .credentials import hash_secret, new_secret
from .models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceStatus,
    DeviceType,
    Membership,
    Role,
    Tenant,
)


class ShadowVersionConflict(Exception):
    """The shadow changed since the version the caller based its update on."""

    def __init__(self, current: int) -> None:
        super().__init__(
            f"The shadow is at version {current}; fetch it and apply your change again."
        )
        self.current = current


@dataclass(frozen=True)
class NewCredential:
    """A device and the secret it was just given: the only moment the secret is known."""

    device: Device
    secret: str


def add_member(user: AbstractUser, tenant: Tenant, role: str = Role.VIEWER) -> Membership:
    """Make `user` a member of `tenant` with `role`; members work in the admin, so are staff."""
    membership, _ = Membership.objects.update_or_create(
        user=user, tenant=tenant, defaults={"role": role}
    )
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return membership


@transaction.atomic
def create_device(
    *,
    tenant: Tenant,
    key: str,
    name: str,
    device_type: DeviceType,
    groups: Iterable[DeviceGroup] = (),
    **fields: Any,
) -> NewCredential:
    """Register a device with a fresh credential and an empty shadow; returns the secret once."""
    secret = new_secret()
    device = Device(
        tenant=tenant,
        key=key,
        name=name,
        device_type=device_type,
        credential_hash=hash_secret(secret),
        credential_rotated_at=timezone.now(),
        **fields,
    )
    device.full_clean()
    try:
        with transaction.atomic():
            device.save()
    except IntegrityError as error:
        # full_clean() checked the key, but another request may have taken it since.
        raise ValidationError({"key": f"A device with the key {key!r} already exists."}) from error
    if groups:
        device.groups.set(groups)
    DeviceShadow.objects.create(device=device)
    return NewCredential(device=device, secret=secret)


def rotate_credentials(device: Device) -> NewCredential:
    """Give the device a new secret; the old one stops working at once."""
    secret = new_secret()
    device.credential_hash = hash_secret(secret)
    device.credential_rotated_at = timezone.now()
    device.save(update_fields=["credential_hash", "credential_rotated_at", "updated_at"])
    return NewCredential(device=device, secret=secret)


def add_devices_to_group(devices: Iterable[Device], group: DeviceGroup) -> int:
    """Add devices of the group's tenant to it; returns how many were added."""
    devices = [d for d in devices if d.tenant_id == group.tenant_id]
    group.devices.add(*devices)
    return len(devices)


def add_tag(devices: Iterable[Device], tag: str) -> int:
    """Tag the devices (once each); returns how many gained the tag."""
    tag = tag.strip()
    if not tag:
        raise ValueError("A tag cannot be empty.")
    changed = 0
    with transaction.atomic():
        for device in devices:
            if tag not in device.tags:
                device.tags = [*device.tags, tag]
                device.save(update_fields=["tags", "updated_at"])
                changed += 1
    return changed


def set_maintenance(devices: Iterable[Device], on: bool = True) -> int:
    """Put devices into maintenance, or take them out (back to offline until they are heard)."""
    ids = [d.pk for d in devices]
    queryset = Device.objects.filter(pk__in=ids)
    if on:
        return queryset.exclude(status=DeviceStatus.MAINTENANCE).update(
            status=DeviceStatus.MAINTENANCE, updated_at=timezone.now()
        )
    return queryset.filter(status=DeviceStatus.MAINTENANCE).update(
        status=DeviceStatus.OFFLINE, updated_at=timezone.now()
    )


def _locked_shadow(device: Device) -> DeviceShadow:
    shadow, _ = DeviceShadow.objects.select_for_update().get_or_create(device=device)
    return shadow


@transaction.atomic
def update_desired(
    device: Device, patch: dict, expected_version: int | None = None
) -> DeviceShadow:
    """Merge `patch` into the desired state (null removes a key), bump the version.

    With `expected_version`, refuse the update if the shadow moved on since then.
    """
    shadow = _locked_shadow(device)
    if expected_version is not None and expected_version != shadow.version:
        raise ShadowVersionConflict(shadow.version)
    shadow.apply(desired=patch)
    shadow.save()
    return shadow


@transaction.atomic
def update_reported(device: Device, patch: dict) -> DeviceShadow:
    """Merge what the device reports into the reported state, bump the version."""
    shadow = _locked_shadow(device)
    shadow.apply(reported=patch)
    shadow.save()
    return shadow


@transaction.atomic
def replace_desired(device: Device, desired: dict) -> DeviceShadow:
    """Set the whole desired state (the admin's edit form), bump the version."""
    shadow = _locked_shadow(device)
    shadow.desired = {}
    shadow.apply(desired=desired)
    shadow.save()
    return shadow
