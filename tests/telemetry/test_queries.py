"""Readings over a time range, raw and bucketed, and latest values: exact answers over known
data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device, Metric
from telemetry import queries
from telemetry.models import LatestReading
from tests.factories import make_device

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def store(device: Device, metric: Metric, *readings: tuple[datetime, float]) -> None:
    """Readings written straight into the table, as ingest would."""
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_reading (time, device_id, metric_id, value, flagged) "
            "VALUES (%s, %s, %s, %s, false)",
            [(time, device.pk, metric.pk, value) for time, value in readings],
        )


@pytest.fixture
def three_minutes(acme_device, temperature, humidity):
    """Temperature over 12:00 to 12:03, stored out of time order; humidity twice."""
    store(
        acme_device,
        temperature,
        (at(40), 2.0),
        (at(0), 1.0),
        (at(20), 3.0),
        (at(90), 4.0),
        (at(60), 10.0),
        (at(150), -1.0),
    )
    store(acme_device, humidity, (at(10), 50.0), (at(70), 60.0))
    return acme_device


def test_one_minute_buckets_over_three_minutes_have_exact_aggregates(three_minutes, temperature):
    series = queries.readings(three_minutes, [temperature], T0, at(180), bucket="1m")
    assert series.rows == [
        {"time": at(0), "metric": "temperature", "avg": 2.0, "min": 1.0, "max": 3.0, "count": 3,
         "last": 2.0},
        {"time": at(60), "metric": "temperature", "avg": 7.0, "min": 4.0, "max": 10.0, "count": 2,
         "last": 4.0},
        {"time": at(120), "metric": "temperature", "avg": -1.0, "min": -1.0, "max": -1.0,
         "count": 1, "last": -1.0},
    ]  # fmt: skip
    assert not series.truncated


def test_last_is_the_value_at_the_latest_time_not_the_last_stored(acme_device, temperature):
    store(acme_device, temperature, (at(50), 5.0), (at(10), 9.0))
    series = queries.readings(acme_device, [temperature], T0, at(60), "1m", ["last"])
    assert series.rows == [{"time": T0, "metric": "temperature", "last": 5.0}]


def test_only_the_requested_aggregates_are_computed(three_minutes, temperature):
    series = queries.readings(three_minutes, [temperature], T0, at(60), "1m", ["max", "count"])
    assert series.rows == [{"time": T0, "metric": "temperature", "max": 3.0, "count": 3}]


def test_five_minute_buckets_hold_every_metric_asked_for(three_minutes, temperature, humidity):
    series = queries.readings(three_minutes, [temperature, humidity], T0, at(300), "5m")
    by_metric = {row["metric"]: row for row in series.rows}
    assert by_metric["temperature"]["count"] == 6
    assert by_metric["temperature"]["avg"] == pytest.approx(19 / 6)
    assert by_metric["temperature"]["last"] == -1.0
    assert by_metric["humidity"] == {
        "time": T0, "metric": "humidity", "avg": 55.0, "min": 50.0, "max": 60.0, "count": 2,
        "last": 60.0,
    }  # fmt: skip


def test_buckets_align_to_the_clock_not_to_start(three_minutes, temperature):
    series = queries.readings(three_minutes, [temperature], at(30), at(180), "1m", ["count"])
    assert [(row["time"], row["count"]) for row in series.rows] == [
        (at(0), 1),
        (at(60), 2),
        (at(120), 1),
    ]


def test_day_buckets_start_at_midnight_utc(acme_device, temperature):
    store(acme_device, temperature, (at(0), 1.0), (at(86_400), 2.0), (at(86_400 + 3600), 4.0))
    series = queries.readings(acme_device, [temperature], T0, at(2 * 86_400), "1d", ["avg"])
    midnight = datetime(2025, 3, 1, tzinfo=UTC)
    assert [(row["time"], row["avg"]) for row in series.rows] == [
        (midnight, 1.0),
        (midnight + timedelta(days=1), 3.0),
    ]


def test_raw_readings_come_oldest_first_for_the_metrics_asked_for(three_minutes, temperature):
    series = queries.readings(three_minutes, [temperature], T0, at(180))
    assert [(row.time, row.metric, row.value) for row in series.rows] == [
        (at(0), "temperature", 1.0),
        (at(20), "temperature", 3.0),
        (at(40), "temperature", 2.0),
        (at(60), "temperature", 10.0),
        (at(90), "temperature", 4.0),
        (at(150), "temperature", -1.0),
    ]
    assert series.rows[0].flagged is False


def test_start_is_included_and_end_excluded(three_minutes, temperature):
    raw = queries.readings(three_minutes, [temperature], at(20), at(90))
    assert [row.time for row in raw.rows] == [at(20), at(40), at(60)]
    bucketed = queries.readings(three_minutes, [temperature], at(20), at(90), "1h", ["count"])
    assert bucketed.rows[0]["count"] == 3


def test_another_devices_readings_are_left_out(three_minutes, temperature, acme):
    other = make_device(acme, "acme-freezer-2", device_type=three_minutes.device_type)
    store(other, temperature, (at(5), 99.0))
    series = queries.readings(three_minutes, [temperature], T0, at(60))
    assert 99.0 not in [row.value for row in series.rows]


def test_no_metrics_or_an_empty_range_reads_nothing(three_minutes, temperature):
    assert queries.readings(three_minutes, [], T0, at(180)).rows == []
    assert queries.readings(three_minutes, [temperature], at(60), at(60)).rows == []


def test_raw_readings_stop_at_the_limit_before_a_timestamp_they_would_split(
    acme_device, temperature, humidity
):
    store(acme_device, temperature, (at(0), 1.0), (at(10), 2.0), (at(20), 3.0))
    store(acme_device, humidity, (at(0), 40.0), (at(10), 41.0), (at(20), 42.0))
    series = queries.readings(acme_device, [temperature, humidity], T0, at(60), limit=3)
    assert series.truncated
    assert series.next_start == at(10)
    assert sorted((row.time, row.metric) for row in series.rows) == [
        (at(0), "humidity"),
        (at(0), "temperature"),
    ]
    rest = queries.readings(acme_device, [temperature, humidity], series.next_start, at(60))
    assert len(rest.rows) == 4
    assert not rest.truncated


def test_a_bucket_name_outside_the_list_never_reaches_the_database(three_minutes, temperature):
    with pytest.raises(ValueError, match="not supported"):
        queries.readings(three_minutes, [temperature], T0, at(60), "1 minute'); --")
    with pytest.raises(ValueError, match="not supported"):
        queries.readings(three_minutes, [temperature], T0, at(60), "1m", ["sum(value)"])


def test_bucket_count_bounds_the_rows_per_metric():
    assert queries.bucket_count(T0, at(180), "1m") == 4
    assert queries.bucket_count(T0, T0 + timedelta(days=7), "5m") == 2017


def _latest(device: Device, metric: Metric, value: float, flagged: bool = False) -> None:
    LatestReading.objects.create(
        device=device, metric=metric, time=at(60), value=value, flagged=flagged
    )


def test_latest_for_devices_answers_every_device_in_one_query(
    acme, acme_device, temperature, humidity
):
    other = make_device(acme, "acme-freezer-2", device_type=acme_device.device_type)
    silent = make_device(acme, "acme-freezer-3", device_type=acme_device.device_type)
    _latest(acme_device, temperature, -18.5)
    _latest(acme_device, humidity, 40.0, flagged=True)
    _latest(other, temperature, -20.0)
    with CaptureQueriesContext(connection) as captured:
        latest = queries.latest_for_devices([acme_device.pk, other.pk, silent.pk])
    assert len(captured) == 1
    assert [(v.metric, v.unit, v.value, v.flagged) for v in latest[acme_device.pk]] == [
        ("humidity", "%", 40.0, True),
        ("temperature", "°C", -18.5, False),
    ]
    assert [v.value for v in latest[other.pk]] == [-20.0]
    assert silent.pk not in latest
    assert queries.latest_for_device(silent) == []


def test_recent_averages_are_five_minute_averages_per_metric(three_minutes, temperature):
    points = queries.recent_averages(three_minutes, [temperature], at(300), timedelta(hours=1))
    assert points == {"temperature": [(T0, pytest.approx(19 / 6))]}
