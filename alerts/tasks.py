"""Beat tasks of the alerts app (schedules in django-celery-beat, editable in the admin; see
migration 0003). Thin: each calls a service with the wall clock."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

import alerts.notifications  # noqa: F401  (registers the notification tasks with Celery)
from alerts import services


@shared_task(name="alerts.detect_offline", acks_late=True)
def detect_offline_task() -> int:
    """Devices silent past their type's heartbeat timeout go offline, with an offline alert."""
    return services.detect_offline(timezone.now())


@shared_task(name="alerts.resolve_cleared", acks_late=True)
def resolve_cleared_task() -> int:
    """Rule alerts clear for their rule's hysteresis resolve, even if the device went quiet."""
    return services.resolve_cleared_alerts(timezone.now())
