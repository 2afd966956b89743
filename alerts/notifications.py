"""Who hears about an alert, when, and how deliveries are sent and retried.

- `queue_notifications(alert_id, reason)`: called by alerts/services.py on commit when an alert
  opens ("opened"), a device goes offline ("offline") or an alert resolves ("resolved"). Each
  delivery is a `Notification` row (pending) and a `deliver_notification_task` queued on commit.
- `escalate_alerts(now)` and `send_reminders(now)`: beat tasks every minute; an open alert not
  acknowledged within its rule's `escalate_after` notifies the rule's next step, and one with
  `remind_every` notifies its current step again until someone acknowledges it. A step is the
  rule's channels sharing one position (RuleChannel.position): email and webhook at position 0
  are both told when the alert opens, the on-call manager at position 1 after escalate_after.
- Throttling happens when a delivery is queued: a channel that already had `max_per_hour`
  notifications for the same device in the last hour records the new one as throttled and sends
  nothing, so one flapping device cannot flood a pager.
- `deliver_notification(notification_id)`: sends once, under a row lock (a second worker holding
  a redelivered copy of the task skips it); a transport error leaves the row retrying and the
  task tries again after BACKOFF_SECONDS · 2^(attempt-1) (±20 % jitter), up to
  settings.WEBHOOK_MAX_ATTEMPTS, then failed. IOTFLEET_NOTIFY_BACKOFF_SECONDS sets the base
  (default 2 s); tests shrink it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from alerts.models import (
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertKind,
    AlertState,
    ChannelKind,
    Notification,
    NotificationChannel,
    NotificationStatus,
    RuleChannel,
)
from alerts.transports import TransportError, send
from iotfleet.live import push_to_tenant

log = logging.getLogger(__name__)

REASONS = {"opened", "offline", "maintenance", "resolved", "escalated", "reminder"}
BACKOFF_SECONDS = float(os.environ.get("IOTFLEET_NOTIFY_BACKOFF_SECONDS", "2"))
BACKOFF_MAX_SECONDS = 600.0
THROTTLE_WINDOW = timedelta(hours=1)
# A command is an action on the device, not news about the alert: "resolved" does not repeat it.
NOT_ON_RESOLVE = {ChannelKind.MQTT_COMMAND}


# --- Queueing -----------------------------------------------------------------------------------


def queue_notifications(alert_id: int, reason: str) -> list[int]:
    """Record and queue the deliveries `reason` calls for; returns the new Notification ids
    (throttled ones included). See the module docstring for who gets what."""
    return queue_notifications_many([alert_id], reason).get(alert_id, [])


def queue_notifications_many(alert_ids: Iterable[int], reason: str) -> dict[int, list[int]]:
    """queue_notifications for several alerts at once, as alerts/services.py calls it on commit:
    a storm opens hundreds of alerts in one batch, and three queries an alert (lock it, read its
    rule's steps, mark it notified) cost more than evaluating the rules. Here a few queries
    serve them all; then each alert's deliveries, for those whose rule or tenant has channels.
    Returns alert id -> the new Notification ids."""
    if reason not in {"opened", "offline", "maintenance", "resolved"}:
        raise ValueError(f"queue_notifications: unknown reason {reason!r}")
    ids = sorted(set(alert_ids))
    if not ids:
        return {}
    now = timezone.now()
    with transaction.atomic():
        # Locked and read as rows: whole alerts (with rule and device) only for those that
        # have someone to notify, below.
        alerts = [
            _AlertKeys(*row)
            for row in Alert.objects.select_for_update()
            .filter(pk__in=ids)
            .order_by("pk")
            .values_list("pk", "rule_id", "tenant_id")
        ]
        if not alerts:
            return {}
        channels: dict[int, list[NotificationChannel]] = {}
        if reason == "opened":
            steps_of = _rule_steps_many({alert.rule_id for alert in alerts if alert.rule_id})
            levels: dict[int, list[int]] = {}
            for alert in alerts:
                steps = steps_of.get(alert.rule_id, [])
                first = _next_step(steps, 0)
                levels.setdefault(first or 0, []).append(alert.pk)
                channels[alert.pk] = [] if first is None else steps[first]
            for level, pks in levels.items():
                Alert.objects.filter(pk__in=pks).update(
                    escalation_level=level, notified_at=now, reminded_at=None
                )
        elif reason in ("offline", "maintenance"):
            Alert.objects.filter(pk__in=[alert.pk for alert in alerts]).update(
                notified_at=now, reminded_at=None
            )
            wanted = {"for_offline" if reason == "offline" else "for_maintenance": True}
            by_tenant = {
                tenant_id: list(
                    NotificationChannel.objects.filter(
                        tenant_id=tenant_id, is_enabled=True, **wanted
                    ).order_by("pk")
                )
                for tenant_id in {alert.tenant_id for alert in alerts}
            }
            channels = {alert.pk: by_tenant[alert.tenant_id] for alert in alerts}
        else:
            notified = _channels_notified_many([alert.pk for alert in alerts])
            channels = {
                alert.pk: [c for c in notified.get(alert.pk, []) if c.kind not in NOT_ON_RESOLVE]
                for alert in alerts
            }
        queued: dict[int, list[int]] = {alert.pk: [] for alert in alerts}
        if any(channels.values()):
            for alert in (
                Alert.objects.select_related("rule", "device")
                .filter(pk__in=[pk for pk, found in channels.items() if found])
                .order_by("pk")
            ):
                queued[alert.pk] = _queue(alert, channels[alert.pk], reason, now)
        return queued


class _AlertKeys(NamedTuple):
    pk: int
    rule_id: int | None
    tenant_id: int


def _rule_steps_many(rule_ids: set[int]) -> dict[int, list[list[NotificationChannel]]]:
    """rule_steps() of several rules, in one query."""
    steps: dict[int, dict[int, list[NotificationChannel]]] = {}
    rows = RuleChannel.objects.filter(rule_id__in=rule_ids).select_related("channel")
    for row in rows.order_by("rule_id", "position", "pk"):
        steps.setdefault(row.rule_id, {}).setdefault(row.position, []).append(row.channel)
    return {rule_id: list(by_position.values()) for rule_id, by_position in steps.items()}


def _channels_notified_many(alert_ids: list[int]) -> dict[int, list[NotificationChannel]]:
    """channels_notified() of several alerts, in two queries."""
    pairs = set(
        Notification.objects.filter(alert_id__in=alert_ids)
        .exclude(status=NotificationStatus.THROTTLED)
        .exclude(reason="resolved")
        .values_list("alert_id", "channel_id")
    )
    found = NotificationChannel.objects.filter(
        pk__in={channel_id for _, channel_id in pairs}, is_enabled=True
    ).order_by("pk")
    by_alert: dict[int, list[NotificationChannel]] = {}
    for channel in found:
        for alert_id in sorted(alert_id for alert_id, c in pairs if c == channel.pk):
            by_alert.setdefault(alert_id, []).append(channel)
    return by_alert


def rule_steps(alert: Alert) -> list[list[NotificationChannel]]:
    """The alert's rule's escalation steps in order (index = escalation level): the channels
    sharing a position are one step, notified together (e.g. email and webhook at once)."""
    if alert.rule_id is None:
        return []
    rows = RuleChannel.objects.filter(rule_id=alert.rule_id).select_related("channel")
    steps: dict[int, list[NotificationChannel]] = {}
    for row in rows.order_by("position", "pk"):
        steps.setdefault(row.position, []).append(row.channel)
    return list(steps.values())


def _next_step(steps: list[list[NotificationChannel]], start: int) -> int | None:
    """The first step from `start` on with an enabled channel."""
    return next((n for n in range(start, len(steps)) if any(c.is_enabled for c in steps[n])), None)


def channels_notified(alert: Alert) -> list[NotificationChannel]:
    """The enabled channels that were sent (or tried) a notice about this alert."""
    ids = (
        Notification.objects.filter(alert=alert)
        .exclude(status=NotificationStatus.THROTTLED)
        .exclude(reason="resolved")
        .values("channel_id")
    )
    return list(NotificationChannel.objects.filter(pk__in=ids, is_enabled=True).order_by("pk"))


def _queue(
    alert: Alert, channels: Iterable[NotificationChannel], reason: str, now: datetime
) -> list[int]:
    """One Notification per enabled channel, throttled or pending; pending ones are sent on
    commit. Runs inside the caller's transaction."""
    created = []
    for channel in channels:
        if not channel.is_enabled:
            continue
        # The channel row lock makes the count-then-insert of concurrent queuers take turns.
        NotificationChannel.objects.select_for_update().filter(pk=channel.pk).first()
        recent = (
            Notification.objects.filter(
                channel=channel,
                alert__device_id=alert.device_id,
                created_at__gte=now - THROTTLE_WINDOW,
            )
            .exclude(status=NotificationStatus.THROTTLED)
            .count()
        )
        throttled = recent >= channel.max_per_hour
        notification = Notification.objects.create(
            alert=alert,
            channel=channel,
            reason=reason,
            status=NotificationStatus.THROTTLED if throttled else NotificationStatus.PENDING,
            last_error=(
                f"Not sent: {recent} notifications for this device on this channel in the last "
                f"hour (the channel allows {channel.max_per_hour})."
                if throttled
                else ""
            ),
        )
        created.append(notification.pk)
        if not throttled:
            transaction.on_commit(
                lambda pk=notification.pk: deliver_notification_task.delay(pk)  # type: ignore[misc]
            )
    return created


# --- Escalation and reminders -------------------------------------------------------------------


def _unacknowledged_rule_alerts() -> Q:
    return Q(state=AlertState.OPEN, kind=AlertKind.RULE, rule__isnull=False, rule__is_enabled=True)


def escalate_alerts(now: datetime | None = None) -> int:
    """Notify the next channel of every open alert unacknowledged past its rule's
    `escalate_after` since it was last notified. Returns how many escalated."""
    now = now or timezone.now()
    due = (
        Alert.objects.filter(_unacknowledged_rule_alerts(), notified_at__isnull=False)
        .annotate(escalate_at=F("notified_at") + F("rule__escalate_after"))
        .filter(escalate_at__lte=now)
        .values_list("pk", flat=True)
    )
    return sum(escalate_alert(pk, now) for pk in due)


def escalate_alert(alert_id: int, now: datetime) -> bool:
    """Move one alert to its rule's next enabled channel; False when another worker did it
    first, the alert changed, or there is no channel left."""
    with transaction.atomic():
        alert = Alert.objects.select_related("rule", "device").filter(pk=alert_id).first()
        if alert is None or alert.state != AlertState.OPEN or alert.rule is None:
            return False
        steps = rule_steps(alert)
        old = alert.escalation_level
        new = _next_step(steps, old + 1)
        if new is None:
            return False
        won = Alert.objects.filter(pk=alert.pk, state=AlertState.OPEN, escalation_level=old).update(
            escalation_level=new, notified_at=now, reminded_at=None
        )
        if won != 1:
            return False
        channels = [c for c in steps[new] if c.is_enabled]
        AlertEvent.objects.create(
            alert=alert,
            kind=AlertEventKind.ESCALATED,
            at=now,
            note=f"Not acknowledged within {_duration(alert.rule.escalate_after)}: "
            f"notified {', '.join(c.name for c in channels)} (level {new + 1}).",
        )
        _queue(alert, channels, "escalated", now)
        _push(alert)
    return True


def send_reminders(now: datetime | None = None) -> int:
    """Notify the current channel of every open, unacknowledged alert whose rule reminds, once
    `remind_every` has passed since the last reminder (or notification). Returns how many."""
    now = now or timezone.now()
    due = (
        Alert.objects.filter(
            _unacknowledged_rule_alerts(),
            notified_at__isnull=False,
            rule__remind_every__isnull=False,
        )
        .annotate(
            remind_at=F("notified_at") + F("rule__remind_every"),
            again_at=F("reminded_at") + F("rule__remind_every"),
        )
        .filter(
            Q(reminded_at__isnull=True, remind_at__lte=now)
            | Q(reminded_at__isnull=False, again_at__lte=now)
        )
        .values_list("pk", "reminded_at")
    )
    return sum(remind_alert(pk, reminded_at, now) for pk, reminded_at in due)


def remind_alert(alert_id: int, reminded_at: datetime | None, now: datetime) -> bool:
    with transaction.atomic():
        won = Alert.objects.filter(
            pk=alert_id, state=AlertState.OPEN, reminded_at=reminded_at
        ).update(reminded_at=now)
        if won != 1:
            return False
        alert = Alert.objects.select_related("rule", "device").get(pk=alert_id)
        steps = rule_steps(alert)
        level = alert.escalation_level
        channels = [c for c in steps[level] if c.is_enabled] if level < len(steps) else []
        note = (
            f"Still not acknowledged: reminded {', '.join(c.name for c in channels)}."
            if channels
            else "Still not acknowledged; the rule has no channel to remind."
        )
        AlertEvent.objects.create(alert=alert, kind=AlertEventKind.REMINDED, at=now, note=note)
        _queue(alert, channels, "reminder", now)
        _push(alert)
    return True


def _duration(value: timedelta) -> str:
    minutes = round(value.total_seconds() / 60)
    return f"{minutes} min" if minutes < 120 else f"{value.total_seconds() / 3600:g} h"


def _push(alert: Alert) -> None:
    """Dashboards get the alert's new state (escalation level, reminder time) on commit, in the
    same `alerts.changed` event as every other change of an alert."""
    from alerts.services import alert_payload

    alert.refresh_from_db()
    push_to_tenant(alert.tenant_id, "alerts.changed", {"alerts": [alert_payload(alert)]})


# --- Delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What one attempt did: `status` afterwards, and when to try again (None: do not)."""

    status: str
    retry_in: float | None = None


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try after `attempts` failed ones: 2, 4, 8 ... ±20 %."""
    base = BACKOFF_SECONDS * 2 ** max(0, attempts - 1)
    return min(BACKOFF_MAX_SECONDS, base) * random.uniform(0.8, 1.2)


def deliver_notification(notification_id: int) -> Delivery:
    """Send one notification if it still waits to be sent; idempotent.

    The row stays locked while the transport works, so a redelivered copy of the task running
    at the same time skips it; a worker dying mid-send rolls back and the task comes again
    (acks_late): a receiver may see a delivery twice, never zero times, and dedupes on
    X-IoTFleet-Delivery.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("channel", "alert__device", "alert__rule")
            .filter(
                pk=notification_id,
                status__in=[NotificationStatus.PENDING, NotificationStatus.RETRYING],
            )
            .first()
        )
        if notification is None:
            current = Notification.objects.filter(pk=notification_id).values("status").first()
            return Delivery(status=current["status"] if current else "missing")
        notification.attempts += 1
        try:
            send(notification)
        except TransportError as error:
            notification.last_error = error.message
            notification.response_code = error.response_code
            exhausted = notification.attempts >= settings.WEBHOOK_MAX_ATTEMPTS
            notification.status = (
                NotificationStatus.FAILED if exhausted else NotificationStatus.RETRYING
            )
            log.warning(
                "notification %s to %s failed (attempt %s): %s",
                notification.pk,
                notification.channel,
                notification.attempts,
                error.message,
            )
        else:
            notification.status = NotificationStatus.SENT
            notification.sent_at = timezone.now()
            notification.last_error = ""
        notification.save(
            update_fields=["attempts", "status", "last_error", "response_code", "sent_at"]
        )
    if notification.status == NotificationStatus.RETRYING:
        return Delivery(notification.status, retry_in=retry_delay(notification.attempts))
    return Delivery(notification.status)


def retry_notifications(notification_ids: Sequence[int]) -> int:
    """Give failed deliveries a fresh round of attempts (after the receiver is fixed)."""
    with transaction.atomic():
        ids = list(
            Notification.objects.filter(
                pk__in=notification_ids, status=NotificationStatus.FAILED
            ).values_list("pk", flat=True)
        )
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.FAILED).update(
            status=NotificationStatus.PENDING, attempts=0
        )
        for pk in ids:
            transaction.on_commit(lambda pk=pk: deliver_notification_task.delay(pk))
    return len(ids)


def send_test_notification(channel: NotificationChannel) -> None:
    """Send a made-up alert through the channel now; raises TransportError when it fails.

    Nothing is stored: the test alert exists only in the message.
    """
    from devices.models import Device
    from rules.models import Severity

    now = timezone.now()
    device = Device(tenant_id=channel.tenant_id, key="test-device", name="Test device")
    alert = Alert(
        tenant_id=channel.tenant_id,
        device=device,
        severity=Severity.INFO,
        title=f"Test notification from IoTFleet to “{channel.name}”",
        values={"temperature": 21.5},
        first_triggered_at=now,
        last_triggered_at=now,
    )
    send(Notification(alert=alert, channel=channel, reason="test"))


# --- Celery tasks -------------------------------------------------------------------------------


@shared_task(name="alerts.deliver_notification", bind=True, acks_late=True, max_retries=None)
def deliver_notification_task(self, notification_id: int) -> str:  # type: ignore[no-untyped-def]
    delivery = deliver_notification(notification_id)
    if delivery.retry_in is not None:
        raise self.retry(countdown=delivery.retry_in)
    return delivery.status


@shared_task(name="alerts.escalate", acks_late=True)
def escalate_task() -> int:
    return escalate_alerts()


@shared_task(name="alerts.send_reminders", acks_late=True)
def send_reminders_task() -> int:
    return send_reminders()
