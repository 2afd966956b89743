"""Ingest rate per tenant, for the fleet overview: readings stored per 10-second slot, counted in
Redis (one pipelined HINCRBY per tenant and batch, no table write in the ingest's path), kept one
hour.

`count_readings({tenant_id: n})` is called by the batch after commit; `ingest_rates(tenant_ids)`
reads the last hour. A Redis that is away costs the chart, never a batch: errors are logged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from django.conf import settings

log = logging.getLogger(__name__)

SLOT_SECONDS = 10
KEEP_SECONDS = 3600
PREFIX = "iotfleet:ingest-rate"


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def _key(tenant_id: int) -> str:
    return f"{PREFIX}:{tenant_id}"


def count_readings(readings_by_tenant: dict[int, int], now: float | None = None) -> None:
    slot = int((now or time.time()) // SLOT_SECONDS)
    try:
        pipe = client().pipeline(transaction=False)
        for tenant_id, count in readings_by_tenant.items():
            pipe.hincrby(_key(tenant_id), str(slot), count)
            pipe.expire(_key(tenant_id), KEEP_SECONDS)
        pipe.execute()
    except redis.RedisError as error:
        log.warning("ingest rate not counted (%s)", error)


@dataclass(frozen=True)
class IngestRate:
    """Readings per second over the last minute, and per slot over the window (oldest first)."""

    per_second: float
    slots: list[tuple[float, float]]  # (slot start, epoch seconds; readings per second)
    slot_seconds: int = SLOT_SECONDS
    available: bool = True


def ingest_rates(
    tenant_ids: Iterable[int], window_seconds: int = 1800, now: float | None = None
) -> IngestRate:
    """The tenants' combined ingest rate: the last full minute, and each slot of the window."""
    now = now or time.time()
    current = int(now // SLOT_SECONDS)
    first = current - window_seconds // SLOT_SECONDS
    totals = dict.fromkeys(range(first, current), 0)
    try:
        pipe = client().pipeline(transaction=False)
        ids = list(tenant_ids)
        for tenant_id in ids:
            pipe.hgetall(_key(tenant_id))
        for counts in pipe.execute():
            for slot, count in counts.items():
                slot = int(slot)
                if slot in totals:
                    totals[slot] += int(count)
    except redis.RedisError as error:
        log.warning("ingest rate not readable (%s)", error)
        return IngestRate(per_second=0.0, slots=[], available=False)
    # The slot in progress is partial: rates come from the full slots before it.
    last_minute = [totals[slot] for slot in range(current - 60 // SLOT_SECONDS, current)]
    return IngestRate(
        per_second=sum(last_minute) / 60,
        slots=[(slot * SLOT_SECONDS, totals[slot] / SLOT_SECONDS) for slot in sorted(totals)],
    )
