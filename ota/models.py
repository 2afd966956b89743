"""Firmware releases, the tenants' signing keys, staged rollouts, their waves and the update record
of every device in a rollout.

Every change of state goes through ota/services.py. A rollout goes draft → running ⇄ paused →
completed / aborted; a device's update queued → sent → downloading → installing → succeeded /
failed / timed out (or cancelled when its rollout is aborted before it was sent).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from devices.models import Device, DeviceGroup, DeviceType, Tenant, TenantQuerySet


class SigningKey(models.Model):
    """An Ed25519 public key of a tenant: releases signed with its private key verify."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="signing_keys")
    name = models.CharField(max_length=100, help_text="What the key is, e.g. 'Release key 2026'.")
    public_key = models.CharField(
        max_length=64, help_text="The 32-byte Ed25519 public key, base64-encoded."
    )
    fingerprint = models.CharField(
        max_length=16, editable=False, help_text="First 16 hex digits of the key's SHA-256."
    )
    is_active = models.BooleanField(
        default=True, help_text="Only active keys verify new releases; retire a key by clearing."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="signingkey_unique_name"),
            models.UniqueConstraint(
                fields=["tenant", "fingerprint"], name="signingkey_unique_fingerprint"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


def release_path(release: FirmwareRelease, filename: str) -> str:
    return f"firmware/{release.tenant.slug}/{release.version}/{filename}"


class FirmwareRelease(models.Model):
    """A firmware image of one version for some device types; its sha256 was computed on upload
    and its signature, if any, verified against the tenant's keys (ota.services.create_release)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="firmware_releases")
    version = models.CharField(max_length=64, help_text="Semantic version, e.g. 2.1.0.")
    device_types = models.ManyToManyField(
        DeviceType,
        related_name="firmware_releases",
        help_text="The device types this image runs on.",
    )
    file = models.FileField(upload_to=release_path, max_length=300)
    file_name = models.CharField(max_length=200, blank=True)
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes.")
    sha256 = models.CharField(max_length=64)
    signature = models.CharField(
        max_length=100,
        blank=True,
        help_text="Ed25519 signature of the image's SHA-256 digest, base64; blank if unsigned.",
    )
    signing_key = models.ForeignKey(
        SigningKey,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="releases",
        help_text="The key the signature verified with.",
    )
    notes = models.TextField(blank=True, help_text="Release notes.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "version"], name="release_unique_version")
        ]

    def __str__(self) -> str:
        return self.version

    @property
    def is_signed(self) -> bool:
        return bool(self.signature)


class RolloutStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    ABORTED = "aborted", "Aborted"


class WaveMode(models.TextChoices):
    PERCENT = "percent", "Percentages of the target (cumulative)"
    COUNT = "count", "Fixed numbers of devices per wave"


class PauseReason(models.TextChoices):
    OPERATOR = "operator", "Paused by an operator"
    FAILURE_THRESHOLD = "failure_threshold", "Failure threshold crossed"
    SUCCESS_THRESHOLD = "success_threshold", "Success threshold not reached"
    HEALTH_GATE = "health_gate", "Health gate: updated devices are worse"


class RolloutQuerySet(TenantQuerySet):
    def active(self) -> RolloutQuerySet:
        return self.filter(status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED])


class Rollout(models.Model):
    """A staged rollout of one release to the devices matching its target, wave by wave.

    Target: devices of the release's device types, narrowed by `device_type`, `groups` (any of
    them) and `tags` (all of them), or exactly `target_devices` (a rollback). Waves: with
    `wave_mode` percent, `wave_plan` holds cumulative shares of the target (1, 10, 50, 100);
    with count, the sizes of the waves (the last wave takes whatever is left).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rollouts")
    name = models.CharField(max_length=200)
    release = models.ForeignKey(FirmwareRelease, on_delete=models.PROTECT, related_name="rollouts")
    # Target.
    device_type = models.ForeignKey(
        DeviceType,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Only devices of this type (blank: every type the release supports).",
    )
    groups = models.ManyToManyField(
        DeviceGroup,
        blank=True,
        related_name="+",
        help_text="Only devices in one of these groups (none: any group).",
    )
    tags = ArrayField(
        models.CharField(max_length=64),
        default=list,
        blank=True,
        help_text="Only devices carrying all of these tags.",
    )
    target_devices = models.ManyToManyField(
        Device,
        blank=True,
        related_name="+",
        help_text="Exactly these devices (a rollback); the filters above still apply.",
    )
    rollback_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="rollbacks"
    )
    # Waves and gates.
    wave_mode = models.CharField(max_length=8, choices=WaveMode.choices, default=WaveMode.PERCENT)
    wave_plan = ArrayField(
        models.PositiveIntegerField(), default=list, help_text="e.g. 1, 10, 50, 100"
    )
    soak_time = models.DurationField(
        default=timedelta(minutes=30),
        help_text="How long a wave's updated devices run before the next wave may start.",
    )
    success_threshold = models.PositiveSmallIntegerField(
        default=95,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="% of a wave's devices that must succeed before the next wave starts.",
    )
    failure_threshold = models.PositiveSmallIntegerField(
        default=5,
        validators=[MaxValueValidator(100)],
        help_text="The rollout pauses when more than this % of a wave's finished devices failed.",
    )
    min_finished = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1)],
        help_text="The failure threshold counts only once this many devices of the wave "
        "finished (or the whole wave, if smaller).",
    )
    max_concurrent = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1)],
        help_text="At most this many devices updating at once.",
    )
    update_timeout = models.DurationField(
        default=timedelta(minutes=30),
        help_text="A device silent this long after its job (or its last report) timed out.",
    )
    window_start = models.TimeField(
        null=True, blank=True, help_text="Maintenance window start (UTC); blank: any time."
    )
    window_end = models.TimeField(null=True, blank=True, help_text="Maintenance window end (UTC).")
    allow_downgrade = models.BooleanField(
        default=False,
        help_text="Also send the release to devices running a newer version (a rollback).",
    )
    health_gate = models.BooleanField(
        default=True,
        help_text="Before each next wave, compare the updated devices with those not yet "
        "updated (gone offline, alerts, reboots) and pause if they are clearly worse.",
    )
    # State.
    status = models.CharField(
        max_length=10, choices=RolloutStatus.choices, default=RolloutStatus.DRAFT, db_index=True
    )
    current_wave = models.PositiveSmallIntegerField(default=0)
    pause_reason = models.CharField(max_length=20, choices=PauseReason.choices, blank=True)
    pause_detail = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True, help_text="Why it paused, in figures.")
    last_error = models.TextField(blank=True, help_text="The last trouble sending jobs.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RolloutQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(success_threshold__gte=1, success_threshold__lte=100),
                name="rollout_success_threshold_percent",
            ),
            models.CheckConstraint(
                condition=Q(failure_threshold__lte=100), name="rollout_failure_threshold_percent"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def wave_count(self) -> int:
        return self.waves.count()

    def current_wave_row(self) -> RolloutWave | None:
        return self.waves.filter(number=self.current_wave).first()

    def in_window(self, moment: Any) -> bool:
        """Whether `moment` (aware, UTC) lies in the maintenance window (always, without one)."""
        if self.window_start is None or self.window_end is None:
            return True
        now = moment.time()
        if self.window_start <= self.window_end:
            return self.window_start <= now < self.window_end
        return now >= self.window_start or now < self.window_end  # across midnight

    @property
    def is_editable(self) -> bool:
        return self.status == RolloutStatus.DRAFT


class WaveQuerySet(TenantQuerySet):
    tenant_lookup = "rollout__tenant"


class RolloutWave(models.Model):
    """One wave of a rollout: when it started, reached its success threshold (its soak starts),
    passed its gates (the next wave started), and the health gate's last verdict."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="waves")
    number = models.PositiveSmallIntegerField()
    planned_size = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    reached_at = models.DateTimeField(
        null=True, blank=True, help_text="When the success threshold was reached: soak starts."
    )
    passed_at = models.DateTimeField(null=True, blank=True)
    health = models.JSONField(default=dict, blank=True)
    # Set when an operator resumes: failures up to here were seen and accepted, and a gate that
    # held the wave back is overridden.
    accepted_failures = models.PositiveIntegerField(default=0)
    accepted_finished = models.PositiveIntegerField(default=0)
    overridden = models.BooleanField(default=False)

    objects = WaveQuerySet.as_manager()

    class Meta:
        ordering = ["rollout", "number"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "number"], name="wave_unique_number")
        ]

    def __str__(self) -> str:
        return f"wave {self.number} of {self.rollout}"

    @property
    def tenant_id(self) -> int:
        return self.rollout.tenant_id


class UpdateState(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    DOWNLOADING = "downloading", "Downloading"
    INSTALLING = "installing", "Installing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


IN_FLIGHT = (UpdateState.SENT, UpdateState.DOWNLOADING, UpdateState.INSTALLING)
UNFINISHED = (UpdateState.QUEUED, *IN_FLIGHT)
FAILURES = (UpdateState.FAILED, UpdateState.TIMED_OUT)
FINISHED = (UpdateState.SUCCEEDED, *FAILURES)
# A device's progress only moves forward; a report of an earlier step arriving late is ignored.
STEP = {
    UpdateState.QUEUED: 0,
    UpdateState.SENT: 1,
    UpdateState.DOWNLOADING: 2,
    UpdateState.INSTALLING: 3,
}


class DeviceUpdateQuerySet(TenantQuerySet):
    tenant_lookup = "rollout__tenant"

    def in_flight(self) -> DeviceUpdateQuerySet:
        return self.filter(state__in=IN_FLIGHT)

    def updating_device_ids(self, device_ids: Iterable[int]) -> set[int]:
        """Those of `device_ids` inside their update window (job sent, not finished): they may
        reboot, so going offline is expected of them."""
        return set(
            self.filter(device_id__in=list(device_ids), state__in=IN_FLIGHT).values_list(
                "device_id", flat=True
            )
        )


class DeviceUpdate(models.Model):
    """One device's update in one rollout, with what the device said and when."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="updates")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="firmware_updates")
    wave = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=12, choices=UpdateState.choices, default=UpdateState.QUEUED, db_index=True
    )
    progress = models.PositiveSmallIntegerField(default=0, help_text="% reported by the device.")
    from_version = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True, help_text="What the device said when it failed.")
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True, help_text="Last report.")
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceUpdateQuerySet.as_manager()

    class Meta:
        ordering = ["rollout", "wave", "id"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "device"], name="update_unique_device"),
            # A device takes part in one unfinished update at a time, whatever the rollout.
            models.UniqueConstraint(
                fields=["device"],
                condition=Q(state__in=UNFINISHED),
                name="update_one_unfinished_per_device",
            ),
        ]
        indexes = [models.Index(fields=["rollout", "wave", "state"], name="update_wave_state")]

    def __str__(self) -> str:
        return f"{self.device_id} in {self.rollout_id}: {self.state}"

    @property
    def tenant_id(self) -> int:
        return self.rollout.tenant_id
