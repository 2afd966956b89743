"""Celery tasks of telemetry: thin wrappers over telemetry/services.py and telemetry/storage.py."""

from __future__ import annotations

import json
import logging
import random

import psycopg
from celery import shared_task
from django.db import DatabaseError, InterfaceError, OperationalError, connection

from telemetry import services, storage
from telemetry.validation import Entry

log = logging.getLogger(__name__)

# The database is down or went away mid-batch (Django's wrapped errors, and psycopg's own from
# COPY, which bypasses Django's cursor wrapper).
DATABASE_DOWN = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
RETRY_MAX_SECONDS = 30


def store(entries: list[Entry]) -> None:
    """Store a batch; if the database refuses its content (not its absence), halve the batch
    until the one entry it refuses is found and recorded as rejected: the rest is stored."""
    try:
        services.ingest_batch(entries)
    except DATABASE_DOWN:
        raise
    except (DatabaseError, psycopg.DatabaseError) as error:
        if len(entries) == 1:
            log.error("an entry could not be stored and was rejected: %s", error)
            services.reject_unstorable(entries[0], error)
            return
        log.warning("batch of %d refused (%s); storing it in halves", len(entries), error)
        middle = len(entries) // 2
        store(entries[:middle])
        store(entries[middle:])


def backoff(retries: int) -> float:
    return min(RETRY_MAX_SECONDS, 2**retries) * random.uniform(0.5, 1.0)


@shared_task(
    bind=True, name="telemetry.ingest_batch", acks_late=True, ignore_result=True, max_retries=None
)
def ingest_batch_task(self, entries: list[Entry] | str) -> None:
    """Store one batch (a list of entries, or the JSON text of one, as mqtt_ingest sends it).
    If the database is unreachable, retry with backoff for as long as it takes: the batch is
    acknowledged to Redis only once stored or re-queued (acks_late)."""
    if isinstance(entries, str):
        entries = json.loads(entries)
    try:
        store(entries)
    except DATABASE_DOWN as error:
        connection.close()  # the next attempt opens a fresh connection
        log.warning("database unavailable (%s); batch of %d retried", error, len(entries))
        raise self.retry(exc=error, countdown=backoff(self.request.retries)) from error


@shared_task(bind=True, name="telemetry.maintain_partitions", acks_late=True, max_retries=5)
def maintain_partitions_task(self) -> dict:
    try:
        upkeep = storage.maintain_partitions()
    except DATABASE_DOWN as error:
        connection.close()
        raise self.retry(exc=error, countdown=backoff(self.request.retries)) from error
    return {
        "layout": upkeep.layout,
        "created": len(upkeep.created),
        "dropped": len(upkeep.dropped),
        "moved_from_default": upkeep.moved_from_default,
    }
