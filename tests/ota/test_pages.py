"""The OTA pages: firmware upload, the rollout wizard with its preview, the rollout page with
its live sections, the confirmation of each action, and who may do what."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from ota import services
from ota.models import DeviceUpdate, FirmwareRelease, Rollout, RolloutStatus
from tests.factories import make_device_type
from tests.ota.conftest import FIRMWARE, draft, ingest, report, upload


def wizard_data(release, **overrides) -> dict:
    data = {
        "release": release.pk,
        "name": "",
        "tags": "",
        "wave_mode": "percent",
        "wave_plan": "10, 50, 100",
        "soak_minutes": 30,
        "success_threshold": 95,
        "failure_threshold": 5,
        "min_finished": 10,
        "max_concurrent": 100,
        "timeout_minutes": 30,
        "health_gate": "on",
    }
    return {**data, **overrides}


def test_an_operator_uploads_a_signed_release_through_the_form(client, alice, acme_key, signer):
    client.force_login(alice)
    freezer = make_device_type(alice.memberships.get().tenant, "Freezer")
    response = client.post(
        reverse("ota:release-new"),
        {
            "version": "2.1.0",
            "device_types": [freezer.pk],
            "file": upload(),
            "signature": signer.sign(FIRMWARE),
            "notes": "Faster defrost",
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    release = FirmwareRelease.objects.get()
    page = client.get(reverse("ota:releases")).text
    assert "2.1.0" in page
    assert release.sha256[:16] in page
    assert "signed" in page


def test_a_tampered_upload_is_refused_on_the_form_with_the_reason(client, alice, acme_key, signer):
    client.force_login(alice)
    freezer = make_device_type(alice.memberships.get().tenant, "Freezer")
    response = client.post(
        reverse("ota:release-new"),
        {
            "version": "2.1.0",
            "device_types": [freezer.pk],
            "file": upload(FIRMWARE + b"!"),
            "signature": signer.sign(FIRMWARE),
        },
    )
    assert response.status_code == 200
    assert "does not verify" in response.text
    assert not FirmwareRelease.objects.exists()


def test_a_viewer_cannot_open_the_upload_form(client, bob):
    client.force_login(bob)
    assert client.get(reverse("ota:release-new")).status_code == 403


def test_the_wizard_previews_the_waves(client, alice, make_release, fleet):
    fleet(200)
    release = make_release()
    client.force_login(alice)
    page = client.get(reverse("ota:rollout-new") + f"?release={release.pk}").text
    assert 'id="rollout-wizard"' in page
    assert "ota/wizard.js" in page

    response = client.post(reverse("ota:rollout-preview"), wizard_data(release))

    assert response.status_code == 200
    assert '<strong id="preview-total">200</strong>' in response.text
    assert [int(n) for n in _cells(response.text, "data-size")] == [20, 80, 100]


def _cells(html: str, marker: str) -> list[str]:
    import re

    return re.findall(rf"<td class=\"num\" {marker}>(\d+)</td>", html)


def test_the_preview_says_what_is_wrong_with_the_waves(client, alice, make_release):
    client.force_login(alice)
    response = client.post(
        reverse("ota:rollout-preview"), wizard_data(make_release(), wave_plan="50, 10")
    )
    assert "cumulative" in response.text


def test_the_wizard_creates_a_draft(client, alice, make_release, fleet):
    fleet(10)
    release = make_release()
    client.force_login(alice)

    response = client.post(
        reverse("ota:rollout-new"), wizard_data(release, tags="pilot, eu", window_start="01:00")
    )
    assert response.status_code == 200
    assert "Give both ends of the maintenance window" in response.text

    response = client.post(reverse("ota:rollout-new"), wizard_data(release, tags="pilot, eu"))
    rollout = Rollout.objects.get()
    assert response.url == reverse("ota:rollout", args=[rollout.pk])
    assert (rollout.status, rollout.tags, rollout.wave_plan) == (
        "draft",
        ["pilot", "eu"],
        [10, 50, 100],
    )
    assert rollout.soak_time == timedelta(minutes=30)


@pytest.mark.parametrize("field", ["soak_minutes", "timeout_minutes"])
def test_the_wizard_refuses_a_duration_too_long_to_store_with_a_field_error(
    client, alice, make_release, field
):
    client.force_login(alice)
    response = client.post(
        reverse("ota:rollout-new"), wizard_data(make_release(), **{field: 10**13})
    )
    assert response.status_code == 200
    assert "less than or equal to" in response.context["form"].errors[field][0]
    assert not Rollout.objects.exists()


def test_each_action_is_confirmed_with_what_it_will_do(client, alice, make_release, fleet):
    fleet(20)
    rollout = draft(make_release(), wave_plan=[25, 100], max_concurrent=50)
    client.force_login(alice)
    page = client.get(reverse("ota:rollout", args=[rollout.pk])).text
    assert 'data-action="start"' in page

    confirm = client.get(reverse("ota:rollout-action", args=[rollout.pk, "start"])).text
    assert "20 devices are queued for 2.1.0 in 2 waves (5, 15)." in confirm
    assert "Wave 1&#x27;s 5 devices are sent the job now" in confirm
    assert Rollout.objects.get().status == RolloutStatus.DRAFT  # a GET changes nothing

    client.post(reverse("ota:rollout-action", args=[rollout.pk, "start"]))
    assert Rollout.objects.get().status == RolloutStatus.RUNNING
    confirm = client.get(reverse("ota:rollout-action", args=[rollout.pk, "abort"])).text
    assert "The 15 devices not sent the job yet are cancelled." in confirm
    confirm = client.get(reverse("ota:rollout-action", args=[rollout.pk, "pause"])).text
    assert "The 5 devices updating right now finish their update" in confirm


def test_the_rollback_page_proposes_the_previous_version_and_starts_the_rollback(
    client, alice, make_release, fleet
):
    fleet(4)  # running 2.0.0
    previous = make_release("2.0.0")
    rollout = draft(make_release("2.1.0"), wave_plan=[100], failure_threshold=100)
    services.start_rollout(rollout)
    failed = DeviceUpdate.objects.filter(rollout=rollout).select_related("device").first()
    ingest([report(failed, "failed", reason="flash CRC mismatch")])
    client.force_login(alice)
    url = reverse("ota:rollout-action", args=[rollout.pk, "rollback"])

    confirm = client.get(url)
    assert confirm.context["form"]["release"].value() == previous.pk
    assert "They ran before: 2.0.0 (1)." in confirm.text  # the one that finished

    refused = client.post(url, {"release": previous.pk, "include_updated": ""})
    assert refused.status_code == 200
    assert refused.context["form"].errors["allow_downgrade"]
    done = client.post(
        url, {"release": previous.pk, "include_updated": "", "allow_downgrade": "on"}
    )
    rollback = Rollout.objects.get(rollback_of=rollout)
    assert done.url == reverse("ota:rollout", args=[rollback.pk])
    assert rollback.release == previous
    assert list(rollback.updates.values_list("device_id", flat=True)) == [failed.device_id]


def test_an_action_the_state_refuses_comes_back_with_the_reason(client, alice, make_release):
    rollout = draft(make_release())
    client.force_login(alice)
    response = client.post(reverse("ota:rollout-action", args=[rollout.pk, "pause"]), follow=True)
    assert "Only a running rollout can be paused" in response.text


def test_a_viewer_sees_the_rollout_but_no_buttons_and_cannot_act(client, bob, make_release):
    rollout = draft(make_release())
    client.force_login(bob)
    page = client.get(reverse("ota:rollout", args=[rollout.pk])).text
    assert rollout.name in page
    assert "data-action=" not in page
    assert client.post(reverse("ota:rollout-action", args=[rollout.pk, "start"])).status_code == 403
    assert Rollout.objects.get().status == RolloutStatus.DRAFT


def test_another_tenant_gets_404(client, carol, make_release):
    rollout = draft(make_release())
    client.force_login(carol)
    for name in ("ota:rollout", "ota:rollout-progress"):
        assert client.get(reverse(name, args=[rollout.pk])).status_code == 404
    response = client.post(reverse("ota:rollout-action", args=[rollout.pk, "start"]))
    assert response.status_code == 404
    assert rollout.name not in client.get(reverse("ota:rollouts")).text


def test_the_rollout_page_is_live_and_shows_failures_with_reasons(
    client, alice, make_release, fleet
):
    fleet(10)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100], failure_threshold=100))
    failed = DeviceUpdate.objects.filter(rollout=rollout).select_related("device")[0]
    ingest([report(failed, "failed", reason="flash CRC mismatch")])
    client.force_login(alice)

    page = client.get(reverse("ota:rollout", args=[rollout.pk])).text
    assert f'data-live-url="/ota/rollouts/{rollout.pk}/progress/"' in page
    assert 'data-live-events="rollouts.progress"' in page
    partial = client.get(reverse("ota:rollout-progress", args=[rollout.pk])).text
    assert "flash CRC mismatch" in partial
    assert failed.device.key in partial
    assert 'class="failed" data-state="failed" style="width: 10.00%"' in partial


def test_a_health_gate_pause_shows_its_evidence(client, alice, make_release, fleet):
    devices = fleet(50)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[20, 100], soak_time=timedelta(minutes=30))
    )
    t0 = timezone.now()
    wave1 = list(DeviceUpdate.objects.filter(rollout=rollout, wave=1).select_related("device"))
    ingest([report(u, "succeeded", t0, version="2.1.0") for u in wave1])
    services.advance_rollout(rollout.pk, t0)
    quiet = {u.device_id for u in wave1[:5]}
    from tests.ota.test_health_gate import telemetry

    telemetry([d for d in devices if d.pk not in quiet], t0 + timedelta(minutes=28))
    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=31))
    client.force_login(alice)

    partial = client.get(reverse("ota:rollout-progress", args=[rollout.pk])).text

    assert "Paused: Health gate: updated devices are worse" in partial
    assert 'data-measure="offline"' in partial
    assert "5 of 10 (50 %)" in partial
    assert "0 of 40 (0 %)" in partial
    confirm = client.get(reverse("ota:rollout-action", args=[rollout.pk, "resume"])).text
    assert "You override the gate of wave 1: the next wave starts now." in confirm


def test_the_overview_panel_lists_rollouts_in_progress(client, alice, make_release, fleet):
    fleet(5)
    running = services.start_rollout(draft(make_release(), name="Spring update"))
    draft(make_release("2.2.0"), name="Not started")
    client.force_login(alice)
    panel = client.get(reverse("ota:in-progress")).text
    assert "Spring update" in panel
    assert "Not started" not in panel
    assert f'data-rollout="{running.pk}"' in panel


def test_the_device_section_shows_its_updates(client, alice, make_release, fleet):
    (device,) = fleet(1)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    update = DeviceUpdate.objects.select_related("device").get(rollout=rollout)
    ingest([report(update, "downloading", progress=40)])
    client.force_login(alice)
    section = client.get(reverse("ota:device-firmware", args=[device.key])).text
    assert "Updating to <strong>2.1.0</strong>" in section
    assert "40 %" in section


@pytest.mark.parametrize("name", ["ota:releases", "ota:rollouts", "ota:rollout-new"])
def test_pages_need_a_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert "/login/" in response.url


def test_the_device_page_has_the_live_firmware_section(client, alice, make_release, fleet):
    (device,) = fleet(1)
    services.start_rollout(draft(make_release(), wave_plan=[100]))
    client.force_login(alice)
    page = client.get(reverse("devices:detail", args=[device.key])).text
    assert 'id="device-firmware"' in page
    assert f'data-live-url="/ota/devices/{device.key}/firmware/"' in page
    assert "Updating to <strong>2.1.0</strong>" in page


def test_the_overview_has_the_live_rollouts_panel(client, alice, make_release, fleet):
    fleet(2)
    services.start_rollout(draft(make_release(), name="Spring update"))
    client.force_login(alice)
    page = client.get(reverse("dashboards:overview")).text
    assert 'id="rollouts-in-progress"' in page
    assert 'data-live-url="/ota/rollouts/in-progress/"' in page
    assert "Spring update" in page


def test_the_demo_seeds_signed_firmware_once(db, media_root):
    from io import StringIO

    from django.core.management import call_command

    call_command("seed_demo", devices=5, stdout=StringIO())
    call_command("seed_demo", devices=5, stdout=StringIO())

    releases = FirmwareRelease.objects.filter(tenant__slug="acme").order_by("version")
    assert [r.version for r in releases] == ["2.0.1", "2.1.0"]
    assert all(r.signing_key and r.device_types.get().name == "Freezer" for r in releases)
