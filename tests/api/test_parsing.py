"""What the API does with JSON it cannot take: a 400 that says what to change, never a 500, and
nothing stored. Shown on the desired shadow, the most free-form JSON a client writes."""

from __future__ import annotations

import pytest
from django.urls import reverse

from devices.models import DeviceShadow
from tests.api.clients import client_as


def patch_raw(user, device, body: str):
    url = reverse("device-shadow", kwargs={"key": device.key})
    return client_as(user).generic("PATCH", url, body, content_type="application/json")


@pytest.mark.parametrize("levels", [33, 5_000, 100_000])
def test_json_nested_too_deep_is_a_400_that_says_to_flatten_it(acme_device, alice, levels):
    body = '{"desired": ' + '{"a": ' * levels + "1" + "}" * levels + "}"

    response = patch_raw(alice, acme_device, body)

    assert response.status_code == 400
    assert "Nest the JSON at most 32 levels deep" in response.data["detail"]
    assert DeviceShadow.objects.get(device=acme_device).desired == {}


def test_json_as_deep_as_the_forms_accept_goes_through(acme_device, alice):
    body = '{"desired": ' + '{"a": ' * 31 + "1" + "}" * 31 + "}"

    response = patch_raw(alice, acme_device, body)

    assert response.status_code == 200, response.data


def test_nan_is_refused(acme_device, alice):
    response = patch_raw(alice, acme_device, '{"desired": {"setpoint": NaN}}')

    assert response.status_code == 400
    assert DeviceShadow.objects.get(device=acme_device).desired == {}
