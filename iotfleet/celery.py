"""The Celery application: settings come from Django's settings under the CELERY namespace."""

import logging
import os

from celery import Celery
from celery.signals import after_setup_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotfleet.settings")

app = Celery("iotfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
def quiet_per_task_lines(**_: object) -> None:
    """Telemetry arrives as many small tasks a second: "received" and "succeeded" lines per
    task would drown the log. Failures and retries are still logged."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
