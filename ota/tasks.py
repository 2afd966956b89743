"""Celery tasks of the OTA app: thin, idempotent, each calling a service (ota/services.py).

`ota.advance_rollouts` runs from beat (django-celery-beat row made by migration 0002, every 10 s);
`advance_rollout_task` runs after a batch of device reports touched a running rollout, so a wave
moves on within seconds of its last report rather than at the next beat.
"""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from ota import services


@shared_task(name="ota.advance_rollouts", acks_late=True)
def advance_rollouts_task() -> dict[int, str]:
    """Every running rollout: time out silent devices, apply thresholds and gates, send jobs."""
    return services.advance_rollouts(timezone.now())


@shared_task(name="ota.advance_rollout", acks_late=True)
def advance_rollout_task(rollout_id: int) -> str:
    return services.advance_rollout(rollout_id, timezone.now())


@shared_task(name="ota.send_jobs", acks_late=True)
def send_jobs_task(update_ids: list[int]) -> int:
    """Publish the OTA jobs of these device updates (a redelivery re-sends only those still
    waiting for their first report; devices ignore a job id they already have)."""
    return services.send_jobs(update_ids)
