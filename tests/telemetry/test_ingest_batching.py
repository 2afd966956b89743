"""When the ingest worker hands a batch to Celery: by size, by age, gathering a trickle."""

from __future__ import annotations

import time

import pytest

from telemetry.ingest import IngestWorker


@pytest.fixture
def worker(settings):
    settings.INGEST_HOLD_SECONDS = 1.0
    settings.INGEST_MIN_BATCH = 100
    return IngestWorker(
        "mqtt://127.0.0.1:1", "t", batch_size=500, flush_seconds=0.05, backlog=lambda: waiting[0]
    )


waiting = [0]


def holding(worker: IngestWorker, count: int, age: float) -> IngestWorker:
    worker.pending = [["x", "", 0, "t", "r", "", 0]] * count
    worker.oldest = time.monotonic() - age
    return worker


@pytest.fixture(autouse=True)
def celery_idle():
    waiting[0] = 0


def test_a_full_batch_goes_at_once(worker):
    assert holding(worker, 500, 0.0).due()


def test_a_young_batch_waits_for_the_flush_interval(worker):
    assert not holding(worker, 300, 0.01).due()
    assert holding(worker, 300, 0.06).due()


def test_a_trickle_gathers_for_up_to_the_hold_time_instead_of_a_task_per_message(worker):
    assert not holding(worker, 3, 0.5).due()
    assert holding(worker, 3, 1.01).due()


def test_while_celery_has_batches_waiting_a_due_batch_grows(worker):
    waiting[0] = 2
    assert not holding(worker, 300, 0.06).due()
    assert holding(worker, 300, 1.01).due()
