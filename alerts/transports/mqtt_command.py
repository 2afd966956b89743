"""A command to the alert's device over MQTT: `fleet/{device key}/commands/{notification id}`,
QoS 1, JSON `{"id", "command", "params", "alert"}`.

Published through devices/publishing.py as MQTT_URL's user. The send counts as done once the
broker has acknowledged the message (PUBACK); the broker keeps it for a device with a persistent
session that is offline right now. The device answers on `.../commands/{id}/ack`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from alerts.transports import TransportError
from devices import publishing

if TYPE_CHECKING:
    from alerts.models import Notification

TIMEOUT_SECONDS = publishing.TIMEOUT_SECONDS


def topic_of(device_key: str, command_id: int | str) -> str:
    return f"fleet/{device_key}/commands/{command_id}"


def payload_of(notification: Notification) -> dict[str, Any]:
    channel = notification.channel
    return {
        "id": notification.pk,
        "command": channel.command,
        "params": channel.command_params or {},
        "alert": notification.alert_id,
    }


def send(notification: Notification) -> None:
    if notification.pk is None:
        raise TransportError(
            "A command goes to the device of an alert: it cannot be tested without one. Send "
            "it from a real alert, or test the device with a command of its own."
        )
    device_key = notification.alert.device.key
    publish(topic_of(device_key, notification.pk), json.dumps(payload_of(notification)))


def publish(topic: str, payload: str, timeout: float = TIMEOUT_SECONDS) -> None:
    """Publish one QoS 1 message and wait for the broker's acknowledgement."""
    try:
        publishing.publish([publishing.Outgoing(topic, payload)], timeout=timeout)
    except publishing.PublishError as error:
        raise TransportError(str(error)) from error
