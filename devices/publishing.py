"""The platform speaking to devices over MQTT: commands, desired shadows, OTA jobs.

`publish(messages)` sends any number of messages over one connection, as MQTT_URL's user, and
returns once the broker has acknowledged every one (QoS 1 PUBACK), or raises `PublishError` saying
what the operator can do. A device with a persistent session that is offline right now gets its
QoS 1 messages when it comes back; a retained message (the desired shadow) waits on its topic.

With dynamic security on, the platform's role may publish under `fleet/#`
(`manage.py mqtt_setup`, devices/broker_accounts.py).

Call it from Celery tasks (through `transaction.on_commit`), not from a web request: it waits on
the broker.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet.services_check import MqttTarget

TIMEOUT_SECONDS = 10.0
SETUP_HINT = "with dynamic security on, run `manage.py mqtt_setup` so the platform may publish"


class PublishError(Exception):
    """The broker could not be reached, refused the login, or did not acknowledge a message."""


@dataclass(frozen=True)
class Outgoing:
    """One message to a device: `payload` is bytes or text (JSON, already encoded)."""

    topic: str
    payload: bytes | str
    retain: bool = False
    qos: int = 1


def publish(messages: Iterable[Outgoing], timeout: float = TIMEOUT_SECONDS) -> int:
    """Send `messages` over one connection; wait for every acknowledgement. Returns how many."""
    messages = list(messages)
    if not messages:
        return 0
    try:
        target = MqttTarget.parse(settings.MQTT_URL)
    except ValueError as error:
        raise PublishError(f"MQTT_URL cannot be read ({error}): fix the setting.") from error
    where = f"the MQTT broker at {target.address}"
    outcome: dict[str, Any] = {"refused": []}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["connack"] = reason

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            outcome["refused"].append((mid, reason))

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"iotfleet-platform-{os.getpid()}-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    # Enough in flight that a few thousand OTA jobs are not sent one round trip at a time.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if target.username:
        client.username_pw_set(target.username, target.password or None)
    if target.tls:
        client.tls_set()
    client.connect_timeout = timeout
    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(target.host, target.port, keepalive=max(10, round(timeout * 2)))
    except OSError as error:
        raise PublishError(f"Could not reach {where} ({error}): is it running?") from error
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while "connack" not in outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        reason = outcome.get("connack")
        if reason is None:
            raise PublishError(f"No answer from {where} within {timeout:g} s.")
        if reason.is_failure:
            raise PublishError(
                f"{where} refused the platform's login ({reason}): check MQTT_URL's user and "
                "password."
            )
        sent = [
            (message, client.publish(message.topic, message.payload, message.qos, message.retain))
            for message in messages
        ]
        # The time allowed grows with the count: a large OTA wave is not one message.
        deadline = time.monotonic() + timeout + len(sent) / 2000
        for message, info in sent:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise PublishError(
                    f"{where} did not acknowledge the message on {message.topic} within the "
                    f"time allowed ({mqtt.error_string(info.rc)}); {SETUP_HINT} under fleet/#."
                )
        if outcome["refused"]:
            mid, reason = outcome["refused"][0]
            topic = next((m.topic for m, info in sent if info.mid == mid), "?")
            raise PublishError(
                f"{where} refused the message on {topic} ({reason}); {SETUP_HINT} under fleet/#."
            )
        return len(sent)
    except (RuntimeError, ValueError) as error:
        raise PublishError(f"Publishing to {where} failed ({error}).") from error
    finally:
        client.disconnect()
        client.loop_stop()
