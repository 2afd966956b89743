"""Device admin actions and the add page: new secrets are shown once, only hashes are stored."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages

from devices.credentials import verify_secret
from devices.models import Device, DeviceGroup, DeviceShadow, DeviceStatus, Role
from devices.services import add_member, create_device
from tests.devices.conftest import admin_url, device_form
from tests.factories import make_device


@pytest.fixture
def acme_fleet(acme, acme_freezer_type):
    """Two Acme devices, created with create_device() so their first secrets are known."""
    return [
        create_device(
            tenant=acme, key=f"acme-cold-{n}", name=f"Cold {n}", device_type=acme_freezer_type
        )
        for n in (1, 2)
    ]


def post_action(client, action: str, devices, **data):
    payload = {"action": action, "_selected_action": [device.pk for device in devices], **data}
    return client.post(admin_url(Device), payload)


def notes(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- Move to group ------------------------------------------------------------------------------


def test_move_to_group_asks_for_a_group_of_the_devices_tenant(
    client, alice, acme_fleet, acme_group, globex_group
):
    client.force_login(alice)
    devices = [credential.device for credential in acme_fleet]
    response = post_action(client, "move_to_group", devices)
    assert response.status_code == 200
    assert list(response.context["form"].fields["group"].queryset) == [acme_group]
    assert "Plant A" not in response.text
    assert not acme_group.devices.exists()


def test_move_to_group_adds_the_devices_to_the_group(client, alice, acme_fleet, acme_group):
    client.force_login(alice)
    devices = [credential.device for credential in acme_fleet]
    response = post_action(client, "move_to_group", devices, apply="1", group=acme_group.pk)
    assert response.status_code == 302
    assert set(acme_group.devices.all()) == set(devices)
    assert "Added 2 device(s) to the group “Warehouse North”." in notes(response)


def test_move_to_group_refuses_another_tenants_group(client, alice, acme_fleet, globex_group):
    client.force_login(alice)
    devices = [credential.device for credential in acme_fleet]
    response = post_action(client, "move_to_group", devices, apply="1", group=globex_group.pk)
    assert response.status_code == 200
    assert "group" in response.context["form"].errors
    assert not globex_group.devices.exists()


def test_move_to_group_leaves_devices_of_other_tenants_out(
    client, olga, acme_fleet, globex_device, acme_group
):
    client.force_login(olga)
    devices = [credential.device for credential in acme_fleet] + [globex_device]
    response = post_action(client, "move_to_group", devices, apply="1", group=acme_group.pk)
    assert set(acme_group.devices.all()) == {credential.device for credential in acme_fleet}
    assert any("1 device(s) of other tenants were left out" in note for note in notes(response))


# --- Add a tag ----------------------------------------------------------------------------------


def test_add_a_tag_tags_each_device_once(client, alice, acme_fleet):
    first, second = (credential.device for credential in acme_fleet)
    first.tags = ["cold-room"]
    first.save()
    client.force_login(alice)
    page = post_action(client, "add_tag", [first, second])
    assert page.status_code == 200
    assert "tag" in page.context["form"].fields
    response = post_action(client, "add_tag", [first, second], apply="1", tag=" cold-room ")
    assert response.status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.tags == ["cold-room"]
    assert second.tags == ["cold-room"]
    assert "Tagged 1 device(s) with “cold-room”. 1 already had it." in notes(response)


@pytest.mark.parametrize("tag", ["", "   ", "a,b"])
def test_add_a_tag_refuses_an_empty_tag_or_a_comma(client, alice, acme_fleet, tag):
    device = acme_fleet[0].device
    client.force_login(alice)
    response = post_action(client, "add_tag", [device], apply="1", tag=tag)
    assert response.status_code == 200
    assert "tag" in response.context["form"].errors
    device.refresh_from_db()
    assert device.tags == []


# --- Rotate credentials -------------------------------------------------------------------------


def test_rotate_credentials_asks_for_confirmation_first(client, alice, acme_fleet):
    device = acme_fleet[0].device
    client.force_login(alice)
    response = post_action(client, "rotate_credentials", [device])
    assert response.status_code == 200
    assert "stops working at once" in response.text
    assert Device.objects.get(pk=device.pk).credential_hash == device.credential_hash


def test_rotate_credentials_shows_new_secrets_that_verify_and_retires_the_old(
    client, alice, acme_fleet
):
    client.force_login(alice)
    response = post_action(client, "rotate_credentials", [c.device for c in acme_fleet], apply="1")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert "shown this once" in response.text
    shown = {c.device.key: c.secret for c in response.context["credentials"]}
    assert set(shown) == {"acme-cold-1", "acme-cold-2"}
    for old in acme_fleet:
        device = Device.objects.get(pk=old.device.pk)
        new_secret = shown[device.key]
        assert new_secret in response.text
        assert verify_secret(new_secret, device.credential_hash)
        assert not verify_secret(old.secret, device.credential_hash)
        assert new_secret not in device.credential_hash


def test_rotated_secrets_go_nowhere_but_the_page(client, alice, acme_fleet):
    client.force_login(alice)
    response = post_action(client, "rotate_credentials", [acme_fleet[0].device], apply="1")
    secret = response.context["credentials"][0].secret
    assert not any(secret in note for note in notes(response))
    assert secret not in str(dict(client.session.items()))
    assert all(secret not in morsel.value for morsel in response.cookies.values())
    assert not LogEntry.objects.filter(change_message__contains=secret).exists()
    assert LogEntry.objects.filter(change_message="Rotated the device credentials.").exists()


def test_rotate_credentials_leaves_another_tenants_devices_alone(
    client, alice, acme_fleet, globex_device
):
    globex_hash = globex_device.credential_hash
    client.force_login(alice)
    response = post_action(
        client, "rotate_credentials", [acme_fleet[0].device, globex_device], apply="1"
    )
    assert [c.device.key for c in response.context["credentials"]] == ["acme-cold-1"]
    globex_device.refresh_from_db()
    assert globex_device.credential_hash == globex_hash


def test_the_credentials_page_offers_a_csv_download(client, alice, acme_fleet):
    client.force_login(alice)
    response = post_action(client, "rotate_credentials", [acme_fleet[0].device], apply="1")
    secret = response.context["credentials"][0].secret
    assert response.context["csv_href"].startswith("data:text/csv;charset=utf-8,")
    assert (
        f"acme-cold-1%2CCold%201%2CAcme%20Cold%20Chain%2C{secret}" in response.context["csv_href"]
    )
    assert 'download="device-credentials.csv"' in response.text


# --- Maintenance --------------------------------------------------------------------------------


def test_put_in_and_take_out_of_maintenance(client, alice, acme_fleet):
    devices = [credential.device for credential in acme_fleet]
    client.force_login(alice)
    response = post_action(client, "put_in_maintenance", devices)
    assert response.status_code == 302
    statuses = set(
        Device.objects.filter(pk__in=[d.pk for d in devices]).values_list("status", flat=True)
    )
    assert statuses == {DeviceStatus.MAINTENANCE}
    assert "Put 2 device(s) in maintenance." in notes(response)

    post_action(client, "take_out_of_maintenance", devices)
    statuses = set(
        Device.objects.filter(pk__in=[d.pk for d in devices]).values_list("status", flat=True)
    )
    assert statuses == {DeviceStatus.OFFLINE}


def test_an_action_on_only_unchangeable_devices_says_so(
    client, alice, acme_fleet, globex, globex_device
):
    add_member(alice, globex, Role.VIEWER)
    client.force_login(alice)
    response = post_action(client, "put_in_maintenance", [globex_device])
    globex_device.refresh_from_db()
    assert globex_device.status == DeviceStatus.OFFLINE
    assert any("nothing changed" in note for note in notes(response))


# --- Adding a device ----------------------------------------------------------------------------


def test_adding_a_device_shows_its_secret_once_and_stores_only_the_hash(
    client, alice, acme, acme_freezer_type, acme_group
):
    client.force_login(alice)
    response = client.post(
        admin_url(Device, "add"),
        device_form(
            tenant=acme.pk,
            key="acme-new-1",
            name="New freezer",
            device_type=acme_freezer_type.pk,
            groups=[acme_group.pk],
            tags="cold, new",
            attributes='{"rack": 2}',
        ),
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [credential] = response.context["credentials"]
    secret = credential.secret
    assert secret in response.text
    assert "shown this once" in response.text

    device = Device.objects.get(key="acme-new-1")
    assert verify_secret(secret, device.credential_hash)
    stored = [str(value) for value in Device.objects.filter(pk=device.pk).values().get().values()]
    assert not any(secret in value for value in stored)
    assert DeviceShadow.objects.filter(device=device).exists()
    assert list(device.groups.all()) == [acme_group]
    assert device.tags == ["cold", "new"]
    assert device.attributes == {"rack": 2}
    assert device.credential_rotated_at is not None
    assert not any(secret in note for note in notes(response))
    assert secret not in str(dict(client.session.items()))
    assert LogEntry.objects.filter(object_id=str(device.pk)).count() == 1

    again = client.get(admin_url(device, "change"))
    assert secret not in again.text


def test_adding_a_device_with_a_malformed_key_is_a_form_error(
    client, alice, acme, acme_freezer_type
):
    client.force_login(alice)
    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key="has/slash", device_type=acme_freezer_type.pk),
    )
    assert response.status_code == 200
    assert "key" in response.context["adminform"].form.errors
    assert not Device.objects.filter(name="Freezer 9").exists()


def test_adding_a_device_with_a_taken_key_is_a_form_error(
    client, alice, acme, acme_freezer_type, globex_device
):
    client.force_login(alice)
    response = client.post(
        admin_url(Device, "add"),
        device_form(tenant=acme.pk, key=globex_device.key, device_type=acme_freezer_type.pk),
    )
    assert response.status_code == 200
    assert "key" in response.context["adminform"].form.errors
    assert Device.objects.filter(key=globex_device.key).count() == 1


def test_the_import_button_shows_for_operators_only(client, alice, bob, acme_device):
    client.force_login(alice)
    assert "Import CSV" in client.get(admin_url(Device)).text
    client.force_login(bob)
    assert "Import CSV" not in client.get(admin_url(Device)).text
    assert client.get(admin_url(Device, "import")).status_code == 403


def test_groups_show_their_device_count(client, alice, acme_group, acme_fleet):
    acme_group.devices.add(*(credential.device for credential in acme_fleet))
    client.force_login(alice)
    response = client.get(admin_url(DeviceGroup))
    [row] = response.context["cl"].result_list
    assert row.device_count == 2


def test_the_changelist_finds_devices_by_tag_and_shows_a_status_badge(client, alice, acme):
    make_device(acme, "acme-tagged-1", tags=["critical"], status=DeviceStatus.ONLINE)
    make_device(acme, "acme-plain-1")
    client.force_login(alice)
    response = client.get(admin_url(Device), {"q": "critical"})
    assert [device.key for device in response.context["cl"].result_list] == ["acme-tagged-1"]
    assert "#2e7d32" in response.text
    assert ">Online</span>" in response.text


def test_an_action_on_all_matching_devices_keeps_the_filter_and_the_tenant(
    client, alice, acme, acme_fleet, globex_device
):
    in_maintenance = make_device(acme, "acme-maint-1", status=DeviceStatus.MAINTENANCE)
    client.force_login(alice)
    url = admin_url(Device) + "?status__exact=offline"
    selection = {"action": "add_tag", "select_across": "1", "_selected_action": [1]}
    page = client.post(url, selection)
    assert 'name="select_across" value="1"' in page.text
    client.post(url, {**selection, "apply": "1", "tag": "audit"})
    tagged = set(Device.objects.with_tag("audit").values_list("key", flat=True))
    assert tagged == {"acme-cold-1", "acme-cold-2"}
    assert in_maintenance.key not in tagged
    assert globex_device.key not in tagged
