"""The fleet overview at `/` and the partials its live sections re-fetch."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboards.fleet import fleet_summary, ingest_panel, recent_alerts


def _status_context(request: HttpRequest) -> dict:
    return {"summary": fleet_summary(request.user), "recent_alerts": recent_alerts(request.user)}


@require_GET
@login_required
def overview(request: HttpRequest) -> HttpResponse:
    context = {**_status_context(request), **ingest_panel(request.user)}
    return render(request, "dashboards/overview.html", context)


@require_GET
@login_required
def overview_ingest(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboards/partials/ingest.html", ingest_panel(request.user))


@require_GET
@login_required
def overview_status(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboards/partials/fleet_status.html", _status_context(request))
