"""Forms of the alerts page: its filters, and the note people add when they act on alerts."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import Q, QuerySet

from alerts.models import AlertKind, AlertState
from rules.models import Severity

UNRESOLVED = "unresolved"


class AlertFilterForm(forms.Form):
    """GET filters of `/alerts/`; by default the unresolved alerts."""

    state = forms.ChoiceField(
        required=False,
        choices=[(UNRESOLVED, "Unresolved"), *AlertState.choices, ("all", "Any state")],
    )
    severity = forms.ChoiceField(required=False, choices=[("", "Any severity"), *Severity.choices])
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *AlertKind.choices])
    device = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)
    q = forms.CharField(
        required=False,
        max_length=100,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Title or device key"}),
    )

    def filter(self, alerts: QuerySet) -> QuerySet:
        data = self.cleaned_data if self.is_bound else {}
        state = data.get("state") or UNRESOLVED
        if state == UNRESOLVED:
            alerts = alerts.exclude(state=AlertState.RESOLVED)
        elif state != "all":
            alerts = alerts.filter(state=state)
        if data.get("severity"):
            alerts = alerts.filter(severity=data["severity"])
        if data.get("kind"):
            alerts = alerts.filter(kind=data["kind"])
        if data.get("device"):
            alerts = alerts.filter(device__key=data["device"])
        if data.get("q"):
            text = data["q"].strip()
            alerts = alerts.filter(Q(title__icontains=text) | Q(device__key__icontains=text))
        return alerts


class AlertActionForm(forms.Form):
    """Acknowledge or resolve alerts (one, or the ones ticked), with an optional note."""

    action = forms.ChoiceField(choices=[("acknowledge", "Acknowledge"), ("resolve", "Resolve")])
    alerts = forms.TypedMultipleChoiceField(coerce=int, choices=[])
    note = forms.CharField(required=False, max_length=2000)
    next = forms.CharField(required=False, max_length=2000)

    def __init__(self, data: Any, alert_ids: list[int]) -> None:
        super().__init__(data)
        self.fields["alerts"].choices = [(pk, pk) for pk in alert_ids]
        self.fields["alerts"].error_messages["required"] = "Tick at least one alert."
        self.fields["alerts"].error_messages["invalid_choice"] = (
            "You may act only on alerts of tenants where you are an operator (or the alert no "
            "longer exists): reload the page."
        )
