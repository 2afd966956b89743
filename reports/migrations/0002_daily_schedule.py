"""The default schedule of the fleet reports: every day at 07:00 (UTC; change the crontab's time
zone in the admin) a report of the last day for every tenant, emailed to its recipients. A
django-celery-beat row an operator edits in the admin (Periodic tasks), or copies for weekly or
per-tenant reports (kwargs {"tenants": ["acme"], "period": "weekly"}). Created only where
missing, so re-running this keeps the operator's edits; reversing it deletes it."""

from django.db import migrations

from iotfleet.beat_schedules import BeatTask, installers

install_periodic_tasks, remove_periodic_tasks = installers(
    BeatTask(
        "reports.send_fleet_reports: daily at 07:00",
        "Fleet report of the last day for every tenant, emailed to its report recipients. Copy "
        'this row with kwargs {"tenants": ["<slug>"], "period": "weekly"} (or a number of '
        "days) and another crontab for weekly or per-tenant reports.",
        task="reports.send_fleet_reports",
        crontab={
            "minute": "0",
            "hour": "7",
            "day_of_week": "*",
            "day_of_month": "*",
            "month_of_year": "*",
            "timezone": "UTC",
        },
        kwargs={"period": "daily"},
    )
)


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]
