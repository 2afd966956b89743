"""Beat task of predictive maintenance (schedule: django-celery-beat row `maintenance.score_fleet`,
created by migration 0002, editable in the admin)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from maintenance import services


@shared_task(name="maintenance.score_fleet", acks_late=True)
def score_fleet_task(tenant_id: int | None = None) -> dict[str, int]:
    """Score every wear indicator of the fleet (or of one tenant) and raise/resolve alerts."""
    result = services.score_fleet(timezone.now(), tenant_id=tenant_id)
    return {"scored": result.scored, "at_risk": result.at_risk}
