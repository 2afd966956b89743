"""Firmware uploads over OTA_MAX_UPLOAD_BYTES are refused as soon as that is known, not after the
whole image was stored in a temporary file, hashed and checked.

`FirmwareUploadLimit` is the first upload handler of the two views that take firmware (the
release form and `POST /api/v1/firmware-releases/`): it stops reading the request when a file
starts and the request's Content-Length already says it is too large, or, when the length does
not say so, once the file's bytes pass the limit. The form fields read before the file are kept;
the view answers 413 with `refusal(request)`, which says what to do.

Behind daphne, the web server has received the request before Django sees it; what this saves
is the copy to a temporary file, the hashing and the checks. To refuse at the network's edge,
give the reverse proxy the same limit (nginx: `client_max_body_size`; docs/ota.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt, csrf_protect

# Room for the form's other fields and the multipart framing: a request longer than the limit
# and this holds a file over the limit, whatever the other fields say.
FORM_ROOM = 1024 * 1024


def _size(count: int) -> str:
    return f"{count:,} bytes ({count / 2**20:,.1f} MiB)"


class FirmwareUploadLimit(FileUploadHandler):
    """Stops the upload of a file over OTA_MAX_UPLOAD_BYTES; `message` says why."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.limit: int = settings.OTA_MAX_UPLOAD_BYTES
        self.request_length = 0
        self.message = ""

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: Any = None
    ) -> None:
        self.request_length = content_length or 0

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if self.request_length > self.limit + FORM_ROOM:
            self._refuse(
                f"The upload is {_size(self.request_length)}; a firmware image may be at most "
                f"{_size(self.limit)}."
            )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self._refuse(
                f"{self.file_name or 'The file'} is larger than {_size(self.limit)}, the most a "
                "firmware image may be; its upload was stopped there."
            )
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handlers store the file

    def _refuse(self, why: str) -> None:
        self.message = (
            f"{why} Nothing was stored: upload a smaller image, or ask your administrator to "
            "raise OTA_MAX_UPLOAD_BYTES."
        )
        # Without reading the rest of the request: that is the point.
        raise StopUpload(connection_reset=True)


def limit_upload(request: HttpRequest) -> None:
    """Put the limit first among the request's upload handlers; before anything reads the body."""
    handler = FirmwareUploadLimit(request)
    request.upload_handlers.insert(0, handler)
    request._firmware_upload_limit = handler  # type: ignore[attr-defined]


def refusal(request: Any) -> str:
    """Why the request's firmware upload was stopped ("" if it was not). Reads the body."""
    request.FILES  # noqa: B018 (parses the upload through the handlers)
    handler = getattr(request, "_firmware_upload_limit", None)
    return handler.message if handler is not None else ""


def limits_firmware_uploads(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A view taking firmware uploads: the limit is installed before the CSRF check, which reads
    a POST's body (so the check runs inside, as Django's docs on upload handlers say)."""
    protected = csrf_protect(view)

    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            limit_upload(request)
        return protected(request, *args, **kwargs)

    return wrapper
