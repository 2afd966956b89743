"""The beat schedules of rules and alerts, as django-celery-beat rows an operator can retime or
pause in the admin (Periodic tasks). Created only where missing, so re-running this keeps the
operator's edits; reversing it deletes them."""

from django.db import migrations
from django.utils import timezone

EVERY_SECONDS = 60

# (name = Celery task name, description)
TASKS = [
    (
        "rules.check_no_data",
        "No-data rules: open an alert for devices silent past the rule's duration.",
    ),
    (
        "alerts.detect_offline",
        "Mark devices offline past their type's heartbeat timeout; open offline alerts.",
    ),
    (
        "alerts.resolve_cleared",
        "Resolve rule alerts whose condition has stayed clear for the rule's hysteresis.",
    ),
    (
        "alerts.escalate",
        "Notify the next channel of alerts not acknowledged within the rule's escalation delay.",
    ),
    (
        "alerts.send_reminders",
        "Re-notify open, unacknowledged alerts on their rule's reminder schedule.",
    ),
]


def install_periodic_tasks(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    every_minute = IntervalSchedule.objects.filter(every=EVERY_SECONDS, period="seconds").first()
    if every_minute is None:
        every_minute = IntervalSchedule.objects.create(every=EVERY_SECONDS, period="seconds")
    created = False
    for name, description in TASKS:
        _, new = PeriodicTask.objects.get_or_create(
            name=name,
            defaults={"task": name, "interval": every_minute, "description": description},
        )
        created = created or new
    if created:
        # A running beat reloads its schedule when this timestamp moves (the model's signals do
        # not fire for the historical models of a migration).
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_periodic_tasks(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name__in=[name for name, _ in TASKS]).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0002_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]
