"""Questions about stored telemetry: a device's readings over a time range, raw or bucketed, and
the latest values of devices.

Plain functions over `telemetry_reading` (raw SQL, parameters always bound) and `LatestReading`,
the same on TimescaleDB and on plain partitioned PostgreSQL: buckets use `date_bin()`, not
TimescaleDB's `time_bucket()`, and "last" is the value at the latest time in the bucket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from devices.models import Device, Metric
from telemetry.models import LatestReading

# Bucket names the API accepts, and the interval each one is; nothing else reaches the SQL.
BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
# Each aggregate's SQL expression, chosen by name from this mapping only.
AGGREGATE_SQL: dict[str, str] = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "count": "count(*)",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
}
AGGREGATES: tuple[str, ...] = tuple(AGGREGATE_SQL)

RAW_LIMIT = 10_000
MAX_RAW_RANGE = timedelta(days=7)
MAX_BUCKETS = 10_000  # per metric

# Buckets start at multiples of their width from this origin, so 1h buckets start on the hour and
# 1d buckets at midnight UTC, whatever `start` is.
BUCKET_ORIGIN = "2000-01-01 00:00:00+00"


@dataclass(frozen=True)
class Sample:
    """One stored reading."""

    time: datetime
    metric: str
    value: float
    flagged: bool


@dataclass
class Series:
    """What `readings()` found: raw `Sample`s, or one dict per (bucket, metric) with `time` (the
    bucket's start), `metric` and the requested aggregates.

    `truncated` means raw rows stopped at the limit; ask again from `next_start` for the rest.
    """

    rows: list[Any] = field(default_factory=list)
    truncated: bool = False
    next_start: datetime | None = None


@dataclass(frozen=True)
class LatestValue:
    metric: str
    unit: str
    value: float
    time: datetime
    flagged: bool


def bucket_count(start: datetime, end: datetime, bucket: str) -> int:
    """How many buckets of one metric the range [start, end) spans at most."""
    width = BUCKETS[bucket]
    return int((end - start) / width) + 1


def readings(
    device: Device,
    metrics: Sequence[Metric],
    start: datetime,
    end: datetime,
    bucket: str | None = None,
    aggregates: Iterable[str] = AGGREGATES,
    limit: int | None = None,
) -> Series:
    """The device's readings of `metrics` with start <= time < end, oldest first.

    Without `bucket`: the stored readings, at most `limit` (default RAW_LIMIT); when there are
    more, the series ends before the first timestamp left out (never half of one) and
    `next_start` is that timestamp.
    With `bucket` (a key of BUCKETS): one row per bucket and metric that has readings, with the
    `aggregates` asked for (names of AGGREGATE_SQL).
    """
    names = {metric.pk: metric.name for metric in metrics}
    if not names or start >= end:
        return Series()
    if bucket is None:
        return _raw(device.pk, names, start, end, limit or RAW_LIMIT)
    return _bucketed(device.pk, names, start, end, bucket, list(aggregates))


def _raw(
    device_id: int, names: dict[int, str], start: datetime, end: datetime, limit: int
) -> Series:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT time, metric_id, value, flagged FROM telemetry_reading
            WHERE device_id = %s AND metric_id = ANY(%s) AND time >= %s AND time < %s
            ORDER BY time, metric_id
            LIMIT %s
            """,
            [device_id, list(names), start, end, limit + 1],
        )
        rows = cursor.fetchall()
    series = Series()
    if len(rows) > limit:
        series.truncated = True
        series.next_start = rows[limit][0]
        rows = [row for row in rows[:limit] if row[0] < series.next_start]
    series.rows = [
        Sample(time=time, metric=names[metric_id], value=value, flagged=flagged)
        for time, metric_id, value, flagged in rows
    ]
    return series


def _bucketed(
    device_id: int,
    names: dict[int, str],
    start: datetime,
    end: datetime,
    bucket: str,
    aggregates: list[str],
) -> Series:
    unknown = set(aggregates) - set(AGGREGATE_SQL)
    if bucket not in BUCKETS or unknown or not aggregates:
        raise ValueError(f"bucket {bucket!r} or aggregates {aggregates!r} not supported")
    columns = ", ".join(AGGREGATE_SQL[name] for name in aggregates)
    with connection.cursor() as cursor:
        # The columns come from AGGREGATE_SQL only; every value is a bound parameter.
        cursor.execute(
            f"""
            SELECT date_bin(%s, time, %s::timestamptz) AS bucket, metric_id, {columns}
            FROM telemetry_reading
            WHERE device_id = %s AND metric_id = ANY(%s) AND time >= %s AND time < %s
            GROUP BY 1, 2
            ORDER BY 1, 2
            """,  # noqa: S608
            [BUCKETS[bucket], BUCKET_ORIGIN, device_id, list(names), start, end],
        )
        rows = cursor.fetchall()
    return Series(
        rows=[
            {"time": row[0], "metric": names[row[1]], **dict(zip(aggregates, row[2:], strict=True))}
            for row in rows
        ]
    )


def latest_for_devices(device_ids: Iterable[int]) -> dict[int, list[LatestValue]]:
    """Each device's latest value per metric, by metric name, in one query."""
    values: dict[int, list[LatestValue]] = defaultdict(list)
    rows = (
        LatestReading.objects.filter(device_id__in=list(device_ids))
        .select_related("metric")
        .order_by("device_id", "metric__name")
    )
    for row in rows:
        values[row.device_id].append(
            LatestValue(
                metric=row.metric.name,
                unit=row.metric.unit,
                value=row.value,
                time=row.time,
                flagged=row.flagged,
            )
        )
    return dict(values)


def latest_for_device(device: Device) -> list[LatestValue]:
    return latest_for_devices([device.pk]).get(device.pk, [])


def recent_averages(
    device: Device, metrics: Sequence[Metric], end: datetime, span: timedelta = timedelta(hours=24)
) -> dict[str, list[tuple[datetime, float]]]:
    """(bucket start, average) per metric name over `span` before `end`, in 5-minute buckets:
    what a sparkline draws."""
    series = readings(device, metrics, end - span, end, bucket="5m", aggregates=("avg",))
    points: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for row in series.rows:
        points[row["metric"]].append((row["time"], row["avg"]))
    return dict(points)
