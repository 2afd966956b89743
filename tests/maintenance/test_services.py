"""Scoring the stored fleet: predictions with their evidence, maintenance alerts raised once,
kept up to date, resolved when the prediction goes away, and notified."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from alerts.models import (
    Alert,
    AlertEventKind,
    AlertKind,
    AlertState,
    NotificationChannel,
)
from devices.models import Device
from iotfleet.celery import app as celery_app
from maintenance.models import MaintenancePrediction
from maintenance.services import score_fleet
from maintenance.tasks import score_fleet_task
from maintenance.wear import Wear
from rules.models import Severity
from tests.api.clients import client_as
from tests.factories import make_device
from tests.maintenance.conftest import NOW, THRESHOLD, delete_readings, insert_readings, week_of


def test_scoring_stores_one_prediction_per_device_with_its_evidence(pump_fleet):
    _pump, vibration, healthy, wearing = pump_fleet
    result = score_fleet(NOW)
    assert result.scored == 11
    assert result.at_risk == 1
    predictions = MaintenancePrediction.objects.filter(metric=vibration)
    assert predictions.count() == 11
    worn = predictions.get(device=wearing)
    assert worn.at_risk
    assert not worn.crossed
    assert worn.days_left == pytest.approx(5.0, rel=0.15)
    assert worn.confidence > 0.7
    assert worn.health < 50
    assert worn.threshold == THRESHOLD
    assert worn.slope_per_day == pytest.approx((THRESHOLD - 3.0) / 15, rel=0.15)
    assert worn.evidence["hours_with_data"] == 168
    assert len(worn.evidence["hourly_mean"]) == 168
    assert worn.evidence["hourly_mean"][-1] == pytest.approx(worn.level, abs=0.5)
    assert worn.scored_at == NOW.replace(minute=0)
    assert not predictions.filter(device__in=healthy, at_risk=True).exists()
    assert min(p.health for p in predictions.filter(device__in=healthy)) > 80
    health = MaintenancePrediction.objects.device_health()
    assert health[wearing.pk] == worn.health


def test_a_device_at_risk_gets_one_maintenance_alert_and_later_runs_update_it(pump_fleet):
    _, vibration, _, wearing = pump_fleet
    score_fleet(NOW)
    score_fleet(NOW)
    alert = Alert.objects.get(kind=AlertKind.MAINTENANCE)
    assert (alert.device, alert.metric) == (wearing, vibration)
    assert alert.state == AlertState.OPEN
    assert alert.count == 2
    assert alert.severity == Severity.WARNING
    assert alert.title.startswith("Pump Worn: vibration expected to reach 11 mm/s in about ")
    assert alert.values["days_left"] == pytest.approx(5.0, rel=0.15)
    assert alert.values["threshold"] == THRESHOLD
    assert list(alert.events.values_list("kind", flat=True)) == [AlertEventKind.OPENED]


def test_a_crossing_within_three_days_is_critical(globex, pump_fleet):
    _, vibration, _, wearing = pump_fleet
    delete_readings(wearing)
    end = NOW.timestamp()
    soon = Wear(
        3.0, THRESHOLD, 0.3, start=end - 9 * 86400, cross_at=end + 2 * 86400, shape="linear"
    )
    insert_readings(wearing, vibration, *week_of(soon, seed=5))
    score_fleet(NOW)
    assert Alert.objects.get(kind=AlertKind.MAINTENANCE).severity == Severity.CRITICAL


def test_the_alert_resolves_when_the_prediction_goes_away(pump_fleet):
    _, vibration, _, wearing = pump_fleet
    score_fleet(NOW)
    alert = Alert.objects.get(kind=AlertKind.MAINTENANCE)
    # The bearing is replaced: a week later the vibration has been low and flat for days.
    later = NOW + timedelta(days=7)
    delete_readings(wearing)
    insert_readings(wearing, vibration, *week_of(Wear(2.5, THRESHOLD, 0.3), seed=3, end=later))
    for device in Device.objects.exclude(pk=wearing.pk):
        insert_readings(
            device, vibration, *week_of(Wear(3.0, THRESHOLD, 0.3), seed=device.pk, end=later)
        )
    score_fleet(later)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_by is None
    event = alert.events.get(kind=AlertEventKind.AUTO_RESOLVED)
    assert "no longer expects" in event.note
    assert not MaintenancePrediction.objects.get(device=wearing).at_risk


def test_a_device_that_stopped_sending_keeps_its_alert_open(pump_fleet):
    """No data is not good news: the alert stays until a prediction says otherwise."""
    _, _, _, wearing = pump_fleet
    score_fleet(NOW)
    delete_readings(wearing)
    score_fleet(NOW)
    assert Alert.objects.get(kind=AlertKind.MAINTENANCE).state == AlertState.OPEN


def test_channels_marked_for_maintenance_are_emailed(
    settings, globex, pump_fleet, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    NotificationChannel.objects.create(
        tenant=globex,
        name="Maintenance team",
        kind="email",
        email_to="maint@example.com",
        for_maintenance=True,
    )
    NotificationChannel.objects.create(
        tenant=globex, name="On call", kind="email", email_to="oncall@example.com"
    )
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            score_fleet(NOW)
    finally:
        celery_app.conf.task_always_eager = eager
    assert [m.to for m in mail.outbox] == [["maint@example.com"]]
    message = mail.outbox[0]
    assert "Pump Worn: vibration expected to reach 11 mm/s" in message.subject
    assert "predictive maintenance" in message.body.lower()
    assert "days_left" in message.body


def test_scoring_one_tenant_leaves_the_others_alone(acme, pump_fleet):
    _, _, _, wearing = pump_fleet
    score_fleet(NOW, tenant_id=acme.pk)
    assert not MaintenancePrediction.objects.exists()
    score_fleet(NOW, tenant_id=wearing.tenant_id)
    assert MaintenancePrediction.objects.count() == 11


def test_disabled_devices_and_types_without_wear_indicators_are_not_scored(acme, pump_fleet):
    _, _, healthy, _ = pump_fleet
    Device.objects.filter(pk=healthy[0].pk).update(is_enabled=False)
    make_device(acme, "acme-freezer-x")  # a freezer type without wear indicators
    result = score_fleet(NOW)
    assert [t.device_type for t in result.types] == ["Pump"]
    assert result.scored == 10


def test_the_task_scores_the_fleet(pump_fleet):
    assert score_fleet_task() == {"scored": 11, "at_risk": 1}


def test_beat_scores_the_fleet_hourly_from_an_editable_schedule(db):
    task = PeriodicTask.objects.get(name="maintenance.score_fleet")
    assert task.task == "maintenance.score_fleet"
    assert (task.interval.every, task.interval.period) == (1, "hours")
    assert task.enabled


def test_the_api_lists_maintenance_alerts_with_their_wear_indicator(carol, pump_fleet):
    score_fleet(NOW)
    response = client_as(carol).get(reverse("alert-list"), {"kind": "maintenance"})
    assert response.status_code == 200
    [alert] = response.data["results"]
    assert (alert["device"], alert["metric"], alert["kind"]) == (
        "globex-pump-worn",
        "vibration",
        "maintenance",
    )
    assert alert["values"]["threshold"] == THRESHOLD
