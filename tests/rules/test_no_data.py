"""No-data rules (rules/engine.py check_no_data and the rules.check_no_data beat task): a device
silent past the rule's duration gets one alert, resolved by its next reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.models import Alert, AlertState
from devices.models import DeviceStatus
from rules.engine import check_no_data
from rules.models import Rule, RuleKind, RuleState
from rules.tasks import check_no_data_task
from tests.factories import make_device
from tests.rules.test_engine import send

NOW = datetime.now(UTC).replace(microsecond=0)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def no_data_rule(device_type, minutes: int = 10, metric: str = "") -> Rule:
    return Rule.objects.create(
        tenant=device_type.tenant, device_type=device_type, name=f"Silent {minutes} min",
        kind=RuleKind.NO_DATA, metric=metric, for_duration=timedelta(minutes=minutes),
    )  # fmt: skip


def test_a_device_silent_past_the_duration_gets_one_no_data_alert(acme_device):
    rule = no_data_rule(acme_device.device_type, 10, metric="temperature")
    send(acme_device, ms(NOW - timedelta(minutes=15)), temperature=-18)

    assert check_no_data(NOW) == 1
    assert check_no_data(NOW + timedelta(minutes=5)) == 0  # already firing: no second alert

    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.OPEN
    assert alert.first_triggered_at == NOW - timedelta(minutes=5)  # heard + 10 min
    assert alert.values == {"temperature": -18}
    assert RuleState.objects.get(rule=rule, device=acme_device).firing


def test_a_device_heard_within_the_duration_gets_no_alert(acme_device):
    no_data_rule(acme_device.device_type, 10)
    send(acme_device, ms(NOW - timedelta(minutes=9)), temperature=-18)

    assert check_no_data(NOW) == 0
    assert not Alert.objects.exists()


def test_a_device_that_never_reported_counts_from_its_creation(acme, acme_freezer_type):
    rule = no_data_rule(acme_freezer_type, 10)
    device = make_device(acme, "never-heard", device_type=acme_freezer_type)

    assert check_no_data(NOW + timedelta(minutes=5)) == 0
    assert check_no_data(device.created_at + timedelta(minutes=11)) == 1
    assert Alert.objects.get(rule=rule).device == device


def test_the_next_reading_resolves_the_no_data_alert_at_once(acme_device):
    rule = no_data_rule(acme_device.device_type, 10)
    send(acme_device, ms(NOW - timedelta(minutes=30)), temperature=-18)
    check_no_data(NOW)

    send(acme_device, ms(NOW + timedelta(seconds=5)), temperature=-18)

    (alert,) = Alert.objects.filter(rule=rule)
    assert alert.state == AlertState.RESOLVED
    assert not RuleState.objects.filter(rule=rule, firing=True).exists()
    assert check_no_data(NOW + timedelta(minutes=5)) == 0
    assert check_no_data(NOW + timedelta(minutes=11)) == 1  # silent again: a new alert


def test_only_the_rules_metric_counts_as_heard(acme_device):
    from devices.models import Metric

    Metric.objects.create(device_type=acme_device.device_type, name="door")
    no_data_rule(acme_device.device_type, 10, metric="temperature")
    send(acme_device, ms(NOW - timedelta(minutes=20)), temperature=-18)
    send(acme_device, ms(NOW - timedelta(minutes=1)), door=1)

    assert check_no_data(NOW) == 1


def test_devices_in_maintenance_or_disabled_and_other_tenants_are_not_checked(
    acme, acme_freezer_type, globex_device
):
    no_data_rule(acme_freezer_type, 10)
    make_device(acme, "resting", device_type=acme_freezer_type, status=DeviceStatus.MAINTENANCE)
    make_device(acme, "off", device_type=acme_freezer_type, is_enabled=False)

    assert check_no_data(NOW + timedelta(hours=1)) == 0
    assert not Alert.objects.exists()


def test_the_beat_task_runs_the_check(acme_device):
    rule = no_data_rule(acme_device.device_type, 1)
    send(acme_device, ms(NOW - timedelta(minutes=5)), temperature=-18)

    assert check_no_data_task.apply().get() == 1
    assert Alert.objects.filter(rule=rule).count() == 1
