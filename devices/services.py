"""Every change of device state goes through a function here; each owns its transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import broker_accounts
from .broker_accounts import DeviceAccount
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
    """Register devices, each with a fresh credential, an empty shadow and its MQTT account on the
    broker: all of them or none.

    A handful of queries and broker messages whatever the count, so a CSV import of thousands of
    rows is one quick request. Raises DeviceRefused naming the first spec that is not valid, and
    BrokerAccountError (nothing saved) if the broker did not take the accounts.
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
    # Last, inside the transaction: if the broker refuses, the devices are not created either.
    broker_accounts.provision_devices(
        DeviceAccount(d.key, s, d.is_enabled) for d, s in zip(devices, secrets, strict=True)
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
    """Give the device a new secret; the old one stops working at once, on the broker too."""
    return rotate_credentials_of([device])[0]


@transaction.atomic
def rotate_credentials_of(devices: Iterable[Device]) -> list[NewCredential]:
    """Give each device a new secret, in one go on the broker: all of them or none.

    The broker disconnects a device logged in with its old secret. Raises BrokerAccountError
    (nothing saved) if the broker did not take the new passwords.
    """
    now = timezone.now()
    credentials = []
    for device in devices:
        secret = new_secret()
        device.credential_hash = hash_secret(secret)
        device.credential_rotated_at = now
        device.updated_at = now
        credentials.append(NewCredential(device=device, secret=secret))
    Device.objects.bulk_update(
        [credential.device for credential in credentials],
        ["credential_hash", "credential_rotated_at", "updated_at"],
    )
    broker_accounts.set_device_passwords(
        DeviceAccount(c.device.key, c.secret, c.device.is_enabled) for c in credentials
    )
    return credentials


# What update_device() may change; the key (the MQTT identity) and the tenant are fixed.
UPDATABLE_FIELDS = frozenset(
    {
        "name",
        "device_type",
        "location",
        "latitude",
        "longitude",
        "attributes",
        "tags",
        "is_enabled",
        "firmware_version",
    }
)


@transaction.atomic
def update_device(device: Device, **changes: Any) -> Device:
    """Change a device's details (UPDATABLE_FIELDS, and `groups` to replace its groups).

    Disabling the device shuts it out of the broker at once (it is disconnected and its logins
    refused); enabling it lets it log in again. Only the fields given are written, so status and
    last_seen, which the ingest keeps current meanwhile, are not overwritten with stale values.
    Raises ValidationError for invalid values and BrokerAccountError (nothing saved) if the broker
    did not take the change.
    """
    groups = changes.pop("groups", None)
    for fixed in ("key", "tenant"):
        if fixed in changes and changes.pop(fixed) != getattr(device, fixed):
            raise ValidationError({fixed: f"A device's {fixed} cannot change after create."})
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise TypeError(f"update_device() cannot change {', '.join(sorted(unknown))}.")
    if groups is not None:
        foreign = [group.name for group in groups if group.tenant_id != device.tenant_id]
        if foreign:
            raise ValidationError({"groups": f"These groups belong to another tenant: {foreign}."})
    was_enabled = (
        Device.objects.select_for_update().filter(pk=device.pk).values_list("is_enabled", flat=True)
    ).get()
    for name, value in changes.items():
        setattr(device, name, value)
    device.full_clean(exclude=["tenant", "device_type"], validate_unique=False)
    device.save(update_fields=[*changes, "updated_at"])
    if groups is not None:
        device.groups.set(groups)
    if device.is_enabled != was_enabled:
        broker_accounts.set_device_enabled(device.key, device.is_enabled)
    return device


@transaction.atomic
def delete_devices(devices: Iterable[Device]) -> int:
    """Delete devices (their shadows and history with them) and their MQTT accounts, so a deleted
    device can no longer log in; returns how many were deleted.

    The rows go first, inside the transaction, then the accounts: a device that something still
    protects stays whole, and if the broker cannot remove the accounts the rows come back
    (BrokerAccountError) rather than leave a device the platform forgot but the broker lets in.
    """
    devices = list(devices)
    _, deleted = Device.objects.filter(pk__in=[device.pk for device in devices]).delete()
    broker_accounts.remove_devices(device.key for device in devices)
    return deleted.get(Device._meta.label, 0)


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
