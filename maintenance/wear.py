"""How a wearing part's reading drifts to its failure threshold: the shapes the simulator plants
on degrading devices (`manage.py simulate --degrading`), `seed_demo` backfills and
bench/maintenance.py measures the model on.

A degrading reading is `baseline + (threshold - baseline) * shape(progress)` plus noise that
grows as it nears the threshold, where progress runs from 0 when wear starts to 1 when the
threshold is reached. Every shape has shape(0) = 0 and shape(1) = 1 and keeps going past 1.
All functions take numpy arrays of epoch seconds, so one call draws a whole history.
"""

from __future__ import annotations

import math
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


def wear_for_device(
    key: str,
    threshold: float,
    healthy_level: float,
    now: float,
    degrading: bool,
    rng: np.random.Generator | None = None,
) -> Wear:
    """A plausible wear profile for a demo device: healthy ones sit near `healthy_level`;
    degrading ones started wearing 5-15 days ago and reach the threshold 2-20 days from `now`,
    along a shape chosen from the key (the same device degrades the same way at every run)."""
    rng = rng or np.random.default_rng(abs(hash_key(key)))
    span = threshold - healthy_level
    baseline = healthy_level + span * rng.uniform(-0.15, 0.15)
    noise = abs(span) * rng.uniform(0.03, 0.06)
    daily = abs(span) * rng.uniform(0.0, 0.04)
    phase = rng.uniform(0, 2 * math.pi)
    wander = noise * rng.uniform(0.3, 0.8)
    if not degrading:
        return Wear(baseline, threshold, noise, daily_amplitude=daily, phase=phase, wander=wander)
    shape = SHAPES[hash_key(key) % len(SHAPES)]
    cross_at = now + rng.uniform(2, 20) * DAY
    start = now - rng.uniform(5, 15) * DAY
    return Wear(
        baseline,
        threshold,
        noise,
        start=start,
        cross_at=cross_at,
        shape=shape,
        daily_amplitude=daily,
        phase=phase,
        wander=wander,
    )


def hash_key(key: str) -> int:
    """A stable hash of a device key (Python's hash() changes from run to run)."""
    value = 0
    for char in key.encode():
        value = (value * 131 + char) % (2**31 - 1)
    return value
