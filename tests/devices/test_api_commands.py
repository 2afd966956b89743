"""The commands API: operators send a command to a device of their tenant and follow it; viewers
only read; another tenant's device or command answers 404."""

from __future__ import annotations

import pytest

from devices.models import Command, CommandState
from devices.tasks import publish_command_task
from tests.api.clients import client_as, listed


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(publish_command_task, "delay", lambda command_id: None)


def send(user, device, body):
    return client_as(user).post(f"/api/v1/devices/{device.key}/commands/", body, format="json")


def test_an_operator_sends_a_command_and_follows_its_state(alice, acme_device):
    response = send(alice, acme_device, {"name": "set_interval", "params": {"seconds": 30}})

    assert response.status_code == 201, response.data
    body = response.data
    assert (body["device"], body["name"], body["params"], body["state"]) == (
        acme_device.key, "set_interval", {"seconds": 30}, "queued",
    )  # fmt: skip
    assert body["created_by"] == "alice"
    Command.objects.filter(pk=body["id"]).update(state=CommandState.ACKNOWLEDGED, result={"ok": 1})
    status = client_as(alice).get(f"/api/v1/commands/{body['id']}/")
    assert status.status_code == 200
    assert (status.data["state"], status.data["result"]) == ("acknowledged", {"ok": 1})


def test_the_devices_commands_are_listed_latest_first(alice, acme_device):
    for name in ("ping", "reboot"):
        send(alice, acme_device, {"name": name})
    response = client_as(alice).get(f"/api/v1/devices/{acme_device.key}/commands/")
    assert listed(response, "name") == ["reboot", "ping"]


def test_commands_filter_by_device_and_state(alice, acme, acme_device):
    send(alice, acme_device, {"name": "ping"})
    Command.objects.update(state=CommandState.TIMED_OUT)
    send(alice, acme_device, {"name": "reboot"})
    response = client_as(alice).get(
        "/api/v1/commands/", {"device": acme_device.key, "state": "timed_out"}
    )
    assert listed(response, "name") == ["ping"]


def test_a_custom_timeout_sets_the_deadline(alice, acme_device):
    response = send(alice, acme_device, {"name": "ping", "timeout": 300})
    command = Command.objects.get(pk=response.data["id"])
    assert 295 <= (command.expires_at - command.created_at).total_seconds() <= 305


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "ping", "params": [1, 2]}, "params"),
        ({"name": "ping", "timeout": 0}, "timeout"),
        ({}, "name"),
    ],
)
def test_a_bad_command_is_a_400_naming_the_field(alice, acme_device, body, field):
    response = send(alice, acme_device, body)
    assert response.status_code == 400
    assert field in response.data
    assert not Command.objects.exists()


def test_a_viewer_cannot_send_commands(bob, acme_device):
    response = send(bob, acme_device, {"name": "reboot"})
    assert response.status_code == 403
    assert not Command.objects.exists()


def test_a_viewer_reads_the_commands(alice, bob, acme_device):
    send(alice, acme_device, {"name": "ping"})
    assert listed(client_as(bob).get(f"/api/v1/devices/{acme_device.key}/commands/"), "name") == [
        "ping"
    ]


def test_carol_of_globex_cannot_send_to_an_acme_device_nor_see_its_commands(
    alice, carol, acme_device
):
    send(alice, acme_device, {"name": "ping"})
    assert send(carol, acme_device, {"name": "reboot"}).status_code == 404
    assert client_as(carol).get(f"/api/v1/devices/{acme_device.key}/commands/").status_code == 404
    assert listed(client_as(carol).get("/api/v1/commands/"), "id") == []
    assert Command.objects.count() == 1


def test_commands_cannot_be_changed_or_deleted_through_the_api(alice, acme_device):
    command_id = send(alice, acme_device, {"name": "ping"}).data["id"]
    client = client_as(alice)
    assert (
        client.patch(f"/api/v1/commands/{command_id}/", {"state": "acknowledged"}).status_code
        == 405
    )
    assert client.delete(f"/api/v1/commands/{command_id}/").status_code == 405
    assert client.post("/api/v1/commands/", {"name": "x"}).status_code == 405
    assert Command.objects.get().state == CommandState.QUEUED
