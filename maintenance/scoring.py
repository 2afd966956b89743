"""The model behind predictive maintenance, as numpy over whole fleets: no query, no loop per
device. maintenance/services.py feeds it one device type at a time (one query per type) and
stores what it finds; bench/maintenance.py feeds it simulated fleets.

For each wear indicator (a metric with a failure threshold) and device, over hourly buckets of
the recent window:

- features: level (mean of the last 24 h), spread (median within-hour standard deviation of the
  last 24 h), spread ratio (that spread over the window's first two days': wear makes readings
  noisier), slope (per day) and the residual scatter around the trend;
- the trend: a weighted least-squares line through the hourly means, recent hours weighing more
  (half-life 36 h), so a drift that speeds up is followed; its slope's standard error is widened
  for the residuals' autocorrelation (a daily cycle or a curve is not independent noise);
- the predicted crossing: where the line reaches the threshold, with a 90 % interval from the
  slope's uncertainty; the confidence is 1 - (interval width) / (2 x time to crossing), so a
  date known to within +-10 % has confidence 0.9 and a slope that may well be zero has 0;
- the anomaly score: scikit-learn's IsolationForest fitted on the features of all devices of
  the type (how unlike its fleet the device looks), 0 (typical) to 1;
- the health score, 0-100: 35 % distance to the threshold (relative to the fleet's typical
  level), 45 % time to crossing (a confident crossing within 2 x the horizon pulls it down), 20 %
  anomaly. A reading already past the threshold has health 0.

A device is at risk when it has crossed, or its predicted crossing lies within the horizon (14
days by default) with confidence of at least 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sklearn.ensemble import IsolationForest

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Parameters:
    """What the model may be tuned with (settings MAINTENANCE_*)."""

    horizon_days: float = 14.0  # a crossing predicted within this is at risk (alert)
    half_life_hours: float = 36.0  # weight of an hour halves this much further back
    min_hours: int = 24  # hourly buckets with data needed to predict anything
    min_confidence: float = 0.5
    interval_z: float = 1.645  # 90 % two-sided interval of the slope
    curvature_t: float = 3.0  # a bend upwards this significant follows the curve
    forest_seed: int = 0
    forest_min_devices: int = 8  # fewer devices of a type: no anomaly score (0)


@dataclass
class HourlySeries:
    """Hourly buckets of one metric for many devices: row i is device_ids[i], column h the hour
    starting at start + h hours. NaN where the device sent nothing that hour."""

    device_ids: np.ndarray
    start: datetime
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    @property
    def hours(self) -> int:
        return self.mean.shape[1]

    @property
    def end(self) -> datetime:
        return self.start + self.hours * HOUR


@dataclass
class WearIndicator:
    """A metric of the type that wears: its id, name, threshold and direction."""

    metric_id: int
    name: str
    threshold: float
    rising: bool = True
    unit: str = ""


@dataclass
class TrendFit:
    """Per device (arrays aligned with the series' device_ids), in the metric's own units and
    days; `days_to_cross` is inf where the trend does not head for the threshold."""

    enough_data: np.ndarray
    hours_with_data: np.ndarray
    level: np.ndarray
    level_now: np.ndarray
    spread: np.ndarray
    spread_ratio: np.ndarray
    slope_per_day: np.ndarray
    slope_se: np.ndarray
    scatter: np.ndarray
    crossed: np.ndarray
    days_to_cross: np.ndarray
    earliest_days: np.ndarray
    latest_days: np.ndarray
    confidence: np.ndarray


@dataclass
class MetricScores:
    """Everything the model says about one wear indicator on every device of the type."""

    indicator: WearIndicator
    series: HourlySeries
    fit: TrendFit
    anomaly: np.ndarray
    health: np.ndarray
    at_risk: np.ndarray
    reference_level: float
    parameters: Parameters = field(default_factory=Parameters)

    def predicted_at(self, row: int) -> datetime | None:
        days = self.fit.days_to_cross[row]
        if not math.isfinite(days):
            return None
        return self.series.end + timedelta(days=float(days))

    def interval(self, row: int) -> tuple[datetime | None, datetime | None]:
        def at(days: float) -> datetime | None:
            return self.series.end + timedelta(days=days) if math.isfinite(days) else None

        return at(float(self.fit.earliest_days[row])), at(float(self.fit.latest_days[row]))


# --- The trend --------------------------------------------------------------------------------


def fit_trend(series: HourlySeries, indicator: WearIndicator, params: Parameters) -> TrendFit:
    """Features, weighted trend and predicted crossing for every device at once."""
    sign = 1.0 if indicator.rising else -1.0
    # In the "rising" frame failure is always upwards: a falling metric is mirrored.
    y = sign * series.mean
    threshold = sign * indicator.threshold
    hours = series.hours
    valid = np.isfinite(y)
    # Bucket centres in days before the end of the window (negative), the end being "now".
    x = (np.arange(hours) + 0.5 - hours) / 24.0
    decay = np.exp(math.log(2) * x * 24.0 / params.half_life_hours)
    w = np.where(valid, decay, 0.0)
    y0 = np.where(valid, y, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(axis=1) / sw
        y_mean = (w * y0).sum(axis=1) / sw
        dx = x[None, :] - x_mean[:, None]
        sxx = (w * dx * dx).sum(axis=1)
        slope = (w * dx * (y0 - y_mean[:, None])).sum(axis=1) / sxx
        level_now = y_mean - slope * x_mean
        fitted = y_mean[:, None] + slope[:, None] * dx
        resid = np.where(valid, y0 - fitted, 0.0)
        n_eff = sw**2 / (w * w).sum(axis=1)
        variance = (w * resid * resid).sum(axis=1) / sw * n_eff / np.maximum(n_eff - 2, 1)
        # Var(slope) of a weighted fit with these (not inverse-variance) weights.
        slope_var = variance * (w * w * dx * dx).sum(axis=1) / sxx**2
        rho = _lag1_autocorrelation(resid, valid)
        slope_se = np.sqrt(slope_var * (1 + rho) / (1 - rho))
        scatter = np.sqrt(variance)

    hours_with_data = valid.sum(axis=1)
    enough = hours_with_data >= params.min_hours
    last_day = slice(max(hours - 24, 0), hours)
    first_days = slice(0, min(48, hours))
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        level = np.nanmean(y[:, last_day], axis=1)
        recent = np.nanmean(y[:, max(hours - 6, 0) :], axis=1)
        spread = np.nanmedian(series.std[:, last_day], axis=1)
        early_spread = np.nanmedian(series.std[:, first_days], axis=1)
        spread_ratio = spread / early_spread
    spread_ratio = np.where(np.isfinite(spread_ratio), spread_ratio, 1.0)

    crossed = enough & (recent >= threshold)
    distance = threshold - level_now
    heading = enough & ~crossed & (slope > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        days = np.where(heading, np.maximum(distance, 0.0) / slope, np.inf)
        fast = slope + params.interval_z * slope_se
        slow = slope - params.interval_z * slope_se
        earliest = np.where(heading, np.maximum(distance, 0.0) / fast, np.inf)
        latest = np.where(heading & (slow > 0), np.maximum(distance, 0.0) / slow, np.inf)
    # A drift that clearly speeds up (wear feeding on itself) follows its curve, not its line.
    curve = _curvature(x, w, y0, valid, threshold, params)
    if curve is not None:
        bent, curve_days, curve_earliest, curve_latest, curve_now = curve
        # Only where the straight line already rises clearly: a one-off step or bump in the
        # window also looks bent, and must not be extrapolated into a failure.
        bent &= heading & (slope > params.curvature_t * slope_se)
        days = np.where(bent, curve_days, days)
        earliest = np.where(bent, curve_earliest, earliest)
        latest = np.where(bent, curve_latest, latest)
        level_now = np.where(bent, curve_now, level_now)
        distance = threshold - level_now
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(
            heading & np.isfinite(latest) & (days > 0),
            1.0 - (latest - earliest) / (2.0 * days),
            0.0,
        )
    # Already at the threshold by the trend, or past it: the date is now, and sure.
    at_threshold = heading & (distance <= 0)
    confidence = np.where(at_threshold | crossed, 1.0, np.clip(confidence, 0.0, 1.0))
    days = np.where(crossed, 0.0, days)
    earliest = np.where(crossed, 0.0, earliest)
    latest = np.where(crossed, 0.0, latest)
    nothing = ~enough
    return TrendFit(
        enough_data=enough,
        hours_with_data=hours_with_data,
        level=sign * level,
        level_now=sign * level_now,
        spread=np.nan_to_num(spread),
        spread_ratio=spread_ratio,
        slope_per_day=np.where(nothing, 0.0, sign * np.nan_to_num(slope)),
        slope_se=np.where(nothing, np.inf, slope_se),
        scatter=np.nan_to_num(scatter),
        crossed=crossed,
        days_to_cross=np.where(nothing, np.inf, days),
        earliest_days=np.where(nothing, np.inf, earliest),
        latest_days=np.where(nothing, np.inf, latest),
        confidence=np.where(nothing, 0.0, confidence),
    )


def _curvature(
    x: np.ndarray,
    w: np.ndarray,
    y0: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    params: Parameters,
) -> tuple[np.ndarray, ...] | None:
    """A weighted quadratic through the same points: for each device whether it bends upwards
    significantly (curvature t > params.curvature_t), and the crossing (days, 90 % interval from
    the curvature's uncertainty) and the level now on that curve."""
    devices = y0.shape[0]
    if devices == 0:
        return None
    basis = np.stack([np.ones_like(x), x, x * x], axis=1)  # (hours, 3); x = 0 is now
    normal = np.einsum("dh,hi,hj->dij", w, basis, basis)
    rhs = np.einsum("dh,hi,dh->di", w, basis, y0)
    usable = np.linalg.matrix_rank(normal) == 3
    normal[~usable] = np.eye(3)
    inverse = np.linalg.inv(normal)
    beta = np.einsum("dij,dj->di", inverse, rhs)
    resid = np.where(valid, y0 - beta @ basis.T, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = sw**2 / (w * w).sum(axis=1)
        variance = (w * resid * resid).sum(axis=1) / sw * n_eff / np.maximum(n_eff - 3, 1)
        meat = np.einsum("dh,hi,hj->dij", w * w, basis, basis)
        cov = inverse @ meat @ inverse * variance[:, None, None]
        rho = _lag1_autocorrelation(resid, valid)
        c_se = np.sqrt(cov[:, 2, 2] * (1 + rho) / (1 - rho))
        a, b, c = beta[:, 0], beta[:, 1], beta[:, 2]
        bent = usable & (c > 0) & (c / c_se > params.curvature_t) & (a < threshold)

        def crossing(curvature: np.ndarray) -> np.ndarray:
            return _first_root(curvature, b, a - threshold)

        z = params.interval_z
        days = crossing(c)
        earliest = crossing(c + z * c_se)
        latest = crossing(c - z * c_se)
    return bent, days, earliest, latest, a


def _first_root(c: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The smallest positive u with c u^2 + b u + a = 0 (a < 0 here), inf where there is none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = np.where(b > 0, -a / b, np.inf)
        disc = b * b - 4 * c * a
        root = np.sqrt(np.where(disc >= 0, disc, np.nan))
        r1 = (-b + root) / (2 * c)
        r2 = (-b - root) / (2 * c)
        r1 = np.where(r1 > 0, r1, np.inf)
        r2 = np.where(r2 > 0, r2, np.inf)
        quadratic = np.nan_to_num(np.minimum(r1, r2), nan=np.inf)
    return np.where(np.abs(c) < 1e-12, linear, quadratic)


def _lag1_autocorrelation(resid: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row's residuals (over neighbouring hours both with data),
    clipped to [0, 0.95]: positive correlation means fewer independent points than hours."""
    pair = valid[:, 1:] & valid[:, :-1]
    a = np.where(pair, resid[:, 1:], 0.0)
    b = np.where(pair, resid[:, :-1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.clip(np.nan_to_num(rho), 0.0, 0.95)


class _quiet_nan_warnings:
    """numpy warns about all-NaN rows (a device silent all day); they are expected here."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


# --- The anomaly score --------------------------------------------------------------------------


def feature_matrix(fits: list[tuple[TrendFit, WearIndicator, float]]) -> np.ndarray:
    """One row per device: per indicator, level, slope and scatter in units of the distance from
    the fleet's typical level to the threshold, and spread ratio. NaN (no data) becomes the
    column's median."""
    columns = []
    for fit, indicator, reference in fits:
        scale = abs(indicator.threshold - reference) or 1.0
        sign = 1.0 if indicator.rising else -1.0
        columns += [
            sign * (fit.level - reference) / scale,
            sign * fit.slope_per_day / scale,
            fit.scatter / scale,
            fit.spread_ratio,
        ]
    features = np.column_stack(columns) if columns else np.empty((0, 0))
    for column in range(features.shape[1]):
        values = features[:, column]
        bad = ~np.isfinite(values)
        if bad.any():
            fill = np.median(values[~bad]) if (~bad).any() else 0.0
            values[bad] = fill
    return features


def anomaly_scores(features: np.ndarray, params: Parameters) -> np.ndarray:
    """0 (typical of the type's fleet) to 1 (isolated at once), from an IsolationForest fitted
    on the type's devices. Too few devices to compare: zeros."""
    devices = features.shape[0]
    if devices < params.forest_min_devices or features.shape[1] == 0:
        return np.zeros(devices)
    forest = IsolationForest(n_estimators=100, random_state=params.forest_seed)
    forest.fit(features)
    # score_samples is minus the paper's anomaly score s: s near 0.5 or below is ordinary.
    s = -forest.score_samples(features)
    return np.clip(2.0 * (s - 0.5), 0.0, 1.0)


# --- Health -------------------------------------------------------------------------------------


def reference_level(fit: TrendFit) -> float:
    """The type's typical level of the metric: the median over devices with data."""
    levels = fit.level[fit.enough_data & np.isfinite(fit.level)]
    return float(np.median(levels)) if levels.size else math.nan


def health_scores(
    fit: TrendFit,
    indicator: WearIndicator,
    reference: float,
    anomaly: np.ndarray,
    params: Parameters,
) -> np.ndarray:
    """0-100 per device; see the module docstring for the weights."""
    sign = 1.0 if indicator.rising else -1.0
    span = sign * (indicator.threshold - reference)
    if not math.isfinite(span) or span <= 0:
        # The fleet's typical level is at or past the threshold: distance says nothing.
        span = abs(indicator.threshold) or 1.0
    distance = np.clip(sign * (indicator.threshold - fit.level_now) / span, 0.0, 1.0)
    time_share = np.clip(fit.days_to_cross / (2 * params.horizon_days), 0.0, 1.0)
    time_term = 1.0 - fit.confidence * (1.0 - time_share)
    health = 100.0 * (0.35 * distance + 0.45 * time_term + 0.20 * (1.0 - anomaly))
    health = np.where(fit.crossed, 0.0, health)
    return np.where(fit.enough_data, np.round(np.clip(health, 0.0, 100.0), 1), np.nan)


def at_risk(fit: TrendFit, params: Parameters) -> np.ndarray:
    return fit.crossed | (
        (fit.days_to_cross <= params.horizon_days) & (fit.confidence >= params.min_confidence)
    )


# --- A device type ------------------------------------------------------------------------------


def score_device_type(
    indicators: list[tuple[WearIndicator, HourlySeries]], params: Parameters | None = None
) -> list[MetricScores]:
    """Score every wear indicator of one device type on all its devices. Each series must list
    the same devices in the same order (rows without data are NaN)."""
    params = params or Parameters()
    fits = []
    for indicator, series in indicators:
        fit = fit_trend(series, indicator, params)
        fits.append((fit, indicator, reference_level(fit)))
    anomaly = anomaly_scores(feature_matrix(fits), params) if fits else np.zeros(0)
    scored = []
    for (fit, indicator, reference), (_, series) in zip(fits, indicators, strict=True):
        scored.append(
            MetricScores(
                indicator=indicator,
                series=series,
                fit=fit,
                anomaly=np.where(fit.enough_data, anomaly, 0.0),
                health=health_scores(fit, indicator, reference, anomaly, params),
                at_risk=at_risk(fit, params) & fit.enough_data,
                reference_level=reference,
                parameters=params,
            )
        )
    return scored


def hourly_from_minutes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, count) per hour of a (devices, minutes) array whose length is whole hours;
    NaN minutes are missing readings. What the database's date_bin query returns, for the bench
    and tests that hold readings in memory."""
    devices, minutes = values.shape
    shaped = values.reshape(devices, minutes // 60, 60)
    count = np.isfinite(shaped).sum(axis=2)
    with _quiet_nan_warnings():
        mean = np.nanmean(shaped, axis=2)
        std = np.nanstd(shaped, axis=2, ddof=1)
    return mean, np.where(count > 1, std, np.nan), count
