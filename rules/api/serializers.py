"""Serializers of the rules API. A rule is checked by `rules.services.check_rule`, the same check
as the admin's; a condition that does not parse answers 400 with the message under "condition"
and the 0-based character offset of the problem as "position"."""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from alerts.models import NotificationChannel
from devices.api.serializers import TenantOwnedSerializer, TenantScopedPrimaryKeyField
from devices.models import Device, DeviceGroup, DeviceType
from rules.models import Rule, RuleKind
from rules.services import RuleInvalid, check_rule

DEFAULT_BACKTEST_DAYS = 7


class RuleRefused(serializers.ValidationError):
    """400 with field errors, plus "position" (an integer) when the condition failed to parse."""

    def __init__(self, errors: Any, position: int | None = None) -> None:
        super().__init__(errors)
        if position is not None and isinstance(self.detail, dict):
            self.detail["position"] = position


class TenantScopedDeviceKeyField(serializers.SlugRelatedField):
    """A device of one of the user's tenants, by key; another tenant's key does not exist."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="key", queryset=Device.objects.all(), **kwargs)

    def get_queryset(self) -> QuerySet:
        request = self.context.get("request")
        return super().get_queryset().for_user(getattr(request, "user", None))


@extend_schema_field(
    {"type": "string", "enum": list(RuleKind.values)}, component_name="RuleKindEnum"
)
class RuleKindField(serializers.ChoiceField):
    """The rule's kind; its own schema component, apart from the alerts' and channels' kinds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=RuleKind.choices, **kwargs)


class RuleSerializer(TenantOwnedSerializer):
    """An alert rule: which devices it watches, when it breaks, and whom its alerts notify."""

    kind = RuleKindField(
        required=False,
        help_text="threshold, duration (held for for_duration), rate (rate() or delta()), "
        "no_data (no reading of `metric` for for_duration), zscore, compound. Default threshold.",
    )
    device_type = TenantScopedPrimaryKeyField(
        queryset=DeviceType.objects.all(),
        help_text="Id of a device type of the rule's tenant: the rule watches its devices and may "
        "name its metrics.",
    )
    group = TenantScopedPrimaryKeyField(
        queryset=DeviceGroup.objects.all(),
        required=False,
        allow_null=True,
        help_text="Only the devices of this group (id), or null.",
    )
    device = TenantScopedDeviceKeyField(
        required=False,
        allow_null=True,
        help_text="Only this device (its key), or null.",
    )
    channels = TenantScopedPrimaryKeyField(
        queryset=NotificationChannel.objects.all(),
        many=True,
        required=False,
        help_text="Ids of notification channels of the rule's tenant, in escalation order: the "
        "first is notified when an alert opens, the next each time it stays unacknowledged for "
        "escalate_after. Sending the list replaces it.",
    )
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    # A saved rule's name must be free in its tenant; a back-test preview's need not.
    checks_unique_name = True

    class Meta:
        model = Rule
        fields = [
            "id",
            "tenant",
            "name",
            "description",
            "kind",
            "condition",
            "metric",
            "for_duration",
            "hysteresis",
            "severity",
            "device_type",
            "group",
            "tag",
            "device",
            "channels",
            "escalate_after",
            "remind_every",
            "is_enabled",
            "created_by",
            "created_at",
            "updated_at",
        ]
        # Unique names are checked with the rest of the rule by check_rule().
        validators: list = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.condition_position: int | None = None

    def to_representation(self, rule: Rule) -> dict[str, Any]:
        data = super().to_representation(rule)
        data["channels"] = [
            link.channel_id for link in rule.rule_channels.all() if link.channel_id is not None
        ]
        return data

    def is_valid(self, *, raise_exception: bool = False) -> bool:
        valid = super().is_valid(raise_exception=False)
        if not valid and raise_exception:
            raise RuleRefused(self.errors, self.condition_position)
        return valid

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self.check_unique_name(Rule, attrs.get("name"))
        rule = self.rule_from(attrs)
        try:
            check_rule(rule, unique=self.checks_unique_name)
        except RuleInvalid as error:
            self.condition_position = error.position
            raise serializers.ValidationError(self._errors_of(error)) from error
        return attrs

    def rule_from(self, attrs: dict[str, Any]) -> Rule:
        """The rule the request describes, unsaved: the stored rule (a copy) with `attrs` on it
        for an update, a new rule of the target tenant for a create."""
        fields = {k: v for k, v in attrs.items() if k not in {"channels", "days"}}
        if isinstance(self.instance, Rule):
            rule = copy.copy(self.instance)
        else:
            rule = Rule(tenant=self.target_tenant())
        for name, value in fields.items():
            setattr(rule, name, value)
        return rule

    def _errors_of(self, error: RuleInvalid) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        for field, messages in error.message_dict.items():
            key = field if field in self.fields else "non_field_errors"
            errors.setdefault(key, []).extend(messages)
        return errors


def backtest_days_field() -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1,
        max_value=settings.RULES_BACKTEST_MAX_DAYS,
        default=DEFAULT_BACKTEST_DAYS,
        help_text=f"How far back to look: 1 to {settings.RULES_BACKTEST_MAX_DAYS} days "
        f"(default {DEFAULT_BACKTEST_DAYS}).",
    )


class BacktestDaysSerializer(serializers.Serializer):
    """How many days of stored readings to back-test a saved rule over."""

    days = backtest_days_field()


class RuleBacktestSerializer(RuleSerializer):
    """A rule as for create, not saved, plus how many days of history to run it over."""

    days = backtest_days_field()
    checks_unique_name = False

    class Meta(RuleSerializer.Meta):
        fields = [*RuleSerializer.Meta.fields, "days"]
        extra_kwargs = {"name": {"required": False}}

    def rule_from(self, attrs: dict[str, Any]) -> Rule:
        rule = super().rule_from(attrs)
        rule.name = rule.name or "Back-test"
        return rule

    def check_unique_name(self, model: Any, name: str | None) -> None:
        """A preview is not saved, so its name may be taken."""


class DeviceBacktestSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    device_key = serializers.CharField()
    device_name = serializers.CharField()
    alerts = serializers.IntegerField(help_text="Alerts the rule would have opened on it.")
    breaking_readings = serializers.IntegerField()
    first_at = serializers.DateTimeField(allow_null=True)
    last_at = serializers.DateTimeField(allow_null=True)


class BacktestResultSerializer(serializers.Serializer):
    """What a rule would have done over the last `days` days of stored readings."""

    days = serializers.IntegerField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    devices_checked = serializers.IntegerField()
    readings_checked = serializers.IntegerField()
    alerts = serializers.IntegerField(help_text="Alerts it would have opened in all.")
    devices = DeviceBacktestSerializer(
        many=True, help_text="Devices it would have raised alerts on, most first."
    )
    per_day = serializers.ListField(
        child=serializers.ListField(),
        help_text="[date, alerts opened that day] for every day of the span.",
    )
    elapsed_ms = serializers.FloatField()
