"""The model on small crafted series: trend, predicted date, confidence, health, anomaly."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from maintenance.scoring import (
    HourlySeries,
    Parameters,
    WearIndicator,
    fit_trend,
    hourly_from_minutes,
    score_device_type,
)
from maintenance.wear import DAY, SHAPES, Wear

START = datetime(2026, 3, 1, tzinfo=UTC)
HOURS = 7 * 24
VIBRATION = WearIndicator(metric_id=1, name="vibration", threshold=11.0, unit="mm/s")


def series(*rows: np.ndarray, spread: float = 0.2) -> HourlySeries:
    """Hourly means as given (NaN: no data), with a constant within-hour spread."""
    mean = np.vstack(rows).astype(float)
    std = np.where(np.isfinite(mean), spread, np.nan)
    count = np.where(np.isfinite(mean), 60, 0)
    return HourlySeries(np.arange(len(rows)), START, mean, std, count)


def hours() -> np.ndarray:
    """Days before the end of the window of each hourly bucket's centre."""
    return (np.arange(HOURS) + 0.5 - HOURS) / 24


def noise(scale: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, HOURS)


def test_a_steady_drift_predicts_when_it_reaches_the_threshold():
    # 1 mm/s per day, at 6 mm/s at the end of the window: 11 mm/s in 5 days.
    drift = 6.0 + 1.0 * hours() + noise(0.05)
    fit = fit_trend(series(drift), VIBRATION, Parameters())
    assert fit.slope_per_day[0] == pytest.approx(1.0, rel=0.02)
    assert fit.days_to_cross[0] == pytest.approx(5.0, rel=0.03)
    assert fit.earliest_days[0] < fit.days_to_cross[0] < fit.latest_days[0]
    assert fit.latest_days[0] - fit.earliest_days[0] < 0.5
    assert fit.confidence[0] > 0.9
    assert not fit.crossed[0]


def test_a_flat_series_predicts_no_crossing():
    flat = 4.0 + noise(0.3)
    fit = fit_trend(series(flat), VIBRATION, Parameters())
    scored = score_device_type([(VIBRATION, series(flat))])[0]
    assert fit.confidence[0] < 0.2 or fit.days_to_cross[0] > 100
    assert not scored.at_risk[0]
    assert scored.predicted_at(0) is None or scored.fit.days_to_cross[0] > 100
    assert scored.health[0] > 85


def test_more_noise_around_the_same_drift_widens_the_interval_and_lowers_the_confidence():
    quiet = 6.0 + 1.0 * hours() + noise(0.05, seed=1)
    noisy = 6.0 + 1.0 * hours() + noise(1.5, seed=1)
    fit = fit_trend(series(quiet, noisy), VIBRATION, Parameters())
    width = fit.latest_days - fit.earliest_days
    assert width[1] > 3 * width[0]
    assert fit.confidence[1] < fit.confidence[0]


def test_a_falling_metric_is_predicted_to_fall_to_its_threshold():
    pressure = WearIndicator(metric_id=2, name="pressure", threshold=2.0, rising=False)
    # 0.5 bar per day down, at 4 bar now: 2 bar in 4 days.
    falling = 4.0 - 0.5 * hours() + noise(0.02)
    fit = fit_trend(series(falling), pressure, Parameters())
    assert fit.slope_per_day[0] == pytest.approx(-0.5, rel=0.03)
    assert fit.days_to_cross[0] == pytest.approx(4.0, rel=0.03)
    assert fit.confidence[0] > 0.9
    # The same drift upwards never reaches a falling threshold.
    rising = fit_trend(series(4.0 + 0.5 * hours()), pressure, Parameters())
    assert rising.days_to_cross[0] == np.inf
    assert rising.confidence[0] == 0


def test_a_reading_past_the_threshold_has_crossed_with_health_zero():
    past = np.concatenate([np.full(HOURS - 12, 8.0), np.full(12, 11.5)])
    scored = score_device_type([(VIBRATION, series(past))])[0]
    assert scored.fit.crossed[0]
    assert scored.fit.days_to_cross[0] == 0
    assert scored.health[0] == 0
    assert scored.at_risk[0]


def test_too_few_hours_of_data_predict_nothing():
    sparse = np.full(HOURS, np.nan)
    sparse[-10:] = 10.0 + np.arange(10) * 0.1  # climbing fast, but only 10 hours of it
    scored = score_device_type([(VIBRATION, series(sparse))], Parameters(min_hours=24))[0]
    assert not scored.fit.enough_data[0]
    assert not scored.at_risk[0]
    assert np.isnan(scored.health[0])


def test_hours_without_data_are_skipped_not_read_as_zero():
    drift = 6.0 + 1.0 * hours()
    gappy = drift.copy()
    gappy[40:90] = np.nan  # two days of silence
    fit = fit_trend(series(gappy), VIBRATION, Parameters())
    assert fit.hours_with_data[0] == HOURS - 50
    assert fit.days_to_cross[0] == pytest.approx(5.0, rel=0.01)


def test_a_crossing_beyond_the_horizon_is_predicted_but_not_at_risk():
    # 0.2 mm/s per day from 6 mm/s: 25 days away, the horizon is 14.
    slow = 6.0 + 0.2 * hours() + noise(0.01)
    scored = score_device_type([(VIBRATION, series(slow))], Parameters(horizon_days=14))[0]
    assert scored.fit.days_to_cross[0] == pytest.approx(25.0, rel=0.05)
    assert scored.predicted_at(0) == pytest.approx(
        START + timedelta(days=7 + scored.fit.days_to_cross[0]), abs=timedelta(minutes=1)
    )
    assert not scored.at_risk[0]
    soon = score_device_type([(VIBRATION, series(slow))], Parameters(horizon_days=30))[0]
    assert soon.at_risk[0]


def test_health_ranks_a_device_closer_to_failure_lower():
    rows = [4.0 + noise(0.2, seed=n) for n in range(10)]  # a fleet of healthy devices
    rows.append(7.0 + 0.8 * hours() + noise(0.05))  # 5 days from failure
    rows.append(9.0 + 0.8 * hours() + noise(0.05))  # 2.5 days from failure
    scored = score_device_type([(VIBRATION, series(*rows))])[0]
    healthy, failing_later, failing_sooner = (
        scored.health[:10],
        scored.health[10],
        scored.health[11],
    )
    assert healthy.min() > failing_later > failing_sooner
    assert healthy.min() > 80
    assert failing_sooner < 40
    assert list(scored.at_risk) == [False] * 10 + [True, True]
    assert scored.reference_level == pytest.approx(4.0, abs=0.2)


def test_the_anomaly_score_singles_out_the_device_unlike_its_fleet():
    rows = [4.0 + noise(0.2, seed=n) for n in range(30)]
    rows.append(5.0 + 0.4 * hours() + noise(0.8))  # drifting and noisy
    scored = score_device_type([(VIBRATION, series(*rows))])[0]
    assert scored.anomaly.argmax() == 30
    assert scored.anomaly[30] > 0.1
    assert np.median(scored.anomaly[:30]) < 0.05


def test_a_few_devices_get_no_anomaly_score():
    rows = [4.0 + noise(0.2, seed=n) for n in range(3)]
    scored = score_device_type([(VIBRATION, series(*rows))], Parameters(forest_min_devices=8))[0]
    assert list(scored.anomaly) == [0, 0, 0]


def test_two_wear_indicators_of_a_type_are_scored_together():
    pressure = WearIndicator(metric_id=2, name="pressure", threshold=2.0, rising=False)
    vib = series(6.0 + 1.0 * hours(), 4.0 + noise(0.1))
    press = series(8.0 + noise(0.05), 8.0 - 1.0 * hours())
    by_metric = {
        s.indicator.name: s for s in score_device_type([(VIBRATION, vib), (pressure, press)])
    }
    assert list(by_metric["vibration"].at_risk) == [True, False]
    assert list(by_metric["pressure"].at_risk) == [False, True]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_drift_shape_of_the_simulator_is_flagged_before_it_crosses(shape):
    """A day of 1-minute readings per hour, a week long, crossing 3 days after the window."""
    end = 1_800_000_000.0
    minutes = np.arange(end - 7 * DAY, end, 60.0)
    wear = Wear(3.0, 11.0, 0.3, start=end - 8 * DAY, cross_at=end + 3 * DAY, shape=shape)
    rng = np.random.default_rng(7)
    healthy = [Wear(3.0 + 0.1 * n, 11.0, 0.3).sample(minutes, rng) for n in range(10)]
    mean, std, count = hourly_from_minutes(np.vstack([wear.sample(minutes, rng), *healthy]))
    data = HourlySeries(np.arange(11), START, mean, std, count)
    scored = score_device_type([(VIBRATION, data)])[0]
    assert scored.at_risk[0]
    assert 0.5 < scored.fit.days_to_cross[0] < 14
    assert not scored.at_risk[1:].any()


def test_hourly_buckets_from_minutes_match_a_direct_computation():
    values = np.arange(240, dtype=float).reshape(2, 120)
    values[1, 60:] = np.nan
    mean, std, count = hourly_from_minutes(values)
    assert mean[0].tolist() == [29.5, 89.5]
    assert count.tolist() == [[60, 60], [60, 0]]
    assert std[0, 0] == pytest.approx(np.std(np.arange(60), ddof=1))
    assert np.isnan(mean[1, 1])


def test_a_drift_that_speeds_up_is_followed_along_its_curve():
    # 3 + 0.1 (u + 7)^2 (u in days from now): 7.9 now, 11 in 1.94 days.
    u = hours()
    accelerating = 3.0 + 0.1 * (u + 7) ** 2 + noise(0.03)
    straight = fit_trend(series(accelerating), VIBRATION, Parameters(curvature_t=math.inf))
    fit = fit_trend(series(accelerating), VIBRATION, Parameters())
    assert fit.days_to_cross[0] == pytest.approx(80**0.5 - 7, rel=0.08)
    assert straight.days_to_cross[0] > 1.2 * fit.days_to_cross[0]
    assert fit.confidence[0] > 0.6
    # A one-off step up (a recalibrated sensor) is not read as accelerating wear.
    step = np.where(u > -3.0, 4.6, 4.0) + noise(0.1)  # three days ago, flat since
    stepped = score_device_type([(VIBRATION, series(step))])[0]
    assert not stepped.at_risk[0]
