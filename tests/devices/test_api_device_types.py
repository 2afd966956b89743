"""Device types over the API: metrics written in the same request, names unique per tenant."""

from __future__ import annotations

from django.urls import reverse

from devices.models import DeviceType, Metric
from tests.api.clients import client_as

DEVICE_TYPES = reverse("device-type-list")


def type_url(device_type: DeviceType) -> str:
    return reverse("device-type-detail", kwargs={"pk": device_type.pk})


def _metrics(device_type: DeviceType) -> list[tuple]:
    return list(
        device_type.metrics.order_by("name").values_list("name", "unit", "min_value", "max_value")
    )


CHILLER = {
    "name": "Chiller",
    "heartbeat_timeout": "00:10:00",
    "metrics": [
        {"name": "temperature", "unit": "°C", "min_value": -30, "max_value": 10},
        {"name": "door_open", "unit": "", "min_value": 0, "max_value": 1},
    ],
}


def test_create_writes_the_metrics_in_the_same_request(acme, alice):
    response = client_as(alice).post(DEVICE_TYPES, CHILLER, format="json")
    assert response.status_code == 201, response.data
    device_type = DeviceType.objects.get(pk=response.data["id"])
    assert _metrics(device_type) == [("door_open", "", 0, 1), ("temperature", "°C", -30, 10)]
    assert [m["name"] for m in response.data["metrics"]] == ["door_open", "temperature"]


def test_update_replaces_the_metric_list(acme_freezer_type, alice):
    kept = Metric.objects.get(device_type=acme_freezer_type, name="temperature")
    payload = {
        "name": "Freezer",
        "metrics": [
            {"name": "temperature", "unit": "°F", "min_value": -40, "max_value": 140},
            {"name": "humidity", "unit": "%", "min_value": 0, "max_value": 100},
        ],
    }
    response = client_as(alice).put(type_url(acme_freezer_type), payload, format="json")
    assert response.status_code == 200, response.data
    assert _metrics(acme_freezer_type) == [
        ("humidity", "%", 0, 100),
        ("temperature", "°F", -40, 140),
    ]
    assert acme_freezer_type.metrics.get(name="temperature").pk == kept.pk
    assert {m["name"] for m in response.data["metrics"]} == {"humidity", "temperature"}


def test_an_empty_metric_list_removes_every_metric(acme_freezer_type, alice):
    response = client_as(alice).patch(type_url(acme_freezer_type), {"metrics": []}, format="json")
    assert response.status_code == 200
    assert not acme_freezer_type.metrics.exists()


def test_a_patch_without_metrics_leaves_them_alone(acme_freezer_type, alice):
    before = _metrics(acme_freezer_type)
    response = client_as(alice).patch(
        type_url(acme_freezer_type), {"description": "Chest freezer"}, format="json"
    )
    assert response.status_code == 200
    assert _metrics(acme_freezer_type) == before


def test_a_metric_range_upside_down_is_refused(acme, alice):
    payload = {**CHILLER, "metrics": [{"name": "temperature", "min_value": 10, "max_value": -5}]}
    response = client_as(alice).post(DEVICE_TYPES, payload, format="json")
    assert response.status_code == 400
    assert not DeviceType.objects.filter(name="Chiller").exists()


def test_a_metric_named_twice_is_refused(acme, alice):
    payload = {**CHILLER, "metrics": [{"name": "temperature"}, {"name": "temperature"}]}
    response = client_as(alice).post(DEVICE_TYPES, payload, format="json")
    assert response.status_code == 400
    assert "temperature" in str(response.data["metrics"])


def test_a_metric_name_must_be_an_identifier(acme, alice):
    payload = {**CHILLER, "metrics": [{"name": "Temp C"}]}
    assert client_as(alice).post(DEVICE_TYPES, payload, format="json").status_code == 400


def test_a_name_taken_in_the_tenant_is_refused(acme_freezer_type, alice):
    response = client_as(alice).post(DEVICE_TYPES, {"name": "Freezer"}, format="json")
    assert response.status_code == 400
    assert "choose another name" in str(response.data["name"])


def test_the_same_name_is_fine_in_another_tenant(globex, carol, acme_freezer_type):
    response = client_as(carol).post(DEVICE_TYPES, {"name": "Freezer"}, format="json")
    assert response.status_code == 201


def test_a_heartbeat_timeout_must_be_positive(acme, alice):
    payload = {**CHILLER, "heartbeat_timeout": "00:00:00"}
    assert client_as(alice).post(DEVICE_TYPES, payload, format="json").status_code == 400


def test_a_type_that_devices_use_cannot_be_deleted(acme_device, acme_freezer_type, alice):
    response = client_as(alice).delete(type_url(acme_freezer_type))
    assert response.status_code == 409
    assert "delete them first" in response.data["detail"]
    assert DeviceType.objects.filter(pk=acme_freezer_type.pk).exists()


def test_a_metric_sent_without_unit_or_range_loses_them(acme_freezer_type, alice):
    payload = {"metrics": [{"name": "temperature"}]}
    response = client_as(alice).patch(type_url(acme_freezer_type), payload, format="json")
    assert response.status_code == 200
    assert _metrics(acme_freezer_type) == [("temperature", "", None, None)]
