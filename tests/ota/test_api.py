"""The OTA API: releases uploaded as multipart with their signature checked, rollouts created,
previewed and driven by actions, progress read back; viewers read, other tenants get 404."""

from __future__ import annotations

import hashlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ota.models import DeviceUpdate, FirmwareRelease, Rollout, RolloutStatus, UpdateState
from tests.api.clients import client_as
from tests.factories import make_device_type
from tests.ota.conftest import FIRMWARE, draft, ingest, report, upload


def url(name: str, *args) -> str:
    return reverse(name, args=args)


@pytest.fixture
def freezer(acme):
    return make_device_type(acme, "Freezer")


def test_an_operator_uploads_a_signed_release(alice, acme_key, signer, freezer):
    response = client_as(alice).post(
        url("firmware-release-list"),
        {
            "version": "2.1.0",
            "file": upload(),
            "device_types": [freezer.pk],
            "signature": signer.sign(FIRMWARE),
            "sha256": hashlib.sha256(FIRMWARE).hexdigest(),
            "notes": "Faster defrost",
        },
        format="multipart",
    )

    assert response.status_code == 201, response.data
    assert response.data["sha256"] == hashlib.sha256(FIRMWARE).hexdigest()
    assert response.data["signing_key"] == acme_key.fingerprint
    assert response.data["size"] == len(FIRMWARE)
    assert "file" not in response.data


def test_a_tampered_upload_is_refused_with_the_reason(alice, acme_key, signer, freezer):
    response = client_as(alice).post(
        url("firmware-release-list"),
        {
            "version": "2.1.0",
            "file": upload(FIRMWARE + b"backdoor"),
            "device_types": [freezer.pk],
            "signature": signer.sign(FIRMWARE),
        },
        format="multipart",
    )

    assert response.status_code == 400
    assert "does not verify" in response.data["signature"][0]
    assert not FirmwareRelease.objects.exists()


def test_a_release_version_cannot_be_changed(alice, make_release):
    release = make_release()
    response = client_as(alice).patch(
        url("firmware-release-detail", release.pk), {"version": "9.9.9"}, format="json"
    )
    assert response.status_code == 400
    assert "Fixed once uploaded" in response.data["version"][0]


def test_a_release_used_by_a_rollout_cannot_be_deleted(alice, make_release):
    release = make_release()
    draft(release)
    response = client_as(alice).delete(url("firmware-release-detail", release.pk))
    assert response.status_code == 409
    assert "used by 1 rollout" in response.data["detail"]


def test_the_preview_counts_devices_per_wave(alice, make_release, fleet):
    fleet(200)
    release = make_release()
    response = client_as(alice).post(
        url("rollout-preview"),
        {"release": release.pk, "wave_mode": "percent", "wave_plan": [1, 10, 50, 100]},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert response.data["waves"] == [2, 18, 80, 100]
    assert response.data["devices"] == 200
    assert not Rollout.objects.exists()


def test_a_rollout_is_created_started_paused_resumed_and_aborted(alice, make_release, fleet):
    fleet(20)
    client = client_as(alice)
    created = client.post(
        url("rollout-list"),
        {
            "release": make_release().pk,
            "wave_mode": "count",
            "wave_plan": [5, 100],
            "soak_time": "00:10:00",
            "failure_threshold": 10,
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    assert (created.data["status"], created.data["name"]) == ("draft", "2.1.0 rollout")
    pk = created.data["id"]

    started = client.post(url("rollout-start", pk))
    assert started.status_code == 200, started.data
    assert started.data["status"] == "running"
    assert started.data["progress"]["sent"] == 5

    assert client.post(url("rollout-start", pk)).status_code == 409
    assert client.post(url("rollout-pause", pk)).data["status"] == "paused"
    assert client.post(url("rollout-resume", pk)).data["status"] == "running"
    edit = client.patch(url("rollout-detail", pk), {"name": "x"}, format="json")
    assert edit.status_code == 409
    assert "only a draft can be edited" in edit.data["detail"]
    aborted = client.post(url("rollout-abort", pk))
    assert aborted.data["status"] == "aborted"
    assert aborted.data["progress"]["cancelled"] == 15
    assert client.delete(url("rollout-detail", pk)).status_code == 409


def test_progress_and_device_updates_are_read_back(alice, make_release, fleet):
    fleet(10)
    rollout = draft(make_release(), wave_plan=[50, 100])
    client = client_as(alice)
    client.post(url("rollout-start", rollout.pk))
    failed = DeviceUpdate.objects.filter(rollout=rollout, wave=1).select_related("device")[0]
    ingest([report(failed, "failed", reason="flash CRC mismatch")])

    progress = client.get(url("rollout-progress", rollout.pk)).data
    assert [w["size"] for w in progress["waves"]] == [5, 5]
    assert progress["waves"][0]["counts"]["failed"] == 1
    assert progress["counts"]["queued"] == 5

    rows = client.get(url("device-update-list"), {"rollout": rollout.pk, "state": "failed"})
    assert [(r["device"], r["reason"]) for r in rows.data["results"]] == [
        (failed.device.key, "flash CRC mismatch")
    ]


def test_retry_and_rollback_through_the_api(alice, make_release, fleet):
    fleet(4)
    make_release("2.0.0")
    rollout = draft(make_release("2.1.0"), wave_plan=[100], failure_threshold=100)
    client = client_as(alice)
    client.post(url("rollout-start", rollout.pk))
    first, *_ = DeviceUpdate.objects.filter(rollout=rollout).select_related("device")
    ingest([report(first, "failed", reason="power loss")])

    retried = client.post(url("rollout-retry", rollout.pk), {"wave": 1}, format="json")
    assert retried.status_code == 200
    assert DeviceUpdate.objects.get(pk=first.pk).state == UpdateState.SENT
    ingest([report(first, "failed", reason="power loss")])

    refused = client.post(url("rollout-rollback", rollout.pk), {}, format="json")
    assert refused.status_code == 400
    assert "allowing the downgrade" in refused.data["allow_downgrade"][0]
    rollback = client.post(
        url("rollout-rollback", rollout.pk),
        {"include_updated": False, "allow_downgrade": True},
        format="json",
    )
    assert rollback.status_code == 201, rollback.data
    assert rollback.data["rollback_of"] == rollout.pk
    assert rollback.data["progress"]["sent"] == 1
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.ABORTED


def test_a_viewer_reads_but_cannot_act(bob, alice, make_release, fleet):
    fleet(3)
    rollout = draft(make_release(), wave_plan=[100])
    client = client_as(bob)
    assert client.get(url("rollout-progress", rollout.pk)).status_code == 200
    assert client.post(url("rollout-start", rollout.pk)).status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.DRAFT


def test_another_tenant_cannot_start_or_see_a_rollout(carol, make_release, fleet):
    fleet(3)
    rollout = draft(make_release(), wave_plan=[100])
    client = client_as(carol)
    assert client.post(url("rollout-start", rollout.pk)).status_code == 404
    assert client.get(url("rollout-progress", rollout.pk)).status_code == 404
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.DRAFT


def test_a_rollout_cannot_use_another_tenants_release(carol, make_release):
    release = make_release()
    response = client_as(carol).post(
        url("rollout-list"), {"release": release.pk, "wave_plan": [100]}, format="json"
    )
    assert response.status_code == 400
    assert "does not exist" in str(response.data["release"])


def finished_rollouts(release, devices, count: int) -> list[Rollout]:
    """`count` rollouts, the n-th with n + 1 succeeded devices and one failed."""
    rollouts = [draft(release, name=f"r{n}") for n in range(count)]
    now = timezone.now()
    DeviceUpdate.objects.bulk_create(
        DeviceUpdate(
            rollout=rollout,
            device=device,
            wave=1,
            state=UpdateState.FAILED if number == 0 else UpdateState.SUCCEEDED,
            queued_at=now,
        )
        for n, rollout in enumerate(rollouts)
        for number, device in enumerate(devices[: n + 2])
    )
    return rollouts


def test_the_rollout_list_counts_progress_in_a_fixed_number_of_queries(alice, make_release, fleet):
    devices = fleet(21)
    release = make_release()
    client = client_as(alice)
    finished_rollouts(release, devices, 1)
    with CaptureQueriesContext(connection) as one:
        assert client.get(url("rollout-list")).status_code == 200

    finished_rollouts(release, devices, 18)
    draft(release, name="not started")
    with CaptureQueriesContext(connection) as twenty:
        listed = client.get(url("rollout-list"), {"page_size": 50}).data["results"]

    assert len(listed) == 20
    assert len(twenty.captured_queries) == len(one.captured_queries)
    progress = {row["name"]: row["progress"] for row in listed}
    assert progress["r5"]["succeeded"] == 6
    assert progress["r5"]["failed"] == 1
    assert progress["r5"]["queued"] == 0
    assert set(progress["r5"]) == set(UpdateState.values)
    assert sum(progress["not started"].values()) == 0
