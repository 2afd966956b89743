"""Groups count their devices; the tenants endpoint tells users their role in each tenant."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse

from devices.models import Role
from devices.services import add_member
from tests.api.clients import client_as, listed
from tests.factories import make_device


def test_a_group_counts_its_devices(acme, acme_group, acme_device, alice):
    acme_group.devices.add(acme_device, make_device(acme))
    response = client_as(alice).get(reverse("device-group-detail", kwargs={"pk": acme_group.pk}))
    assert response.data["device_count"] == 2


def test_the_group_list_counts_each_groups_devices(acme, acme_group, acme_device, alice):
    acme_group.devices.add(acme_device)
    rows = client_as(alice).get(reverse("device-group-list")).data["results"]
    assert [(row["name"], row["device_count"]) for row in rows] == [("Warehouse North", 1)]


def test_a_new_group_has_no_devices(acme, alice):
    response = client_as(alice).post(reverse("device-group-list"), {"name": "New"}, format="json")
    assert response.status_code == 201
    assert response.data["device_count"] == 0


def test_tenants_lists_the_users_tenants_with_their_role(acme, globex, bob):
    add_member(bob, globex, Role.OPERATOR)
    rows = client_as(bob).get(reverse("tenant-list")).data["results"]
    assert [(row["slug"], row["role"]) for row in rows] == [
        ("acme", "viewer"),
        ("globex", "operator"),
    ]


def test_a_superuser_sees_every_tenant_as_admin(acme, globex):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    rows = client_as(root).get(reverse("tenant-list")).data["results"]
    assert {(row["slug"], row["role"]) for row in rows} == {("acme", "admin"), ("globex", "admin")}


def test_a_user_of_no_tenant_sees_none(acme):
    loner = get_user_model().objects.create_user("loner", "loner@example.com", "pw")
    assert listed(client_as(loner).get(reverse("tenant-list")), "slug") == []
