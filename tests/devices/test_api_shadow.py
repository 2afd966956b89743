"""The device shadow over the API: read it, change the desired side, optimistic versions."""

from __future__ import annotations

import pytest
from django.urls import reverse

from devices.models import DeviceShadow
from devices.services import update_desired, update_reported
from tests.api.clients import client_as


def shadow_url(device) -> str:
    return reverse("device-shadow", kwargs={"key": device.key})


@pytest.fixture
def reported_shadow(acme_device) -> DeviceShadow:
    """The freezer reports -18 °C and its fan on; nobody asked for anything yet (version 1)."""
    return update_reported(acme_device, {"setpoint": -18, "fan": {"speed": 2}})


def test_a_viewer_reads_the_shadow(reported_shadow, acme_device, bob):
    response = client_as(bob).get(shadow_url(acme_device))
    assert response.status_code == 200
    assert response.data["reported"] == {"setpoint": -18, "fan": {"speed": 2}}
    assert response.data["desired"] == {}
    assert response.data["delta"] == {}
    assert response.data["version"] == 1
    assert response.data["reported_updated_at"] is not None


def test_a_patch_merges_desired_bumps_the_version_and_recomputes_the_delta(
    reported_shadow, acme_device, alice
):
    update_desired(acme_device, {"mode": "eco", "fan": {"speed": 2}})
    response = client_as(alice).patch(
        shadow_url(acme_device), {"desired": {"setpoint": -20, "fan": {"speed": 3}}}, format="json"
    )
    assert response.status_code == 200, response.data
    assert response.data["desired"] == {"mode": "eco", "setpoint": -20, "fan": {"speed": 3}}
    assert response.data["delta"] == {"mode": "eco", "setpoint": -20, "fan": {"speed": 3}}
    assert response.data["version"] == 3
    shadow = DeviceShadow.objects.get(device=acme_device)
    assert (shadow.desired, shadow.version) == (response.data["desired"], 3)


def test_a_null_removes_a_desired_key(acme_device, alice):
    update_desired(acme_device, {"mode": "eco", "setpoint": -20})
    response = client_as(alice).patch(
        shadow_url(acme_device), {"desired": {"mode": None}}, format="json"
    )
    assert response.data["desired"] == {"setpoint": -20}


def test_the_expected_version_lets_a_change_through(reported_shadow, acme_device, alice):
    response = client_as(alice).patch(
        shadow_url(acme_device), {"desired": {"setpoint": -20}, "version": 1}, format="json"
    )
    assert response.status_code == 200
    assert response.data["version"] == 2


def test_a_stale_version_answers_409_and_changes_nothing(reported_shadow, acme_device, alice):
    update_desired(acme_device, {"setpoint": -19})
    response = client_as(alice).patch(
        shadow_url(acme_device), {"desired": {"setpoint": -25}, "version": 1}, format="json"
    )
    assert response.status_code == 409
    assert response.data["current_version"] == 2
    assert "fetch it and apply your change again" in response.data["detail"]
    shadow = DeviceShadow.objects.get(device=acme_device)
    assert (shadow.desired, shadow.version) == ({"setpoint": -19}, 2)


@pytest.mark.parametrize("desired", [["eco"], "eco", 5, None])
def test_desired_must_be_a_json_object(desired, reported_shadow, acme_device, alice):
    response = client_as(alice).patch(shadow_url(acme_device), {"desired": desired}, format="json")
    assert response.status_code == 400
    assert "desired" in response.data
    assert DeviceShadow.objects.get(device=acme_device).version == 1


def test_desired_is_required(reported_shadow, acme_device, alice):
    response = client_as(alice).patch(shadow_url(acme_device), {"version": 1}, format="json")
    assert response.status_code == 400
    assert "desired" in response.data


@pytest.mark.parametrize("field", ["reported", "delta"])
def test_reported_and_delta_are_not_writable(field, reported_shadow, acme_device, alice):
    body = {"desired": {"setpoint": -20}, field: {"setpoint": -40}}
    response = client_as(alice).patch(shadow_url(acme_device), body, format="json")
    assert response.status_code == 400
    assert "not writable" in str(response.data[field])
    shadow = DeviceShadow.objects.get(device=acme_device)
    assert (shadow.reported["setpoint"], shadow.desired, shadow.version) == (-18, {}, 1)


def test_the_version_in_the_body_is_not_written(reported_shadow, acme_device, alice):
    response = client_as(alice).patch(
        shadow_url(acme_device), {"desired": {"setpoint": -20}, "version": 1}, format="json"
    )
    assert response.data["version"] == 2


def test_a_viewer_cannot_change_the_shadow(reported_shadow, acme_device, bob):
    response = client_as(bob).patch(
        shadow_url(acme_device), {"desired": {"setpoint": -30}}, format="json"
    )
    assert response.status_code == 403
    assert DeviceShadow.objects.get(device=acme_device).desired == {}


@pytest.mark.parametrize("method", ["get", "patch"])
def test_another_tenants_shadow_answers_404(method, reported_shadow, acme_device, carol):
    client = client_as(carol)
    response = getattr(client, method)(
        shadow_url(acme_device), {"desired": {"setpoint": -30}}, format="json"
    )
    assert response.status_code == 404
    assert DeviceShadow.objects.get(device=acme_device).desired == {}
