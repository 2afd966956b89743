"""The prediction through a real Celery worker process, sent the way beat sends it."""

from __future__ import annotations

import pytest

from alerts.models import Alert, AlertKind
from maintenance.models import MaintenancePrediction
from tests.servers import celery_worker, free_port, output_of, process_env, wait_for_log

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
    env = process_env(redis_server)
    worker = launch(*celery_worker(f"maintenance-{free_port()}"), **env)
    wait_for_log(worker, "ready.", timeout=90, what="the worker")

    sender = launch("-c", SEND_IT, **env)
    assert sender.wait(timeout=150) == 0, output_of(sender) + output_of(worker)
    assert "{'scored': 11, 'at_risk': 1}" in output_of(sender)
    assert MaintenancePrediction.objects.count() == 11
    alert = Alert.objects.get(kind=AlertKind.MAINTENANCE)
    assert alert.device == wearing
