"""The beat schedule of OTA rollouts, as a django-celery-beat row an operator can retime or pause
in the admin (Periodic tasks). Created only where missing; reversing it deletes it."""

from django.db import migrations
from django.utils import timezone

EVERY_SECONDS = 10
NAME = "ota.advance_rollouts"
DESCRIPTION = (
    "Rollouts: time out silent devices, apply failure/success thresholds, soak and the health "
    "gate, start the next wave, send jobs."
)


def install_periodic_task(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    every = IntervalSchedule.objects.filter(every=EVERY_SECONDS, period="seconds").first()
    if every is None:
        every = IntervalSchedule.objects.create(every=EVERY_SECONDS, period="seconds")
    _, created = PeriodicTask.objects.get_or_create(
        name=NAME, defaults={"task": NAME, "interval": every, "description": DESCRIPTION}
    )
    if created:
        # A running beat reloads its schedule when this timestamp moves.
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_periodic_task(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name=NAME).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("ota", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_task, remove_periodic_task)]
