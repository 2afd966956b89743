"""Device-side helpers of the OTA tests that speak real MQTT: a listener that receives every job
the platform publishes, and an in-test fleet that answers them on one connection.

The platform's side stays whole: jobs go out through devices/publishing.py from the Celery task
(run eagerly, in this thread, after the commit the test captures), reports come back through the
broker to the real ingest worker (telemetry/ingest.py, in a thread, handing its batches to the
test) and into `ingest_batch`. Database work happens in the test's thread only, so the test's
transaction sees everything.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from telemetry.ingest import IngestWorker
from telemetry.services import ingest_batch


class JobListener:
    """Subscribed to fleet/+/ota: `jobs` is every (device key, job) received, in order."""

    def __init__(self, port: int) -> None:
        self.jobs: list[tuple[str, dict]] = []
        self.inbox: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"jobs-{uuid.uuid4().hex[:6]}"
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda c, *_: c.subscribe("fleet/+/ota", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._received
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the job listener could not subscribe"

    def _received(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        key = message.topic.split("/")[1]
        job = (key, json.loads(message.payload))
        self.jobs.append(job)
        self.inbox.put(job)

    def take(self, count: int, timeout: float = 30) -> list[tuple[str, dict]]:
        """The next `count` jobs, waiting for them."""
        taken = []
        deadline = time.monotonic() + timeout
        while len(taken) < count:
            try:
                taken.append(self.inbox.get(timeout=max(0.05, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"only {len(taken)} of {count} jobs arrived") from None
        return taken

    def drain(self, wait: float = 0.5) -> list[tuple[str, dict]]:
        """Whatever arrives within `wait` seconds (to prove nothing more was sent)."""
        time.sleep(wait)
        taken = []
        while not self.inbox.empty():
            taken.append(self.inbox.get_nowait())
        return taken

    def publish(self, topic: str, body: dict) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Ingest:
    """The real MQTT ingest worker in a thread; its batches wait for the test to store them."""

    def __init__(self, url: str) -> None:
        self.batches: queue.Queue = queue.Queue()
        self.worker = IngestWorker(
            url, f"pytest-ota-ingest-{uuid.uuid4().hex[:6]}", send=self.batches.put, backlog=None
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        assert self.worker.connected.wait(10), "the ingest worker did not connect"
        time.sleep(0.3)  # its subscriptions are in place

    def store(self, expected: int, timeout: float = 60, on_batch: Callable | None = None) -> int:
        """Store batches through ingest_batch until `expected` messages went in."""
        stored = 0
        deadline = time.monotonic() + timeout
        while stored < expected:
            try:
                batch = self.batches.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"only {stored} of {expected} messages ingested") from None
            ingest_batch(batch)
            stored += len(batch)
            if on_batch:
                on_batch()
        return stored

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=20)
