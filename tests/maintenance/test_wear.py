"""Degrading devices on demand: the drift shapes, the simulator's wear model and seed_demo's
week of history with a first scoring."""

from __future__ import annotations

import math
import random
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection

from alerts.models import Alert, AlertKind
from devices.models import Device, Metric
from maintenance.demo import WEAR_ATTRIBUTE, seed_demo_wear
from maintenance.models import MaintenancePrediction
from maintenance.wear import (
    DAY,
    SHAPES,
    Wear,
    healthy_level,
    picked_to_degrade,
    shape_curve,
    wearing_value,
)
from telemetry.simulator import DeviceProfile, MetricSpec, simulated_device


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_starts_at_the_baseline_and_reaches_the_threshold_on_time(shape):
    assert shape_curve(shape, np.array([-0.5, 0.0]))[0] == 0
    assert shape_curve(shape, np.array([1.0]))[0] == pytest.approx(1.0)
    curve = shape_curve(shape, np.linspace(0.01, 1, 50))
    assert (np.diff(curve) > 0).all()
    wear = Wear(3.0, 11.0, 0.3, start=0.0, cross_at=10 * DAY, shape=shape)
    assert wear.expected(np.array([-DAY, 10 * DAY])).tolist() == pytest.approx([3.0, 11.0])


def test_readings_get_noisier_as_the_part_nears_failure():
    wear = Wear(3.0, 11.0, 0.3, start=0.0, cross_at=10 * DAY, shape="linear", noise_growth=2.0)
    rng = np.random.default_rng(0)
    early = wear.sample(np.arange(0, 0.5 * DAY, 60.0), rng) - wear.expected(
        np.arange(0, 0.5 * DAY, 60.0)
    )
    late_times = np.arange(9.5 * DAY, 10 * DAY, 60.0)
    late = wear.sample(late_times, rng) - wear.expected(late_times)
    assert np.std(late) > 2.5 * np.std(early)


def test_an_unknown_shape_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="linear, accelerating, knee, step"):
        shape_curve("sideways", np.array([0.5]))


def test_the_share_of_degrading_devices_is_about_what_was_asked_and_stable():
    keys = [f"pump-{n:04d}" for n in range(2000)]
    picked = [k for k in keys if picked_to_degrade(k, 0.1)]
    assert 150 < len(picked) < 250
    assert picked == [k for k in keys if picked_to_degrade(k, 0.1)]
    assert not any(picked_to_degrade(k, 0.0) for k in keys)


def test_the_simulator_drives_wear_indicators_with_the_wear_model():
    vibration = MetricSpec("vibration", "mm/s", 0, 50, failure_threshold=11.2)
    flow = MetricSpec("flow_rate", "m³/h", 0, 200)
    profile = DeviceProfile(key="pump-1", firmware_version="1.0", metrics=(vibration, flow))
    device = simulated_device(profile)
    now = 1_800_000_000.0
    rng = random.Random(1)
    values = [device.readings(now + 5 * n, rng)["vibration"] for n in range(2000)]
    # A healthy pump runs at ~30 % of the threshold, well inside the range, never near 11.2.
    assert 2.0 < np.mean(values) < 5.0
    assert max(values) < 8.0


def test_a_degrading_plan_carries_the_simulated_pump_to_its_threshold():
    plan = {
        "metric": "vibration",
        "baseline": 3.0,
        "noise": 0.2,
        "shape": "accelerating",
        "start": 0.0,
        "cross_at": 10 * DAY,
    }
    model = wearing_value("pump-1", "vibration", 11.2, True, 0, 50, plan, 0.0, now=0.0)
    rng = random.Random(2)
    at_start = np.mean([model.step(60, 0.0 + 60 * n, rng) for n in range(60)])
    at_crossing = np.mean([model.step(60, 10 * DAY + 60 * n, rng) for n in range(60)])
    assert at_start == pytest.approx(3.0, abs=0.5)
    assert at_crossing == pytest.approx(11.2, abs=1.0)


def test_healthy_level_sits_well_away_from_either_kind_of_threshold():
    assert healthy_level(11.2, True, 0, 50) == pytest.approx(3.36)
    assert healthy_level(2.0, False, 0, 16) == pytest.approx(11.8)
    assert math.isfinite(healthy_level(2.0, False, None, None))


def test_seed_demo_backfills_a_week_of_wear_and_the_at_risk_list_is_not_empty(db):
    out = StringIO()
    call_command("seed_demo", devices=120, stdout=out)
    vibration = Metric.objects.get(device_type__name="Pump", name="vibration")
    assert vibration.is_wear_indicator
    assert vibration.failure_threshold == 11.2
    current = Metric.objects.get(device_type__name="Freezer", name="compressor_current")
    assert (current.is_wear_indicator, current.failure_threshold) == (True, 9.5)
    worn = Device.objects.filter(device_type__in=[vibration.device_type, current.device_type])
    assert all(WEAR_ATTRIBUTE in device.attributes for device in worn)
    degrading = [d for d in worn if "shape" in d.attributes[WEAR_ATTRIBUTE]]
    assert 0 < len(degrading) < len(worn) / 3
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT device_id) FROM telemetry_reading "
            "WHERE metric_id = ANY(%s)",
            [[vibration.pk, current.pk]],
        )
        readings, devices = cursor.fetchone()
    assert devices == worn.count()
    assert readings == pytest.approx(worn.count() * 7 * 1440, rel=0.01)
    at_risk = MaintenancePrediction.objects.filter(at_risk=True)
    # Both tenants have devices at risk: the demo login (Acme) sees some too.
    assert set(at_risk.values_list("tenant__slug", flat=True)) == {"acme", "globex"}
    assert set(at_risk.values_list("device_id", flat=True)) <= {d.pk for d in degrading}
    assert Alert.objects.filter(kind=AlertKind.MAINTENANCE).count() == at_risk.count()
    assert "devices at risk" in out.getvalue()
    # Seeding again writes no history twice.
    assert seed_demo_wear().readings == 0
