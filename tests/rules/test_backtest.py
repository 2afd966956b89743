"""Back-testing a rule against a seeded week of history (rules/backtest.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from alerts.models import Alert
from rules.backtest import backtest
from rules.models import Rule, RuleKind, RuleState
from telemetry.services import ingest_batch
from tests.factories import make_device
from tests.rules.test_engine import message

END = datetime(2026, 1, 8, 0, 0, tzinfo=UTC)
START = END - timedelta(days=7)
HOUR = 3_600_000


def seed_week(device, temperature_at) -> None:
    """Hourly readings over the week before END; `temperature_at(hour)` gives the value."""
    start_ms = int(START.timestamp() * 1000)
    ingest_batch(
        [message(device, start_ms + h * HOUR, temperature=temperature_at(h)) for h in range(168)]
    )


def test_backtest_counts_the_alerts_a_rule_would_have_raised_per_device_and_day(
    acme, acme_freezer_type
):
    warm = make_device(acme, "warm", device_type=acme_freezer_type)
    cold = make_device(acme, "cold", device_type=acme_freezer_type)
    # warm: above 8 °C for hours 30-31 (Jan 2), 100 (Jan 5) and 101-102 after one cold hour
    # (a flap within ALERT_FLAP_WINDOW? no: an hour apart, so a second alert that day).
    hot_hours = {30, 31, 100, 102, 103}
    seed_week(warm, lambda h: 12.0 if h in hot_hours else -18.0)
    seed_week(cold, lambda h: -18.0)
    rule = Rule(
        tenant=acme,
        device_type=acme_freezer_type,
        name="Warm",
        condition="temperature > 8",
        hysteresis=timedelta(minutes=5),
    )  # fmt: skip: not saved: a preview

    result = backtest(rule, 7, now=END)

    assert result.days == 7
    assert result.devices_checked == 2
    assert result.readings_checked == 2 * 168
    assert result.alerts == 3
    (device,) = result.devices
    assert (device.device_key, device.alerts, device.breaking_readings) == ("warm", 3, 5)
    assert device.first_at == START + timedelta(hours=30)
    assert device.last_at == START + timedelta(hours=102)
    per_day = dict(result.per_day)
    assert len(result.per_day) == 8  # every day of the span, for the chart
    assert per_day[date(2026, 1, 2)] == 1
    assert per_day[date(2026, 1, 5)] == 2
    assert sum(per_day.values()) == 3
    assert result.as_dict()["devices"][0]["alerts"] == 3
    assert not Alert.objects.exists()
    assert not RuleState.objects.exists()


def test_backtest_of_a_duration_rule_counts_only_long_enough_breaches(acme, acme_freezer_type):
    device = make_device(acme, "d1", device_type=acme_freezer_type)
    seed_week(device, lambda h: 12.0 if h in {10, 50, 51, 52} else -18.0)
    rule = Rule(
        tenant=acme, device_type=acme_freezer_type, name="Warm for 2h", kind=RuleKind.DURATION,
        condition="temperature > 8", for_duration=timedelta(hours=2),
    )  # fmt: skip

    result = backtest(rule, 7, now=END)

    assert result.alerts == 1
    assert result.devices[0].first_at == START + timedelta(hours=52)


def test_backtest_of_a_no_data_rule_counts_silences(acme, acme_freezer_type):
    device = make_device(acme, "quiet", device_type=acme_freezer_type)
    start_ms = int(START.timestamp() * 1000)
    ingest_batch(
        [
            message(device, start_ms + h * HOUR, temperature=-18.0)
            for h in range(168)
            if not 40 <= h < 45  # silent from hour 39 to 45: 6 hours
        ]
    )
    rule = Rule(
        tenant=acme, device_type=acme_freezer_type, name="Silent", kind=RuleKind.NO_DATA,
        for_duration=timedelta(hours=3),
    )  # fmt: skip

    result = backtest(rule, 7, now=END)

    assert result.alerts == 1
    assert result.devices[0].first_at == START + timedelta(hours=39 + 3)


def test_backtest_reads_at_most_the_configured_days(acme, acme_freezer_type, settings):
    settings.RULES_BACKTEST_MAX_DAYS = 3
    rule = Rule(tenant=acme, device_type=acme_freezer_type, name="r", condition="temperature > 8")

    result = backtest(rule, 30, now=END)

    assert result.days == 3
    assert result.start == END - timedelta(days=3)
