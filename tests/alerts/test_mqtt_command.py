"""A command channel publishes to the alert's device over MQTT: proved with a real subscriber on
a Mosquitto of the test's own, with and without per-device accounts (dynamic security)."""

from __future__ import annotations

import json
import time

import pytest
from django.core.management import call_command

from alerts.models import ChannelKind, Notification, NotificationStatus
from alerts.notifications import deliver_notification, queue_notifications
from devices.services import create_device
from tests.alerts.test_notifications import attach, make_channel, make_rule, open_alert
from tests.devices.test_broker_accounts import SILENCE, Peer
from tests.servers import free_port


@pytest.fixture
def siren_alert(acme, acme_freezer_type):
    """An alert of a rule whose only channel sends alarm_on {"level": 2} to the device."""

    def make(device):
        rule = make_rule(acme, acme_freezer_type)
        attach(rule, make_channel(acme, "Siren", ChannelKind.MQTT_COMMAND))
        return open_alert(rule, device)

    return make


def queue_and_deliver(alert, capture):
    with capture(execute=False):
        (notification_id,) = queue_notifications(alert.pk, "opened")
    deliver_notification(notification_id)
    return Notification.objects.get(pk=notification_id)


def test_the_device_receives_the_command_of_its_alert(
    acme_device, siren_alert, mosquitto, settings, django_capture_on_commit_callbacks
):
    settings.MQTT_URL = mosquitto.url
    device = Peer(mosquitto, "", "", client_id="acme-freezer-1")
    try:
        assert device.subscribe("fleet/acme-freezer-1/commands/+")
        alert = siren_alert(acme_device)

        notification = queue_and_deliver(alert, django_capture_on_commit_callbacks)

        topic = f"fleet/acme-freezer-1/commands/{notification.pk}"
        device._wait_for(lambda: device.received, "the command")
        assert [t for t, _ in device.received] == [topic]
        assert json.loads(device.received[0][1]) == {
            "id": notification.pk,
            "command": "alarm_on",
            "params": {"level": 2},
            "alert": alert.pk,
        }
    finally:
        device.close()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 1)


def test_a_broker_that_is_down_leaves_the_command_retrying_with_the_reason(
    acme_device, siren_alert, settings, django_capture_on_commit_callbacks
):
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"

    notification = queue_and_deliver(siren_alert(acme_device), django_capture_on_commit_callbacks)

    assert notification.status == NotificationStatus.RETRYING
    assert "Could not reach the MQTT broker at 127.0.0.1" in notification.last_error


def test_a_wrong_platform_password_is_reported(
    acme_device, siren_alert, secured_mosquitto, settings, django_capture_on_commit_callbacks
):
    user, _ = secured_mosquitto.admin
    settings.MQTT_URL = f"mqtt://{user}:wrong@127.0.0.1:{secured_mosquitto.port}"

    notification = queue_and_deliver(siren_alert(acme_device), django_capture_on_commit_callbacks)

    assert notification.status == NotificationStatus.RETRYING
    assert "refused the platform's login" in notification.last_error


@pytest.fixture
def accounts(secured_mosquitto, settings):
    """Per-device accounts on a broker with dynamic security; the platform logs in as admin."""
    settings.MQTT_URL = secured_mosquitto.url
    settings.MQTT_DYNSEC_ENABLED = True
    return secured_mosquitto


def test_with_device_accounts_the_device_gets_its_command_once_mqtt_setup_ran(
    acme, acme_freezer_type, siren_alert, accounts, django_capture_on_commit_callbacks
):
    call_command("mqtt_setup")
    new = create_device(tenant=acme, key="acme-cold-1", name="Cold", device_type=acme_freezer_type)
    device = Peer(accounts, "acme-cold-1", new.secret)
    try:
        assert device.subscribe("fleet/acme-cold-1/commands/+")
        notification = queue_and_deliver(
            siren_alert(new.device), django_capture_on_commit_callbacks
        )
        device._wait_for(lambda: device.received, "the command")
    finally:
        device.close()
    assert device.received[0][0] == f"fleet/acme-cold-1/commands/{notification.pk}"
    assert notification.status == NotificationStatus.SENT


def test_without_mqtt_setup_the_command_is_refused_and_the_delivery_says_what_to_run(
    acme, acme_freezer_type, siren_alert, accounts, django_capture_on_commit_callbacks
):
    new = create_device(tenant=acme, key="acme-cold-1", name="Cold", device_type=acme_freezer_type)
    device = Peer(accounts, "acme-cold-1", new.secret)
    try:
        assert device.subscribe("fleet/acme-cold-1/#")
        notification = queue_and_deliver(
            siren_alert(new.device), django_capture_on_commit_callbacks
        )
        time.sleep(SILENCE)
    finally:
        device.close()
    assert device.received == []
    assert notification.status == NotificationStatus.RETRYING
    assert "manage.py mqtt_setup" in notification.last_error
