"""The prediction through a real Celery worker process, sent the way beat sends it."""

from __future__ import annotations

import time

import pytest

from alerts.models import Alert, AlertKind
from maintenance.models import MaintenancePrediction
from tests.servers import celery_worker, database_url, free_port, output_of

SEND_IT = """
import django; django.setup()
from maintenance.tasks import score_fleet_task
print(score_fleet_task.delay().get(timeout=120))
"""


@pytest.mark.django_db(transaction=True)
def test_a_worker_scores_the_fleet_and_opens_the_maintenance_alert(
    pump_fleet, redis_server, launch
):
    _, _, _, wearing = pump_fleet
    env = {
        "DATABASE_URL": database_url(),
        "DATABASE_CONN_MAX_AGE": "0",
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "CELERY_RESULT_BACKEND": redis_server.url,
    }
    worker = launch(*celery_worker(f"maintenance-{free_port()}"), **env)
    deadline = time.monotonic() + 90
    while "ready." not in output_of(worker):
        assert worker.poll() is None, output_of(worker)
        assert time.monotonic() < deadline, f"the worker did not start:\n{output_of(worker)}"
        time.sleep(0.2)

    sender = launch("-c", SEND_IT, **env)
    assert sender.wait(timeout=150) == 0, output_of(sender) + output_of(worker)
    assert "{'scored': 11, 'at_risk': 1}" in output_of(sender)
    assert MaintenancePrediction.objects.count() == 11
    alert = Alert.objects.get(kind=AlertKind.MAINTENANCE)
    assert alert.device == wearing
