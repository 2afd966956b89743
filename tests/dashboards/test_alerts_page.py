"""The alerts page: the user's unresolved alerts by default, live rows, and acknowledge/resolve
for operators only, through alerts/services.py."""

from __future__ import annotations

from django.urls import reverse

from alerts.models import Alert, AlertEvent, AlertState
from tests.dashboards.test_overview import open_alert
from tests.factories import make_device


def act(client, action, ids, note="", next_url="/alerts/"):
    return client.post(
        reverse("alerts:act"),
        {"action": action, "alerts": ids, "note": note, "next": next_url},
    )


def test_the_page_lists_the_unresolved_alerts_of_the_users_tenants(
    client, alice, acme_device, globex_device
):
    mine = open_alert(acme_device)
    open_alert(acme_device, state=AlertState.RESOLVED)
    open_alert(globex_device)
    client.force_login(alice)
    response = client.get(reverse("alerts:list"))
    assert [alert.pk for alert in response.context["page"]] == [mine.pk]
    page = response.content.decode()
    assert 'data-live-events="alerts.changed alerts.counted"' in page
    assert "globex" not in page


def test_filters_by_state_severity_and_device(client, alice, acme, acme_device):
    other = make_device(acme, "acme-2")
    warning = open_alert(acme_device, severity="warning")
    resolved = open_alert(other, severity="critical", state=AlertState.RESOLVED)
    client.force_login(alice)

    def ids(**query):
        return [a.pk for a in client.get(reverse("alerts:list"), query).context["page"]]

    assert ids(state="resolved") == [resolved.pk]
    assert ids(state="all", severity="critical") == [resolved.pk]
    assert ids(state="all", device="acme-freezer-1") == [warning.pk]


def test_an_operator_acknowledges_one_alert_with_a_note(client, alice, acme_device):
    alert = open_alert(acme_device)
    client.force_login(alice)
    response = act(client, "acknowledge", [alert.pk], note="Technician on the way")
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == alice
    assert alert.acknowledge_note == "Technician on the way"
    assert AlertEvent.objects.filter(alert=alert, kind="acknowledged").exists()


def test_a_rows_own_button_acts_on_that_alert_only(client, alice, acme, acme_device):
    first = open_alert(acme_device)
    second = open_alert(make_device(acme, "acme-2"))
    client.force_login(alice)
    client.post(
        reverse("alerts:act"),
        {"one": f"resolve:{second.pk}", "alerts": [first.pk], "next": "/alerts/"},
    )
    states = dict(Alert.objects.values_list("pk", "state"))
    assert states == {first.pk: AlertState.OPEN, second.pk: AlertState.RESOLVED}


def test_resolving_ticked_alerts_says_how_many_and_skips_resolved_ones(
    client, alice, acme, acme_device
):
    alerts = [open_alert(make_device(acme, f"acme-{n}")) for n in range(3)]
    done = open_alert(acme_device, state=AlertState.RESOLVED)
    client.force_login(alice)
    response = act(client, "resolve", [a.pk for a in alerts] + [done.pk])
    assert Alert.objects.filter(state=AlertState.RESOLVED, resolved_by=alice).count() == 3
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == ["3 alerts resolved.", "1 alert was already resolved: left as is."]


def test_a_viewer_cannot_acknowledge(client, bob, acme_device):
    alert = open_alert(acme_device)
    client.force_login(bob)
    response = act(client, "acknowledge", [alert.pk])
    assert response.status_code == 403
    alert.refresh_from_db()
    assert alert.state == AlertState.OPEN


def test_a_viewer_gets_no_action_buttons(client, bob, acme_device):
    open_alert(acme_device)
    client.force_login(bob)
    page = client.get(reverse("alerts:list")).content.decode()
    assert 'name="one"' not in page
    assert "Acknowledge ticked" not in page


def test_an_operator_cannot_act_on_another_tenants_alert(client, alice, globex_device):
    theirs = open_alert(globex_device)
    client.force_login(alice)
    response = act(client, "resolve", [theirs.pk])
    assert response.status_code == 302
    theirs.refresh_from_db()
    assert theirs.state == AlertState.OPEN
    [message] = [str(m) for m in response.wsgi_request._messages]
    assert "tenants where you are an operator" in message


def test_the_redirect_never_leaves_the_site(client, alice, acme_device):
    alert = open_alert(acme_device)
    client.force_login(alice)
    response = act(client, "acknowledge", [alert.pk], next_url="https://evil.example.com/")
    assert response["Location"] == "/alerts/"


def test_the_rows_partial_renders_alone(client, alice, acme_device):
    open_alert(acme_device)
    client.force_login(alice)
    response = client.get(reverse("alerts:rows"))
    assert response.status_code == 200
    assert "<html" not in response.content.decode()


def test_the_page_pages_through_many_alerts(client, alice, acme):
    for n in range(52):
        open_alert(make_device(acme, f"acme-{n:02d}"))
    client.force_login(alice)
    first = client.get(reverse("alerts:list"))
    assert len(first.context["page"]) == 50
    assert "page 1 of 2" in first.text
    assert '<a href="?page=2">next →</a>' in first.text
    second = client.get(reverse("alerts:list"), {"page": 2})
    assert len(second.context["page"]) == 2
    assert f'data-live-url="{reverse("alerts:rows")}?page=2"' in second.text
