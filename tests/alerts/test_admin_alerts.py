"""Alerts in the admin: each tenant sees its own, viewers only look, operators acknowledge and
resolve in bulk with a note, and nobody adds or edits an alert by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.messages import get_messages
from django.utils.html import escape

from alerts import notifications
from alerts.models import (
    Alert,
    AlertState,
    ChannelKind,
    Notification,
    NotificationChannel,
    NotificationStatus,
)
from alerts.services import Breach, acknowledge_alert, record_breaches
from devices.models import Role
from devices.services import add_member
from rules.models import Rule
from tests.devices.conftest import admin_url
from tests.factories import make_device

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_notifications(monkeypatch):
    monkeypatch.setattr(notifications, "queue_notifications_many", lambda ids, reason: None)


def raise_alert(device, name: str = "Too hot", condition: str = "temperature > 80") -> Alert:
    rule, _ = Rule.objects.get_or_create(
        tenant=device.tenant,
        name=name,
        defaults={"condition": condition, "device_type": device.device_type},
    )
    record_breaches(
        [Breach(rule.pk, device.pk, device.tenant_id, T0, T0 + timedelta(minutes=2), 7)]
    )
    return Alert.objects.get(rule=rule, device=device)


@pytest.fixture
def alerts(acme, acme_device, acme_freezer_type, globex_device, alice, bob, carol):
    """Two open Acme alerts and one Globex alert."""
    second = make_device(acme, "acme-freezer-2", device_type=acme_freezer_type, name="Freezer 2")
    return raise_alert(acme_device), raise_alert(second), raise_alert(globex_device)


def shown(response) -> set[int]:
    assert response.status_code == 200
    return {alert.pk for alert in response.context["cl"].result_list}


def act(client, action: str, alerts, **extra):
    data = {"action": action, "_selected_action": [a.pk for a in alerts], **extra}
    return client.post(admin_url(Alert), data, follow=True)


def notes(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- Seeing -------------------------------------------------------------------------------------


def test_carol_of_globex_sees_none_of_acmes_alerts(client, carol, alerts):
    acme_one, _, globex_one = alerts
    client.force_login(carol)
    response = client.get(admin_url(Alert))
    assert shown(response) == {globex_one.pk}
    assert "Freezer 1" not in response.text
    assert client.get(admin_url(acme_one, "change"))["Location"] == "/admin/"


def test_bob_the_viewer_sees_acmes_alerts_with_count_and_device(client, bob, alerts):
    acme_one, acme_two, _ = alerts
    client.force_login(bob)
    response = client.get(admin_url(Alert))
    assert shown(response) == {acme_one.pk, acme_two.pk}
    assert "acme-freezer-1" in response.text
    assert "Too hot: temperature &gt; 80 on Freezer 1" in response.text


def test_filters_by_state_and_search_by_device_key(client, alice, alerts):
    acme_one, acme_two, _ = alerts
    acknowledge_alert(acme_one, alice)
    client.force_login(alice)
    assert shown(client.get(admin_url(Alert), {"state": "acknowledged"})) == {acme_one.pk}
    assert shown(client.get(admin_url(Alert), {"q": "acme-freezer-2"})) == {acme_two.pk}
    assert shown(client.get(admin_url(Alert), {"severity": "critical"})) == set()


def test_the_rule_and_device_filters_offer_only_the_users_tenants(
    client, carol, alerts, globex_device
):
    raise_alert(make_device(globex_device.tenant, "globex-pump-2", name="Pump 2"))
    client.force_login(carol)
    response = client.get(admin_url(Alert))
    filters = {spec.title: spec for spec in response.context["cl"].filter_specs}
    devices = [choice["display"] for choice in filters["device"].choices(response.context["cl"])]
    assert "Pump 1 (globex-pump-1)" in devices
    assert "Pump 2 (globex-pump-2)" in devices
    assert not any("Freezer" in str(name) for name in devices)
    assert "Acme Cold Chain" not in response.text


def test_the_alert_page_is_read_only_with_its_history_and_deliveries(client, alice, alerts):
    acme_one = alerts[0]
    acknowledge_alert(acme_one, alice, "On my way")
    channel = NotificationChannel.objects.create(
        tenant=acme_one.tenant, name="Ops mail", kind=ChannelKind.EMAIL, email_to="ops@acme.test"
    )
    Notification.objects.create(
        alert=acme_one, channel=channel, reason="opened", status=NotificationStatus.SENT
    )
    client.force_login(alice)
    response = client.get(admin_url(acme_one, "change"))
    assert response.status_code == 200
    assert 'name="_save"' not in response.text
    assert 'name="title"' not in response.text
    assert "On my way" in response.text
    assert "Acknowledged" in response.text
    assert "Opened" in response.text
    assert "Ops mail" in response.text
    assert client.post(admin_url(acme_one, "change"), {"title": "Renamed"}).status_code == 403
    acme_one.refresh_from_db()
    assert acme_one.title.startswith("Too hot")


def test_nobody_adds_an_alert_by_hand(client, alice, alerts):
    client.force_login(alice)
    assert client.get(admin_url(Alert, "add")).status_code == 403


# --- Acting -------------------------------------------------------------------------------------


def test_bob_the_viewer_is_offered_no_action_and_a_posted_one_changes_nothing(client, bob, alerts):
    client.force_login(bob)
    assert client.get(admin_url(Alert)).context["action_form"] is None
    act(client, "acknowledge_selected", alerts[:2], apply="1", note="bob was here")
    assert set(Alert.objects.values_list("state", flat=True)) == {AlertState.OPEN}


def test_alice_acknowledges_in_bulk_after_writing_a_note(client, alice, alerts):
    acme_one, acme_two, _ = alerts
    client.force_login(alice)
    page = act(client, "acknowledge_selected", [acme_one, acme_two])
    assert page.status_code == 200
    assert "Note (optional)" in page.text
    assert escape(acme_two.title) in page.text
    assert Alert.objects.get(pk=acme_one.pk).state == AlertState.OPEN  # not before confirming
    response = act(client, "acknowledge_selected", [acme_one, acme_two], apply="1", note="Seen")
    assert "Acknowledged 2 alert(s)." in notes(response)
    for alert in (acme_one, acme_two):
        alert.refresh_from_db()
        assert (alert.state, alert.acknowledged_by, alert.acknowledge_note) == (
            AlertState.ACKNOWLEDGED,
            alice,
            "Seen",
        )


def test_acknowledging_an_acknowledged_alert_says_it_was_left_alone(client, alice, alerts):
    acme_one, acme_two, _ = alerts
    acknowledge_alert(acme_one, alice)
    client.force_login(alice)
    response = act(client, "acknowledge_selected", [acme_one, acme_two], apply="1", note="")
    messages = notes(response)
    assert "Acknowledged 1 alert(s)." in messages
    assert any("1 selected alert(s) were not open" in message for message in messages)


def test_alice_resolves_with_a_note(client, alice, alerts):
    acme_one = alerts[0]
    client.force_login(alice)
    response = act(client, "resolve_selected", [acme_one], apply="1", note="New door seal")
    assert "Resolved 1 alert(s)." in notes(response)
    acme_one.refresh_from_db()
    assert (acme_one.state, acme_one.resolved_by, acme_one.resolve_note) == (
        AlertState.RESOLVED,
        alice,
        "New door seal",
    )


def test_an_operator_leaves_alerts_she_may_only_view(client, alice, alerts, globex):
    acme_one, _, globex_one = alerts
    add_member(alice, globex, Role.VIEWER)
    client.force_login(alice)
    response = act(client, "acknowledge_selected", [acme_one, globex_one], apply="1")
    globex_one.refresh_from_db()
    acme_one.refresh_from_db()
    assert globex_one.state == AlertState.OPEN
    assert acme_one.state == AlertState.ACKNOWLEDGED
    assert any("may only view" in message for message in notes(response))


def test_carol_cannot_act_on_acmes_alerts(client, carol, alerts):
    acme_one, _, _ = alerts
    client.force_login(carol)
    act(client, "resolve_selected", [acme_one], apply="1", note="not mine")
    acme_one.refresh_from_db()
    assert acme_one.state == AlertState.OPEN
