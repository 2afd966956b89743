"""The beat schedule of predictive maintenance: a django-celery-beat row an operator can retime
or pause in the admin (Periodic tasks). Hourly, since the model looks at hourly buckets. Created
only where missing, so re-running this keeps the operator's edits; reversing it deletes it."""

from django.db import migrations
from django.utils import timezone

TASK = "maintenance.score_fleet"
DESCRIPTION = (
    "Predictive maintenance: score every wear indicator of the fleet, store the predictions, "
    "open maintenance alerts for devices at risk and resolve those no longer at risk."
)


def install_periodic_task(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    hourly = IntervalSchedule.objects.filter(every=1, period="hours").first()
    if hourly is None:
        hourly = IntervalSchedule.objects.create(every=1, period="hours")
    _, created = PeriodicTask.objects.get_or_create(
        name=TASK, defaults={"task": TASK, "interval": hourly, "description": DESCRIPTION}
    )
    if created:
        # A running beat reloads its schedule when this timestamp moves.
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_periodic_task(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name=TASK).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("maintenance", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_task, remove_periodic_task)]
