"""Every change of an alert goes through here.

Each function owns its transaction, records an AlertEvent per alert changed, pushes the changed
alerts to their tenant's Channels group (iotfleet/live.py: one `alerts.changed` event per tenant and
call, after commit) and queues notifications (alerts/notifications.py, after commit).

Race safety: two Celery workers may record breaches of the same rule on the same device at once.
The partial unique constraints (one unresolved alert per rule and device, one unresolved offline
alert per device) decide: breaches are an INSERT ... ON CONFLICT DO UPDATE on them, offline
alerts an INSERT ... ON CONFLICT DO NOTHING, and every transition is an UPDATE whose WHERE
re-checks the state it leaves, so of two concurrent calls exactly one makes each change.

Flapping: an alert that resolved by itself less than ALERT_FLAP_WINDOW ago comes back as the
same alert (state open, `reopened` + 1, event "reopened") instead of a new one; past
ALERT_FLAP_QUIET reopenings it no longer notifies. An alert resolved by a person is not
reopened: the next breach opens a new alert.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from alerts.models import Alert, AlertEvent, AlertEventKind, AlertKind, AlertState
from devices.models import Device, DeviceStatus
from iotfleet import live
from ota.models import DeviceUpdate
from rules.models import Rule, RuleKind, Severity

log = logging.getLogger(__name__)

# Notification reasons (alerts.notifications.queue_notifications).
OPENED, OFFLINE, RESOLVED, MAINTENANCE = "opened", "offline", "resolved", "maintenance"
# A live message carries at most this many alerts; a bigger change goes out in several.
PUSH_CHUNK = 200
TITLE_MAX = Alert._meta.get_field("title").max_length
COUNT_MAX = 2**31 - 1


class RuleFacts(NamedTuple):
    """What alerting needs of a rule (a storm reads its rules every batch: no model instances)."""

    tenant_id: int
    name: str
    kind: str
    condition: str
    metric: str
    for_duration: timedelta
    severity: str


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


@dataclass(frozen=True)
class MaintenanceRisk:
    """Predictive maintenance expects `metric_id` of `device_id` to reach its failure threshold
    soon (or it already has). `values` is the evidence the alert shows (predicted date,
    confidence, health, level, threshold)."""

    device_id: int
    metric_id: int
    tenant_id: int
    title: str
    severity: str
    at: datetime
    values: dict[str, Any] = field(default_factory=dict)


class AlertStateError(Exception):
    """The alert's state does not allow the change asked for (acknowledging a resolved alert,
    resolving it twice). The admin shows `message`; the API answers 409 with it."""

    def __init__(self, message: str, alert: Alert | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.alert = alert


# --- Rule alerts --------------------------------------------------------------------------------


def record_breaches(breaches: Sequence[Breach]) -> None:
    """Open an alert per (rule, device) with none unresolved, or update the unresolved one
    (count += breach.count, last_triggered_at, values, cleared_at = None). A (rule, device)
    whose alert resolved within ALERT_FLAP_WINDOW reopens that alert (flapping) instead of
    opening a new one, and is not notified again while it flaps."""
    merged = _merge(breaches)
    if not merged:
        return
    now = timezone.now()
    rules = {
        row[0]: RuleFacts(*row[1:])
        for row in Rule.objects.filter(pk__in={rule_id for rule_id, _ in merged}).values_list(
            "pk", *RuleFacts._fields
        )
    }
    devices = {
        pk: (tenant_id, name)
        for pk, tenant_id, name in Device.objects.filter(
            pk__in={device_id for _, device_id in merged}
        ).values_list("pk", "tenant_id", "name")
    }
    # A rule or device deleted since the batch was evaluated, or a breach across tenants (a bug
    # upstream): nothing to alert on.
    keys = sorted(
        key
        for key in merged
        if key[0] in rules and key[1] in devices and rules[key[0]].tenant_id == devices[key[1]][0]
    )
    if not keys:
        return
    with transaction.atomic():
        reopened = _reopen_flapping(AlertKind.RULE, keys, None)
        rows = _upsert_rule_alerts([merged[key] for key in keys], rules, devices, now)
        new = [row[0] for row in rows if row[1]]
        AlertEvent.objects.bulk_create(
            [AlertEvent(alert_id=alert_id, kind=AlertEventKind.OPENED, at=now) for alert_id in new]
            + _reopened_events(reopened, now)
        )
        _notify(new + _still_notifying(reopened), OPENED)
        # New and reopened alerts go out whole; an alert that was already open only counted on.
        _push_alerts(new + list(reopened))
        _push_counts([row for row in rows if not row[1] and row[0] not in reopened])


def record_clears(clears: Sequence[tuple[int, int, datetime]]) -> None:
    """(rule_id, device_id, at): the condition stopped holding at `at`; the unresolved alert
    gets cleared_at = at (if not set)."""
    earliest: dict[tuple[int, int], datetime] = {}
    for rule_id, device_id, at in clears:
        key = (rule_id, device_id)
        earliest[key] = min(at, earliest.get(key, at))
    if not earliest:
        return
    keys = sorted(earliest)
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(
            """
            UPDATE alerts_alert a SET cleared_at = v.at, updated_at = %s
            FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) AS v(rule_id, device_id, at)
            WHERE a.kind = %s AND a.state <> %s AND a.cleared_at IS NULL
                AND a.rule_id = v.rule_id AND a.device_id = v.device_id
            RETURNING a.id
            """,
            [
                timezone.now(),
                [rule_id for rule_id, _ in keys],
                [device_id for _, device_id in keys],
                [earliest[key] for key in keys],
                AlertKind.RULE,
                AlertState.RESOLVED,
            ],
        )
        _push_alerts([row[0] for row in cursor.fetchall()])


def auto_resolve(resolutions: Sequence[tuple[int, int, datetime]]) -> None:
    """(rule_id, device_id, at): the condition has been clear for the rule's hysteresis;
    resolve the unresolved alert (resolved_by None, event auto_resolved)."""
    latest: dict[tuple[int, int], datetime] = {}
    for rule_id, device_id, at in resolutions:
        key = (rule_id, device_id)
        latest[key] = max(at, latest.get(key, at))
    if not latest:
        return
    keys = sorted(latest)
    now = timezone.now()
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(
            """
            UPDATE alerts_alert a SET state = %s, resolved_at = v.at, resolved_by_id = NULL,
                cleared_at = COALESCE(a.cleared_at, v.at), updated_at = %s
            FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[]) AS v(rule_id, device_id, at)
            WHERE a.kind = %s AND a.state <> %s
                AND a.rule_id = v.rule_id AND a.device_id = v.device_id
            RETURNING a.id, a.reopened, a.rule_id, a.device_id
            """,
            [
                AlertState.RESOLVED,
                now,
                [rule_id for rule_id, _ in keys],
                [device_id for _, device_id in keys],
                [latest[key] for key in keys],
                AlertKind.RULE,
                AlertState.RESOLVED,
            ],
        )
        _resolved_by_themselves(cursor.fetchall(), "The condition stayed clear.")


def resolve_cleared_alerts(now: datetime) -> int:
    """Resolve rule alerts whose condition has been clear for the rule's hysteresis by the wall
    clock: evaluation resolves them on the next reading, this catches devices that went quiet
    while clear. Returns how many resolved."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE alerts_alert a SET state = %s, resolved_at = %s, resolved_by_id = NULL,
                updated_at = %s
            FROM rules_rule r
            WHERE a.rule_id = r.id AND a.kind = %s AND a.state <> %s
                AND a.cleared_at IS NOT NULL AND a.cleared_at + r.hysteresis <= %s
            RETURNING a.id, a.reopened, a.rule_id, a.device_id
            """,
            [AlertState.RESOLVED, now, now, AlertKind.RULE, AlertState.RESOLVED, now],
        )
        rows = cursor.fetchall()
        _resolved_by_themselves(rows, "The condition stayed clear.")
    return len(rows)


# --- Offline alerts -----------------------------------------------------------------------------


def detect_offline(now: datetime) -> int:
    """Mark online devices offline whose type's heartbeat timeout has passed since they were
    last seen (`Device.objects.stale(now)`), and open their offline alerts. Devices in
    maintenance are never touched. Returns how many went offline.

    One UPDATE re-checks status and last_seen on every row it changes, so a device heard while
    this runs, or marked offline by another beat or its last will, is left alone."""
    candidates = list(Device.objects.stale(now).order_by("pk").values_list("pk", flat=True))
    if not candidates:
        return 0
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE devices_device d SET status = %s, updated_at = %s
                FROM devices_devicetype t
                WHERE d.id = ANY(%s) AND d.device_type_id = t.id AND d.status = %s
                    AND d.last_seen < %s - t.heartbeat_timeout
                RETURNING d.id
                """,
                [DeviceStatus.OFFLINE, now, candidates, DeviceStatus.ONLINE, now],
            )
            device_ids = sorted(row[0] for row in cursor.fetchall())
        if device_ids:
            devices_went_offline(device_ids, now)
    return len(device_ids)


def devices_went_offline(device_ids: Sequence[int], at: datetime) -> None:
    """Open an offline alert for each device (the last will, or offline detection).

    A device inside its firmware update window (job sent, not finished) is expected to reboot:
    no alert now; if it has not come back when its update times out, OTA raises it then
    (ota.services.Advance.time_out)."""
    updating = DeviceUpdate.objects.updating_device_ids(device_ids)
    device_ids = [pk for pk in device_ids if pk not in updating]
    devices = {
        pk: (tenant_id, name, last_seen)
        for pk, tenant_id, name, last_seen in Device.objects.filter(
            pk__in=set(device_ids)
        ).values_list("pk", "tenant_id", "name", "last_seen")
    }
    if not devices:
        return
    keys = sorted(devices)
    with transaction.atomic():
        reopened = _reopen_flapping(AlertKind.OFFLINE, [(device_id,) for device_id in keys], at)
        values = {
            pk: json.dumps({"last_seen": last_seen.isoformat() if last_seen else None})
            for pk, (_, _, last_seen) in devices.items()
        }
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO alerts_alert (tenant_id, kind, rule_id, device_id, severity, state,
                    title, "values", count, first_triggered_at, last_triggered_at,
                    acknowledge_note, resolve_note, escalation_level, reopened, created_at,
                    updated_at)
                SELECT v.tenant_id, %s, NULL, v.device_id, %s, %s, v.title, v.vals, 1, %s, %s,
                    '', '', 0, 0, %s, %s
                FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::jsonb[])
                    AS v(device_id, tenant_id, title, vals)
                ORDER BY v.device_id
                ON CONFLICT (device_id) WHERE kind = 'offline' AND NOT state = 'resolved'
                DO NOTHING
                RETURNING id
                """,
                [
                    AlertKind.OFFLINE,
                    Severity.WARNING,
                    AlertState.OPEN,
                    at,
                    at,
                    timezone.now(),
                    timezone.now(),
                    keys,
                    [devices[pk][0] for pk in keys],
                    [_truncate(f"{devices[pk][1]} is offline") for pk in keys],
                    [values[pk] for pk in keys],
                ],
            )
            new = [row[0] for row in cursor.fetchall()]
        if reopened:
            for alert in Alert.objects.filter(pk__in=reopened).only("device_id"):
                Alert.objects.filter(pk=alert.pk).update(values=json.loads(values[alert.device_id]))
        AlertEvent.objects.bulk_create(
            [
                AlertEvent(
                    alert_id=alert_id,
                    kind=AlertEventKind.OPENED,
                    at=timezone.now(),
                    note="Not heard within the heartbeat timeout, or its last will said offline.",
                )
                for alert_id in new
            ]
            + _reopened_events(reopened, timezone.now())
        )
        _notify(new + _still_notifying(reopened), OFFLINE)
        _push_alerts([*new, *reopened])
        _push_device_status(keys)


def devices_came_online(device_ids: Sequence[int], at: datetime) -> None:
    """Resolve the devices' offline alerts: they were heard again."""
    ids = sorted(set(device_ids))
    if not ids:
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE alerts_alert SET state = %s, resolved_at = %s, resolved_by_id = NULL,
                cleared_at = %s, updated_at = %s
            WHERE kind = %s AND state <> %s AND device_id = ANY(%s)
            RETURNING id, reopened, NULL, device_id
            """,
            [
                AlertState.RESOLVED,
                at,
                at,
                timezone.now(),
                AlertKind.OFFLINE,
                AlertState.RESOLVED,
                ids,
            ],
        )
        _resolved_by_themselves(cursor.fetchall(), "The device was heard again.")
        _push_device_status(ids)


# --- Maintenance alerts ------------------------------------------------------------------------


def record_maintenance_risks(risks: Sequence[MaintenanceRisk]) -> list[int]:
    """Open a maintenance alert per (device, wear metric) at risk with none unresolved, or bring
    the unresolved one up to date (title, severity, evidence; count += 1 per scoring run that
    confirms it). One that resolved by itself within ALERT_FLAP_WINDOW reopens instead.
    Notifies the tenant's channels marked `for_maintenance` when an alert opens. Returns the ids
    of the alerts opened (new or reopened)."""
    by_key = {(risk.device_id, risk.metric_id): risk for risk in risks}
    if not by_key:
        return []
    keys = sorted(by_key)
    now = timezone.now()
    with transaction.atomic():
        reopened = _reopen_flapping(AlertKind.MAINTENANCE, keys, None)
        chosen = [by_key[key] for key in keys]
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO alerts_alert (tenant_id, kind, rule_id, device_id, metric_id,
                    severity, state, title, "values", count, first_triggered_at,
                    last_triggered_at, acknowledge_note, resolve_note, escalation_level, reopened,
                    created_at, updated_at)
                SELECT v.tenant_id, %s, NULL, v.device_id, v.metric_id, v.severity, %s, v.title,
                    v.vals, 1, v.at, v.at, '', '', 0, 0, %s, %s
                FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::text[],
                        %s::jsonb[], %s::timestamptz[])
                    AS v(device_id, metric_id, tenant_id, severity, title, vals, at)
                ORDER BY v.device_id, v.metric_id
                ON CONFLICT (device_id, metric_id)
                    WHERE kind = 'maintenance' AND NOT state = 'resolved'
                DO UPDATE SET
                    count = LEAST(alerts_alert.count::bigint + 1, %s),
                    last_triggered_at = GREATEST(
                        alerts_alert.last_triggered_at, EXCLUDED.last_triggered_at),
                    "values" = EXCLUDED."values",
                    title = EXCLUDED.title,
                    severity = EXCLUDED.severity,
                    cleared_at = NULL,
                    updated_at = EXCLUDED.updated_at
                RETURNING id, (xmax = 0), tenant_id, count, last_triggered_at, state
                """,
                [
                    AlertKind.MAINTENANCE,
                    AlertState.OPEN,
                    now,
                    now,
                    [risk.device_id for risk in chosen],
                    [risk.metric_id for risk in chosen],
                    [risk.tenant_id for risk in chosen],
                    [risk.severity for risk in chosen],
                    [_truncate(risk.title) for risk in chosen],
                    [json.dumps(risk.values) for risk in chosen],
                    [risk.at for risk in chosen],
                    COUNT_MAX,
                ],
            )
            rows = [(row[0], bool(row[1]), *row[2:]) for row in cursor.fetchall()]
        new = [row[0] for row in rows if row[1]]
        AlertEvent.objects.bulk_create(
            [
                AlertEvent(
                    alert_id=alert_id,
                    kind=AlertEventKind.OPENED,
                    at=now,
                    note="Predictive maintenance expects the wear indicator to reach its "
                    "failure threshold soon.",
                )
                for alert_id in new
            ]
            + _reopened_events(reopened, now)
        )
        _notify(new + _still_notifying(reopened), MAINTENANCE)
        # Opened and reopened alerts go out whole; the others were only brought up to date.
        _push_alerts(new + list(reopened))
        _push_counts([row for row in rows if not row[1] and row[0] not in reopened])
    return new + list(reopened)


def resolve_maintenance_alerts(pairs: Iterable[tuple[int, int]], note: str) -> int:
    """Resolve the unresolved maintenance alerts of these (device, metric) pairs: the
    prediction behind them went away (the trend turned, or the part was replaced). Returns how
    many resolved."""
    keys = sorted(set(pairs))
    if not keys:
        return 0
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE alerts_alert a SET state = %s, resolved_at = %s, resolved_by_id = NULL,
                cleared_at = COALESCE(a.cleared_at, %s), updated_at = %s
            FROM unnest(%s::bigint[], %s::bigint[]) AS v(device_id, metric_id)
            WHERE a.kind = %s AND a.state <> %s
                AND a.device_id = v.device_id AND a.metric_id = v.metric_id
            RETURNING a.id, a.reopened, NULL, a.device_id
            """,
            [
                AlertState.RESOLVED,
                now,
                now,
                now,
                [device_id for device_id, _ in keys],
                [metric_id for _, metric_id in keys],
                AlertKind.MAINTENANCE,
                AlertState.RESOLVED,
            ],
        )
        rows = cursor.fetchall()
        _resolved_by_themselves(rows, note)
    return len(rows)


# --- People acting on alerts --------------------------------------------------------------------


def acknowledge_alert(alert: Alert, user: Any, note: str = "") -> Alert:
    """Open → acknowledged by `user`: it stops escalating and reminding. Raises AlertStateError
    when the alert is not open."""
    if acknowledge_alerts(Alert.objects.filter(pk=alert.pk), user, note) == 0:
        alert.refresh_from_db()
        raise AlertStateError(_cannot_acknowledge(alert), alert)
    alert.refresh_from_db()
    return alert


def acknowledge_alerts(queryset: QuerySet, user: Any, note: str = "") -> int:
    """Acknowledge the open alerts of `queryset` (the caller has checked the user may); the
    others are left as they are. Returns how many were acknowledged."""
    now = timezone.now()
    note = note.strip()
    with transaction.atomic():
        ids = list(
            Alert.objects.select_for_update()
            .filter(pk__in=queryset.order_by().values("pk"), state=AlertState.OPEN)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        Alert.objects.filter(pk__in=ids).update(
            state=AlertState.ACKNOWLEDGED,
            acknowledged_at=now,
            acknowledged_by=user,
            acknowledge_note=note,
            updated_at=now,
        )
        AlertEvent.objects.bulk_create(
            AlertEvent(alert_id=pk, kind=AlertEventKind.ACKNOWLEDGED, at=now, user=user, note=note)
            for pk in ids
        )
        _push_alerts(ids)
    return len(ids)


def resolve_alert(alert: Alert, user: Any, note: str = "") -> Alert:
    """Open or acknowledged → resolved by `user`. The rule's state on the device is reset, so a
    new breach opens a new alert. Raises AlertStateError when it is already resolved."""
    if resolve_alerts(Alert.objects.filter(pk=alert.pk), user, note) == 0:
        alert.refresh_from_db()
        raise AlertStateError(
            f"Alert #{alert.pk} was already resolved"
            f"{_by_whom(alert.resolved_by, alert.resolved_at)}: nothing to do. If the problem is "
            "back, a new breach opens a new alert.",
            alert,
        )
    alert.refresh_from_db()
    return alert


def resolve_alerts(queryset: QuerySet, user: Any, note: str = "") -> int:
    """Resolve the unresolved alerts of `queryset` by `user`; returns how many."""
    now = timezone.now()
    note = note.strip()
    with transaction.atomic():
        rows = list(
            Alert.objects.select_for_update()
            .filter(pk__in=queryset.order_by().values("pk"))
            .exclude(state=AlertState.RESOLVED)
            .order_by("pk")
            .values_list("pk", "kind", "rule_id", "device_id", "reopened")
        )
        if not rows:
            return 0
        ids = [row[0] for row in rows]
        Alert.objects.filter(pk__in=ids).update(
            state=AlertState.RESOLVED,
            resolved_at=now,
            resolved_by=user,
            resolve_note=note,
            updated_at=now,
        )
        AlertEvent.objects.bulk_create(
            AlertEvent(alert_id=pk, kind=AlertEventKind.RESOLVED, at=now, user=user, note=note)
            for pk in ids
        )
        _reset_rule_states(
            [(rule_id, device_id) for _, kind, rule_id, device_id, _ in rows if rule_id]
        )
        _notify(_still_notifying({pk: reopened for pk, *_, reopened in rows}), RESOLVED)
        _push_alerts(ids)
    return len(ids)


# --- Live payloads ------------------------------------------------------------------------------


def alert_payload(alert: Alert) -> dict[str, Any]:
    """What dashboards get of an alert (JSON-ready); `alert` with device and users selected."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "id": alert.pk,
        "kind": alert.kind,
        "state": alert.state,
        "severity": alert.severity,
        "title": alert.title,
        "device": alert.device.key,
        "rule": alert.rule_id,
        "count": alert.count,
        "reopened": alert.reopened,
        "values": alert.values,
        "first_triggered_at": iso(alert.first_triggered_at),
        "last_triggered_at": iso(alert.last_triggered_at),
        "cleared_at": iso(alert.cleared_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by.username if alert.acknowledged_by else None,
        "resolved_at": iso(alert.resolved_at),
        "resolved_by": alert.resolved_by.username if alert.resolved_by else None,
    }


PAYLOAD_FIELDS = (
    "id", "tenant_id", "kind", "state", "severity", "title", "device__key", "rule_id", "count",
    "reopened", "values", "first_triggered_at", "last_triggered_at", "cleared_at",
    "acknowledged_at", "acknowledged_by__username", "resolved_at", "resolved_by__username",
)  # fmt: skip


def _row_payload(row: dict[str, Any]) -> dict[str, Any]:
    """alert_payload() of an alert read as PAYLOAD_FIELDS values."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "id": row["id"],
        "kind": row["kind"],
        "state": row["state"],
        "severity": row["severity"],
        "title": row["title"],
        "device": row["device__key"],
        "rule": row["rule_id"],
        "count": row["count"],
        "reopened": row["reopened"],
        "values": row["values"],
        "first_triggered_at": iso(row["first_triggered_at"]),
        "last_triggered_at": iso(row["last_triggered_at"]),
        "cleared_at": iso(row["cleared_at"]),
        "acknowledged_at": iso(row["acknowledged_at"]),
        "acknowledged_by": row["acknowledged_by__username"],
        "resolved_at": iso(row["resolved_at"]),
        "resolved_by": row["resolved_by__username"],
    }


# --- Titles -------------------------------------------------------------------------------------


def duration_in_words(span: timedelta) -> str:
    """5 minutes, 2 hours, 90 seconds: the largest unit that divides it."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            return _plural(seconds // size, unit)
    return _plural(seconds, "second")


def alert_title(rule: Rule | RuleFacts, device_name: str) -> str:
    """ "<rule name>: <condition> on <device name>", the condition in the operator's words."""
    if rule.kind == RuleKind.NO_DATA:
        what = f"no {rule.metric} data" if rule.metric else "no data"
        condition = f"{what} for {duration_in_words(rule.for_duration)}"
    else:
        condition = " ".join(rule.condition.split())
        if rule.kind == RuleKind.DURATION and rule.for_duration:
            condition += f" for {duration_in_words(rule.for_duration)}"
    return _truncate(f"{rule.name}: {condition} on {device_name}")


# --- Internals ----------------------------------------------------------------------------------


def _merge(breaches: Iterable[Breach]) -> dict[tuple[int, int], Breach]:
    """One breach per (rule, device): ON CONFLICT cannot update a row twice in one statement."""
    merged: dict[tuple[int, int], Breach] = {}
    for breach in breaches:
        if breach.count <= 0:
            continue
        key = (breach.rule_id, breach.device_id)
        seen = merged.get(key)
        if seen is None:
            merged[key] = breach
            continue
        later = breach if breach.last_at >= seen.last_at else seen
        merged[key] = Breach(
            rule_id=breach.rule_id,
            device_id=breach.device_id,
            tenant_id=breach.tenant_id,
            first_at=min(seen.first_at, breach.first_at),
            last_at=later.last_at,
            count=seen.count + breach.count,
            values=later.values,
        )
    return merged


def _json_values(values: dict[str, Any]) -> str:
    """The triggering values as JSON: NaN and infinities (unknown) become null."""
    clean = {}
    for name, value in values.items():
        number = float(value) if isinstance(value, int | float) else None
        clean[str(name)] = number if number is not None and math.isfinite(number) else None
    return json.dumps(clean)


def _upsert_rule_alerts(
    breaches: list[Breach],
    rules: dict[int, RuleFacts],
    devices: dict[int, tuple[int, str]],
    now: datetime,
) -> list[tuple[int, bool]]:
    """(alert id, newly opened, tenant id, count, last triggered, state) per breach, in one
    statement."""
    with _cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO alerts_alert (tenant_id, kind, rule_id, device_id, severity, state, title,
                "values", count, first_triggered_at, last_triggered_at, acknowledge_note,
                resolve_note, escalation_level, reopened, created_at, updated_at)
            SELECT v.tenant_id, %s, v.rule_id, v.device_id, v.severity, %s, v.title, v.vals,
                v.count, v.first_at, v.last_at, '', '', 0, 0, %s, %s
            FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::text[],
                    %s::jsonb[], %s::integer[], %s::timestamptz[], %s::timestamptz[])
                AS v(rule_id, device_id, tenant_id, severity, title, vals, count, first_at,
                    last_at)
            ORDER BY v.rule_id, v.device_id
            ON CONFLICT (rule_id, device_id) WHERE kind = 'rule' AND NOT state = 'resolved'
            DO UPDATE SET
                count = LEAST(alerts_alert.count::bigint + EXCLUDED.count, %s),
                last_triggered_at = GREATEST(
                    alerts_alert.last_triggered_at, EXCLUDED.last_triggered_at),
                "values" = CASE WHEN EXCLUDED.last_triggered_at >= alerts_alert.last_triggered_at
                    THEN EXCLUDED."values" ELSE alerts_alert."values" END,
                cleared_at = NULL,
                updated_at = EXCLUDED.updated_at
            RETURNING id, (xmax = 0), tenant_id, count, last_triggered_at, state
            """,
            [
                AlertKind.RULE,
                AlertState.OPEN,
                now,
                now,
                [b.rule_id for b in breaches],
                [b.device_id for b in breaches],
                [rules[b.rule_id].tenant_id for b in breaches],
                [rules[b.rule_id].severity for b in breaches],
                [alert_title(rules[b.rule_id], devices[b.device_id][1]) for b in breaches],
                [_json_values(b.values) for b in breaches],
                [min(b.count, COUNT_MAX) for b in breaches],
                [b.first_at for b in breaches],
                [b.last_at for b in breaches],
                COUNT_MAX,
            ],
        )
        return [(row[0], bool(row[1]), *row[2:]) for row in cursor.fetchall()]


def _cursor() -> psycopg.Cursor:
    """psycopg's own cursor on Django's connection, in its transaction: parameters bound on the
    server, arrays sent as binary. Django's cursor quotes every element of the arrays of a
    storm's hundreds of alerts in Python."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _reopen_flapping(kind: str, keys: list[tuple[int, ...]], at: datetime | None) -> dict[int, int]:
    """Reopen, per key ((rule, device) or (device,)), the latest alert when it resolved by itself
    within the flap window and none is unresolved. Returns {alert id: times reopened}.

    An offline alert counts the new outage and moves last_triggered_at to `at`; a rule alert
    gets both from the breach that follows (at None).

    Runs in a savepoint: should a concurrent transaction have opened an alert for the same key
    meanwhile (the unique constraint refuses the reopening), the breach updates that one."""
    if not keys:
        return {}
    columns = {
        AlertKind.RULE: ("rule_id", "device_id"),
        AlertKind.MAINTENANCE: ("device_id", "metric_id"),
    }.get(kind, ("device_id",))
    unnest = ", ".join("%s::bigint[]" for _ in columns)
    join = " AND ".join(f"a.{column} = k.{column}" for column in columns)
    partition = ", ".join(f"a.{column}" for column in columns)
    params = [[key[i] for key in keys] for i in range(len(columns))]
    sql = f"""
        WITH latest AS (
            SELECT DISTINCT ON ({partition}) a.id, a.state, a.resolved_at, a.resolved_by_id
            FROM alerts_alert a JOIN unnest({unnest}) AS k({", ".join(columns)}) ON {join}
            WHERE a.kind = %s
            ORDER BY {partition}, a.id DESC
        )
        UPDATE alerts_alert a SET state = %s, reopened = a.reopened + 1, resolved_at = NULL,
            resolved_by_id = NULL, resolve_note = '', acknowledged_at = NULL,
            acknowledged_by_id = NULL, acknowledge_note = '', cleared_at = NULL,
            last_triggered_at = GREATEST(a.last_triggered_at, %s::timestamptz),
            count = LEAST(a.count::bigint + %s, %s), updated_at = %s
        FROM latest l
        WHERE a.id = l.id AND a.state = %s AND l.resolved_by_id IS NULL AND l.resolved_at >= %s
        RETURNING a.id, a.reopened
    """  # noqa: S608 (column names from the constant above)
    # A breach (or a maintenance upsert) adds its own count afterwards.
    count_step = 1 if kind == AlertKind.OFFLINE else 0
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                sql,
                [
                    *params,
                    kind,
                    AlertState.OPEN,
                    at,
                    count_step,
                    COUNT_MAX,
                    timezone.now(),
                    AlertState.RESOLVED,
                    timezone.now() - settings.ALERT_FLAP_WINDOW,
                ],
            )
            return dict(cursor.fetchall())
    except IntegrityError:
        log.info("a concurrent alert beat the reopening of a flapping %s alert", kind)
        return {}


def _reopened_events(reopened: dict[int, int], at: datetime) -> list[AlertEvent]:
    window = duration_in_words(settings.ALERT_FLAP_WINDOW)
    events = []
    for alert_id, times in reopened.items():
        note = f"Back within {window} of resolving; reopened {_plural(times, 'time')}."
        if times > settings.ALERT_FLAP_QUIET:
            note += " Flapping: no notifications until it stays resolved."
        events.append(AlertEvent(alert_id=alert_id, kind=AlertEventKind.REOPENED, at=at, note=note))
    return events


def _still_notifying(reopened: dict[int, int]) -> list[int]:
    """The alerts among `reopened` that have not flapped past ALERT_FLAP_QUIET."""
    return [pk for pk, times in reopened.items() if times <= settings.ALERT_FLAP_QUIET]


def _resolved_by_themselves(rows: list[tuple[int, int, int | None, int]], note: str) -> None:
    """Follow-up of an automatic resolution: rows are (alert id, reopened, rule id, device id).
    Events are stamped with the wall clock: the history says when things happened here."""
    if not rows:
        return
    at = timezone.now()
    AlertEvent.objects.bulk_create(
        AlertEvent(alert_id=row[0], kind=AlertEventKind.AUTO_RESOLVED, at=at, note=note)
        for row in rows
    )
    _reset_rule_states([(rule_id, device_id) for _, _, rule_id, device_id in rows if rule_id])
    _notify(_still_notifying({row[0]: row[1] for row in rows}), RESOLVED)
    _push_alerts([row[0] for row in rows])


def _reset_rule_states(pairs: list[tuple[int, int]]) -> None:
    """The rule no longer fires on these devices: the next breach opens an alert again."""
    if not pairs:
        return
    pairs = sorted(set(pairs))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE rules_rulestate s SET firing = false, clear_since = NULL, updated_at = %s
            FROM unnest(%s::bigint[], %s::bigint[]) AS v(rule_id, device_id)
            WHERE s.rule_id = v.rule_id AND s.device_id = v.device_id
            """,
            [timezone.now(), [rule for rule, _ in pairs], [device for _, device in pairs]],
        )


def _notify(alert_ids: list[int], reason: str) -> None:
    """Queue the alerts' notifications once the transaction commits."""
    if not alert_ids:
        return
    ids = sorted(set(alert_ids))

    def queue() -> None:
        from alerts.notifications import queue_notifications_many

        try:
            queue_notifications_many(ids, reason)
        except Exception:
            log.exception(
                "queueing the %s notifications of %d alerts failed; one by one", reason, len(ids)
            )
            for alert_id in ids:
                try:
                    queue_notifications_many([alert_id], reason)
                except Exception:
                    log.exception(
                        "queueing the %s notifications of alert %s failed", reason, alert_id
                    )

    transaction.on_commit(queue, robust=True)


def _push_alerts(alert_ids: Iterable[int]) -> None:
    """One `alerts.changed` live event per tenant with the alerts' current state (on commit)."""
    ids = sorted(set(alert_ids))
    if not ids:
        return
    by_tenant: dict[int, list[dict]] = defaultdict(list)
    # Rows, not model instances: a storm pushes hundreds of alerts a batch, and instantiating
    # each with its device and users (and their init signals) cost more than the query.
    for row in Alert.objects.filter(pk__in=ids).order_by("pk").values(*PAYLOAD_FIELDS):
        by_tenant[row["tenant_id"]].append(_row_payload(row))
    live.push_many(
        (tenant_id, "alerts.changed", {"alerts": payloads[start : start + PUSH_CHUNK]})
        for tenant_id, payloads in by_tenant.items()
        for start in range(0, len(payloads), PUSH_CHUNK)
    )


def _push_counts(rows: list[tuple]) -> None:
    """An `alerts.counted` live event per tenant for alerts that only counted more breaking
    readings: id, count, last triggered and state from the upsert itself, no query (a storm
    of repeats every batch stays cheap)."""
    by_tenant: dict[int, list[dict]] = defaultdict(list)
    for alert_id, _, tenant_id, count, last_triggered_at, state in rows:
        by_tenant[tenant_id].append(
            {
                "id": alert_id,
                "count": count,
                "last_triggered_at": last_triggered_at.isoformat(),
                "state": state,
            }
        )
    live.push_many(
        (tenant_id, "alerts.counted", {"alerts": payloads[start : start + PUSH_CHUNK]})
        for tenant_id, payloads in by_tenant.items()
        for start in range(0, len(payloads), PUSH_CHUNK)
    )


def _push_device_status(device_ids: Iterable[int]) -> None:
    by_tenant: dict[int, list[dict]] = defaultdict(list)
    for tenant_id, key, status, last_seen in Device.objects.filter(pk__in=device_ids).values_list(
        "tenant_id", "key", "status", "last_seen"
    ):
        by_tenant[tenant_id].append(
            {
                "key": key,
                "status": status,
                "last_seen": last_seen.isoformat() if last_seen else None,
            }
        )
    live.push_many(
        (tenant_id, "devices.status", {"devices": devices})
        for tenant_id, devices in by_tenant.items()
    )


def _cannot_acknowledge(alert: Alert) -> str:
    if alert.state == AlertState.ACKNOWLEDGED:
        return (
            f"Alert #{alert.pk} was already acknowledged"
            f"{_by_whom(alert.acknowledged_by, alert.acknowledged_at)}: nothing to do."
        )
    return (
        f"Alert #{alert.pk} is resolved{_by_whom(alert.resolved_by, alert.resolved_at)} "
        "and can no longer be acknowledged."
    )


def _by_whom(user: Any, at: datetime | None) -> str:
    who = f" by {user.username}" if user else ""
    when = f" at {timezone.localtime(at):%Y-%m-%d %H:%M}" if at else ""
    return who + when


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _truncate(title: str) -> str:
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"
