"""A command to the alert's device over MQTT: `fleet/{device key}/commands/{notification id}`,
QoS 1, JSON `{"id", "command", "params", "alert"}`.

Published as MQTT_URL's user (with dynamic security on, the platform's role allows publishing
under `fleet/#`, see devices/broker_accounts.py). The send counts as done once the broker has
acknowledged the message (PUBACK); the broker keeps it for a device with a persistent session
that is offline right now. The device answers on `.../commands/{id}/ack`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion

from alerts.transports import TransportError
from iotfleet.services_check import MqttTarget

if TYPE_CHECKING:
    from alerts.models import Notification

TIMEOUT_SECONDS = 10.0


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
        target = MqttTarget.parse(settings.MQTT_URL)
    except ValueError as error:
        raise TransportError(f"MQTT_URL cannot be read ({error}): fix the setting.") from error
    outcome: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["connack"] = reason

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        outcome["puback"] = reason

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"iotfleet-notify-{os.getpid()}-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if target.username:
        client.username_pw_set(target.username, target.password or None)
    if target.tls:
        client.tls_set()
    client.connect_timeout = timeout
    client.on_connect = on_connect
    client.on_publish = on_publish
    where = f"the MQTT broker at {target.address}"
    try:
        client.connect(target.host, target.port, keepalive=max(10, round(timeout * 2)))
    except OSError as error:
        raise TransportError(f"Could not reach {where} ({error}): is it running?") from error
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while "connack" not in outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        reason = outcome.get("connack")
        if reason is None:
            raise TransportError(f"No answer from {where} within {timeout:g} s.")
        if reason.is_failure:
            raise TransportError(
                f"{where} refused the platform's login ({reason}): check MQTT_URL's user and "
                "password."
            )
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise TransportError(
                f"{where} did not acknowledge the command on {topic} within {timeout:g} s "
                f"({mqtt.error_string(info.rc)}); with dynamic security on, run "
                "`manage.py mqtt_setup` so the platform may publish under fleet/#."
            )
        puback = outcome.get("puback")
        if puback is not None and getattr(puback, "is_failure", False):
            raise TransportError(
                f"{where} refused the command on {topic} ({puback}): with dynamic security on, "
                "run `manage.py mqtt_setup` so the platform may publish under fleet/#."
            )
    except (RuntimeError, ValueError) as error:
        raise TransportError(f"Publishing to {where} failed ({error}).") from error
    finally:
        client.disconnect()
        client.loop_stop()
