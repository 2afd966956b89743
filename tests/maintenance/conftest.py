"""A pump fleet with a wear indicator and a week of readings: ten healthy pumps and one whose
vibration drifts towards its failure threshold."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import connection

from devices.models import Device, Metric
from maintenance.wear import Wear
from tests.factories import make_device, make_pump_type

# A whole hour, so the scoring window (which ends at the start of the current hour) is exact.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(minutes=30)
THRESHOLD = 11.0


def insert_readings(device: Device, metric: Metric, times: Sequence[datetime], values) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO telemetry_reading (time, device_id, metric_id, value)
            SELECT t, %s, %s, v FROM unnest(%s::timestamptz[], %s::float8[]) AS r(t, v)
            ON CONFLICT DO NOTHING
            """,
            [device.pk, metric.pk, list(times), [float(v) for v in values]],
        )


def delete_readings(device: Device) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM telemetry_reading WHERE device_id = %s", [device.pk])


def week_of(wear: Wear, seed: int, end: datetime = NOW, step_minutes: int = 10):
    """Readings every `step_minutes` over the 7 days before `end`."""
    times = [
        end - timedelta(days=7) + timedelta(minutes=m) for m in range(0, 7 * 1440, step_minutes)
    ]
    seconds = np.array([t.timestamp() for t in times])
    return times, wear.sample(seconds, np.random.default_rng(seed))


def degrading(days_to_failure: float = 5.0) -> Wear:
    end = NOW.timestamp()
    return Wear(
        3.0,
        THRESHOLD,
        0.3,
        start=end - 10 * 86400,
        cross_at=end + days_to_failure * 86400,
        shape="linear",
    )


@pytest.fixture
def pump_fleet(globex):
    """(pump type, vibration metric, healthy pumps, the wearing pump) of Globex."""
    pump, vibration = make_pump_type(globex, THRESHOLD)
    healthy = []
    for n in range(10):
        device = make_device(globex, f"globex-pump-{n:02d}", device_type=pump)
        insert_readings(device, vibration, *week_of(Wear(3.0 + 0.1 * n, THRESHOLD, 0.3), seed=n))
        healthy.append(device)
    wearing = make_device(globex, "globex-pump-worn", device_type=pump, name="Pump Worn")
    insert_readings(wearing, vibration, *week_of(degrading(), seed=99))
    return pump, vibration, healthy, wearing
