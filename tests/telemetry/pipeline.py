"""The real ingest pipeline for end-to-end tests: a private PostgreSQL, Redis (append-only file,
fsync per write) and Mosquitto (persistent, unlimited queues), a real Celery worker process and a
real `mqtt_ingest` process — any of which a test may kill or restart.

The PostgreSQL cluster is the test module's own, so a test can crash it without touching the
machine's server; it is migrated once into a template database with a tenant, a device type of
three metrics and DEVICES devices, and each test gets a fresh copy of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from tests.servers import (
    REPO,
    Launch,
    Mosquitto,
    Postgres,
    Redis,
    celery_worker,
    output_of,
    start_postgres,
    wait_for_log,
)

DEVICES = 20
TEMPLATE = "iotfleet_template"
KEYS = [f"pl-{n:03d}" for n in range(DEVICES)]
METRICS = ("temperature", "humidity", "co2")

SEED = f"""
import django; django.setup()
from devices.models import Metric, Tenant
from tests.factories import make_device, make_device_type
tenant = Tenant.objects.create(name="Pipeline", slug="pipeline")
kind = make_device_type(tenant, "Environment sensor")
Metric.objects.create(device_type=kind, name="humidity", unit="%", min_value=0, max_value=100)
Metric.objects.create(device_type=kind, name="co2", unit="ppm", min_value=0, max_value=5000)
for key in {KEYS!r}:
    make_device(tenant, key, device_type=kind)
"""


def run_manage(url: str, *args: str) -> None:
    env = {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "iotfleet.settings"}
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline_postgres(tmp_path_factory) -> Iterator[Postgres]:
    server = start_postgres(tmp_path_factory.mktemp("pipeline-pg"))
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        run_manage(server.url(TEMPLATE), "manage.py", "migrate", "--noinput")
        run_manage(server.url(TEMPLATE), "-c", SEED)
        yield server
    finally:
        server.stop()


def telemetry_payload(ts_ms: int, seq: int, value: float) -> bytes:
    return json.dumps(
        {"ts": ts_ms, "seq": seq, "metrics": {"temperature": value, "humidity": 50.0, "co2": 600}}
    ).encode()


@dataclass
class Pipeline:
    postgres: Postgres
    database: str
    mosquitto: Mosquitto
    redis: Redis
    launch: Launch
    tmp: Path
    ingest: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    ingest_logs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.postgres.url(self.database)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url,
            "MQTT_URL": self.mosquitto.url,
            # A task whose worker vanished comes back after this long (production: 300 s).
            "CELERY_VISIBILITY_TIMEOUT": "15",
            "INGEST_STATS_SECONDS": "1",
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def start_ingest(self, **extra: str) -> subprocess.Popen:
        self.ingest = self.launch(
            "manage.py", "mqtt_ingest", "--client-id", "pytest-ingest", **self.env(**extra)
        )
        self.ingest_logs.append(self.ingest)
        self.wait_for_log(self.ingest, "connected to")
        return self.ingest

    def start_worker(self, **extra: str) -> subprocess.Popen:
        worker = self.launch(
            *celery_worker(f"pytest-{uuid.uuid4().hex[:8]}", concurrency=2), **self.env(**extra)
        )
        self.workers.append(worker)
        self.wait_for_log(worker, "ready.")
        return worker

    def kill_ingest(self) -> None:
        assert self.ingest is not None
        self.ingest.send_signal(signal.SIGKILL)
        self.ingest.wait(timeout=10)

    def wait_for_log(self, process: subprocess.Popen, text: str, timeout: float = 60) -> None:
        wait_for_log(process, text, timeout=timeout)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple = ()) -> object:
        return self.query(sql, params)[0][0]

    def readings(self) -> int:
        return int(self.scalar("SELECT count(*) FROM telemetry_reading"))

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except psycopg.OperationalError:
                pass  # the database is restarting
            time.sleep(0.25)
        logs = "\n".join(output_of(p) for p in [*self.ingest_logs[-1:], *self.workers])
        pytest.fail(f"timed out waiting for {what}:\n{logs}")

    def wait_for_readings(self, expected: int, timeout: float = 90) -> None:
        self.wait_until(f"{expected} readings", lambda: self.readings() >= expected, timeout)
        time.sleep(1.0)  # anything extra (a duplicate) would land now
        assert self.readings() == expected

    def ingest_totals(self) -> dict[str, float]:
        """Totals from the ingest processes' final log lines."""
        totals = {"messages": 0.0, "batches": 0.0}
        for process in self.ingest_logs:
            for line in output_of(process).splitlines():
                if "ingest total:" in line:
                    words = line.split("ingest total:")[1].split()
                    totals["messages"] += float(words[0])
                    totals["batches"] += float(words[words.index("batches") - 1])
        return totals


class Publisher:
    """A device-side MQTT client (v3.1.1, QoS 1) that waits for the broker's PUBACKs."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}"
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append(self.client.publish(topic, payload, qos=1))

    def stream(self, messages: list[tuple[str, bytes]], seconds: float) -> Iterator[int]:
        """Publish at an even rate over `seconds`; yields the count sent so far every 100."""
        start = time.monotonic()
        for n, (topic, payload) in enumerate(messages, 1):
            self.publish(topic, payload)
            if n % 100 == 0:
                lag = start + seconds * n / len(messages) - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
                yield n

    def wait_all_acknowledged(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.sent:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge a publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stream_of(count: int, start_ms: int | None = None) -> list[tuple[str, bytes]]:
    """`count` telemetry messages spread over the devices, each with 3 metrics and its own seq."""
    start_ms = start_ms or int(time.time() * 1000) - 60_000
    messages = []
    for n in range(count):
        key = KEYS[n % DEVICES]
        seq = n // DEVICES
        messages.append((f"fleet/{key}/telemetry", telemetry_payload(start_ms + seq, seq, n % 50)))
    return messages


@pytest.fixture
def pipeline(pipeline_postgres, mosquitto, redis_server, launch, tmp_path):
    database = f"pipeline_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pipeline_postgres.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database} TEMPLATE {TEMPLATE}")
    return Pipeline(pipeline_postgres, database, mosquitto, redis_server, launch, tmp_path)


@pytest.fixture
def publisher(mosquitto):
    client = Publisher(mosquitto)
    yield client
    client.close()
