"""Channels and deliveries in the admin: tenant-scoped, a test send, the webhook secret never
shown again, failures and throttling visible, failed deliveries retried."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from alerts.models import ChannelKind, Notification, NotificationChannel, NotificationStatus
from tests.alerts import test_notifications as shared
from tests.alerts.test_notifications import make_channel, make_rule, open_alert
from tests.devices.conftest import admin_url
from tests.servers import free_port

emails = shared.emails  # fixture


def channel_form(**overrides) -> dict:
    data = {
        "name": "Ops hook",
        "kind": "webhook",
        "is_enabled": "on",
        "email_to": "",
        "webhook_url": "https://ops.example.com/hook",
        "webhook_secret": "",
        "command": "",
        "command_params": "{}",
        "max_per_hour": "10",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def deliveries(acme, globex, acme_device, globex_device, acme_freezer_type, globex_pump_type):
    """A failed and a sent delivery in Acme, a throttled one in Globex."""
    acme_hook = make_channel(acme, "Acme hook", ChannelKind.WEBHOOK)
    globex_mail = make_channel(globex, "Globex mail")
    acme_alert = open_alert(make_rule(acme, acme_freezer_type), acme_device)
    globex_alert = open_alert(make_rule(globex, globex_pump_type), globex_device)
    failed = Notification.objects.create(
        alert=acme_alert,
        channel=acme_hook,
        reason="opened",
        status=NotificationStatus.FAILED,
        attempts=6,
        response_code=500,
        last_error="https://ops answered HTTP 500",
    )
    sent = Notification.objects.create(
        alert=acme_alert, channel=acme_hook, reason="reminder", status=NotificationStatus.SENT
    )
    throttled = Notification.objects.create(
        alert=globex_alert,
        channel=globex_mail,
        reason="opened",
        status=NotificationStatus.THROTTLED,
    )
    return failed, sent, throttled


# --- Tenancy ------------------------------------------------------------------------------------


def test_carol_sees_no_acme_channel_and_cannot_open_one(client, carol, acme, globex):
    mine, theirs = make_channel(globex, "Globex mail"), make_channel(acme, "Acme mail")
    client.force_login(carol)
    response = client.get(admin_url(NotificationChannel))
    assert {c.pk for c in response.context["cl"].result_list} == {mine.pk}
    assert "Acme mail" not in response.text
    assert client.get(admin_url(theirs, "change")).status_code == 302


def test_carol_sees_only_globex_deliveries(client, carol, deliveries):
    failed, _, throttled = deliveries
    client.force_login(carol)
    response = client.get(admin_url(Notification))
    assert {n.pk for n in response.context["cl"].result_list} == {throttled.pk}
    assert "Acme hook" not in response.text
    assert client.get(admin_url(failed, "change")).status_code == 302


def test_carol_cannot_test_acmes_channel(client, carol, acme, emails):
    channel = make_channel(acme, "Acme mail")
    client.force_login(carol)
    client.post(
        admin_url(NotificationChannel),
        {"action": "send_test", "_selected_action": [channel.pk]},
    )
    assert emails == []


# --- Channels -----------------------------------------------------------------------------------


def test_alice_sends_a_test_notification_and_hears_how_it_went(client, alice, acme, emails):
    ok = make_channel(acme, "Shift lead")
    broken = make_channel(
        acme, "Dead hook", ChannelKind.WEBHOOK, webhook_url=f"http://127.0.0.1:{free_port()}/x"
    )
    client.force_login(alice)
    response = client.post(
        admin_url(NotificationChannel),
        {"action": "send_test", "_selected_action": [ok.pk, broken.pk]},
        follow=True,
    )
    said = messages_of(response)
    assert "“Shift lead”: test notification sent." in said
    assert any(m.startswith("“Dead hook”: the test failed. Could not reach") for m in said)
    assert [m.to for m in emails] == [["shift-lead@example.com"]]


def test_bob_the_viewer_is_not_offered_the_test_action(client, bob, acme, emails):
    channel = make_channel(acme, "Shift lead")
    client.force_login(bob)
    response = client.get(admin_url(NotificationChannel))
    assert "send_test" not in response.text
    client.post(
        admin_url(NotificationChannel), {"action": "send_test", "_selected_action": [channel.pk]}
    )
    assert emails == []


def test_alice_adds_a_webhook_channel_whose_secret_is_never_shown_again(client, alice, acme):
    client.force_login(alice)
    response = client.post(
        admin_url(NotificationChannel, "add"),
        channel_form(tenant=acme.pk, webhook_secret="sixteen-chars-or-more"),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    channel = NotificationChannel.objects.get(name="Ops hook")
    assert channel.webhook_secret == "sixteen-chars-or-more"
    page = client.get(admin_url(channel, "change"))
    assert "sixteen-chars-or-more" not in page.text

    # Saving the form again without typing the secret keeps it.
    response = client.post(admin_url(channel, "change"), channel_form(name="Ops hook v2"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    channel.refresh_from_db()
    assert (channel.name, channel.webhook_secret) == ("Ops hook v2", "sixteen-chars-or-more")


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"webhook_secret": "short"}, "webhook_secret", "at least 16"),
        ({"webhook_secret": ""}, "webhook_secret", "Give a secret"),
        (
            {"webhook_url": "ftp://ops.example.com/x", "webhook_secret": "x" * 20},
            "webhook_url",
            "http:// or https://",
        ),
        ({"kind": "email", "email_to": "ops@example.com; nope"}, "email_to", "nope"),
        ({"kind": "mqtt_command", "command": "a/b"}, "command", "may not hold"),
    ],
)
def test_a_channel_form_explains_what_is_wrong(client, alice, acme, overrides, field, words):
    client.force_login(alice)
    response = client.post(
        admin_url(NotificationChannel, "add"), channel_form(tenant=acme.pk, **overrides)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert words in " ".join(errors[field])
    assert not NotificationChannel.objects.exists()


# --- Deliveries ---------------------------------------------------------------------------------


def test_failed_deliveries_are_listed_with_their_error_and_filtered_by_status(
    client, alice, deliveries
):
    failed, _, _ = deliveries
    client.force_login(alice)
    response = client.get(admin_url(Notification), {"status__exact": "failed"})
    assert [n.pk for n in response.context["cl"].result_list] == [failed.pk]
    assert "answered HTTP 500" in response.text
    assert "Failed" in response.text


def test_deliveries_are_read_only(client, alice, deliveries):
    failed, _, _ = deliveries
    client.force_login(alice)
    page = client.get(admin_url(failed, "change"))
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    client.post(admin_url(failed, "change"), {"status": "sent"})
    failed.refresh_from_db()
    assert failed.status == NotificationStatus.FAILED
    assert client.get(admin_url(Notification, "add")).status_code == 403


def test_alice_retries_a_failed_delivery(
    client, alice, deliveries, django_capture_on_commit_callbacks
):
    failed, sent, _ = deliveries
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(
            admin_url(Notification),
            {"action": "retry_failed", "_selected_action": [failed.pk, sent.pk]},
            follow=True,
        )
    assert "Queued 1 failed delivery(ies) again." in messages_of(response)
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (NotificationStatus.PENDING, 0)
    assert len(queued) == 1


def test_carol_cannot_retry_acmes_failed_delivery(client, carol, deliveries):
    failed, _, _ = deliveries
    client.force_login(carol)
    client.post(
        admin_url(Notification), {"action": "retry_failed", "_selected_action": [failed.pk]}
    )
    failed.refresh_from_db()
    assert failed.status == NotificationStatus.FAILED
