"""Every change of OTA state goes through here (docs/ota.md).

- Releases: `register_signing_key()`, `create_release()` (sha256 streamed on upload, signature
  verified against the tenant's keys, semantic version), `update_release()`, `delete_release()`.
- Rollouts: `preview_rollout()`, `create_rollout()`, `update_rollout()`, `delete_rollout()`,
  `start_rollout()`, `pause_rollout()`, `resume_rollout()`, `abort_rollout()`,
  `retry_failed()`, `roll_back()`.
- The engine: `advance_rollout()` (beat, and after device reports) times out silent devices,
  picks up new devices of the target, applies the failure threshold, the success threshold, the
  soak and the health gate, starts the next wave and sends jobs up to the concurrency limit,
  in the maintenance window, to online devices.
- Devices: `send_jobs()` publishes jobs (a Celery task, after commit); `record_device_reports()`
  takes the progress reports and firmware versions of an ingest batch.

State transitions are guarded by the state they leave (`filter(status=old).update(...)`), the
engine holds the rollout's row lock, and pushes (`rollouts.progress`, one per rollout per call)
and tasks go out after commit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from devices.models import Device, DeviceGroup, DeviceStatus, DeviceType, Tenant
from iotfleet.live import push_many

from . import signing as ed25519
from .models import (
    FAILURES,
    IN_FLIGHT,
    STEP,
    UNFINISHED,
    DeviceUpdate,
    FirmwareRelease,
    PauseReason,
    Rollout,
    RolloutStatus,
    RolloutWave,
    SigningKey,
    UpdateState,
    WaveMode,
)
from .versions import VersionError, is_downgrade, parse_release_version, same_version

log = logging.getLogger(__name__)

DOWNLOAD_SALT = "ota.download"
CHUNK = 1024 * 1024
CREATE_BATCH = 2000
PROGRESS_EVENT = "rollouts.progress"


class RolloutStateError(Exception):
    """The rollout's state does not allow what was asked (starting a running rollout...). The
    pages show `message`; the API answers 409 with it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- Signing keys and releases ------------------------------------------------------------------


def register_signing_key(tenant: Tenant, name: str, public_key: str) -> SigningKey:
    """Register a tenant's Ed25519 public key (PEM, base64 or hex). Raises ValidationError."""
    try:
        raw = ed25519.public_key_bytes(public_key)
    except ed25519.KeyFormatError as error:
        raise ValidationError({"public_key": str(error)}) from error
    fingerprint = ed25519.fingerprint(raw)
    if SigningKey.objects.filter(tenant=tenant, fingerprint=fingerprint).exists():
        raise ValidationError({"public_key": f"{tenant} already has this key ({fingerprint})."})
    if SigningKey.objects.filter(tenant=tenant, name=name).exists():
        raise ValidationError({"name": f"{tenant} already has a key named {name!r}."})
    return SigningKey.objects.create(
        tenant=tenant,
        name=name,
        public_key=ed25519.encode_public_key(raw),
        fingerprint=fingerprint,
    )


def hash_upload(file: UploadedFile) -> tuple[str, bytes, int]:
    """(hex digest, raw digest, size) of an upload, read in chunks: never whole in memory."""
    digest = hashlib.sha256()
    size = 0
    for chunk in file.chunks(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    file.seek(0)
    return digest.hexdigest(), digest.digest(), size


def _verify_signature(tenant: Tenant, signature: str, digest: bytes) -> SigningKey | None:
    """The active key of the tenant the signature verifies with; raises ValidationError when a
    signature is missing while the tenant has keys, or verifies with none of them."""
    keys = list(SigningKey.objects.filter(tenant=tenant, is_active=True))
    if not signature.strip():
        if keys:
            raise ValidationError(
                {
                    "signature": f"{tenant} signs its firmware ({len(keys)} active signing "
                    "key(s)): give the Ed25519 signature of the image's SHA-256."
                }
            )
        return None
    try:
        raw = ed25519.signature_bytes(signature)
    except ed25519.KeyFormatError as error:
        raise ValidationError({"signature": str(error)}) from error
    if not keys:
        raise ValidationError(
            {
                "signature": f"{tenant} has no active signing key to verify the signature with: "
                "register the public key first (Firmware → Signing keys)."
            }
        )
    for key in keys:
        if ed25519.verifies(key.public_key, raw, digest):
            return key
    fingerprints = ", ".join(key.fingerprint for key in keys)
    raise ValidationError(
        {
            "signature": "The signature does not verify with any of "
            f"{tenant}'s signing keys ({fingerprints}): the file was changed after signing, "
            "or it was signed with another key. Release refused."
        }
    )


def create_release(
    *,
    tenant: Tenant,
    version: str,
    file: UploadedFile,
    device_types: Iterable[DeviceType],
    notes: str = "",
    signature: str = "",
    expected_sha256: str = "",
    user: Any = None,
) -> FirmwareRelease:
    """Store a firmware release: semantic version, file through the storage API with its sha256
    computed on the way, signature verified. Raises ValidationError (by field) and stores
    nothing when anything is wrong."""
    errors: dict[str, str] = {}
    version = (version or "").strip()
    try:
        parse_release_version(version)
    except VersionError as error:
        errors["version"] = str(error)
    device_types = list(device_types)
    if not device_types:
        errors["device_types"] = "Name at least one device type the image runs on."
    elif any(t.tenant_id != tenant.pk for t in device_types):
        errors["device_types"] = "These device types belong to another tenant."
    if FirmwareRelease.objects.filter(tenant=tenant, version=version).exists():
        errors["version"] = f"{tenant} already has a release {version}: pick a new version."
    limit = settings.OTA_MAX_UPLOAD_BYTES
    if file is None:
        errors["file"] = "Choose the firmware image to upload."
    elif file.size is not None and file.size > limit:
        errors["file"] = f"The file is {file.size:,} bytes; the limit is {limit:,} bytes."
    elif file.size == 0:
        errors["file"] = "The file is empty."
    if errors:
        raise ValidationError(errors)
    sha256, digest, size = hash_upload(file)
    expected = "".join((expected_sha256 or "").split()).lower()
    if expected and expected != sha256:
        raise ValidationError(
            {
                "sha256": f"The uploaded file's SHA-256 is {sha256}, not {expected}: the upload "
                "is corrupt or not the file you meant. Release refused."
            }
        )
    key = _verify_signature(tenant, signature, digest)
    release = FirmwareRelease(
        tenant=tenant,
        version=version,
        file_name=(file.name or "firmware.bin").rsplit("/", 1)[-1][:200],
        size=size,
        sha256=sha256,
        signature=ed25519.encode_public_key(ed25519.signature_bytes(signature)) if key else "",
        signing_key=key,
        notes=notes,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    release.file.save(release.file_name, file, save=False)
    try:
        with transaction.atomic():
            release.save()
            release.device_types.set(device_types)
    except IntegrityError as error:
        release.file.delete(save=False)
        raise ValidationError(
            {"version": f"{tenant} already has a release {version}: pick a new version."}
        ) from error
    except Exception:
        release.file.delete(save=False)
        raise
    return release


def update_release(
    release: FirmwareRelease, *, notes: str | None = None, device_types: Iterable | None = None
) -> FirmwareRelease:
    """Change what may change once uploaded: the notes and the device types."""
    if device_types is not None:
        device_types = list(device_types)
        if not device_types:
            raise ValidationError({"device_types": "Name at least one device type."})
        if any(t.tenant_id != release.tenant_id for t in device_types):
            raise ValidationError({"device_types": "These device types belong to another tenant."})
    with transaction.atomic():
        if notes is not None:
            release.notes = notes
            release.save(update_fields=["notes"])
        if device_types is not None:
            release.device_types.set(device_types)
    return release


def delete_release(release: FirmwareRelease) -> None:
    """Delete a release and its file; a release some rollout uses is protected."""
    file = release.file
    release.delete()  # ProtectedError if a rollout uses it
    transaction.on_commit(lambda: file.delete(save=False), robust=True)


# --- Targets, waves and previews ----------------------------------------------------------------


@dataclass
class Target:
    """Which devices a rollout is for, saved or not (the wizard's preview)."""

    tenant: Tenant
    release: FirmwareRelease
    device_type: DeviceType | None = None
    groups: Sequence[DeviceGroup] = ()
    tags: Sequence[str] = ()
    device_ids: Sequence[int] | None = None
    allow_downgrade: bool = False

    @classmethod
    def of(cls, rollout: Rollout) -> Target:
        explicit = list(rollout.target_devices.values_list("pk", flat=True))
        return cls(
            tenant=rollout.tenant,
            release=rollout.release,
            device_type=rollout.device_type,
            groups=list(rollout.groups.all()),
            tags=list(rollout.tags),
            device_ids=explicit or None,
            allow_downgrade=rollout.allow_downgrade,
        )

    def devices(self) -> QuerySet:
        """Enabled devices of the tenant, of a type the release supports, matching the filters."""
        devices = Device.objects.filter(
            tenant=self.tenant,
            is_enabled=True,
            device_type__in=self.release.device_types.values("pk"),
        )
        if self.device_type is not None:
            devices = devices.filter(device_type=self.device_type)
        if self.groups:
            member = Device.groups.through.objects.filter(
                device_id=OuterRef("pk"), devicegroup_id__in=[g.pk for g in self.groups]
            )
            devices = devices.filter(Exists(member))
        tags = [tag for tag in self.tags if tag]
        if tags:
            devices = devices.filter(tags__contains=tags)
        if self.device_ids is not None:
            devices = devices.filter(pk__in=list(self.device_ids))
        return devices


@dataclass
class Preview:
    matching: int = 0
    already: int = 0  # running the release's version
    downgrades: int = 0  # running a newer version, left out without allow_downgrade
    busy: int = 0  # updating in another rollout
    eligible: list[tuple[int, str]] = field(default_factory=list)  # (device id, version)
    waves: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "matching": self.matching,
            "already_on_version": self.already,
            "downgrades_left_out": self.downgrades,
            "busy_in_other_rollouts": self.busy,
            "devices": len(self.eligible),
            "waves": self.waves,
        }


def plan_waves(mode: str, plan: Sequence[int], total: int) -> list[int]:
    """Wave sizes for `total` devices. Percentages are cumulative shares of the target (1, 10,
    50, 100 → 1 %, then up to 10 %...); counts are wave sizes, the last wave taking the rest.
    Empty waves are dropped."""
    sizes: list[int] = []
    if total <= 0 or not plan:
        return sizes
    if mode == WaveMode.PERCENT:
        done = 0
        for share in plan:
            upto = min(total, math.ceil(total * share / 100))
            if upto > done:
                sizes.append(upto - done)
                done = upto
        if done < total:
            sizes.append(total - done)
        return sizes
    left = total
    for number, size in enumerate(plan, 1):
        take = left if number == len(plan) else min(size, left)
        if take > 0:
            sizes.append(take)
            left -= take
        if left == 0:
            break
    return sizes


def check_wave_plan(mode: str, plan: Sequence[int]) -> None:
    if not plan:
        raise ValidationError({"wave_plan": "Give at least one wave, e.g. 1, 10, 50, 100."})
    if mode == WaveMode.PERCENT:
        if any(not 0 < share <= 100 for share in plan):
            raise ValidationError({"wave_plan": "Percentages lie between 1 and 100."})
        if any(b <= a for a, b in itertools.pairwise(plan)):
            raise ValidationError(
                {"wave_plan": "Percentages are cumulative, so each is above the one before."}
            )
        if plan[-1] != 100:
            raise ValidationError({"wave_plan": "The last wave must reach 100 %."})
    elif any(size < 1 for size in plan):
        raise ValidationError({"wave_plan": "Each wave holds at least one device."})


def _classify(target: Target, rollout: Rollout | None = None) -> Preview:
    preview = Preview()
    version = target.release.version
    rows = list(target.devices().order_by("pk").values_list("pk", "firmware_version"))
    preview.matching = len(rows)
    busy_elsewhere = DeviceUpdate.objects.filter(
        device_id__in=[pk for pk, _ in rows], state__in=UNFINISHED
    )
    if rollout is not None:
        busy_elsewhere = busy_elsewhere.exclude(rollout=rollout)
    busy = set(busy_elsewhere.values_list("device_id", flat=True))
    # A rollback names its devices: one that failed mid-update gets the known-good image again
    # even if it still reports that version.
    reinstall = target.device_ids is not None
    for pk, running in rows:
        if same_version(running, version) and not reinstall:
            preview.already += 1
        elif not target.allow_downgrade and is_downgrade(running, version):
            preview.downgrades += 1
        elif pk in busy:
            preview.busy += 1
        else:
            preview.eligible.append((pk, running))
    return preview


def preview_rollout(target: Target, mode: str, plan: Sequence[int]) -> Preview:
    """How many devices match and how many each wave would hold, if it started now."""
    preview = _classify(target)
    preview.waves = plan_waves(mode, plan, len(preview.eligible))
    return preview


# --- Rollouts: create and edit drafts -----------------------------------------------------------

ROLLOUT_SETTINGS = (
    "name",
    "device_type",
    "tags",
    "wave_mode",
    "wave_plan",
    "soak_time",
    "success_threshold",
    "failure_threshold",
    "min_finished",
    "max_concurrent",
    "update_timeout",
    "window_start",
    "window_end",
    "allow_downgrade",
    "health_gate",
)


def _check_rollout(rollout: Rollout, groups: Sequence[DeviceGroup]) -> None:
    errors: dict[str, Any] = {}
    try:
        rollout.full_clean(exclude=["tenant", "release", "device_type", "created_by"])
    except ValidationError as error:
        errors.update(error.message_dict)
    if rollout.release.tenant_id != rollout.tenant_id:
        errors["release"] = "The release belongs to another tenant."
    if rollout.device_type is not None:
        if rollout.device_type.tenant_id != rollout.tenant_id:
            errors["device_type"] = "The device type belongs to another tenant."
        elif not rollout.release.device_types.filter(pk=rollout.device_type_id).exists():
            errors["device_type"] = (
                f"Release {rollout.release.version} is not for {rollout.device_type.name} "
                "devices: pick one of its device types."
            )
    if any(group.tenant_id != rollout.tenant_id for group in groups):
        errors["groups"] = "These groups belong to another tenant."
    try:
        check_wave_plan(rollout.wave_mode, rollout.wave_plan)
    except ValidationError as error:
        errors.update(error.message_dict)
    if (rollout.window_start is None) != (rollout.window_end is None):
        errors["window_end"] = "Give both ends of the maintenance window, or neither."
    elif rollout.window_start is not None and rollout.window_start == rollout.window_end:
        errors["window_end"] = "The maintenance window is empty: its start equals its end."
    if rollout.soak_time is not None and rollout.soak_time.total_seconds() < 0:
        errors["soak_time"] = "The soak time cannot be negative."
    if rollout.update_timeout is not None and rollout.update_timeout.total_seconds() <= 0:
        errors["update_timeout"] = "The update timeout must be positive."
    rollout.tags = [tag.strip() for tag in rollout.tags if tag.strip()]
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def create_rollout(
    *,
    tenant: Tenant,
    release: FirmwareRelease,
    groups: Sequence[DeviceGroup] = (),
    target_devices: Sequence[Device] = (),
    user: Any = None,
    **fields: Any,
) -> Rollout:
    """A draft rollout (nothing is sent until `start_rollout`). Raises ValidationError."""
    unknown = set(fields) - set(ROLLOUT_SETTINGS) - {"rollback_of"}
    if unknown:
        raise TypeError(f"create_rollout() does not take {', '.join(sorted(unknown))}.")
    rollout = Rollout(
        tenant=tenant,
        release=release,
        created_by=user if getattr(user, "is_authenticated", False) else None,
        **fields,
    )
    if not rollout.name:
        rollout.name = f"{release.version} rollout"
    _check_rollout(rollout, groups)
    rollout.save()
    rollout.groups.set(groups)
    if target_devices:
        rollout.target_devices.set(target_devices)
    return rollout


@transaction.atomic
def update_rollout(
    rollout: Rollout, *, groups: Sequence[DeviceGroup] | None = None, **fields: Any
) -> Rollout:
    """Change a draft's settings; a started rollout's are fixed (RolloutStateError)."""
    locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
    if locked.status != RolloutStatus.DRAFT:
        raise RolloutStateError(
            f"The rollout is {locked.get_status_display().lower()}: only a draft can be edited. "
            "Abort it and create a new one."
        )
    release = fields.pop("release", None)
    if release is not None:
        rollout.release = release
    unknown = set(fields) - set(ROLLOUT_SETTINGS)
    if unknown:
        raise TypeError(f"update_rollout() does not take {', '.join(sorted(unknown))}.")
    for name, value in fields.items():
        setattr(rollout, name, value)
    groups = list(rollout.groups.all()) if groups is None else list(groups)
    _check_rollout(rollout, groups)
    rollout.save()
    rollout.groups.set(groups)
    return rollout


def delete_rollout(rollout: Rollout) -> None:
    """Only a draft can be deleted; a started rollout is history (abort it instead)."""
    with transaction.atomic():
        deleted, _ = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.DRAFT).delete()
    if not deleted:
        raise RolloutStateError(
            "Only a draft rollout can be deleted: a started one stays as the record of what "
            "was sent. Abort it instead."
        )


# --- Rollouts: operators' actions ---------------------------------------------------------------


def _order_key(rollout: Rollout, device_id: int) -> str:
    # A stable pseudo-random order per rollout, so each wave is a fair sample of the target
    # (not the oldest devices first), which the health gate's comparison relies on.
    return hashlib.sha256(f"{rollout.pk}:{device_id}".encode()).hexdigest()


def start_rollout(rollout: Rollout, user: Any = None, now: datetime | None = None) -> Rollout:
    """Draft → running: split the eligible devices into waves, queue them, start wave 1 and
    send its first jobs. Raises RolloutStateError (not a draft, or no device to update)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
        if locked.status != RolloutStatus.DRAFT:
            raise RolloutStateError(
                f"The rollout is already {locked.get_status_display().lower()}."
            )
        preview = _classify(Target.of(locked), locked)
        devices = sorted(preview.eligible, key=lambda row: _order_key(locked, row[0]))
        sizes = plan_waves(locked.wave_mode, locked.wave_plan, len(devices))
        if not sizes:
            raise RolloutStateError(
                f"No device to update: {preview.matching} match the target, "
                f"{preview.already} already run {locked.release.version}, "
                f"{preview.downgrades} run a newer version, {preview.busy} are updating in "
                "another rollout."
            )
        RolloutWave.objects.bulk_create(
            RolloutWave(
                rollout=locked, number=n, planned_size=size, started_at=now if n == 1 else None
            )
            for n, size in enumerate(sizes, 1)
        )
        updates = []
        position = 0
        for number, size in enumerate(sizes, 1):
            for device_id, running in devices[position : position + size]:
                updates.append(
                    DeviceUpdate(
                        rollout=locked,
                        device_id=device_id,
                        wave=number,
                        from_version=running or "",
                        queued_at=now,
                    )
                )
            position += size
        DeviceUpdate.objects.bulk_create(updates, batch_size=CREATE_BATCH, ignore_conflicts=True)
        Rollout.objects.filter(pk=locked.pk).update(
            status=RolloutStatus.RUNNING, current_wave=1, started_at=now, updated_at=now
        )
    advance_rollout(rollout.pk, now)
    rollout.refresh_from_db()
    return rollout


def pause_rollout(rollout: Rollout, user: Any = None, now: datetime | None = None) -> Rollout:
    """Running → paused by an operator: no new job is sent; devices already updating finish."""
    now = now or timezone.now()
    who = getattr(user, "username", "") or "an operator"
    changed = _pause(rollout.pk, PauseReason.OPERATOR, f"Paused by {who}.", {}, now)
    if not changed:
        rollout.refresh_from_db()
        raise RolloutStateError(
            f"Only a running rollout can be paused; this one is "
            f"{rollout.get_status_display().lower()}."
        )
    rollout.refresh_from_db()
    return rollout


def _pause(rollout_id: int, reason: str, detail: str, evidence: dict, now: datetime) -> bool:
    with transaction.atomic():
        changed = Rollout.objects.filter(pk=rollout_id, status=RolloutStatus.RUNNING).update(
            status=RolloutStatus.PAUSED,
            pause_reason=reason,
            pause_detail=detail,
            evidence=evidence,
            paused_at=now,
            updated_at=now,
        )
        if changed:
            log.info("rollout %s paused: %s", rollout_id, detail)
            _push([rollout_id])
    return bool(changed)


def resume_rollout(rollout: Rollout, user: Any = None, now: datetime | None = None) -> Rollout:
    """Paused → running. What made it pause is accepted for the current wave: failures so far no
    longer count against the failure threshold (new ones do), and a wave held back by its success
    threshold or the health gate is let through by the operator."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
        if locked.status != RolloutStatus.PAUSED:
            raise RolloutStateError(
                f"Only a paused rollout can be resumed; this one is "
                f"{locked.get_status_display().lower()}."
            )
        wave = locked.current_wave_row()
        if wave is not None:
            counts = _wave_counts(locked).get(wave.number, Counter())
            wave.accepted_failures = sum(counts[s] for s in FAILURES)
            wave.accepted_finished = wave.accepted_failures + counts[UpdateState.SUCCEEDED]
            if locked.pause_reason in (PauseReason.SUCCESS_THRESHOLD, PauseReason.HEALTH_GATE):
                wave.overridden = True
            wave.save(update_fields=["accepted_failures", "accepted_finished", "overridden"])
        Rollout.objects.filter(pk=locked.pk).update(
            status=RolloutStatus.RUNNING, pause_reason="", pause_detail="", updated_at=now
        )
    advance_rollout(rollout.pk, now)
    rollout.refresh_from_db()
    return rollout


def abort_rollout(rollout: Rollout, user: Any = None, now: datetime | None = None) -> Rollout:
    """Running or paused → aborted: devices not sent their job yet are cancelled; those already
    updating finish on their own, and their reports are still recorded."""
    now = now or timezone.now()
    with transaction.atomic():
        changed = Rollout.objects.filter(
            pk=rollout.pk, status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED]
        ).update(status=RolloutStatus.ABORTED, finished_at=now, updated_at=now)
        if not changed:
            rollout.refresh_from_db()
            raise RolloutStateError(
                f"Only a running or paused rollout can be aborted; this one is "
                f"{rollout.get_status_display().lower()}."
            )
        DeviceUpdate.objects.filter(rollout_id=rollout.pk, state=UpdateState.QUEUED).update(
            state=UpdateState.CANCELLED, finished_at=now, reason="The rollout was aborted."
        )
        _push([rollout.pk])
    rollout.refresh_from_db()
    return rollout


def retry_failed(
    rollout: Rollout, wave: int | None = None, user: Any = None, now: datetime | None = None
) -> int:
    """Queue a wave's (or every wave's) failed and timed-out devices again; a completed rollout
    runs again for them. Returns how many were queued."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
        if locked.status not in (
            RolloutStatus.RUNNING,
            RolloutStatus.PAUSED,
            RolloutStatus.COMPLETED,
        ):
            raise RolloutStateError(
                f"Failed devices of a {locked.get_status_display().lower()} rollout cannot be "
                "retried."
            )
        failed = DeviceUpdate.objects.filter(rollout=locked, state__in=FAILURES)
        if wave is not None:
            failed = failed.filter(wave=wave)
        # A device that joined another rollout meanwhile stays failed here.
        busy = DeviceUpdate.objects.filter(state__in=UNFINISHED).exclude(rollout=locked)
        failed = failed.exclude(device_id__in=busy.values("device_id"))
        queued = failed.update(
            state=UpdateState.QUEUED, progress=0, queued_at=now, finished_at=None, sent_at=None
        )
        if not queued:
            raise RolloutStateError("No failed or timed-out device to retry.")
        if locked.status == RolloutStatus.COMPLETED:
            Rollout.objects.filter(pk=locked.pk).update(
                status=RolloutStatus.RUNNING, finished_at=None, updated_at=now
            )
        _push([locked.pk])
    advance_rollout(rollout.pk, now)
    return queued


@dataclass
class RollbackPlan:
    release: FirmwareRelease | None
    devices: list[int]
    versions: Counter


def rollback_plan(rollout: Rollout, include_updated: bool = True) -> RollbackPlan:
    """What a rollback would do: the devices that failed (and, with include_updated, those that
    succeeded) go back to the version most of them ran before, if the tenant has that release."""
    states = [*FAILURES, UpdateState.SUCCEEDED] if include_updated else list(FAILURES)
    rows = list(
        DeviceUpdate.objects.filter(rollout=rollout, state__in=states).values_list(
            "device_id", "from_version"
        )
    )
    versions = Counter(version for _, version in rows if version)
    release = None
    for version, _ in versions.most_common():
        release = FirmwareRelease.objects.filter(tenant=rollout.tenant_id, version=version).first()
        if release is not None:
            break
    return RollbackPlan(release, [device_id for device_id, _ in rows], versions)


def roll_back(
    rollout: Rollout,
    user: Any = None,
    *,
    release: FirmwareRelease | None = None,
    include_updated: bool = True,
    allow_downgrade: bool = False,
    now: datetime | None = None,
) -> Rollout:
    """Roll the devices that failed (and were updated) back to the previous version: a new
    rollout of that release to exactly those devices, in one wave, started at once. The original
    rollout is aborted if it still runs. Going back is a downgrade, so `allow_downgrade` must be
    given (the operator's explicit consent). Raises RolloutStateError or ValidationError."""
    now = now or timezone.now()
    if rollout.status == RolloutStatus.DRAFT:
        raise RolloutStateError("A draft sent nothing: there is nothing to roll back.")
    plan = rollback_plan(rollout, include_updated)
    release = release or plan.release
    if not plan.devices:
        raise RolloutStateError("No device of this rollout failed or was updated.")
    if release is None:
        raise RolloutStateError(
            "The devices' previous version has no release in this tenant "
            f"({', '.join(plan.versions) or 'unknown'}): upload it, then roll back."
        )
    if release.pk == rollout.release_id:
        raise ValidationError({"release": "Roll back to another release than this rollout's."})
    if not allow_downgrade:
        raise ValidationError(
            {
                "allow_downgrade": f"Rolling back from {rollout.release.version} to "
                f"{release.version} installs an older version: confirm by allowing the downgrade."
            }
        )
    with transaction.atomic():
        if rollout.status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
            abort_rollout(rollout, user, now)
        rollback = create_rollout(
            tenant=rollout.tenant,
            release=release,
            user=user,
            name=f"Roll back {rollout.name} to {release.version}",
            rollback_of=rollout,
            target_devices=list(Device.objects.filter(pk__in=plan.devices)),
            wave_mode=WaveMode.PERCENT,
            wave_plan=[100],
            soak_time=timedelta(0),
            success_threshold=rollout.success_threshold,
            failure_threshold=100,
            min_finished=rollout.min_finished,
            max_concurrent=rollout.max_concurrent,
            update_timeout=rollout.update_timeout,
            allow_downgrade=True,
            health_gate=False,
        )
    return start_rollout(rollback, user, now)


# --- The engine ---------------------------------------------------------------------------------


def _wave_counts(rollout: Rollout) -> dict[int, Counter]:
    counts: dict[int, Counter] = defaultdict(Counter)
    for wave, state, n in (
        DeviceUpdate.objects.filter(rollout=rollout)
        .values_list("wave", "state")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        counts[wave][state] = n
    return counts


@dataclass
class Advance:
    """One step of a running rollout's engine, under its row lock."""

    rollout: Rollout
    now: datetime
    dispatched: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    picked_up: int = 0
    outcome: str = ""
    wave_started: bool = False

    @property
    def changed(self) -> bool:
        return bool(
            self.dispatched
            or self.timed_out
            or self.picked_up
            or self.wave_started
            or self.outcome not in ("", "running")
        )

    def run(self) -> str:
        self.time_out()
        if not self.rollout.target_devices.exists():
            self.pick_up()
        waves = {w.number: w for w in self.rollout.waves.all()}
        counts = _wave_counts(self.rollout)
        wave = waves.get(self.rollout.current_wave)
        if wave is None:
            return self.finish("no waves")
        if self.failure_threshold_crossed(wave, counts[wave.number]):
            return self.outcome
        last = wave.number == max(waves)
        if self.gate(wave, counts, last, waves):
            return self.outcome
        self.dispatch()
        return self.outcome or "running"

    # Timeouts: silent devices, and their offline alerts.
    def time_out(self) -> None:
        deadline = self.now - self.rollout.update_timeout
        silent = DeviceUpdate.objects.filter(rollout=self.rollout, state__in=IN_FLIGHT).filter(
            Q(reported_at__lt=deadline) | Q(reported_at__isnull=True, sent_at__lt=deadline)
        )
        rows = list(silent.values_list("pk", "device_id", "state"))
        if not rows:
            return
        minutes = round(self.rollout.update_timeout.total_seconds() / 60)
        for state in {state for _, _, state in rows}:
            DeviceUpdate.objects.filter(
                pk__in=[pk for pk, _, s in rows if s == state], state=state
            ).update(
                state=UpdateState.TIMED_OUT,
                finished_at=self.now,
                reason=f"No report for {minutes} min (last step: {UpdateState(state).label}).",
            )
        self.timed_out = [device_id for _, device_id, _ in rows]
        # Their update window is over: one that has not come back now raises its offline alert.
        offline = list(
            Device.objects.filter(pk__in=self.timed_out, status=DeviceStatus.OFFLINE).values_list(
                "pk", flat=True
            )
        )
        if offline:
            from alerts.services import devices_went_offline

            with transaction.atomic():
                devices_went_offline(offline, self.now)

    # New devices matching the target join the last wave.
    def pick_up(self) -> None:
        target = Target.of(self.rollout)
        known = DeviceUpdate.objects.filter(rollout=self.rollout).values("device_id")
        candidates = list(
            target.devices()
            .exclude(pk__in=known)
            .exclude(pk__in=DeviceUpdate.objects.filter(state__in=UNFINISHED).values("device_id"))
            .values_list("pk", "firmware_version")
        )
        version = self.rollout.release.version
        fresh = [
            (pk, running)
            for pk, running in candidates
            if not same_version(running, version)
            and (self.rollout.allow_downgrade or not is_downgrade(running, version))
        ]
        if not fresh:
            return
        last = self.rollout.waves.order_by("-number").first()
        created = DeviceUpdate.objects.bulk_create(
            [
                DeviceUpdate(
                    rollout=self.rollout,
                    device_id=pk,
                    wave=last.number,
                    from_version=running or "",
                    queued_at=self.now,
                )
                for pk, running in fresh
            ],
            batch_size=CREATE_BATCH,
            ignore_conflicts=True,
        )
        self.picked_up = len(created)
        log.info("rollout %s picked up %d new devices", self.rollout.pk, len(created))

    def failure_threshold_crossed(self, wave: RolloutWave, counts: Counter) -> bool:
        failures_all = sum(counts[s] for s in FAILURES)
        finished_all = failures_all + counts[UpdateState.SUCCEEDED]
        failures = max(0, failures_all - wave.accepted_failures)
        finished = max(0, finished_all - wave.accepted_finished)
        size = sum(counts.values()) - counts[UpdateState.CANCELLED]
        needed = max(1, min(self.rollout.min_finished, size - wave.accepted_finished))
        if finished < needed or failures * 100 <= self.rollout.failure_threshold * finished:
            return False
        evidence = {
            "wave": wave.number,
            "failed": counts[UpdateState.FAILED],
            "timed_out": counts[UpdateState.TIMED_OUT],
            "finished": finished_all,
            "counted_failures": failures,
            "counted_finished": finished,
            "failure_threshold": self.rollout.failure_threshold,
            "min_finished": self.rollout.min_finished,
            "reasons": _top_reasons(self.rollout, wave.number),
        }
        detail = (
            f"Wave {wave.number}: {failures} of {finished} finished devices failed "
            f"({failures / finished:.0%}), above the {self.rollout.failure_threshold} % failure "
            "threshold."
        )
        _pause(self.rollout.pk, PauseReason.FAILURE_THRESHOLD, detail, evidence, self.now)
        self.outcome = "paused: failure threshold"
        return True

    def gate(self, wave: RolloutWave, counts: dict[int, Counter], last: bool, waves: dict) -> bool:
        """Success threshold, soak and health gate; starts the next wave or completes. True when
        the rollout stopped running (paused or completed)."""
        mine = counts[wave.number]
        size = sum(mine.values()) - mine[UpdateState.CANCELLED]
        succeeded = mine[UpdateState.SUCCEEDED]
        reached = size > 0 and succeeded * 100 >= self.rollout.success_threshold * size
        if (reached or wave.overridden) and wave.reached_at is None:
            wave.reached_at = self.now
            wave.save(update_fields=["reached_at"])
        if last:
            unfinished = sum(c[s] for c in counts.values() for s in UNFINISHED)
            if unfinished == 0 and (reached or wave.overridden):
                return self.finish("completed")
            if not (reached or wave.overridden) and self.stuck(wave, mine):
                return self.success_short(wave, succeeded, size)
            return False
        if not (reached or wave.overridden):
            if self.stuck(wave, mine):
                return self.success_short(wave, succeeded, size)
            return False
        if not wave.overridden and self.now < wave.reached_at + self.rollout.soak_time:
            return False
        if self.rollout.health_gate and not wave.overridden:
            from .health import check_wave

            verdict = check_wave(self.rollout, wave, self.now)
            wave.health = verdict
            wave.save(update_fields=["health"])
            if verdict["worse"]:
                _pause(
                    self.rollout.pk, PauseReason.HEALTH_GATE, verdict["summary"], verdict, self.now
                )
                self.outcome = "paused: health gate"
                return True
        wave.passed_at = self.now
        wave.save(update_fields=["passed_at"])
        following = waves[wave.number + 1]
        following.started_at = self.now
        following.save(update_fields=["started_at"])
        Rollout.objects.filter(pk=self.rollout.pk).update(
            current_wave=following.number, updated_at=self.now
        )
        self.rollout.current_wave = following.number
        self.wave_started = True
        log.info("rollout %s: wave %d started", self.rollout.pk, following.number)
        return False

    def stuck(self, wave: RolloutWave, mine: Counter) -> bool:
        """Nothing of the wave is updating and no queued device of it could be sent a job."""
        if any(mine[s] for s in IN_FLIGHT):
            return False
        return not DeviceUpdate.objects.filter(
            rollout=self.rollout,
            wave=wave.number,
            state=UpdateState.QUEUED,
            device__status=DeviceStatus.ONLINE,
        ).exists()

    def success_short(self, wave: RolloutWave, succeeded: int, size: int) -> bool:
        mine_failed = DeviceUpdate.objects.filter(
            rollout=self.rollout, wave=wave.number, state__in=FAILURES
        ).count()
        waiting = DeviceUpdate.objects.filter(
            rollout=self.rollout, wave=wave.number, state=UpdateState.QUEUED
        ).count()
        detail = (
            f"Wave {wave.number} is done with {succeeded} of {size} devices updated "
            f"({succeeded / size:.0%}), below the {self.rollout.success_threshold} % success "
            f"threshold ({mine_failed} failed, {waiting} offline and waiting). Retry the failed "
            "devices, or resume to go on anyway."
        )
        evidence = {
            "wave": wave.number,
            "succeeded": succeeded,
            "size": size,
            "failed": mine_failed,
            "waiting_offline": waiting,
            "success_threshold": self.rollout.success_threshold,
            "reasons": _top_reasons(self.rollout, wave.number),
        }
        _pause(self.rollout.pk, PauseReason.SUCCESS_THRESHOLD, detail, evidence, self.now)
        self.outcome = "paused: success threshold"
        return True

    def finish(self, why: str) -> str:
        Rollout.objects.filter(pk=self.rollout.pk, status=RolloutStatus.RUNNING).update(
            status=RolloutStatus.COMPLETED, finished_at=self.now, updated_at=self.now
        )
        self.outcome = why
        log.info("rollout %s completed", self.rollout.pk)
        return why

    def dispatch(self) -> None:
        """Send jobs to queued online devices of the started waves, up to the concurrency limit,
        in the maintenance window."""
        if not self.rollout.in_window(self.now):
            return
        in_flight = DeviceUpdate.objects.filter(rollout=self.rollout, state__in=IN_FLIGHT).count()
        room = self.rollout.max_concurrent - in_flight
        if room <= 0:
            return
        ids = list(
            DeviceUpdate.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                rollout=self.rollout,
                state=UpdateState.QUEUED,
                wave__lte=self.rollout.current_wave,
                device__status=DeviceStatus.ONLINE,
            )
            .order_by("wave", "pk")
            .values_list("pk", flat=True)[:room]
        )
        if not ids:
            return
        DeviceUpdate.objects.filter(pk__in=ids, state=UpdateState.QUEUED).update(
            state=UpdateState.SENT,
            sent_at=self.now,
            reported_at=None,
            progress=0,
            reason="",
            attempts=F("attempts") + 1,
        )
        self.dispatched = ids
        transaction.on_commit(lambda: _queue_jobs(ids), robust=True)


def _queue_jobs(update_ids: list[int]) -> None:
    from .tasks import send_jobs_task

    send_jobs_task.delay(update_ids)


def _top_reasons(rollout: Rollout, wave: int | None = None, limit: int = 5) -> list[dict]:
    failed = DeviceUpdate.objects.filter(rollout=rollout, state__in=FAILURES)
    if wave is not None:
        failed = failed.filter(wave=wave)
    return [
        {"reason": reason, "devices": n}
        for reason, n in failed.values_list("reason")
        .annotate(n=Count("pk"))
        .order_by("-n", "reason")[:limit]
    ]


def advance_rollout(rollout_id: int, now: datetime | None = None) -> str:
    """One step of a running rollout (see `Advance`); a rollout another worker is advancing
    right now is skipped. Returns what happened, for logs and tests."""
    now = now or timezone.now()
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(skip_locked=True)
            .select_related("release", "tenant")
            .filter(pk=rollout_id)
            .first()
        )
        if rollout is None:
            return "busy"
        if rollout.status != RolloutStatus.RUNNING:
            return rollout.status
        step = Advance(rollout, now)
        outcome = step.run()
        if step.changed:
            _push([rollout.pk])  # a beat that changed nothing sends nothing
    return outcome


def advance_rollouts(now: datetime | None = None) -> dict[int, str]:
    """Advance every running rollout (beat)."""
    now = now or timezone.now()
    ids = list(Rollout.objects.filter(status=RolloutStatus.RUNNING).values_list("pk", flat=True))
    return {rollout_id: advance_rollout(rollout_id, now) for rollout_id in ids}


# --- Talking to devices -------------------------------------------------------------------------


def download_token(update_id: int) -> str:
    return signing.dumps({"u": update_id}, salt=DOWNLOAD_SALT, compress=True)


def read_download_token(token: str) -> int:
    """The update a download URL was made for; raises signing.BadSignature (or its subclass
    SignatureExpired past OTA_DOWNLOAD_URL_SECONDS)."""
    data = signing.loads(token, salt=DOWNLOAD_SALT, max_age=settings.OTA_DOWNLOAD_URL_SECONDS)
    return int(data["u"])


def download_url(update_id: int) -> str:
    path = reverse("ota:download", kwargs={"token": download_token(update_id)})
    return settings.OTA_DOWNLOAD_BASE_URL + path


def send_jobs(update_ids: Sequence[int]) -> int:
    """Publish the jobs of these updates (still `sent`) on fleet/{key}/ota over one connection.
    If the broker cannot take them, they go back to the queue (the next advance retries) and
    the rollout shows why. Returns how many were published."""
    from devices.publishing import Outgoing, PublishError, publish

    from .protocol import job_payload

    updates = list(
        DeviceUpdate.objects.filter(pk__in=list(update_ids), state=UpdateState.SENT).select_related(
            "device", "rollout__release__signing_key"
        )
    )
    if not updates:
        return 0
    messages = []
    for update in updates:
        release = update.rollout.release
        messages.append(
            Outgoing(
                topic=f"fleet/{update.device.key}/ota",
                payload=job_payload(
                    job=update.pk,
                    rollout=update.rollout_id,
                    version=release.version,
                    url=download_url(update.pk),
                    size=release.size,
                    sha256=release.sha256,
                    signature=release.signature,
                    key=release.signing_key.fingerprint if release.signing_key else None,
                ),
            )
        )
    rollout_ids = sorted({update.rollout_id for update in updates})
    try:
        sent = publish(messages)
    except PublishError as error:
        with transaction.atomic():
            DeviceUpdate.objects.filter(
                pk__in=[u.pk for u in updates], state=UpdateState.SENT, reported_at__isnull=True
            ).update(state=UpdateState.QUEUED, sent_at=None, attempts=F("attempts") - 1)
            stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S UTC")
            Rollout.objects.filter(pk__in=rollout_ids).update(
                last_error=f"{stamp}: jobs not sent, retrying: {error}"
            )
            _push(rollout_ids)
        log.warning("OTA jobs of rollouts %s not sent: %s", rollout_ids, error)
        return 0
    Rollout.objects.filter(pk__in=rollout_ids).exclude(last_error="").update(last_error="")
    return sent


@dataclass(frozen=True)
class Report:
    """One progress report of a device, as ingest validated it (ota.protocol)."""

    device_id: int
    received_ms: int
    body: dict


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def record_device_reports(reports: Sequence[Report], versions: dict[int, str]) -> set[int]:
    """Take an ingest batch's OTA reports and the firmware versions devices reported (status or
    shadow): keep Device.firmware_version current, move updates forward, count a device that
    runs the release's version as succeeded. Returns the rollouts touched; after commit, one
    progress push per rollout and an advance of the running ones."""
    touched: set[int] = set()
    changed_versions = _store_versions(versions)
    device_ids = {r.device_id for r in reports} | set(changed_versions)
    if not device_ids:
        return touched
    candidates = (
        DeviceUpdate.objects.select_for_update(of=("self",))
        .filter(device_id__in=device_ids)
        .filter(
            Q(state__in=IN_FLIGHT)
            | Q(
                state__in=FAILURES,
                rollout__status__in=[
                    RolloutStatus.RUNNING,
                    RolloutStatus.PAUSED,
                    RolloutStatus.COMPLETED,
                ],
            )
        )
        .select_related("rollout__release")
        .order_by("device_id", "-queued_at", "-pk")
    )
    by_device: dict[int, list[DeviceUpdate]] = defaultdict(list)
    for update in candidates:
        by_device[update.device_id].append(update)
    dirty: dict[int, DeviceUpdate] = {}
    succeeded_versions: dict[int, str] = {}
    for report in sorted(reports, key=lambda r: (r.device_id, r.received_ms)):
        update = _update_for(by_device.get(report.device_id, []), report.body.get("job"))
        if update is not None and _apply(update, report):
            dirty[update.pk] = update
            if update.state == UpdateState.SUCCEEDED:
                succeeded_versions[update.device_id] = update.rollout.release.version
    for device_id, version in changed_versions.items():
        for update in by_device.get(device_id, []):
            if update.state != UpdateState.SUCCEEDED and same_version(
                version, update.rollout.release.version
            ):
                update.state = UpdateState.SUCCEEDED
                update.progress = 100
                update.reason = ""
                update.finished_at = update.reported_at = timezone.now()
                dirty[update.pk] = update
    if dirty:
        DeviceUpdate.objects.bulk_update(
            dirty.values(), ["state", "progress", "reason", "reported_at", "finished_at"]
        )
        touched = {update.rollout_id for update in dirty.values()}
    missing = {d: v for d, v in succeeded_versions.items() if d not in changed_versions}
    if missing:
        _store_versions(missing)
    if touched:
        _push(sorted(touched))
        running = list(
            Rollout.objects.filter(pk__in=touched, status=RolloutStatus.RUNNING).values_list(
                "pk", flat=True
            )
        )
        if running:
            transaction.on_commit(lambda: _queue_advance(running), robust=True)
    return touched


def _queue_advance(rollout_ids: list[int]) -> None:
    from .tasks import advance_rollout_task

    for rollout_id in rollout_ids:
        advance_rollout_task.delay(rollout_id)


def _store_versions(versions: dict[int, str]) -> dict[int, str]:
    """Set Device.firmware_version where it changed; returns those that changed."""
    if not versions:
        return {}
    current = dict(
        Device.objects.filter(pk__in=list(versions)).values_list("pk", "firmware_version")
    )
    changed = {pk: v for pk, v in versions.items() if pk in current and current[pk] != v}
    if changed:
        devices = [Device(pk=pk, firmware_version=v) for pk, v in changed.items()]
        Device.objects.bulk_update(devices, ["firmware_version"])
    return changed


def _update_for(updates: list[DeviceUpdate], job: int | None) -> DeviceUpdate | None:
    if job is not None:
        return next((u for u in updates if u.pk == job), None)
    return next(iter(updates), None)


def _apply(update: DeviceUpdate, report: Report) -> bool:
    """Move `update` on by one report; whether it changed. Steps only go forward; a failed
    update can still succeed (the device retried), a timed-out one anything (it came back)."""
    body = report.body
    state = body["state"]
    at = _from_ms(report.received_ms)
    release_version = update.rollout.release.version
    if update.state == UpdateState.SUCCEEDED:
        return False
    if update.state == UpdateState.FAILED and state != UpdateState.SUCCEEDED:
        return False
    update.reported_at = at
    if state in (UpdateState.DOWNLOADING, UpdateState.INSTALLING):
        current = STEP.get(update.state, 0)
        if update.state in IN_FLIGHT and STEP[state] < current:
            return True  # a late report of an earlier step: only the time counts
        if state == update.state and body.get("progress") is not None:
            update.progress = max(update.progress, body["progress"])
        else:
            update.progress = body.get("progress") or 0
        update.state = state
        update.finished_at = None
        return True
    if state == UpdateState.SUCCEEDED:
        version = body.get("version")
        if version and not same_version(version, release_version):
            update.state = UpdateState.FAILED
            update.reason = (
                f"The device reported success but runs {version}, not {release_version}."
            )
        else:
            update.state = UpdateState.SUCCEEDED
            update.progress = 100
            update.reason = ""
        update.finished_at = at
        return True
    update.state = UpdateState.FAILED
    update.reason = body.get("reason") or "failed"
    update.finished_at = at
    return True


# --- Progress -----------------------------------------------------------------------------------


def rollout_progress(rollout: Rollout) -> dict:
    """Counts per wave and per state, for the page, the API and the live push."""
    counts = _wave_counts(rollout)
    waves = []
    for wave in rollout.waves.all():
        mine = counts.get(wave.number, Counter())
        waves.append(
            {
                "number": wave.number,
                "size": sum(mine.values()),
                "counts": {state: mine[state] for state in UpdateState.values},
                "started_at": wave.started_at.isoformat() if wave.started_at else None,
                "reached_at": wave.reached_at.isoformat() if wave.reached_at else None,
                "passed_at": wave.passed_at.isoformat() if wave.passed_at else None,
                "health": wave.health or None,
            }
        )
    total: Counter = Counter()
    for mine in counts.values():
        total.update(mine)
    return {
        "rollout": rollout.pk,
        "status": rollout.status,
        "current_wave": rollout.current_wave,
        "devices": sum(total.values()),
        "counts": {state: total[state] for state in UpdateState.values},
        "waves": waves,
    }


def progress_counts(rollout_ids: Iterable[int]) -> dict[int, Counter]:
    """{rollout id: its devices per update state} for many rollouts in one query (lists,
    pushes); a rollout without devices gets an empty Counter."""
    counts: dict[int, Counter] = {pk: Counter() for pk in rollout_ids}
    for rollout_id, state, n in (
        DeviceUpdate.objects.filter(rollout_id__in=list(counts))
        .values_list("rollout_id", "state")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        counts[rollout_id][state] = n
    return counts


def _push(rollout_ids: Sequence[int]) -> None:
    """One compact `rollouts.progress` event per rollout, after commit: ids and counts only."""
    rows = list(
        Rollout.objects.filter(pk__in=list(rollout_ids)).values_list(
            "pk", "tenant_id", "status", "current_wave"
        )
    )
    if not rows:
        return
    totals = progress_counts(pk for pk, *_ in rows)
    push_many(
        (
            tenant_id,
            PROGRESS_EVENT,
            {"rollout": pk, "status": status, "wave": wave, "counts": dict(totals[pk])},
        )
        for pk, tenant_id, status, wave in rows
    )
