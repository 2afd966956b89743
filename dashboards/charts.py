"""Charts drawn on the server as SVG: no JavaScript library, nothing to install, and the chart is
in the page (and its screenshots) as soon as the HTML is.

`time_chart()` draws one metric over a time range from bucketed rows (the bucket's average as
a line, its min-max as a band), with a time axis, a value axis labelled with the unit, and the
thresholds of the device's rules as dashed lines coloured by severity. A gap longer than two
buckets breaks the line, so a device that was offline shows as a gap, not a straight line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 230
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 12, 30
SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#e69500", "info": "#2f5fb3"}
LINE_COLOUR, BAND_COLOUR, GRID_COLOUR, AXIS_COLOUR = "#2f5fb3", "#2f5fb322", "#e3e6eb", "#98a2b3"
TIME_STEPS = [
    timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
]


@dataclass(frozen=True)
class Point:
    time: datetime  # the bucket's start
    value: float  # its average
    low: float | None = None  # its min
    high: float | None = None  # its max


@dataclass(frozen=True)
class Line:
    """A horizontal line across the chart: a rule's threshold."""

    value: float
    label: str
    colour: str = SEVERITY_COLOURS["warning"]


def nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def value_ticks(low: float, high: float) -> list[float]:
    step = nice_step(high - low)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def time_ticks(start: datetime, end: datetime, count: int = 6) -> list[datetime]:
    """Round times (on the minute, hour or local midnight) about `count` of them over the range."""
    span = end - start
    step = next((s for s in TIME_STEPS if span / s <= count), TIME_STEPS[-1])
    local = timezone.localtime(start)
    if step >= timedelta(days=1):
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        minutes = int(step.total_seconds() // 60)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        since_midnight = int((local - day).total_seconds() // 60)
        first = day + timedelta(minutes=math.ceil(since_midnight / minutes) * minutes)
    ticks = []
    moment = first
    while moment <= end:
        if moment >= start:
            ticks.append(moment)
        moment += step
    return ticks


def _format_value(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _format_time(moment: datetime, span: timedelta) -> str:
    local = timezone.localtime(moment)
    if span > timedelta(days=2):
        return (
            local.strftime("%b %d")
            if local.hour == 0 and local.minute == 0
            else local.strftime("%d %H:%M")
        )
    return local.strftime("%H:%M")


def time_chart(
    points: Sequence[Point],
    start: datetime,
    end: datetime,
    *,
    unit: str = "",
    bucket: timedelta,
    lines: Sequence[Line] = (),
    title: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
    include_zero: bool = False,
) -> SafeString:
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    values = [p.value for p in points]
    values += [p.low for p in points if p.low is not None]
    values += [p.high for p in points if p.high is not None]
    values += [line.value for line in lines]
    if include_zero:
        values.append(0.0)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = (0.0, max(high, 1.0)) if include_zero and low >= 0 else (low - 1, high + 1)
    pad = (high - low) * 0.08
    floor = 0.0 if include_zero and low >= 0 else low - pad  # a rate never goes below 0
    ticks = value_ticks(floor, high + pad)
    low, high = min(ticks[0], floor), max(ticks[-1], high + pad)
    span_s = max((end - start).total_seconds(), 1.0)

    def x(moment: datetime) -> float:
        return MARGIN_LEFT + plot_w * (moment - start).total_seconds() / span_s

    def y(value: float) -> float:
        return MARGIN_TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
    ]
    # Value axis: grid lines and labels, the unit on top.
    for tick in ticks:
        ty = y(tick)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{width - MARGIN_RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="{GRID_COLOUR}"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="#667085">'
            f"{escape(_format_value(tick))}</text>"
        )
    if unit:
        parts.append(
            f'<text x="6" y="{MARGIN_TOP + plot_h / 2:.1f}" fill="#667085" text-anchor="middle" '
            f'transform="rotate(-90 10 {MARGIN_TOP + plot_h / 2:.1f})" class="unit">'
            f"{escape(unit)}</text>"
        )
    # Time axis.
    baseline = MARGIN_TOP + plot_h
    parts.append(
        f'<line x1="{MARGIN_LEFT}" x2="{width - MARGIN_RIGHT}" y1="{baseline}" y2="{baseline}" '
        f'stroke="{AXIS_COLOUR}"/>'
        f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{baseline}" '
        f'stroke="{AXIS_COLOUR}"/>'
    )
    for tick in time_ticks(start, end):
        tx = x(tick)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{baseline}" y2="{baseline + 4}" '
            f'stroke="{AXIS_COLOUR}"/>'
            f'<text x="{tx:.1f}" y="{baseline + 17}" text-anchor="middle" fill="#667085">'
            f"{escape(_format_time(tick, end - start))}</text>"
        )
    # The data: min-max band and average line, broken where buckets are missing.
    for segment in _segments(points, bucket):
        band = [(p.time, p.high) for p in segment if p.high is not None]
        band += [(p.time, p.low) for p in reversed(segment) if p.low is not None]
        if len(segment) > 1 and band:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in band)
            parts.append(f'<polygon points="{coords}" fill="{BAND_COLOUR}" stroke="none"/>')
        if len(segment) == 1:
            p = segment[0]
            parts.append(
                f'<circle cx="{x(p.time):.1f}" cy="{y(p.value):.1f}" r="2.5" fill="{LINE_COLOUR}"/>'
            )
        else:
            coords = " ".join(f"{x(p.time):.1f},{y(p.value):.1f}" for p in segment)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{LINE_COLOUR}" '
                f'stroke-width="1.6" stroke-linejoin="round" class="series"/>'
            )
    # Thresholds over the data, labelled at the right end.
    for line in lines:
        ly = y(line.value)
        parts.append(
            f'<g class="threshold"><line x1="{MARGIN_LEFT}" x2="{width - MARGIN_RIGHT}" '
            f'y1="{ly:.1f}" y2="{ly:.1f}" stroke="{line.colour}" stroke-width="1.3" '
            f'stroke-dasharray="6 4"/>'
            f'<text x="{width - MARGIN_RIGHT - 4}" y="{ly - 4:.1f}" text-anchor="end" '
            f'fill="{line.colour}">{escape(line.label)}</text></g>'
        )
    if not points:
        parts.append(
            f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{MARGIN_TOP + plot_h / 2:.1f}" '
            f'text-anchor="middle" fill="#98a2b3" font-size="13">No data in this range</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  (every text in it went through escape())


def _segments(points: Sequence[Point], bucket: timedelta) -> list[list[Point]]:
    segments: list[list[Point]] = []
    for point in sorted(points, key=lambda p: p.time):
        if segments and point.time - segments[-1][-1].time <= bucket * 2:
            segments[-1].append(point)
        else:
            segments.append([point])
    return segments
