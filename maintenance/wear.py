"""How a wearing part's reading drifts to its failure threshold: the shapes the simulator plants
on degrading devices (`manage.py simulate --degrading`, `WearingValue`), `seed_demo` backfills and
bench/maintenance.py measures the model on.

A degrading reading is `baseline + (threshold - baseline) * shape(progress)` plus noise that
grows as it nears the threshold, where progress runs from 0 when wear starts to 1 when the
threshold is reached. Every shape has shape(0) = 0 and shape(1) = 1 and keeps going past 1.
All functions take numpy arrays of epoch seconds, so one call draws a whole history.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

DAY = 86_400.0
SHAPES = ("linear", "accelerating", "knee", "step")
SHAPE_HELP = {
    "linear": "a steady drift",
    "accelerating": "slow at first, then faster and faster (exponential)",
    "knee": "hardly anything for a while, then a quadratic rise",
    "step": "a sudden jump when the damage happens, then a steady drift",
}
ACCELERATION = 3.0  # the exponential shape's rate: e^(3p) - 1, scaled to reach 1 at p = 1
STEP = 0.3  # the step shape jumps this share of the way at once


def shape_curve(shape: str, progress: np.ndarray) -> np.ndarray:
    """The share of the way from baseline to threshold at each progress (0 before wear)."""
    p = np.maximum(progress, 0.0)
    if shape == "linear":
        curve = p
    elif shape == "accelerating":
        curve = np.expm1(ACCELERATION * p) / math.expm1(ACCELERATION)
    elif shape == "knee":
        curve = p * p
    elif shape == "step":
        curve = np.where(progress > 0, STEP + (1 - STEP) * p, 0.0)
    else:
        raise ValueError(f"Unknown drift shape {shape!r}: use one of {', '.join(SHAPES)}.")
    return np.where(progress > 0, curve, 0.0)


@dataclass(frozen=True)
class Wear:
    """A reading that drifts from `baseline` to `threshold` between `start` and `cross_at`
    (epoch seconds) along `shape`; noise is `noise` when healthy and (1 + noise_growth) times
    that at the threshold. `shape=None` is a healthy device: baseline and noise only."""

    baseline: float
    threshold: float
    noise: float
    start: float = math.inf
    cross_at: float = math.inf
    shape: str | None = None
    noise_growth: float = 2.0
    daily_amplitude: float = 0.0
    phase: float = 0.0
    # A slow wander on top of the white noise (a mean-reverting walk with this standard deviation
    # and time constant): real readings are not independent from one minute to the next.
    wander: float = 0.0
    wander_minutes: float = 120.0

    @property
    def degrading(self) -> bool:
        return self.shape is not None

    def progress(self, times: np.ndarray) -> np.ndarray:
        if not self.degrading:
            return np.zeros_like(times, dtype=float)
        return (times - self.start) / (self.cross_at - self.start)

    def expected(self, times: np.ndarray) -> np.ndarray:
        """The reading without noise at each time."""
        times = np.asarray(times, dtype=float)
        value = np.full(times.shape, self.baseline, dtype=float)
        if self.degrading:
            value += (self.threshold - self.baseline) * shape_curve(
                self.shape, self.progress(times)
            )
        if self.daily_amplitude:
            value += self.daily_amplitude * np.sin(2 * np.pi * times / DAY + self.phase)
        return value

    def noise_scale(self, times: np.ndarray) -> np.ndarray:
        """The noise's standard deviation at each time: it grows as the part nears failure."""
        times = np.asarray(times, dtype=float)
        if not self.degrading:
            return np.full(times.shape, self.noise)
        share = np.clip(shape_curve(self.shape, self.progress(times)), 0.0, 1.5)
        return self.noise * (1 + self.noise_growth * share)

    def sample(self, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Readings at `times`, evenly spaced: the expected value, the slow wander and white
        noise (both growing as the part nears failure)."""
        times = np.asarray(times, dtype=float)
        scale = self.noise_scale(times)
        values = self.expected(times) + scale * rng.standard_normal(times.shape)
        if self.wander and times.size > 1:
            step = float(times[1] - times[0])
            keep = math.exp(-step / (60.0 * self.wander_minutes))
            shocks = self.wander * math.sqrt(1 - keep * keep) * rng.standard_normal(times.shape)
            shocks[0] = self.wander * rng.standard_normal()
            walk = lfilter([1.0], [1.0, -keep], shocks)
            values += walk * scale / self.noise
        return values


def healthy_level(
    threshold: float, rising: bool, min_value: float | None, max_value: float | None
) -> float:
    """Where a healthy device's wear indicator sits: 30 % of the way from the metric's floor to a
    rising threshold (a pump at 11.2 mm/s fails, healthy ones run near 3.4), or 70 % of the way
    up from a falling threshold to the metric's ceiling."""
    if rising:
        floor = min_value if min_value is not None else min(0.0, threshold - 10.0)
        return floor + 0.3 * (threshold - floor)
    ceiling = max_value if max_value is not None else threshold + 10.0
    return threshold + 0.7 * (ceiling - threshold)


def plan_wear(
    key: str,
    metric: str,
    threshold: float,
    level: float,
    now: float,
    degrading: bool,
    cross_days: tuple[float, float] = (2.0, 20.0),
) -> dict:
    """A plausible wear plan for a demo device, JSON-ready (kept in the device's attributes so
    seed_demo's history and the simulator's live readings tell one story): healthy ones sit near
    `level`; degrading ones started wearing 5-15 days before `now` and reach the threshold
    `cross_days` (2-20 by default) days after it, along a shape chosen from the key."""
    rng = np.random.default_rng(hash_key(key))
    span = abs(threshold - level)
    plan = {
        "metric": metric,
        "baseline": round(level + (threshold - level) * rng.uniform(-0.15, 0.15), 3),
        "noise": round(span * rng.uniform(0.03, 0.06), 4),
        "daily_amplitude": round(span * rng.uniform(0.0, 0.04), 4),
        "phase": round(rng.uniform(0, 2 * math.pi), 3),
    }
    plan["wander"] = round(plan["noise"] * rng.uniform(0.3, 0.8), 4)
    if degrading:
        plan["shape"] = SHAPES[hash_key(key) % len(SHAPES)]
        plan["start"] = round(now - rng.uniform(5, 15) * DAY)
        plan["cross_at"] = round(now + rng.uniform(*cross_days) * DAY)
    return plan


def wear_from_plan(plan: dict, threshold: float) -> Wear:
    return Wear(
        baseline=float(plan["baseline"]),
        threshold=threshold,
        noise=float(plan["noise"]),
        start=float(plan.get("start", math.inf)),
        cross_at=float(plan.get("cross_at", math.inf)),
        shape=plan.get("shape"),
        daily_amplitude=float(plan.get("daily_amplitude", 0.0)),
        phase=float(plan.get("phase", 0.0)),
        wander=float(plan.get("wander", 0.0)),
    )


def picked_to_degrade(key: str, share: float) -> bool:
    """Whether the device with this key is one of the `share` (0-1) that degrade: the same
    devices at every run."""
    return (hash_key(key) % 1000) < share * 1000


def hash_key(key: str) -> int:
    """A stable hash of a device key (Python's hash() changes from run to run)."""
    value = 0
    for char in key.encode():
        value = (value * 131 + char) % (2**31 - 1)
    return value


@dataclass
class WearingValue:
    """The simulator's value model of a wear indicator (telemetry/simulator.py): the wear's
    expected reading at the wall-clock time, plus a mean-reverting wander and white noise that
    grow as the part nears failure. Steps one reading at a time, any interval apart."""

    wear: Wear
    low: float | None = None
    high: float | None = None
    deviation: float = 0.0

    def step(self, dt: float, now: float, rng: random.Random) -> float:
        wear = self.wear
        keep = math.exp(-max(dt, 0.0) / (60.0 * wear.wander_minutes))
        self.deviation = self.deviation * keep + wear.wander * math.sqrt(1 - keep * keep) * (
            rng.gauss(0, 1)
        )
        at = np.array([now])
        scale = float(wear.noise_scale(at)[0]) / wear.noise if wear.noise else 1.0
        noise = self.deviation + wear.noise * rng.gauss(0, 1)
        value = float(wear.expected(at)[0]) + scale * noise
        if self.low is not None:
            value = max(value, self.low)
        if self.high is not None:
            value = min(value, self.high)
        return round(value, 3)


def wearing_value(
    key: str,
    metric: str,
    threshold: float,
    rising: bool,
    min_value: float | None,
    max_value: float | None,
    plan: dict | None,
    degrading_share: float,
    now: float,
) -> WearingValue:
    """The value model of one device's wear indicator: its stored plan (seed_demo's), or a new
    one, degrading for `degrading_share` of the devices (by key) from `now` on."""
    if not isinstance(plan, dict) or plan.get("metric") != metric:
        level = healthy_level(threshold, rising, min_value, max_value)
        degrading = picked_to_degrade(key, degrading_share)
        plan = plan_wear(key, metric, threshold, level, now, degrading)
    return WearingValue(wear_from_plan(plan, threshold), low=min_value, high=max_value)
