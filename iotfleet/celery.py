"""The Celery application: settings come from Django's settings under the CELERY namespace."""

import gc
import logging
import os

from celery import Celery
from celery.signals import (
    after_setup_logger,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotfleet.settings")

app = Celery("iotfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
def quiet_per_task_lines(**_: object) -> None:
    """Telemetry arrives as many small tasks a second: "received" and "succeeded" lines per
    task would drown the log. Failures and retries are still logged."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@task_prerun.connect
@task_postrun.connect
def recycle_database_connections(task: object = None, **_: object) -> None:
    """Around every task what Django does around every request: a connection past CONN_MAX_AGE,
    or left unusable by an error, is closed (the next query opens a fresh one), and a kept one
    is health-checked before its next use. Not for eager tasks, which run inside the caller's
    transaction. (Tasks here run without time limits, so no query is cut short by a signal.)"""
    if getattr(getattr(task, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_init.connect
@worker_process_init.connect
def freeze_startup_objects(**_: object) -> None:
    """Leave what a worker process holds at start (Django, Celery, the modules: ~300,000
    objects) out of the garbage collector's rounds, in the main process and in each pool
    process. A batch allocates tens of thousands of lists and tuples, so full collections came
    every few batches, each walking the whole heap (py-spy: a fifth of a pool process's time in
    ingest_batch)."""
    gc.freeze()
