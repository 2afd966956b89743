"""Every change of an alert goes through here (owned by the alerts helper; contract below).

Each function owns its transaction, records an AlertEvent, pushes the change to the tenant's
Channels group (iotfleet/live.py, on commit) and queues notifications
(alerts/notifications.py, on commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Breach:
    """A rule broke on a device in one batch: `count` breaking readings from `first_at` to
    `last_at` (device time); `values` are the metric values at `last_at`."""

    rule_id: int
    device_id: int
    tenant_id: int
    first_at: datetime
    last_at: datetime
    count: int
    values: dict[str, float] = field(default_factory=dict)


def record_breaches(breaches: Sequence[Breach]) -> None:
    """Open an alert per (rule, device) with none unresolved, or update the unresolved one
    (count += breach.count, last_triggered_at, values, cleared_at = None). A (rule, device)
    whose alert resolved within ALERT_FLAP_WINDOW reopens that alert (flapping) instead of
    opening a new one, and is not notified again while it flaps."""
    raise NotImplementedError


def record_clears(clears: Sequence[tuple[int, int, datetime]]) -> None:
    """(rule_id, device_id, at): the condition stopped holding at `at`; the unresolved alert
    gets cleared_at = at (if not set)."""
    raise NotImplementedError


def auto_resolve(resolutions: Sequence[tuple[int, int, datetime]]) -> None:
    """(rule_id, device_id, at): the condition has been clear for the rule's hysteresis;
    resolve the unresolved alert (resolved_by None, event auto_resolved)."""
    raise NotImplementedError


def devices_went_offline(device_ids: Sequence[int], at: datetime) -> None:
    """Open an offline alert for each device (the last will, or offline detection)."""
    raise NotImplementedError


def devices_came_online(device_ids: Sequence[int], at: datetime) -> None:
    """Resolve the devices' offline alerts: they were heard again."""
    raise NotImplementedError
