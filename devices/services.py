"""Every change of device state goes through a function here; each owns its transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class DeviceSpec:
    """What it takes to register one device; `fields` are Device's other fields (tags, ...)."""

    key: str
    name: str
    device_type: DeviceType
    groups: Sequence[DeviceGroup] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


class DeviceRefused(ValidationError):
    """A device of a batch failed validation; `index` says which spec."""

    def __init__(self, index: int, error: ValidationError) -> None:
        super().__init__(error.error_dict if hasattr(error, "error_dict") else error.error_list)
        self.index = index


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
    spec = DeviceSpec(key, name, device_type, tuple(groups), fields)
    return create_devices(tenant, [spec])[0]


@transaction.atomic
def create_devices(tenant: Tenant, specs: Sequence[DeviceSpec]) -> list[NewCredential]:
    """Register devices, each with a fresh credential and an empty shadow: all of them or none.

    A handful of queries whatever the count, so a CSV import of thousands of rows is one quick
    request. Raises DeviceRefused naming the first spec that is not valid.
    """
    now = timezone.now()
    devices: list[Device] = []
    secrets: list[str] = []
    keys: set[str] = set()
    for index, spec in enumerate(specs):
        secret = new_secret()
        device = Device(
            tenant=tenant,
            key=spec.key,
            name=spec.name,
            device_type=spec.device_type,
            credential_hash=hash_secret(secret),
            credential_rotated_at=now,
            **spec.fields,
        )
        try:
            # The tenant and type are objects already loaded: skip Django's per-row exists()
            # query for them (clean() still checks the type is the tenant's); keys are
            # checked for the whole batch at once below.
            device.full_clean(exclude=["tenant", "device_type"], validate_unique=False)
            _check_batch_rules(tenant, spec, keys)
        except ValidationError as error:
            raise DeviceRefused(index, error) from error
        keys.add(spec.key)
        devices.append(device)
        secrets.append(secret)
    taken = set(Device.objects.filter(key__in=keys).values_list("key", flat=True))
    for index, device in enumerate(devices):
        if device.key in taken:
            raise DeviceRefused(index, ValidationError({"key": _key_taken(device.key)}))
    try:
        with transaction.atomic():
            Device.objects.bulk_create(devices)
    except IntegrityError as error:
        # The keys were free a moment ago; another request took one since.
        raise ValidationError(
            {
                "key": "A device with one of these keys was just created by "
                "someone else: choose another key and try again."
            }
        ) from error
    DeviceShadow.objects.bulk_create([DeviceShadow(device=device) for device in devices])
    membership = Device.groups.through
    membership.objects.bulk_create(
        membership(device_id=device.pk, devicegroup_id=group.pk)
        for device, spec in zip(devices, specs, strict=True)
        for group in spec.groups
    )
    return [NewCredential(d, s) for d, s in zip(devices, secrets, strict=True)]


def _key_taken(key: str) -> str:
    return f"A device with the key {key!r} already exists."


def _check_batch_rules(tenant: Tenant, spec: DeviceSpec, keys_so_far: set[str]) -> None:
    if spec.key in keys_so_far:
        raise ValidationError({"key": f"The key {spec.key!r} is given twice."})
    foreign = [group.name for group in spec.groups if group.tenant_id != tenant.pk]
    if foreign:
        raise ValidationError({"groups": f"These groups belong to another tenant: {foreign}."})


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
def replace_desired(
    device: Device, desired: dict, expected_version: int | None = None
) -> DeviceShadow:
    """Set the whole desired state (the admin's edit form), bump the version.

    With `expected_version`, refuse the update if the shadow moved on since then.
    """
    shadow = _locked_shadow(device)
    if expected_version is not None and expected_version != shadow.version:
        raise ShadowVersionConflict(shadow.version)
    shadow.desired = {}
    shadow.apply(desired=desired)
    shadow.save()
    return shadow
