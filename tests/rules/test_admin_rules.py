"""Rules in the admin: checked like the API's, back-tested without saving, kept within tenants."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from alerts.models import RuleChannel
from devices.models import Device, DeviceType, Role, Tenant
from devices.services import add_member
from rules.models import Rule
from rules.services import save_rule
from tests.rules.test_rule_validation import email_channel, store_warm_history, with_door

pytestmark = pytest.mark.django_db

ADD = reverse("admin:rules_rule_add")
CHANGELIST = reverse("admin:rules_rule_changelist")
ADMIN_INDEX = reverse("admin:index")


@pytest.fixture
def freezer_type(acme_freezer_type: DeviceType) -> DeviceType:
    return with_door(acme_freezer_type)


@pytest.fixture
def warm_history(acme, freezer_type, acme_device) -> Device:
    return store_warm_history(acme, freezer_type, acme_device)


@pytest.fixture
def acme_rule(acme, freezer_type) -> Rule:
    return save_rule(
        Rule(tenant=acme, device_type=freezer_type, name="Too warm", condition="temperature > 8")
    )


@pytest.fixture
def olga(acme, globex):
    """Operator of both Acme and Globex."""
    user = get_user_model().objects.create_user("olga", "olga@example.com", "pw-olga")
    add_member(user, acme, Role.OPERATOR)
    add_member(user, globex, Role.OPERATOR)
    return user


def change_url(rule: Rule) -> str:
    return reverse("admin:rules_rule_change", args=[rule.pk])


def rule_form(tenant: Tenant | None, device_type: DeviceType, **overrides: Any) -> dict[str, Any]:
    """POST data of the rule add/change form (no tenant on the change form: it is read-only)."""
    data: dict[str, Any] = {
        "name": "Too warm",
        "description": "",
        "is_enabled": "on",
        "severity": "warning",
        "kind": "threshold",
        "device_type": device_type.pk,
        "group": "",
        "tag": "",
        "device": "",
        "condition": "temperature > 8",
        "metric": "",
        "for_duration": "0:00:00",
        "hysteresis": "0:05:00",
        "escalate_after": "0:15:00",
        "remind_every": "",
        "days": "7",
        "rule_channels-TOTAL_FORMS": "0",
        "rule_channels-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    if tenant is not None:
        data["tenant"] = tenant.pk
    channels = overrides.pop("channels", [])
    data["rule_channels-TOTAL_FORMS"] = str(len(channels))
    for index, channel in enumerate(channels):
        data[f"rule_channels-{index}-channel"] = channel.pk
        data[f"rule_channels-{index}-position"] = str(index)
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def backtest_form(tenant: Tenant | None, device_type: DeviceType, **overrides: Any) -> dict:
    return rule_form(tenant, device_type, _save=None, _backtest="Back-test", **overrides)


# --- Checking -----------------------------------------------------------------------------------


def test_an_invalid_condition_shows_the_error_under_a_caret(client, alice, acme, freezer_type):
    client.force_login(alice)

    response = client.post(ADD, rule_form(acme, freezer_type, condition="temperature > > 8"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["condition"]
    assert errors[0].startswith("unexpected") or "(at character 14)" in errors[0]
    assert "(at character 14)" in response.text
    assert '<pre class="rule-pointer">temperature &gt; &gt; 8\n' + " " * 14 + "^</pre>" in (
        response.text
    )
    assert not Rule.objects.exists()


def test_a_condition_that_does_not_fit_the_kind_is_a_form_error(client, alice, acme, freezer_type):
    client.force_login(alice)

    response = client.post(ADD, rule_form(acme, freezer_type, kind="zscore"))

    assert "zscore()" in str(response.context["adminform"].form.errors["condition"])
    assert not Rule.objects.exists()


def test_the_form_names_the_metrics_of_the_rules_type(client, alice, acme_rule):
    client.force_login(alice)

    response = client.get(change_url(acme_rule))

    assert "<strong>Freezer offers:</strong> door_open, temperature" in response.text
    assert "rules/rule_form.js" in response.text
    assert '"metrics": ["door_open", "temperature"]' in response.text


def test_an_operator_adds_a_rule_with_channels_in_order(client, alice, acme, freezer_type):
    day, night = email_channel(acme, "Day shift"), email_channel(acme, "Night shift")
    client.force_login(alice)

    response = client.post(ADD, rule_form(acme, freezer_type, channels=[night, day]))

    assert response.status_code == 302, response.context["adminform"].form.errors
    rule = Rule.objects.get(name="Too warm")
    assert rule.created_by == alice
    links = RuleChannel.objects.filter(rule=rule).order_by("position")
    assert [link.channel for link in links] == [night, day]


def test_an_operator_changes_a_rule(client, alice, acme_rule, freezer_type):
    client.force_login(alice)

    response = client.post(
        change_url(acme_rule), rule_form(None, freezer_type, condition="temperature > 10")
    )

    assert response.status_code == 302
    acme_rule.refresh_from_db()
    assert acme_rule.condition == "temperature > 10"


def test_a_stray_days_value_does_not_block_saving(client, alice, acme, freezer_type):
    client.force_login(alice)
    response = client.post(ADD, rule_form(acme, freezer_type, days="999"))
    assert response.status_code == 302
    assert Rule.objects.count() == 1


# --- Back-test preview --------------------------------------------------------------------------


def test_the_backtest_preview_shows_what_the_rule_would_have_done_and_saves_nothing(
    client, alice, acme, freezer_type, warm_history
):
    client.force_login(alice)

    response = client.post(ADD, backtest_form(acme, freezer_type, condition="temperature > 10"))

    assert response.status_code == 200
    assert Rule.objects.count() == 0
    text = response.text
    assert "Would have raised 2 alerts on 1 device over the last 7 days" in text
    assert "<svg" in text
    assert text.count("<rect ") >= 7
    assert f"<td>{warm_history.key}</td>" in text
    assert "<td>6</td>" in text  # breaking readings
    assert "<td>acme-freezer-2</td>" not in text  # stayed cold: not in the result table
    # The form comes back as posted, ready to save.
    form = response.context["adminform"].form
    assert form["condition"].value() == "temperature > 10"
    assert not form.errors


def test_backtesting_a_change_leaves_the_saved_rule_as_it_was(
    client, alice, acme_rule, freezer_type, warm_history
):
    client.force_login(alice)

    response = client.post(
        change_url(acme_rule),
        backtest_form(None, freezer_type, condition="temperature > 10", days="3"),
    )

    assert "over the last 3 days" in response.text
    acme_rule.refresh_from_db()
    assert acme_rule.condition == "temperature > 8"


def test_an_invalid_rule_is_not_backtested(client, alice, acme, freezer_type, warm_history):
    client.force_login(alice)

    response = client.post(ADD, backtest_form(acme, freezer_type, condition="temperature >"))

    assert "Would have raised" not in response.text
    assert "condition" in response.context["adminform"].form.errors


@pytest.mark.parametrize("days", ["0", "31", "many"])
def test_backtest_days_are_checked(client, alice, acme, freezer_type, days):
    client.force_login(alice)

    response = client.post(ADD, backtest_form(acme, freezer_type, days=days))

    assert "days" in response.context["adminform"].form.errors
    assert "Would have raised" not in response.text


def test_the_preview_escapes_device_names(client, alice, acme, freezer_type, warm_history):
    Device.objects.filter(pk=warm_history.pk).update(name="<script>alert(1)</script>")
    client.force_login(alice)

    response = client.post(ADD, backtest_form(acme, freezer_type, condition="temperature > 10"))

    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


# --- Viewers and other tenants ------------------------------------------------------------------


def test_a_viewer_sees_a_rule_read_only_without_the_backtest(client, bob, acme_rule, freezer_type):
    client.force_login(bob)

    response = client.get(change_url(acme_rule))

    assert response.status_code == 200
    assert "temperature &gt; 8" in response.text
    assert 'name="condition"' not in response.text
    assert 'name="_backtest"' not in response.text
    assert client.post(change_url(acme_rule), backtest_form(None, freezer_type)).status_code == 403
    assert client.get(ADD).status_code == 403


def test_another_tenants_operator_cannot_see_or_change_a_rule(
    client, carol, acme_rule, freezer_type
):
    client.force_login(carol)

    listing = client.get(CHANGELIST)
    assert listing.status_code == 200
    assert "Too warm" not in listing.text
    assert "Freezer" not in listing.text  # not even in the device type filter
    assert client.get(change_url(acme_rule))["Location"] == ADMIN_INDEX
    client.post(change_url(acme_rule), rule_form(None, freezer_type, condition="temperature > 99"))
    client.post(reverse("admin:rules_rule_delete", args=[acme_rule.pk]), {"post": "yes"})
    acme_rule.refresh_from_db()
    assert acme_rule.condition == "temperature > 8"


def test_an_operator_cannot_pick_another_tenants_type_group_or_device(
    client, alice, acme, freezer_type, globex_pump_type, globex_group, globex_device
):
    client.force_login(alice)

    response = client.post(
        ADD,
        rule_form(acme, globex_pump_type, group=globex_group.pk, device=globex_device.pk, tag=""),
    )

    errors = response.context["adminform"].form.errors
    assert {"device_type", "group", "device"} <= set(errors)
    assert not Rule.objects.exists()


def test_an_operator_of_two_tenants_cannot_mix_them_in_a_rule(
    client, olga, acme, globex, freezer_type, globex_group
):
    theirs = email_channel(globex, "Globex on call")
    client.force_login(olga)

    response = client.post(ADD, rule_form(acme, freezer_type, group=globex_group.pk))
    assert "Plant A" in str(response.context["adminform"].form.errors["group"])

    response = client.post(ADD, rule_form(acme, freezer_type, channels=[theirs]))
    inline_errors = response.context["inline_admin_formsets"][0].formset.errors
    assert "another tenant" in str(inline_errors)
    assert not Rule.objects.exists()


def test_deleting_a_rule_in_the_admin(client, alice, acme_rule):
    client.force_login(alice)
    client.post(reverse("admin:rules_rule_delete", args=[acme_rule.pk]), {"post": "yes"})
    assert not Rule.objects.exists()
