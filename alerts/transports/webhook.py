"""Webhooks: the alert as JSON, POSTed with an HMAC-SHA256 signature of the exact body.

Headers: `X-IoTFleet-Signature: sha256=<hex HMAC of the body bytes, keyed by the channel's
secret>` and `X-IoTFleet-Delivery: <notification id>`, the same on every retry, so a receiver
can drop a delivery it has already handled. A 2xx answer is a delivery; anything else (other
statuses, redirects, timeouts, refused connections) is a failure the caller retries.
Sent with urllib from the standard library: one POST needs no extra dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from alerts.transports import EVENTS, TransportError, alert_document

if TYPE_CHECKING:
    from alerts.models import Notification

SIGNATURE_HEADER = "X-IoTFleet-Signature"
DELIVERY_HEADER = "X-IoTFleet-Delivery"
USER_AGENT = "IoTFleet-Webhook/1"
# How much of a failing receiver's answer is kept for the operator.
ERROR_BODY_CHARS = 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to fix at the receiver, not something to follow: urllib would
    turn the POST into a GET without the body and signature."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def body_of(notification: Notification) -> bytes:
    document = {
        "event": EVENTS.get(notification.reason, f"alert.{notification.reason}"),
        "alert": alert_document(notification.alert),
        "sent_at": timezone.now().isoformat(),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(notification: Notification) -> None:
    channel = notification.channel
    body = body_of(notification)
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked: http or https only)
        channel.webhook_url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature(channel.webhook_secret, body),
            DELIVERY_HEADER: str(notification.pk or "test"),
        },
    )
    if request.type not in {"http", "https"}:
        raise TransportError(f"{channel.webhook_url!r} is not an http(s) URL: fix the channel.")
    try:
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        answer = _read_safely(error)
        raise TransportError(
            f"{channel.webhook_url} answered HTTP {error.code}"
            + (f": {answer}" if answer else "")
            + ". Check the receiver; the delivery is retried.",
            response_code=error.code,
        ) from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise TransportError(
            f"Could not reach {channel.webhook_url} ({reason}) within "
            f"{settings.WEBHOOK_TIMEOUT_SECONDS:g} s: is the receiver up? The delivery is retried."
        ) from error
    if not 200 <= status < 300:
        raise TransportError(
            f"{channel.webhook_url} answered HTTP {status}, not 2xx: the delivery is retried.",
            response_code=status,
        )


def _read_safely(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(ERROR_BODY_CHARS).decode("utf-8", "replace")
    except OSError:
        return ""
    return " ".join(text.split())
