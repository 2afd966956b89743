"""A fixture fleet whose report figures are known by hand (see each number's comment), with
Globex rows around it that must not count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from alerts.models import Alert, AlertKind, AlertState
from devices.models import Device, DeviceStatus, Metric, Tenant
from maintenance.models import MaintenancePrediction
from ota.models import DeviceUpdate, FirmwareRelease, Rollout, RolloutStatus, UpdateState
from rules.models import Severity
from telemetry.models import RejectedMessage
from tests.factories import make_device

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = END - timedelta(days=1)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


@dataclass
class Fleet:
    acme: Tenant
    globex: Tenant
    devices: dict[str, Device]


def alert(device: Device, kind: str, severity: str, opened: datetime, **fields) -> Alert:
    state = AlertState.OPEN
    if fields.get("acknowledged_at"):
        state = AlertState.ACKNOWLEDGED
    if fields.get("resolved_at"):
        state = AlertState.RESOLVED
    return Alert.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        kind=kind,
        severity=severity,
        state=state,
        title=f"{kind} on {device.key}",
        first_triggered_at=opened,
        last_triggered_at=opened,
        **fields,
    )


def readings(device: Device, metric: Metric, times: list[datetime]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO telemetry_reading (time, device_id, metric_id, value)
            SELECT t, %s, %s, 1.0 FROM unnest(%s::timestamptz[]) AS t
            """,
            [device.pk, metric.pk, times],
        )


def rejected(tenant: Tenant, device: Device | None, reason: str, at: datetime) -> None:
    RejectedMessage.objects.create(
        tenant=tenant,
        device=device,
        device_key=device.key if device else "",
        topic="fleet/x/telemetry",
        reason=reason,
        received_at=at,
    )


def prediction(device: Device, metric: Metric, health: float, at_risk: bool) -> None:
    MaintenancePrediction.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        metric=metric,
        scored_at=END,
        window_start=END - timedelta(days=7),
        health=health,
        at_risk=at_risk,
        predicted_at=END + timedelta(days=5) if at_risk else None,
        confidence=0.8 if at_risk else 0.0,
        threshold=11.0,
        level=8.0 if at_risk else 4.0,
        spread=0.3,
        slope_per_day=0.6 if at_risk else 0.0,
        anomaly=0.1,
    )


@pytest.fixture
def fleet(acme, globex) -> Fleet:
    d = {
        "one": make_device(acme, "acme-one"),
        "two": make_device(acme, "acme-two"),
        "three": make_device(acme, "acme-three"),
        "four": make_device(acme, "acme-four"),
        "globex": make_device(globex, "globex-one"),
    }
    statuses = {
        "one": DeviceStatus.ONLINE,
        "two": DeviceStatus.ONLINE,
        "three": DeviceStatus.OFFLINE,
        "four": DeviceStatus.MAINTENANCE,
        "globex": DeviceStatus.OFFLINE,
    }
    for name, device in d.items():
        Device.objects.filter(pk=device.pk).update(
            status=statuses[name], created_at=START - timedelta(days=10)
        )
    # Four exists for the second half of the period only: 3 x 24 h + 12 h = 84 device-hours.
    Device.objects.filter(pk=d["four"].pk).update(created_at=START + hours(12))
    # Outages: three offline since 6 h before the end (6 h), one from 2 h before the start to
    # 1 h after it (1 h inside), two for 30 min: 7.5 h offline, uptime 1 - 7.5/84 = 91.07 %.
    alert(d["three"], AlertKind.OFFLINE, Severity.WARNING, END - hours(6))
    alert(
        d["one"],
        AlertKind.OFFLINE,
        Severity.WARNING,
        START - hours(2),
        resolved_at=START + hours(1),
    )
    alert(
        d["two"],
        AlertKind.OFFLINE,
        Severity.WARNING,
        START + hours(2),
        resolved_at=START + hours(2.5),
    )
    # Not counted: resolved before the period, and Globex's.
    alert(
        d["one"],
        AlertKind.OFFLINE,
        Severity.WARNING,
        START - hours(9),
        resolved_at=START - hours(8),
    )
    alert(d["globex"], AlertKind.OFFLINE, Severity.WARNING, START + hours(1))
    # Alerts opened in the period: critical A (acknowledged after 10 min, resolved after 40),
    # critical B (acknowledged after 20 min, open), critical maintenance (open); warning W
    # (resolved after 90 min, never acknowledged) and the two offline ones above opened inside
    # (three: open; two: resolved after 30 min).
    opened = START + hours(4)
    alert(
        d["one"],
        AlertKind.RULE,
        Severity.CRITICAL,
        opened,
        acknowledged_at=opened + minutes(10),
        resolved_at=opened + minutes(40),
    )
    alert(d["two"], AlertKind.RULE, Severity.CRITICAL, opened, acknowledged_at=opened + minutes(20))
    alert(d["one"], AlertKind.MAINTENANCE, Severity.CRITICAL, opened)
    alert(d["two"], AlertKind.RULE, Severity.WARNING, opened, resolved_at=opened + minutes(90))
    alert(d["one"], AlertKind.RULE, Severity.CRITICAL, START - hours(1))  # before: not counted
    alert(d["globex"], AlertKind.RULE, Severity.CRITICAL, opened)  # Globex's
    # Readings: 10 + 3 in the hour starting 1 h after the start, 5 in the one 3 h after it.
    temperature = Metric.objects.get(device_type=d["one"].device_type, name="temperature")
    readings(d["one"], temperature, [START + hours(1) + minutes(n) for n in range(10)])
    readings(d["two"], temperature, [START + hours(1) + minutes(n) for n in range(3)])
    readings(d["one"], temperature, [START + hours(3) + minutes(n) for n in range(5)])
    readings(d["one"], temperature, [START - minutes(5)])  # before
    globex_temperature = Metric.objects.get(device_type=d["globex"].device_type, name="temperature")
    readings(d["globex"], globex_temperature, [START + hours(1)])  # Globex's
    # Rejections: 3 of bad JSON at different places, 3 non-finite metrics (two temperature, one
    # humidity); one before the period and Globex's do not count.
    for n in range(3):
        rejected(
            acme, d["one"], f"bad JSON: Expecting value at line 1 column {n + 1}", START + hours(n)
        )
    for name in ("temperature", "temperature", "humidity"):
        rejected(
            acme,
            d["two"],
            f"no valid reading: metric '{name}' is not a finite number",
            START + hours(5),
        )
    rejected(acme, d["one"], "bad JSON: Expecting value at line 1 column 1", START - hours(1))
    rejected(globex, d["globex"], "bad JSON: Expecting value at line 1 column 1", START + hours(1))
    # Health: one at risk (20, poor), two 90 (good), three 60 (fair).
    prediction(d["one"], temperature, 20.0, True)
    prediction(d["two"], temperature, 90.0, False)
    prediction(d["three"], temperature, 60.0, False)
    prediction(d["globex"], globex_temperature, 10.0, True)
    rollouts(acme, globex, d)
    return Fleet(acme, globex, d)


def rollouts(acme: Tenant, globex: Tenant, d: dict[str, Device]) -> None:
    """Ran in the period: "Still going" (running since before it: 1 cancelled), "Canary"
    (started and completed in it: 2 updated, 1 failed, 1 timed out), "Wave 2" (started in it,
    running: 1 updated, 1 installing, 1 queued). Not: one finished before, a draft, Globex's."""
    release = FirmwareRelease.objects.create(
        tenant=acme, version="2.1.0", file="firmware/acme/2.1.0/fw.bin", sha256="0" * 64
    )

    def rollout(name, status, started=None, finished=None, tenant=acme, on=release):
        return Rollout.objects.create(
            tenant=tenant,
            name=name,
            release=on,
            status=status,
            started_at=started,
            finished_at=finished,
        )

    def updates(rollout_, *pairs):
        for device_name, state in pairs:
            DeviceUpdate.objects.create(
                rollout=rollout_, device=d[device_name], wave=1, state=state, queued_at=START
            )

    still = rollout("Still going", RolloutStatus.RUNNING, START - timedelta(days=1))
    updates(still, ("one", UpdateState.CANCELLED))
    canary = rollout("Canary", RolloutStatus.COMPLETED, START + hours(1), START + hours(5))
    updates(
        canary,
        ("one", UpdateState.SUCCEEDED),
        ("two", UpdateState.SUCCEEDED),
        ("three", UpdateState.FAILED),
        ("four", UpdateState.TIMED_OUT),
    )
    wave = rollout("Wave 2", RolloutStatus.RUNNING, START + hours(6))
    updates(
        wave,
        ("one", UpdateState.SUCCEEDED),
        ("two", UpdateState.INSTALLING),
        ("three", UpdateState.QUEUED),
    )
    rollout("Old", RolloutStatus.COMPLETED, START - timedelta(days=3), START - timedelta(days=2))
    rollout("Draft", RolloutStatus.DRAFT)
    globex_release = FirmwareRelease.objects.create(
        tenant=globex, version="9.0.0", file="firmware/globex/9.0.0/fw.bin", sha256="1" * 64
    )
    rollout("Globex's", RolloutStatus.RUNNING, START + hours(1), tenant=globex, on=globex_release)
