"""Scoring the fleet: one query per device type, the model (maintenance/scoring.py) over all its
devices at once, the predictions stored, and maintenance alerts raised or resolved.

`score_fleet(now)` is what beat runs (task `maintenance.score_fleet`, hourly by default). For each
device type with wear indicators it reads the hourly buckets (mean, standard deviation, count) of
those metrics over the window in one `date_bin` query, turns them into device x hour arrays with
pandas and scores them. Then, in one transaction per type:

- the predictions of the devices with enough data are written (one upsert);
- devices at risk get a maintenance alert through alerts/services.py (one unresolved per device
  and wear metric; notified to the channels marked "for maintenance");
- devices no longer at risk have theirs resolved ("the prediction went away");
- each tenant's dashboards get one `maintenance.scored` event.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from alerts.services import MaintenanceRisk, record_maintenance_risks, resolve_maintenance_alerts
from devices.models import Device, DeviceType, Metric
from iotfleet import live
from maintenance.models import MaintenancePrediction
from maintenance.scoring import (
    HourlySeries,
    MetricScores,
    Parameters,
    WearIndicator,
    score_device_type,
)
from rules.models import Severity
from telemetry.queries import BUCKET_ORIGIN

log = logging.getLogger(__name__)

CRITICAL_WITHIN_DAYS = 3.0  # a crossing this close (or past) makes the alert critical


@dataclass
class TypeScore:
    device_type: str
    devices: int = 0
    scored: int = 0
    at_risk: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0
    seconds_query: float = 0.0
    seconds_model: float = 0.0
    seconds_store: float = 0.0


@dataclass
class FleetScore:
    """What one scoring run did, per device type."""

    now: datetime
    types: list[TypeScore] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return sum(t.scored for t in self.types)

    @property
    def at_risk(self) -> int:
        return sum(t.at_risk for t in self.types)


def parameters() -> Parameters:
    return Parameters(
        horizon_days=settings.MAINTENANCE_HORIZON_DAYS,
        min_confidence=settings.MAINTENANCE_MIN_CONFIDENCE,
    )


def window_end(now: datetime) -> datetime:
    """Scoring looks at whole hours: the window ends at the start of the current hour."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def score_fleet(
    now: datetime | None = None, tenant_id: int | None = None, params: Parameters | None = None
) -> FleetScore:
    """Score every device type that has wear indicators (of one tenant, if given)."""
    now = now or timezone.now()
    params = params or parameters()
    types = DeviceType.objects.filter(
        metrics__is_wear_indicator=True, metrics__failure_threshold__isnull=False
    ).distinct()
    if tenant_id is not None:
        types = types.filter(tenant_id=tenant_id)
    result = FleetScore(now=now)
    for device_type in types.order_by("pk"):
        score = score_type(device_type, now, params)
        result.types.append(score)
        log.info(
            "maintenance: %s (tenant %s): scored %d of %d devices, %d at risk, %d alerts opened, "
            "%d resolved (query %.1f s, model %.1f s, store %.1f s)",
            device_type.name,
            device_type.tenant_id,
            score.scored,
            score.devices,
            score.at_risk,
            score.alerts_opened,
            score.alerts_resolved,
            score.seconds_query,
            score.seconds_model,
            score.seconds_store,
        )
    return result


def score_type(device_type: DeviceType, now: datetime, params: Parameters) -> TypeScore:
    score = TypeScore(device_type=device_type.name)
    metrics = list(Metric.objects.filter(device_type=device_type).wear_indicators().order_by("pk"))
    devices = list(
        Device.objects.filter(device_type=device_type, is_enabled=True)
        .order_by("pk")
        .values_list("pk", "tenant_id", "name")
    )
    score.devices = len(devices)
    if not metrics or not devices:
        return score
    end = window_end(now)
    start = end - timedelta(days=settings.MAINTENANCE_WINDOW_DAYS)
    started = time.perf_counter()
    buckets = hourly_buckets([m.pk for m in metrics], start, end)
    score.seconds_query = time.perf_counter() - started

    started = time.perf_counter()
    device_ids = np.array([pk for pk, _, _ in devices], dtype=np.int64)
    indicators = [
        (indicator(metric), to_series(buckets, metric.pk, device_ids, start, end))
        for metric in metrics
    ]
    scored = score_device_type(indicators, params)
    score.seconds_model = time.perf_counter() - started

    started = time.perf_counter()
    tenants = {pk: tenant_id for pk, tenant_id, _ in devices}
    names = {pk: name for pk, _, name in devices}
    metric_by_id = {m.pk: m for m in metrics}
    predictions: list[MaintenancePrediction] = []
    risks: list[MaintenanceRisk] = []
    calm: list[tuple[int, int]] = []
    for metric_scores in scored:
        metric = metric_by_id[metric_scores.indicator.metric_id]
        for row in np.flatnonzero(metric_scores.fit.enough_data):
            device_id = int(device_ids[row])
            prediction = build_prediction(metric_scores, row, device_id, tenants[device_id])
            predictions.append(prediction)
            if prediction.at_risk:
                risks.append(risk_of(prediction, metric, names[device_id], now))
            else:
                calm.append((device_id, metric.pk))
    with transaction.atomic():
        store_predictions(predictions)
        opened = record_maintenance_risks(risks)
        resolved = resolve_maintenance_alerts(
            calm, "Predictive maintenance no longer expects the threshold to be reached soon."
        )
        push_scored(predictions)
    score.seconds_store = time.perf_counter() - started
    score.scored = len({p.device_id for p in predictions})
    score.at_risk = len({p.device_id for p in predictions if p.at_risk})
    score.alerts_opened = len(opened)
    score.alerts_resolved = resolved
    return score


def indicator(metric: Metric) -> WearIndicator:
    return WearIndicator(
        metric_id=metric.pk,
        name=metric.name,
        threshold=float(metric.failure_threshold),  # type: ignore[arg-type]
        rising=metric.rises_to_failure,
        unit=metric.unit,
    )


def hourly_buckets(metric_ids: list[int], start: datetime, end: datetime) -> pd.DataFrame:
    """Hourly mean, standard deviation and count of the metrics' readings in [start, end), for
    every device, in one query: columns device_id, metric_id, hour (0 = the bucket at start),
    mean, std, count."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT device_id, metric_id,
                (extract(epoch FROM date_bin('1 hour', time, %s::timestamptz) - %s) / 3600)::int,
                avg(value), stddev_samp(value), count(*)
            FROM telemetry_reading
            WHERE metric_id = ANY(%s) AND time >= %s AND time < %s
            GROUP BY 1, 2, 3
            """,
            [BUCKET_ORIGIN, start, metric_ids, start, end],
        )
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=["device_id", "metric_id", "hour", "mean", "std", "count"])
    return frame.astype(
        {"device_id": "int64", "metric_id": "int64", "hour": "int64", "mean": "float64"}
    ).assign(std=lambda f: f["std"].astype("float64"), count=lambda f: f["count"].astype("int64"))


def to_series(
    buckets: pd.DataFrame, metric_id: int, device_ids: np.ndarray, start: datetime, end: datetime
) -> HourlySeries:
    """The metric's buckets as device x hour arrays, rows in `device_ids` order (sorted)."""
    hours = int((end - start) / timedelta(hours=1))
    shape = (len(device_ids), hours)
    mean, std, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape)
    rows = buckets[buckets["metric_id"] == metric_id]
    position = np.searchsorted(device_ids, rows["device_id"].to_numpy())
    position = np.minimum(position, len(device_ids) - 1)
    known = (device_ids[position] == rows["device_id"].to_numpy()) & rows["hour"].between(
        0, hours - 1
    ).to_numpy()
    row_index, hour_index = position[known], rows["hour"].to_numpy()[known]
    mean[row_index, hour_index] = rows["mean"].to_numpy()[known]
    std[row_index, hour_index] = rows["std"].to_numpy()[known]
    count[row_index, hour_index] = rows["count"].to_numpy()[known]
    return HourlySeries(device_ids=device_ids, start=start, mean=mean, std=std, count=count)


def _finite(value: float, digits: int = 4) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def build_prediction(
    scores: MetricScores, row: int, device_id: int, tenant_id: int
) -> MaintenancePrediction:
    fit = scores.fit
    earliest, latest = scores.interval(row)
    series = scores.series
    return MaintenancePrediction(
        tenant_id=tenant_id,
        device_id=device_id,
        metric_id=scores.indicator.metric_id,
        scored_at=series.end,
        window_start=series.start,
        health=float(scores.health[row]),
        at_risk=bool(scores.at_risk[row]),
        crossed=bool(fit.crossed[row]),
        predicted_at=scores.predicted_at(row),
        earliest_at=earliest,
        latest_at=latest,
        confidence=round(float(fit.confidence[row]), 3),
        threshold=scores.indicator.threshold,
        rising=scores.indicator.rising,
        level=float(fit.level[row]),
        spread=float(fit.spread[row]),
        slope_per_day=float(fit.slope_per_day[row]),
        anomaly=round(float(scores.anomaly[row]), 3),
        evidence={
            "start": series.start.isoformat(),
            "bucket": "1h",
            "hourly_mean": [_finite(v) for v in series.mean[row]],
            "hours_with_data": int(fit.hours_with_data[row]),
            "level_now": _finite(fit.level_now[row]),
            "slope_per_day": _finite(fit.slope_per_day[row], 6),
            "slope_se": _finite(fit.slope_se[row], 6),
            "scatter": _finite(fit.scatter[row]),
            "spread_ratio": _finite(fit.spread_ratio[row], 3),
            "days_to_cross": _finite(fit.days_to_cross[row], 2),
            "reference_level": _finite(scores.reference_level),
            "horizon_days": scores.parameters.horizon_days,
            "half_life_hours": scores.parameters.half_life_hours,
            "method": "weighted least squares on hourly means; IsolationForest per device type",
        },
    )


PREDICTION_FIELDS = [
    f.name
    for f in MaintenancePrediction._meta.concrete_fields
    if f.name not in {"id", "device", "metric"}
]


def store_predictions(predictions: list[MaintenancePrediction]) -> None:
    """Replace each (device, metric)'s prediction in one statement per 1,000 rows."""
    MaintenancePrediction.objects.bulk_create(
        predictions,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["device", "metric"],
        update_fields=PREDICTION_FIELDS,
    )


def risk_of(
    prediction: MaintenancePrediction, metric: Metric, device_name: str, now: datetime
) -> MaintenanceRisk:
    threshold = f"{prediction.threshold:g}{f' {metric.unit}' if metric.unit else ''}"
    days = prediction.days_left
    if prediction.crossed:
        title = f"{device_name}: {metric.name} has reached its failure threshold ({threshold})"
    else:
        title = (
            f"{device_name}: {metric.name} expected to reach {threshold} "
            f"in about {_days_in_words(days or 0.0)}"
        )
    critical = prediction.crossed or (days is not None and days <= CRITICAL_WITHIN_DAYS)
    return MaintenanceRisk(
        device_id=prediction.device_id,
        metric_id=metric.pk,
        tenant_id=prediction.tenant_id,
        title=title,
        severity=Severity.CRITICAL if critical else Severity.WARNING,
        at=now,
        values={
            "metric": metric.name,
            "level": round(prediction.level, 3),
            "threshold": prediction.threshold,
            "predicted_at": prediction.predicted_at.isoformat()
            if prediction.predicted_at
            else None,
            "days_left": round(days, 1) if days is not None else None,
            "confidence": prediction.confidence,
            "health": prediction.health,
        },
    )


def _days_in_words(days: float) -> str:
    if days < 1:
        hours = max(round(days * 24), 1)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    rounded = round(days)
    return f"{rounded} day{'s' if rounded != 1 else ''}"


def push_scored(predictions: list[MaintenancePrediction]) -> None:
    """One small `maintenance.scored` event per tenant (counts only), after commit."""
    scored: Counter[int] = Counter()
    at_risk: dict[int, set[int]] = defaultdict(set)
    for prediction in predictions:
        scored[prediction.tenant_id] += 1
        if prediction.at_risk:
            at_risk[prediction.tenant_id].add(prediction.device_id)
    live.push_many(
        (tenant_id, "maintenance.scored", {"scored": count, "at_risk": len(at_risk[tenant_id])})
        for tenant_id, count in scored.items()
    )
