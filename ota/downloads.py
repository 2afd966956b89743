"""Firmware downloads for devices: a short-lived signed URL per device update, with HTTP Range
requests (RFC 9110) so a device whose link dropped resumes where it stopped.

GET /ota/download/<token>/            200 with the whole image
    Range: bytes=1000-                206, Content-Range: bytes 1000-<last>/<size>
    Range: bytes=-500                 206, the last 500 bytes
    Range beyond the end              416, Content-Range: bytes */<size>
    If-Range: "<sha256>" (the ETag)   the range only if the image is still that one, else 200
HEAD                                  the same headers, no body

The token (django.core.signing, salt "ota.download") names the device update; it expires after
OTA_DOWNLOAD_URL_SECONDS. No login: the signature is the credential, and it is good for one
update of one device.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from django.core import signing
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_http_methods

from . import services
from .models import DeviceUpdate, RolloutStatus, UpdateState

CHUNK = 64 * 1024
RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None to send the whole file (no range, a
    multi-range or a malformed header, which RFC 9110 lets a server ignore); raises
    Unsatisfiable for a range outside the file."""
    match = RANGE.match(header or "")
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    start = int(first)
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    if end < start:
        return None  # invalid: RFC 9110 lets the server ignore it
    return start, min(end, size - 1)


def _stream(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        left = length
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        handle.close()


def _plain(status: int, text: str, **headers: str) -> HttpResponse:
    response = HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@require_http_methods(["GET", "HEAD"])
def download(request: HttpRequest, token: str) -> HttpResponse:
    try:
        update_id = services.read_download_token(token)
    except signing.SignatureExpired:
        return _plain(
            403,
            "This download link has expired: the device gets a new one with its "
            "next job (retry the update).",
        )
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return _plain(403, "This download link is not valid.")
    update = DeviceUpdate.objects.select_related("rollout__release").filter(pk=update_id).first()
    if update is None:
        return _plain(404, "No such firmware update.")
    if update.rollout.status == RolloutStatus.ABORTED or update.state == UpdateState.CANCELLED:
        return _plain(410, "The rollout of this update was aborted: do not install it.")
    release = update.rollout.release
    size = release.size
    etag = f'"{release.sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{release.file_name or "firmware.bin"}"',
        "Cache-Control": "private, no-store",
    }
    if_range = request.headers.get("If-Range")
    byte_range = None
    if "Range" in request.headers and (if_range is None or if_range.strip() == etag):
        try:
            byte_range = parse_range(request.headers["Range"], size)
        except Unsatisfiable:
            return _plain(
                416, f"The range is outside the {size}-byte image.", Content_Range=f"bytes */{size}"
            )
    start, end = byte_range or (0, size - 1)
    length = max(0, end - start + 1)
    status = 206 if byte_range else 200
    if request.method == "HEAD":
        response: HttpResponse = HttpResponse(status=status)
    else:
        response = StreamingHttpResponse(
            _stream(release.file.open("rb"), start, length), status=status
        )
    response["Content-Type"] = "application/octet-stream"
    response["Content-Length"] = str(length)
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    for name, value in headers.items():
        response[name] = value
    return response
