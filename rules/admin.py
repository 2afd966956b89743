"""Rules in the admin: edited through `rules.services`, with a back-test preview on the form."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse

from alerts.models import Alert, RuleChannel
from devices.admin.tenancy import (
    TenantScopedAdmin,
    TenantScopedFilter,
    TenantScopedInline,
    count_column,
)
from devices.models import DeviceType
from rules.backtest import backtest
from rules.forms import RuleForm
from rules.models import Rule, RuleKind
from rules.services import delete_rule, save_rule

CHART_WIDTH = 640
CHART_HEIGHT = 120
CHART_LABEL_SPACE = 16


class RuleChannelFormSet(BaseInlineFormSet):
    """The inline's forms check their channel against the rule's tenant, which is only known once
    the rule's own form has been cleaned (a new rule's inline rows have no rule to ask yet)."""

    def clean(self) -> None:
        super().clean()
        tenant_id = self.instance.tenant_id
        for form in self.forms:
            channel = getattr(form, "cleaned_data", {}).get("channel")
            if channel is None or tenant_id is None or channel.tenant_id == tenant_id:
                continue
            if self.can_delete and self._should_delete_form(form):
                continue
            form.add_error(
                "channel",
                f"{channel}: of another tenant. Choose notification channels of "
                f"{self.instance.tenant}, the tenant of this rule.",
            )


class RuleChannelInline(TenantScopedInline):
    """The rule's notification channels: position 0 is notified when the alert opens, the next
    each time it stays unacknowledged for the rule's escalation delay."""

    model = RuleChannel
    formset = RuleChannelFormSet
    fields = ["position", "channel"]
    ordering = ["position", "pk"]
    verbose_name = "notification channel"
    verbose_name_plural = "Notification channels (notified in this order; the next on escalation)"


@admin.register(Rule)
class RuleAdmin(TenantScopedAdmin):
    form = RuleForm
    list_display = [
        "name",
        "tenant",
        "kind",
        "severity",
        "device_type",
        "scope",
        "condition_text",
        "is_enabled",
        "open_alerts",
    ]
    list_filter = [
        ("tenant", TenantScopedFilter),
        "kind",
        "severity",
        "is_enabled",
        ("device_type", TenantScopedFilter),
    ]
    list_select_related = ["tenant", "device_type", "group", "device"]
    search_fields = ["name", "description", "condition", "tag"]
    fieldsets = [
        (None, {"fields": ["tenant", "name", "description", "is_enabled", "severity"]}),
        (
            "Which devices",
            {
                "fields": ["device_type", "group", "tag", "device"],
                "description": "The devices of the type, or only those of one group, with one "
                "tag, or a single device.",
            },
        ),
        ("When it breaks", {"fields": ["kind", "condition", "metric", "for_duration"]}),
        ("Alert", {"fields": ["hysteresis", "escalate_after", "remind_every"]}),
    ]
    inlines = [RuleChannelInline]

    class Media:
        js = ["rules/rule_form.js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(open_alerts=Alert.objects.unresolved().count_per("rule"))
        )

    open_alerts = count_column("open_alerts", "Open alerts")

    @admin.display(description="Scope")
    def scope(self, rule: Rule) -> str:
        if rule.device_id:
            return f"device {rule.device.key}"
        if rule.group_id:
            return f"group {rule.group}"
        if rule.tag:
            return f"tag {rule.tag}"
        return "all devices of the type"

    @admin.display(description="Condition", ordering="condition")
    def condition_text(self, rule: Rule) -> str:
        if rule.kind == RuleKind.NO_DATA:
            what = rule.metric or "any metric"
            return f"no {what} for {rule.for_duration}"
        return rule.condition

    def save_model(self, request: HttpRequest, obj: Rule, form: Any, change: bool) -> None:
        # Channels come from the inline, which the admin saves next (save_related).
        save_rule(obj, channels=None, user=request.user)

    def delete_model(self, request: HttpRequest, obj: Rule) -> None:
        delete_rule(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for rule in queryset:
            delete_rule(rule)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Rule | None = None,
    ) -> HttpResponse:
        form = context["adminform"].form
        context["show_backtest"] = add or self.has_change_permission(request, obj)
        context["type_metrics"] = type_metrics(request)
        if getattr(form, "ready_for_backtest", False):
            result = backtest(form.instance, form.backtest_days)
            context["backtest"] = result
            context["backtest_chart"] = backtest_chart(result)
        return super().render_change_form(request, context, add, change, form_url, obj)


def type_metrics(request: HttpRequest) -> dict[str, dict[str, Any]]:
    """The user's device types and their metric names, for the hint under the condition."""
    types = DeviceType.objects.for_user(request.user).prefetch_related("metrics")
    return {
        str(device_type.pk): {
            "name": device_type.name,
            "metrics": sorted(metric.name for metric in device_type.metrics.all()),
        }
        for device_type in types
    }


def backtest_chart(result: Any) -> dict[str, Any]:
    """Bars of alerts per day for an inline SVG: geometry only, the template draws it."""
    days: list[tuple[date, int]] = list(result.per_day)
    most = max((count for _, count in days), default=0)
    slot = CHART_WIDTH / max(len(days), 1)
    plot = CHART_HEIGHT - CHART_LABEL_SPACE
    step = max(1, round(len(days) / 7))
    bars = []
    for index, (day, count) in enumerate(days):
        height = round(plot * count / most, 1) if most else 0
        bars.append(
            {
                "x": round(index * slot + slot * 0.1, 1),
                "y": round(plot - height, 1),
                "width": round(slot * 0.8, 1),
                "height": height,
                "day": day,
                "count": count,
                "label_x": round(index * slot + slot / 2, 1),
                # Label about seven days, so the axis stays readable over 30.
                "labelled": index % step == 0,
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "label_y": CHART_HEIGHT - 3,
        "axis_y": plot,
        "bars": bars,
        "most": most,
    }
