"""Offline detection: the beat marks silent devices offline with one alert, the last will does it
at once, hearing the device again resolves it; the beat schedules are editable rows."""

from __future__ import annotations

import importlib
import json
import time
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts import notifications
from alerts.models import Alert, AlertEvent, AlertEventKind, AlertKind, AlertState
from alerts.services import detect_offline, devices_came_online, devices_went_offline
from alerts.tasks import detect_offline_task
from devices.models import DeviceStatus
from devices.services import set_maintenance
from rules.models import Severity
from telemetry.services import ingest_batch
from telemetry.validation import parse_message
from tests.factories import make_device

BEAT_TASKS = {
    "rules.check_no_data",
    "alerts.detect_offline",
    "alerts.resolve_cleared",
    "alerts.escalate",
    "alerts.send_reminders",
}


@pytest.fixture
def queued(monkeypatch) -> list[tuple[int, str]]:
    calls: list[tuple[int, str]] = []

    def record(alert_ids: list[int], reason: str) -> None:
        calls.extend((alert_id, reason) for alert_id in alert_ids)

    monkeypatch.setattr(notifications, "queue_notifications_many", record)
    return calls


def heard(device, ago: timedelta, status: str = DeviceStatus.ONLINE) -> None:
    """The device was last heard `ago` (the freezer type's heartbeat timeout is 5 minutes)."""
    device.__class__.objects.filter(pk=device.pk).update(
        status=status, last_seen=timezone.now() - ago
    )
    device.refresh_from_db()


def message(device, kind: str, body: dict) -> list:
    now_ms = int(time.time() * 1000)
    return parse_message(f"fleet/{device.key}/{kind}", json.dumps(body).encode(), now_ms)


def telemetry(device, **metrics: float) -> list:
    return message(device, "telemetry", {"ts": int(time.time() * 1000), "metrics": metrics})


def offline_alerts(device) -> list[Alert]:
    return list(Alert.objects.filter(device=device, kind=AlertKind.OFFLINE).order_by("pk"))


# --- The beat -----------------------------------------------------------------------------------


def test_the_beat_marks_a_silent_device_offline_with_one_alert(
    acme_device, queued, django_capture_on_commit_callbacks
):
    heard(acme_device, timedelta(minutes=6))
    with django_capture_on_commit_callbacks(execute=True):
        assert detect_offline_task() == 1
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.OFFLINE
    [alert] = offline_alerts(acme_device)
    assert alert.state == AlertState.OPEN
    assert alert.severity == Severity.WARNING
    assert alert.title == "Freezer 1 is offline"
    assert alert.rule is None
    assert alert.values == {"last_seen": acme_device.last_seen.isoformat()}
    assert list(alert.events.values_list("kind", flat=True)) == [AlertEventKind.OPENED]
    assert queued == [(alert.pk, "offline")]


def test_running_the_beat_twice_opens_no_second_alert(acme_device, queued):
    heard(acme_device, timedelta(minutes=6))
    assert detect_offline(timezone.now()) == 1
    assert detect_offline(timezone.now()) == 0
    assert len(offline_alerts(acme_device)) == 1


def test_a_device_heard_within_its_heartbeat_timeout_stays_online(acme_device):
    heard(acme_device, timedelta(minutes=4))
    assert detect_offline(timezone.now()) == 0
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.ONLINE
    assert not Alert.objects.exists()


def test_each_device_types_own_timeout_counts(acme, acme_device):
    from tests.factories import make_device_type

    slow_type = make_device_type(acme, "Weekly logger", heartbeat_timeout=timedelta(hours=1))
    logger = make_device(acme, "acme-logger-1", device_type=slow_type)
    heard(acme_device, timedelta(minutes=30))
    heard(logger, timedelta(minutes=30))
    assert detect_offline(timezone.now()) == 1
    assert [a.device for a in Alert.objects.all()] == [acme_device]


def test_a_device_in_maintenance_is_never_marked_offline(acme_device):
    heard(acme_device, timedelta(days=3))
    set_maintenance([acme_device])
    assert detect_offline(timezone.now()) == 0
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.MAINTENANCE
    assert not Alert.objects.exists()


def test_a_device_never_heard_raises_nothing(acme_device):
    assert acme_device.last_seen is None
    assert detect_offline(timezone.now()) == 0
    assert not Alert.objects.exists()


def test_each_tenant_gets_its_own_devices_alerts(acme_device, globex_device):
    heard(acme_device, timedelta(minutes=10))
    heard(globex_device, timedelta(minutes=10))
    assert detect_offline(timezone.now()) == 2
    assert {(a.tenant_id, a.device_id) for a in Alert.objects.all()} == {
        (acme_device.tenant_id, acme_device.pk),
        (globex_device.tenant_id, globex_device.pk),
    }


# --- Heard again, and the last will -------------------------------------------------------------


def test_a_device_heard_again_resolves_its_offline_alert(
    acme_device, queued, django_capture_on_commit_callbacks
):
    heard(acme_device, timedelta(minutes=6))
    detect_offline(timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        ingest_batch([telemetry(acme_device, temperature=-18.5)])
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.ONLINE
    [alert] = offline_alerts(acme_device)
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_by is None
    assert alert.resolved_at is not None
    assert list(alert.events.values_list("kind", flat=True)) == [
        AlertEventKind.OPENED,
        AlertEventKind.AUTO_RESOLVED,
    ]
    assert queued == [(alert.pk, "resolved")]


def test_the_last_will_opens_the_alert_at_once_and_telemetry_resolves_it(
    acme_device, queued, django_capture_on_commit_callbacks
):
    heard(acme_device, timedelta(seconds=5))
    with django_capture_on_commit_callbacks(execute=True):
        ingest_batch([message(acme_device, "status", {"state": "offline"})])
    acme_device.refresh_from_db()
    assert acme_device.status == DeviceStatus.OFFLINE
    [alert] = offline_alerts(acme_device)
    assert alert.state == AlertState.OPEN
    assert queued == [(alert.pk, "offline")]
    # The beat, a minute later, finds nothing more to do.
    assert detect_offline(timezone.now() + timedelta(minutes=10)) == 0
    with django_capture_on_commit_callbacks(execute=True):
        ingest_batch([telemetry(acme_device, temperature=-18.0)])
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert len(offline_alerts(acme_device)) == 1


def test_going_offline_again_soon_reopens_the_same_alert(acme_device, queued):
    now = timezone.now()
    devices_went_offline([acme_device.pk], now)
    devices_came_online([acme_device.pk], now)
    devices_went_offline([acme_device.pk], now + timedelta(minutes=1))
    [alert] = offline_alerts(acme_device)
    assert alert.state == AlertState.OPEN
    assert (alert.reopened, alert.count) == (1, 2)
    assert alert.last_triggered_at == now + timedelta(minutes=1)
    assert AlertEvent.objects.filter(alert=alert, kind=AlertEventKind.REOPENED).exists()


def test_a_second_last_will_while_offline_opens_no_second_alert(acme_device):
    now = timezone.now()
    devices_went_offline([acme_device.pk], now)
    devices_went_offline([acme_device.pk], now)
    assert len(offline_alerts(acme_device)) == 1
    assert offline_alerts(acme_device)[0].count == 1


# --- Beat schedules -----------------------------------------------------------------------------


def test_the_beat_schedules_exist_after_migrate_every_minute(db):
    tasks = PeriodicTask.objects.filter(task__in=BEAT_TASKS)
    assert {task.task for task in tasks} == BEAT_TASKS
    assert {(task.interval.every, task.interval.period) for task in tasks} == {(60, "seconds")}
    assert all(task.enabled for task in tasks)


def test_an_operators_edit_of_a_schedule_survives_rerunning_the_migration(db):
    migration = importlib.import_module("alerts.migrations.0003_periodic_tasks")
    task = PeriodicTask.objects.get(name="alerts.detect_offline")
    task.interval = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    task.enabled = False
    task.save()
    PeriodicTask.objects.filter(name="alerts.escalate").delete()
    migration.install_periodic_tasks(apps, None)
    task.refresh_from_db()
    assert (task.interval.every, task.interval.period, task.enabled) == (5, "minutes", False)
    assert PeriodicTask.objects.filter(task__in=BEAT_TASKS).count() == 5
    assert PeriodicTask.objects.filter(name="alerts.detect_offline").count() == 1


def test_reversing_the_migration_removes_the_schedules(db):
    migration = importlib.import_module("alerts.migrations.0003_periodic_tasks")
    migration.remove_periodic_tasks(apps, None)
    assert not PeriodicTask.objects.filter(task__in=BEAT_TASKS).exists()
    migration.install_periodic_tasks(apps, None)
    assert PeriodicTask.objects.filter(task__in=BEAT_TASKS).count() == 5
