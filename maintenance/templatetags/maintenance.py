"""Template tags of the maintenance pages: the trend charts, and the device health section any
page can include with `{% load maintenance %}{% device_health device %}`."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString

from maintenance import charts
from maintenance.models import MaintenancePrediction

register = template.Library()


@register.simple_tag
def sparkline(prediction: MaintenancePrediction) -> SafeString:
    return charts.sparkline(prediction)


@register.simple_tag
def trend_chart(prediction: MaintenancePrediction) -> SafeString:
    return charts.trend_chart(prediction)


@register.filter
def health_class(health: float | None) -> str:
    """The badge class of a health score: good (80+), fair (50-80), poor (<50)."""
    if health is None:
        return "outline"
    return "ok" if health >= 80 else "warning" if health >= 50 else "critical"


@register.inclusion_tag("maintenance/partials/device_health.html", takes_context=True)
def device_health(context: Any, device: Any) -> dict:
    """The wear indicators of `device` with their health, prediction and trend chart. The
    caller has already checked the user may see the device."""
    predictions = list(
        MaintenancePrediction.objects.filter(device=device)
        .select_related("metric")
        .order_by("health", "metric__name")
    )
    wear_metrics = device.device_type.metrics.wear_indicators().order_by("name")
    return {
        "device": device,
        "predictions": predictions,
        "unscored": [m for m in wear_metrics if m.pk not in {p.metric_id for p in predictions}],
        "request": context.get("request"),
    }
