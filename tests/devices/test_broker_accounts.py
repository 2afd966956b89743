"""Per-device MQTT accounts, proved with real MQTT clients against a Mosquitto of the test's own
with the dynamic security plugin: a device gets in with its secret and only under fleet/{key}/#;
rotation, disabling and deleting shut it out; a broker that is down saves nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from paho.mqtt.enums import CallbackAPIVersion

from devices import broker_accounts
from devices.broker_accounts import BrokerAccountError
from devices.credentials import verify_secret
from devices.models import Device
from devices.services import (
    DeviceSpec,
    create_device,
    create_devices,
    delete_devices,
    rotate_credentials,
    update_device,
)
from tests.api.clients import client_as
from tests.devices.conftest import admin_url, device_form
from tests.servers import Mosquitto, free_port

WAIT = 5.0
# How long a message that should not arrive is given to arrive anyway, after a message sent
# after it by the same client did arrive (a broker delivers one client's messages in order).
SILENCE = 1.0


class Peer:
    """A real MQTT client: logs in, subscribes, publishes and keeps what it receives."""

    def __init__(self, broker: Mosquitto, username: str, password: str, client_id: str = ""):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or username,
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.connack: Any = None
        self.subacks: dict[int, Any] = {}
        self.pubacks: set[int] = set()
        self.received: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self._wait_for(lambda: self.connack is not None, "a CONNACK")

    @property
    def accepted(self) -> bool:
        return not self.connack.is_failure

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self.changed:
            self.connack = reason
            self.changed.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self.changed:
            self.subacks[mid] = reasons[0]
            self.changed.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.changed:
            self.pubacks.add(mid)
            self.changed.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.changed:
            self.received.append((message.topic, message.payload))
            self.changed.notify_all()

    def _wait_for(self, done: Any, what: str, timeout: float = WAIT) -> None:
        with self.changed:
            assert self.changed.wait_for(done, timeout), f"no {what} within {timeout} s"

    def subscribe(self, topic: str) -> bool:
        """Whether the broker granted the subscription."""
        _, mid = self.client.subscribe(topic, qos=1)
        self._wait_for(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return not self.subacks[mid].is_failure

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK, granted or not.

        Mosquitto 2.0.11 with `max_queued_messages 0` drops a client's connection soon after
        refusing one of its publishes; paho reconnects and sends what was queued meanwhile, in
        order, so this waits for the PUBACK across that.
        """
        info = self.client.publish(topic, payload, qos=1)
        self._wait_for(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")

    def wait_for(self, topic: str, payload: bytes) -> None:
        self._wait_for(lambda: (topic, payload) in self.received, f"{payload!r} on {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(settings, secured_mosquitto):
    """The platform manages accounts on a broker of this test's own."""
    settings.MQTT_URL = secured_mosquitto.url
    settings.MQTT_DYNSEC_ENABLED = True
    return secured_mosquitto


@pytest.fixture
def peers(broker):
    """Log in to the broker; every client is closed when the test ends."""
    opened: list[Peer] = []

    def login(username: str, password: str, client_id: str = "") -> Peer:
        peer = Peer(broker, username, password, client_id)
        opened.append(peer)
        return peer

    yield login
    for peer in opened:
        peer.close()


@pytest.fixture
def platform(peers, broker):
    """The platform's own user, subscribed to everything devices send."""
    user, password = broker.admin
    peer = peers(user, password, client_id="platform-listener")
    assert peer.subscribe("fleet/#")
    return peer


def new_device(tenant: Any, device_type: Any, key: str, **fields: Any):
    return create_device(tenant=tenant, key=key, name=key, device_type=device_type, **fields)


# --- A device's own account ---------------------------------------------------------------------


def test_a_created_device_logs_in_and_its_telemetry_reaches_the_platform(
    acme, acme_freezer_type, peers, platform
):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    device = peers("acme-cold-1", new.secret)
    device.publish("fleet/acme-cold-1/telemetry", b'{"metrics": {"temperature": 4}}')

    assert device.accepted
    platform.wait_for("fleet/acme-cold-1/telemetry", b'{"metrics": {"temperature": 4}}')


def test_a_device_cannot_publish_to_another_devices_topics(
    acme, acme_freezer_type, peers, platform
):
    mallory = new_device(acme, acme_freezer_type, "acme-mallory")
    new_device(acme, acme_freezer_type, "acme-victim")
    device = peers("acme-mallory", mallory.secret)

    device.publish("fleet/acme-victim/telemetry", b"forged")
    device.publish("fleet/acme-victim/status", b"forged")
    device.publish("fleet/acme-mallory/status", b"control")

    platform.wait_for("fleet/acme-mallory/status", b"control")
    time.sleep(SILENCE)
    assert [topic for topic, _ in platform.received] == ["fleet/acme-mallory/status"]


def test_a_device_may_subscribe_only_under_its_own_topics(acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    new_device(acme, acme_freezer_type, "acme-cold-2")
    device = peers("acme-cold-1", new.secret)

    assert device.subscribe("fleet/acme-cold-1/commands/+")
    assert device.subscribe("fleet/acme-cold-1/#")
    assert not device.subscribe("fleet/acme-cold-2/#")
    assert not device.subscribe("fleet/+/telemetry")
    assert not device.subscribe("#")


def test_a_device_receives_what_the_platform_sends_it(
    acme, acme_freezer_type, peers, broker, settings
):
    call_command("mqtt_setup")
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    device = peers("acme-cold-1", new.secret)
    assert device.subscribe("fleet/acme-cold-1/commands/+")
    user, password = broker.admin

    peers(user, password, "platform-sender").publish("fleet/acme-cold-1/commands/7", b"defrost")

    device.wait_for("fleet/acme-cold-1/commands/7", b"defrost")


def test_a_wrong_password_is_refused(acme, acme_freezer_type, peers):
    new_device(acme, acme_freezer_type, "acme-cold-1")

    assert not peers("acme-cold-1", "not-its-secret").accepted


def test_a_device_may_log_in_only_with_its_key_as_client_id(acme, acme_freezer_type, peers):
    """Otherwise one device could log in under another's client id and push it off."""
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    new_device(acme, acme_freezer_type, "acme-cold-2")

    assert not peers("acme-cold-1", new.secret, client_id="acme-cold-2").accepted


def test_after_rotation_the_old_secret_is_refused_and_the_new_one_works(
    acme, acme_freezer_type, peers
):
    old = new_device(acme, acme_freezer_type, "acme-cold-1")

    new = rotate_credentials(old.device)

    assert not peers("acme-cold-1", old.secret).accepted
    assert peers("acme-cold-1", new.secret).accepted


def test_a_deleted_device_is_refused(acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    assert delete_devices([new.device]) == 1

    assert not peers("acme-cold-1", new.secret).accepted
    assert not Device.objects.filter(key="acme-cold-1").exists()


def test_a_disabled_device_is_refused_until_enabled_again(acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    update_device(new.device, is_enabled=False)
    refused = peers("acme-cold-1", new.secret).accepted
    update_device(new.device, is_enabled=True)

    assert refused is False
    assert peers("acme-cold-1", new.secret).accepted


def test_a_device_created_disabled_cannot_log_in(acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1", is_enabled=False)

    assert not peers("acme-cold-1", new.secret).accepted


def test_an_account_left_on_the_broker_is_made_anew_with_the_new_secret(
    acme, acme_freezer_type, peers, settings
):
    """A device deleted while dynamic security was off leaves its account behind."""
    old = new_device(acme, acme_freezer_type, "acme-cold-1")
    settings.MQTT_DYNSEC_ENABLED = False
    delete_devices([old.device])
    settings.MQTT_DYNSEC_ENABLED = True

    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    assert not peers("acme-cold-1", old.secret).accepted
    assert peers("acme-cold-1", new.secret).accepted


def test_many_devices_are_provisioned_in_a_few_messages(
    acme, acme_freezer_type, peers, monkeypatch
):
    sent = []
    request = broker_accounts.ControlChannel._request

    def counting(channel, chunk, kicked_ok):
        sent.append(len(chunk))
        return request(channel, chunk, kicked_ok)

    monkeypatch.setattr(broker_accounts.ControlChannel, "_request", counting)
    specs = [DeviceSpec(f"bulk-{n:03d}", f"Bulk {n}", acme_freezer_type) for n in range(300)]

    created = create_devices(acme, specs)

    assert sent == [broker_accounts.COMMANDS_PER_MESSAGE] * 6  # a role and a client each
    assert peers("bulk-000", created[0].secret).accepted
    assert peers("bulk-299", created[-1].secret).accepted


# --- When the broker does not take the change ---------------------------------------------------


def test_with_the_broker_down_creating_a_device_fails_and_saves_nothing(
    acme, acme_freezer_type, broker
):
    broker.stop()

    with pytest.raises(BrokerAccountError, match=rf"127\.0\.0\.1:{broker.port} did not answer"):
        new_device(acme, acme_freezer_type, "acme-cold-1")

    assert not Device.objects.filter(key="acme-cold-1").exists()


def test_with_the_broker_down_a_rotation_keeps_the_old_secret(acme, acme_freezer_type, broker):
    old = new_device(acme, acme_freezer_type, "acme-cold-1")
    broker.stop()

    with pytest.raises(BrokerAccountError, match=r"docs/mqtt\.md"):
        rotate_credentials(Device.objects.get(key="acme-cold-1"))

    assert verify_secret(old.secret, Device.objects.get(key="acme-cold-1").credential_hash)


def test_a_wrong_platform_password_is_named_as_such(acme, acme_freezer_type, broker, settings):
    settings.MQTT_URL = f"mqtt://{broker.admin[0]}:wrong@127.0.0.1:{broker.port}"

    with pytest.raises(BrokerAccountError, match="refused the platform's login"):
        new_device(acme, acme_freezer_type, "acme-cold-1")


def test_without_dynamic_security_no_broker_is_contacted(acme, acme_freezer_type, settings):
    settings.MQTT_DYNSEC_ENABLED = False
    settings.MQTT_URL = f"mqtt://platform:secret@127.0.0.1:{free_port()}"  # nothing listens

    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    rotate_credentials(new.device)
    update_device(new.device, is_enabled=False, name="Renamed")
    delete_devices([new.device])

    assert not Device.objects.filter(key="acme-cold-1").exists()


# --- The admin and the API go through the services ----------------------------------------------


def test_the_admin_adds_a_device_that_can_log_in(client, alice, acme, acme_freezer_type, peers):
    client.force_login(alice)

    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key="acme-new-1", device_type=acme_freezer_type.pk),
    )

    [credential] = response.context["credentials"]
    assert peers("acme-new-1", credential.secret).accepted


def test_the_admin_deletes_a_device_and_its_account(client, alice, acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    client.force_login(alice)

    response = client.post(admin_url(new.device, "delete"), {"post": "yes"})

    assert response.status_code == 302
    assert not Device.objects.filter(key="acme-cold-1").exists()
    assert not peers("acme-cold-1", new.secret).accepted


def test_the_admin_bulk_delete_removes_the_accounts(client, alice, acme, acme_freezer_type, peers):
    news = [new_device(acme, acme_freezer_type, f"acme-cold-{n}") for n in (1, 2)]
    client.force_login(alice)

    client.post(
        admin_url(Device),
        {
            "action": "delete_selected",
            "_selected_action": [new.device.pk for new in news],
            "post": "yes",
        },
    )

    assert not Device.objects.filter(key__startswith="acme-cold-").exists()
    assert not peers("acme-cold-2", news[1].secret).accepted


def test_the_admin_disables_a_device_on_the_broker(client, alice, acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    client.force_login(alice)

    response = client.post(
        admin_url(new.device, "change"),
        device_form(
            tenant=acme.pk, name="Cold 1", device_type=acme_freezer_type.pk, is_enabled=None
        ),
    )

    assert response.status_code == 302
    assert not Device.objects.get(key="acme-cold-1").is_enabled
    assert not peers("acme-cold-1", new.secret).accepted


def test_the_admin_shows_the_form_again_when_the_broker_is_down(
    client, alice, acme, acme_freezer_type, broker
):
    broker.stop()
    client.force_login(alice)

    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key="acme-new-1", device_type=acme_freezer_type.pk),
    )

    assert response.status_code == 200
    [error] = response.context["adminform"].form.non_field_errors()
    assert "Nothing was saved" in error
    assert "did not answer" in error
    assert response.context["adminform"].form["key"].value() == "acme-new-1"
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_the_admin_keeps_a_device_it_cannot_delete_from_the_broker(
    client, alice, acme, acme_freezer_type, broker
):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    broker.stop()
    client.force_login(alice)

    response = client.post(admin_url(new.device, "delete"), {"post": "yes"}, follow=True)

    assert any("did not answer" in str(note) for note in response.context["messages"])
    assert Device.objects.filter(key="acme-cold-1").exists()


def test_the_admin_keeps_the_old_secrets_when_a_rotation_fails(
    client, alice, acme, acme_freezer_type, broker
):
    old = new_device(acme, acme_freezer_type, "acme-cold-1")
    broker.stop()
    client.force_login(alice)

    response = client.post(
        admin_url(Device),
        {"action": "rotate_credentials", "_selected_action": [old.device.pk], "apply": "1"},
        follow=True,
    )

    assert any("Nothing was saved" in str(note) for note in response.context["messages"])
    assert verify_secret(old.secret, Device.objects.get(key="acme-cold-1").credential_hash)


def test_a_csv_import_with_the_broker_down_creates_nothing_and_says_why(
    client, alice, acme, acme_freezer_type, broker
):
    broker.stop()
    client.force_login(alice)
    upload = SimpleUploadedFile(
        "devices.csv", b"key,name,device_type\nacme-csv-1,One,Freezer\nacme-csv-2,Two,Freezer\n"
    )

    response = client.post(admin_url(Device, "import"), {"tenant": acme.pk, "file": upload})

    assert response.status_code == 200
    [error] = response.context["errors"]
    assert "Nothing was saved" in error
    assert not Device.objects.filter(key__startswith="acme-csv-").exists()


def test_the_api_deletes_a_device_and_its_account(alice, acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    response = client_as(alice).delete(reverse("device-detail", kwargs={"key": "acme-cold-1"}))

    assert response.status_code == 204
    assert not peers("acme-cold-1", new.secret).accepted


def test_the_api_disables_a_device_on_the_broker(alice, acme, acme_freezer_type, peers):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")

    response = client_as(alice).patch(
        reverse("device-detail", kwargs={"key": "acme-cold-1"}),
        {"is_enabled": False},
        format="json",
    )

    assert response.status_code == 200, response.data
    assert response.data["is_enabled"] is False
    assert not peers("acme-cold-1", new.secret).accepted


def test_the_api_answers_503_when_the_broker_is_down(alice, acme, acme_freezer_type, broker):
    broker.stop()

    response = client_as(alice).post(
        reverse("device-list"),
        {"key": "acme-new-1", "name": "New", "device_type": acme_freezer_type.pk},
        format="json",
    )

    assert response.status_code == 503
    assert "did not answer" in response.data["detail"]
    assert not Device.objects.filter(key="acme-new-1").exists()


# --- The platform's own rights ------------------------------------------------------------------


def test_mqtt_setup_lets_the_platform_publish_and_share_the_ingest_subscriptions(
    acme, acme_freezer_type, broker, peers, capsys
):
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    user, password = broker.admin

    call_command("mqtt_setup")
    first = capsys.readouterr().out
    call_command("mqtt_setup")
    second = capsys.readouterr().out

    assert "gave" in first
    assert "nothing to change" in second
    ingest = peers(user, password, "ingest-1")
    for kind in ("telemetry", "status", "shadow/reported"):
        assert ingest.subscribe(f"$share/ingest/fleet/+/{kind}")
    peers("acme-cold-1", new.secret).publish("fleet/acme-cold-1/telemetry", b"reading")
    ingest.wait_for("fleet/acme-cold-1/telemetry", b"reading")


def test_without_mqtt_setup_the_platform_cannot_publish_to_devices(
    acme, acme_freezer_type, broker, peers
):
    """What `mosquitto_ctrl dynsec init` gives its admin: no publishing to normal topics."""
    new = new_device(acme, acme_freezer_type, "acme-cold-1")
    device = peers("acme-cold-1", new.secret)
    assert device.subscribe("fleet/acme-cold-1/#")
    user, password = broker.admin

    peers(user, password, "platform-sender").publish("fleet/acme-cold-1/commands/1", b"lost")
    device.publish("fleet/acme-cold-1/status", b"control")

    device.wait_for("fleet/acme-cold-1/status", b"control")
    time.sleep(SILENCE)
    assert ("fleet/acme-cold-1/commands/1", b"lost") not in device.received
