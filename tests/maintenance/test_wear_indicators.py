"""A device type's metrics mark wear indicators with a failure threshold, in the API and admin."""

from __future__ import annotations

from django.urls import reverse

from devices.models import DeviceType, FailureDirection, Metric
from tests.api.clients import client_as

PUMP = {
    "name": "Pump",
    "metrics": [
        {
            "name": "vibration",
            "unit": "mm/s",
            "is_wear_indicator": True,
            "failure_threshold": 11.2,
        },
        {
            "name": "pressure",
            "unit": "bar",
            "is_wear_indicator": True,
            "failure_threshold": 2.0,
            "failure_direction": "falling",
        },
        {"name": "flow_rate", "unit": "m³/h"},
    ],
}


def test_the_api_writes_and_reads_wear_indicators(carol, globex):
    response = client_as(carol).post(reverse("device-type-list"), PUMP, format="json")
    assert response.status_code == 201, response.data
    pump = DeviceType.objects.get(pk=response.data["id"])
    assert list(
        Metric.objects.filter(device_type=pump)
        .wear_indicators()
        .order_by("name")
        .values_list("name", "failure_threshold", "failure_direction")
    ) == [
        ("pressure", 2.0, FailureDirection.FALLING),
        ("vibration", 11.2, FailureDirection.RISING),
    ]
    listed = {m["name"]: m for m in response.data["metrics"]}
    assert listed["flow_rate"]["is_wear_indicator"] is False
    assert listed["vibration"]["failure_threshold"] == 11.2


def test_a_wear_indicator_without_a_threshold_is_refused_with_a_reason(carol, globex):
    payload = {"name": "Pump", "metrics": [{"name": "vibration", "is_wear_indicator": True}]}
    response = client_as(carol).post(reverse("device-type-list"), payload, format="json")
    assert response.status_code == 400
    assert "failure threshold" in str(response.data["metrics"])
    assert not DeviceType.objects.filter(name="Pump").exists()


def test_the_admin_edits_wear_indicators_inline(client, carol, globex):
    client.force_login(carol)
    form = {
        "tenant": globex.pk,
        "name": "Pump",
        "description": "",
        "heartbeat_timeout": "00:05:00",
        "metrics-TOTAL_FORMS": "1",
        "metrics-INITIAL_FORMS": "0",
        "metrics-0-name": "vibration",
        "metrics-0-unit": "mm/s",
        "metrics-0-is_wear_indicator": "on",
        "metrics-0-failure_threshold": "11.2",
        "metrics-0-failure_direction": "rising",
    }
    response = client.post(reverse("admin:devices_devicetype_add"), form)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    metric = Metric.objects.get(device_type__name="Pump", name="vibration")
    assert metric.is_wear_indicator
    assert metric.failure_threshold == 11.2
    form["name"] = "Pump 2"
    form["metrics-0-failure_threshold"] = ""
    response = client.post(reverse("admin:devices_devicetype_add"), form)
    assert response.status_code == 200
    assert "A wear indicator needs the failure threshold" in response.text
