"""Alert changes reach the tenant's Channels group on the real channels-redis layer (the local
Redis), after commit, and only that tenant's group."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction

from alerts import notifications
from alerts.models import Alert
from alerts.services import (
    Breach,
    acknowledge_alert,
    alert_payload,
    detect_offline,
    record_breaches,
    resolve_alert,
)
from devices.models import Device, DeviceStatus
from iotfleet.live import push_to_tenant, tenant_group
from rules.models import Rule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Listener:
    """A dashboard's side of the layer: one channel, joined to groups, read on one event loop of
    its own, with a layer instance of its own (channels-redis binds a layer's receive buffers
    and connections to the loop that first uses them)."""

    def __init__(self, config: dict) -> None:
        self.layer = RedisChannelLayer(**config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self.run(self.layer.new_channel())

    def run(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout + 5)

    def join(self, tenant_id: int) -> Listener:
        self.run(self.layer.group_add(tenant_group(tenant_id), self.channel))
        return self

    def receive(self, timeout: float = 5.0) -> dict | None:
        async def get() -> dict | None:
            try:
                return await asyncio.wait_for(self.layer.receive(self.channel), timeout)
            except TimeoutError:
                return None

        return self.run(get(), timeout)

    def close(self) -> None:
        self.run(self.layer.flush())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def layer(settings):
    """The channels-redis layer on the local Redis, under a prefix of this test's own so that
    other test runs sharing the server cannot take or send our messages."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [settings.CHANNELS_REDIS_URL],
                "prefix": f"test-live-{uuid.uuid4().hex}",
                "expiry": 10,
            },
        }
    }
    # What the services send through.
    assert isinstance(get_channel_layer(), RedisChannelLayer)
    return settings.CHANNEL_LAYERS["default"]["CONFIG"]


@pytest.fixture
def listeners(layer):
    """listen(tenant_id) -> a Listener joined to that tenant's group."""
    made: list[Listener] = []

    def listen(tenant_id: int) -> Listener:
        made.append(Listener(layer).join(tenant_id))
        return made[-1]

    yield listen
    for listener in made:
        listener.close()


@pytest.fixture(autouse=True)
def no_notifications(monkeypatch):
    monkeypatch.setattr(notifications, "queue_notifications_many", lambda ids, reason: None)


@pytest.fixture
def too_hot(acme, acme_freezer_type):
    return Rule.objects.create(
        tenant=acme, name="Too hot", condition="temperature > 80", device_type=acme_freezer_type
    )


def breach(rule, device, count: int) -> Breach:
    return Breach(rule.pk, device.pk, rule.tenant_id, T0, T0 + timedelta(minutes=1), count)


def test_tenant_groups_are_named_after_the_tenant():
    assert tenant_group(42) == "tenant.42"


def test_a_new_alert_reaches_its_tenants_group_after_commit(
    listeners, acme, too_hot, acme_device, django_capture_on_commit_callbacks
):
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        record_breaches([breach(too_hot, acme_device, 3)])
    assert channel.receive(timeout=0.5) is None  # nothing before the commit
    for callback in callbacks:
        callback()
    message = channel.receive()
    assert message["type"] == "fleet.event"
    assert message["event"] == "alerts.changed"
    [payload] = message["payload"]["alerts"]
    alert = Alert.objects.get()
    assert payload["id"] == alert.pk
    assert payload["state"] == "open"
    assert payload["severity"] == "warning"
    assert payload["title"] == "Too hot: temperature > 80 on Freezer 1"
    assert payload["device"] == "acme-freezer-1"
    assert payload["rule"] == too_hot.pk
    assert payload["count"] == 3
    assert payload["first_triggered_at"] == T0.isoformat()
    assert payload["last_triggered_at"] == (T0 + timedelta(minutes=1)).isoformat()


def test_another_tenants_group_hears_nothing(
    listeners, acme, globex, too_hot, acme_device, django_capture_on_commit_callbacks
):
    theirs = listeners(globex.pk)
    mine = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        record_breaches([breach(too_hot, acme_device, 1)])
    assert mine.receive() is not None
    assert theirs.receive(timeout=0.5) is None


def test_a_rolled_back_change_is_never_pushed(listeners, acme, too_hot, acme_device):
    channel = listeners(acme.pk)

    def failing_batch() -> None:
        with transaction.atomic():
            record_breaches([breach(too_hot, acme_device, 1)])
            raise RuntimeError("the batch failed after the breach")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert channel.receive(timeout=0.5) is None


def test_a_thousand_breaches_in_a_batch_push_once_per_alert_in_one_message(
    listeners, acme, too_hot, acme_device, django_capture_on_commit_callbacks
):
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        record_breaches([breach(too_hot, acme_device, 1) for _ in range(1000)])
    message = channel.receive()
    assert [a["count"] for a in message["payload"]["alerts"]] == [1000]
    assert channel.receive(timeout=0.5) is None


def test_acknowledging_pushes_who_and_when(
    listeners, acme, alice, too_hot, acme_device, django_capture_on_commit_callbacks
):
    record_breaches([breach(too_hot, acme_device, 1)])
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        acknowledge_alert(Alert.objects.get(), alice, "On it")
    [payload] = channel.receive()["payload"]["alerts"]
    assert payload["state"] == "acknowledged"
    assert payload["acknowledged_by"] == "alice"
    assert payload["acknowledged_at"]


def test_a_pushed_alert_carries_every_field_of_alert_payload(
    listeners, acme, alice, too_hot, acme_device, django_capture_on_commit_callbacks
):
    record_breaches([breach(too_hot, acme_device, 2)])
    acknowledge_alert(Alert.objects.get(), alice, "On it")
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        resolve_alert(Alert.objects.get(), alice, "Fixed")
    [payload] = channel.receive()["payload"]["alerts"]
    alert = Alert.objects.select_related("device", "acknowledged_by", "resolved_by").get()
    assert payload == alert_payload(alert)
    assert (payload["acknowledged_by"], payload["resolved_by"]) == ("alice", "alice")


def test_a_device_going_offline_pushes_its_alert_and_status(
    listeners, acme, acme_device, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    Device.objects.filter(pk=acme_device.pk).update(
        status=DeviceStatus.ONLINE, last_seen=timezone.now() - timedelta(hours=1)
    )
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        detect_offline(timezone.now())
    events = {}
    while (message := channel.receive(timeout=1)) is not None:
        events[message["event"]] = message["payload"]
    assert events["alerts.changed"]["alerts"][0]["title"] == "Freezer 1 is offline"
    assert events["devices.status"]["devices"][0]["key"] == "acme-freezer-1"
    assert events["devices.status"]["devices"][0]["status"] == "offline"


def test_push_to_tenant_outside_a_transaction_sends_at_once(listeners, transactional_db):
    channel = listeners(4242)
    push_to_tenant(4242, "ping", {"n": 1})
    assert channel.receive() == {"type": "fleet.event", "event": "ping", "payload": {"n": 1}}


def test_an_open_alert_counting_on_pushes_only_its_count(
    listeners, acme, too_hot, acme_device, django_capture_on_commit_callbacks
):
    channel = listeners(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        record_breaches([breach(too_hot, acme_device, 3)])
    assert channel.receive()["event"] == "alerts.changed"

    with django_capture_on_commit_callbacks(execute=True):
        record_breaches([breach(too_hot, acme_device, 4)])

    message = channel.receive()
    assert message["event"] == "alerts.counted"
    [payload] = message["payload"]["alerts"]
    assert (payload["id"], payload["count"], payload["state"]) == (
        Alert.objects.get().pk,
        7,
        "open",
    )
