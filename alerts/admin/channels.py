"""Notification channel admins: channels (with a test send) and their deliveries (read-only, so
failures and throttling are visible)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from alerts.models import Notification as Delivery
from alerts.models import NotificationChannel, NotificationStatus
from alerts.notifications import retry_notifications, send_test_notification
from alerts.transports import TransportError, channel_problems
from devices.admin.tenancy import TenantScopedAdmin, TenantScopedFilter, holds_role_anywhere
from devices.forms import TenantScopedModelForm
from devices.models import Role


class NotificationChannelForm(TenantScopedModelForm):
    """The webhook secret is never shown again: leave it blank to keep the stored one."""

    webhook_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text="Webhook: where the JSON is POSTed (http:// or https://).",
    )
    webhook_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhook: the key of the X-IoTFleet-Signature HMAC-SHA256 header, at least 16 "
        "characters. Never shown again; leave blank to keep the current one.",
    )

    class Meta:
        model = NotificationChannel
        fields = "__all__"

    def clean(self) -> dict:
        cleaned = super().clean()
        has_secret = bool(self.instance.pk and self.instance.webhook_secret)
        if not cleaned.get("webhook_secret") and has_secret:
            cleaned["webhook_secret"] = self.instance.webhook_secret
        for field, message in channel_problems(cleaned, has_secret=has_secret).items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, message)
        return cleaned


@admin.register(NotificationChannel)
class NotificationChannelAdmin(TenantScopedAdmin):
    form = NotificationChannelForm
    list_display = [
        "name",
        "tenant",
        "kind",
        "target",
        "max_per_hour",
        "for_offline",
        "for_maintenance",
        "is_enabled",
    ]
    list_filter = [
        ("tenant", TenantScopedFilter),
        "kind",
        "is_enabled",
        "for_offline",
        "for_maintenance",
    ]
    list_select_related = ["tenant"]
    search_fields = ["name", "email_to", "webhook_url", "command"]
    actions = ["send_test"]
    fieldsets = [
        (None, {"fields": ["tenant", "name", "kind", "is_enabled"]}),
        ("Email", {"fields": ["email_to"]}),
        ("Webhook", {"fields": ["webhook_url", "webhook_secret"]}),
        ("Command to the device over MQTT", {"fields": ["command", "command_params"]}),
        ("When", {"fields": ["max_per_hour", "for_offline", "for_maintenance"]}),
    ]

    @admin.display(description="Sends to")
    def target(self, channel: NotificationChannel) -> str:
        return {
            "email": channel.email_to,
            "webhook": channel.webhook_url,
            "mqtt_command": f"{channel.command} to the alert's device",
        }.get(channel.kind, "")

    @admin.action(description="Send a test notification", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet) -> None:
        channels = list(queryset.for_user(request.user, role=Role.OPERATOR))
        skipped = queryset.count() - len(channels)
        for channel in channels:
            try:
                send_test_notification(channel)
            except TransportError as error:
                self.message_user(
                    request, f"“{channel.name}”: the test failed. {error.message}", messages.ERROR
                )
            else:
                self.message_user(
                    request, f"“{channel.name}”: test notification sent.", messages.SUCCESS
                )
        if skipped:
            self.message_user(
                request,
                f"{skipped} channel(s) left out: you are not an operator of their tenant.",
                messages.WARNING,
            )


class ReasonFilter(admin.SimpleListFilter):
    title = "reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (reason, reason.capitalize())
            for reason in ("opened", "escalated", "reminder", "resolved", "offline")
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(reason=self.value()) if self.value() else queryset


@admin.register(Delivery)
class NotificationAdmin(TenantScopedAdmin):
    """Deliveries as they happened; nothing here is edited by hand."""

    list_display = [
        "created_at",
        "alert",
        "channel",
        "reason",
        "status_badge",
        "attempts",
        "response_code",
        "short_error",
        "sent_at",
    ]
    list_filter = [
        "status",
        ReasonFilter,
        ("channel", TenantScopedFilter),
        ("alert__tenant", TenantScopedFilter),
    ]
    list_select_related = ["alert", "channel", "alert__tenant"]
    search_fields = ["alert__title", "channel__name", "last_error"]
    date_hierarchy = "created_at"
    actions = ["retry_failed"]
    readonly_fields = [
        "alert",
        "channel",
        "reason",
        "status",
        "attempts",
        "response_code",
        "last_error",
        "created_at",
        "sent_at",
    ]
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.OPERATOR)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, delivery: Delivery) -> SafeString:
        colour = {
            NotificationStatus.SENT: "#2e7d32",
            NotificationStatus.FAILED: "#c62828",
            NotificationStatus.RETRYING: "#ef6c00",
            NotificationStatus.THROTTLED: "#6d4c41",
        }.get(delivery.status, "#555")
        return format_html(
            '<strong style="color:{}">{}</strong>', colour, delivery.get_status_display()
        )

    @admin.display(description="Last error")
    def short_error(self, delivery: Delivery) -> str:
        text = delivery.last_error
        return text if len(text) <= 120 else text[:117] + "…"

    @admin.action(description="Retry the selected failed deliveries", permissions=["retry"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        mine = queryset.for_user(request.user, role=Role.OPERATOR)
        retried = retry_notifications(list(mine.values_list("pk", flat=True)))
        if retried:
            self.message_user(request, f"Queued {retried} failed delivery(ies) again.")
        else:
            self.message_user(
                request,
                "None of the selected deliveries failed in a tenant you operate: nothing to retry.",
                messages.WARNING,
            )
