"""The default schedule of the fleet reports: every day at 07:00 (UTC; change the crontab's time
zone in the admin) a report of the last day for every tenant, emailed to its recipients. A
django-celery-beat row an operator edits in the admin (Periodic tasks), or copies for weekly or
per-tenant reports (kwargs {"tenants": ["acme"], "period": "weekly"}). Created only where
missing, so re-running this keeps the operator's edits; reversing it deletes it."""

import json

from django.db import migrations
from django.utils import timezone

NAME = "reports.send_fleet_reports: daily at 07:00"
TASK = "reports.send_fleet_reports"
DESCRIPTION = (
    "Fleet report of the last day for every tenant, emailed to its report recipients. Copy this "
    'row with kwargs {"tenants": ["<slug>"], "period": "weekly"} (or a number of days) and '
    "another crontab for weekly or per-tenant reports."
)


def install(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    seven = CrontabSchedule.objects.filter(
        minute="0", hour="7", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    ).first()
    if seven is None:
        seven = CrontabSchedule.objects.create(
            minute="0", hour="7", day_of_week="*", day_of_month="*", month_of_year="*",
            timezone="UTC",
        )
    _, created = PeriodicTask.objects.get_or_create(
        name=NAME,
        defaults={
            "task": TASK,
            "crontab": seven,
            "kwargs": json.dumps({"period": "daily"}),
            "description": DESCRIPTION,
        },
    )
    if created:
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name=NAME).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, remove)]
