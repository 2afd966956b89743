"""OTA in the admin: each tenant sees only its releases, keys, rollouts and device updates; adds
go to the OTA pages; rollouts are paused, resumed and aborted in bulk through the services."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ota import services
from ota.models import DeviceUpdate, FirmwareRelease, Rollout, RolloutStatus, SigningKey
from tests.devices.conftest import admin_url
from tests.ota.conftest import draft

MODELS = [SigningKey, FirmwareRelease, Rollout, DeviceUpdate]


@pytest.fixture
def acme_rollout(make_release, fleet):
    fleet(4)
    return services.start_rollout(draft(make_release(), wave_plan=[100]))


def rows(response) -> set:
    return {row.pk for row in response.context["cl"].result_list}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_another_tenant_sees_none_of_acmes_ota_rows(client, carol, acme_rollout, model):
    client.force_login(carol)
    response = client.get(admin_url(model))
    assert response.status_code == 200
    assert rows(response) == set()
    acme_row = model.objects.first()
    assert client.get(admin_url(acme_row, "change")).status_code == 302


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_an_operator_sees_her_tenants_ota_rows(client, alice, acme_rollout, model):
    client.force_login(alice)
    response = client.get(admin_url(model))
    assert rows(response) == set(model.objects.values_list("pk", flat=True))
    assert client.get(admin_url(model.objects.first(), "change")).status_code == 200


@pytest.mark.parametrize(
    ("model", "page"),
    [
        (FirmwareRelease, "ota:release-new"),
        (SigningKey, "ota:key-new"),
        (Rollout, "ota:rollout-new"),
    ],
)
def test_adding_goes_to_the_ota_pages(client, alice, model, page):
    client.force_login(alice)
    response = client.get(admin_url(model, "add"))
    assert response.status_code == 302
    assert response["Location"] == reverse(page)


def test_an_operator_pauses_a_rollout_from_the_admin(client, alice, acme_rollout):
    client.force_login(alice)
    client.post(
        admin_url(Rollout),
        {"action": "pause", "_selected_action": [acme_rollout.pk]},
    )
    assert Rollout.objects.get().status == RolloutStatus.PAUSED


def test_a_viewer_cannot_act_on_a_rollout(client, bob, acme_rollout):
    client.force_login(bob)
    client.post(admin_url(Rollout), {"action": "abort", "_selected_action": [acme_rollout.pk]})
    assert Rollout.objects.get().status == RolloutStatus.RUNNING


def test_a_release_used_by_a_rollout_cannot_be_deleted(client, alice, acme_rollout):
    client.force_login(alice)
    response = client.post(admin_url(acme_rollout.release, "delete"), {"post": "yes"})
    assert response.status_code == 403
    assert FirmwareRelease.objects.exists()


def test_an_operator_edits_a_releases_notes(client, alice, make_release):
    release = make_release()
    client.force_login(alice)
    response = client.post(
        admin_url(release, "change"),
        {
            "notes": "Fixes the defrost timer",
            "device_types": list(release.device_types.values_list("pk", flat=True)),
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    release.refresh_from_db()
    assert release.notes == "Fixes the defrost timer"
    assert release.version == "2.1.0"
