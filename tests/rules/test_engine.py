"""Rule evaluation on ingest (rules/engine.py): each kind fires and clears, dedup, hysteresis,
scope, rules that no longer parse, redelivered batches. Readings go through the real
telemetry.services.ingest_batch, which hands what it stored to evaluate_batch."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from alerts.models import Alert, AlertState
from devices.models import DeviceType, Metric
from rules import engine
from rules.models import Rule, RuleKind, RuleState
from telemetry.services import ingest_batch
from tests.factories import make_device, make_device_type

T0 = int(datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def message(device, ts_ms: int, **metrics: float) -> list:
    """A telemetry entry as telemetry/validation.py's parse_message builds it."""
    return ["t", device.key, ts_ms, [[ts_ms, None, metrics]], [], ""]


def send(device, ts_ms: int, **metrics: float):
    return ingest_batch([message(device, ts_ms, **metrics)])


def make_rule(device_type: DeviceType, condition: str = "temperature > 8", **fields) -> Rule:
    return Rule.objects.create(
        tenant=device_type.tenant,
        device_type=device_type,
        name=fields.pop("name", condition),
        condition=condition,
        kind=fields.pop("kind", RuleKind.THRESHOLD),
        **fields,
    )


def alerts_of(rule: Rule, device=None) -> list[Alert]:
    found = Alert.objects.filter(rule=rule).order_by("id")
    return list(found.filter(device=device) if device else found)


@pytest.fixture
def freezer(acme_device):
    Metric.objects.get_or_create(
        device_type=acme_device.device_type, name="humidity", defaults={"unit": "%"}
    )
    return acme_device


# --- each kind fires and clears -----------------------------------------------------------------
def test_threshold_rule_opens_an_alert_with_the_triggering_value(freezer):
    rule = make_rule(freezer.device_type, "temperature > 8", severity="critical")

    send(freezer, T0, temperature=5)
    assert alerts_of(rule) == []
    send(freezer, T0 + MINUTE, temperature=10.5)

    (alert,) = alerts_of(rule)
    assert alert.state == AlertState.OPEN
    assert alert.severity == "critical"
    assert alert.count == 1
    assert alert.values["temperature"] == 10.5
    assert alert.first_triggered_at == at(T0 + MINUTE)


def test_threshold_alert_resolves_itself_once_clear_for_the_hysteresis(freezer):
    rule = make_rule(freezer.device_type, hysteresis=timedelta(minutes=5))
    send(freezer, T0, temperature=10)

    send(freezer, T0 + 1 * MINUTE, temperature=4)
    (alert,) = alerts_of(rule)
    assert alert.state == AlertState.OPEN
    assert alert.cleared_at == at(T0 + MINUTE)

    send(freezer, T0 + 4 * MINUTE, temperature=4)
    alert.refresh_from_db()
    assert alert.state == AlertState.OPEN  # clear for 3 minutes only

    send(freezer, T0 + 6 * MINUTE, temperature=4)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_by is None
    assert not RuleState.objects.filter(rule=rule, device=freezer, firing=True).exists()


def test_duration_rule_fires_only_once_the_condition_held_for_its_duration(freezer):
    rule = make_rule(freezer.device_type, kind=RuleKind.DURATION, for_duration=timedelta(minutes=5))
    for minute in range(5):  # breaking from T0 to T0+4m: held 4 minutes
        send(freezer, T0 + minute * MINUTE, temperature=9)
        assert alerts_of(rule) == [], f"fired after {minute} minutes"

    send(freezer, T0 + 5 * MINUTE, temperature=9)

    (alert,) = alerts_of(rule)
    assert alert.first_triggered_at == at(T0 + 5 * MINUTE)
    assert alert.count == 1


def test_duration_rule_starts_over_when_the_condition_breaks_off(freezer):
    rule = make_rule(freezer.device_type, kind=RuleKind.DURATION, for_duration=timedelta(minutes=5))
    ingest_batch(
        [
            message(freezer, T0, temperature=9),
            message(freezer, T0 + 3 * MINUTE, temperature=9),
            message(freezer, T0 + 4 * MINUTE, temperature=2),  # breaks off
            message(freezer, T0 + 6 * MINUTE, temperature=9),
            message(freezer, T0 + 10 * MINUTE, temperature=9),
        ]
    )
    assert alerts_of(rule) == []

    send(freezer, T0 + 11 * MINUTE, temperature=9)
    (alert,) = alerts_of(rule)
    assert alert.first_triggered_at == at(T0 + 11 * MINUTE)


def test_rate_rule_fires_on_a_fast_rise_and_clears_when_it_levels(freezer):
    rule = make_rule(
        freezer.device_type, "rate(temperature) > 2", kind=RuleKind.RATE, hysteresis=timedelta(0)
    )
    send(freezer, T0, temperature=-20)
    send(freezer, T0 + MINUTE, temperature=-19)  # +1 per minute
    assert alerts_of(rule) == []

    send(freezer, T0 + 2 * MINUTE, temperature=-13)  # +6 per minute
    (alert,) = alerts_of(rule)
    assert alert.values["rate(temperature)"] == pytest.approx(6.0)

    send(freezer, T0 + 4 * MINUTE, temperature=-13)  # level
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED


def test_zscore_rule_fires_on_an_outlier_against_the_devices_own_history(freezer):
    rule = make_rule(
        freezer.device_type, "zscore(temperature, 1h) > 4", kind=RuleKind.ZSCORE,
        hysteresis=timedelta(0),
    )  # fmt: skip
    history = [
        message(freezer, T0 + n * MINUTE, temperature=-18 + (n % 3) * 0.5) for n in range(30)
    ]
    ingest_batch(history[:15])
    ingest_batch(history[15:])  # the statistics go on across batches
    assert alerts_of(rule) == []

    send(freezer, T0 + 30 * MINUTE, temperature=-5)
    (alert,) = alerts_of(rule)
    assert alert.values["zscore(temperature,3600)"] > 4

    send(freezer, T0 + 31 * MINUTE, temperature=-17.5)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED


def test_window_statistics_are_the_devices_one_row_shared_by_the_rules_using_them(freezer):
    import numpy as np

    from rules.models import DeviceWindows

    make_rule(freezer.device_type, "avg(temperature, 10m) > 100", name="average")
    make_rule(freezer.device_type, "abs(temperature - avg(temperature, 10m)) > 50", name="jump")
    make_rule(freezer.device_type, "zscore(temperature, 1h) > 4", kind=RuleKind.ZSCORE)
    history = [message(freezer, T0 + n * MINUTE, temperature=-18 + n % 3) for n in range(12)]
    ingest_batch(history[:5])
    ingest_batch(history[5:])

    (windows,) = DeviceWindows.objects.all()
    assert windows.device_id == freezer.id
    assert windows.terms.split("\n") == ["avg(temperature,600)", "zscore(temperature,3600)"]
    stats = np.frombuffer(bytes(windows.stats), dtype="<f8").reshape(2, engine.WIDTH)
    assert stats[:, engine.N].tolist() == [12, 12]  # every reading, once, across both batches
    assert stats[:, engine.T].tolist() == [T0 + 11 * MINUTE] * 2
    assert not RuleState.objects.exists()  # a quiet device: nothing else to remember


def test_zscore_is_unknown_until_ten_readings_of_history(freezer):
    rule = make_rule(freezer.device_type, "zscore(temperature, 1h) > 1", kind=RuleKind.ZSCORE)
    ingest_batch([message(freezer, T0 + n * MINUTE, temperature=n * 5 - 30) for n in range(10)])

    assert alerts_of(rule) == []  # each reading far above the last, but too little history


def test_compound_rule_over_two_metrics_with_and_or_not(freezer):
    rule = make_rule(
        freezer.device_type,
        "(temperature > 8 and not humidity < 30) or humidity > 95",
        kind=RuleKind.COMPOUND,
        hysteresis=timedelta(0),
    )
    send(freezer, T0, temperature=10, humidity=20)  # warm but dry: not
    send(freezer, T0 + MINUTE, temperature=5, humidity=60)  # cold
    assert alerts_of(rule) == []

    send(freezer, T0 + 2 * MINUTE, temperature=10, humidity=60)
    (alert,) = alerts_of(rule)
    assert alert.values == {"temperature": 10, "humidity": 60}

    send(freezer, T0 + 3 * MINUTE, temperature=2, humidity=60)
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED

    send(freezer, T0 + 4 * MINUTE, temperature=2, humidity=99)  # the other branch
    assert len(alerts_of(rule)) == 2


def test_a_message_with_some_metrics_is_evaluated_with_the_others_last_values(freezer):
    rule = make_rule(
        freezer.device_type, "temperature > 8 and humidity > 50", kind=RuleKind.COMPOUND
    )
    send(freezer, T0, temperature=10, humidity=40)
    send(freezer, T0 + MINUTE, humidity=70)  # temperature 10 carried from the last batch
    (alert,) = alerts_of(rule)
    assert alert.values == {"temperature": 10, "humidity": 70}

    send(freezer, T0 + 2 * MINUTE, temperature=12)  # humidity 70 carried
    alert.refresh_from_db()
    assert alert.count == 2


# --- dedup, hysteresis, flapping ----------------------------------------------------------------
def test_a_thousand_breaking_readings_in_one_batch_make_one_alert_counting_them(freezer):
    rule = make_rule(freezer.device_type)

    ingest_batch([message(freezer, T0 + n * 1000, temperature=9 + n % 5) for n in range(1000)])

    (alert,) = alerts_of(rule)
    assert alert.count == 1000
    assert alert.state == AlertState.OPEN
    assert alert.first_triggered_at == at(T0)
    assert alert.last_triggered_at == at(T0 + 999_000)


def test_a_thousand_breaking_readings_over_many_batches_make_one_alert_counting_them(freezer):
    rule = make_rule(freezer.device_type)
    for batch in range(10):
        ingest_batch(
            [message(freezer, T0 + (batch * 100 + n) * 1000, temperature=9) for n in range(100)]
        )

    (alert,) = alerts_of(rule)
    assert alert.count == 1000


def test_breaking_again_within_the_hysteresis_keeps_the_same_alert_open(freezer):
    rule = make_rule(freezer.device_type, hysteresis=timedelta(minutes=5))
    send(freezer, T0, temperature=10)
    send(freezer, T0 + MINUTE, temperature=3)  # clear for 2 minutes ...
    send(freezer, T0 + 3 * MINUTE, temperature=3)
    send(freezer, T0 + 4 * MINUTE, temperature=11)  # ... then breaking again
    send(freezer, T0 + 8 * MINUTE, temperature=3)  # clear for 4 minutes only
    send(freezer, T0 + 12 * MINUTE, temperature=3)

    (alert,) = alerts_of(rule)
    assert alert.state == AlertState.OPEN
    assert alert.count == 2
    assert alert.cleared_at == at(T0 + 8 * MINUTE)


def test_flapping_within_one_batch_never_resolves_before_the_hysteresis(freezer):
    rule = make_rule(freezer.device_type, hysteresis=timedelta(minutes=5))
    ingest_batch(
        [message(freezer, T0 + n * MINUTE, temperature=10 if n % 2 else 2) for n in range(20)]
    )
    (alert,) = alerts_of(rule)
    assert alert.state == AlertState.OPEN
    assert alert.count == 10


# --- scope --------------------------------------------------------------------------------------
def test_a_rule_narrowed_to_a_group_ignores_devices_outside_it(acme, acme_freezer_type, acme_group):
    inside = make_device(acme, "in-group", device_type=acme_freezer_type)
    outside = make_device(acme, "not-in-group", device_type=acme_freezer_type)
    inside.groups.add(acme_group)
    rule = make_rule(acme_freezer_type, group=acme_group)

    ingest_batch([message(inside, T0, temperature=20), message(outside, T0, temperature=20)])

    assert [a.device_id for a in alerts_of(rule)] == [inside.id]


def test_a_rule_narrowed_to_a_tag_ignores_devices_without_it(acme, acme_freezer_type):
    tagged = make_device(acme, "tagged", device_type=acme_freezer_type, tags=["vaccines"])
    other = make_device(acme, "untagged", device_type=acme_freezer_type, tags=["food"])
    rule = make_rule(acme_freezer_type, tag="vaccines")

    ingest_batch([message(tagged, T0, temperature=20), message(other, T0, temperature=20)])

    assert [a.device_id for a in alerts_of(rule)] == [tagged.id]


def test_a_rule_for_one_device_ignores_the_others(acme, acme_freezer_type):
    one = make_device(acme, "the-one", device_type=acme_freezer_type)
    other = make_device(acme, "another", device_type=acme_freezer_type)
    rule = make_rule(acme_freezer_type, device=one)

    ingest_batch([message(one, T0, temperature=20), message(other, T0, temperature=20)])

    assert [a.device_id for a in alerts_of(rule)] == [one.id]


def test_a_rule_never_evaluates_devices_of_another_type_or_tenant(acme, acme_device, globex_device):
    chiller = make_device_type(acme, "Chiller")
    acme_chiller = make_device(acme, "chiller-1", device_type=chiller)
    rule = make_rule(acme_device.device_type)

    ingest_batch(
        [
            message(globex_device, T0, temperature=50),
            message(acme_chiller, T0, temperature=50),
        ]
    )

    assert alerts_of(rule) == []
    assert not RuleState.objects.filter(rule=rule).exists()


def test_a_disabled_rule_is_not_evaluated(freezer):
    rule = make_rule(freezer.device_type, is_enabled=False)
    send(freezer, T0, temperature=20)
    assert alerts_of(rule) == []


# --- robustness ---------------------------------------------------------------------------------
def test_a_rule_that_no_longer_parses_is_skipped_and_ingest_goes_on(freezer, caplog):
    broken = make_rule(freezer.device_type, "humidity > 90", name="Too humid")
    working = make_rule(freezer.device_type, "temperature > 8")
    Metric.objects.filter(device_type=freezer.device_type, name="humidity").delete()

    with caplog.at_level(logging.WARNING, logger="rules.engine"):
        result = send(freezer, T0, temperature=20)

    assert result.readings_stored == 1
    assert alerts_of(broken) == []
    assert len(alerts_of(working)) == 1
    assert "Too humid" in caplog.text
    assert "no longer parses" in caplog.text


def test_a_redelivered_batch_evaluates_nothing_twice(freezer):
    rule = make_rule(freezer.device_type)
    batch = [message(freezer, T0 + n * 1000, temperature=9) for n in range(5)]

    ingest_batch(batch)
    again = ingest_batch(batch)

    assert again.readings_stored == 0
    (alert,) = alerts_of(rule)
    assert alert.count == 5


def test_late_readings_do_not_move_the_state_back(freezer):
    rule = make_rule(freezer.device_type, kind=RuleKind.DURATION, for_duration=timedelta(minutes=5))
    send(freezer, T0 + 10 * MINUTE, temperature=9)
    send(freezer, T0 + 2 * MINUTE, temperature=9)  # late: before the state's last reading
    send(freezer, T0 + 11 * MINUTE, temperature=9)

    assert alerts_of(rule) == []  # breaching since T0+10m, not since the late T0+2m
    state = RuleState.objects.get(rule=rule, device=freezer)
    assert state.since == at(T0 + 10 * MINUTE)


def test_batches_with_no_rule_cost_one_query(freezer, django_assert_num_queries):
    readings = [(freezer.id, 1, T0, 5.0)]
    with django_assert_num_queries(1):
        engine.evaluate_batch(readings, {freezer.id: (freezer.tenant_id, freezer.device_type_id)})


def test_quiet_devices_leave_no_state_behind(freezer):
    rule = make_rule(freezer.device_type)
    send(freezer, T0, temperature=2)
    assert not RuleState.objects.filter(rule=rule).exists()

    send(freezer, T0 + MINUTE, temperature=20)
    assert RuleState.objects.get(rule=rule, device=freezer).firing


def test_window_averages_weigh_readings_by_their_age():
    """avg with a time constant of one minute, readings one minute apart: weights e^-age."""
    import numpy as np

    state = np.array([engine.EMPTY_WINDOW], dtype=float)
    outs = [
        engine.advance_window("avg", 60_000, state, np.array([x]), np.array([t * 60_000]))[0]
        for t, x in enumerate([10.0, 20.0, 30.0])
    ]
    e = np.exp(-1)
    assert outs[0] == 10
    assert outs[1] == pytest.approx((10 * e + 20) / (e + 1))
    assert outs[2] == pytest.approx((10 * e * e + 20 * e + 30) / (e * e + e + 1))
