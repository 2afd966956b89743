"""The fleet overview at `/`: login first and back, counts of the user's tenants only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from alerts.models import Alert, AlertKind, AlertState
from devices.models import Device, DeviceStatus
from tests.factories import make_device

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def open_alert(device, severity="critical", state=AlertState.OPEN) -> Alert:
    return Alert.objects.create(
        tenant=device.tenant,
        device=device,
        kind=AlertKind.OFFLINE,
        severity=severity,
        state=state,
        title=f"{device.name} is offline",
        first_triggered_at=NOW,
        last_triggered_at=NOW,
    )


def test_an_anonymous_visitor_is_sent_to_the_login_page_and_back(client, alice):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next=/"

    response = client.post(
        f"{reverse('admin:login')}?next=/",
        {"username": "alice", "password": "pw-alice", "next": "/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_the_overview_counts_only_the_users_tenants(
    client, alice, acme, globex, acme_freezer_type, acme_group
):
    online = make_device(acme, "acme-1", device_type=acme_freezer_type)
    make_device(acme, "acme-2", device_type=acme_freezer_type)
    make_device(acme, "acme-3", device_type=acme_freezer_type)
    Device.objects.filter(key="acme-1").update(status=DeviceStatus.ONLINE)
    Device.objects.filter(key="acme-3").update(status=DeviceStatus.MAINTENANCE)
    online.groups.add(acme_group)
    open_alert(online)
    for n in range(4):
        device = make_device(globex, f"globex-{n}")
        Device.objects.filter(pk=device.pk).update(status=DeviceStatus.ONLINE)
        open_alert(device, severity="warning")
    client.force_login(alice)

    response = client.get("/")

    summary = response.context["summary"]
    fleet = summary.fleet
    assert (fleet.total, fleet.online, fleet.offline, fleet.maintenance, fleet.alerting) == (
        3, 1, 1, 1, 1,
    )  # fmt: skip
    assert [(row.label, row.total, row.alerting) for row in summary.by_type] == [("Freezer", 3, 1)]
    assert [(row.label, row.total, row.online) for row in summary.by_group] == [
        ("Warehouse North", 1, 1),
        ("No group", 2, 0),
    ]
    assert {row.severity: row.open for row in summary.alerts} == {
        "critical": 1,
        "warning": 0,
        "info": 0,
    }
    page = response.content.decode()
    assert "Acme Cold Chain" in page
    assert "Globex" not in page
    assert "globex-0" not in page


def test_a_viewer_sees_the_overview_and_its_live_section(client, bob):
    client.force_login(bob)
    page = client.get("/").content.decode()
    assert 'data-live-url="/overview/status/"' in page
    assert 'data-live-events="devices.status alerts.changed alerts.counted"' in page
    assert "/static/js/live.js" in page


def test_the_live_partial_is_the_status_section_alone(client, alice, acme):
    make_device(acme, "acme-1")
    client.force_login(alice)
    response = client.get(reverse("dashboards:overview-status"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert 'data-count="total">1<' in body


def test_the_partial_needs_a_login(client, db):
    response = client.get(reverse("dashboards:overview-status"))
    assert response.status_code == 302


@pytest.mark.parametrize("count", [0, 30])
def test_the_overview_costs_the_same_queries_whatever_the_fleet_size(
    client, alice, acme, count, django_assert_max_num_queries
):
    for n in range(count):
        device = make_device(acme, f"acme-{n}")
        if n % 3 == 0:
            open_alert(device)
    client.force_login(alice)
    with django_assert_max_num_queries(14):
        assert client.get("/").status_code == 200
