"""Escalation to the next channel of an unacknowledged alert, and reminders until someone
acknowledges it. `now` is passed explicitly: the beat tasks pass the wall clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import AlertEvent, AlertEventKind, AlertKind, AlertState, Notification
from alerts.notifications import escalate_alerts, escalate_task, send_reminders, send_reminders_task
from tests.alerts import test_notifications as shared
from tests.alerts.test_notifications import (
    attach,
    make_channel,
    make_rule,
    notify,
    offline_alert,
    open_alert,
)

# Fixtures of the notification tests.
emails = shared.emails
tasks_in_process = shared.tasks_in_process

MINUTE = timedelta(minutes=1)


@pytest.fixture
def opened(
    acme,
    acme_freezer_type,
    acme_device,
    emails,
    tasks_in_process,
    django_capture_on_commit_callbacks,
):
    """An alert of a rule with two channels (escalating after 15 min), opened and notified
    on the first channel; returns (alert, time it was notified)."""
    rule = make_rule(acme, acme_freezer_type, escalate_after=15 * MINUTE)
    attach(rule, make_channel(acme, "Shift lead"), make_channel(acme, "Manager"))
    alert = open_alert(rule, acme_device)
    notify(alert, "opened", django_capture_on_commit_callbacks)
    alert.refresh_from_db()
    return alert, alert.notified_at


def notified(alert) -> list[tuple[str, str]]:
    rows = Notification.objects.filter(alert=alert).order_by("created_at", "pk")
    return [(n.channel.name, n.reason) for n in rows.select_related("channel")]


def events(alert, kind: str) -> list[AlertEvent]:
    return list(AlertEvent.objects.filter(alert=alert, kind=kind))


# --- Escalation ---------------------------------------------------------------------------------


def test_an_unacknowledged_alert_escalates_to_the_next_channel_exactly_once(
    opened, emails, django_capture_on_commit_callbacks
):
    alert, at = opened
    later = at + 16 * MINUTE

    with django_capture_on_commit_callbacks(execute=True):
        assert escalate_alerts(later) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert escalate_alerts(later + MINUTE) == 0  # no third channel

    assert notified(alert) == [("Shift lead", "opened"), ("Manager", "escalated")]
    assert [m.to for m in emails] == [["shift-lead@example.com"], ["manager@example.com"]]
    assert "(escalated)" in emails[1].subject
    alert.refresh_from_db()
    assert (alert.escalation_level, alert.notified_at) == (1, later)
    (event,) = events(alert, AlertEventKind.ESCALATED)
    assert event.at == later
    assert "notified Manager (level 2)" in event.note


def test_escalation_running_twice_at_the_same_moment_notifies_once(
    opened, django_capture_on_commit_callbacks
):
    alert, at = opened
    with django_capture_on_commit_callbacks(execute=True):
        results = [escalate_alerts(at + 16 * MINUTE), escalate_alerts(at + 16 * MINUTE)]
    assert results == [1, 0]
    assert notified(alert).count(("Manager", "escalated")) == 1


def test_nothing_escalates_before_escalate_after_has_passed(opened):
    alert, at = opened
    assert escalate_alerts(at + 14 * MINUTE) == 0
    assert notified(alert) == [("Shift lead", "opened")]
    assert events(alert, AlertEventKind.ESCALATED) == []


def test_an_acknowledged_alert_never_escalates(opened, alice):
    alert, at = opened
    type(alert).objects.filter(pk=alert.pk).update(
        state=AlertState.ACKNOWLEDGED, acknowledged_by=alice, acknowledged_at=at + MINUTE
    )
    assert escalate_alerts(at + 60 * MINUTE) == 0
    assert notified(alert) == [("Shift lead", "opened")]


def test_a_resolved_alert_never_escalates(opened):
    alert, at = opened
    type(alert).objects.filter(pk=alert.pk).update(state=AlertState.RESOLVED)
    assert escalate_alerts(at + 60 * MINUTE) == 0


def test_escalation_skips_a_disabled_channel(
    acme, acme_freezer_type, acme_device, tasks_in_process, django_capture_on_commit_callbacks
):
    rule = make_rule(acme, acme_freezer_type, escalate_after=5 * MINUTE)
    attach(
        rule,
        make_channel(acme, "Shift lead"),
        make_channel(acme, "On leave", is_enabled=False),
        make_channel(acme, "Director"),
    )
    alert = open_alert(rule, acme_device)
    notify(alert, "opened", django_capture_on_commit_callbacks)
    alert.refresh_from_db()

    with django_capture_on_commit_callbacks(execute=True):
        escalate_alerts(alert.notified_at + 6 * MINUTE)

    assert notified(alert) == [("Shift lead", "opened"), ("Director", "escalated")]
    alert.refresh_from_db()
    assert alert.escalation_level == 2


def test_a_three_channel_rule_escalates_one_level_per_period(
    acme, acme_freezer_type, acme_device, tasks_in_process, django_capture_on_commit_callbacks
):
    rule = make_rule(acme, acme_freezer_type, escalate_after=10 * MINUTE)
    attach(rule, *(make_channel(acme, name) for name in ("One", "Two", "Three")))
    alert = open_alert(rule, acme_device)
    notify(alert, "opened", django_capture_on_commit_callbacks)
    alert.refresh_from_db()
    start = alert.notified_at

    with django_capture_on_commit_callbacks(execute=True):
        counts = [escalate_alerts(start + n * MINUTE) for n in (11, 15, 22)]

    assert counts == [1, 0, 1]
    assert [name for name, _ in notified(alert)] == ["One", "Two", "Three"]


def test_offline_alerts_do_not_escalate(acme, acme_device):
    alert = offline_alert(acme_device, notified_at=timezone.now() - timedelta(days=1))
    assert alert.kind == AlertKind.OFFLINE
    assert escalate_alerts(timezone.now()) == 0


def test_the_beat_task_escalates_with_the_wall_clock(opened):
    alert, at = opened
    type(alert).objects.filter(pk=alert.pk).update(notified_at=at - 20 * MINUTE)
    assert escalate_task.run() == 1


# --- Reminders ----------------------------------------------------------------------------------


@pytest.fixture
def reminding(opened):
    alert, at = opened
    alert.rule.remind_every = 10 * MINUTE
    alert.rule.escalate_after = timedelta(hours=24)
    alert.rule.save()
    return alert, at


def test_an_open_alert_reminds_its_channel_every_period_until_acknowledged(
    reminding, alice, emails, django_capture_on_commit_callbacks
):
    alert, at = reminding
    with django_capture_on_commit_callbacks(execute=True):
        counts = [send_reminders(at + n * MINUTE) for n in (9, 11, 15, 22)]
    assert counts == [0, 1, 0, 1]
    assert notified(alert) == [("Shift lead", "opened")] + [("Shift lead", "reminder")] * 2
    assert "(reminder)" in emails[-1].subject
    assert [e.at for e in events(alert, AlertEventKind.REMINDED)] == [
        at + 11 * MINUTE,
        at + 22 * MINUTE,
    ]

    type(alert).objects.filter(pk=alert.pk).update(
        state=AlertState.ACKNOWLEDGED, acknowledged_by=alice
    )
    assert send_reminders(at + 60 * MINUTE) == 0
    assert len(notified(alert)) == 3


def test_reminders_go_to_the_channel_the_alert_escalated_to(
    reminding, django_capture_on_commit_callbacks
):
    alert, at = reminding
    alert.rule.escalate_after = 5 * MINUTE
    alert.rule.save()
    with django_capture_on_commit_callbacks(execute=True):
        escalate_alerts(at + 6 * MINUTE)
        assert send_reminders(at + 12 * MINUTE) == 0  # ten minutes from the escalation
        assert send_reminders(at + 17 * MINUTE) == 1
    assert notified(alert)[-1] == ("Manager", "reminder")


def test_a_reminder_is_sent_once_even_when_two_beats_overlap(
    reminding, django_capture_on_commit_callbacks
):
    alert, at = reminding
    with django_capture_on_commit_callbacks(execute=True):
        assert [send_reminders(at + 11 * MINUTE), send_reminders(at + 11 * MINUTE)] == [1, 0]
    assert notified(alert).count(("Shift lead", "reminder")) == 1


def test_a_rule_without_remind_every_never_reminds(opened):
    alert, at = opened
    assert send_reminders(at + timedelta(days=2)) == 0
    assert events(alert, AlertEventKind.REMINDED) == []


def test_the_reminder_beat_task_uses_the_wall_clock(reminding):
    alert, at = reminding
    type(alert).objects.filter(pk=alert.pk).update(notified_at=at - 11 * MINUTE)
    assert send_reminders_task.run() == 1


def test_channels_sharing_a_position_are_one_step_notified_together(
    acme,
    acme_freezer_type,
    acme_device,
    emails,
    tasks_in_process,
    django_capture_on_commit_callbacks,
):
    rule = make_rule(acme, acme_freezer_type, escalate_after=15 * MINUTE)
    on_call, team = make_channel(acme, "On call"), make_channel(acme, "Team list")
    manager = make_channel(acme, "Manager")
    rule.rule_channels.create(channel=on_call, position=0)
    rule.rule_channels.create(channel=team, position=0)
    rule.rule_channels.create(channel=manager, position=1)
    alert = open_alert(rule, acme_device)
    notify(alert, "opened", django_capture_on_commit_callbacks)
    alert.refresh_from_db()

    assert sorted(notified(alert)) == [("On call", "opened"), ("Team list", "opened")]
    with django_capture_on_commit_callbacks(execute=True):
        assert escalate_alerts(alert.notified_at + 16 * MINUTE) == 1
    assert notified(alert)[-1] == ("Manager", "escalated")
    alert.refresh_from_db()
    assert alert.escalation_level == 1
