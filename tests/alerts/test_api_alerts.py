"""Alerts in the REST API: filtered lists, detail with history, acknowledge and resolve by
operators (409 when the state does not allow it), and another tenant's alerts do not exist.
The common tenancy checks run from tests/api/cases_alerts.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts import notifications
from alerts.models import Alert, AlertEvent, AlertEventKind, AlertState
from alerts.services import Breach, acknowledge_alert, devices_went_offline, record_breaches
from rules.models import Rule, Severity
from tests.api.clients import client_as, listed
from tests.factories import make_device

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_notifications(monkeypatch):
    monkeypatch.setattr(notifications, "queue_notifications_many", lambda ids, reason: None)


def raise_alert(device, severity: str = Severity.WARNING, at: datetime = T0) -> Alert:
    rule, _ = Rule.objects.get_or_create(
        tenant=device.tenant,
        name=f"Too hot ({severity})",
        defaults={
            "condition": "temperature > 80",
            "device_type": device.device_type,
            "severity": severity,
        },
    )
    record_breaches([Breach(rule.pk, device.pk, device.tenant_id, at, at, 1, {"temperature": 85})])
    return Alert.objects.get(rule=rule, device=device)


def url(alert: Alert | None = None, verb: str = "") -> str:
    if alert is None:
        return "/api/v1/alerts/"
    return f"/api/v1/alerts/{alert.pk}/" + (f"{verb}/" if verb else "")


@pytest.fixture
def fleet(acme, acme_device, acme_freezer_type, globex_device, alice, bob, carol):
    """Acme: Freezer 3 went offline, then a warning on Freezer 1, a critical on Freezer 2 a day
    later; Globex: a warning on its pump."""
    second = make_device(acme, "acme-freezer-2", device_type=acme_freezer_type)
    third = make_device(acme, "acme-freezer-3", device_type=acme_freezer_type)
    devices_went_offline([third.pk], T0 - timedelta(hours=1))
    return {
        "warning": raise_alert(acme_device),
        "critical": raise_alert(second, Severity.CRITICAL, T0 + timedelta(days=1)),
        "offline": Alert.objects.get(device=third),
        "globex": raise_alert(globex_device),
    }


# --- Reading ------------------------------------------------------------------------------------


def test_the_list_shows_the_users_tenants_alerts_latest_first(fleet, bob):
    rows = client_as(bob).get(url()).data["results"]
    assert [row["id"] for row in rows][:2] == [fleet["critical"].pk, fleet["warning"].pk]
    assert fleet["globex"].pk not in [row["id"] for row in rows]
    row = next(row for row in rows if row["id"] == fleet["warning"].pk)
    assert row["device"] == "acme-freezer-1"
    assert row["tenant"] == "acme"
    assert row["state"] == "open"
    assert row["values"] == {"temperature": 85.0}
    assert row["rule_name"] == "Too hot (warning)"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"severity": "critical"}, ["critical"]),
        ({"kind": "offline"}, ["offline"]),
        ({"device": "acme-freezer-1"}, ["warning"]),
        ({"since": (T0 + timedelta(hours=1)).isoformat()}, ["critical"]),
        ({"state": ["acknowledged", "resolved"]}, []),
        ({"search": "freezer-2"}, ["critical"]),
    ],
    ids=["severity", "kind", "device", "since", "state", "search"],
)
def test_the_list_filters(fleet, alice, query, expected):
    response = client_as(alice).get(url(), query)
    assert sorted(listed(response, "id")) == sorted(fleet[name].pk for name in expected)


def test_the_list_filters_by_rule_and_orders_by_count(fleet, alice):
    record_breaches(
        [
            Breach(
                fleet["warning"].rule_id,
                fleet["warning"].device_id,
                fleet["warning"].tenant_id,
                T0,
                T0,
                5,
            )
        ]
    )
    client = client_as(alice)
    assert listed(client.get(url(), {"rule": fleet["warning"].rule_id}), "id") == [
        fleet["warning"].pk
    ]
    ordered = listed(client.get(url(), {"ordering": "-count", "kind": "rule"}), "id")
    assert ordered[0] == fleet["warning"].pk


def test_the_detail_carries_the_history(fleet, alice):
    acknowledge_alert(fleet["warning"], alice, "On my way")
    data = client_as(alice).get(url(fleet["warning"])).data
    assert [(e["kind"], e["user"], e["note"]) for e in data["events"]] == [
        ("opened", None, ""),
        ("acknowledged", "alice", "On my way"),
    ]


def test_alerts_cannot_be_created_changed_or_deleted(fleet, alice):
    client = client_as(alice)
    assert client.post(url(), {"title": "made up"}, format="json").status_code == 405
    assert (
        client.patch(url(fleet["warning"]), {"state": "resolved"}, format="json").status_code == 405
    )
    assert client.delete(url(fleet["warning"])).status_code == 405


# --- Acting -------------------------------------------------------------------------------------


def test_alice_acknowledges_with_a_note(fleet, alice):
    response = client_as(alice).post(
        url(fleet["warning"], "acknowledge"), {"note": "On my way"}, format="json"
    )
    assert response.status_code == 200, response.data
    assert response.data["state"] == "acknowledged"
    assert response.data["acknowledged_by"] == "alice"
    assert response.data["acknowledge_note"] == "On my way"
    assert response.data["events"][-1]["kind"] == "acknowledged"


def test_acknowledging_needs_no_body(fleet, alice):
    response = client_as(alice).post(url(fleet["offline"], "acknowledge"))
    assert response.status_code == 200
    assert Alert.objects.get(pk=fleet["offline"].pk).state == AlertState.ACKNOWLEDGED


def test_acknowledging_twice_answers_409_with_why(fleet, alice):
    client = client_as(alice)
    client.post(url(fleet["warning"], "acknowledge"))
    response = client.post(url(fleet["warning"], "acknowledge"), {"note": "again"}, format="json")
    assert response.status_code == 409
    assert "already acknowledged by alice" in response.data["detail"]
    assert AlertEvent.objects.filter(kind=AlertEventKind.ACKNOWLEDGED).count() == 1


def test_alice_resolves_and_a_second_resolve_answers_409(fleet, alice):
    client = client_as(alice)
    response = client.post(url(fleet["critical"], "resolve"), {"note": "Fixed"}, format="json")
    assert response.status_code == 200
    assert (response.data["state"], response.data["resolved_by"]) == ("resolved", "alice")
    assert response.data["resolve_note"] == "Fixed"
    again = client.post(url(fleet["critical"], "resolve"))
    assert again.status_code == 409
    assert "already resolved" in again.data["detail"]
    assert client.post(url(fleet["critical"], "acknowledge")).status_code == 409


def test_a_note_that_is_not_text_is_a_400(fleet, alice):
    response = client_as(alice).post(
        url(fleet["warning"], "acknowledge"), {"note": "x" * 2001}, format="json"
    )
    assert response.status_code == 400
    assert "note" in response.data


@pytest.mark.parametrize("verb", ["acknowledge", "resolve"])
def test_bob_the_viewer_gets_403_and_nothing_changes(fleet, bob, verb):
    response = client_as(bob).post(url(fleet["warning"], verb), {"note": "bob"}, format="json")
    assert response.status_code == 403
    assert Alert.objects.get(pk=fleet["warning"].pk).state == AlertState.OPEN


@pytest.mark.parametrize("verb", ["acknowledge", "resolve"])
def test_carol_of_globex_gets_404_for_acmes_alert_and_nothing_changes(fleet, carol, verb):
    response = client_as(carol).post(url(fleet["warning"], verb), {"note": "x"}, format="json")
    assert response.status_code == 404
    assert Alert.objects.get(pk=fleet["warning"].pk).state == AlertState.OPEN
    assert client_as(carol).post(url(fleet["globex"], verb)).status_code == 200


def test_an_anonymous_client_cannot_act(fleet):
    assert client_as(None).post(url(fleet["warning"], "acknowledge")).status_code in {401, 403}
    assert Alert.objects.get(pk=fleet["warning"].pk).state == AlertState.OPEN
