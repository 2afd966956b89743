"""Alerts, their history, notification channels and deliveries.

An alert is raised by a rule on a device (or by offline detection) and goes
open → acknowledged → resolved. There is at most one unresolved alert per rule and device (per
device for offline alerts): a repeat updates it and counts. Every change goes through
alerts/services.py, which records an `AlertEvent`, pushes the change to the tenant's Channels group
and queues notifications; deliveries are `Notification` rows a Celery task sends and retries.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from devices.models import Device, Metric, Tenant, TenantQuerySet
from rules.models import Rule, Severity


class AlertState(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class AlertKind(models.TextChoices):
    RULE = "rule", "Rule"
    OFFLINE = "offline", "Device offline"
    MAINTENANCE = "maintenance", "Maintenance due"


class AlertQuerySet(TenantQuerySet):
    def unresolved(self) -> AlertQuerySet:
        return self.exclude(state=AlertState.RESOLVED)

    def count_per(self, field: str) -> Coalesce:
        """These alerts counted for each row of an outer query, matched on `field`, as a
        subquery (no row per alert; 0, not NULL):
        `devices.annotate(open_alerts=Alert.objects.unresolved().count_per("device"))`."""
        counted = (
            self.filter(**{field: OuterRef("pk")})
            .order_by()
            .values(field)
            .annotate(n=Count("pk"))
            .values("n")
        )
        return Coalesce(Subquery(counted, output_field=models.IntegerField()), 0)


class Alert(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices, default=AlertKind.RULE)
    rule = models.ForeignKey(
        Rule, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="alerts")
    metric = models.ForeignKey(
        Metric,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Maintenance alerts: the wear indicator predicted to reach its threshold.",
    )
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    state = models.CharField(
        max_length=12, choices=AlertState.choices, default=AlertState.OPEN, db_index=True
    )
    title = models.CharField(max_length=300)
    values = models.JSONField(
        default=dict, blank=True, help_text="The values that triggered it, by metric."
    )
    count = models.PositiveIntegerField(default=1, help_text="Breaking readings so far.")
    first_triggered_at = models.DateTimeField()
    last_triggered_at = models.DateTimeField()
    cleared_at = models.DateTimeField(
        null=True, blank=True, help_text="Since when the condition has been clear."
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledge_note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Blank when it resolved itself.",
    )
    resolve_note = models.TextField(blank=True)
    # Notification bookkeeping (alerts/notifications.py).
    escalation_level = models.PositiveSmallIntegerField(
        default=0, help_text="The rule's escalation step notified last (0: the first)."
    )
    notified_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    # Flapping: how often it resolved and came back within the flap window.
    reopened = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-last_triggered_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "device"],
                condition=Q(kind=AlertKind.RULE) & ~Q(state=AlertState.RESOLVED),
                name="alert_one_unresolved_per_rule_device",
            ),
            models.UniqueConstraint(
                fields=["device"],
                condition=Q(kind=AlertKind.OFFLINE) & ~Q(state=AlertState.RESOLVED),
                name="alert_one_unresolved_offline_per_device",
            ),
            models.UniqueConstraint(
                fields=["device", "metric"],
                condition=Q(kind=AlertKind.MAINTENANCE) & ~Q(state=AlertState.RESOLVED),
                name="alert_one_unresolved_maintenance_per_device_metric",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "state", "severity"], name="alert_tenant_state"),
        ]

    def __str__(self) -> str:
        return self.title


class AlertEventKind(models.TextChoices):
    OPENED = "opened", "Opened"
    REOPENED = "reopened", "Reopened (flapping)"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"
    AUTO_RESOLVED = "auto_resolved", "Resolved itself"
    ESCALATED = "escalated", "Escalated"
    REMINDED = "reminded", "Reminder sent"


class AlertEventQuerySet(TenantQuerySet):
    tenant_lookup = "alert__tenant"


class AlertEvent(models.Model):
    """One change of an alert: who, when, with what note."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=AlertEventKind.choices)
    at = models.DateTimeField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)

    objects = AlertEventQuerySet.as_manager()

    class Meta:
        ordering = ["alert", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def tenant_id(self) -> int:
        return self.alert.tenant_id


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook (JSON, HMAC-signed)"
    MQTT_COMMAND = "mqtt_command", "Command to the device over MQTT"


class NotificationChannel(models.Model):
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="notification_channels"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    email_to = models.TextField(
        blank=True, help_text="Email: recipients, separated by commas or new lines."
    )
    webhook_url = models.URLField(blank=True, help_text="Webhook: where the JSON is POSTed.")
    webhook_secret = models.CharField(
        max_length=200,
        blank=True,
        help_text="Webhook: the key of the X-IoTFleet-Signature HMAC-SHA256 header.",
    )
    command = models.CharField(
        max_length=100, blank=True, help_text="MQTT command: its name, e.g. reboot or alarm_on."
    )
    command_params = models.JSONField(
        default=dict, blank=True, help_text="MQTT command: its parameters (a JSON object)."
    )
    max_per_hour = models.PositiveIntegerField(
        default=10,
        help_text="At most this many notifications per device per hour on this channel; "
        "the rest are recorded as throttled.",
    )
    for_offline = models.BooleanField(
        default=False,
        help_text="Also notified when a device of the tenant goes offline (offline alerts "
        "belong to no rule).",
    )
    for_maintenance = models.BooleanField(
        default=False,
        help_text="Also notified when predictive maintenance expects a device of the tenant to "
        "reach a failure threshold soon.",
    )
    is_enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="channel_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def clean(self) -> None:
        errors = {}
        if self.kind == ChannelKind.EMAIL and not self.email_to.strip():
            errors["email_to"] = "Give at least one recipient."
        if self.kind == ChannelKind.WEBHOOK and not self.webhook_url:
            errors["webhook_url"] = "Give the URL the webhook POSTs to."
        if self.kind == ChannelKind.MQTT_COMMAND and not self.command:
            errors["command"] = "Name the command to send to the device."
        if not isinstance(self.command_params, dict):
            errors["command_params"] = 'Parameters are a JSON object, e.g. {"level": 2}.'
        if errors:
            raise ValidationError(errors)


class RuleChannelQuerySet(TenantQuerySet):
    tenant_lookup = "rule__tenant"


class RuleChannel(models.Model):
    """A rule's notification channels in escalation steps: the channels at the lowest position
    are notified together when the alert opens, those at the next position when it stays
    unacknowledged past the rule's escalate_after, and so on."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="rule_channels")
    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="rule_channels"
    )
    position = models.PositiveSmallIntegerField(
        default=0,
        help_text="Escalation step: channels with the same number are notified together.",
    )

    objects = RuleChannelQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "channel"], name="rulechannel_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.position + 1}. {self.channel}"

    @property
    def tenant_id(self) -> int:
        return self.rule.tenant_id


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Failed, retrying"
    FAILED = "failed", "Failed"
    THROTTLED = "throttled", "Throttled"


class NotificationQuerySet(TenantQuerySet):
    tenant_lookup = "alert__tenant"


class Notification(models.Model):
    """One delivery of one alert event to one channel, with its attempts."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="notifications"
    )
    reason = models.CharField(
        max_length=16, help_text="opened, escalated, reminder, resolved or offline."
    )
    status = models.CharField(
        max_length=10,
        choices=NotificationStatus.choices,
        default=NotificationStatus.PENDING,
        db_index=True,
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["channel", "created_at"], name="notification_channel_time"),
        ]

    def __str__(self) -> str:
        return f"{self.reason} → {self.channel} ({self.get_status_display()})"

    @property
    def tenant_id(self) -> int:
        return self.alert.tenant_id
