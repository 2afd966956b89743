"""`for_user()`: the one place that decides which tenants' rows a user sees or changes."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from devices.models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceType,
    Membership,
    Metric,
    Role,
    Tenant,
    has_role,
)
from devices.services import add_member, create_device

SCOPED_MODELS = [Tenant, Membership, DeviceType, Metric, DeviceGroup, Device, DeviceShadow]


@pytest.fixture
def both_fleets(acme_device, globex_device, acme_group, globex_group, alice, carol):
    return acme_device, globex_device


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda m: m.__name__)
def test_an_operator_of_acme_sees_only_acme_rows(model, both_fleets, alice, acme):
    rows = list(model.objects.for_user(alice))
    assert rows, f"alice should see Acme's {model.__name__} rows"
    assert {row.tenant_id for row in rows} == {acme.pk}


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda m: m.__name__)
def test_a_viewer_may_read_but_not_change(model, both_fleets, bob):
    assert model.objects.for_user(bob).exists()
    assert not model.objects.for_user(bob, role=Role.OPERATOR).exists()


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda m: m.__name__)
def test_a_superuser_sees_every_tenant(model, both_fleets):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    assert model.objects.for_user(root).count() == model.objects.count()


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda m: m.__name__)
def test_an_anonymous_or_inactive_user_sees_nothing(model, both_fleets, alice):
    from django.contrib.auth.models import AnonymousUser

    assert not model.objects.for_user(AnonymousUser()).exists()
    alice.is_active = False
    alice.save()
    assert not model.objects.for_user(alice).exists()


def test_roles_order_viewer_operator_admin():
    assert Role.at_least(Role.VIEWER) == ["viewer", "operator", "admin"]
    assert Role.at_least(Role.OPERATOR) == ["operator", "admin"]
    assert Role.at_least(Role.ADMIN) == ["admin"]


def test_has_role_answers_per_tenant(alice, acme, globex, carol):
    assert has_role(alice, acme.pk, Role.OPERATOR)
    assert not has_role(alice, acme.pk, Role.ADMIN)
    assert not has_role(alice, globex.pk, Role.VIEWER)
    assert not has_role(carol, acme.pk, Role.VIEWER)


def test_membership_makes_the_user_staff_so_they_can_use_the_admin(acme):
    user = get_user_model().objects.create_user("erin", "erin@example.com", "pw")
    assert not user.is_staff
    add_member(user, acme, Role.VIEWER)
    user.refresh_from_db()
    assert user.is_staff


def test_a_device_cannot_use_another_tenants_device_type(acme, globex_pump_type):
    with pytest.raises(ValidationError) as error:
        create_device(tenant=acme, key="bad-1", name="Bad", device_type=globex_pump_type)
    assert "device_type" in error.value.message_dict
    assert not Device.objects.filter(key="bad-1").exists()


@pytest.mark.parametrize("key", ["has/slash", "plus+", "hash#", "with space", "", "-leading"])
def test_a_device_key_must_be_usable_as_an_mqtt_topic_level(key, acme, acme_freezer_type):
    with pytest.raises(ValidationError) as error:
        create_device(tenant=acme, key=key, name="X", device_type=acme_freezer_type)
    assert "key" in error.value.message_dict


def test_stale_devices_are_online_ones_past_their_heartbeat_timeout(acme_device):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    acme_device.status = "online"
    acme_device.last_seen = now - acme_device.device_type.heartbeat_timeout - timedelta(seconds=1)
    acme_device.save()
    assert list(Device.objects.stale(now)) == [acme_device]
    assert acme_device.is_overdue(now)
    acme_device.last_seen = now
    acme_device.save()
    assert not Device.objects.stale(now).exists()
    assert not acme_device.is_overdue(now)


def test_a_metric_range_rejects_readings_outside_it(acme_freezer_type):
    metric = Metric.objects.get(device_type=acme_freezer_type, name="temperature")
    assert metric.accepts(-40)
    assert metric.accepts(60)
    assert metric.accepts(0)
    assert not metric.accepts(-40.1)
    assert not metric.accepts(61)


def test_device_type_names_are_unique_per_tenant_only(acme, globex):
    DeviceType.objects.create(tenant=acme, name="Sensor")
    DeviceType.objects.create(tenant=globex, name="Sensor")
    assert DeviceType.objects.filter(name="Sensor").count() == 2
