"""Demo wear for `manage.py seed_demo`: so the "at risk" list is not empty on a fresh `make run`.

Every enabled device whose type has a wear indicator gets a wear plan in its attributes
(`simulated_wear`, see maintenance/wear.py `plan_wear`): one in DEGRADING_EVERY (by key order,
so seeding more devices later keeps the earlier picks) is degrading, reaching its threshold 3-12
days after the seeding. Then each such device gets a week of 1-minute
history of the indicator, written with COPY in PostgreSQL's binary format (numpy builds the
rows: 60 pumps x 10,080 readings take a couple of seconds), up to its first stored reading, so
running the seed again adds nothing twice. The simulator (`manage.py simulate`) reads the plan
and carries the same story on live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.db import connection, transaction

from devices.models import Device, Metric
from maintenance.readings_copy import COPY_HEADER, COPY_READINGS, COPY_TRAILER, copy_rows
from maintenance.wear import healthy_level, plan_wear, wear_from_plan

log = logging.getLogger(__name__)

WEAR_ATTRIBUTE = "simulated_wear"
DEGRADING_EVERY = 8
CROSS_DAYS = (3.0, 12.0)
HISTORY_DAYS = 7


@dataclass
class DemoWear:
    planned: int = 0
    degrading: int = 0
    readings: int = 0


def seed_demo_wear(now: datetime | None = None) -> DemoWear:
    """Plans and a week of history for every demo device with a wear indicator (idempotent)."""
    now = now or datetime.now(UTC)
    result = DemoWear()
    metrics = Metric.objects.wear_indicators().select_related("device_type").order_by("pk")
    for metric in metrics:
        devices = list(
            Device.objects.filter(device_type=metric.device_type, is_enabled=True).order_by("key")
        )
        if not devices:
            continue
        level = healthy_level(
            metric.failure_threshold, metric.rises_to_failure, metric.min_value, metric.max_value
        )
        with transaction.atomic():
            for number, device in enumerate(devices):
                plan = device.attributes.get(WEAR_ATTRIBUTE)
                if not isinstance(plan, dict) or plan.get("metric") != metric.name:
                    plan = plan_wear(
                        device.key,
                        metric.name,
                        metric.failure_threshold,
                        level,
                        now.timestamp(),
                        number % DEGRADING_EVERY == DEGRADING_EVERY // 2,
                        CROSS_DAYS,
                    )
                    device.attributes = {**device.attributes, WEAR_ATTRIBUTE: plan}
                    Device.objects.filter(pk=device.pk).update(attributes=device.attributes)
                    result.planned += 1
                result.degrading += "shape" in plan
            result.readings += backfill(metric, devices, now)
    return result


def backfill(metric: Metric, devices: list[Device], now: datetime) -> int:
    """HISTORY_DAYS of 1-minute readings per device, up to its first reading in that window."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(days=HISTORY_DAYS)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT device_id, min(time) FROM telemetry_reading
            WHERE metric_id = %s AND device_id = ANY(%s) AND time >= %s
            GROUP BY device_id
            """,
            [metric.pk, [d.pk for d in devices], start],
        )
        first_stored = dict(cursor.fetchall())
        written = 0
        with cursor.connection.cursor().copy(COPY_READINGS) as copy:
            copy.write(COPY_HEADER)
            for device in devices:
                until = first_stored.get(device.pk, end)
                times = np.arange(start.timestamp(), until.timestamp(), 60.0)
                if not len(times):
                    continue
                wear = wear_from_plan(device.attributes[WEAR_ATTRIBUTE], metric.failure_threshold)
                rng = np.random.default_rng(device.pk)
                values = np.round(wear.sample(times, rng), 3)
                if metric.min_value is not None or metric.max_value is not None:
                    values = np.clip(values, metric.min_value, metric.max_value)
                copy.write(copy_rows(times, device.pk, metric.pk, values))
                written += len(times)
            copy.write(COPY_TRAILER)
    log.info("backfilled %d readings of %s", written, metric.name)
    return written
