"""The beat schedule of predictive maintenance: a django-celery-beat row an operator can retime
or pause in the admin (Periodic tasks). Hourly, since the model looks at hourly buckets. Created
only where missing, so re-running this keeps the operator's edits; reversing it deletes it."""

from django.db import migrations

from iotfleet.beat_schedules import BeatTask, installers

install_periodic_tasks, remove_periodic_tasks = installers(
    BeatTask(
        "maintenance.score_fleet",
        "Predictive maintenance: score every wear indicator of the fleet, store the predictions, "
        "open maintenance alerts for devices at risk and resolve those no longer at risk.",
        every=(1, "hours"),
    )
)


class Migration(migrations.Migration):
    dependencies = [
        ("maintenance", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]
