"""Firmware downloads: a short-lived signed URL per device update, and HTTP Range requests so a
device resumes where its link dropped — over real HTTP from a daphne process, and the edge cases
through Django's test client."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import pytest
from django.core import signing

from ota import services
from ota.models import DeviceUpdate
from tests.ota.conftest import draft
from tests.servers import free_port
from tests.test_processes import wait_for_http

IMAGE = bytes(range(256)) * 40  # 10,240 bytes, and the version make_release appends


@pytest.fixture
def update(make_release, fleet) -> DeviceUpdate:
    fleet(1)
    release = make_release(content=IMAGE)
    rollout = services.start_rollout(draft(release, wave_plan=[100]))
    return DeviceUpdate.objects.select_related("rollout__release").get(rollout=rollout)


@pytest.fixture
def image(update) -> bytes:
    with update.rollout.release.file.open("rb") as stored:
        return stored.read()


@pytest.fixture
def daphne(launch, media_root, transactional_db, settings) -> str:
    """daphne serving the test database and the test's media folder."""
    from tests.servers import database_url

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings.OTA_DOWNLOAD_BASE_URL = base
    process = launch(
        "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "iotfleet.asgi:application",
        DATABASE_URL=database_url(), DATABASE_CONN_MAX_AGE="0", MEDIA_ROOT=str(media_root),
    )  # fmt: skip
    wait_for_http(f"{base}/admin/login/", process)
    return base


def get(url: str, **headers: str):
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_a_device_downloads_its_image_in_ranges_over_http(daphne, update, image):
    url = services.download_url(update.pk)
    size = len(image)

    status, headers, whole = get(url)
    assert (status, headers["Accept-Ranges"], int(headers["Content-Length"])) == (
        200,
        "bytes",
        size,
    )
    assert headers["ETag"] == f'"{update.rollout.release.sha256}"'

    status, headers, first = get(url, Range="bytes=0-4095")
    assert (status, headers["Content-Range"], len(first)) == (206, f"bytes 0-4095/{size}", 4096)
    # The link dropped after 4,096 bytes: the device asks for the rest.
    status, headers, rest = get(url, Range="bytes=4096-")
    assert (status, headers["Content-Range"]) == (206, f"bytes 4096-{size - 1}/{size}")
    assert (
        hashlib.sha256(first + rest).hexdigest()
        == update.rollout.release.sha256
        == (hashlib.sha256(whole).hexdigest())
    )

    status, headers, _ = get(url, Range=f"bytes={size}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")


def test_a_suffix_range_gives_the_last_bytes(client, update, image):
    response = client.get(services.download_url(update.pk), headers={"Range": "bytes=-4"})
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == image[-4:]
    assert response["Content-Range"] == f"bytes {len(image) - 4}-{len(image) - 1}/{len(image)}"


def test_an_end_past_the_file_is_clipped(client, update, image):
    response = client.get(services.download_url(update.pk), headers={"Range": "bytes=10-99999"})
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == image[10:]


def test_a_range_for_an_image_that_changed_gets_the_whole_new_image(client, update, image):
    response = client.get(
        services.download_url(update.pk),
        headers={"Range": "bytes=100-", "If-Range": '"an-older-image"'},
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == image


def test_a_multi_range_request_gets_the_whole_image(client, update, image):
    response = client.get(services.download_url(update.pk), headers={"Range": "bytes=0-1,5-9"})
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == image


def test_head_answers_the_headers_alone(client, update, image):
    response = client.head(services.download_url(update.pk))
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(image))
    assert response.content == b""


def test_a_tampered_link_is_refused(client, update):
    url = services.download_url(update.pk)
    token = url.rstrip("/").rsplit("/", 1)[1]
    other = signing.dumps({"u": update.pk + 1}, salt="not-ours")
    for bad in (url.replace(token, token[:-2] + "xx"), url.replace(token, other)):
        assert client.get(bad).status_code == 403


def test_an_expired_link_says_so(client, update, settings):
    settings.OTA_DOWNLOAD_URL_SECONDS = -1
    response = client.get(services.download_url(update.pk))
    assert response.status_code == 403
    assert b"expired" in response.content


def test_the_image_of_an_aborted_rollout_is_gone(client, update):
    url = services.download_url(update.pk)
    services.abort_rollout(update.rollout)
    response = client.get(url)
    assert response.status_code == 410
    assert b"aborted" in response.content
