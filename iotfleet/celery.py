"""The Celery application: settings come from Django's settings under the CELERY namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotfleet.settings")

app = Celery("iotfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
