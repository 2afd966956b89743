"""HTTP ingest: a device posts with its own key and secret; same validation, same storage."""

from __future__ import annotations

import base64
import json
import time

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices.services import create_device
from telemetry.models import Reading, RejectedMessage
from tests.factories import make_device_type

URL = "/api/v1/telemetry/"
NOW_MS = int(time.time() * 1000)


@pytest.fixture
def sensor(acme):
    """(device, secret) of a freezer of Acme."""
    created = create_device(
        tenant=acme, key="fr-http", name="HTTP freezer", device_type=make_device_type(acme)
    )
    return created.device, created.secret


def post(body: object, key: str, secret: str, raw: bytes | None = None):
    client = APIClient()
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {token}")
    data = raw if raw is not None else json.dumps(body).encode()
    return client.generic("POST", URL, data, content_type="application/json")


def reading(value: float, ts: int = NOW_MS) -> dict:
    return {"ts": ts, "metrics": {"temperature": value}}


def test_a_device_posts_readings_with_its_credentials_and_they_are_stored(sensor):
    device, secret = sensor
    response = post([reading(-18.0, NOW_MS - 1000), reading(-17.5)], device.key, secret)
    assert response.status_code == 201, response.data
    assert response.data == {"stored": 2, "duplicates": 0, "rejected": []}
    values = Reading.objects.filter(device=device).order_by("time").values_list("value", flat=True)
    assert list(values) == [-18.0, -17.5]
    device.refresh_from_db()
    assert device.status == "online"


def test_posting_the_same_reading_again_stores_nothing_twice(sensor):
    device, secret = sensor
    post(reading(1.0), device.key, secret)
    response = post(reading(1.0), device.key, secret)
    assert response.status_code == 200
    assert response.data["duplicates"] == 1
    assert Reading.objects.filter(device=device).count() == 1


def test_a_wrong_secret_is_refused_with_401(sensor):
    device, _ = sensor
    response = post(reading(1.0), device.key, "not-the-secret")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert not Reading.objects.exists()


def test_one_devices_secret_does_not_let_it_post_as_another(sensor, acme):
    _, secret = sensor
    other = create_device(
        tenant=acme, key="fr-other", name="Other", device_type=make_device_type(acme)
    )
    assert post(reading(1.0), other.device.key, secret).status_code == 401
    assert not Reading.objects.exists()


def test_a_users_api_token_is_not_a_device_credential(sensor, alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    response = client.post(URL, reading(1.0), format="json")
    assert response.status_code in (401, 403)
    assert not Reading.objects.exists()


def test_a_nan_is_rejected_with_its_reason_and_recorded_for_the_operator(sensor):
    device, secret = sensor
    raw = b'{"ts": %d, "metrics": {"temperature": NaN}}' % NOW_MS
    response = post(None, device.key, secret, raw=raw)
    assert response.status_code == 400
    assert "NaN" in response.data["rejected"][0]
    rejection = RejectedMessage.objects.get(device=device)
    assert rejection.topic == "fleet/fr-http/telemetry"
    assert "NaN" in rejection.payload_excerpt


def test_good_values_are_stored_beside_a_bad_one(sensor):
    device, secret = sensor
    response = post(
        {"ts": NOW_MS, "metrics": {"temperature": 2.0, "humidity": 1}}, device.key, secret
    )
    assert response.status_code == 201
    assert response.data["stored"] == 1
    assert "'humidity' is not defined" in response.data["rejected"][0]


def test_a_disabled_device_gets_403_and_the_rejection_is_recorded(sensor):
    device, secret = sensor
    device.is_enabled = False
    device.save()
    response = post(reading(1.0), device.key, secret)
    assert response.status_code == 403
    assert "disabled" in response.data["rejected"][0]
    assert RejectedMessage.objects.filter(device=device).count() == 1


def test_an_oversize_body_gets_413_without_being_parsed(sensor, settings):
    device, secret = sensor
    settings.TELEMETRY_MAX_PAYLOAD_BYTES = 64
    response = post(
        {"ts": NOW_MS, "metrics": {"temperature": 1}, "pad": "x" * 100}, device.key, secret
    )
    assert response.status_code == 413
    assert "exceeds the 64-byte limit" in response.data["rejected"][0]
