"""The report's charts, drawn with matplotlib's object API on the Agg canvas (no display, no
pyplot state shared between threads): PNG bytes per chart name."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLOURS = {
    "online": "#2e7d32",
    "offline": "#ba2121",
    "maintenance": "#c77c02",
    "critical": "#ba2121",
    "warning": "#c77c02",
    "info": "#417690",
    "good": "#2e7d32",
    "fair": "#c77c02",
    "poor": "#ba2121",
    "bars": "#417690",
}


def _figure(height: float = 2.4) -> tuple[Figure, Any]:
    figure = Figure(figsize=(6.4, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def devices_chart(devices: dict) -> bytes:
    figure, axes = _figure(1.6)
    left = 0
    for status in ("online", "offline", "maintenance"):
        count = devices[status]
        if count:
            axes.barh([0], [count], left=left, color=COLOURS[status], label=f"{status} {count}")
            left += count
    axes.set_yticks([])
    axes.set_xlabel("devices")
    axes.set_title(f"Devices by status · uptime {devices['uptime_percent']:.2f} %", loc="left")
    if left:
        axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _png(figure)


def alerts_chart(alerts: dict) -> bytes:
    figure, axes = _figure()
    rows = alerts["by_severity"]
    names = [row["severity"] for row in rows]
    positions = range(len(rows))
    width = 0.27
    shades = (("opened", "#1f3b57"), ("acknowledged", "#417690"), ("resolved", "#9cc3d9"))
    for offset, (key, colour) in enumerate(shades):
        axes.bar(
            [p + (offset - 1) * width for p in positions],
            [row[key] for row in rows],
            width,
            color=colour,
            label=key,
        )
    axes.set_xticks(list(positions), names)
    axes.set_ylabel("alerts")
    axes.set_title("Alerts opened, acknowledged and resolved, by severity", loc="left")
    axes.legend(frameon=False)
    return _png(figure)


def ingest_chart(ingest: dict) -> bytes:
    figure, axes = _figure()
    hours = [datetime.fromisoformat(hour) for hour, _ in ingest["readings_per_hour"]]
    counts = [count for _, count in ingest["readings_per_hour"]]
    if hours:
        axes.bar(hours, counts, width=1 / 24, align="edge", color=COLOURS["bars"], linewidth=0)
        figure.autofmt_xdate()
    axes.set_ylabel("readings per hour")
    axes.set_title(f"Readings stored · {ingest['readings']:,} in all", loc="left")
    return _png(figure)


def rejections_chart(ingest: dict) -> bytes:
    rows = list(reversed(ingest["rejected_by_reason"][:8]))
    figure, axes = _figure(0.6 + 0.35 * max(len(rows), 1))
    labels = [reason if len(reason) < 60 else reason[:57] + "…" for reason, _ in rows]
    axes.barh(range(len(rows)), [count for _, count in rows], color=COLOURS["offline"])
    axes.set_yticks(range(len(rows)), labels, fontsize=8)
    axes.set_xlabel("messages")
    axes.set_title(f"Messages rejected · {ingest['rejected']:,}, by reason", loc="left")
    return _png(figure)


def health_chart(risk: dict) -> bytes:
    figure, axes = _figure(1.8)
    bands = risk["health_bands"]
    names = list(bands)
    axes.bar(names, [bands[n] for n in names], color=[COLOURS[n] for n in names])
    axes.set_ylabel("devices")
    axes.set_title(
        f"Device health (80+ good, 50-80 fair, <50 poor) · {risk['at_risk']} at risk", loc="left"
    )
    return _png(figure)


def rollouts_chart(rollouts: dict) -> bytes:
    rows = list(reversed(rollouts["rollouts"][:10]))
    figure, axes = _figure(0.8 + 0.35 * len(rows))
    left = [0] * len(rows)
    for key, colour in (("succeeded", "online"), ("failed", "offline"), ("unfinished", "info")):
        values = [row[key] for row in rows]
        axes.barh(range(len(rows)), values, left=left, color=COLOURS[colour], label=key)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_yticks(range(len(rows)), [f"{r['name']} ({r['release']})" for r in rows], fontsize=8)
    axes.set_xlabel("devices")
    axes.set_title("Firmware rollouts: devices updated, failed, not finished", loc="left")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)


def report_charts(figures: dict) -> dict[str, bytes]:
    """Every chart the figures call for; a section with nothing to show has no chart."""
    charts = {
        "devices": devices_chart(figures["devices"]),
        "alerts": alerts_chart(figures["alerts"]),
        "ingest": ingest_chart(figures["ingest"]),
    }
    if figures["rollouts"]["rollouts"]:
        charts["rollouts"] = rollouts_chart(figures["rollouts"])
    if figures["ingest"]["rejected_by_reason"]:
        charts["rejections"] = rejections_chart(figures["ingest"])
    if any(figures["risk"]["health_bands"].values()):
        charts["health"] = health_chart(figures["risk"])
    return charts
