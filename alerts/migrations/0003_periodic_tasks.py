"""The beat schedules of rules and alerts, as django-celery-beat rows an operator can retime or
pause in the admin (Periodic tasks). Created only where missing, so re-running this keeps the
operator's edits; reversing it deletes them."""

from django.db import migrations

from iotfleet.beat_schedules import BeatTask, installers

EVERY_MINUTE = (60, "seconds")

install_periodic_tasks, remove_periodic_tasks = installers(
    BeatTask(
        "rules.check_no_data",
        "No-data rules: open an alert for devices silent past the rule's duration.",
        every=EVERY_MINUTE,
    ),
    BeatTask(
        "alerts.detect_offline",
        "Mark devices offline past their type's heartbeat timeout; open offline alerts.",
        every=EVERY_MINUTE,
    ),
    BeatTask(
        "alerts.resolve_cleared",
        "Resolve rule alerts whose condition has stayed clear for the rule's hysteresis.",
        every=EVERY_MINUTE,
    ),
    BeatTask(
        "alerts.escalate",
        "Notify the next channel of alerts not acknowledged within the rule's escalation delay.",
        every=EVERY_MINUTE,
    ),
    BeatTask(
        "alerts.send_reminders",
        "Re-notify open, unacknowledged alerts on their rule's reminder schedule.",
        every=EVERY_MINUTE,
    ),
)


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0002_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install_periodic_tasks, remove_periodic_tasks)]
