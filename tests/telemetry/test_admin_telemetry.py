"""Telemetry in the admin: the device page's Telemetry section, and rejected messages and ingest
events as read-only, tenant-scoped lists."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from telemetry.admin import sparkline
from telemetry.models import (
    DeviceIngestState,
    IngestEvent,
    IngestEventKind,
    LatestReading,
    RejectedMessage,
)
from tests.telemetry.test_queries import store

ADMIN_INDEX = reverse("admin:index")


def admin_url(model_or_obj, view: str = "changelist") -> str:
    opts = model_or_obj._meta
    name = f"admin:{opts.app_label}_{opts.model_name}_{view}"
    if view in {"change", "delete"}:
        return reverse(name, args=[model_or_obj.pk])
    return reverse(name)


def reject(device=None, reason: str = "bad JSON: Expecting value at line 1 column 1", **fields):
    defaults = {
        "tenant_id": device.tenant_id if device else None,
        "device": device,
        "device_key": device.key if device else "ghost-1",
        "topic": f"fleet/{device.key if device else 'ghost-1'}/telemetry",
        "reason": reason,
        "payload_excerpt": "{not json",
        "payload_size": 9,
        "received_at": timezone.now(),
    }
    return RejectedMessage.objects.create(**{**defaults, **fields})


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")


@pytest.fixture
def reporting_device(acme_device):
    """A device with readings over the last hours, a latest value, rejections and a reset."""
    temperature = acme_device.device_type.metrics.get(name="temperature")
    now = timezone.now()
    store(
        acme_device,
        temperature,
        *[(now - timedelta(minutes=10 * step), -18.0 - step % 3) for step in range(1, 30)],
    )
    LatestReading.objects.create(
        device=acme_device, metric=temperature, time=now, value=-18.5, flagged=True
    )
    reject(acme_device, reason="metric 'temperature' = 99 is outside its valid range [-40, 60] °C")
    DeviceIngestState.objects.create(
        device=acme_device,
        rejected_messages=7,
        last_rejected_at=now,
        seq_base=1,
        seq_high=20,
        seq_received=17,
        lost_before_reset=2,
        seq_resets=1,
    )
    IngestEvent.objects.create(
        device=acme_device,
        kind=IngestEventKind.RESET,
        time=now,
        detail="sequence restarted at 1 after 40",
    )
    return acme_device


# --- The device page ----------------------------------------------------------------------------


def test_the_device_page_shows_latest_values_with_a_sparkline(client, alice, reporting_device):
    client.force_login(alice)
    response = client.get(admin_url(reporting_device, "change"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Telemetry" in page
    assert "<strong>-18.5</strong> °C" in page
    assert "⚑ flagged" in page
    assert '<svg class="sparkline"' in page
    assert "<polyline points=" in page
    assert "min -20, max -18" in page


def test_the_device_page_shows_ingest_counters_rejections_and_events(
    client, alice, reporting_device
):
    client.force_login(alice)
    page = client.get(admin_url(reporting_device, "change")).content.decode()
    assert "Rejected messages: <strong>7</strong>" in page
    assert "Messages lost: <strong>5</strong>" in page  # 2 before the reset + 3 missing now
    assert "Sequence resets: <strong>1</strong>" in page
    assert "is outside its valid range [-40, 60] °C" in page
    assert "{not json" in page
    assert "sequence restarted at 1 after 40" in page
    assert f"?device__id__exact={reporting_device.pk}" in page


def test_a_viewer_sees_the_telemetry_section_too(client, bob, reporting_device):
    client.force_login(bob)
    page = client.get(admin_url(reporting_device, "change")).content.decode()
    assert "<strong>-18.5</strong> °C" in page
    assert "is outside its valid range" in page


def test_a_device_without_telemetry_says_so(client, alice, acme_device):
    client.force_login(alice)
    page = client.get(admin_url(acme_device, "change")).content.decode()
    assert "no value yet" in page
    assert "no readings in 24 h" in page
    assert "Rejected messages: <strong>0</strong>" in page


def test_what_a_device_sent_is_escaped_on_its_page(client, alice, acme_device):
    reject(acme_device, reason="bad <b>JSON</b>", payload_excerpt="<script>alert(1)</script>")
    client.force_login(alice)
    page = client.get(admin_url(acme_device, "change")).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bad &lt;b&gt;JSON&lt;/b&gt;" in page


def test_a_sparkline_breaks_where_data_is_missing():
    now = timezone.now()
    start = now - timedelta(hours=24)
    points = [(start + timedelta(minutes=5 * i), float(i)) for i in range(10)]
    points += [(start + timedelta(hours=12, minutes=5 * i), float(i)) for i in range(10)]
    points += [(now - timedelta(minutes=5), 3.0)]
    svg = str(sparkline(points, start, now, "temperature"))
    assert svg.count("<polyline") == 2
    assert svg.count('r="1.5"') == 1  # the lone last point is a dot
    assert "<title>temperature, last 24 h" in svg


# --- Rejected messages --------------------------------------------------------------------------


def test_an_operator_lists_her_tenants_rejections(client, alice, acme_device, globex_device):
    mine = reject(acme_device)
    theirs = reject(globex_device, reason="unknown device 'x'")
    client.force_login(alice)
    response = client.get(admin_url(RejectedMessage))
    assert response.status_code == 200
    assert {row.pk for row in response.context["cl"].result_list} == {mine.pk}
    assert theirs.topic not in response.content.decode()


def test_carol_of_globex_sees_none_of_acmes_rejections(client, carol, acme_device):
    acmes = reject(acme_device, reason="metric 'secret_acme_metric' is not a finite number")
    client.force_login(carol)
    response = client.get(admin_url(RejectedMessage))
    assert list(response.context["cl"].result_list) == []
    assert "secret_acme_metric" not in response.content.decode()
    detail = client.get(admin_url(acmes, "change"))
    assert detail.status_code == 302
    assert detail["Location"] == ADMIN_INDEX


def test_carol_of_globex_sees_none_of_acmes_ingest_events(client, carol, reporting_device):
    event = IngestEvent.objects.get(device=reporting_device)
    client.force_login(carol)
    response = client.get(admin_url(IngestEvent))
    assert list(response.context["cl"].result_list) == []
    assert client.get(admin_url(event, "change"))["Location"] == ADMIN_INDEX


def test_rejections_of_unknown_devices_are_for_superusers_only(client, alice, root, acme_device):
    ghost = reject(None, reason="unknown device 'ghost-1': create it (admin or API)")
    client.force_login(alice)
    assert list(client.get(admin_url(RejectedMessage)).context["cl"].result_list) == []
    assert client.get(admin_url(ghost, "change"))["Location"] == ADMIN_INDEX
    client.force_login(root)
    listed = client.get(admin_url(RejectedMessage)).context["cl"].result_list
    assert [row.pk for row in listed] == [ghost.pk]
    page = client.get(admin_url(ghost, "change"))
    assert page.status_code == 200
    assert "ghost-1 (unknown)" in client.get(admin_url(RejectedMessage)).content.decode()


def test_rejections_filter_by_reason_kind(client, alice, acme_device):
    out_of_range = reject(
        acme_device, reason="metric 'temperature' = 99 is outside its valid range"
    )
    bad_json = reject(acme_device)
    odd = reject(acme_device, reason="something nobody foresaw")
    client.force_login(alice)

    def kinds(kind: str) -> set[int]:
        response = client.get(admin_url(RejectedMessage), {"kind": kind})
        return {row.pk for row in response.context["cl"].result_list}

    assert kinds("range") == {out_of_range.pk}
    assert kinds("payload") == {bad_json.pk}
    assert kinds("other") == {odd.pk}


def test_rejections_are_searchable_by_device_key_and_topic(client, alice, acme, acme_device):
    mine = reject(acme_device)
    client.force_login(alice)
    found = client.get(admin_url(RejectedMessage), {"q": "acme-freezer-1"})
    assert {row.pk for row in found.context["cl"].result_list} == {mine.pk}
    none = client.get(admin_url(RejectedMessage), {"q": "fleet/other"})
    assert list(none.context["cl"].result_list) == []


def test_rejections_and_events_are_read_only_even_for_operators(client, alice, reporting_device):
    rejection = RejectedMessage.objects.get(device=reporting_device)
    client.force_login(alice)
    assert client.get(admin_url(RejectedMessage, "add")).status_code == 403
    assert client.get(admin_url(IngestEvent, "add")).status_code == 403
    page = client.get(admin_url(rejection, "change"))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert "{not json" in page.content.decode()
    client.post(admin_url(rejection, "delete"), {"post": "yes"})
    assert RejectedMessage.objects.filter(pk=rejection.pk).exists()


def test_the_device_pages_links_lead_to_its_rejections(client, alice, acme, reporting_device):
    other = reject(None)
    client.force_login(alice)
    url = admin_url(RejectedMessage) + f"?device__id__exact={reporting_device.pk}"
    rows = client.get(url).context["cl"].result_list
    assert [row.device_id for row in rows] == [reporting_device.pk]
    assert other.pk not in {row.pk for row in rows}
