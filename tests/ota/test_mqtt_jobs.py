"""Jobs reach the devices over a real broker: what a subscriber on fleet/+/ota receives is what
the rollout decided — wave 1 only while its failures pause the rollout, wave 2 after resuming,
nothing after an abort."""

from __future__ import annotations

import hashlib
import json

from django.urls import reverse

from ota import services
from ota.models import DeviceUpdate, PauseReason, RolloutStatus, UpdateState
from tests.ota.conftest import device_message, draft, ingest


def keys_of(updates) -> set[str]:
    return {u.device.key for u in updates}


def answer(jobs_received, fail: set[str] = frozenset()):
    """The devices answer their jobs: `fail` fail, the others install the new version."""
    messages = []
    for key, job in jobs_received:
        if key in fail:
            messages.append(
                device_message(
                    key, "ota/status", {"job": job["job"], "state": "failed", "reason": "bad crc"}
                )
            )
        else:
            messages += [
                device_message(key, "ota/status", {"job": job["job"], "state": "installing"}),
                device_message(
                    key,
                    "ota/status",
                    {"job": job["job"], "state": "succeeded", "version": job["version"]},
                ),
            ]
    ingest(messages)


def test_a_job_carries_version_url_sha256_and_signature(
    make_release, fleet, jobs, client, django_capture_on_commit_callbacks
):
    (device,) = fleet(1)
    release = make_release()
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(draft(release, wave_plan=[100]))

    ((key, job),) = jobs.take(1)
    update = DeviceUpdate.objects.get(rollout=rollout)
    assert key == device.key
    assert job["job"] == update.pk
    assert job["rollout"] == rollout.pk
    assert (job["version"], job["size"], job["sha256"]) == ("2.1.0", release.size, release.sha256)
    assert job["signature"] == release.signature
    assert job["key"] == release.signing_key.fingerprint
    assert job["url"].startswith("http://127.0.0.1:")
    path = job["url"].split("://", 1)[1].split("/", 1)[1]
    body = b"".join(client.get("/" + path).streaming_content)
    assert hashlib.sha256(body).hexdigest() == job["sha256"]
    assert reverse("ota:download", kwargs={"token": "x"}).startswith("/ota/download/")


def test_failures_in_wave_1_pause_the_rollout_and_wave_2_is_never_sent_a_job(
    make_release, fleet, jobs, django_capture_on_commit_callbacks
):
    fleet(40)
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(
            draft(
                make_release(),
                wave_plan=[25, 100],
                failure_threshold=20,
                min_finished=5,
                soak_time="0",
            )
        )
    wave1 = keys_of(DeviceUpdate.objects.filter(rollout=rollout, wave=1).select_related("device"))
    received = jobs.take(10)
    assert {key for key, _ in received} == wave1

    # Six devices finish, three of them failing: 50 % > 20 %, with the 5 finished it takes.
    with django_capture_on_commit_callbacks(execute=True):
        answer(received[:6], fail={key for key, _ in received[:3]})
        services.advance_rollouts()

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED, rollout.pause_detail
    assert rollout.pause_reason == PauseReason.FAILURE_THRESHOLD
    assert "3 of 6 finished devices failed" in rollout.pause_detail
    assert jobs.drain(1.0) == []
    assert {key for key, _ in jobs.jobs} == wave1
    wave2 = DeviceUpdate.objects.filter(rollout=rollout, wave=2)
    assert set(wave2.values_list("state", flat=True)) == {UpdateState.QUEUED}
    assert all(u.attempts == 0 for u in wave2)


def test_after_resuming_wave_1_finishes_and_wave_2_is_sent(
    make_release, fleet, jobs, django_capture_on_commit_callbacks
):
    fleet(20)
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(
            draft(
                make_release(),
                wave_plan=[50, 100],
                failure_threshold=10,
                min_finished=5,
                success_threshold=80,
                soak_time="0",
                health_gate=False,
            )
        )
    received = jobs.take(10)
    with django_capture_on_commit_callbacks(execute=True):
        answer(received[:5], fail={received[0][0]})
        services.advance_rollouts()
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED

    with django_capture_on_commit_callbacks(execute=True):
        services.resume_rollout(rollout)
        answer(received[5:])
        services.advance_rollouts()

    rollout.refresh_from_db()
    assert rollout.current_wave == 2
    wave2 = keys_of(DeviceUpdate.objects.filter(rollout=rollout, wave=2).select_related("device"))
    assert {key for key, _ in jobs.take(10)} == wave2
    with django_capture_on_commit_callbacks(execute=True):
        answer([(k, j) for k, j in jobs.jobs[10:]])
        services.advance_rollouts()
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.COMPLETED


def test_after_an_abort_no_device_is_sent_a_job(
    make_release, fleet, jobs, django_capture_on_commit_callbacks
):
    fleet(20)
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(
            draft(make_release(), wave_plan=[100], max_concurrent=5, soak_time="0")
        )
    received = jobs.take(5)

    with django_capture_on_commit_callbacks(execute=True):
        services.abort_rollout(rollout)
        answer(received)  # the devices already updating finish
        services.advance_rollouts()

    assert jobs.drain(1.0) == []
    counts = services.rollout_progress(rollout)["counts"]
    assert (counts["succeeded"], counts["cancelled"]) == (5, 15)


def test_a_broker_that_is_down_puts_the_jobs_back_with_the_reason(
    make_release, fleet, settings, eager_celery, django_capture_on_commit_callbacks
):
    from tests.servers import free_port

    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"
    fleet(3)
    with django_capture_on_commit_callbacks(execute=True):
        rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))

    rollout.refresh_from_db()
    assert "jobs not sent, retrying: Could not reach the MQTT broker" in rollout.last_error
    assert set(DeviceUpdate.objects.filter(rollout=rollout).values_list("state", "attempts")) == {
        (UpdateState.QUEUED, 0)
    }
    assert json.dumps(services.rollout_progress(rollout))  # the page can still show it
