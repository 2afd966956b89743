"""Every change of device state goes through a function here; each owns its transaction."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from iotfleet import live

from . import broker_accounts, publishing
from .broker_accounts import DeviceAccount
from .credentials import hash_secret, new_secret
from .models import (
    PENDING_COMMAND_STATES,
    Command,
    CommandState,
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceStatus,
    DeviceType,
    Membership,
    Role,
    Tenant,
    command_name_validator,
    merge_state,
    shadow_delta,
)

log = logging.getLogger(__name__)


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


@transaction.atomic
def set_maintenance(devices: Iterable[Device], on: bool = True) -> int:
    """Put devices into maintenance, or take them out (back to offline until they are heard);
    the dashboards hear of it (`devices.status`) once it commits."""
    ids = [d.pk for d in devices]
    queryset = Device.objects.filter(pk__in=ids)
    if on:
        changing = queryset.exclude(status=DeviceStatus.MAINTENANCE)
        status = DeviceStatus.MAINTENANCE
    else:
        changing = queryset.filter(status=DeviceStatus.MAINTENANCE)
        status = DeviceStatus.OFFLINE
    changed = list(changing.select_for_update().values_list("pk", "tenant_id", "key", "last_seen"))
    Device.objects.filter(pk__in=[pk for pk, *_ in changed]).update(
        status=status, updated_at=timezone.now()
    )
    by_tenant: dict[int, list[dict]] = defaultdict(list)
    for _, tenant_id, key, last_seen in changed:
        by_tenant[tenant_id].append(
            {
                "key": key,
                "status": status,
                "last_seen": last_seen.isoformat() if last_seen else None,
            }
        )
    live.push_many(
        (tenant_id, "devices.status", {"devices": items}) for tenant_id, items in by_tenant.items()
    )
    return len(changed)


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
    _desired_changed([device])
    return shadow


@transaction.atomic
def update_reported(device: Device, patch: dict) -> DeviceShadow:
    """Merge what the device reports into the reported state, bump the version."""
    shadow = _locked_shadow(device)
    shadow.apply(reported=patch)
    shadow.save()
    _push_shadows([device])
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
    _desired_changed([device])
    return shadow


# --- Desired state to the devices ---------------------------------------------------------------

DESIRED_TOPIC = "fleet/{key}/shadow/desired"


def desired_message(device: Device, shadow: DeviceShadow) -> dict[str, Any]:
    """What a device finds (retained) on fleet/{key}/shadow/desired: the whole desired state, the
    part of it it does not report yet, and the version to report back against."""
    return {
        "version": shadow.version,
        "state": shadow.desired,
        "delta": shadow.delta,
        "timestamp": (shadow.desired_updated_at or timezone.now()).isoformat(),
    }


def _desired_changed(devices: Sequence[Device]) -> None:
    """On commit: publish the devices' desired state (a Celery task) and tell the dashboards."""
    ids = sorted({device.pk for device in devices})
    if not ids:
        return

    def queue() -> None:
        from devices.tasks import publish_desired_task

        publish_desired_task.delay(ids)

    transaction.on_commit(queue, robust=True)
    _push_shadows(devices)


def _push_shadows(devices: Sequence[Device]) -> None:
    by_tenant: dict[int, list[str]] = defaultdict(list)
    for device in devices:
        by_tenant[device.tenant_id].append(device.key)
    live.push_many(
        (tenant_id, "shadow.changed", {"devices": keys}) for tenant_id, keys in by_tenant.items()
    )


def publish_desired(device_ids: Sequence[int]) -> int:
    """Publish the current desired state of each device, retained, over one MQTT connection;
    returns how many. What is read now is sent, so a late or repeated task sends the latest
    state, never an older one. Raises publishing.PublishError."""
    shadows = DeviceShadow.objects.filter(device_id__in=device_ids).select_related("device")
    messages = [
        publishing.Outgoing(
            topic=DESIRED_TOPIC.format(key=shadow.device.key),
            payload=json.dumps(desired_message(shadow.device, shadow), separators=(",", ":")),
            retain=True,
        )
        for shadow in shadows
    ]
    return publishing.publish(messages)


@transaction.atomic
def update_group_desired(group: DeviceGroup, patch: dict) -> int:
    """Merge `patch` into the group's desired state and into the desired shadow of each of its
    devices (null removes a key), then publish them all at once; returns how many devices.

    Devices added to the group later do not get it by themselves: set it again."""
    if not isinstance(patch, dict) or not patch:
        raise ValidationError({"desired": 'Give a JSON object, e.g. {"reporting_interval": 30}.'})
    DeviceGroup.objects.select_for_update().filter(pk=group.pk).get()
    group.desired = merge_state(group.desired or {}, patch)
    group.desired_updated_at = timezone.now()
    group.save(update_fields=["desired", "desired_updated_at"])
    devices = list(group.devices.order_by("pk"))
    DeviceShadow.objects.bulk_create(
        [DeviceShadow(device=device) for device in devices], ignore_conflicts=True
    )
    shadows = list(
        DeviceShadow.objects.select_for_update().filter(device__in=devices).order_by("device_id")
    )
    for shadow in shadows:
        shadow.apply(desired=patch)
    DeviceShadow.objects.bulk_update(
        shadows, ["desired", "delta", "version", "desired_updated_at", "updated_at"]
    )
    _desired_changed(devices)
    return len(shadows)


@dataclass(frozen=True)
class CatchUp:
    """How far a group's devices are with the group's desired state."""

    total: int
    behind: list[tuple[Device, dict]]  # devices and what they do not report yet

    @property
    def caught_up(self) -> int:
        return self.total - len(self.behind)


def group_catch_up(group: DeviceGroup) -> CatchUp:
    """Which of the group's devices do not report the group's desired state yet."""
    desired = group.desired or {}
    behind = []
    devices = list(group.devices.select_related("shadow").order_by("key"))
    for device in devices:
        reported = getattr(device, "shadow", None)
        missing = shadow_delta(desired, reported.reported if reported else {})
        if missing:
            behind.append((device, missing))
    return CatchUp(total=len(devices), behind=behind)


# --- Commands -----------------------------------------------------------------------------------

COMMAND_PARAMS_MAX_BYTES = 4096


class CommandRefused(ValidationError):
    """The command cannot be sent as given (its name, parameters or timeout)."""


def send_command(
    device: Device,
    name: str,
    params: dict | None = None,
    *,
    user: Any = None,
    timeout: timedelta | None = None,
) -> Command:
    """Queue a command for the device; a Celery task publishes it on fleet/{key}/commands/{id}
    once this transaction commits. The device answers on .../commands/{id}/ack; without an
    answer by `timeout` (COMMAND_TIMEOUT_SECONDS) it times out."""
    params = {} if params is None else params
    errors: dict[str, str] = {}
    try:
        command_name_validator(name)
    except ValidationError as error:
        errors["name"] = error.messages[0]
    if not isinstance(params, dict):
        errors["params"] = 'Parameters are a JSON object, e.g. {"level": 2}.'
    elif len(json.dumps(params)) > COMMAND_PARAMS_MAX_BYTES:
        errors["params"] = f"Parameters take at most {COMMAND_PARAMS_MAX_BYTES} bytes as JSON."
    if timeout is None:
        timeout = timedelta(seconds=settings.COMMAND_TIMEOUT_SECONDS)
    if not timedelta(seconds=1) <= timeout <= timedelta(days=7):
        errors["timeout"] = "Give the device between 1 second and 7 days to answer."
    if not device.is_enabled:
        errors["device"] = "The device is disabled: enable it before sending it commands."
    if errors:
        raise CommandRefused(errors)
    with transaction.atomic():
        command = Command.objects.create(
            tenant_id=device.tenant_id,
            device=device,
            name=name,
            params=params,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            expires_at=timezone.now() + timeout,
        )
        command_id = command.pk

        def queue() -> None:
            from devices.tasks import publish_command_task

            publish_command_task.delay(command_id)

        transaction.on_commit(queue, robust=True)
        _push_commands([command])
    return command


def command_message(command: Command) -> dict[str, Any]:
    return {
        "id": command.pk,
        "name": command.name,
        "params": command.params,
        "expires_at": command.expires_at.isoformat(),
    }


def publish_command(command_id: int) -> bool:
    """Publish a queued command (QoS 1) and mark it sent; False if it was no longer queued (sent
    already, answered or expired: a repeated task sends nothing twice). Raises PublishError."""
    command = Command.objects.select_related("device").filter(pk=command_id).first()
    if command is None or command.state != CommandState.QUEUED:
        return False
    if command.expires_at <= timezone.now():
        expire_commands(timezone.now())
        return False
    publishing.publish(
        [
            publishing.Outgoing(
                topic=command.topic,
                payload=json.dumps(command_message(command), separators=(",", ":")),
            )
        ]
    )
    with transaction.atomic():
        sent = Command.objects.filter(pk=command_id, state=CommandState.QUEUED).update(
            state=CommandState.SENT, sent_at=timezone.now()
        )
        if sent:
            command.refresh_from_db()
            _push_commands([command])
    return bool(sent)


def fail_command(command_id: int, error: str) -> bool:
    """A command that could not be published: queued → failed, with why."""
    with transaction.atomic():
        failed = Command.objects.filter(pk=command_id, state=CommandState.QUEUED).update(
            state=CommandState.FAILED, answered_at=timezone.now(), error=error[:2000]
        )
        if failed:
            _push_commands(list(Command.objects.filter(pk=command_id).select_related("device")))
    return bool(failed)


@dataclass(frozen=True)
class CommandAnswer:
    """A device's answer, as the ingest batch received it."""

    device_id: int
    command_id: int
    ok: bool
    result: Any
    message: str
    at: datetime


def record_command_answers(answers: Sequence[CommandAnswer]) -> list[tuple[CommandAnswer, str]]:
    """Store the devices' answers: a pending command of that device becomes acknowledged or
    failed. Returns the answers that matched no pending command, with why (for the ingest to
    record as rejected): a device can only answer its own commands, once, before they time
    out."""
    refused: list[tuple[CommandAnswer, str]] = []
    done: list[int] = []
    for answer in sorted(answers, key=lambda a: (a.command_id, a.at)):
        updated = Command.objects.filter(
            pk=answer.command_id, device_id=answer.device_id, state__in=PENDING_COMMAND_STATES
        ).update(
            state=CommandState.ACKNOWLEDGED if answer.ok else CommandState.FAILED,
            answered_at=answer.at,
            result=answer.result,
            error="" if answer.ok else (answer.message or "the device reported an error"),
        )
        if updated:
            done.append(answer.command_id)
            continue
        state = (
            Command.objects.filter(pk=answer.command_id, device_id=answer.device_id)
            .values_list("state", flat=True)
            .first()
        )
        refused.append(
            (
                answer,
                f"command #{answer.command_id} is not one of this device's"
                if state is None
                else f"command #{answer.command_id} was already {CommandState(state).label.lower()}"
                ": the answer came too late or twice",
            )
        )
    if done:
        # Answered before the publishing task marked it sent: it was sent all the same.
        Command.objects.filter(pk__in=done, sent_at__isnull=True).update(sent_at=F("answered_at"))
        _push_commands(list(Command.objects.filter(pk__in=done).select_related("device")))
    return refused


def expire_commands(now: datetime) -> int:
    """Pending commands past their deadline → timed out; returns how many."""
    with transaction.atomic():
        ids = list(
            Command.objects.overdue(now)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        count = Command.objects.filter(pk__in=ids, state__in=PENDING_COMMAND_STATES).update(
            state=CommandState.TIMED_OUT,
            answered_at=now,
            error="The device did not answer in time: check that it is online and "
            "subscribed to its commands topic (fleet/<key>/commands/+).",
        )
        _push_commands(list(Command.objects.filter(pk__in=ids).select_related("device")))
    return count


def _push_commands(commands: Sequence[Command]) -> None:
    by_tenant: dict[int, list[dict]] = defaultdict(list)
    for command in commands:
        by_tenant[command.tenant_id].append(
            {"id": command.pk, "device": command.device.key, "state": command.state}
        )
    live.push_many(
        (tenant_id, "commands.changed", {"commands": items})
        for tenant_id, items in by_tenant.items()
    )
