"""The django-celery-beat rows the apps' data migrations install: each app's periodic tasks as
rows an operator can retime or pause in the admin (Periodic tasks).

A migration describes its rows with `BeatTask` and gets the two functions of its RunPython from
`installers()`:

    install_periodic_tasks, remove_periodic_tasks = installers(
        BeatTask("ota.advance_rollouts", "Rollouts: ...", every=(10, "seconds"))
    )
    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]

Installing creates a row only where none has its name, so running it again keeps the operator's
edits; removing deletes the rows by name. Both work on the migration's historical models (never
import the real ones here: migrations must keep working as the models change).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

RunPythonFunction = Callable[[Any, Any], None]


@dataclass(frozen=True)
class BeatTask:
    """One periodic task: its row's `name` (unique in the table) runs the Celery task `task`
    (default: the same name) on an interval `every` = (number, period), e.g. (1, "hours"), or a
    `crontab` (CrontabSchedule's fields), with `kwargs`."""

    name: str
    description: str
    task: str = ""
    every: tuple[int, str] | None = None
    crontab: dict[str, str] | None = None
    kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.crontab is None):
            raise ValueError(f"{self.name}: give either `every` or `crontab`.")


def _schedule(apps: Any, task: BeatTask) -> dict[str, Any]:
    """The schedule row of `task`, shared with any other task on the same schedule."""
    if task.every is not None:
        every, period = task.every
        model = apps.get_model("django_celery_beat", "IntervalSchedule")
        fields: dict[str, Any] = {"every": every, "period": period}
        key = "interval"
    else:
        model = apps.get_model("django_celery_beat", "CrontabSchedule")
        fields = dict(task.crontab or {})
        key = "crontab"
    schedule = model.objects.filter(**fields).first() or model.objects.create(**fields)
    return {key: schedule}


def _schedule_changed(apps: Any) -> None:
    # A running beat reloads its schedule when this timestamp moves (the model's signals do not
    # fire for the historical models of a migration).
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def installers(*tasks: BeatTask) -> tuple[RunPythonFunction, RunPythonFunction]:
    """(install, remove): the forward and reverse functions of a RunPython for these tasks."""

    def install(apps: Any, schema_editor: Any) -> None:
        PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
        created = False
        for task in tasks:
            if PeriodicTask.objects.filter(name=task.name).exists():
                continue
            defaults: dict[str, Any] = {
                "task": task.task or task.name,
                "description": task.description,
                **_schedule(apps, task),
            }
            if task.kwargs is not None:
                defaults["kwargs"] = json.dumps(task.kwargs)
            PeriodicTask.objects.create(name=task.name, **defaults)
            created = True
        if created:
            _schedule_changed(apps)

    def remove(apps: Any, schema_editor: Any) -> None:
        PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
        PeriodicTask.objects.filter(name__in=[task.name for task in tasks]).delete()
        _schedule_changed(apps)

    return install, remove
