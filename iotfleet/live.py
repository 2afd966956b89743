"""Live updates: what changed, pushed to the Channels group of the tenant it belongs to.

Each web process reads `tenant_group(tenant_id)` once for the websockets of the tenant's members
open there (dashboards/hub.py; the consumer checks membership; this module only sends). A
message on the group is

    {"type": "fleet.event", "event": "<what happened>", "payload": {...}}

and the dashboards forward event and payload, merged into frames (dashboards/coalesce.py).

Pushes happen after the transaction commits: a dashboard never shows a change that rolled back.
A push that fails (Redis away) is logged and dropped; the database stays the truth and the
next page load shows it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

MESSAGE_TYPE = "fleet.event"
SEND_TIMEOUT_SECONDS = 10.0


def tenant_group(tenant_id: int) -> str:
    """The Channels group of one tenant's live dashboards."""
    return f"tenant.{tenant_id}"


def push_to_tenant(tenant_id: int, event: str, payload: dict[str, Any]) -> None:
    """Send `event` with `payload` to the tenant's group once the current transaction commits
    (at once outside a transaction). `payload` must be JSON-like (no datetimes: ISO strings)."""
    push_many([(tenant_id, event, payload)])


def push_many(events: Iterable[tuple[int, str, dict[str, Any]]]) -> None:
    """Several pushes, sent in order after one commit (one callback, one event loop hop)."""
    events = list(events)
    if events:
        transaction.on_commit(lambda: _send(events), robust=True)


_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for pushes, run by a daemon thread (one per process: a forked
    Celery pool process starts its own). channels-redis keeps its Redis connections per event
    loop, so `async_to_sync` (a new loop and thread per call) opened a new connection for every
    push: a thread, a loop and a connection per ingest batch (~10 % of a worker's time)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="live-push", daemon=True).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def _send(events: list[tuple[int, str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    sent = asyncio.run_coroutine_threadsafe(_send_all(layer, events), _event_loop())
    try:
        sent.result(SEND_TIMEOUT_SECONDS)
    except FutureTimeout:
        sent.cancel()
        log.warning("live push of %d events timed out; dropped", len(events))


async def _send_all(layer: Any, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    for tenant_id, event, payload in events:
        try:
            await layer.group_send(
                tenant_group(tenant_id), {"type": MESSAGE_TYPE, "event": event, "payload": payload}
            )
        except Exception:
            log.exception("live push of %s to tenant %s failed", event, tenant_id)
