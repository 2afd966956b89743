"""The fleet's "at risk" list at /maintenance/at-risk/ (with the partial its live refresh
re-fetches on `maintenance.scored`) and a device's health at /maintenance/devices/<key>/ (the
same section the dashboards' device page /devices/<key>/ includes, refreshed live from
/maintenance/devices/<key>/section/)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from dashboards.pages import live_page
from devices.models import Device
from maintenance.models import MaintenancePrediction

LISTED = 200


def at_risk_context(request: HttpRequest) -> dict:
    predictions = MaintenancePrediction.objects.for_user(request.user).select_related(
        "device", "metric", "tenant"
    )
    show_all = request.GET.get("show") == "all"
    listed = predictions if show_all else predictions.at_risk()
    rows = list(listed.worst_first()[:LISTED])
    health = predictions.device_health()
    return {
        "rows": rows,
        "show_all": show_all,
        "truncated": listed.count() > LISTED,
        "scored_devices": len(health),
        "at_risk_devices": predictions.at_risk().values("device").distinct().count(),
        "crossed": predictions.filter(crossed=True).values("device").distinct().count(),
        "healthy": sum(1 for value in health.values() if value >= 80),
        "last_scored": max((row.scored_at for row in rows), default=None),
    }


at_risk, at_risk_table = live_page(
    at_risk_context, "maintenance/at_risk.html", "maintenance/partials/at_risk_table.html"
)


@require_GET
@login_required
def device_health(request: HttpRequest, key: str) -> HttpResponse:
    device = get_object_or_404(Device.objects.for_user(request.user), key=key)
    return render(request, "maintenance/device_health.html", {"device": device})


@require_GET
@login_required
def device_health_section(request: HttpRequest, key: str) -> HttpResponse:
    """The section alone, for the device page's live refresh."""
    device = get_object_or_404(Device.objects.for_user(request.user), key=key)
    return render(request, "maintenance/partials/device_health_section.html", {"device": device})
