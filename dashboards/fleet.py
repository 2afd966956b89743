"""What the fleet overview shows: device counts by status, type and group, alerting devices and
open alerts by severity, for the tenants a user sees. A handful of grouped queries, whatever the
fleet's size (no per-device work)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from alerts.models import Alert, AlertState
from dashboards.charts import Point, time_chart
from devices.models import Device, DeviceStatus, Tenant
from rules.models import Severity
from telemetry.rates import SLOT_SECONDS, ingest_rates

STATUSES = [DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.MAINTENANCE]
SEVERITIES = [Severity.CRITICAL, Severity.WARNING, Severity.INFO]


@dataclass
class StatusRow:
    """Devices of one type or group (or the whole fleet) by status; `alerting` counts devices
    with an unresolved alert, whatever their status."""

    label: str
    total: int = 0
    online: int = 0
    offline: int = 0
    maintenance: int = 0
    alerting: int = 0
    filter: str = ""  # the device list's query string for this row

    def add(self, status: str, count: int) -> None:
        self.total += count
        setattr(self, status, getattr(self, status) + count)

    def share(self, status: str) -> float:
        """Percentage of the row's devices in `status` (for the stacked bars)."""
        return 100.0 * getattr(self, status) / self.total if self.total else 0.0

    @property
    def shares(self) -> list[tuple[str, float, int]]:
        return [(status, self.share(status), getattr(self, status)) for status in STATUSES]


@dataclass
class SeverityCount:
    severity: str
    label: str
    open: int = 0
    acknowledged: int = 0

    @property
    def total(self) -> int:
        return self.open + self.acknowledged


@dataclass
class FleetSummary:
    fleet: StatusRow
    by_type: list[StatusRow] = field(default_factory=list)
    by_group: list[StatusRow] = field(default_factory=list)
    alerts: list[SeverityCount] = field(default_factory=list)
    several_tenants: bool = False

    @property
    def open_alerts(self) -> int:
        return sum(row.total for row in self.alerts)

    def alert_share(self, severity: str) -> float:
        total = self.open_alerts
        row = next(row for row in self.alerts if row.severity == severity)
        return 100.0 * row.total / total if total else 0.0


def fleet_summary(user: Any) -> FleetSummary:
    devices = Device.objects.for_user(user).order_by()
    unresolved = Alert.objects.for_user(user).unresolved().order_by()
    several = Tenant.objects.for_user(user).count() > 1

    fleet = StatusRow(label="Fleet")
    for row in devices.values("status").annotate(n=Count("id")):
        fleet.add(row["status"], row["n"])
    fleet.alerting = unresolved.values("device_id").distinct().count()

    by_type: dict[int, StatusRow] = {}
    for row in devices.values(
        "device_type_id", "device_type__name", "device_type__tenant__name", "status"
    ).annotate(n=Count("id")):
        label = row["device_type__name"]
        if several:
            label += f" · {row['device_type__tenant__name']}"
        entry = by_type.setdefault(
            row["device_type_id"], StatusRow(label=label, filter=f"type={row['device_type_id']}")
        )
        entry.add(row["status"], row["n"])
    for row in unresolved.values("device__device_type_id").annotate(
        n=Count("device_id", distinct=True)
    ):
        if row["device__device_type_id"] in by_type:
            by_type[row["device__device_type_id"]].alerting = row["n"]

    by_group: dict[int | None, StatusRow] = {}
    for row in devices.values(
        "groups__id", "groups__name", "groups__tenant__name", "status"
    ).annotate(n=Count("id")):
        group_id = row["groups__id"]
        if group_id is None:
            label, query = "No group", "group=none"
        else:
            label, query = row["groups__name"], f"group={group_id}"
            if several:
                label += f" · {row['groups__tenant__name']}"
        by_group.setdefault(group_id, StatusRow(label=label, filter=query)).add(
            row["status"], row["n"]
        )
    for row in unresolved.values("device__groups__id").annotate(
        n=Count("device_id", distinct=True)
    ):
        if row["device__groups__id"] in by_group:
            by_group[row["device__groups__id"]].alerting = row["n"]

    severities = {s: SeverityCount(s, Severity(s).label) for s in SEVERITIES}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in unresolved.values("severity", "state").annotate(n=Count("id")):
        counts[(row["severity"], row["state"])] += row["n"]
    for (severity, state), n in counts.items():
        entry = severities.setdefault(severity, SeverityCount(severity, severity))
        if state == AlertState.ACKNOWLEDGED:
            entry.acknowledged += n
        else:
            entry.open += n

    return FleetSummary(
        fleet=fleet,
        by_type=sorted(by_type.values(), key=lambda row: row.label.lower()),
        by_group=sorted(
            by_group.values(), key=lambda row: (row.filter == "group=none", row.label.lower())
        ),
        alerts=list(severities.values()),
        several_tenants=several,
    )


def recent_alerts(user: Any, limit: int = 8) -> list[Alert]:
    """The latest unresolved alerts, worst first."""
    return list(
        Alert.objects.for_user(user)
        .unresolved()
        .select_related("device")
        .order_by("-last_triggered_at")[:limit]
    )


INGEST_WINDOW = timedelta(minutes=30)


def ingest_panel(user: Any) -> dict[str, Any]:
    """Readings stored per second for the user's tenants: the last minute, and a chart of the
    last half hour in 10-second slots (telemetry/rates.py)."""
    tenant_ids = list(Tenant.objects.for_user(user).values_list("pk", flat=True))
    rate = ingest_rates(tenant_ids, window_seconds=int(INGEST_WINDOW.total_seconds()))
    end = timezone.now()
    points = [
        Point(datetime.fromtimestamp(start, tz=UTC), value) for start, value in rate.slots if value
    ]
    chart = time_chart(
        points,
        end - INGEST_WINDOW,
        end,
        unit="readings/s",
        bucket=timedelta(seconds=SLOT_SECONDS),
        title="Readings stored per second, last 30 minutes",
        width=1200,
        height=190,
        include_zero=True,
    )
    return {"ingest_rate": rate, "ingest_chart": chart}
