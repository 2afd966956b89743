"""The trend chart of a prediction, drawn as inline SVG on the server (no script, no image
request): the window's hourly means, the failure threshold, and the trend carried on to where
it meets the threshold, with the 90 % interval of that date shaded. `sparkline()` is the small
version the "at risk" list shows per row; `trend_chart()` the device page's, with axes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from maintenance.models import MaintenancePrediction

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Frame:
    """Maps times and values to SVG coordinates inside the plot area."""

    start: datetime
    end: datetime
    low: float
    high: float
    left: float
    top: float
    width: float
    height: float

    def x(self, moment: datetime) -> float:
        share = (moment - self.start) / (self.end - self.start)
        return round(self.left + min(max(share, 0.0), 1.0) * self.width, 1)

    def y(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return round(self.top + (1 - min(max(share, -0.05), 1.05)) * self.height, 1)


def _frame(
    prediction: MaintenancePrediction, width: float, height: float, margins: tuple[float, ...]
) -> tuple[Frame, list[tuple[datetime, float]]]:
    points = prediction.hourly_points()
    start = prediction.window_start
    horizon = prediction.evidence.get("horizon_days", 14)
    # Show the future up to the predicted crossing (a little past it), at least a few days.
    ahead = prediction.scored_at + DAY * 3
    if prediction.predicted_at is not None:
        ahead = max(ahead, min(prediction.predicted_at, prediction.scored_at + DAY * 2 * horizon))
        ahead += (ahead - start) * 0.04
    values = [value for _, value in points] + [prediction.threshold]
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or 1.0
    left, top, right, bottom = margins
    frame = Frame(
        start=start,
        end=ahead,
        low=low - pad,
        high=high + pad,
        left=left,
        top=top,
        width=width - left - right,
        height=height - top - bottom,
    )
    return frame, points


def _trend(prediction: MaintenancePrediction, frame: Frame) -> tuple[float, ...] | None:
    """The trend segment from now to the crossing (or the chart's end)."""
    level_now = prediction.evidence.get("level_now")
    if level_now is None or prediction.crossed:
        return None
    now = prediction.scored_at
    if prediction.predicted_at is not None:
        end, value = min(prediction.predicted_at, frame.end), prediction.threshold
        if prediction.predicted_at > frame.end:
            days = (frame.end - now) / DAY
            value = level_now + (prediction.threshold - level_now) * days / prediction.days_left
    else:
        end = frame.end
        value = level_now + prediction.slope_per_day * ((frame.end - now) / DAY)
    return frame.x(now), frame.y(level_now), frame.x(end), frame.y(value)


def _polyline(points: list[tuple[datetime, float]], frame: Frame) -> str:
    return " ".join(f"{frame.x(t)},{frame.y(v)}" for t, v in points)


def sparkline(prediction: MaintenancePrediction, width: int = 260, height: int = 56) -> SafeString:
    frame, points = _frame(prediction, width, height, (2, 4, 2, 4))
    trend = _trend(prediction, frame)
    parts = [
        format_html(
            '<line class="threshold" x1="{}" x2="{}" y1="{}" y2="{}"/>',
            frame.left,
            frame.left + frame.width,
            frame.y(prediction.threshold),
            frame.y(prediction.threshold),
        ),
        format_html(
            '<line class="now" x1="{}" x2="{}" y1="{}" y2="{}"/>',
            frame.x(prediction.scored_at),
            frame.x(prediction.scored_at),
            frame.top,
            frame.top + frame.height,
        ),
        format_html('<polyline class="series" points="{}"/>', _polyline(points, frame)),
    ]
    if trend:
        parts.append(format_html('<line class="trend" x1="{}" y1="{}" x2="{}" y2="{}"/>', *trend))
    return format_html(
        '<svg class="trend-chart spark" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="{} over the last {} days with its failure threshold">{}</svg>',
        width,
        height,
        width,
        height,
        prediction.metric.name,
        round((prediction.scored_at - prediction.window_start) / DAY),
        SafeString("".join(parts)),
    )


def trend_chart(
    prediction: MaintenancePrediction, width: int = 720, height: int = 240
) -> SafeString:
    frame, points = _frame(prediction, width, height, (52, 14, 14, 30))
    unit = f" {prediction.metric.unit}" if prediction.metric.unit else ""
    trend = _trend(prediction, frame)
    parts: list[SafeString] = []
    # The predicted date's 90 % interval, shaded.
    if prediction.earliest_at is not None and not prediction.crossed:
        latest = prediction.latest_at or frame.end
        parts.append(
            format_html(
                '<rect class="interval" x="{}" y="{}" width="{}" height="{}"><title>90 % '
                "interval of the date</title></rect>",
                frame.x(prediction.earliest_at),
                frame.top,
                max(frame.x(latest) - frame.x(prediction.earliest_at), 1),
                frame.height,
            )
        )
    # Value grid: four lines with labels.
    for step in range(5):
        value = frame.low + (frame.high - frame.low) * step / 4
        parts.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
                frame.left,
                frame.left + frame.width,
                frame.y(value),
                frame.y(value),
                frame.left - 6,
                frame.y(value) + 4,
                f"{value:.3g}",
            )
        )
    # Day ticks.
    day = frame.start.replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    days = int((frame.end - frame.start) / DAY) + 1
    every = max(1, days // 8)
    for n in range(0, days, every):
        moment = day + n * DAY
        if moment >= frame.end:
            break
        parts.append(
            format_html(
                '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
                frame.x(moment),
                frame.top + frame.height + 18,
                moment.strftime("%d %b"),
            )
        )
    parts += [
        format_html(
            '<line class="threshold" x1="{}" x2="{}" y1="{}" y2="{}"/>'
            '<text class="threshold-label" x="{}" y="{}">failure threshold {}{}</text>',
            frame.left,
            frame.left + frame.width,
            frame.y(prediction.threshold),
            frame.y(prediction.threshold),
            frame.left + 4,
            frame.y(prediction.threshold) - 4,
            f"{prediction.threshold:g}",
            unit,
        ),
        format_html(
            '<line class="now" x1="{}" x2="{}" y1="{}" y2="{}"/>'
            '<text class="axis" x="{}" y="{}" text-anchor="end">now</text>',
            frame.x(prediction.scored_at),
            frame.x(prediction.scored_at),
            frame.top,
            frame.top + frame.height,
            frame.x(prediction.scored_at) - 4,
            frame.top + 10,
        ),
        format_html('<polyline class="series" points="{}"/>', _polyline(points, frame)),
    ]
    if trend:
        parts.append(format_html('<line class="trend" x1="{}" y1="{}" x2="{}" y2="{}"/>', *trend))
    if prediction.predicted_at is not None and prediction.predicted_at <= frame.end:
        parts.append(
            format_html(
                '<circle class="crossing" cx="{}" cy="{}" r="4"><title>expected to reach the '
                "threshold {}</title></circle>",
                frame.x(prediction.predicted_at),
                frame.y(prediction.threshold),
                prediction.predicted_at.strftime("%Y-%m-%d %H:%M UTC"),
            )
        )
    return format_html(
        '<svg class="trend-chart" viewBox="0 0 {} {}" role="img" aria-label="{}: hourly means, '
        'trend and failure threshold">{}</svg>',
        width,
        height,
        prediction.metric.name,
        format_html_join("", "{}", ((part,) for part in parts)),
    )
