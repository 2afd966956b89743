"""The simulator answers OTA jobs end to end, every part a real process: jobs published to
Mosquitto, images downloaded from daphne with Range requests and checked against their sha256,
progress back through mqtt_ingest and the Celery worker, the reboot seen as a sequence reset and
the new version reported — with no offline alert for the expected reboot."""

from __future__ import annotations

import hashlib
import time

from alerts.models import Alert, AlertKind
from devices.models import Device, DeviceStatus
from ota import services
from ota.models import DeviceUpdate, Rollout, RolloutStatus, UpdateState
from ota.simulation import fetch
from telemetry.models import IngestEvent, IngestEventKind
from tests.ota.conftest import draft, make_fleet

DEVICES = 6


def online(count: int) -> bool:
    return Device.objects.filter(status=DeviceStatus.ONLINE).count() >= count


def test_simulated_devices_download_install_reboot_and_report_the_new_version(
    stack, acme, make_release
):
    make_fleet(acme, DEVICES, online=False)
    release = make_release()
    stack.start_platform()
    stack.start_simulator("--ota-delay", "0.5:1", "--ota-reboot", "1:2")
    stack.wait_until("the devices online", lambda: online(DEVICES))
    before = time.time()

    rollout = services.start_rollout(
        draft(release, wave_plan=[50, 100], soak_time="0", success_threshold=100)
    )
    stack.start_beat()
    stack.wait_until(
        "the rollout completed",
        lambda: Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.COMPLETED,
    )

    progress = services.rollout_progress(rollout)
    assert progress["counts"]["succeeded"] == DEVICES
    assert set(Device.objects.values_list("firmware_version", flat=True)) == {"2.1.0"}
    # Each device rebooted into the new firmware: its sequence numbers restarted...
    stack.wait_until(
        "a sequence reset per device",
        lambda: (
            IngestEvent.objects.filter(kind=IngestEventKind.RESET)
            .values("device")
            .distinct()
            .count()
            == DEVICES
        ),
    )
    # ...its last will said offline, and no offline alert was raised for it.
    assert not Alert.objects.filter(kind=AlertKind.OFFLINE).exists()
    assert all(
        (u.sent_at.timestamp() >= before and u.finished_at >= u.sent_at)
        for u in DeviceUpdate.objects.filter(rollout=rollout)
    )
    assert "downloading 2.1.0" in stack.logs()


def test_a_tampered_image_is_refused_by_the_devices(stack, acme, make_release):
    make_fleet(acme, 2, online=False)
    release = make_release()
    with release.file.open("r+b") as image:  # someone changes the stored file
        image.seek(10)
        image.write(b"EVIL")
    stack.start_platform()
    stack.start_simulator("--ota-delay", "0.2:0.5")
    stack.wait_until("the devices online", lambda: online(2))

    rollout = services.start_rollout(draft(release, wave_plan=[100], failure_threshold=100))
    stack.start_beat()
    stack.wait_until(
        "both devices failing",
        lambda: DeviceUpdate.objects.filter(rollout=rollout, state=UpdateState.FAILED).count() == 2,
    )

    reasons = set(DeviceUpdate.objects.filter(rollout=rollout).values_list("reason", flat=True))
    assert len(reasons) == 1
    assert reasons.pop().startswith("sha256 mismatch")
    assert set(Device.objects.values_list("firmware_version", flat=True)) == {"2.0.0"}


def test_the_download_resumes_with_range_requests(stack, acme, make_release):
    make_fleet(acme, 1)
    release = make_release(content=bytes(range(256)) * 400)
    rollout = services.start_rollout(draft(release, wave_plan=[100]))
    update = DeviceUpdate.objects.get(rollout=rollout)
    stack.start_platform()

    image = fetch(services.download_url(update.pk), release.size)

    assert hashlib.sha256(image).hexdigest() == release.sha256
    assert '" 206 ' in stack.logs()  # daphne's access log: partial content
