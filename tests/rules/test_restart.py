"""Duration and no-data rules across a worker restart: real Celery worker processes on the test
database and a private Redis; the first is killed with SIGKILL halfway through the duration and a
second one carries on from what the first stored (RuleState), not from its memory."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from alerts.models import Alert
from rules.models import Rule, RuleKind, RuleState
from telemetry.models import Reading
from tests.rules.test_engine import MINUTE, T0, at, message
from tests.servers import celery_worker, database_url, output_of

pytestmark = pytest.mark.django_db(transaction=True)


def start_worker(launch, redis_server):
    worker = launch(
        *celery_worker(f"pytest-rules-{uuid.uuid4().hex[:6]}"),
        DATABASE_URL=database_url(),
        DATABASE_CONN_MAX_AGE="0",
        CELERY_BROKER_URL=redis_server.url,
        CELERY_RESULT_BACKEND=redis_server.url,
        REDIS_URL=redis_server.url,
    )
    deadline = time.monotonic() + 60
    while "ready." not in output_of(worker):
        assert worker.poll() is None, output_of(worker)
        assert time.monotonic() < deadline, output_of(worker)
        time.sleep(0.1)
    return worker


def wait_until(check, what: str, worker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output_of(worker)}"
        time.sleep(0.1)


def test_a_duration_rule_opens_exactly_when_its_duration_passed_across_a_worker_restart(
    acme_device, launch, redis_server
):
    rule = Rule.objects.create(
        tenant=acme_device.tenant, device_type=acme_device.device_type, name="Warm 5 min",
        kind=RuleKind.DURATION, condition="temperature > 8", for_duration=timedelta(minutes=5),
    )  # fmt: skip
    # Not the current app: later tests in this process queue their tasks on the project's app.
    broker = Celery(broker=redis_server.url, set_as_current=False)

    def ingest(minute: int) -> None:
        broker.send_task(
            "telemetry.ingest_batch",
            args=[[message(acme_device, T0 + minute * MINUTE, temperature=9)]],
        )

    def stored(count: int):
        return lambda: Reading.objects.filter(device=acme_device).count() >= count

    first = start_worker(launch, redis_server)
    for minute in range(3):  # T0, T0+1m, T0+2m: the first half
        ingest(minute)
    wait_until(stored(3), "the first half", first)
    wait_until(lambda: RuleState.objects.filter(rule=rule, breaching=True).exists(), "state", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    second = start_worker(launch, redis_server)
    ingest(3)
    ingest(4)
    wait_until(stored(5), "T0+4m", second)
    time.sleep(0.5)
    assert not Alert.objects.filter(rule=rule).exists(), "opened before the 5 minutes passed"

    ingest(5)
    wait_until(lambda: Alert.objects.filter(rule=rule).exists(), "the alert", second)
    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.first_triggered_at == at(T0 + 5 * MINUTE)
    assert alert.count == 1


def test_a_no_data_alert_survives_a_worker_restart_and_resolves_on_the_next_reading(
    acme_device, launch, redis_server
):
    rule = Rule.objects.create(
        tenant=acme_device.tenant, device_type=acme_device.device_type, name="Silent",
        kind=RuleKind.NO_DATA, for_duration=timedelta(minutes=1),
    )  # fmt: skip
    # Not the current app: later tests in this process queue their tasks on the project's app.
    broker = Celery(broker=redis_server.url, set_as_current=False)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    first = start_worker(launch, redis_server)
    broker.send_task(
        "telemetry.ingest_batch",
        args=[[message(acme_device, now_ms - 3 * MINUTE, temperature=-18)]],
    )
    wait_until(lambda: Reading.objects.filter(device=acme_device).exists(), "reading", first)
    broker.send_task("rules.check_no_data")
    wait_until(lambda: Alert.objects.filter(rule=rule).exists(), "the no-data alert", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    second = start_worker(launch, redis_server)
    broker.send_task("rules.check_no_data")  # still silent: no second alert
    broker.send_task(
        "telemetry.ingest_batch", args=[[message(acme_device, now_ms, temperature=-18)]]
    )
    wait_until(
        lambda: Alert.objects.filter(rule=rule, state="resolved").exists(), "resolution", second
    )
    assert Alert.objects.filter(rule=rule).count() == 1
