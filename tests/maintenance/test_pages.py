"""The "at risk" list and a device's health section: what an operator sees, scoped to her
tenants, with the trend chart and the threshold drawn in."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from devices.models import Role
from devices.services import add_member
from maintenance.services import score_fleet
from tests.maintenance.conftest import NOW

AT_RISK = reverse("maintenance:at-risk")


@pytest.fixture
def scored(pump_fleet):
    score_fleet(NOW)
    return pump_fleet


def test_the_at_risk_list_shows_the_wearing_pump_with_its_date_and_chart(client, carol, scored):
    _, _, _healthy, wearing = scored
    client.force_login(carol)
    response = client.get(AT_RISK)
    assert response.status_code == 200
    rows = response.context["rows"]
    assert [row.device for row in rows] == [wearing]
    assert response.context["at_risk_devices"] == 1
    assert response.context["scored_devices"] == 11
    page = response.text
    assert "Pump Worn" in page
    assert "globex-pump-00" not in page  # healthy pumps are not listed
    row = re.search(r'<tr data-device="globex-pump-worn">.*?</tr>', page, re.S).group(0)
    assert "in 5." in row or "in 4." in row  # days left
    assert 'class="trend-chart spark"' in row
    assert 'class="threshold"' in row
    assert 'class="trend"' in row
    assert f'href="{AT_RISK}"' in page  # the nav entry
    assert 'data-live-events="maintenance.scored"' in page


def test_every_wear_indicator_can_be_listed_worst_first(client, carol, scored):
    client.force_login(carol)
    rows = client.get(AT_RISK, {"show": "all"}).context["rows"]
    assert len(rows) == 11
    assert [row.health for row in rows] == sorted(row.health for row in rows)
    assert rows[0].device.key == "globex-pump-worn"


def test_the_partial_the_live_refresh_fetches_is_the_same_table(client, carol, scored):
    client.force_login(carol)
    response = client.get(reverse("maintenance:at-risk-table"))
    assert response.status_code == 200
    assert "<html" not in response.text
    assert 'data-device="globex-pump-worn"' in response.text


def test_another_tenants_operator_sees_none_of_it(client, alice, scored):
    client.force_login(alice)
    response = client.get(AT_RISK, {"show": "all"})
    assert response.context["rows"] == []
    assert "Pump Worn" not in response.text
    device_page = reverse("maintenance:device-health", args=["globex-pump-worn"])
    assert client.get(device_page).status_code == 404


def test_a_member_of_both_tenants_sees_the_tenant_of_each_row(client, alice, globex, scored):
    add_member(alice, globex, Role.VIEWER)
    client.force_login(alice)
    response = client.get(AT_RISK)
    assert "globex-pump-worn · Globex Pumps" in response.text


def test_anonymous_visitors_are_sent_to_log_in(client, scored):
    response = client.get(AT_RISK)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_device_health_section_explains_the_prediction(client, carol, scored):
    _, _, _, wearing = scored
    client.force_login(carol)
    response = client.get(reverse("maintenance:device-health", args=[wearing.key]))
    assert response.status_code == 200
    page = response.text
    assert "Expected to reach 11 mm/s on" in page
    assert "90 % interval" in page
    assert "failure threshold 11 mm/s" in page  # drawn in the chart
    assert '<circle class="crossing"' in page
    assert 'class="interval"' in page
    assert "trend" in page
    assert "mm/s/day" in page
    assert "over 168 hours of data" in page


def test_the_section_says_what_is_missing_before_any_scoring(client, carol, pump_fleet):
    _, _, _, wearing = pump_fleet
    client.force_login(carol)
    page = client.get(reverse("maintenance:device-health", args=[wearing.key])).text
    assert "Not scored yet: vibration" in page


def test_any_page_includes_the_section_with_one_tag(carol, scored):
    _, _, _, wearing = scored
    request = RequestFactory().get("/")
    request.user = carol
    html = Template("{% load maintenance %}{% device_health device %}").render(
        Context({"device": wearing, "request": request})
    )
    assert 'id="device-health"' in html
    assert "vibration" in html


def test_the_dashboards_device_page_shows_the_health_section_live(client, carol, scored):
    _, _, _, wearing = scored
    client.force_login(carol)
    page = client.get(reverse("devices:detail", args=[wearing.key])).text
    assert 'id="device-health"' in page
    assert "Expected to reach 11 mm/s on" in page
    section_url = reverse("maintenance:device-health-section", args=[wearing.key])
    assert f'data-live-url="{section_url}"' in page
    section = client.get(section_url)
    assert section.status_code == 200
    assert "<html" not in section.text
    assert '<circle class="crossing"' in section.text


def test_the_at_risk_list_links_to_the_device_page(client, carol, scored):
    client.force_login(carol)
    page = client.get(AT_RISK).text
    assert f'href="{reverse("devices:detail", args=["globex-pump-worn"])}#device-health"' in page


def test_another_tenants_device_section_answers_404(client, alice, scored):
    client.force_login(alice)
    url = reverse("maintenance:device-health-section", args=["globex-pump-worn"])
    assert client.get(url).status_code == 404


def test_the_at_risk_list_costs_the_same_queries_for_one_row_or_eleven(client, carol, scored):
    client.force_login(carol)
    with CaptureQueriesContext(connection) as one:
        at_risk = client.get(AT_RISK)
    with CaptureQueriesContext(connection) as eleven:
        every = client.get(AT_RISK, {"show": "all"})
    assert (len(at_risk.context["rows"]), len(every.context["rows"])) == (1, 11)
    assert len(eleven.captured_queries) == len(one.captured_queries)
