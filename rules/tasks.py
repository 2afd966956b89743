"""Beat task of the rules app (its schedule is a django-celery-beat row, editable in the admin;
see alerts/migrations/0003_periodic_tasks.py). Thin: it calls the engine with the wall clock."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from rules import engine


@shared_task(name="rules.check_no_data", acks_late=True)
def check_no_data_task() -> int:
    """No-data rules: open an alert for each device silent past its rule's duration."""
    return engine.check_no_data(timezone.now())
