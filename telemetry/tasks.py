"""Celery tasks of telemetry: thin wrappers over telemetry/services.py and telemetry/storage.py."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from telemetry import services, storage
from telemetry.validation import Entry

log = logging.getLogger(__name__)

# A batch must outlive any outage of the database: retry with backoff up to a minute apart,
# for as long as it takes (the batch is only acknowledged once stored; acks_late is global).
RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


@shared_task(name="telemetry.ingest_batch", acks_late=True, **RETRY)
def ingest_batch_task(entries: list[Entry]) -> dict:
    result = services.ingest_batch(entries)
    return {
        "messages": result.messages,
        "stored": result.readings_stored,
        "duplicates": result.readings_duplicate,
        "rejected": result.rejected,
    }


@shared_task(name="telemetry.maintain_partitions", acks_late=True, **RETRY)
def maintain_partitions_task() -> dict:
    upkeep = storage.maintain_partitions()
    return {
        "layout": upkeep.layout,
        "created": len(upkeep.created),
        "dropped": len(upkeep.dropped),
        "moved_from_default": upkeep.moved_from_default,
    }
