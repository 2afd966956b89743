"""`manage.py seed_demo`: a demo fleet in a few seconds, the same however often it runs."""

import time
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from devices.credentials import ALGORITHM
from devices.models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceType,
    Membership,
    Metric,
    Role,
    Tenant,
)

pytestmark = pytest.mark.django_db

SEEDED_MODELS = [Tenant, DeviceType, Metric, DeviceGroup, Device, DeviceShadow, Membership]


def seed(devices: int = 60, **options) -> str:
    out = StringIO()
    call_command("seed_demo", devices=devices, stdout=out, **options)
    return out.getvalue()


def counts() -> dict[str, int]:
    counted = {model.__name__: model.objects.count() for model in SEEDED_MODELS}
    counted["User"] = get_user_model().objects.count()
    counted["group memberships"] = Device.groups.through.objects.count()
    return counted


def test_seeding_twice_creates_nothing_the_second_time():
    seed()
    first = counts()

    output = seed()

    assert counts() == first
    assert first["Device"] == 60
    assert "0 devices;" in output
    assert "60 devices were already there" in output


def test_existing_devices_are_left_as_they_are():
    seed()
    device = Device.objects.get(key="acme-freezer-0001")
    Device.objects.filter(pk=device.pk).update(name="Renamed by an operator", tags=["mine"])

    seed()

    device.refresh_from_db()
    assert device.name == "Renamed by an operator"
    assert device.tags == ["mine"]


def test_more_devices_later_adds_only_the_difference():
    seed(devices=40)
    keys_before = set(Device.objects.values_list("key", flat=True))

    output = seed(devices=60)

    keys_after = set(Device.objects.values_list("key", flat=True))
    assert keys_before < keys_after
    assert len(keys_after) == 60
    assert "20 devices;" in output


def test_the_demo_user_is_admin_of_acme_only():
    seed()

    demo = get_user_model().objects.get(username="demo")
    assert list(Membership.objects.filter(user=demo).values_list("tenant__slug", "role")) == [
        ("acme", Role.ADMIN)
    ]
    assert demo.is_staff
    assert not demo.is_superuser
    assert set(Device.objects.for_user(demo).values_list("tenant__slug", flat=True)) == {"acme"}


def test_the_demo_login_works_with_the_default_password(monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)

    output = seed(devices=0)

    assert "demo / iotfleet-demo" in output
    assert authenticate(username="demo", password="iotfleet-demo") is not None


def test_demo_password_comes_from_the_environment(monkeypatch):
    seed(devices=0)
    monkeypatch.setenv("DEMO_PASSWORD", "another-demo-password")

    output = seed(devices=0)

    assert "demo / another-demo-password" in output
    assert authenticate(username="demo", password="another-demo-password") is not None


def test_both_tenants_have_devices_of_several_types_in_several_sites():
    seed()

    for slug, type_names in {
        "acme": {"Freezer", "Environment sensor", "Gateway"},
        "globex": {"Pump", "Gateway", "Environment sensor"},
    }.items():
        devices = Device.objects.filter(tenant__slug=slug)
        assert set(devices.values_list("device_type__name", flat=True)) == type_names
        assert devices.values("groups").distinct().count() >= 2
    assert Tenant.objects.get(slug="acme").name == "Acme Cold Chain"
    assert Tenant.objects.get(slug="globex").name == "Globex Pumps"


def test_device_types_have_metrics_with_units_and_ranges():
    seed(devices=0)

    freezer = DeviceType.objects.get(tenant__slug="acme", name="Freezer")
    temperature = freezer.metrics.get(name="temperature")
    assert (temperature.unit, temperature.min_value, temperature.max_value) == ("°C", -40, 20)
    pump = DeviceType.objects.get(tenant__slug="globex", name="Pump")
    assert set(pump.metrics.values_list("name", flat=True)) == {
        "vibration",
        "pressure",
        "flow_rate",
    }
    assert all(t.heartbeat_timeout.total_seconds() > 0 for t in DeviceType.objects.all())


def test_devices_have_shadows_credentials_tags_locations_and_firmware():
    seed()

    devices = list(Device.objects.select_related("shadow"))
    assert all(device.shadow.version == 0 for device in devices)
    assert all(device.credential_hash.startswith(f"{ALGORITHM}$") for device in devices)
    assert len({device.credential_hash for device in devices}) == len(devices)
    assert all(device.tags and device.firmware_version and device.location for device in devices)
    assert all(
        -90 <= device.latitude <= 90 and -180 <= device.longitude <= 180 for device in devices
    )
    assert all(device.groups.exists() for device in devices)


def test_every_acme_site_has_a_gateway():
    seed()

    for group in DeviceGroup.objects.filter(tenant__slug="acme").exclude(name="Canary devices"):
        assert group.devices.filter(device_type__name="Gateway").exists(), group.name


def test_three_hundred_devices_seed_in_seconds():
    started = time.perf_counter()

    seed(devices=300)

    # A few seconds normally; the bound catches per-device slow work (e.g. password hashing),
    # not a busy CI machine.
    assert time.perf_counter() - started < 30
    assert Device.objects.count() == DeviceShadow.objects.count() == 300


def test_seeding_refuses_production(settings):
    settings.PRODUCTION = True

    with pytest.raises(CommandError, match="IOTFLEET_ENV=production"):
        seed(devices=1)

    assert not Device.objects.exists()
