"""rules.services: what a rule must be to be saved, and what saving and deleting it do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from alerts.models import Alert, ChannelKind, NotificationChannel, RuleChannel
from devices.models import Device, DeviceType, Metric, Tenant
from rules.models import Rule, RuleKind, RuleState
from rules.services import RuleInvalid, check_rule, delete_rule, save_rule
from tests.factories import make_device, make_device_type

pytestmark = pytest.mark.django_db

AT = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


def new_rule(tenant: Tenant, device_type: DeviceType, **fields: Any) -> Rule:
    fields.setdefault("name", "Too warm")
    fields.setdefault("condition", "temperature > 8")
    return Rule(tenant=tenant, device_type=device_type, **fields)


def channel(tenant: Tenant, name: str = "On call") -> NotificationChannel:
    return email_channel(tenant, name)


# Shared with tests/rules/test_admin_rules.py and test_api_rules.py (imported from here).


@pytest.fixture
def freezer_type(acme_freezer_type: DeviceType) -> DeviceType:
    return with_door(acme_freezer_type)


def with_door(device_type: DeviceType) -> DeviceType:
    """Acme's freezers report temperature and door_open."""
    Metric.objects.get_or_create(device_type=device_type, name="door_open")
    return device_type


def email_channel(tenant: Tenant, name: str = "On call") -> NotificationChannel:
    return NotificationChannel.objects.create(
        tenant=tenant, name=name, kind=ChannelKind.EMAIL, email_to="oncall@example.com"
    )


def store(device: Device, metric: str, readings: list[tuple[datetime, float]]) -> None:
    """Readings written straight into the table, as ingest would."""
    metric_id = Metric.objects.get(device_type=device.device_type, name=metric).pk
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO telemetry_reading (time, device_id, metric_id, value, flagged) "
            "VALUES (%s, %s, %s, %s, false)",
            [(time, device.pk, metric_id, value) for time, value in readings],
        )


def store_warm_history(acme: Tenant, freezer_type: DeviceType, acme_device: Device) -> Device:
    """Three days of a freezer at -18 °C every 10 minutes, except twice, a day apart, three
    readings in a row at 15 °C; a second freezer that stays cold all along."""
    now = timezone.now().replace(second=0, microsecond=0)
    start = now - timedelta(days=3)
    warm_at = {start + timedelta(days=1, minutes=10 * k) for k in range(3)} | {
        start + timedelta(days=2, minutes=10 * k) for k in range(3)
    }
    times = [start + timedelta(minutes=10 * k) for k in range(3 * 24 * 6)]
    store(acme_device, "temperature", [(t, 15.0 if t in warm_at else -18.0) for t in times])
    cold = make_device(acme, "acme-freezer-2", device_type=freezer_type, name="Freezer 2")
    store(cold, "temperature", [(t, -20.0) for t in times])
    return acme_device


def refusal(rule: Rule) -> RuleInvalid:
    with pytest.raises(RuleInvalid) as caught:
        check_rule(rule)
    return caught.value


# --- Conditions ---------------------------------------------------------------------------------


def test_a_threshold_on_a_metric_of_the_type_is_accepted(acme, freezer_type):
    expression = check_rule(new_rule(acme, freezer_type, condition="temperature > 8"))
    assert expression.metrics == {"temperature"}


def test_a_condition_that_does_not_parse_is_refused_with_its_position(acme, freezer_type):
    error = refusal(new_rule(acme, freezer_type, condition="temperature > > 8"))
    [message] = error.message_dict["condition"]
    assert message.endswith("(at character 14)")
    assert error.position == 14
    assert error.expression_error.pointer().splitlines() == ["temperature > > 8", " " * 14 + "^"]


def test_a_metric_the_type_lacks_is_refused_and_named(acme, freezer_type):
    error = refusal(new_rule(acme, freezer_type, condition="temperature > 8 and humidity < 20"))
    [message] = error.message_dict["condition"]
    assert "humidity" in message
    assert error.position == 20


def test_another_types_metric_is_refused_even_if_the_tenant_has_it(acme, freezer_type):
    sensor = make_device_type(acme, "Environment sensor")
    Metric.objects.create(device_type=sensor, name="humidity")
    error = refusal(new_rule(acme, freezer_type, condition="humidity > 80"))
    assert "humidity" in error.message_dict["condition"][0]


def test_an_empty_condition_is_refused_with_an_example(acme, freezer_type):
    error = refusal(new_rule(acme, freezer_type, condition="  "))
    assert error.message_dict["condition"] == ["Write the condition, e.g. temperature > 80."]


@pytest.mark.parametrize(
    ("kind", "condition", "advice"),
    [
        (RuleKind.THRESHOLD, "avg(temperature, 10m) > 8", "window of readings"),
        (RuleKind.RATE, "temperature > 8", "rate() or delta()"),
        (RuleKind.ZSCORE, "temperature > 8", "zscore()"),
        (RuleKind.COMPOUND, "temperature > 8", "at least two comparisons"),
        (RuleKind.COMPOUND, "temperature < -30 < door_open", "at least two comparisons"),
    ],
)
def test_a_condition_that_does_not_fit_the_kind_is_refused(
    acme, freezer_type, kind, condition, advice
):
    error = refusal(new_rule(acme, freezer_type, kind=kind, condition=condition))
    assert advice in error.message_dict["condition"][0]


@pytest.mark.parametrize(
    ("kind", "condition", "for_duration"),
    [
        (RuleKind.THRESHOLD, "temperature > 8", timedelta(0)),
        (RuleKind.THRESHOLD, "abs(temperature) > max(8, door_open * 10)", timedelta(0)),
        (RuleKind.DURATION, "temperature > 8", timedelta(minutes=5)),
        (RuleKind.RATE, "rate(temperature) > 2", timedelta(0)),
        (RuleKind.RATE, "abs(delta(temperature)) > 5", timedelta(0)),
        (RuleKind.ZSCORE, "abs(zscore(temperature, 1h)) > 3", timedelta(0)),
        (RuleKind.COMPOUND, "temperature > 8 and door_open == 1", timedelta(0)),
        (RuleKind.COMPOUND, "avg(temperature, 10m) > 0 or not (door_open == 0)", timedelta(0)),
    ],
)
def test_each_kind_accepts_a_condition_that_fits_it(
    acme, freezer_type, kind, condition, for_duration
):
    rule = new_rule(acme, freezer_type, kind=kind, condition=condition, for_duration=for_duration)
    assert check_rule(rule) is not None


def test_a_duration_rule_needs_how_long(acme, freezer_type):
    error = refusal(new_rule(acme, freezer_type, kind=RuleKind.DURATION))
    assert "for_duration" in error.message_dict


def test_a_no_data_rule_ignores_the_condition_and_checks_its_metric(acme, freezer_type):
    silent = new_rule(
        acme,
        freezer_type,
        kind=RuleKind.NO_DATA,
        condition="this is ignored ((",
        metric="temperature",
        for_duration=timedelta(minutes=10),
    )
    assert check_rule(silent) is None

    silent.metric = "humidity"
    error = refusal(silent)
    assert "Freezer has no metric 'humidity'" in error.message_dict["metric"][0]
    assert "temperature" in error.message_dict["metric"][0]


def test_a_no_data_rule_needs_how_long_a_device_may_stay_silent(acme, freezer_type):
    error = refusal(new_rule(acme, freezer_type, kind=RuleKind.NO_DATA))
    assert "for_duration" in error.message_dict


def test_every_problem_is_reported_at_once(acme, freezer_type, acme_group):
    rule = new_rule(
        acme, freezer_type, condition="temperatur > 8", group=acme_group, tag="cold", name=""
    )
    error = refusal(rule)
    assert {"condition", "group", "name"} <= set(error.message_dict)


HOSTILE = [
    "__import__('os').system('id')",
    "__class__",
    "temperature.__class__",
    "temperature.real > 1",
    "import os",
    "exec('1')",
    "eval('1')",
    "open('/etc/passwd')",
    "lambda: 1",
    "temperature if 1 else 2",
    "[temperature]",
    "{'a': 1}",
    "temperature[0] > 1",
    "'text' == temperature",
    "temperature ** 2 > 1",
    "temperature > 1; import os",
    "temperature := 5",
    "globals()",
    "getattr(temperature, 'real')",
    "os.system('ls')",
    "temperature > 1e999",
    "temperature > " + "9" * 400,
    "(" * 500 + "temperature" + ")" * 500 + " > 1",
    "not " * 500 + "temperature > 1",
    " + ".join(["temperature"] * 1000) + " > 1",
    "temperature > 1 and",
    "temperature >",
    "> 8",
    "temperature > 8)",
    "(temperature > 8",
    "temperature >< 8",
    "temperature > 8 && door_open == 1",
    "temperature > 8 || door_open == 1",
    "avg(temperature) > 8",
    "avg(temperature, -10m) > 8",
    "avg(temperature, 10 years) > 8",
    "avg(9, 10m) > 8",
    "rate(temperature, 10m, 5) > 1",
    "zscore(temperature, 0s) > 3",
    "sum(temperature) > 8",
    "temperature > 8\x00",
    "température > 8",
    "temperature > 0x10",
    "True",
    "None > 1",
    "x" * 5000 + " > 1",
]


@pytest.mark.parametrize("condition", HOSTILE)
def test_hostile_or_malformed_conditions_are_refused_with_a_position(acme, freezer_type, condition):
    error = refusal(new_rule(acme, freezer_type, kind=RuleKind.COMPOUND, condition=condition))
    [message] = error.message_dict["condition"]
    assert error.position is not None
    assert message.endswith(f"(at character {error.position})")
    assert len(message) < 400, "an error message should be short enough to read"


def test_the_hostile_list_is_long_enough():
    assert len(set(HOSTILE)) >= 30


# --- Scope --------------------------------------------------------------------------------------


def test_a_rule_cannot_watch_another_tenants_device_type(acme, globex_pump_type):
    error = refusal(new_rule(acme, globex_pump_type))
    assert "another tenant" in error.message_dict["device_type"][0]


def test_a_rule_cannot_narrow_to_another_tenants_group(acme, freezer_type, globex_group):
    error = refusal(new_rule(acme, freezer_type, group=globex_group))
    assert "another tenant" in error.message_dict["group"][0]


def test_a_rule_cannot_narrow_to_another_tenants_device(acme, freezer_type, globex_device):
    error = refusal(new_rule(acme, freezer_type, device=globex_device))
    assert "device" in error.message_dict


def test_a_rule_narrows_to_one_group_tag_or_device_not_several(
    acme, freezer_type, acme_group, acme_device
):
    error = refusal(new_rule(acme, freezer_type, group=acme_group, device=acme_device))
    assert "one group, one tag or one device" in error.message_dict["group"][0]


def test_a_rule_name_is_unique_in_its_tenant(acme, freezer_type):
    save_rule(new_rule(acme, freezer_type))
    error = refusal(new_rule(acme, freezer_type))
    assert error.message_dict


# --- Saving and deleting ------------------------------------------------------------------------


def test_save_rule_saves_the_channels_in_the_order_given(acme, freezer_type, alice):
    first, second, third = channel(acme, "First"), channel(acme, "Second"), channel(acme, "Third")

    rule = save_rule(new_rule(acme, freezer_type), [second, first], alice)

    assert rule.created_by == alice
    links = RuleChannel.objects.filter(rule=rule).order_by("position")
    assert [link.channel for link in links] == [second, first]

    save_rule(rule, [third, second])

    links = RuleChannel.objects.filter(rule=rule).order_by("position")
    assert [(link.channel, link.position) for link in links] == [(third, 0), (second, 1)]


def test_save_rule_without_channels_keeps_the_ones_it_had(acme, freezer_type):
    on_call = channel(acme)
    rule = save_rule(new_rule(acme, freezer_type), [on_call])
    rule.severity = "critical"

    save_rule(rule, None)

    assert list(rule.channels.all()) == [on_call]


def test_save_rule_refuses_another_tenants_channel_and_saves_nothing(acme, globex, freezer_type):
    theirs = channel(globex, "Globex on call")

    with pytest.raises(RuleInvalid) as caught:
        save_rule(new_rule(acme, freezer_type), [theirs])

    assert "another tenant" in caught.value.message_dict["channels"][0]
    assert not Rule.objects.exists()


def test_save_rule_refuses_an_invalid_rule_and_saves_nothing(acme, freezer_type):
    with pytest.raises(RuleInvalid):
        save_rule(new_rule(acme, freezer_type, condition="temperature >"))
    assert not Rule.objects.exists()


def _remembered_state(rule: Rule, device) -> RuleState:
    return RuleState.objects.create(
        rule=rule,
        device=device,
        breaching=True,
        firing=True,
        since=AT,
        last_time=AT,
        values={"temperature": [1, 9.5]},
    )


@pytest.mark.parametrize(
    "change",
    [
        {"condition": "temperature > 10"},
        {"kind": RuleKind.DURATION, "for_duration": timedelta(minutes=5)},
        {"tag": "pharma"},
    ],
    ids=["condition", "kind", "scope"],
)
def test_changing_what_a_rule_evaluates_resets_its_state(acme, freezer_type, acme_device, change):
    rule = save_rule(new_rule(acme, freezer_type))
    _remembered_state(rule, acme_device)
    for name, value in change.items():
        setattr(rule, name, value)

    save_rule(rule)

    state = RuleState.objects.get(rule=rule)
    assert (state.breaching, state.since, state.values) == (False, None, {})
    # The open alert stays open; it resolves itself once the new condition has been clear.
    assert state.firing is True


def test_renaming_a_rule_keeps_its_state(acme, freezer_type, acme_device):
    rule = save_rule(new_rule(acme, freezer_type))
    _remembered_state(rule, acme_device)
    rule.name = "Freezer too warm"
    rule.severity = "critical"

    save_rule(rule)

    state = RuleState.objects.get(rule=rule)
    assert state.breaching is True
    assert state.values == {"temperature": [1, 9.5]}


def test_delete_rule_keeps_its_alerts_as_history(acme, freezer_type, acme_device):
    rule = save_rule(new_rule(acme, freezer_type), [channel(acme)])
    _remembered_state(rule, acme_device)
    alert = Alert.objects.create(
        tenant=acme,
        rule=rule,
        device=acme_device,
        title="Too warm on Freezer 1",
        first_triggered_at=AT,
        last_triggered_at=AT,
    )

    delete_rule(rule)

    assert not Rule.objects.exists()
    assert not RuleState.objects.exists()
    assert not RuleChannel.objects.exists()
    alert.refresh_from_db()
    assert alert.rule is None


def test_a_rule_can_watch_a_single_device_of_its_type(acme, freezer_type):
    device = make_device(acme, "acme-freezer-9", device_type=freezer_type)
    rule = save_rule(new_rule(acme, freezer_type, device=device))
    assert rule.device == device


# --- Demo rules ---------------------------------------------------------------------------------


def _demo_rules() -> list[tuple]:
    return list(
        Rule.objects.order_by("name").values_list(
            "tenant__slug", "name", "kind", "condition", "for_duration", "group__name"
        )
    )


def test_seeding_the_demo_twice_gives_the_same_rules():
    call_command("seed_demo", devices=0, stdout=StringIO())
    first = _demo_rules()
    links = list(RuleChannel.objects.values_list("rule__name", "channel__name", "position"))

    output = StringIO()
    call_command("seed_demo", devices=0, stdout=output)

    assert _demo_rules() == first
    assert list(RuleChannel.objects.values_list("rule__name", "channel__name", "position")) == links
    assert NotificationChannel.objects.count() == 1
    assert "Created 0 alert rules" in output.getvalue()
    assert {kind for _, _, kind, *_ in first} >= {"threshold", "duration", "compound"}
    assert {channel for _, channel, _ in links} == {"Cold-chain on-call (email)"}
    for rule in Rule.objects.all():
        assert check_rule(rule) is not None
