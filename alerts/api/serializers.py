"""Serializers of the alerts API: alerts are read-only; people change them through the
acknowledge and resolve actions, which take a note."""

from __future__ import annotations

from rest_framework import serializers

from alerts.models import Alert, AlertEvent
from devices.api.serializers import TenantOwnedSerializer


class AlertEventSerializer(serializers.ModelSerializer):
    """One change in the alert's history."""

    user = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text="Who did it; null when it happened."
    )

    class Meta:
        model = AlertEvent
        fields = ["kind", "at", "user", "note"]
        read_only_fields = fields


class AlertSerializer(TenantOwnedSerializer):
    """An alert a rule (or offline detection) raised on a device: open → acknowledged →
    resolved, with its history."""

    device = serializers.SlugRelatedField(
        slug_field="key", read_only=True, help_text="Key of the device it is about."
    )
    device_name = serializers.CharField(source="device.name", read_only=True)
    metric = serializers.SlugRelatedField(
        slug_field="name",
        read_only=True,
        help_text="Maintenance alerts: the wear indicator expected to reach its threshold.",
    )
    rule_name = serializers.CharField(
        source="rule.name", read_only=True, default=None, help_text="Null for offline alerts."
    )
    acknowledged_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    events = AlertEventSerializer(many=True, read_only=True, help_text="Its history, oldest first.")
    resolved_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text="Null when it resolved itself."
    )

    class Meta:
        model = Alert
        fields = [
            "id",
            "tenant",
            "kind",
            "state",
            "severity",
            "title",
            "rule",
            "rule_name",
            "device",
            "device_name",
            "metric",
            "values",
            "count",
            "first_triggered_at",
            "last_triggered_at",
            "cleared_at",
            "acknowledged_at",
            "acknowledged_by",
            "acknowledge_note",
            "resolved_at",
            "resolved_by",
            "resolve_note",
            "reopened",
            "escalation_level",
            "notified_at",
            "created_at",
            "updated_at",
            "events",
        ]
        read_only_fields = fields


class AlertNoteSerializer(serializers.Serializer):
    """The body of acknowledge and resolve."""

    note = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Kept in the alert's history, e.g. who is on it or what fixed it.",
    )


class AlertConflictSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="Why the alert's state does not allow it.")
