"""The beat schedule of OTA rollouts, as a django-celery-beat row an operator can retime or pause
in the admin (Periodic tasks). Created only where missing; reversing it deletes it."""

from django.db import migrations

from iotfleet.beat_schedules import BeatTask, installers

install_periodic_tasks, remove_periodic_tasks = installers(
    BeatTask(
        "ota.advance_rollouts",
        "Rollouts: time out silent devices, apply failure/success thresholds, soak and the "
        "health gate, start the next wave, send jobs.",
        every=(10, "seconds"),
    )
)


class Migration(migrations.Migration):
    dependencies = [
        ("ota", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]
