"""Back-testing a rule against stored history: how many alerts it would have raised, on which
devices and on which days, over the last N days — before it is saved.

The readings of the rule's devices are read slice by slice (a few hours of device time at a time,
so memory stays bounded) and run through the same core as live evaluation
(rules.engine.evaluate_rows) with states kept in memory: nothing is written, no alert is raised.
An alert counts when the rule would open one; breaking again within ALERT_FLAP_WINDOW of its
resolution reopens the same alert (alerts.services does the same), so it does not count twice.
No-data rules count the silences longer than their duration.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import connection

from rules import engine
from rules.models import Rule

SLICE = timedelta(hours=6)


@dataclass
class DeviceBacktest:
    device_id: int
    device_key: str
    device_name: str
    alerts: int = 0
    breaking_readings: int = 0
    first_at: datetime | None = None  # when its first alert would have opened
    last_at: datetime | None = None  # when its last one would have opened


@dataclass
class BacktestResult:
    days: int
    start: datetime
    end: datetime
    devices_checked: int = 0
    readings_checked: int = 0
    alerts: int = 0
    devices: list[DeviceBacktest] = field(default_factory=list)
    per_day: list[tuple[date, int]] = field(default_factory=list)
    elapsed_ms: float = 0.0

    def as_dict(self) -> dict:
        return {
            "days": self.days,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "devices_checked": self.devices_checked,
            "readings_checked": self.readings_checked,
            "alerts": self.alerts,
            "devices": [
                {
                    "device_id": d.device_id,
                    "device_key": d.device_key,
                    "device_name": d.device_name,
                    "alerts": d.alerts,
                    "breaking_readings": d.breaking_readings,
                    "first_at": d.first_at.isoformat() if d.first_at else None,
                    "last_at": d.last_at.isoformat() if d.last_at else None,
                }
                for d in self.devices
            ],
            "per_day": [[day.isoformat(), count] for day, count in self.per_day],
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


READINGS = """
SELECT device_id, metric_id, (extract(epoch FROM time) * 1000)::bigint, value
FROM telemetry_reading
WHERE device_id = ANY(%s) AND metric_id = ANY(%s) AND time >= %s AND time < %s
ORDER BY device_id, time
"""
HEARD = """
SELECT DISTINCT device_id, (extract(epoch FROM time) * 1000)::bigint AS t
FROM telemetry_reading
WHERE device_id = ANY(%s) AND metric_id = ANY(%s) AND time >= %s AND time < %s
ORDER BY device_id, t
"""


def backtest(rule: Rule, days: int, now: datetime | None = None) -> BacktestResult:
    """What `rule` (saved or not; validated by the caller) would have raised over the last
    `days` days (at most RULES_BACKTEST_MAX_DAYS)."""
    started = time.perf_counter()
    days = max(1, min(int(days), settings.RULES_BACKTEST_MAX_DAYS))
    end = now or datetime.now(UTC)
    start = end - timedelta(days=days)
    result = BacktestResult(days=days, start=start, end=end)
    metrics = dict(rule.device_type.metrics.values_list("name", "id"))
    compiled = engine.compile_rule(rule, metrics)
    devices = {
        pk: DeviceBacktest(pk, key, name)
        for pk, key, name in engine.devices_in_scope(rule).values_list("id", "key", "name")
    }
    result.devices_checked = len(devices)
    openings: list[tuple[int, int]] = []
    if devices and compiled.metrics:
        if compiled.no_data:
            openings = _silences(compiled, devices, start, end, result)
        else:
            openings = _replay(compiled, devices, start, end, result)
    per_day: dict[date, int] = defaultdict(int)
    for device_id, ms in openings:
        at = datetime.fromtimestamp(ms / 1000, tz=UTC)
        found = devices[device_id]
        found.alerts += 1
        found.first_at = min(found.first_at or at, at)
        found.last_at = max(found.last_at or at, at)
        per_day[at.date()] += 1
    result.alerts = len(openings)
    result.devices = sorted(
        (d for d in devices.values() if d.alerts),
        key=lambda d: (-d.alerts, -d.breaking_readings, d.device_key),
    )
    day, last = start.date(), end.date()
    while day <= last:
        result.per_day.append((day, per_day.get(day, 0)))
        day += timedelta(days=1)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


def _replay(
    rule: engine.CompiledRule,
    devices: dict[int, DeviceBacktest],
    start: datetime,
    end: datetime,
    result: BacktestResult,
) -> list[tuple[int, int]]:
    states: dict[int, engine.DeviceState] = {}
    names = {metric_id: name for name, metric_id in rule.metrics.items()}
    flap_ms = settings.ALERT_FLAP_WINDOW.total_seconds() * 1000
    resolved_at: dict[int, int] = {}
    openings = []
    ids = sorted(devices)
    since = start
    with connection.cursor() as cursor:
        while since < end:
            until = min(since + SLICE, end)
            cursor.execute(READINGS, [ids, list(names), since, until])
            rows = cursor.fetchall()
            since = until
            if not rows:
                continue
            result.readings_checked += len(rows)
            dev, ts, raw = _as_rows(rows, names)
            evaluation = engine.evaluate_rows(rule, dev, ts, raw, states)
            for device_id, count in evaluation.breaking.items():
                devices[device_id].breaking_readings += count
            # Openings and resolutions in device time order, to tell a reopening from an alert.
            events = [(t, 1, d) for d, t in evaluation.openings]
            for items in evaluation.resolves.values():
                events += [(t, 0, d) for d, t in items]
            for t, kind, device_id in sorted(events):
                if kind == 0:
                    resolved_at[device_id] = t
                elif t - resolved_at.get(device_id, -(2**62)) > flap_ms:
                    openings.append((device_id, t))
    return openings


def _as_rows(
    rows: list[tuple[int, int, int, float]], names: dict[int, str]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Readings ordered by (device, time) as the core's rows: one per (device, time)."""
    table = np.asarray(rows, dtype=np.float64)
    dev, metric, ts = (table[:, i].astype(np.int64) for i in range(3))
    new_row = np.r_[True, (dev[1:] != dev[:-1]) | (ts[1:] != ts[:-1])]
    row_of = np.cumsum(new_row) - 1
    raw = {}
    for metric_id, name in names.items():
        column = np.full(int(new_row.sum()), np.nan)
        mine = metric == metric_id
        column[row_of[mine]] = table[mine, 3]
        raw[name] = column
    return dev[new_row], ts[new_row], raw


def _silences(
    rule: engine.CompiledRule,
    devices: dict[int, DeviceBacktest],
    start: datetime,
    end: datetime,
    result: BacktestResult,
) -> list[tuple[int, int]]:
    """No-data rules: one alert per silence longer than the rule's duration (from the start of
    the span, between readings, and up to its end)."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    heard: dict[int, list[int]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(HEARD, [sorted(devices), list(rule.metrics.values()), start, end])
        for device_id, t in cursor.fetchall():
            heard[device_id].append(t)
    openings = []
    for device_id in devices:
        times = np.array([start_ms, *heard.get(device_id, []), end_ms], dtype=np.int64)
        result.readings_checked += len(times) - 2
        gaps = np.flatnonzero(np.diff(times) > rule.for_ms)
        for i in gaps.tolist():
            openings.append((device_id, int(times[i]) + rule.for_ms))
        devices[device_id].breaking_readings += len(gaps)
    return openings
