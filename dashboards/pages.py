"""What the operator pages of every app share (docs/dashboards.md, "the pages contract"): a page
and the partial its live refresh re-fetches, built from one context; and the pagination of the
list pages (rendered by templates/dashboards/partials/pagination.html)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

View = Callable[[HttpRequest], HttpResponse]


def live_page(
    build: Callable[[HttpRequest], dict[str, Any]], template: str, partial: str
) -> tuple[View, View]:
    """(the page's view, its partial's view), both GET-only for logged-in users and rendered
    from `build(request)`: the page includes the partial on first render, and its
    `data-live-url` points at the partial's view, so a refresh shows what a reload would.
    `build` scopes what it shows to the request's user (`.for_user`)."""

    @require_GET
    @login_required
    def page(request: HttpRequest) -> HttpResponse:
        return render(request, template, build(request))

    @require_GET
    @login_required
    def refresh(request: HttpRequest) -> HttpResponse:
        return render(request, partial, build(request))

    return page, refresh


def paginate(request: HttpRequest, rows: QuerySet, per_page: int) -> dict[str, Any]:
    """`page` (the `?page=` asked, the last one past the end) and `query`, the request's query
    string for the partial's URL, so the live refresh shows the same page and filters."""
    return {
        "page": Paginator(rows, per_page).get_page(request.GET.get("page")),
        "query": request.GET.urlencode(),
    }
