"""GET devices/{key}/readings/, devices/{key}/latest/ and groups/{id}/latest/: answers, errors
that say what to do, and tenancy (viewers read, another tenant gets 404, anonymous 401)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.api.tenancy import TenantScopedMixin
from telemetry import queries
from telemetry.api.authentication import DeviceCredentialAuthentication
from telemetry.models import LatestReading
from tests.api.clients import client_as, routed_views
from tests.factories import make_device
from tests.telemetry.test_queries import T0, at, store


def readings_url(device) -> str:
    return reverse("device-readings", kwargs={"key": device.key})


def get_readings(user, device, params=None):
    return client_as(user).get(readings_url(device), params or {})


def window(seconds: float = 180) -> dict:
    return {"start": T0.isoformat(), "end": at(seconds).isoformat()}


@pytest.fixture
def stored(acme_device, temperature, humidity):
    store(acme_device, temperature, (at(0), 1.0), (at(20), 3.0), (at(40), 2.0), (at(60), 10.0))
    store(acme_device, humidity, (at(10), 50.0))
    return acme_device


# --- Readings -----------------------------------------------------------------------------------


def test_raw_readings_of_one_metric_oldest_first(alice, stored):
    response = get_readings(alice, stored, {"metric": "temperature", **window()})
    assert response.status_code == 200, response.data
    body = response.json()
    assert body["device"] == stored.key
    assert body["metrics"] == ["temperature"]
    assert body["bucket"] is None
    assert body["truncated"] is False
    assert body["readings"] == [
        {"time": "2025-03-01T12:00:00Z", "metric": "temperature", "value": 1.0, "flagged": False},
        {"time": "2025-03-01T12:00:20Z", "metric": "temperature", "value": 3.0, "flagged": False},
        {"time": "2025-03-01T12:00:40Z", "metric": "temperature", "value": 2.0, "flagged": False},
        {"time": "2025-03-01T12:01:00Z", "metric": "temperature", "value": 10.0, "flagged": False},
    ]
    assert "buckets" not in body


def test_bucketed_readings_carry_every_aggregate_by_default(alice, stored):
    response = get_readings(alice, stored, {"metric": "temperature", "bucket": "1m", **window()})
    assert response.status_code == 200, response.data
    body = response.json()
    assert body["aggregates"] == ["avg", "min", "max", "count", "last"]
    assert body["buckets"] == [
        {"time": "2025-03-01T12:00:00Z", "metric": "temperature", "avg": 2.0, "min": 1.0,
         "max": 3.0, "count": 3, "last": 2.0},
        {"time": "2025-03-01T12:01:00Z", "metric": "temperature", "avg": 10.0, "min": 10.0,
         "max": 10.0, "count": 1, "last": 10.0},
    ]  # fmt: skip
    assert "readings" not in body


def test_bucketed_readings_carry_only_the_aggregates_asked_for(alice, stored):
    params = {"metric": "temperature", "bucket": "5m", "agg": "avg,max", **window()}
    body = get_readings(alice, stored, params).json()
    assert body["aggregates"] == ["avg", "max"]
    assert body["buckets"] == [
        {"time": "2025-03-01T12:00:00Z", "metric": "temperature", "avg": 4.0, "max": 10.0}
    ]


def test_metrics_may_be_repeated_or_comma_separated(alice, stored):
    repeated = f"?metric=temperature&metric=humidity&start={T0:%Y-%m-%dT%H:%M:%SZ}"
    response = client_as(alice).get(readings_url(stored) + repeated + "&end=2025-03-01T12:03:00Z")
    assert response.data["metrics"] == ["temperature", "humidity"]
    assert len(response.data["readings"]) == 5
    comma = get_readings(alice, stored, {"metric": "humidity,temperature", **window()})
    assert comma.data["metrics"] == ["humidity", "temperature"]


def test_without_metric_every_metric_of_the_device_type_is_read(alice, stored):
    body = get_readings(alice, stored, window()).json()
    assert sorted(body["metrics"]) == ["humidity", "temperature"]
    assert {row["metric"] for row in body["readings"]} == {"humidity", "temperature"}


def test_the_range_defaults_to_the_last_24_hours(alice, acme_device, temperature):
    now = timezone.now()
    store(acme_device, temperature, (now - timedelta(hours=1), 5.0))
    store(acme_device, temperature, (now - timedelta(hours=25), 6.0))
    body = get_readings(alice, acme_device).json()
    assert [row["value"] for row in body["readings"]] == [5.0]
    start = datetime.fromisoformat(body["start"])
    end = datetime.fromisoformat(body["end"])
    assert end - start == timedelta(hours=24)
    assert abs(end - now) < timedelta(minutes=1)


def test_start_is_included_and_end_excluded(alice, stored):
    params = {"metric": "temperature", "start": at(20).isoformat(), "end": at(60).isoformat()}
    body = get_readings(alice, stored, params).json()
    assert [row["value"] for row in body["readings"]] == [3.0, 2.0]


def test_a_capped_answer_says_so_and_where_the_rest_begins(alice, stored, monkeypatch):
    monkeypatch.setattr(queries, "RAW_LIMIT", 2)
    body = get_readings(alice, stored, {"metric": "temperature", **window()}).json()
    assert body["truncated"] is True
    assert body["next_start"] == "2025-03-01T12:00:40Z"
    assert "start=next_start" in body["detail"]
    assert [row["value"] for row in body["readings"]] == [1.0, 3.0]


def test_a_key_with_dots_and_colons_is_found(alice, acme, acme_freezer_type):
    device = make_device(acme, "acme.site-1:freezer", device_type=acme_freezer_type)
    assert get_readings(alice, device).status_code == 200
    url = reverse("device-latest", kwargs={"key": device.key})
    assert url.endswith("/devices/acme.site-1:freezer/latest/")
    assert client_as(alice).get(url).status_code == 200


# --- Errors that say what to do -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"metric": "pressure"}, "metric", ["'pressure'", "humidity, temperature"]),
        ({"metric": "temperature,nope"}, "metric", ["'nope'", "humidity, temperature"]),
        ({"bucket": "2m"}, "bucket", ["'2m'", "1m, 5m, 1h, 1d"]),
        ({"bucket": "1m", "agg": "avg,median"}, "agg", ["'median'", "avg,min,max,count,last"]),
        ({"agg": "avg"}, "agg", ["add bucket="]),
        (
            {"start": "2025-03-02T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
            "start",
            ["must be before end"],
        ),
        ({"start": "yesterday"}, "start", ["ISO 8601", "2025-01-31T12:00:00Z"]),
        ({"end": "2025-13-01T00:00:00Z"}, "end", ["ISO 8601"]),
        (
            {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"},
            "start",
            ["at most 7 days", "31 days", "bucket= (5m, 1h, 1d)"],
        ),
        (
            {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z", "bucket": "1m"},
            "bucket",
            ["more than 10000 buckets", "1h, 1d"],
        ),
    ],
    ids=[
        "unknown-metric",
        "one-unknown-metric",
        "bad-bucket",
        "bad-agg",
        "agg-without-bucket",
        "start-after-end",
        "unparseable-start",
        "unparseable-end",
        "raw-range-too-wide",
        "too-many-buckets",
    ],
)
def test_a_bad_query_answers_400_naming_the_parameter_and_the_fix(
    alice, stored, params, field, says
):
    response = get_readings(alice, stored, params)
    assert response.status_code == 400
    message = str(response.data[field])
    for words in says:
        assert words in message, message


# --- Latest values ------------------------------------------------------------------------------


def _latest(device, metric, value, flagged=False, time=None):
    LatestReading.objects.create(
        device=device, metric=metric, time=time or at(60), value=value, flagged=flagged
    )


def test_the_latest_value_per_metric_of_a_device(alice, acme_device, temperature, humidity):
    _latest(acme_device, temperature, -18.5)
    _latest(acme_device, humidity, 120.0, flagged=True)
    response = client_as(alice).get(reverse("device-latest", kwargs={"key": acme_device.key}))
    assert response.status_code == 200
    assert response.json() == {
        "key": "acme-freezer-1",
        "name": "Freezer 1",
        "status": "offline",
        "last_seen": None,
        "latest": [
            {"metric": "humidity", "unit": "%", "value": 120.0,
             "time": "2025-03-01T12:01:00Z", "flagged": True},
            {"metric": "temperature", "unit": "°C", "value": -18.5,
             "time": "2025-03-01T12:01:00Z", "flagged": False},
        ],
    }  # fmt: skip


def test_a_groups_latest_values_per_device(alice, acme, acme_group, acme_device, temperature):
    other = make_device(acme, "acme-freezer-2", device_type=acme_device.device_type)
    make_device(acme, "acme-freezer-3", device_type=acme_device.device_type)  # not in the group
    acme_device.groups.add(acme_group)
    other.groups.add(acme_group)
    _latest(acme_device, temperature, -18.0)
    response = client_as(alice).get(reverse("device-group-latest", kwargs={"pk": acme_group.pk}))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    rows = {row["key"]: row for row in body["results"]}
    assert set(rows) == {"acme-freezer-1", "acme-freezer-2"}
    assert [value["value"] for value in rows["acme-freezer-1"]["latest"]] == [-18.0]
    assert rows["acme-freezer-2"]["latest"] == []
    assert rows["acme-freezer-2"]["status"] == "offline"


def test_a_groups_latest_values_take_the_same_queries_for_one_device_or_many(
    alice, acme, acme_group, acme_device, temperature
):
    acme_device.groups.add(acme_group)
    _latest(acme_device, temperature, -18.0)
    url = reverse("device-group-latest", kwargs={"pk": acme_group.pk})
    client = client_as(alice)
    client.get(url)  # the user's roles are cached on her for later requests
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for number in range(2, 6):
        device = make_device(acme, f"acme-freezer-{number}", device_type=acme_device.device_type)
        device.groups.add(acme_group)
        _latest(device, temperature, -number)
    with CaptureQueriesContext(connection) as five:
        response = client.get(url)
    assert response.data["count"] == 5
    assert len(five) == len(one)


# --- Tenancy ------------------------------------------------------------------------------------


def _telemetry_urls(device, group) -> list[str]:
    return [
        reverse("device-readings", kwargs={"key": device.key}),
        reverse("device-latest", kwargs={"key": device.key}),
        reverse("device-group-latest", kwargs={"pk": group.pk}),
    ]


def test_bob_the_viewer_reads_them_all(bob, stored, acme_group):
    for url in _telemetry_urls(stored, acme_group):
        assert client_as(bob).get(url).status_code == 200, url


def test_carol_of_globex_gets_404_for_acmes_device_and_group(carol, stored, acme_group):
    _latest(stored, stored.device_type.metrics.get(name="temperature"), -18.0)
    for url in _telemetry_urls(stored, acme_group):
        response = client_as(carol).get(url)
        assert response.status_code == 404, url
        assert "-18" not in response.content.decode()


def test_an_unknown_device_or_group_answers_404(alice, acme_group):
    client = client_as(alice)
    assert client.get(reverse("device-readings", kwargs={"key": "nope"})).status_code == 404
    assert client.get(reverse("device-latest", kwargs={"key": "nope"})).status_code == 404
    missing_group = reverse("device-group-latest", kwargs={"pk": acme_group.pk + 1000})
    assert client.get(missing_group).status_code == 404


def test_an_anonymous_client_gets_401(stored, acme_group):
    for url in _telemetry_urls(stored, acme_group):
        response = client_as(None).get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"].startswith("Token")


def test_a_group_never_lists_another_tenants_device(alice, acme_group, globex_device):
    # Services keep groups single-tenant; the view does not rely on it.
    globex_device.groups.add(acme_group)
    response = client_as(alice).get(reverse("device-group-latest", kwargs={"pk": acme_group.pk}))
    assert [row["key"] for row in response.data["results"]] == []


def test_every_telemetry_api_view_is_tenant_scoped():
    """These views are not viewsets, so tests/api/test_tenancy.py does not walk them: this does."""
    found = [view for view in routed_views() if view.__module__.startswith("telemetry.")]
    # The ingest endpoint answers to a device's own credential only, never to a user's login:
    # it can only write that device's readings.
    by_devices = [v for v in found if v.authentication_classes == [DeviceCredentialAuthentication]]
    assert [view.__name__ for view in by_devices] == ["TelemetryIngestView"]
    for_users = [view for view in found if view not in by_devices]
    assert len(for_users) == 3
    assert all(issubclass(view, TenantScopedMixin) for view in for_users)


def test_times_answer_in_utc(alice, stored):
    body = get_readings(alice, stored, {"metric": "humidity", **window()}).json()
    assert datetime.fromisoformat(body["readings"][0]["time"]) == at(10).astimezone(UTC)
