"""Tenants, memberships, device types, groups, devices and their shadows.

Tenancy lives in one place: `TenantQuerySet.for_user()`. Every view, viewset, admin and consumer
asks it which rows a user may see (any role) or change (operator and up).
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"

    @classmethod
    def at_least(cls, role: str) -> list[str]:
        """The roles that include `role`'s rights (operator → operator, admin)."""
        order = [cls.VIEWER, cls.OPERATOR, cls.ADMIN]
        return [r.value for r in order[order.index(cls(role)) :]]


class TenantQuerySet(models.QuerySet):
    """A queryset of rows that belong to a tenant, reached through `tenant_lookup`."""

    tenant_lookup = "tenant"

    def for_user(self, user: Any, role: str = Role.VIEWER) -> TenantQuerySet:
        """Rows of the tenants where `user` holds at least `role`; superusers see everything."""
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self
        tenant_ids = Membership.objects.filter(user=user, role__in=Role.at_least(role)).values(
            "tenant_id"
        )
        return self.filter(**{f"{self.tenant_lookup}__in": tenant_ids})

    def for_tenant(self, tenant: Tenant) -> TenantQuerySet:
        return self.filter(**{self.tenant_lookup: tenant.pk})


class TenantOwnQuerySet(TenantQuerySet):
    tenant_lookup = "pk"


class Tenant(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantOwnQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def tenant_id(self) -> int:
        """A tenant is its own tenant, so permission checks treat it like any scoped row."""
        return self.pk


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} of {self.tenant}"


def role_in(user: Any, tenant_id: int | None) -> str | None:
    """The user's role in a tenant (`admin` for superusers), None if not a member.

    Cached on the user object for the length of a request.
    """
    if tenant_id is None or not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return Role.ADMIN
    cache = user.__dict__.setdefault("_iotfleet_roles", None)
    if cache is None:
        cache = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
        user._iotfleet_roles = cache
    return cache.get(tenant_id)


def has_role(user: Any, tenant_id: int | None, role: str) -> bool:
    held = role_in(user, tenant_id)
    return held is not None and held in Role.at_least(role)


# Names devices and rules use for metrics: also valid identifiers in rule expressions.
metric_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,62}$",
    "Use lowercase letters, digits and underscores, starting with a letter (e.g. temperature_c).",
)
# A device key is its MQTT username and a topic level, so no '/', '+', '#' or spaces.
device_key_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
    "Use up to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit "
    "(the key is the device's MQTT username and part of its topics).",
)


class OutOfRange(models.TextChoices):
    REJECT = "reject", "Reject the reading"
    FLAG = "flag", "Store it, flagged"


class DeviceType(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="device_types")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    heartbeat_timeout = models.DurationField(
        default=timedelta(minutes=5),
        help_text="A device of this type that sends nothing for this long counts as offline.",
    )
    out_of_range = models.CharField(
        max_length=8,
        choices=OutOfRange.choices,
        default=OutOfRange.REJECT,
        help_text="What happens to a reading outside its metric's valid range.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="devicetype_unique_name")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.heartbeat_timeout is not None and self.heartbeat_timeout <= timedelta(0):
            raise ValidationError({"heartbeat_timeout": "The heartbeat timeout must be positive."})


class MetricQuerySet(TenantQuerySet):
    tenant_lookup = "device_type__tenant"

    def wear_indicators(self) -> MetricQuerySet:
        """Metrics predictive maintenance watches: flagged, with a failure threshold."""
        return self.filter(is_wear_indicator=True, failure_threshold__isnull=False)


class FailureDirection(models.TextChoices):
    RISING = "rising", "Fails when rising to the threshold"
    FALLING = "falling", "Fails when falling to the threshold"


class Metric(models.Model):
    """A metric a device type reports, with its unit and the range a valid reading falls in."""

    device_type = models.ForeignKey(DeviceType, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=63, validators=[metric_name_validator])
    unit = models.CharField(max_length=32, blank=True)
    min_value = models.FloatField(null=True, blank=True, help_text="Lowest valid reading.")
    max_value = models.FloatField(null=True, blank=True, help_text="Highest valid reading.")
    # Predictive maintenance (maintenance/): a wear indicator drifts towards its failure
    # threshold as the device wears, e.g. a pump's vibration rising to 11 mm/s.
    is_wear_indicator = models.BooleanField(
        default=False,
        help_text="Predictive maintenance watches this metric's trend towards its failure "
        "threshold.",
    )
    failure_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Wear indicator: the value at which the device is expected to fail.",
    )
    failure_direction = models.CharField(
        max_length=8,
        choices=FailureDirection.choices,
        default=FailureDirection.RISING,
        blank=True,  # forms that leave it out keep the default (clean() fills it in)
        help_text="Wear indicator: whether the value rises or falls towards the threshold.",
    )

    objects = MetricQuerySet.as_manager()

    class Meta:
        ordering = ["device_type", "name"]
        constraints = [
            models.UniqueConstraint(fields=["device_type", "name"], name="metric_unique_name"),
            models.CheckConstraint(
                condition=models.Q(min_value__isnull=True)
                | models.Q(max_value__isnull=True)
                | models.Q(min_value__lte=models.F("max_value")),
                name="metric_range_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name

    @property
    def tenant_id(self) -> int:
        return self.device_type.tenant_id

    def clean(self) -> None:
        if not self.failure_direction:
            self.failure_direction = FailureDirection.RISING
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValidationError({"max_value": "The highest valid value is below the lowest."})
        if self.is_wear_indicator and self.failure_threshold is None:
            raise ValidationError(
                {"failure_threshold": "A wear indicator needs the failure threshold it drifts to."}
            )

    @property
    def rises_to_failure(self) -> bool:
        return self.failure_direction != FailureDirection.FALLING

    def accepts(self, value: float) -> bool:
        """Whether a reading lies in the metric's valid range."""
        if self.min_value is not None and value < self.min_value:
            return False
        return self.max_value is None or value <= self.max_value


class DeviceGroup(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="device_groups")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    desired = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="Desired state set once for the group's devices "
        "(devices.services.update_group_desired); each device's shadow holds it too.",
    )
    desired_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="devicegroup_unique_name")
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        """The group's dashboard page: its desired state and which devices caught up."""
        from django.urls import reverse

        return reverse("devices:group", args=[self.pk])


class DeviceStatus(models.TextChoices):
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    MAINTENANCE = "maintenance", "Maintenance"


class DeviceQuerySet(TenantQuerySet):
    def with_tag(self, tag: str) -> DeviceQuerySet:
        return self.filter(tags__contains=[tag])

    def stale(self, now: Any = None) -> DeviceQuerySet:
        """Online devices whose type's heartbeat timeout has passed since they were last seen."""
        now = now or timezone.now()
        return self.filter(
            status=DeviceStatus.ONLINE,
            last_seen__lt=now - models.F("device_type__heartbeat_timeout"),
        )


class Device(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="devices")
    key = models.CharField(
        max_length=64,
        unique=True,
        validators=[device_key_validator],
        help_text="Unique key; the device's MQTT username and its topic prefix fleet/{key}/.",
    )
    name = models.CharField(max_length=200)
    device_type = models.ForeignKey(DeviceType, on_delete=models.PROTECT, related_name="devices")
    groups = models.ManyToManyField(DeviceGroup, blank=True, related_name="devices")
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    location = models.CharField(max_length=200, blank=True, help_text="Site or address.")
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)
    firmware_version = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.OFFLINE, db_index=True
    )
    is_enabled = models.BooleanField(
        default=True, help_text="A disabled device's messages are rejected."
    )
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)
    credential_hash = models.CharField(max_length=200, editable=False)
    credential_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "key"]
        indexes = [
            GinIndex(fields=["tags"], name="device_tags_gin"),
            models.Index(fields=["tenant", "status"], name="device_tenant_status"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"

    def get_absolute_url(self) -> str:
        """The device's dashboard page (the admin's "View on site" links to it)."""
        from django.urls import reverse

        return reverse("devices:detail", args=[self.key])

    def clean(self) -> None:
        errors = {}
        if self.device_type_id and self.tenant_id and self.device_type.tenant_id != self.tenant_id:
            errors["device_type"] = "The device type belongs to another tenant."
        if self.latitude is not None and not -90 <= self.latitude <= 90:
            errors["latitude"] = "Latitude lies between -90 and 90."
        if self.longitude is not None and not -180 <= self.longitude <= 180:
            errors["longitude"] = "Longitude lies between -180 and 180."
        if not isinstance(self.attributes, dict):
            errors["attributes"] = 'Attributes are a JSON object, e.g. {"site": "north"}.'
        if errors:
            raise ValidationError(errors)

    def is_overdue(self, now: Any = None) -> bool:
        """Whether the device has been silent past its type's heartbeat timeout."""
        if self.last_seen is None:
            return True
        return (now or timezone.now()) - self.last_seen > self.device_type.heartbeat_timeout


class ShadowQuerySet(TenantQuerySet):
    tenant_lookup = "device__tenant"


_MISSING = object()


def shadow_delta(desired: dict, reported: dict) -> dict:
    """What `desired` asks for that `reported` does not show yet; nested objects key by key.

    A key whose desired value equals the reported one is settled and left out; so is a nested
    object whose keys are all settled.
    """
    delta: dict = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            nested = shadow_delta(want, have)
            if nested:
                delta[key] = nested
        elif want != have:
            delta[key] = copy.deepcopy(want)
    return delta


def merge_state(document: dict, patch: dict) -> dict:
    """`document` updated with `patch`: objects merge key by key, and a null removes the key."""
    merged = copy.deepcopy(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_state(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class DeviceShadow(models.Model):
    """The device's desired and reported state; every update bumps `version` and recomputes `delta`.

    Change it only through `devices.services.update_desired()` / `update_reported()`.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="shadow")
    desired = models.JSONField(default=dict, blank=True)
    reported = models.JSONField(default=dict, blank=True)
    delta = models.JSONField(default=dict, blank=True, editable=False)
    version = models.PositiveBigIntegerField(default=0, editable=False)
    desired_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    reported_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ShadowQuerySet.as_manager()

    class Meta:
        verbose_name = "device shadow"

    def __str__(self) -> str:
        return f"Shadow of {self.device.key} (v{self.version})"

    @property
    def tenant_id(self) -> int:
        return self.device.tenant_id

    @property
    def in_sync(self) -> bool:
        return not self.delta

    def apply(self, *, desired: dict | None = None, reported: dict | None = None) -> None:
        """Merge patches into either side, recompute the delta and bump the version (unsaved)."""
        now = timezone.now()
        if desired is not None:
            self.desired = merge_state(self.desired, desired)
            self.desired_updated_at = now
        if reported is not None:
            self.reported = merge_state(self.reported, reported)
            self.reported_updated_at = now
        self.delta = shadow_delta(self.desired, self.reported)
        self.version += 1


class CommandState(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"


# States a command leaves only by the device's answer, a failure to publish, or its deadline.
PENDING_COMMAND_STATES = (CommandState.QUEUED, CommandState.SENT)

command_name_validator = RegexValidator(
    r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
    "Name the command with letters, digits, '_', '.' or '-', starting with a letter "
    "(e.g. reboot or set_led).",
)


class CommandQuerySet(TenantQuerySet):
    def pending(self) -> CommandQuerySet:
        return self.filter(state__in=PENDING_COMMAND_STATES)

    def overdue(self, now: Any = None) -> CommandQuerySet:
        """Pending commands whose device has not answered by their deadline."""
        return self.pending().filter(expires_at__lt=now or timezone.now())


class Command(models.Model):
    """A message the platform sends a device (`fleet/{key}/commands/{id}`), and its answer.

    queued → sent (the broker took it) → acknowledged or failed (the device's answer on
    `fleet/{key}/commands/{id}/ack`); failed too if it could not be published; timed out if no
    answer came by `expires_at`. Change it only through devices/services.py.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="commands")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    name = models.CharField(max_length=64, validators=[command_name_validator])
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(
        max_length=12, choices=CommandState.choices, default=CommandState.QUEUED, db_index=True
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(help_text="Timed out if the device has not answered by then.")
    result = models.JSONField(null=True, blank=True, help_text="What the device answered.")
    error = models.TextField(blank=True, help_text="Why it failed or timed out.")

    objects = CommandQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["device", "-created_at"], name="command_device_time"),
            models.Index(
                fields=["expires_at"],
                name="command_pending_expiry",
                condition=models.Q(state__in=["queued", "sent"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} to {self.device_id} ({self.state})"

    @property
    def topic(self) -> str:
        return f"fleet/{self.device.key}/commands/{self.pk}"

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_COMMAND_STATES
