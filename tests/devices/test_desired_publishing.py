"""The desired shadow reaches the device: every change is published retained on
fleet/{key}/shadow/desired (after commit, from a Celery task), and a group's desired state is set
once for all its devices, with a view of which have not caught up."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from devices import services
from devices.models import DeviceShadow
from devices.tasks import publish_desired_task
from tests.devices.test_broker_accounts import Peer
from tests.factories import make_device


@pytest.fixture
def queued(monkeypatch):
    """The device ids each publish_desired task was queued with (instead of Redis)."""
    calls: list[list[int]] = []
    monkeypatch.setattr(publish_desired_task, "delay", calls.append)
    return calls


def test_a_desired_change_is_published_after_commit(
    acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.update_desired(acme_device, {"reporting_interval": 30})
    assert queued == []
    for callback in callbacks:
        callback()
    assert queued == [[acme_device.pk]]


def test_replacing_the_desired_state_is_published_too(
    acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.replace_desired(acme_device, {"led": "on"})
    assert queued == [[acme_device.pk]]


def test_a_reported_change_publishes_nothing(
    acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.update_reported(acme_device, {"reporting_interval": 30})
    assert queued == []


def test_the_desired_state_waits_retained_for_the_device(acme_device, mosquitto, settings):
    settings.MQTT_URL = mosquitto.url
    services.update_desired(acme_device, {"reporting_interval": 30, "led": "on"})
    services.update_reported(acme_device, {"led": "on"})

    assert services.publish_desired([acme_device.pk]) == 1

    device = Peer(mosquitto, "", "", client_id=acme_device.key)  # connects afterwards
    try:
        assert device.subscribe(f"fleet/{acme_device.key}/shadow/desired")
        device._wait_for(lambda: device.received, "the retained desired state")
        [(topic, payload)] = device.received
    finally:
        device.close()
    assert topic == f"fleet/{acme_device.key}/shadow/desired"
    message = json.loads(payload)
    shadow = DeviceShadow.objects.get(device=acme_device)
    assert message["version"] == shadow.version
    assert message["state"] == {"reporting_interval": 30, "led": "on"}
    assert message["delta"] == {"reporting_interval": 30}


def test_a_group_desired_change_reaches_every_device_of_the_group_in_one_task(
    acme, acme_group, queued, django_capture_on_commit_callbacks
):
    members = [make_device(acme, f"acme-g-{n}") for n in range(3)]
    outsider = make_device(acme, "acme-out")
    for device in members:
        device.groups.add(acme_group)
    services.update_reported(members[0], {"reporting_interval": 30})

    with django_capture_on_commit_callbacks(execute=True):
        count = services.update_group_desired(acme_group, {"reporting_interval": 30})

    assert count == 3
    assert queued == [sorted(d.pk for d in members)]
    acme_group.refresh_from_db()
    assert acme_group.desired == {"reporting_interval": 30}
    shadows = {s.device.key: s for s in DeviceShadow.objects.select_related("device")}
    assert all(shadows[d.key].desired == {"reporting_interval": 30} for d in members)
    assert shadows["acme-out"].desired == {}
    assert shadows["acme-g-0"].delta == {}
    assert shadows["acme-g-1"].delta == {"reporting_interval": 30}
    assert outsider.pk not in queued[0]


def test_the_catch_up_view_names_the_devices_that_do_not_report_it_yet(acme, acme_group, queued):
    members = [make_device(acme, f"acme-g-{n}") for n in range(3)]
    for device in members:
        device.groups.add(acme_group)
    services.update_group_desired(acme_group, {"reporting_interval": 30, "mode": {"eco": True}})
    services.update_reported(members[0], {"reporting_interval": 30, "mode": {"eco": True}})
    services.update_reported(members[1], {"reporting_interval": 30})

    catch_up = services.group_catch_up(acme_group)

    assert (catch_up.total, catch_up.caught_up) == (3, 1)
    assert [(device.key, missing) for device, missing in catch_up.behind] == [
        ("acme-g-1", {"mode": {"eco": True}}),
        ("acme-g-2", {"reporting_interval": 30, "mode": {"eco": True}}),
    ]


def test_an_empty_group_change_is_refused(acme_group):
    with pytest.raises(ValidationError):
        services.update_group_desired(acme_group, {})


def test_putting_devices_in_maintenance_tells_the_dashboards(
    acme, monkeypatch, django_capture_on_commit_callbacks
):
    from iotfleet import live

    pushed: list = []
    monkeypatch.setattr(live, "_send", pushed.extend)
    devices = [make_device(acme, f"acme-m-{n}") for n in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        assert services.set_maintenance(devices) == 2
        assert services.set_maintenance(devices) == 0  # already there: nothing to say
    [(tenant_id, event, payload)] = pushed
    assert (tenant_id, event) == (acme.pk, "devices.status")
    assert sorted((d["key"], d["status"]) for d in payload["devices"]) == [
        ("acme-m-0", "maintenance"),
        ("acme-m-1", "maintenance"),
    ]
