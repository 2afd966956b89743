"""Notification transports: one module per channel kind, each with one `send(notification)`.

A transport either delivers or raises `TransportError` carrying what the operator sees in the
deliveries admin (`last_error`) and the HTTP status when there was one (`response_code`).
`alerts/notifications.py` decides when to send and retries; transports only talk to the outside.

This module also holds what every transport says about an alert (`alert_document`,
`alert_summary`) and the per-kind checks of a channel shared by the admin form and the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.urls import NoReverseMatch, reverse

from alerts.models import ChannelKind

if TYPE_CHECKING:
    from alerts.models import Alert, Notification

# What the receiving end reads as the event: "alert.opened", "alert.escalated", ...
EVENTS = {
    "opened": "alert.opened",
    "offline": "alert.offline",
    "maintenance": "alert.maintenance",
    "escalated": "alert.escalated",
    "reminder": "alert.reminder",
    "resolved": "alert.resolved",
    "test": "test",
}
WEBHOOK_SECRET_MIN_LENGTH = 16


class TransportError(Exception):
    """A delivery failed; `message` says why in words an operator can act on."""

    def __init__(self, message: str, response_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.response_code = response_code


def send(notification: Notification) -> None:
    """Deliver `notification` through its channel's transport."""
    from alerts.transports import email, mqtt_command, webhook

    transports = {
        ChannelKind.EMAIL: email.send,
        ChannelKind.WEBHOOK: webhook.send,
        ChannelKind.MQTT_COMMAND: mqtt_command.send,
    }
    kind = notification.channel.kind
    if kind not in transports:
        raise TransportError(f"Unknown channel kind {kind!r}: edit the channel and pick a kind.")
    transports[kind](notification)


# --- What an alert looks like to the outside ----------------------------------------------------


def alert_admin_path(alert: Alert) -> str:
    """The alert's page in the admin, as a path: the platform does not know its public host."""
    if alert.pk is None:
        return ""
    try:
        return reverse("admin:alerts_alert_change", args=[alert.pk])
    except NoReverseMatch:
        return ""


def alert_document(alert: Alert) -> dict[str, Any]:
    """The alert as JSON-ready data (webhook body, logs)."""
    device = alert.device
    rule = alert.rule
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "state": alert.state,
        "severity": alert.severity,
        "title": alert.title,
        "device": {"key": device.key, "name": device.name} if device else None,
        "rule": {"id": rule.pk, "name": rule.name} if rule else None,
        "values": alert.values,
        "count": alert.count,
        "first_triggered_at": _iso(alert.first_triggered_at),
        "last_triggered_at": _iso(alert.last_triggered_at),
    }


def alert_summary(alert: Alert, reason: str) -> str:
    """A plain-text description of the alert for people (email body)."""
    lines = [
        {
            "opened": "An alert opened.",
            "offline": "A device went offline.",
            "maintenance": "Predictive maintenance: a device is expected to reach a failure "
            "threshold soon.",
            "escalated": "An alert is still not acknowledged: it was escalated to you.",
            "reminder": "Reminder: this alert is still open and not acknowledged.",
            "resolved": "This alert is resolved.",
            "test": "This is a test notification: the channel works.",
        }.get(reason, f"Alert notification ({reason})."),
        "",
        f"Alert:     {alert.title}",
        f"Severity:  {alert.get_severity_display()}",
        f"State:     {alert.get_state_display()}",
        f"Device:    {alert.device.name} ({alert.device.key})",
        f"Rule:      {alert.rule.name if alert.rule else _ruleless_source(alert)}",
    ]
    if alert.values:
        values = ", ".join(f"{name} = {value}" for name, value in sorted(alert.values.items()))
        lines.append(f"Values:    {values}")
    lines += [
        f"Count:     {alert.count} breaking reading(s)",
        f"First:     {_iso(alert.first_triggered_at)}",
        f"Last:      {_iso(alert.last_triggered_at)}",
    ]
    path = alert_admin_path(alert)
    if path:
        lines += ["", f"Open it in the IoTFleet admin: {path}"]
    return "\n".join(lines) + "\n"


def _ruleless_source(alert: Alert) -> str:
    if alert.kind == "maintenance":
        return "(none: predictive maintenance)"
    return "(none: offline detection)"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


# --- Checks of a channel, per kind (admin form and API serializer) ------------------------------

_SEPARATORS = re.compile(r"[,;\s]+")


def email_recipients(text: str) -> list[str]:
    """The addresses in a channel's `email_to` (commas, semicolons, spaces or new lines)."""
    return [address for address in _SEPARATORS.split(text or "") if address]


def channel_problems(fields: Mapping[str, Any], has_secret: bool = False) -> dict[str, str]:
    """What is wrong with a channel's settings for its kind, by field; empty when it is usable.

    `has_secret`: the stored channel already has a webhook secret (an edit may leave it out).
    """
    problems: dict[str, str] = {}
    kind = fields.get("kind")
    if kind == ChannelKind.EMAIL:
        addresses = email_recipients(fields.get("email_to", ""))
        if not addresses:
            problems["email_to"] = "Give at least one recipient, e.g. ops@example.com."
        bad = []
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                bad.append(address)
        if bad:
            problems["email_to"] = (
                f"Not an email address: {', '.join(bad)}. Separate addresses with commas."
            )
    elif kind == ChannelKind.WEBHOOK:
        url = fields.get("webhook_url") or ""
        parts = urlsplit(url)
        if not url:
            problems["webhook_url"] = "Give the URL the webhook POSTs to, e.g. https://ops/hook."
        elif parts.scheme not in {"http", "https"} or not parts.hostname:
            problems["webhook_url"] = (
                f"Webhooks go to http:// or https:// URLs with a host, not {url!r}."
            )
        secret = fields.get("webhook_secret") or ""
        if not secret and not has_secret:
            problems["webhook_secret"] = (
                "Give a secret: receivers check the X-IoTFleet-Signature header with it "
                f"(at least {WEBHOOK_SECRET_MIN_LENGTH} characters)."
            )
        elif secret and len(secret) < WEBHOOK_SECRET_MIN_LENGTH:
            problems["webhook_secret"] = (
                f"The secret is {len(secret)} characters long: use at least "
                f"{WEBHOOK_SECRET_MIN_LENGTH}, e.g. from `openssl rand -hex 32`."
            )
    elif kind == ChannelKind.MQTT_COMMAND:
        command = fields.get("command") or ""
        if not command.strip():
            problems["command"] = "Name the command to send to the device, e.g. alarm_on."
        elif any(char in command for char in "/+#") or command != command.strip():
            problems["command"] = (
                f"{command!r}: a command name may not hold spaces at its ends, '/', '+' or '#'."
            )
        params = fields.get("command_params")
        if params is not None and not isinstance(params, dict):
            problems["command_params"] = 'Parameters are a JSON object, e.g. {"level": 2}.'
        else:
            try:
                json.dumps(params or {})
            except (TypeError, ValueError):
                problems["command_params"] = "The parameters cannot be written as JSON."
    return problems
