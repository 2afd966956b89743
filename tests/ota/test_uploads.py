"""Firmware over OTA_MAX_UPLOAD_BYTES is refused as soon as that is known (ota/uploads.py): the
request's body is not read to its end, nothing is stored, and the operator is told what to do."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory
from django.test.client import encode_multipart
from django.urls import reverse

from ota.models import FirmwareRelease
from ota.uploads import FORM_ROOM, limit_upload, refusal
from tests.api.clients import client_as
from tests.factories import make_device_type
from tests.ota.conftest import upload

BOUNDARY = "firmware-boundary"


class CountingStream:
    """The request's body stream, counting what the parser reads of it."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.read_bytes = 0

    def read(self, *args) -> bytes:
        data = self.stream.read(*args)
        self.read_bytes += len(data)
        return data

    def readline(self, *args) -> bytes:
        data = self.stream.readline(*args)
        self.read_bytes += len(data)
        return data


def stored_files(media: Path) -> list[Path]:
    return [path for path in media.rglob("*") if path.is_file()] if media.exists() else []


@pytest.mark.parametrize(
    ("limit", "image_size"),
    [
        # The Content-Length alone says it is too large: stopped before the file's first byte.
        (100_000, FORM_ROOM + 400_000),
        # It does not (within the room for other fields): stopped once the limit is passed.
        (100_000, 600_000),
    ],
    ids=["by-content-length", "by-counting"],
)
def test_an_upload_over_the_limit_stops_before_the_rest_of_the_body_is_read(
    settings, limit, image_size
):
    settings.OTA_MAX_UPLOAD_BYTES = limit
    body = encode_multipart(
        BOUNDARY, {"version": "2.1.0", "file": upload(b"\x01" * image_size), "notes": "n"}
    )
    request = RequestFactory().generic(
        "POST", "/", body, content_type=f"multipart/form-data; boundary={BOUNDARY}"
    )
    stream = request._stream = CountingStream(request._stream)
    limit_upload(request)

    message = refusal(request)

    assert "may be at most" in message or "larger than" in message
    assert f"{limit:,} bytes" in message
    assert "upload a smaller image" in message
    assert "file" not in request.FILES
    assert request.POST["version"] == "2.1.0"  # the fields before the file are kept
    assert stream.read_bytes < min(image_size, limit + 2 * 64 * 1024)


def test_an_upload_within_the_limit_goes_through_the_handler_whole(settings):
    settings.OTA_MAX_UPLOAD_BYTES = 100_000
    content = bytes(range(256)) * 390
    request = RequestFactory().post("/", {"version": "2.1.0", "file": upload(content)})
    limit_upload(request)
    assert refusal(request) == ""
    assert request.FILES["file"].read() == content


@pytest.fixture
def freezer(acme):
    return make_device_type(acme, "Freezer")


def test_the_form_refuses_a_file_over_the_limit_with_413_and_keeps_the_fields(
    client, alice, freezer, settings, media
):
    settings.OTA_MAX_UPLOAD_BYTES = 10_000
    client.force_login(alice)
    response = client.post(
        reverse("ota:release-new"),
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload(b"\x00" * 200_000)},
    )
    assert response.status_code == 413
    form = response.context["form"]
    assert "upload a smaller image" in form.errors["file"][0]
    assert "This field is required." not in form.errors["file"]
    assert form["version"].value() == "2.1.0"
    assert "10,000 bytes" in response.text
    assert not FirmwareRelease.objects.exists()
    assert stored_files(media) == []


def test_the_upload_form_still_checks_the_csrf_token(alice, freezer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(
        reverse("ota:release-new"),
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload()},
    )
    assert response.status_code == 403
    assert not FirmwareRelease.objects.exists()


def test_the_api_refuses_a_file_over_the_limit_with_413(alice, freezer, settings, media):
    settings.OTA_MAX_UPLOAD_BYTES = 10_000
    response = client_as(alice).post(
        reverse("firmware-release-list"),
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload(b"\x00" * 200_000)},
        format="multipart",
    )
    assert response.status_code == 413
    assert "10,000 bytes" in response.data["file"][0]
    assert "upload a smaller image" in response.data["file"][0]
    assert not FirmwareRelease.objects.exists()
    assert stored_files(media) == []


def test_the_api_still_takes_a_file_within_the_limit(alice, freezer, settings):
    settings.OTA_MAX_UPLOAD_BYTES = 100_000
    response = client_as(alice).post(
        reverse("firmware-release-list"),
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload()},
        format="multipart",
    )
    assert response.status_code == 201, response.data


def test_a_session_client_of_the_api_still_needs_the_csrf_token(alice, freezer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(
        reverse("firmware-release-list"),
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload()},
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not FirmwareRelease.objects.exists()


def test_daphne_answers_an_upload_over_the_limit_with_413(launch, transactional_db, tmp_path):
    """Over real HTTP, through daphne and Django's ASGI handler, with an API token."""
    from rest_framework.authtoken.models import Token

    from devices.models import Role, Tenant
    from devices.services import add_member
    from tests.servers import start_daphne

    acme = Tenant.objects.create(name="Acme Cold Chain", slug="acme")
    freezer = make_device_type(acme, "Freezer")
    user = get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice")
    add_member(user, acme, Role.OPERATOR)
    token = Token.objects.create(user=user)
    media = tmp_path / "daphne-media"
    base = start_daphne(launch, OTA_MAX_UPLOAD_BYTES="10000", MEDIA_ROOT=str(media))
    body = encode_multipart(
        BOUNDARY,
        {"version": "2.1.0", "device_types": [freezer.pk], "file": upload(b"\x00" * 300_000)},
    )
    request = urllib.request.Request(  # noqa: S310
        f"{base}/api/v1/firmware-releases/",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Token {token.key}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
    assert refused.value.code == 413
    assert "10,000 bytes" in json.loads(refused.value.read())["file"][0]
    assert not FirmwareRelease.objects.exists()
    assert stored_files(media) == []
