"""What the operator sees of telemetry in the admin.

- Rejected messages and ingest events (sequence gaps and resets): read-only lists, tenant-scoped;
  a rejection whose topic named no known device has no tenant and only superusers see it.
- The device page's "Telemetry" section (`DEVICE_TELEMETRY_FIELDSET`, used by
  `devices.admin.fleet.DeviceAdmin`): latest values with a 24-hour sparkline each, the ingest
  counters, and the latest rejections and events. Everything is escaped through format_html.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from devices.admin.tenancy import ReadOnlyTenantAdmin, TenantScopedFilter
from devices.models import Device
from telemetry.models import DeviceIngestState, IngestEvent, RejectedMessage
from telemetry.queries import latest_for_device, recent_averages

SPARKLINE_SPAN = timedelta(hours=24)
SPARKLINE_WIDTH, SPARKLINE_HEIGHT = 200, 32
# A pause longer than this breaks the sparkline, so missing data reads as missing.
SPARKLINE_GAP = timedelta(minutes=15)
RECENT = 10

MUTED = "color:var(--body-quiet-color,#666)"
TABLE = '<table style="margin:0;min-width:0">{}</table>'


def _when(moment: datetime | None) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else "never"


def _changelist(model: type, device: Device) -> str:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist") + (
        f"?device__id__exact={device.pk}"
    )


def _number(value: float) -> str:
    return f"{value:.4g}"


# --- The device page's Telemetry section --------------------------------------------------------


def sparkline(
    points: Sequence[tuple[datetime, float]], start: datetime, end: datetime, label: str
) -> SafeString:
    """A small SVG line of (time, value) points between start and end, drawn on the server.

    The line breaks where no data came for longer than SPARKLINE_GAP; a lone point is a dot.
    """
    if not points:
        return format_html('<span style="{}">no readings in 24 h</span>', MUTED)
    low = min(value for _, value in points)
    high = max(value for _, value in points)
    spread = (high - low) or 1.0
    span = (end - start).total_seconds()
    pad = 2

    def xy(moment: datetime, value: float) -> tuple[float, float]:
        x = pad + (moment - start).total_seconds() / span * (SPARKLINE_WIDTH - 2 * pad)
        y = SPARKLINE_HEIGHT - pad - (value - low) / spread * (SPARKLINE_HEIGHT - 2 * pad)
        if high == low:
            y = SPARKLINE_HEIGHT / 2
        return x, y

    segments: list[list[tuple[float, float]]] = []
    previous: datetime | None = None
    for moment, value in points:
        if previous is None or moment - previous > SPARKLINE_GAP:
            segments.append([])
        segments[-1].append(xy(moment, value))
        previous = moment
    shapes = format_html_join(
        "",
        "{}",
        (
            (
                format_html(
                    '<polyline points="{}" fill="none" stroke="#417690" stroke-width="1.5"/>',
                    " ".join(f"{x:.1f},{y:.1f}" for x, y in segment),
                )
                if len(segment) > 1
                else format_html(
                    '<circle cx="{}" cy="{}" r="1.5" fill="#417690"/>',
                    f"{segment[0][0]:.1f}",
                    f"{segment[0][1]:.1f}",
                ),
            )
            for segment in segments
        ),
    )
    last_x, last_y = xy(*points[-1])
    title = f"{label}, last 24 h (5-minute averages): min {_number(low)}, max {_number(high)}"
    return format_html(
        '<svg class="sparkline" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}" style="vertical-align:middle;background:var(--darkened-bg,#f8f8f8)">'
        '<title>{}</title>{}<circle cx="{}" cy="{}" r="2" fill="#c00"/></svg>'
        ' <small style="{}">{} to {}</small>',
        SPARKLINE_WIDTH,
        SPARKLINE_HEIGHT,
        SPARKLINE_WIDTH,
        SPARKLINE_HEIGHT,
        title,
        title,
        shapes,
        f"{last_x:.1f}",
        f"{last_y:.1f}",
        MUTED,
        _number(low),
        _number(high),
    )


@admin.display(description="Latest values")
def telemetry_latest(device: Device) -> SafeString:
    """Each metric of the device's type: its latest value and time, and its last 24 hours."""
    metrics = list(device.device_type.metrics.order_by("name"))
    if not metrics:
        return format_html('<span style="{}">The device type defines no metrics.</span>', MUTED)
    latest = {value.metric: value for value in latest_for_device(device)}
    end = timezone.now()
    start = end - SPARKLINE_SPAN
    points = recent_averages(device, metrics, end, SPARKLINE_SPAN)
    rows = []
    for metric in metrics:
        value = latest.get(metric.name)
        shown = (
            format_html(
                "<strong>{}</strong>{}{}",
                _number(value.value),
                f" {metric.unit}" if metric.unit else "",
                format_html(
                    ' <span title="{}" style="color:#c00">⚑ flagged</span>',
                    "Outside the metric's valid range; stored flagged.",
                )
                if value.flagged
                else "",
            )
            if value
            else format_html('<span style="{}">no value yet</span>', MUTED)
        )
        rows.append(
            (
                metric.name,
                shown,
                _when(value.time) if value else "",
                sparkline(points.get(metric.name, []), start, end, metric.name),
            )
        )
    body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
    head = format_html(
        "<tr><th>Metric</th><th>Value</th><th>At</th><th>Last 24 hours</th></tr>{}", body
    )
    return format_html(TABLE, head)


@admin.display(description="Ingest")
def telemetry_ingest(device: Device) -> SafeString:
    """The device's ingest counters: rejected messages, messages lost, sequence resets."""
    state = DeviceIngestState.objects.filter(device=device).first() or DeviceIngestState(
        device=device
    )
    return format_html(
        '<a href="{}">Rejected messages: <strong>{}</strong></a> (last {}) · '
        "Messages lost: <strong>{}</strong> · "
        '<a href="{}">Sequence resets: <strong>{}</strong></a>',
        _changelist(RejectedMessage, device),
        state.rejected_messages,
        _when(state.last_rejected_at),
        state.messages_lost,
        _changelist(IngestEvent, device),
        state.seq_resets,
    )


def _recent_table(headers: tuple[str, ...], row: str, values: list[tuple]) -> SafeString:
    """A small table of the device's latest rows, or a muted "None."."""
    if not values:
        return format_html('<span style="{}">None.</span>', MUTED)
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    return format_html(TABLE, format_html("<tr>{}</tr>{}", head, format_html_join("", row, values)))


@admin.display(description="Recent rejections")
def telemetry_rejections(device: Device) -> SafeString:
    """The device's latest rejected messages: when, why, and the start of what was sent."""
    return _recent_table(
        ("At", "Reason", "Payload"),
        '<tr><td style="white-space:nowrap">{}</td><td>{}</td><td><code>{}</code></td></tr>',
        [
            (
                _when(rejection.received_at),
                rejection.reason,
                Truncator(rejection.payload_excerpt).chars(120),
            )
            for rejection in RejectedMessage.objects.filter(device=device)[:RECENT]
        ],
    )


@admin.display(description="Ingest events")
def telemetry_events(device: Device) -> SafeString:
    """The device's latest sequence gaps (messages lost) and resets (reboots)."""
    return _recent_table(
        ("At", "Event", "Detail"),
        '<tr><td style="white-space:nowrap">{}</td><td>{}</td><td>{}</td></tr>',
        [
            (_when(event.time), event.get_kind_display(), event.detail)
            for event in IngestEvent.objects.filter(device=device)[:RECENT]
        ],
    )


DEVICE_TELEMETRY_FIELDS = (
    telemetry_latest,
    telemetry_ingest,
    telemetry_rejections,
    telemetry_events,
)
DEVICE_TELEMETRY_FIELDSET = ("Telemetry", {"fields": DEVICE_TELEMETRY_FIELDS})


# --- Rejected messages and ingest events --------------------------------------------------------

# Rejection reasons are sentences written for operators; these phrases sort them into kinds.
REASON_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "device": (
        "Unknown or disabled device",
        ("unknown device", "not a valid device key", "device is disabled", "unexpected topic"),
    ),
    "payload": (
        "Malformed payload",
        (
            "bad JSON",
            "not UTF-8",
            "JSON nested",
            "-byte limit",
            "readings in one message",
            "empty list",
            "is a JSON object",
            '"metrics" must',
            "status is {",
        ),
    ),
    "time": ("Time missing or clock off", ('"ts"',)),
    "metric": ("Unknown metric", ("is not defined for device type",)),
    "range": ("Out of range", ("outside its valid range",)),
    "value": (
        "Invalid value",
        ("send a number", "not a finite number", "JSON allows", "metric name", '"seq"'),
    ),
}


def _reason_matches(phrases: Sequence[str]) -> Q:
    query = Q()
    for phrase in phrases:
        query |= Q(reason__icontains=phrase)
    return query


class ReasonKindFilter(admin.SimpleListFilter):
    title = "reason"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(kind, label) for kind, (label, _) in REASON_KINDS.items()] + [("other", "Other")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        kind = self.value()
        if kind in REASON_KINDS:
            return queryset.filter(_reason_matches(REASON_KINDS[kind][1]))
        if kind == "other":
            every = [phrase for _, phrases in REASON_KINDS.values() for phrase in phrases]
            return queryset.exclude(_reason_matches(every))
        return queryset


@admin.register(RejectedMessage)
class RejectedMessageAdmin(ReadOnlyTenantAdmin):
    list_display = ["received_at", "device_column", "topic", "reason", "size"]
    list_filter = [ReasonKindFilter, "received_at", ("tenant", TenantScopedFilter)]
    list_select_related = ["device"]
    search_fields = ["device_key", "topic", "reason"]
    search_help_text = "Device key, topic or reason."
    fields = [
        "received_at",
        "tenant",
        "device",
        "device_key",
        "topic",
        "reason",
        "payload",
        "payload_size",
    ]
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.tenant_id is None:
            # The topic named no known device, so no tenant owns the row.
            return request.user.is_active and request.user.is_superuser
        return super().has_view_permission(request, obj)

    @admin.display(description="Device", ordering="device_key")
    def device_column(self, obj: RejectedMessage) -> str:
        return obj.device.key if obj.device else f"{obj.device_key or '?'} (unknown)"

    @admin.display(description="Size", ordering="payload_size")
    def size(self, obj: RejectedMessage) -> str:
        return f"{obj.payload_size} B"

    @admin.display(description="Payload (excerpt)")
    def payload(self, obj: RejectedMessage) -> SafeString:
        return format_html(
            '<pre style="margin:0;white-space:pre-wrap">{}</pre>', obj.payload_excerpt
        )


@admin.register(IngestEvent)
class IngestEventAdmin(ReadOnlyTenantAdmin):
    list_display = ["time", "device", "kind", "detail", "count"]
    list_filter = ["kind", "time", ("device__tenant", TenantScopedFilter)]
    list_select_related = ["device"]
    search_fields = ["device__key", "detail"]
    search_help_text = "Device key or detail."
    fields = ["time", "device", "kind", "detail", "count"]
    readonly_fields = fields
