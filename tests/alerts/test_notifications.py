"""Who is notified when an alert opens, a device goes offline or an alert resolves; email;
throttling; channels in the API. Shared builders for the other notification tests live here."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from alerts.models import (
    Alert,
    AlertKind,
    AlertState,
    ChannelKind,
    Notification,
    NotificationChannel,
    NotificationStatus,
    RuleChannel,
)
from alerts.notifications import (
    deliver_notification,
    queue_notifications,
    queue_notifications_many,
    send_test_notification,
)
from alerts.services import Breach, record_breaches
from alerts.transports import TransportError
from alerts.transports.email import subject
from devices.models import Device, Tenant
from iotfleet.celery import app as celery_app
from rules.models import Rule, RuleKind, Severity
from tests.api.clients import client_as
from tests.factories import make_device
from tests.servers import free_port

# --- Builders -----------------------------------------------------------------------------------


def make_rule(tenant: Tenant, device_type, name: str = "Freezer too warm", **fields) -> Rule:
    defaults = {
        "kind": RuleKind.THRESHOLD,
        "condition": "temperature > -5",
        "severity": Severity.CRITICAL,
        "escalate_after": timedelta(minutes=15),
    }
    return Rule.objects.create(
        tenant=tenant, name=name, device_type=device_type, **{**defaults, **fields}
    )


def make_channel(tenant: Tenant, name: str, kind: str = ChannelKind.EMAIL, **fields):
    defaults = {
        ChannelKind.EMAIL: {"email_to": f"{name.lower().replace(' ', '-')}@example.com"},
        ChannelKind.WEBHOOK: {
            "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "s3cret-for-the-tests-0001",
        },
        ChannelKind.MQTT_COMMAND: {"command": "alarm_on", "command_params": {"level": 2}},
    }[kind]
    return NotificationChannel.objects.create(
        tenant=tenant, name=name, kind=kind, **{**defaults, **fields}
    )


def attach(rule: Rule, *channels: NotificationChannel) -> None:
    for position, channel in enumerate(channels):
        RuleChannel.objects.create(rule=rule, channel=channel, position=position)


def open_alert(rule: Rule, device: Device, at: datetime | None = None, **fields) -> Alert:
    at = at or timezone.now()
    values = {
        "tenant": rule.tenant,
        "rule": rule,
        "device": device,
        "severity": rule.severity,
        "title": f"{rule.name} on {device.name}",
        "values": {"temperature": 2.5},
        "first_triggered_at": at,
        "last_triggered_at": at,
        **fields,
    }
    return Alert.objects.create(**values)


def offline_alert(device: Device, **fields) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        tenant=device.tenant,
        kind=AlertKind.OFFLINE,
        device=device,
        title=f"{device.name} is offline",
        first_triggered_at=now,
        last_triggered_at=now,
        **fields,
    )


def channel_names(notifications) -> list[str]:
    return sorted(n.channel.name for n in notifications)


@pytest.fixture
def tasks_in_process():
    """Queued Celery tasks run at once in this process (the worker tests use a real worker)."""
    before = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = before


@pytest.fixture
def emails(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def freezer_rule(acme, acme_freezer_type):
    return make_rule(acme, acme_freezer_type)


def notify(alert: Alert, reason: str, capture) -> list[Notification]:
    """queue_notifications as alerts/services.py calls it, with the deliveries it queues run."""
    with capture(execute=True):
        ids = queue_notifications(alert.pk, reason)
    return list(Notification.objects.filter(pk__in=ids).select_related("channel"))


# --- Who is notified ----------------------------------------------------------------------------


def test_an_opening_alert_notifies_the_rules_first_channel_only(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    attach(freezer_rule, make_channel(acme, "Shift lead"), make_channel(acme, "Manager"))
    alert = open_alert(freezer_rule, acme_device)

    sent = notify(alert, "opened", django_capture_on_commit_callbacks)

    assert channel_names(sent) == ["Shift lead"]
    assert [n.status for n in sent] == [NotificationStatus.SENT]
    assert [m.to for m in emails] == [["shift-lead@example.com"]]
    alert.refresh_from_db()
    assert alert.escalation_level == 0
    assert alert.notified_at is not None


def test_one_email_goes_out_per_alert_opening(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    attach(freezer_rule, make_channel(acme, "Shift lead", email_to="a@example.com, b@example.com"))
    alert = open_alert(freezer_rule, acme_device, count=1000, values={"temperature": 3.25})

    notify(alert, "opened", django_capture_on_commit_callbacks)

    assert len(emails) == 1
    message = emails[0]
    assert message.subject == f"[IoTFleet] Critical {alert.title}"
    assert message.to == ["a@example.com", "b@example.com"]
    assert "Freezer 1 (acme-freezer-1)" in message.body
    assert "Freezer too warm" in message.body
    assert "temperature = 3.25" in message.body
    assert "1000 breaking reading(s)" in message.body
    assert "State:     Open" in message.body
    assert message.extra_headers["X-IoTFleet-Delivery"] == str(alert.notifications.get().pk)


def test_the_email_gives_the_alerts_admin_path(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    attach(freezer_rule, make_channel(acme, "Shift lead"))
    alert = open_alert(freezer_rule, acme_device)
    notify(alert, "opened", django_capture_on_commit_callbacks)
    path = reverse("admin:alerts_alert_change", args=[alert.pk])
    assert f"Open it in the IoTFleet admin: {path}" in emails[0].body


def test_a_thousand_breaking_readings_send_one_email(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    """Through alerts/services.py as rule evaluation calls it: ten batches of 100 readings."""
    attach(freezer_rule, make_channel(acme, "Shift lead"))
    start = timezone.now() - timedelta(minutes=10)
    for batch in range(10):
        at = start + timedelta(seconds=batch)
        breach = Breach(
            rule_id=freezer_rule.pk,
            device_id=acme_device.pk,
            tenant_id=acme.pk,
            first_at=at,
            last_at=at,
            count=100,
            values={"temperature": 3.0},
        )
        with django_capture_on_commit_callbacks(execute=True):
            record_breaches([breach])

    alert = Alert.objects.get()
    assert alert.count == 1000
    assert len(emails) == 1
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_a_disabled_first_channel_is_skipped_for_the_next_one(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    attach(
        freezer_rule,
        make_channel(acme, "Shift lead", is_enabled=False),
        make_channel(acme, "Manager"),
    )
    alert = open_alert(freezer_rule, acme_device)

    sent = notify(alert, "opened", django_capture_on_commit_callbacks)

    assert channel_names(sent) == ["Manager"]
    alert.refresh_from_db()
    assert alert.escalation_level == 1


def test_a_rule_without_channels_notifies_nobody(
    acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    alert = open_alert(freezer_rule, acme_device)
    assert notify(alert, "opened", django_capture_on_commit_callbacks) == []
    assert emails == []


def test_an_offline_device_notifies_every_enabled_offline_channel_of_its_tenant(
    acme, globex, acme_device, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    make_channel(acme, "Night desk", for_offline=True)
    make_channel(acme, "Facilities", for_offline=True)
    make_channel(acme, "Paused", for_offline=True, is_enabled=False)
    make_channel(acme, "Rules only")
    make_channel(globex, "Globex desk", for_offline=True)

    sent = notify(offline_alert(acme_device), "offline", django_capture_on_commit_callbacks)

    assert channel_names(sent) == ["Facilities", "Night desk"]
    assert sorted(m.to[0] for m in emails) == ["facilities@example.com", "night-desk@example.com"]


def test_a_resolved_alert_tells_the_channels_that_heard_of_it_and_nobody_else(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    lead, manager = make_channel(acme, "Shift lead"), make_channel(acme, "Manager")
    siren = make_channel(acme, "Siren", ChannelKind.MQTT_COMMAND)
    attach(freezer_rule, lead, manager)
    alert = open_alert(freezer_rule, acme_device)
    Notification.objects.create(alert=alert, channel=siren, reason="escalated", status="sent")
    notify(alert, "opened", django_capture_on_commit_callbacks)
    Alert.objects.filter(pk=alert.pk).update(state=AlertState.RESOLVED)
    emails.clear()

    sent = notify(alert, "resolved", django_capture_on_commit_callbacks)

    # The manager never heard of it; the siren's command is not repeated on resolve.
    assert channel_names(sent) == ["Shift lead"]
    assert [m.subject for m in emails] == [f"[IoTFleet] Critical {alert.title} (resolved)"]
    assert "This alert is resolved." in emails[0].body


def test_a_storm_of_openings_is_queued_together_each_alert_to_its_rules_channels(
    acme, acme_freezer_type, emails, tasks_in_process, django_capture_on_commit_callbacks,
    django_assert_max_num_queries,
):  # fmt: skip
    warm, door = make_rule(acme, acme_freezer_type), make_rule(acme, acme_freezer_type, "Door")
    attach(warm, make_channel(acme, "Shift lead"))
    quiet = make_rule(acme, acme_freezer_type, "Logged only")  # no channel
    freezers = [make_device(acme, f"f-{n}", device_type=acme_freezer_type) for n in range(30)]
    storm = [open_alert(rule, device) for rule in (warm, door, quiet) for device in freezers]

    with (
        django_capture_on_commit_callbacks() as deliveries,
        django_assert_max_num_queries(6 + 3 * len(freezers)),  # each delivery: lock, count, row
    ):
        queued = queue_notifications_many([alert.pk for alert in storm], "opened")
    for deliver in deliveries:
        deliver()

    assert set(queued) == {alert.pk for alert in storm}
    assert sum(len(ids) for ids in queued.values()) == len(freezers)  # warm's alerts only
    assert len(emails) == len(freezers)
    assert Alert.objects.filter(notified_at__isnull=True).count() == 0
    assert queued == {
        alert.pk: list(Notification.objects.filter(alert=alert).values_list("pk", flat=True))
        for alert in storm
    }


def test_an_unknown_reason_is_a_programming_error(acme_device, freezer_rule):
    alert = open_alert(freezer_rule, acme_device)
    with pytest.raises(ValueError, match="unknown reason"):
        queue_notifications(alert.pk, "exploded")


def test_deliveries_are_queued_only_when_the_transaction_commits(
    acme, acme_device, freezer_rule, django_capture_on_commit_callbacks
):
    attach(freezer_rule, make_channel(acme, "Shift lead"))
    alert = open_alert(freezer_rule, acme_device)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        (notification_id,) = queue_notifications(alert.pk, "opened")

    assert Notification.objects.get(pk=notification_id).status == NotificationStatus.PENDING
    assert len(callbacks) == 1


# --- Throttling ---------------------------------------------------------------------------------


def test_one_device_breaking_50_times_in_an_hour_gets_10_notifications_and_no_more(
    acme,
    acme_device,
    acme_freezer_type,
    freezer_rule,
    emails,
    tasks_in_process,
    django_capture_on_commit_callbacks,
):
    pager = make_channel(acme, "Pager", max_per_hour=10)
    attach(freezer_rule, pager)
    neighbour = make_device(acme, "acme-freezer-2", device_type=acme_freezer_type)

    for _ in range(50):
        alert = open_alert(freezer_rule, acme_device)
        notify(alert, "opened", django_capture_on_commit_callbacks)
        Alert.objects.filter(pk=alert.pk).update(state=AlertState.RESOLVED)
    neighbours = [open_alert(freezer_rule, neighbour)]
    notify(neighbours[0], "opened", django_capture_on_commit_callbacks)

    mine = Notification.objects.filter(channel=pager, alert__device=acme_device)
    assert mine.filter(status=NotificationStatus.SENT).count() == 10
    assert mine.filter(status=NotificationStatus.THROTTLED).count() == 40
    throttled = mine.filter(status=NotificationStatus.THROTTLED).first()
    assert "the channel allows 10" in throttled.last_error
    assert throttled.attempts == 0
    theirs = Notification.objects.filter(channel=pager, alert__device=neighbour)
    assert [n.status for n in theirs] == [NotificationStatus.SENT]
    assert len(emails) == 11


def test_notifications_older_than_an_hour_do_not_count_against_the_limit(
    acme, acme_device, freezer_rule, emails, tasks_in_process, django_capture_on_commit_callbacks
):
    pager = make_channel(acme, "Pager", max_per_hour=1)
    attach(freezer_rule, pager)
    old = open_alert(freezer_rule, acme_device, state=AlertState.RESOLVED)
    earlier = Notification.objects.create(alert=old, channel=pager, reason="opened", status="sent")
    Notification.objects.filter(pk=earlier.pk).update(
        created_at=timezone.now() - timedelta(minutes=61)
    )

    alert = open_alert(freezer_rule, acme_device)
    sent = notify(alert, "opened", django_capture_on_commit_callbacks)

    assert [n.status for n in sent] == [NotificationStatus.SENT]


# --- Email delivery -----------------------------------------------------------------------------


def test_a_mail_server_that_does_not_answer_leaves_the_delivery_retrying_with_the_reason(
    acme, acme_device, freezer_rule, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2
    attach(freezer_rule, make_channel(acme, "Shift lead"))
    with django_capture_on_commit_callbacks(execute=False):
        (notification_id,) = queue_notifications(open_alert(freezer_rule, acme_device).pk, "opened")

    delivery = deliver_notification(notification_id)

    notification = Notification.objects.get(pk=notification_id)
    assert notification.status == NotificationStatus.RETRYING
    assert notification.attempts == 1
    assert "check EMAIL_URL" in notification.last_error
    assert delivery.retry_in is not None


def test_the_subject_is_one_line_even_when_the_title_is_not():
    alert = Alert(severity=Severity.WARNING, title="Door\nopen\r\ntoo long")
    assert subject(alert, "reminder") == "[IoTFleet] Warning Door open too long (reminder)"


def test_a_test_email_goes_to_the_channels_recipients(acme, emails):
    send_test_notification(make_channel(acme, "Shift lead"))
    assert [m.to for m in emails] == [["shift-lead@example.com"]]
    assert "(test)" in emails[0].subject
    assert Notification.objects.count() == 0


def test_a_command_channel_cannot_be_tested_without_an_alert(acme):
    with pytest.raises(TransportError, match="cannot be tested without one"):
        send_test_notification(make_channel(acme, "Siren", ChannelKind.MQTT_COMMAND))


# --- Channels in the API ------------------------------------------------------------------------

CHANNELS_URL = "/api/v1/notification-channels/"


def test_the_webhook_secret_is_write_only(alice, acme):
    client = client_as(alice)
    created = client.post(
        CHANNELS_URL,
        {
            "name": "Hook",
            "kind": "webhook",
            "webhook_url": "https://ops.example.com/hook",
            "webhook_secret": "a-very-long-secret-123",
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    assert "webhook_secret" not in created.data
    assert created.data["has_webhook_secret"] is True
    listed = client.get(CHANNELS_URL)
    assert "a-very-long-secret-123" not in listed.content.decode()

    renamed = client.patch(
        f"{CHANNELS_URL}{created.data['id']}/", {"name": "Ops hook"}, format="json"
    )
    assert renamed.status_code == 200, renamed.data
    channel = NotificationChannel.objects.get(pk=created.data["id"])
    assert (channel.name, channel.webhook_secret) == ("Ops hook", "a-very-long-secret-123")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"kind": "webhook", "webhook_url": "ftp://ops.example.com/x"}, "webhook_url", "http://"),
        ({"kind": "webhook", "webhook_url": "file:///etc/passwd"}, "webhook_url", "Enter a valid"),
        ({"kind": "webhook", "webhook_url": "https://ops.example.com"}, "webhook_secret", "secret"),
        (
            {"kind": "webhook", "webhook_url": "https://ops.example.com", "webhook_secret": "x"},
            "webhook_secret",
            "at least 16",
        ),
        ({"kind": "email", "email_to": ""}, "email_to", "at least one recipient"),
        ({"kind": "email", "email_to": "ops@example.com, not-an-address"}, "email_to", "not-an"),
        ({"kind": "mqtt_command", "command": ""}, "command", "Name the command"),
        ({"kind": "mqtt_command", "command": "fleet/#"}, "command", "may not hold"),
        (
            {"kind": "mqtt_command", "command": "alarm_on", "command_params": [1, 2]},
            "command_params",
            "JSON object",
        ),
        ({"kind": "carrier_pigeon"}, "kind", "not a valid choice"),
    ],
)
def test_a_channel_is_checked_for_its_kind(alice, acme, body, field, words):
    response = client_as(alice).post(CHANNELS_URL, {"name": "Bad", **body}, format="json")
    assert response.status_code == 400
    assert words in str(response.data[field])
    assert not NotificationChannel.objects.exists()


def test_a_channel_name_is_unique_per_tenant_with_a_clear_message(alice, acme):
    make_channel(acme, "Shift lead")
    body = {"name": "Shift lead", "kind": "email", "email_to": "x@example.com"}
    response = client_as(alice).post(CHANNELS_URL, body, format="json")
    assert response.status_code == 400
    assert "already has a notification channel named" in str(response.data["name"])


def test_carol_cannot_test_acmes_channel(carol, acme, emails):
    channel = make_channel(acme, "Shift lead")
    response = client_as(carol).post(f"{CHANNELS_URL}{channel.pk}/test/")
    assert response.status_code == 404
    assert emails == []


def test_bob_the_viewer_cannot_test_a_channel(bob, acme, emails):
    channel = make_channel(acme, "Shift lead")
    response = client_as(bob).post(f"{CHANNELS_URL}{channel.pk}/test/")
    assert response.status_code == 403
    assert emails == []


def test_alice_tests_a_channel_and_hears_why_it_failed(alice, acme, emails):
    ok = make_channel(acme, "Shift lead")
    broken = make_channel(
        acme, "Hook", ChannelKind.WEBHOOK, webhook_url=f"http://127.0.0.1:{free_port()}/x"
    )
    client = client_as(alice)
    assert client.post(f"{CHANNELS_URL}{ok.pk}/test/").status_code == 200
    failed = client.post(f"{CHANNELS_URL}{broken.pk}/test/")
    assert failed.status_code == 502
    assert "Could not reach" in failed.data["detail"]
    assert len(emails) == 1
