"""The whole platform as processes, for OTA's end-to-end and browser tests: daphne (pages,
websocket, firmware downloads), mqtt_ingest, a Celery worker and `manage.py simulate` answering
OTA jobs, on a Mosquitto and a Redis of the test's own and the test's database.

The test process itself plays beat: it calls `advance_rollouts()` every second (its own tasks
run eagerly); the worker advances rollouts too, after each batch of device reports.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connections

from ota import services
from tests.servers import (
    Launch,
    Mosquitto,
    Redis,
    celery_worker,
    free_port,
    output_of,
    process_env,
    wait_for_log,
)
from tests.test_processes import wait_for_http


@dataclass
class Stack:
    launch: Launch
    mosquitto: Mosquitto
    redis: Redis
    media: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    beat: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        return process_env(
            self.redis,
            self.mosquitto,
            MEDIA_ROOT=str(self.media),
            OTA_DOWNLOAD_BASE_URL=self.base,
            INGEST_FLUSH_SECONDS="0.05",
            INGEST_HOLD_SECONDS="0.2",
            LOG_LEVEL="INFO",
            **extra,
        )

    def start_platform(self) -> None:
        web = self.launch(
            "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "iotfleet.asgi:application",
            **self.env(),
        )  # fmt: skip
        self.processes["web"] = web
        self.processes["ingest"] = self.launch(
            "manage.py", "mqtt_ingest", "--client-id", f"ota-{uuid.uuid4().hex[:6]}", **self.env()
        )
        self.processes["worker"] = self.launch(
            *celery_worker(f"ota-{uuid.uuid4().hex[:6]}", concurrency=2), **self.env()
        )
        wait_for_http(f"{self.base}/admin/login/", web)
        self.wait_for_log("worker", "ready.")
        self.wait_for_log("ingest", "connected to")

    def start_simulator(self, *options: str) -> None:
        self.processes["simulator"] = self.launch(
            "manage.py", "simulate", "--rate", "1", "--connect-rate", "50", *options, **self.env()
        )

    def start_beat(self) -> None:
        def tick() -> None:
            try:
                while not self.stopping.wait(1.0):
                    services.advance_rollouts()
            finally:
                connections.close_all()  # this thread's own connection

        self.beat = threading.Thread(target=tick, daemon=True)
        self.beat.start()

    def stop_beat(self) -> None:
        self.stopping.set()
        if self.beat:
            self.beat.join(timeout=30)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {n}\n{output_of(p)[-tail:]}" for n, p in self.processes.items())

    def wait_for_log(self, name: str, text: str, timeout: float = 90) -> None:
        wait_for_log(self.processes[name], text, timeout=timeout, what=name)

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        (self.media.parent / "stack.log").write_text(self.logs(200_000))  # all of it, to read
        pytest.fail(f"timed out waiting for {what}:\n{self.logs()}")


@pytest.fixture
def stack(launch, mosquitto, redis_server, media_root, settings, eager_celery, transactional_db):
    settings.MQTT_URL = mosquitto.url
    media_root.mkdir(parents=True, exist_ok=True)
    platform = Stack(launch, mosquitto, redis_server, media_root)
    settings.OTA_DOWNLOAD_BASE_URL = platform.base
    try:
        yield platform
    finally:
        platform.stop_beat()
