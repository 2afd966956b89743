"""A device inside its update window reboots on purpose: no offline alert for that; one that does
not come back before its update times out gets its offline alert then."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import Alert, AlertKind
from alerts.services import detect_offline
from devices.models import Device, DeviceStatus
from ota import services
from ota.models import DeviceUpdate, UpdateState
from tests.ota.conftest import device_message, draft, ingest, report


@pytest.fixture
def updating(make_release, fleet):
    """One online device that was sent its job and is installing."""
    (device,) = fleet(1)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[100], update_timeout=timedelta(minutes=15))
    )
    update = DeviceUpdate.objects.select_related("device").get(rollout=rollout)
    ingest([report(update, "installing")])
    return rollout, update, device


def offline_alerts(device) -> int:
    return Alert.objects.filter(kind=AlertKind.OFFLINE, device=device).count()


def last_will(device):
    return ingest([device_message(device.key, "status", {"state": "offline"})])


def test_the_reboot_of_an_update_raises_no_offline_alert(updating):
    _rollout, update, device = updating

    last_will(device)

    device.refresh_from_db()
    assert device.status == DeviceStatus.OFFLINE
    assert offline_alerts(device) == 0
    ingest(
        [
            device_message(device.key, "status", {"state": "online", "firmware_version": "2.1.0"}),
            report(update, "succeeded", version="2.1.0"),
        ]
    )
    assert DeviceUpdate.objects.get(pk=update.pk).state == UpdateState.SUCCEEDED
    assert offline_alerts(device) == 0


def test_offline_detection_leaves_an_updating_device_alone(updating):
    _rollout, _update, device = updating
    later = timezone.now() + timedelta(minutes=10)

    assert detect_offline(later) == 1  # silent past its heartbeat: it is offline...

    assert offline_alerts(device) == 0  # ...but rebooting into new firmware is expected


def test_a_device_that_does_not_come_back_within_the_window_raises_its_alert(updating):
    rollout, update, device = updating
    last_will(device)

    services.advance_rollout(rollout.pk, timezone.now() + timedelta(minutes=16))

    assert DeviceUpdate.objects.get(pk=update.pk).state == UpdateState.TIMED_OUT
    alert = Alert.objects.get(kind=AlertKind.OFFLINE, device=device)
    assert alert.title == f"{device.name} is offline"


def test_after_its_update_a_device_going_offline_alerts_as_usual(updating):
    _rollout, update, device = updating
    ingest([report(update, "succeeded", version="2.1.0")])

    last_will(device)

    assert offline_alerts(device) == 1
    assert Device.objects.get(pk=device.pk).firmware_version == "2.1.0"
