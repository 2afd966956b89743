"""Alerts in the admin: filtered lists, read-only pages with their history and deliveries, and
the two things people do to alerts, acknowledge and resolve, as bulk actions with a note.

Alerts are raised by rules and offline detection, never added or edited by hand: the page is
read-only for everyone, and the actions (operators of the alert's tenant) go through
alerts/services.py like the API does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template import engines
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from alerts import services
from alerts.models import Alert, AlertEvent, Notification
from devices.admin.tenancy import (
    TenantScopedAdmin,
    TenantScopedFilter,
    TenantScopedInline,
    holds_role_anywhere,
)
from devices.models import Role

SEVERITY_COLOURS = {"critical": "#ba2121", "warning": "#c77c02", "info": "#417690"}
STATE_COLOURS = {"open": "#ba2121", "acknowledged": "#c77c02", "resolved": "#2e7d32"}

# The confirmation page of the actions: which alerts, and an optional note. A template string
# (not a file) because it is this admin's alone and small.
NOTE_PAGE = engines["django"].from_string(
    """{% extends "admin/base_site.html" %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{% url 'admin:index' %}">Home</a>
&rsaquo; <a href="{% url 'admin:alerts_alert_changelist' %}">Alerts</a> &rsaquo; {{ title }}</div>
{% endblock %}
{% block content %}
<p>{{ intro }}</p>
{% if skipped %}<p class="errornote">{{ skipped }}</p>{% endif %}
<ul>{% for alert in alerts|slice:":50" %}<li>{{ alert.title }} — {{ alert.get_state_display }}</li>
{% endfor %}{% if alerts|length > 50 %}<li>… and {{ alerts|length|add:"-50" }} more</li>{% endif %}
</ul>
<form method="post">{% csrf_token %}
  {% for pk in selected_ids %}
    <input type="hidden" name="{{ checkbox }}" value="{{ pk }}">{% endfor %}
  <input type="hidden" name="select_across" value="{{ select_across }}">
  <input type="hidden" name="action" value="{{ action }}">
  <fieldset class="module aligned"><div class="form-row">{{ form.note.errors }}
    <label for="id_note">Note (optional):</label> {{ form.note }}
    <div class="help">{{ form.note.help_text }}</div></div></fieldset>
  <div class="submit-row"><input type="submit" name="apply" value="{{ submit }}" class="default">
  <a href="" class="closelink">Cancel</a></div>
</form>
{% endblock %}"""
)


class NoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept in the alert's history, e.g. who is on it or what fixed it.",
    )


class AlertEventInline(TenantScopedInline):
    """The alert's history, oldest first."""

    model = AlertEvent
    fields = ["at", "kind", "user", "note"]
    readonly_fields = fields
    can_delete = False
    verbose_name = "history entry"
    verbose_name_plural = "history"

    def has_add_permission(self, request: HttpRequest, obj: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NotificationInline(TenantScopedInline):
    """Who was told, how, and whether it got through."""

    model = Notification
    fields = [
        "created_at",
        "channel",
        "reason",
        "status",
        "attempts",
        "response_code",
        "sent_at",
        "last_error",
    ]
    readonly_fields = fields
    can_delete = False
    verbose_name_plural = "notifications"

    def has_add_permission(self, request: HttpRequest, obj: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _badge(value: str, label: str, colours: dict[str, str]) -> SafeString:
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 6px;border-radius:3px">{}</span>',
        colours.get(value, "#666"),
        label,
    )


@admin.register(Alert)
class AlertAdmin(TenantScopedAdmin):
    list_display = [
        "title",
        "state_badge",
        "severity_badge",
        "kind",
        "device_key",
        "count",
        "first_triggered_at",
        "last_triggered_at",
        "acknowledged_by",
        "acknowledged_at",
        "resolved_at",
        "tenant",
    ]
    list_filter = [
        "state",
        "severity",
        "kind",
        ("tenant", TenantScopedFilter),
        ("rule", TenantScopedFilter),
        ("device", TenantScopedFilter),
    ]
    search_fields = ["title", "device__key"]
    list_select_related = ["tenant", "device", "acknowledged_by"]
    date_hierarchy = "last_triggered_at"
    actions = ["acknowledge_selected", "resolve_selected"]
    inlines = [AlertEventInline, NotificationInline]
    fieldsets = [
        (None, {"fields": ["title", "tenant", "kind", "severity", "state", "rule", "device"]}),
        (
            "What triggered it",
            {
                "fields": [
                    "values",
                    "count",
                    "first_triggered_at",
                    "last_triggered_at",
                    "cleared_at",
                ]
            },
        ),
        (
            "People",
            {
                "fields": [
                    "acknowledged_by",
                    "acknowledged_at",
                    "acknowledge_note",
                    "resolved_by",
                    "resolved_at",
                    "resolve_note",
                ]
            },
        ),
        (
            "Notifications",
            {"fields": ["escalation_level", "notified_at", "reminded_at", "reopened"]},
        ),
    ]

    # Raised by rules and offline detection; changed only through the actions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.OPERATOR)

    @admin.display(description="state", ordering="state")
    def state_badge(self, alert: Alert) -> SafeString:
        return _badge(alert.state, alert.get_state_display(), STATE_COLOURS)

    @admin.display(description="severity", ordering="severity")
    def severity_badge(self, alert: Alert) -> SafeString:
        return _badge(alert.severity, alert.get_severity_display(), SEVERITY_COLOURS)

    @admin.display(description="device", ordering="device__key")
    def device_key(self, alert: Alert) -> str:
        return alert.device.key

    # --- Actions ------------------------------------------------------------------------------

    @admin.action(description="Acknowledge selected alerts…", permissions=["acknowledge"])
    def acknowledge_selected(
        self, request: HttpRequest, queryset: QuerySet
    ) -> TemplateResponse | None:
        return self._act(
            request,
            queryset,
            action="acknowledge_selected",
            title="Acknowledge alerts",
            intro="Acknowledging stops escalation and reminders; the alert stays until resolved. "
            "Only open alerts are acknowledged.",
            submit="Acknowledge",
            change=services.acknowledge_alerts,
            done="Acknowledged {n} alert(s).",
            untouched="{n} selected alert(s) were not open (already acknowledged or resolved) "
            "and were left as they were.",
        )

    @admin.action(description="Resolve selected alerts…", permissions=["acknowledge"])
    def resolve_selected(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        return self._act(
            request,
            queryset,
            action="resolve_selected",
            title="Resolve alerts",
            intro="Resolve the alerts whose problem is dealt with; if it comes back, a new alert "
            "opens.",
            submit="Resolve",
            change=services.resolve_alerts,
            done="Resolved {n} alert(s).",
            untouched="{n} selected alert(s) were already resolved and were left as they were.",
        )

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        *,
        action: str,
        title: str,
        intro: str,
        submit: str,
        change: Callable[..., int],
        done: str,
        untouched: str,
    ) -> TemplateResponse | None:
        """Ask for a note, then change the selected alerts the user operates through `change`."""
        allowed = queryset.for_user(request.user, role=Role.OPERATOR)
        selected = queryset.count()
        skipped = selected - allowed.count()
        skipped_note = (
            f"{skipped} selected alert(s) are in tenants where you may only view: they are left "
            "alone."
            if skipped
            else ""
        )
        if not skipped < selected:
            self.message_user(
                request,
                "None of the selected alerts is in a tenant where you are an operator, so nothing "
                "changed. Ask a tenant admin for operator rights.",
                messages.ERROR,
            )
            return None
        form = NoteForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": title,
                "intro": intro,
                "skipped": skipped_note,
                "alerts": list(allowed.select_related("device")),
                "form": form,
                "submit": submit,
                "action": action,
                "checkbox": helpers.ACTION_CHECKBOX_NAME,
                "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
            }
            return TemplateResponse(request, NOTE_PAGE, context)
        eligible = allowed.count()
        changed = change(allowed, request.user, form.cleaned_data["note"])
        self.message_user(request, done.format(n=changed), messages.SUCCESS)
        if changed < eligible:
            self.message_user(request, untouched.format(n=eligible - changed), messages.WARNING)
        if skipped:
            self.message_user(request, skipped_note, messages.WARNING)
        return None

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("device")
