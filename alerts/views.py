"""The alerts page (`/alerts/`): filters, live table, acknowledge and resolve for operators."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from alerts import services
from alerts.forms import AlertActionForm, AlertFilterForm
from alerts.models import Alert
from dashboards.pages import live_page, paginate
from devices.models import Role, Tenant

PAGE_SIZE = 50


def _alert_list(request: HttpRequest) -> dict[str, Any]:
    form = AlertFilterForm(request.GET or None)
    form.is_valid()
    alerts = form.filter(
        Alert.objects.for_user(request.user).select_related(
            "device", "tenant", "acknowledged_by", "resolved_by"
        )
    ).order_by("-last_triggered_at", "-pk")
    listed = paginate(request, alerts, PAGE_SIZE)
    operator_of = set(
        Tenant.objects.for_user(request.user, Role.OPERATOR).values_list("pk", flat=True)
    )
    for alert in listed["page"]:
        alert.can_act = alert.tenant_id in operator_of
    return {"form": form, "can_act": bool(operator_of), **listed}


alert_list, alert_rows = live_page(_alert_list, "alerts/list.html", "alerts/partials/rows.html")


@require_POST
@login_required
def act_on_alerts(request: HttpRequest) -> HttpResponse:
    """Acknowledge or resolve the ticked alerts (or the one whose button was pressed). Only
    alerts of tenants where the user is an operator are acted on; viewers get 403."""
    if not Tenant.objects.for_user(request.user, Role.OPERATOR).exists():
        raise PermissionDenied("Viewers cannot acknowledge or resolve alerts.")
    mine = Alert.objects.for_user(request.user, Role.OPERATOR)
    data = request.POST.copy()
    if "one" in data:  # a row's own button: that alert only, whatever is ticked
        action, _, pk = data["one"].partition(":")
        data.setlist("alerts", [pk])
        data["action"] = action
    ids = [int(pk) for pk in data.getlist("alerts") if pk.isdigit()]
    allowed = list(mine.filter(pk__in=ids).values_list("pk", flat=True))
    form = AlertActionForm(data, allowed)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return _back(request, form.data.get("next"))
    chosen = mine.filter(pk__in=form.cleaned_data["alerts"])
    note = form.cleaned_data["note"]
    if form.cleaned_data["action"] == "acknowledge":
        done = services.acknowledge_alerts(chosen, request.user, note)
        verb, skipped = "acknowledged", "not open"
    else:
        done = services.resolve_alerts(chosen, request.user, note)
        verb, skipped = "resolved", "already resolved"
    left = len(form.cleaned_data["alerts"]) - done
    if done:
        messages.success(request, f"{done} alert{'s' if done != 1 else ''} {verb}.")
    if left:
        were = "alerts were" if left != 1 else "alert was"
        messages.warning(request, f"{left} {were} {skipped}: left as is.")
    return _back(request, form.cleaned_data["next"])


def _back(request: HttpRequest, target: str | None) -> HttpResponseRedirect:
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(reverse("alerts:list"))
