"""/api/v1/rules/: rules through the API, checked like the admin's, and back-tested unsaved.

Tenancy (list, detail, create, update, delete across tenants and roles) is covered for every
viewset by tests/api/test_tenancy.py with the case in tests/api/cases_rules.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from alerts.models import RuleChannel
from devices.models import DeviceType, Tenant
from rules.models import Rule, RuleKind
from rules.services import save_rule
from tests.api.clients import client_as, listed
from tests.rules.test_rule_validation import email_channel, store_warm_history, with_door

pytestmark = pytest.mark.django_db

RULES = reverse("rule-list")
BACKTEST = reverse("rule-backtest-draft")


@pytest.fixture
def freezer_type(acme_freezer_type: DeviceType) -> DeviceType:
    return with_door(acme_freezer_type)


@pytest.fixture
def warm_history(acme, freezer_type, acme_device):
    return store_warm_history(acme, freezer_type, acme_device)


def detail(rule: Rule) -> str:
    return reverse("rule-detail", args=[rule.pk])


def payload(of_type: DeviceType, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "Too warm",
        "kind": "threshold",
        "condition": "temperature > 8",
        "severity": "critical",
        "device_type": of_type.pk,
    }
    body.update(fields)
    return body


def saved_rule(tenant: Tenant, device_type: DeviceType, **fields: Any) -> Rule:
    fields.setdefault("name", "Too warm")
    fields.setdefault("condition", "temperature > 8")
    return save_rule(Rule(tenant=tenant, device_type=device_type, **fields))


# --- Writing ------------------------------------------------------------------------------------


def test_an_operator_creates_a_rule_with_channels_in_escalation_order(alice, acme, freezer_type):
    first, second = email_channel(acme, "Day shift"), email_channel(acme, "Night shift")

    response = client_as(alice).post(
        RULES, payload(freezer_type, channels=[second.pk, first.pk]), format="json"
    )

    assert response.status_code == 201, response.data
    assert response.data["channels"] == [second.pk, first.pk]
    assert response.data["created_by"] == "alice"
    rule = Rule.objects.get(pk=response.data["id"])
    assert [link.channel_id for link in RuleChannel.objects.filter(rule=rule)] == [
        second.pk,
        first.pk,
    ]


def test_a_condition_that_does_not_parse_answers_400_with_its_position(alice, freezer_type):
    response = client_as(alice).post(
        RULES, payload(freezer_type, condition="temperature > > 8"), format="json"
    )

    assert response.status_code == 400
    [message] = response.json()["condition"]
    assert message.endswith("(at character 14)")
    assert response.json()["position"] == 14
    assert not Rule.objects.exists()


def test_a_metric_the_type_lacks_answers_400_naming_it(alice, freezer_type):
    response = client_as(alice).post(
        RULES, payload(freezer_type, condition="temperature > 8 and humidity > 80"), format="json"
    )

    assert response.status_code == 400
    assert "humidity" in response.json()["condition"][0]
    assert response.json()["position"] == 20


def test_a_condition_that_does_not_fit_the_kind_answers_400_without_a_position(alice, freezer_type):
    response = client_as(alice).post(
        RULES, payload(freezer_type, kind="rate", condition="temperature > 8"), format="json"
    )

    assert response.status_code == 400
    assert "rate() or delta()" in response.json()["condition"][0]
    assert "position" not in response.json()


def test_a_taken_name_answers_400(alice, acme, freezer_type):
    saved_rule(acme, freezer_type)

    response = client_as(alice).post(RULES, payload(freezer_type), format="json")

    assert response.status_code == 400
    assert "already has a rule named 'Too warm'" in response.json()["name"][0]


@pytest.mark.parametrize("field", ["device_type", "group", "device", "channels"])
def test_a_rule_cannot_use_another_tenants_objects(
    alice, freezer_type, globex_pump_type, globex_group, globex_device, globex, field
):
    theirs = {
        "device_type": globex_pump_type.pk,
        "group": globex_group.pk,
        "device": globex_device.key,
        "channels": [email_channel(globex, "Globex on call").pk],
    }[field]

    response = client_as(alice).post(RULES, payload(freezer_type, **{field: theirs}), format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not Rule.objects.exists()


def test_an_operator_of_two_tenants_cannot_mix_their_objects(
    acme, globex, freezer_type, globex_group
):
    from django.contrib.auth import get_user_model

    from devices.models import Role
    from devices.services import add_member

    olga = get_user_model().objects.create_user("olga", "olga@example.com", "pw-olga")
    add_member(olga, acme, Role.OPERATOR)
    add_member(olga, globex, Role.OPERATOR)
    theirs = email_channel(globex, "Globex on call")

    response = client_as(olga).post(
        RULES,
        payload(freezer_type, group=globex_group.pk, channels=[theirs.pk]),
        format="json",
        headers={"X-Tenant": "acme"},
    )

    assert response.status_code == 400
    assert "another tenant" in response.json()["group"][0]
    assert not Rule.objects.exists()


def test_a_partial_update_keeps_the_rest_and_the_channels(alice, acme, freezer_type):
    on_call = email_channel(acme)
    rule = save_rule(
        Rule(tenant=acme, device_type=freezer_type, name="Warm", condition="temperature > 8"),
        [on_call],
    )

    response = client_as(alice).patch(detail(rule), {"severity": "info"}, format="json")

    assert response.status_code == 200, response.data
    rule.refresh_from_db()
    assert (rule.severity, rule.condition) == ("info", "temperature > 8")
    assert response.data["channels"] == [on_call.pk]


def test_an_invalid_update_changes_nothing(alice, acme, freezer_type):
    rule = saved_rule(acme, freezer_type)

    response = client_as(alice).patch(
        detail(rule), {"condition": "temperature.__class__"}, format="json"
    )

    assert response.status_code == 400
    assert "position" in response.json()
    rule.refresh_from_db()
    assert rule.condition == "temperature > 8"


def test_rules_filter_by_kind_and_device_type(alice, acme, freezer_type):
    saved_rule(acme, freezer_type, name="Warm")
    saved_rule(
        acme, freezer_type, name="Rising", kind=RuleKind.RATE, condition="rate(temperature) > 1"
    )

    names = listed(client_as(alice).get(RULES, {"kind": "rate"}), "name")

    assert names == ["Rising"]
    assert len(listed(client_as(alice).get(RULES, {"device_type": freezer_type.pk}), "name")) == 2


# --- Back-tests ---------------------------------------------------------------------------------


def test_backtesting_an_unsaved_rule_counts_alerts_and_saves_nothing(
    alice, warm_history, freezer_type
):
    response = client_as(alice).post(
        BACKTEST, payload(freezer_type, condition="temperature > 10", days=7), format="json"
    )

    assert response.status_code == 200, response.data
    result = response.json()
    assert result["days"] == 7
    assert result["alerts"] == 2
    assert [device["device_key"] for device in result["devices"]] == [warm_history.key]
    assert result["devices"][0]["breaking_readings"] == 6
    assert result["devices_checked"] == 2
    assert len(result["per_day"]) >= 7
    assert not Rule.objects.exists()


def test_a_backtest_may_reuse_a_taken_name_and_omit_it(alice, acme, freezer_type, warm_history):
    saved_rule(acme, freezer_type)
    body = payload(freezer_type)
    assert client_as(alice).post(BACKTEST, body, format="json").status_code == 200
    del body["name"]
    assert client_as(alice).post(BACKTEST, body, format="json").status_code == 200
    assert Rule.objects.count() == 1


def test_backtesting_an_invalid_rule_answers_400_with_the_position(alice, freezer_type):
    response = client_as(alice).post(
        BACKTEST, payload(freezer_type, condition="temperature >"), format="json"
    )
    assert response.status_code == 400
    assert response.json()["position"] == 13


@pytest.mark.parametrize("days", [0, 31, "week"])
def test_backtest_days_must_be_within_the_limit(alice, freezer_type, days, settings):
    assert settings.RULES_BACKTEST_MAX_DAYS == 30
    response = client_as(alice).post(BACKTEST, payload(freezer_type, days=days), format="json")
    assert response.status_code == 400
    assert "days" in response.json()


def test_a_viewer_backtests_a_saved_rule(bob, acme, freezer_type, warm_history):
    rule = saved_rule(acme, freezer_type, condition="temperature > 10")

    response = client_as(bob).post(
        reverse("rule-backtest", args=[rule.pk]), {"days": 5}, format="json"
    )

    assert response.status_code == 200, response.data
    assert response.json()["days"] == 5
    assert response.json()["alerts"] == 2


def test_another_tenant_cannot_backtest_a_rule(carol, acme, freezer_type):
    rule = saved_rule(acme, freezer_type)
    response = client_as(carol).post(reverse("rule-backtest", args=[rule.pk]), {}, format="json")
    assert response.status_code == 404


def test_another_tenant_cannot_backtest_on_a_type_it_cannot_see(carol, freezer_type):
    response = client_as(carol).post(BACKTEST, payload(freezer_type), format="json")
    assert response.status_code == 400
    assert "device_type" in response.json()
