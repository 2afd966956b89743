"""The devices endpoint: filters, credentials shown once, references within the tenant, the
immutable key, the X-Tenant header and token authentication."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices.credentials import verify_secret
from devices.models import Device, DeviceStatus
from tests.api.clients import client_as, listed
from tests.factories import make_device, make_device_type, make_group

DEVICES = reverse("device-list")


def device_url(key: str, action: str = "") -> str:
    if action:
        return reverse(f"device-{action}", kwargs={"key": key})
    return reverse("device-detail", kwargs={"key": key})


@pytest.fixture
def fleet(acme, acme_device, acme_freezer_type, acme_group, globex_device):
    """Three Acme devices that differ in every filtered field, and one of Globex."""
    now = timezone.now()
    pump_type = make_device_type(acme, "Pump")
    south = make_group(acme, "Warehouse South")
    acme_device.groups.add(acme_group)
    Device.objects.filter(pk=acme_device.pk).update(
        status=DeviceStatus.ONLINE,
        tags=["cold"],
        firmware_version="1.0.0",
        last_seen=now - timedelta(hours=1),
    )
    pump = make_device(
        acme,
        "acme-pump.2:a",
        device_type=pump_type,
        name="Dock pump",
        tags=["pilot"],
        firmware_version="2.0.0",
        location="Dock 7",
        is_enabled=False,
    )
    Device.objects.filter(pk=pump.pk).update(last_seen=now - timedelta(days=3))
    sensor = make_device(
        acme,
        "acme-sensor-3",
        device_type=acme_freezer_type,
        name="Back room",
        tags=["cold", "pilot"],
        firmware_version="2.0.0",
    )
    sensor.groups.add(south)
    Device.objects.filter(pk=sensor.pk).update(status=DeviceStatus.MAINTENANCE)
    return {
        "now": now,
        "freezer_type": acme_freezer_type,
        "pump_type": pump_type,
        "north": acme_group,
        "south": south,
    }


FILTERS: list[tuple[str, Callable[[dict], dict], set[str]]] = [
    ("status", lambda f: {"status": "online"}, {"acme-freezer-1"}),
    ("device_type", lambda f: {"device_type": f["pump_type"].pk}, {"acme-pump.2:a"}),
    ("group", lambda f: {"group": f["south"].pk}, {"acme-sensor-3"}),
    ("tag", lambda f: {"tag": "pilot"}, {"acme-pump.2:a", "acme-sensor-3"}),
    (
        "firmware_version",
        lambda f: {"firmware_version": "2.0.0"},
        {"acme-pump.2:a", "acme-sensor-3"},
    ),
    ("is_enabled", lambda f: {"is_enabled": "false"}, {"acme-pump.2:a"}),
    (
        "last_seen_before",
        lambda f: {"last_seen_before": (f["now"] - timedelta(days=1)).isoformat()},
        {"acme-pump.2:a"},
    ),
    (
        "last_seen_after",
        lambda f: {"last_seen_after": (f["now"] - timedelta(days=1)).isoformat()},
        {"acme-freezer-1"},
    ),
    ("search_key", lambda f: {"search": "sensor"}, {"acme-sensor-3"}),
    ("search_name", lambda f: {"search": "back room"}, {"acme-sensor-3"}),
    ("search_location", lambda f: {"search": "dock 7"}, {"acme-pump.2:a"}),
]


@pytest.mark.parametrize(("name", "query", "expected"), FILTERS, ids=[f[0] for f in FILTERS])
def test_a_filter_narrows_the_device_list(name, query, expected, fleet, alice):
    response = client_as(alice).get(DEVICES, query(fleet))
    assert set(listed(response, "key")) == expected


def test_without_filters_alice_sees_all_three_acme_devices(fleet, alice):
    keys = listed(client_as(alice).get(DEVICES), "key")
    assert set(keys) == {"acme-freezer-1", "acme-pump.2:a", "acme-sensor-3"}


def test_the_tenant_filter_picks_one_of_the_users_tenants(fleet, olga):
    client = client_as(olga)
    assert listed(client.get(DEVICES, {"tenant": "globex"}), "key") == ["globex-pump-1"]
    assert "globex-pump-1" not in listed(client.get(DEVICES, {"tenant": "acme"}), "key")


def test_ordering_sorts_the_list(fleet, alice):
    keys = listed(client_as(alice).get(DEVICES, {"ordering": "-key"}), "key")
    assert keys == ["acme-sensor-3", "acme-pump.2:a", "acme-freezer-1"]


def test_an_invalid_filter_value_answers_400(fleet, alice):
    assert client_as(alice).get(DEVICES, {"status": "exploded"}).status_code == 400


def test_a_key_with_dots_and_colons_is_addressable(fleet, alice):
    response = client_as(alice).get(device_url("acme-pump.2:a"))
    assert response.status_code == 200
    assert response.data["name"] == "Dock pump"


def _new_device(tenant, **extra):
    return {
        "key": "acme-new-1",
        "name": "New freezer",
        "device_type": make_device_type(tenant, "Freezer").pk,
        **extra,
    }


def test_create_returns_the_secret_once_and_stores_only_its_hash(acme, alice):
    response = client_as(alice).post(DEVICES, _new_device(acme), format="json")
    assert response.status_code == 201, response.data
    secret = response.data["credential_secret"]
    device = Device.objects.get(key="acme-new-1")
    assert secret not in device.credential_hash
    assert verify_secret(secret, device.credential_hash)


def test_the_secret_never_appears_in_a_read(acme, alice):
    client = client_as(alice)
    secret = client.post(DEVICES, _new_device(acme), format="json").data["credential_secret"]
    for response in (client.get(DEVICES), client.get(device_url("acme-new-1"))):
        assert response.status_code == 200
        assert secret not in response.content.decode()
        assert b"credential" not in response.content


def test_create_gives_the_device_an_empty_shadow(acme, alice):
    client_as(alice).post(DEVICES, _new_device(acme), format="json")
    shadow = Device.objects.get(key="acme-new-1").shadow
    assert (shadow.desired, shadow.reported, shadow.version) == ({}, {}, 0)


def test_rotate_credentials_returns_a_new_secret_and_the_old_one_stops_working(acme, alice):
    client = client_as(alice)
    old = client.post(DEVICES, _new_device(acme), format="json").data["credential_secret"]
    response = client.post(device_url("acme-new-1", "rotate-credentials"))
    assert response.status_code == 200
    new = response.data["credential_secret"]
    stored = Device.objects.get(key="acme-new-1").credential_hash
    assert verify_secret(new, stored)
    assert not verify_secret(old, stored)
    assert new not in client.get(device_url("acme-new-1")).content.decode()


def test_a_viewer_cannot_rotate_credentials(acme_device, bob):
    before = acme_device.credential_hash
    response = client_as(bob).post(device_url(acme_device.key, "rotate-credentials"))
    assert response.status_code == 403
    acme_device.refresh_from_db()
    assert acme_device.credential_hash == before


def test_another_tenant_cannot_rotate_credentials(acme_device, carol):
    before = acme_device.credential_hash
    response = client_as(carol).post(device_url(acme_device.key, "rotate-credentials"))
    assert response.status_code == 404
    acme_device.refresh_from_db()
    assert acme_device.credential_hash == before


def test_a_device_type_of_another_tenant_is_refused(acme, globex_pump_type, alice):
    payload = {**_new_device(acme), "device_type": globex_pump_type.pk}
    response = client_as(alice).post(DEVICES, payload, format="json")
    assert response.status_code == 400
    assert "device_type" in response.data
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_a_group_of_another_tenant_is_refused(acme, globex_group, alice):
    payload = _new_device(acme, groups=[globex_group.pk])
    response = client_as(alice).post(DEVICES, payload, format="json")
    assert response.status_code == 400
    assert "groups" in response.data
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_a_member_of_two_tenants_cannot_mix_them_in_one_device(
    acme, globex, globex_pump_type, olga
):
    payload = {**_new_device(acme), "device_type": globex_pump_type.pk}
    response = client_as(olga).post(DEVICES, payload, format="json", headers={"X-Tenant": "acme"})
    assert response.status_code == 400
    assert "another tenant" in str(response.data["device_type"])
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_moving_a_device_to_a_group_of_another_tenant_is_refused(acme_device, globex_group, olga):
    response = client_as(olga).patch(
        device_url(acme_device.key), {"groups": [globex_group.pk]}, format="json"
    )
    assert response.status_code == 400
    assert not acme_device.groups.exists()


def test_the_key_cannot_change(acme_device, alice):
    response = client_as(alice).patch(
        device_url(acme_device.key), {"key": "renamed"}, format="json"
    )
    assert response.status_code == 400
    assert "cannot change" in str(response.data["key"])
    assert Device.objects.filter(key="acme-freezer-1").exists()
    assert not Device.objects.filter(key="renamed").exists()


def test_a_put_may_repeat_the_key_unchanged(acme_device, alice):
    payload = {"key": acme_device.key, "name": "Renamed", "device_type": acme_device.device_type_id}
    response = client_as(alice).put(device_url(acme_device.key), payload, format="json")
    assert response.status_code == 200, response.data
    acme_device.refresh_from_db()
    assert acme_device.name == "Renamed"


def test_a_taken_key_is_refused_with_advice(acme, acme_device, alice):
    payload = {**_new_device(acme), "key": acme_device.key}
    response = client_as(alice).post(DEVICES, payload, format="json")
    assert response.status_code == 400
    assert "choose another" in str(response.data["key"])


def test_a_key_with_a_slash_is_refused(acme, alice):
    response = client_as(alice).post(DEVICES, _new_device(acme, key="a/b"), format="json")
    assert response.status_code == 400
    assert "key" in response.data


@pytest.mark.parametrize("attributes", [["north"], "north", 3])
def test_attributes_must_be_a_json_object(attributes, acme, alice):
    payload = _new_device(acme, attributes=attributes)
    response = client_as(alice).post(DEVICES, payload, format="json")
    assert response.status_code == 400
    assert "JSON object" in str(response.data["attributes"])


def test_status_and_last_seen_are_read_only(acme_device, alice):
    response = client_as(alice).patch(
        device_url(acme_device.key),
        {"status": "online", "last_seen": "2020-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 200
    acme_device.refresh_from_db()
    assert (acme_device.status, acme_device.last_seen) == (DeviceStatus.OFFLINE, None)


def test_a_member_of_two_tenants_must_name_one_to_create(acme, globex, olga):
    response = client_as(olga).post(DEVICES, _new_device(acme), format="json")
    assert response.status_code == 400
    assert "X-Tenant" in response.data
    assert not Device.objects.filter(key="acme-new-1").exists()


def test_a_member_of_two_tenants_creates_in_the_tenant_the_header_names(acme, globex, olga):
    payload = _new_device(globex) | {"key": "globex-new-1"}
    response = client_as(olga).post(DEVICES, payload, format="json", headers={"X-Tenant": "globex"})
    assert response.status_code == 201, response.data
    assert response.data["tenant"] == "globex"
    assert Device.objects.get(key="globex-new-1").tenant == globex


def test_a_token_authenticates_a_client(acme_device, alice):
    token = Token.objects.create(user=alice)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert listed(client.get(DEVICES), "key") == ["acme-freezer-1"]


def test_a_wrong_token_is_refused(acme_device):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get(DEVICES)
    assert response.status_code in {401, 403}
    assert "Invalid token" in response.data["detail"]


def test_an_integrator_obtains_a_token_with_username_and_password(acme_device, alice):
    response = APIClient().post(
        reverse("api-token"), {"username": "alice", "password": "pw-alice"}, format="json"
    )
    assert response.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.data['token']}")
    assert listed(client.get(DEVICES), "key") == ["acme-freezer-1"]


def test_a_wrong_password_gets_no_token(alice):
    response = APIClient().post(
        reverse("api-token"), {"username": "alice", "password": "wrong"}, format="json"
    )
    assert response.status_code == 400
    assert "token" not in response.data
