"""Who may open and change what on the operator pages of every app, in one place.

- Every live partial (each `data-live-url` of the templates) shows only the user's tenants:
  another tenant's object answers 404, a list holds none of another tenant's rows; anonymous
  visitors are sent to log in.
- Every page URL that changes something refuses a viewer (403) and changes nothing.
- Every operator page URL is classified here, so a new one cannot be forgotten.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from alerts.models import Alert, AlertKind
from devices.models import DeviceShadow, Metric, Role
from devices.services import add_member
from maintenance.models import MaintenancePrediction
from ota import services as ota
from ota.models import Rollout, RolloutStatus
from telemetry.rates import count_readings, ingest_rates
from tests.factories import make_device, make_group

SECRET = "acme-secret-0001"  # the key and name of Acme's device: never on Globex's pages


@pytest.fixture
def acme_fleet(acme, acme_freezer_type, media_root):
    """Acme's device with an alert, a group, a wear prediction and a running rollout."""
    device = make_device(acme, SECRET, name=f"Freezer {SECRET}", device_type=acme_freezer_type)
    group = make_group(acme, f"Group {SECRET}")
    device.groups.add(group)
    now = timezone.now()
    Alert.objects.create(
        tenant=acme,
        device=device,
        kind=AlertKind.OFFLINE,
        severity="critical",
        title=f"{SECRET} is offline",
        first_triggered_at=now,
        last_triggered_at=now,
    )
    metric = Metric.objects.create(
        device_type=acme_freezer_type,
        name="compressor_current",
        unit="A",
        is_wear_indicator=True,
        failure_threshold=9.5,
    )
    MaintenancePrediction.objects.create(
        tenant=acme,
        device=device,
        metric=metric,
        scored_at=now,
        window_start=now - timedelta(days=7),
        health=12.0,
        at_risk=True,
        predicted_at=now + timedelta(days=3),
        threshold=9.5,
        level=9.0,
        spread=0.1,
        slope_per_day=0.2,
        anomaly=0.5,
        evidence={"spread_ratio": 1.4, "reference_level": 6.0, "hours_with_data": 168},
    )
    release = ota.create_release(
        tenant=acme,
        version="2.1.0",
        file=SimpleUploadedFile("fw.bin", b"firmware"),
        device_types=[acme_freezer_type],
    )
    rollout = ota.create_rollout(
        tenant=acme, release=release, name=f"Rollout {SECRET}", wave_plan=[100]
    )
    Rollout.objects.filter(pk=rollout.pk).update(status=RolloutStatus.RUNNING)
    return {"device": device, "group": group, "rollout": rollout}


def section(name: str):
    return lambda fleet: reverse("devices:section", args=[fleet["device"].key, name])


# Live partial → its URL for Acme's objects, and whether another tenant gets 404 (an object of
# Acme's) or a list without Acme's rows.
LIVE_PARTIALS = {
    "alerts:rows": (lambda fleet: reverse("alerts:rows"), "list"),
    "dashboards:overview-status": (lambda fleet: reverse("dashboards:overview-status"), "list"),
    "dashboards:overview-ingest": (lambda fleet: reverse("dashboards:overview-ingest"), "list"),
    "devices:rows": (lambda fleet: reverse("devices:rows"), "list"),
    "devices:group-catch-up": (
        lambda fleet: reverse("devices:group-catch-up", args=[fleet["group"].pk]),
        "object",
    ),
    **{
        f"devices:section {name}": (section(name), "object")
        for name in ("facts", "latest", "charts", "shadow", "alerts", "commands")
    },
    "maintenance:at-risk-table": (
        lambda fleet: reverse("maintenance:at-risk-table") + "?show=all",
        "list",
    ),
    "maintenance:device-health-section": (
        lambda fleet: reverse("maintenance:device-health-section", args=[fleet["device"].key]),
        "object",
    ),
    "ota:device-firmware": (
        lambda fleet: reverse("ota:device-firmware", args=[fleet["device"].key]),
        "object",
    ),
    "ota:in-progress": (lambda fleet: reverse("ota:in-progress"), "list"),
    "ota:rollouts-partial": (lambda fleet: reverse("ota:rollouts-partial"), "list"),
    "ota:rollout-progress": (
        lambda fleet: reverse("ota:rollout-progress", args=[fleet["rollout"].pk]),
        "object",
    ),
}


@pytest.mark.parametrize("name", LIVE_PARTIALS)
def test_a_live_partial_shows_another_tenant_nothing(client, alice, carol, acme_fleet, name):
    url = LIVE_PARTIALS[name][0](acme_fleet)
    client.force_login(alice)
    own = client.get(url)
    assert own.status_code == 200

    client.force_login(carol)
    other = client.get(url)
    if LIVE_PARTIALS[name][1] == "object":
        assert other.status_code == 404
    else:
        assert other.status_code == 200
        assert SECRET not in other.text


@pytest.mark.parametrize("name", LIVE_PARTIALS)
def test_a_live_partial_sends_anonymous_visitors_to_log_in(client, acme_fleet, name):
    response = client.get(LIVE_PARTIALS[name][0](acme_fleet))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_ingest_rate_counts_only_the_users_tenants(client, alice, carol, acme, globex):
    def rate(user) -> float:
        client.force_login(user)
        page = client.get(reverse("dashboards:overview-ingest")).text
        return float(re.search(r'data-rate="([\d.]+)"', page).group(1))

    before = rate(carol), rate(alice)
    count_readings({acme.pk: 60_000}, now=time.time() - 20)  # a full slot of the last minute
    assert ingest_rates([acme.pk]).available
    assert rate(carol) == before[0]
    assert rate(alice) > before[1]


def test_every_live_partial_of_the_templates_is_checked_here():
    templates = Path(settings.BASE_DIR, "templates")
    named = set()
    for path in templates.rglob("*.html"):
        named |= set(re.findall(r"data-live-url=\"\{% url '([^']+)'", path.read_text()))
    checked = {name.split(" ")[0] for name in LIVE_PARTIALS}
    assert named <= checked, f"add a case for {sorted(named - checked)}"
    assert named == checked


# --- Viewers change nothing -----------------------------------------------------------------


def _post_cases(fleet) -> dict[str, tuple[str, dict]]:
    key, rollout = fleet["device"].key, fleet["rollout"]
    return {
        "devices:edit-desired": (
            reverse("devices:edit-desired", args=[key]),
            {"desired": '{"reporting_interval": 30}'},
        ),
        "devices:send-command": (
            reverse("devices:send-command", args=[key]),
            {"name": "reboot", "params": "{}"},
        ),
        "devices:group-desired": (
            reverse("devices:group-desired", args=[fleet["group"].pk]),
            {"patch": '{"reporting_interval": 30}'},
        ),
        "alerts:act": (
            reverse("alerts:act"),
            {"action": "resolve", "alerts": list(Alert.objects.values_list("pk", flat=True))},
        ),
        "ota:release-new": (
            reverse("ota:release-new"),
            {"version": "9.9.9", "file": SimpleUploadedFile("fw.bin", b"x")},
        ),
        "ota:key-new": (reverse("ota:key-new"), {"name": "k", "public_key": "AAAA"}),
        "ota:rollout-new": (
            reverse("ota:rollout-new"),
            {"release": rollout.release_id, "wave_mode": "percent", "wave_plan": "100"},
        ),
        "ota:rollout-action": (
            reverse("ota:rollout-action", args=[rollout.pk, "abort"]),
            {},
        ),
    }


def state(fleet) -> tuple:
    """What the viewer's posts would change."""
    device = fleet["device"]
    shadow = DeviceShadow.objects.filter(device=device).values_list("desired", "version").first()
    return (
        shadow,
        device.commands.count(),
        list(Alert.objects.values_list("pk", "state")),
        list(Rollout.objects.values_list("pk", "status")),
        ota.FirmwareRelease.objects.count(),
        ota.SigningKey.objects.count(),
    )


WRITES = [
    "devices:edit-desired",
    "devices:send-command",
    "devices:group-desired",
    "alerts:act",
    "ota:release-new",
    "ota:key-new",
    "ota:rollout-new",
    "ota:rollout-action",
]


@pytest.mark.parametrize("name", WRITES)
def test_a_viewer_is_refused_and_changes_nothing(client, bob, acme_fleet, name):
    url, data = _post_cases(acme_fleet)[name]
    before = state(acme_fleet)
    client.force_login(bob)
    assert client.post(url, data).status_code == 403
    assert state(acme_fleet) == before


@pytest.mark.parametrize("name", WRITES)
def test_an_operator_of_another_tenant_who_views_this_one_changes_nothing_here(
    client, bob, globex, acme_fleet, name
):
    add_member(bob, globex, Role.OPERATOR)  # bob: operator of Globex, viewer of Acme
    url, data = _post_cases(acme_fleet)[name]
    before = state(acme_fleet)
    client.force_login(bob)
    response = client.post(url, data)
    # Refused: 403, the form saying why, or (alerts) a redirect back with a message.
    assert response.status_code in (200, 302, 400, 403)
    assert state(acme_fleet) == before


# Pages and partials that change nothing (GET, or a POST that only previews).
READS = {
    "dashboards:overview",
    "devices:list",
    "devices:detail",
    "devices:group",
    "alerts:list",
    "maintenance:at-risk",
    "maintenance:device-health",
    "ota:releases",
    "ota:rollouts",
    "ota:rollout-preview",
    "ota:rollout",
    "ota:download",  # the devices' firmware download: a signed link, no login
} | {name.split(" ")[0] for name in LIVE_PARTIALS}


def test_every_operator_page_is_classified_here():
    names: set[str] = set()

    def walk(patterns: list, namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace in {"dashboards", "devices", "alerts", "maintenance", "ota"}:
                    walk(pattern.url_patterns, pattern.namespace)
            elif isinstance(pattern, URLPattern) and namespace:
                names.add(f"{namespace}:{pattern.name}")

    walk(get_resolver().url_patterns, "")
    unclassified = names - READS - set(WRITES)
    assert not unclassified, f"classify {sorted(unclassified)} in this test"


def test_a_refusal_says_why_and_what_to_do(client, bob, acme_fleet):
    client.force_login(bob)
    response = client.post(*_post_cases(acme_fleet)["devices:send-command"])
    assert response.status_code == 403
    assert "Viewers cannot change devices: ask a tenant admin for operator." in response.text
    assert "ask an admin of the tenant to make you an operator" in response.text
    response = client.get(reverse("ota:rollout-new"))
    assert "Creating a rollout needs the operator role in a tenant." in response.text
