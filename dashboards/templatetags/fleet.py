"""Small template helpers of the operator pages: badges, ages, JSON, query strings."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.http import QueryDict
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag
def badge(value: str, label: str = "") -> str:
    """A coloured badge; the CSS class is the value (online, critical, acknowledged...)."""
    text = label or str(value).replace("_", " ")
    return format_html('<span class="badge {}">{}</span>', value, text)


@register.filter
def ago(moment: datetime | None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago'; 'never' for None."""
    if moment is None:
        return "never"
    seconds = (timezone.now() - moment).total_seconds()
    if seconds < 0:
        return "just now" if seconds > -5 else "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


@register.simple_tag
def when(moment: datetime | None) -> str:
    """A <time> showing the age, the exact time on hover."""
    if moment is None:
        return mark_safe('<span class="muted">never</span>')
    local = timezone.localtime(moment)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.isoformat(),
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        ago(moment),
    )


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@register.filter
def number(value: float | None) -> str:
    """A reading as people read it: up to 2 decimals, no trailing zeros."""
    if value is None:
        return "\u2013"  # an en dash
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@register.simple_tag(takes_context=True)
def query(context: Any, **changes: Any) -> str:
    """The current query string with `changes` applied (None or "" removes a key); `page` is
    dropped whenever a filter changes."""
    params: QueryDict = context["request"].GET.copy()
    if any(name != "page" for name in changes):
        params.pop("page", None)
    for name, value in changes.items():
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"
