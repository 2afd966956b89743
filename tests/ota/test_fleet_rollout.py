"""A release rolled out to 1000 devices in three waves, to completion, over a real broker.

The platform's side is the production path: jobs published by the Celery task through
devices/publishing.py after each commit, firmware served by the download view from its signed
URLs, reports taken by the real MQTT ingest worker and stored by `ingest_batch`, waves advanced by
the beat's service. The devices are one in-test fleet on one MQTT connection (the simulator's
own MQTT path is proven in test_simulator_ota.py): each downloads its image, checks the sha256
and reports downloading, installing and the outcome.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from devices.models import Device
from ota import services
from ota.models import DeviceUpdate, RolloutStatus, UpdateState
from tests.ota.conftest import draft, make_fleet
from tests.ota.fleet import Ingest

DEVICES = 1000
WAVES = [100, 400, 500]  # 10 %, 50 %, 100 %


@pytest.fixture
def ingest_worker(mosquitto):
    worker = Ingest(mosquitto.url)
    yield worker
    worker.close()


def download(client, url: str) -> bytes:
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    response = client.get(path)
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def test_a_release_reaches_1000_devices_in_three_waves(
    acme, make_release, jobs, ingest_worker, client, django_capture_on_commit_callbacks
):
    started = time.monotonic()
    make_fleet(acme, DEVICES)
    release = make_release()
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(
            draft(
                release,
                wave_plan=[10, 50, 100],
                soak_time="0",
                success_threshold=95,
                failure_threshold=5,
                min_finished=50,
                max_concurrent=DEVICES,
            )
        )
    failed: set[str] = set()
    timings = []
    for number, size in enumerate(WAVES, 1):
        wave_started = time.monotonic()
        received = jobs.take(size, timeout=120)
        assert jobs.drain(0.3) == [], f"more jobs than wave {number} holds"
        rollout.refresh_from_db()
        assert rollout.current_wave == number
        in_wave = set(
            DeviceUpdate.objects.filter(rollout=rollout, wave=number).values_list(
                "device__key", flat=True
            )
        )
        assert {key for key, _ in received} == in_wave
        failed.add(received[0][0])  # one device per wave fails its install
        acknowledgements = []
        for key, job in received:
            image = download(client, job["url"])
            assert hashlib.sha256(image).hexdigest() == job["sha256"]
            topic = f"fleet/{key}/ota/status"
            acknowledgements.append(
                jobs.publish(topic, {"job": job["job"], "state": "downloading", "progress": 100})
            )
            acknowledgements.append(jobs.publish(topic, {"job": job["job"], "state": "installing"}))
            outcome = (
                {"state": "failed", "reason": "battery too low to flash"}
                if key in failed
                else {"state": "succeeded", "version": job["version"]}
            )
            acknowledgements.append(jobs.publish(topic, {"job": job["job"], **outcome}))
        for info in acknowledgements:
            info.wait_for_publish(timeout=30)
        with django_capture_on_commit_callbacks(execute=True):
            ingest_worker.store(3 * size)
            services.advance_rollouts()
        timings.append(time.monotonic() - wave_started)

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.COMPLETED
    progress = services.rollout_progress(rollout)
    assert [w["size"] for w in progress["waves"]] == WAVES
    assert (progress["counts"]["succeeded"], progress["counts"]["failed"]) == (DEVICES - 3, 3)
    assert len(jobs.jobs) == DEVICES
    assert len({key for key, _ in jobs.jobs}) == DEVICES  # one job per device
    assert Device.objects.filter(firmware_version="2.1.0").count() == DEVICES - 3
    assert set(
        DeviceUpdate.objects.filter(state=UpdateState.FAILED).values_list("reason", flat=True)
    ) == {"battery too low to flash"}
    print(
        f"\n1000-device rollout: {time.monotonic() - started:.1f} s in all; waves "
        + ", ".join(f"{size} devices in {t:.1f} s" for size, t in zip(WAVES, timings, strict=True))
    )
