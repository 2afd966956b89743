"""The figures of a fleet report, one function per section, each a few queries over one tenant
and one period [start, end). Every number a report shows comes from here, so a test can check
each one on a fixture fleet.

- devices: how many, by status at the end, and uptime: 100 % minus the time devices spent
  offline (offline alerts from when they opened to when they resolved, clipped to the period)
  over the time they existed in the period;
- alerts opened in the period, by severity (and kind): how many were acknowledged and resolved
  (by the time the report is made), median minutes to acknowledge and to resolve, still open;
- firmware rollouts that ran in the period, with their devices' outcomes (ota app);
- devices at risk now (predictive maintenance) and the fleet's health bands;
- ingest: readings stored per hour, and messages rejected, grouped by reason (the reason's words
  with the specifics, numbers and quoted values, blanked out: "metric '…' is not a finite
  number").
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Count

from alerts.models import Alert, AlertKind
from devices.models import Device, DeviceStatus, Tenant
from maintenance.models import MaintenancePrediction
from rules.models import Severity
from telemetry.queries import BUCKET_ORIGIN

HEALTH_BANDS = (("good", 80.0, 101.0), ("fair", 50.0, 80.0), ("poor", 0.0, 50.0))
AT_RISK_LISTED = 20
REJECTION_REASONS_LISTED = 10


@dataclass
class DeviceFigures:
    total: int = 0
    online: int = 0
    offline: int = 0
    maintenance: int = 0
    outages: int = 0
    offline_hours: float = 0.0
    uptime_percent: float = 100.0


@dataclass
class SeverityFigures:
    severity: str
    opened: int = 0
    acknowledged: int = 0
    resolved: int = 0
    still_open: int = 0
    median_minutes_to_acknowledge: float | None = None
    median_minutes_to_resolve: float | None = None


@dataclass
class AlertFigures:
    opened: int = 0
    by_severity: list[SeverityFigures] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class RolloutFigures:
    started: int = 0
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)


@dataclass
class RiskFigures:
    at_risk: int = 0
    devices: list[dict[str, Any]] = field(default_factory=list)
    health_bands: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestFigures:
    readings: int = 0
    readings_per_hour: list[tuple[str, int]] = field(default_factory=list)
    rejected: int = 0
    rejected_by_reason: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class FleetFigures:
    tenant: str
    period_start: str
    period_end: str
    devices: DeviceFigures
    alerts: AlertFigures
    rollouts: RolloutFigures
    risk: RiskFigures
    ingest: IngestFigures

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def fleet_figures(tenant: Tenant, start: datetime, end: datetime) -> FleetFigures:
    return FleetFigures(
        tenant=tenant.name,
        period_start=start.isoformat(),
        period_end=end.isoformat(),
        devices=device_figures(tenant, start, end),
        alerts=alert_figures(tenant, start, end),
        rollouts=rollout_figures(tenant, start, end),
        risk=risk_figures(tenant),
        ingest=ingest_figures(tenant, start, end),
    )


def device_figures(tenant: Tenant, start: datetime, end: datetime) -> DeviceFigures:
    devices = Device.objects.for_tenant(tenant).filter(created_at__lt=end)
    figures = DeviceFigures(total=devices.count())
    statuses = dict(
        devices.order_by().values("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    figures.online = statuses.get(DeviceStatus.ONLINE, 0)
    figures.offline = statuses.get(DeviceStatus.OFFLINE, 0)
    figures.maintenance = statuses.get(DeviceStatus.MAINTENANCE, 0)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), coalesce(sum(extract(epoch FROM
                least(coalesce(resolved_at, %s), %s) - greatest(first_triggered_at, %s))), 0)
            FROM alerts_alert
            WHERE tenant_id = %s AND kind = %s AND first_triggered_at < %s
                AND (resolved_at IS NULL OR resolved_at > %s)
            """,
            [end, end, start, tenant.pk, AlertKind.OFFLINE, end, start],
        )
        outages, offline_seconds = cursor.fetchone()
        cursor.execute(
            """
            SELECT coalesce(sum(extract(epoch FROM %s - greatest(created_at, %s))), 0)
            FROM devices_device WHERE tenant_id = %s AND created_at < %s
            """,
            [end, start, tenant.pk, end],
        )
        (device_seconds,) = cursor.fetchone()
    figures.outages = outages
    figures.offline_hours = round(float(offline_seconds) / 3600, 2)
    if device_seconds:
        figures.uptime_percent = round(
            100 * (1 - float(offline_seconds) / float(device_seconds)), 2
        )
    return figures


def alert_figures(tenant: Tenant, start: datetime, end: datetime) -> AlertFigures:
    alerts = list(
        Alert.objects.for_tenant(tenant)
        .filter(first_triggered_at__gte=start, first_triggered_at__lt=end)
        .values_list("severity", "kind", "first_triggered_at", "acknowledged_at", "resolved_at")
    )
    figures = AlertFigures(opened=len(alerts))
    for kind in AlertKind:
        count = sum(1 for alert in alerts if alert[1] == kind)
        if count:
            figures.by_kind[kind.value] = count
    for severity in (Severity.CRITICAL, Severity.WARNING, Severity.INFO):
        rows = [alert for alert in alerts if alert[0] == severity]
        to_ack = [_minutes(ack - first) for _, _, first, ack, _ in rows if ack]
        to_resolve = [_minutes(done - first) for _, _, first, _, done in rows if done]
        figures.by_severity.append(
            SeverityFigures(
                severity=severity.value,
                opened=len(rows),
                acknowledged=len(to_ack),
                resolved=len(to_resolve),
                still_open=len(rows) - len(to_resolve),
                median_minutes_to_acknowledge=_median(to_ack),
                median_minutes_to_resolve=_median(to_resolve),
            )
        )
    return figures


def rollout_figures(tenant: Tenant, start: datetime, end: datetime) -> RolloutFigures:
    """Rollouts that ran during the period (started before its end, not finished before its
    start), each with its release, status and its devices' updates by outcome; `outcomes`
    counts the rollouts by status. One query for the rollouts, one for their updates."""
    from ota.models import FAILURES, Rollout, UpdateState
    from ota.services import progress_counts

    rollouts = list(
        Rollout.objects.for_tenant(tenant)
        .filter(started_at__isnull=False, started_at__lt=end)
        .exclude(finished_at__lt=start)
        .select_related("release")
        .order_by("started_at", "pk")
    )
    figures = RolloutFigures()
    counts = progress_counts(rollout.pk for rollout in rollouts)
    for rollout in rollouts:
        states = counts[rollout.pk]
        figures.started += start <= rollout.started_at < end
        figures.outcomes[rollout.status] = figures.outcomes.get(rollout.status, 0) + 1
        figures.rollouts.append(
            {
                "name": rollout.name,
                "release": rollout.release.version,
                "status": rollout.status,
                "started_at": rollout.started_at.isoformat(),
                "finished_at": rollout.finished_at.isoformat() if rollout.finished_at else None,
                "devices": sum(states.values()),
                "succeeded": states.get(UpdateState.SUCCEEDED, 0),
                "failed": sum(states.get(state, 0) for state in FAILURES),
                "cancelled": states.get(UpdateState.CANCELLED, 0),
                "unfinished": sum(
                    n
                    for state, n in states.items()
                    if state not in {UpdateState.SUCCEEDED, UpdateState.CANCELLED, *FAILURES}
                ),
            }
        )
    return figures


def risk_figures(tenant: Tenant) -> RiskFigures:
    predictions = MaintenancePrediction.objects.for_tenant(tenant)
    at_risk = list(
        predictions.at_risk().worst_first().select_related("device", "metric")[:AT_RISK_LISTED]
    )
    figures = RiskFigures(at_risk=predictions.at_risk().values("device").distinct().count())
    figures.devices = [
        {
            "device": p.device.key,
            "name": p.device.name,
            "metric": p.metric.name,
            "health": p.health,
            "predicted_at": p.predicted_at.isoformat() if p.predicted_at else None,
            "days_left": round(p.days_left, 1) if p.days_left is not None else None,
            "confidence": p.confidence,
            "crossed": p.crossed,
        }
        for p in at_risk
    ]
    health = predictions.device_health().values()
    figures.health_bands = {
        band: sum(1 for value in health if low <= value < high) for band, low, high in HEALTH_BANDS
    }
    return figures


def ingest_figures(tenant: Tenant, start: datetime, end: datetime) -> IngestFigures:
    figures = IngestFigures()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT date_bin('1 hour', r.time, %s::timestamptz), count(*)
            FROM telemetry_reading r
            WHERE r.device_id IN (SELECT id FROM devices_device WHERE tenant_id = %s)
                AND r.time >= %s AND r.time < %s
            GROUP BY 1 ORDER BY 1
            """,
            [BUCKET_ORIGIN, tenant.pk, start, end],
        )
        figures.readings_per_hour = [(hour.isoformat(), n) for hour, n in cursor.fetchall()]
        figures.readings = sum(n for _, n in figures.readings_per_hour)
        cursor.execute(
            r"""
            SELECT regexp_replace(regexp_replace(reason, '''[^'']*''', '''…''', 'g'),
                    '[0-9]+(\.[0-9]+)?', 'N', 'g') AS kind, count(*)
            FROM telemetry_rejectedmessage
            WHERE tenant_id = %s AND received_at >= %s AND received_at < %s
            GROUP BY 1 ORDER BY 2 DESC, 1
            """,
            [tenant.pk, start, end],
        )
        reasons = cursor.fetchall()
    figures.rejected = sum(n for _, n in reasons)
    figures.rejected_by_reason = reasons[:REJECTION_REASONS_LISTED]
    rest = sum(n for _, n in reasons[REJECTION_REASONS_LISTED:])
    if rest:
        figures.rejected_by_reason.append(("other reasons", rest))
    return figures


def _minutes(span: Any) -> float:
    return span.total_seconds() / 60


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
