"""Device OTA reports are validated at the edge like every device message: a bad one is rejected
with a reason the operator can read, and the messages around it are taken as usual."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device
from ota import services
from ota.models import DeviceUpdate, UpdateState
from telemetry.ingest import subscriptions
from telemetry.models import RejectedMessage
from telemetry.validation import OTA_STATUS, REJECTED, parse_message
from tests.ota.conftest import device_message, draft, ingest, report


def test_mqtt_ingest_subscribes_to_ota_progress():
    assert "$share/ingest/fleet/+/ota/status" in [topic for topic, _ in subscriptions()]


def test_a_valid_report_becomes_an_ota_entry():
    entry = parse_message(
        "fleet/fw-1/ota/status", b'{"job": 4, "state": "downloading", "progress": 12.5}', 1
    )
    assert entry == [
        OTA_STATUS,
        "fw-1",
        1,
        {"job": 4, "state": "downloading", "progress": 12, "version": None, "reason": ""},
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"job": 4, "state": "exploded"}, '"state" must be one of downloading, installing'),
        ({"job": "4", "state": "installing"}, '"job" must be the positive integer id'),
        ({"job": 4, "state": "downloading", "progress": 140}, '"progress" must be a number'),
        ({"job": 4, "state": "succeeded", "version": 2.1}, '"version" must be a version string'),
        ({"job": 4, "state": "failed", "reason": ["x"]}, '"reason" must be text'),
        ([1, 2], "an OTA status is a JSON object"),
    ],
)
def test_a_bad_report_is_rejected_with_the_reason(payload, reason):
    entry = parse_message("fleet/fw-1/ota/status", json.dumps(payload).encode(), 1)
    assert entry[0] == REJECTED
    assert reason in entry[4]


def test_a_bad_firmware_version_in_a_status_is_rejected():
    entry = parse_message(
        "fleet/fw-1/status", json.dumps({"state": "online", "firmware_version": 7}).encode(), 1
    )
    assert entry[0] == REJECTED
    assert '"firmware_version" must be a version string' in entry[4]


def test_a_failure_without_a_reason_gets_one():
    entry = parse_message("fleet/fw-1/ota/status", b'{"job": 4, "state": "failed"}', 1)
    assert entry[3]["reason"] == "the device reported a failure without a reason"


def test_bad_reports_are_recorded_and_good_ones_beside_them_taken(make_release, fleet):
    fleet(2)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    good, other = DeviceUpdate.objects.filter(rollout=rollout).select_related("device")

    result = ingest(
        [
            report(good, "installing"),
            device_message(other.device.key, "ota/status", {"job": other.pk, "state": "??"}),
            device_message("nobody", "ota/status", {"job": 1, "state": "installing"}),
        ]
    )

    assert result.rejected == 2
    assert DeviceUpdate.objects.get(pk=good.pk).state == UpdateState.INSTALLING
    assert DeviceUpdate.objects.get(pk=other.pk).state == UpdateState.SENT
    rejection = RejectedMessage.objects.get(device=other.device)
    assert rejection.topic == f"fleet/{other.device.key}/ota/status"
    assert '"state" must be one of' in rejection.reason
    unknown = RejectedMessage.objects.get(device_key="nobody")
    assert unknown.topic == "fleet/nobody/ota/status"
    assert "unknown device 'nobody'" in unknown.reason


def test_a_report_counts_as_the_device_being_heard(make_release, fleet):
    (device,) = fleet(1)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    update = DeviceUpdate.objects.select_related("device").get(rollout=rollout)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Device.objects.filter(pk=device.pk).update(last_seen=an_hour_ago)

    ingest([report(update, "downloading", progress=5)])

    device.refresh_from_db()
    assert device.last_seen > an_hour_ago + timedelta(minutes=59)
    update.refresh_from_db()
    assert (update.state, update.progress) == (UpdateState.DOWNLOADING, 5)
