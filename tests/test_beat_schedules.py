"""The beat rows the apps' data migrations install through iotfleet/beat_schedules.py: each
migration runs backwards and forwards to the same rows, and keeps an operator's edits."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from iotfleet.beat_schedules import BeatTask

MIGRATIONS = {
    "alerts.migrations.0003_periodic_tasks": {
        "rules.check_no_data",
        "alerts.detect_offline",
        "alerts.resolve_cleared",
        "alerts.escalate",
        "alerts.send_reminders",
    },
    "maintenance.migrations.0002_periodic_task": {"maintenance.score_fleet"},
    "ota.migrations.0002_periodic_tasks": {"ota.advance_rollouts"},
    "reports.migrations.0002_daily_schedule": {"reports.send_fleet_reports: daily at 07:00"},
}


def rows(names: set[str]) -> set[tuple]:
    """What an operator sees of the rows: name, task, schedule, arguments, description."""
    return {
        (task.name, task.task, str(task.schedule), task.kwargs, task.description, task.enabled)
        for task in PeriodicTask.objects.filter(name__in=names).select_related(
            "interval", "crontab"
        )
    }


@pytest.mark.parametrize(("module", "names"), MIGRATIONS.items(), ids=list(MIGRATIONS))
def test_reversing_a_beat_migration_removes_its_rows_and_reapplying_restores_them(
    db, module, names
):
    migration = importlib.import_module(module)
    installed = rows(names)
    assert {row[0] for row in installed} == names
    migration.remove_periodic_tasks(apps, None)
    assert not PeriodicTask.objects.filter(name__in=names).exists()
    migration.install_periodic_tasks(apps, None)
    assert rows(names) == installed


@pytest.mark.parametrize(("module", "names"), MIGRATIONS.items(), ids=list(MIGRATIONS))
def test_rerunning_a_beat_migration_keeps_the_operators_edits(db, module, names):
    migration = importlib.import_module(module)
    name = sorted(names)[0]
    task = PeriodicTask.objects.get(name=name)
    task.interval, task.crontab = IntervalSchedule.objects.create(every=5, period="minutes"), None
    task.enabled = False
    task.save()
    migration.install_periodic_tasks(apps, None)
    task.refresh_from_db()
    assert (task.interval.every, task.interval.period, task.enabled) == (5, "minutes", False)
    assert PeriodicTask.objects.filter(name__in=names).count() == len(names)


def test_a_beat_task_has_one_schedule():
    with pytest.raises(ValueError, match="either `every` or `crontab`"):
        BeatTask("x", "no schedule")
    with pytest.raises(ValueError, match="either `every` or `crontab`"):
        BeatTask("x", "two schedules", every=(1, "hours"), crontab={"minute": "0"})
