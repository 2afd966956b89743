"""The device list, the device page and the group page: the user's tenants only, live sections,
charts with thresholds, and the forms (desired state, commands) for operators only."""

from __future__ import annotations

import json
import time

import pytest
from django.urls import reverse

from devices.models import Command, Device, DeviceShadow, DeviceStatus
from devices.services import update_desired, update_reported
from devices.tasks import publish_command_task, publish_desired_task
from rules.models import Rule
from telemetry.services import ingest_batch
from telemetry.validation import parse_message
from tests.dashboards.test_overview import open_alert
from tests.factories import make_device


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(publish_command_task, "delay", lambda command_id: None)
    monkeypatch.setattr(publish_desired_task, "delay", lambda device_ids: None)


def send_readings(device: Device, values: list[float], step_s: int = 60) -> None:
    now_ms = int(time.time() * 1000)
    entries = [
        parse_message(
            f"fleet/{device.key}/telemetry",
            json.dumps(
                {"ts": now_ms - (len(values) - n) * step_s * 1000, "metrics": {"temperature": v}}
            ).encode(),
            now_ms,
        )
        for n, v in enumerate(values)
    ]
    ingest_batch(entries)


# --- The device list ---------------------------------------------------------------------------


def test_the_device_list_shows_the_users_devices_with_status_and_latest_values(
    client, alice, acme_device, globex_device
):
    send_readings(acme_device, [-18.5])
    client.force_login(alice)
    response = client.get(reverse("devices:list"))
    page = response.content.decode()
    assert response.status_code == 200
    assert "acme-freezer-1" in page
    assert "globex-pump-1" not in page
    row = page[page.index('data-device="acme-freezer-1"') :]
    assert 'data-status="online"' in row[:100]
    assert "-18.5" in row[: row.index("</tr>")]
    assert 'data-live-url="/devices/partials/rows/?"' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "dock"}, ["acme-2"]),
        ({"q": "ACME-1"}, ["acme-1"]),
        ({"q": "pilot"}, ["acme-3"]),
        ({"status": "online"}, ["acme-1"]),
        ({"group": "none"}, ["acme-2", "acme-3"]),
        ({"alerting": "on"}, ["acme-3"]),
        ({"status": "nonsense"}, ["acme-1", "acme-2", "acme-3"]),  # shown as an error, ignored
    ],
)
def test_the_device_list_searches_and_filters(client, alice, acme, acme_group, query, expected):
    first = make_device(acme, "acme-1")
    make_device(acme, "acme-2", location="Dock 3")
    third = make_device(acme, "acme-3", tags=["pilot"])
    first.groups.add(acme_group)
    Device.objects.filter(pk=first.pk).update(status=DeviceStatus.ONLINE)
    open_alert(third)
    client.force_login(alice)
    response = client.get(reverse("devices:list"), query)
    assert [device.key for device in response.context["page"]] == expected


def test_a_filter_naming_another_tenants_group_is_refused(client, alice, acme, globex_group):
    make_device(acme, "acme-1")
    client.force_login(alice)
    response = client.get(reverse("devices:list"), {"group": globex_group.pk})
    assert response.context["form"].errors["group"]
    assert [d.key for d in response.context["page"]] == ["acme-1"]


@pytest.mark.parametrize("count", [3, 60])
def test_the_device_list_costs_the_same_queries_for_3_or_60_devices(
    client, alice, acme, acme_group, count, django_assert_max_num_queries
):
    for n in range(count):
        device = make_device(acme, f"acme-{n:03d}", tags=["t"])
        device.groups.add(acme_group)
        if n % 4 == 0:
            open_alert(device)
    send_readings(Device.objects.get(key="acme-000"), [1.0])
    client.force_login(alice)
    with django_assert_max_num_queries(12):
        response = client.get(reverse("devices:list"))
    assert len(response.context["page"]) == min(count, 50)  # paginated


def test_the_list_pages_through_a_big_fleet(client, alice, acme):
    for n in range(55):
        make_device(acme, f"acme-{n:03d}")
    client.force_login(alice)
    second = client.get(reverse("devices:list"), {"page": 2, "q": "acme"})
    assert [d.key for d in second.context["page"]] == [f"acme-{n:03d}" for n in range(50, 55)]
    page = second.text
    assert "page 2 of 2" in page
    assert '<a href="?page=1&amp;q=acme">← previous</a>' in page
    assert "next →" not in page
    # The live refresh re-fetches the same page with the same filters.
    assert f'data-live-url="{reverse("devices:rows")}?page=2&amp;q=acme"' in page


# --- The device page ---------------------------------------------------------------------------


def test_the_device_page_shows_values_a_chart_with_the_rules_threshold_and_the_shadow(
    client, alice, acme, acme_device, acme_freezer_type
):
    Rule.objects.create(
        tenant=acme,
        name="Too warm",
        condition="temperature > -5",
        device_type=acme_freezer_type,
        severity="critical",
    )
    send_readings(acme_device, [-18.0, -17.5, -16.0, -15.2])
    update_desired(acme_device, {"reporting_interval": 30})
    update_reported(acme_device, {"reporting_interval": 5})
    client.force_login(alice)

    response = client.get(reverse("devices:detail", args=[acme_device.key]), {"range": "1h"})

    page = response.content.decode()
    assert response.status_code == 200
    assert "-15.2" in page  # the latest value
    [chart] = response.context["charts"]
    assert chart.metric == "temperature"
    assert "<polyline" in chart.svg
    assert 'class="series"' in chart.svg
    assert 'class="threshold"' in chart.svg
    assert "Too warm: &gt; -5" in chart.svg
    assert ">°C</text>" in chart.svg  # the unit on the value axis
    assert response.context["range"].bucket == "1m"
    assert "&quot;reporting_interval&quot;: 30" in page  # desired (and delta)
    assert "not caught up" in page
    assert 'action="/devices/acme-freezer-1/shadow/edit/"' in page
    assert 'action="/devices/acme-freezer-1/commands/send/"' in page
    assert f'href="/admin/devices/device/{acme_device.pk}/change/"' in page


def test_a_viewer_sees_the_page_without_forms_and_cannot_post(client, bob, acme_device):
    client.force_login(bob)
    page = client.get(reverse("devices:detail", args=[acme_device.key])).content.decode()
    assert "shadow/edit/" not in page
    assert "commands/send/" not in page
    edit = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]), {"desired": "{}", "seen": "{}"}
    )
    send = client.post(reverse("devices:send-command", args=[acme_device.key]), {"name": "x"})
    assert (edit.status_code, send.status_code) == (403, 403)
    assert not Command.objects.exists()


def test_another_tenants_device_is_not_found_anywhere(client, carol, acme_device):
    client.force_login(carol)
    urls = [
        reverse("devices:detail", args=[acme_device.key]),
        reverse("devices:section", args=[acme_device.key, "latest"]),
    ]
    assert [client.get(url).status_code for url in urls] == [404, 404]
    response = client.post(
        reverse("devices:send-command", args=[acme_device.key]), {"name": "reboot"}
    )
    assert response.status_code == 404
    assert not Command.objects.exists()


def test_an_operator_edits_the_desired_state(client, alice, acme_device):
    client.force_login(alice)
    response = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]),
        {"desired": '{"reporting_interval": 30}', "seen": "{}"},
    )
    assert response.status_code == 302
    assert DeviceShadow.objects.get(device=acme_device).desired == {"reporting_interval": 30}


def test_an_edit_over_someone_elses_change_is_refused(client, alice, acme_device):
    client.force_login(alice)
    update_desired(acme_device, {"led": "on"})  # someone else, after the page loaded
    response = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]),
        {"desired": '{"reporting_interval": 30}', "seen": "{}"},
    )
    assert response.status_code == 400
    assert "Someone changed the desired state" in response.content.decode()
    assert DeviceShadow.objects.get(device=acme_device).desired == {"led": "on"}


def test_a_report_from_the_device_does_not_block_an_edit(client, alice, acme_device):
    client.force_login(alice)
    update_reported(acme_device, {"temperature_offset": 1})
    response = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]),
        {"desired": '{"reporting_interval": 30}', "seen": "{}"},
    )
    assert response.status_code == 302


def test_invalid_json_for_the_desired_state_is_shown_back(client, alice, acme_device):
    client.force_login(alice)
    response = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]),
        {"desired": '{"reporting_interval": ', "seen": "{}"},
    )
    assert response.status_code == 400
    assert response.context["desired_form"].errors["desired"]


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [33, 500, 100_000])
@pytest.mark.parametrize(
    ("url", "field", "form"),
    [
        ("devices:edit-desired", "desired", "desired_form"),
        ("devices:send-command", "params", "command_form"),
    ],
)
def test_json_nested_too_deep_is_shown_back_not_a_crash(
    client, alice, acme_device, url, field, form, depth
):
    client.force_login(alice)
    response = client.post(
        reverse(url, args=[acme_device.key]), {"name": "x", field: nested(depth), "seen": "{}"}
    )
    assert response.status_code == 400
    assert "at most 32 levels deep" in response.context[form].errors[field][0]
    assert DeviceShadow.objects.get(device=acme_device).desired == {}
    assert not Command.objects.exists()


def test_json_32_levels_deep_is_taken(client, alice, acme_device):
    client.force_login(alice)
    response = client.post(
        reverse("devices:edit-desired", args=[acme_device.key]),
        {"desired": nested(32), "seen": "{}"},
    )
    assert response.status_code == 302


def test_an_operator_sends_a_command_from_the_page(client, alice, acme_device):
    client.force_login(alice)
    response = client.post(
        reverse("devices:send-command", args=[acme_device.key]),
        {"name": "set_interval", "params": '{"seconds": 30}', "timeout": "120"},
    )
    assert response.status_code == 302
    command = Command.objects.get()
    assert (command.name, command.params, command.created_by) == (
        "set_interval", {"seconds": 30}, alice,
    )  # fmt: skip
    section = client.get(reverse("devices:section", args=[acme_device.key, "commands"]))
    assert f'data-command="{command.pk}" data-state="queued"' in section.content.decode()


def test_a_bad_command_is_shown_back_with_the_reason(client, alice, acme_device):
    client.force_login(alice)
    response = client.post(
        reverse("devices:send-command", args=[acme_device.key]),
        {"name": "bad name!", "params": "{}"},
    )
    assert response.status_code == 400
    assert response.context["command_form"].errors["name"]
    assert not Command.objects.exists()


@pytest.mark.parametrize("section", ["facts", "latest", "charts", "shadow", "alerts", "commands"])
def test_each_live_section_renders_alone(client, alice, acme_device, section):
    client.force_login(alice)
    response = client.get(reverse("devices:section", args=[acme_device.key, section]))
    assert response.status_code == 200
    assert "<html" not in response.content.decode()


def test_an_unknown_section_is_not_found(client, alice, acme_device):
    client.force_login(alice)
    assert client.get(f"/devices/{acme_device.key}/live/nope/").status_code == 404


def test_the_admins_device_page_links_to_the_dashboard(client, alice, acme_device):
    client.force_login(alice)
    page = client.get(f"/admin/devices/device/{acme_device.pk}/change/").content.decode()
    assert f'href="/devices/{acme_device.key}/"' in page


# --- The group page ----------------------------------------------------------------------------


def test_the_group_page_sets_the_desired_state_and_shows_who_caught_up(
    client, alice, acme, acme_group
):
    devices = [make_device(acme, f"acme-{n}") for n in range(2)]
    for device in devices:
        device.groups.add(acme_group)
    client.force_login(alice)
    response = client.post(
        reverse("devices:group-desired", args=[acme_group.pk]),
        {"patch": '{"reporting_interval": 30}'},
    )
    assert response.status_code == 302
    update_reported(devices[0], {"reporting_interval": 30})
    page = client.get(reverse("devices:group", args=[acme_group.pk])).content.decode()
    assert "1 of 2 devices report it" in page
    assert 'data-device="acme-1"' in page
    assert 'data-device="acme-0"' not in page


def test_a_viewer_cannot_set_a_groups_desired_state(client, bob, acme_group):
    client.force_login(bob)
    response = client.post(
        reverse("devices:group-desired", args=[acme_group.pk]), {"patch": '{"a": 1}'}
    )
    assert response.status_code == 403


def test_another_tenants_group_is_not_found(client, carol, acme_group):
    client.force_login(carol)
    assert client.get(reverse("devices:group", args=[acme_group.pk])).status_code == 404


def test_the_group_form_starts_from_an_empty_object(client, alice, acme_group):
    client.force_login(alice)
    form = client.get(reverse("devices:group", args=[acme_group.pk])).context["form"]
    assert form["patch"].value() == "{}"
    assert "null" not in str(form["patch"])


def test_a_group_change_nested_too_deep_is_shown_back(client, alice, acme_group):
    client.force_login(alice)
    response = client.post(
        reverse("devices:group-desired", args=[acme_group.pk]), {"patch": nested(100_000)}
    )
    assert response.status_code == 400
    assert "at most 32 levels deep" in response.context["form"].errors["patch"][0]
