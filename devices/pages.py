"""What the device page (`/devices/<key>/`) shows, section by section; each section is also a
partial its live refresh re-renders, so each has its own function here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from alerts.models import Alert
from dashboards.charts import SEVERITY_COLOURS, Line, Point, time_chart
from devices.models import Command, Device
from rules.thresholds import thresholds_for
from telemetry.models import DeviceIngestState, RejectedMessage
from telemetry.queries import BUCKETS, latest_for_device, readings


@dataclass(frozen=True)
class ChartRange:
    name: str
    label: str
    span: timedelta
    bucket: str  # a key of telemetry.queries.BUCKETS
    refresh_ms: int  # how often the live chart may redraw


RANGES = {
    r.name: r
    for r in (
        ChartRange("1h", "1 hour", timedelta(hours=1), "1m", 10_000),
        ChartRange("6h", "6 hours", timedelta(hours=6), "5m", 30_000),
        ChartRange("24h", "24 hours", timedelta(hours=24), "5m", 60_000),
        ChartRange("7d", "7 days", timedelta(days=7), "1h", 300_000),
        ChartRange("30d", "30 days", timedelta(days=30), "1d", 600_000),
    )
}
DEFAULT_RANGE = "6h"


def chart_range(name: str | None) -> ChartRange:
    return RANGES.get(name or DEFAULT_RANGE, RANGES[DEFAULT_RANGE])


@dataclass(frozen=True)
class MetricChart:
    metric: str
    unit: str
    svg: str
    latest: float | None
    thresholds: list[Any]


def charts(device: Device, span: ChartRange) -> dict[str, Any]:
    """One SVG chart per metric of the device's type: bucket averages with min-max, and the
    thresholds of the rules applying to the device."""
    end = timezone.now()
    start = end - span.span
    metrics = list(device.device_type.metrics.all())
    series = readings(
        device, metrics, start, end, bucket=span.bucket, aggregates=("avg", "min", "max")
    )
    points: dict[str, list[Point]] = {metric.name: [] for metric in metrics}
    for row in series.rows:
        points[row["metric"]].append(Point(row["time"], row["avg"], row["min"], row["max"]))
    limits = thresholds_for(device)
    made = []
    for metric in metrics:
        thresholds = limits.get(metric.name, [])
        lines = [
            Line(t.value, t.label, SEVERITY_COLOURS.get(t.severity, SEVERITY_COLOURS["warning"]))
            for t in thresholds
        ]
        title = f"{metric.name} ({metric.unit})" if metric.unit else metric.name
        svg = time_chart(
            points[metric.name],
            start,
            end,
            unit=metric.unit,
            bucket=BUCKETS[span.bucket],
            lines=lines,
            title=f"{title}, last {span.label}",
        )
        made.append(MetricChart(metric.name, metric.unit, svg, None, thresholds))
    return {"charts": made, "range": span, "ranges": list(RANGES.values())}


def latest(device: Device) -> dict[str, Any]:
    return {"latest_values": latest_for_device(device)}


def shadow(device: Device) -> dict[str, Any]:
    return {"shadow": getattr(device, "shadow", None)}


def recent_alerts(device: Device, limit: int = 10) -> dict[str, Any]:
    alerts = (
        Alert.objects.filter(device=device)
        .select_related("acknowledged_by", "resolved_by")
        .order_by("-last_triggered_at", "-pk")[:limit]
    )
    return {"device_alerts": list(alerts)}


def recent_commands(device: Device, limit: int = 10) -> dict[str, Any]:
    commands = Command.objects.filter(device=device).select_related("created_by")[:limit]
    return {"commands": list(commands)}


def ingest_health(device: Device, limit: int = 8) -> dict[str, Any]:
    return {
        "ingest_state": DeviceIngestState.objects.filter(device=device).first(),
        "rejections": list(RejectedMessage.objects.filter(device=device)[:limit]),
    }
