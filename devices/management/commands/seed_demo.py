"""`manage.py seed_demo`: a demo fleet to look at, with a login for it.

Two tenants, so tenancy is visible: the demo user administers Acme Cold Chain (freezers,
environment sensors, gateways at European sites) and cannot see Globex Pumps (pumps at US plants).

Idempotent: everything is looked up by its natural key first, and rows that exist are left as they
are. The plan is a pure function of the device count, and the plan for N devices is a prefix of the
plan for more, so `--devices 500` after `--devices 300` adds 200. Devices go through
`create_devices()` (credential hash, shadow); their secrets are thrown away, since the simulator
rotates them before it connects.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from itertools import cycle, islice
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from devices.models import Device, DeviceGroup, DeviceType, Metric, Role, Tenant
from devices.services import DeviceSpec, add_member, create_devices
from rules.demo import seed_demo_rules

DEMO_USERNAME = "demo"
DEFAULT_DEMO_PASSWORD = "iotfleet-demo"  # noqa: S105 (published on purpose: it is the demo)
CANARY_GROUP = "Canary devices"
CANARY_EVERY = 20  # one device in twenty is a canary for firmware rollouts


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    min_value: float
    max_value: float
    failure_threshold: float | None = None  # a wear indicator for predictive maintenance


@dataclass(frozen=True)
class TypeSpec:
    name: str
    slug: str  # part of the device keys
    description: str
    heartbeat_timeout: timedelta
    metrics: tuple[MetricSpec, ...]
    models: tuple[str, ...]
    firmware: tuple[tuple[str, int], ...]  # (version, weight)
    tags: tuple[str, ...]


@dataclass(frozen=True)
class SiteSpec:
    name: str
    code: str
    city: str
    latitude: float
    longitude: float
    tag: str


@dataclass(frozen=True)
class TenantSpec:
    slug: str
    name: str
    weight: int  # share of the devices
    types: tuple[tuple[TypeSpec, int], ...]  # (type, weight)
    sites: tuple[SiteSpec, ...]


TEMPERATURE = MetricSpec("temperature", "°C", -40, 20)
FREEZER = TypeSpec(
    name="Freezer",
    slug="freezer",
    description="Walk-in and cabinet freezers; report every minute.",
    heartbeat_timeout=timedelta(minutes=5),
    metrics=(
        TEMPERATURE,
        MetricSpec("door_open", "", 0, 1),
        # A compressor draws more current as it wears; at 9.5 A this one is about to fail.
        MetricSpec("compressor_current", "A", 0, 20, failure_threshold=9.5),
    ),
    models=("ColdBox 400", "ColdBox 800", "PolarLine W2"),
    firmware=(("1.4.2", 2), ("1.5.0", 6), ("2.0.1", 2)),
    tags=("cold-chain", "food", "pharma"),
)
ENVIRONMENT = TypeSpec(
    name="Environment sensor",
    slug="env",
    description="Ambient temperature, humidity and CO₂ in halls and offices; every 5 minutes.",
    heartbeat_timeout=timedelta(minutes=15),
    metrics=(
        MetricSpec("temperature", "°C", -20, 60),
        MetricSpec("humidity", "%", 0, 100),
        MetricSpec("co2", "ppm", 0, 5000),
    ),
    models=("AirSense 3", "AirSense 3 Pro"),
    firmware=(("3.2.0", 3), ("3.3.1", 7)),
    tags=("ambient",),
)
GATEWAY = TypeSpec(
    name="Gateway",
    slug="gw",
    description="Site gateways that bridge local sensors to the broker; heartbeat every 30 s.",
    heartbeat_timeout=timedelta(minutes=2),
    metrics=(
        MetricSpec("connected_devices", "", 0, 1000),
        MetricSpec("rssi", "dBm", -120, 0),
    ),
    models=("EdgeLink 200",),
    firmware=(("5.0.4", 1), ("5.1.0", 3)),
    tags=("edge",),
)
PUMP = TypeSpec(
    name="Pump",
    slug="pump",
    description="Centrifugal pumps with vibration, pressure and flow sensing; every minute.",
    heartbeat_timeout=timedelta(minutes=5),
    metrics=(
        # 11.2 mm/s: ISO 10816's "damage occurs" zone for a medium pump; maintenance watches it.
        MetricSpec("vibration", "mm/s", 0, 50, failure_threshold=11.2),
        MetricSpec("pressure", "bar", 0, 16),
        MetricSpec("flow_rate", "m³/h", 0, 200),
    ),
    models=("HydroMax 75", "HydroMax 110", "AquaDrive S"),
    firmware=(("0.9.8", 1), ("1.0.3", 5), ("1.1.0", 4)),
    tags=("water", "high-pressure"),
)

TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec(
        slug="acme",
        name="Acme Cold Chain",
        weight=3,
        types=((FREEZER, 6), (ENVIRONMENT, 3), (GATEWAY, 1)),
        sites=(
            SiteSpec("Rotterdam DC", "RTM", "Rotterdam", 51.9225, 4.4792, "nl"),
            SiteSpec("Hamburg Cold Store", "HAM", "Hamburg", 53.5511, 9.9937, "de"),
            SiteSpec("Antwerp Hub", "ANR", "Antwerp", 51.2194, 4.4025, "be"),
            SiteSpec("Lyon Depot", "LYS", "Lyon", 45.7640, 4.8357, "fr"),
        ),
    ),
    TenantSpec(
        slug="globex",
        name="Globex Pumps",
        weight=1,
        types=((PUMP, 8), (GATEWAY, 1), (ENVIRONMENT, 1)),
        sites=(
            SiteSpec("Springfield Plant", "SPI", "Springfield", 39.7817, -89.6501, "us"),
            SiteSpec("Shelbyville Station", "SHB", "Shelbyville", 39.4064, -88.7900, "us"),
        ),
    ),
)


@dataclass(frozen=True)
class PlannedDevice:
    tenant: TenantSpec
    device_type: TypeSpec
    site: SiteSpec
    number: int  # per tenant and type, from 1

    @property
    def key(self) -> str:
        return f"{self.tenant.slug}-{self.device_type.slug}-{self.number:04d}"

    @property
    def is_canary(self) -> bool:
        return self.number % CANARY_EVERY == 1

    def fields(self) -> dict[str, Any]:
        """Name, tags, location and the rest: the same for the same key, every run."""
        rng = random.Random(self.key)
        spec = self.device_type
        versions, weights = zip(*spec.firmware, strict=True)
        tags = [spec.tags[0], self.site.tag]
        if len(spec.tags) > 1:
            tags.append(rng.choice(spec.tags[1:]))
        if rng.random() < 0.1:
            tags.append("critical")
        return {
            "name": f"{spec.name} {self.site.code}-{self.number:03d}",
            "tags": tags,
            "attributes": {
                "model": rng.choice(spec.models),
                "serial": f"{spec.slug[:2].upper()}{rng.randrange(10**7):07d}",
                "installed": rng.randrange(2019, 2025),
            },
            "location": f"{self.site.name}, {self.site.city}",
            "latitude": round(self.site.latitude + rng.uniform(-0.01, 0.01), 6),
            "longitude": round(self.site.longitude + rng.uniform(-0.01, 0.01), 6),
            "firmware_version": rng.choices(versions, weights)[0],
        }


def _weighted_cycle(items: tuple[tuple[Any, int], ...]) -> list[Any]:
    """One round of items, each as often as its weight, interleaved (a a b a c ...)."""
    counts = dict(items)
    order: list[Any] = []
    while any(counts.values()):
        for item, _ in items:
            if counts[item]:
                order.append(item)
                counts[item] -= 1
    return order


def plan_devices(count: int) -> list[PlannedDevice]:
    """The first `count` devices of the demo fleet, spread over tenants, types and sites."""
    tenant_order = cycle(_weighted_cycle(tuple((t, t.weight) for t in TENANTS)))
    type_orders = {t.slug: cycle(_weighted_cycle(t.types)) for t in TENANTS}
    numbers: Counter[tuple[str, str]] = Counter()
    planned = []
    for tenant in islice(tenant_order, count):
        device_type = next(type_orders[tenant.slug])
        numbers[tenant.slug, device_type.slug] += 1
        number = numbers[tenant.slug, device_type.slug]
        # Each type round-robins over the sites, so every site has a gateway and sensors.
        site = tenant.sites[(number - 1) % len(tenant.sites)]
        planned.append(PlannedDevice(tenant, device_type, site, number))
    return planned


class Command(BaseCommand):
    help = (
        "Create a demo fleet (tenants Acme Cold Chain and Globex Pumps, device types, sites, "
        "devices) and the demo login. Safe to run again: existing rows are left as they are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--devices", type=int, default=300, help="How many devices in all (default 300)."
        )
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="Seed even with IOTFLEET_ENV=production (creates a login with a known password).",
        )

    def handle(self, *args: Any, devices: int, allow_production: bool, **options: Any) -> None:
        if devices < 0:
            raise CommandError("--devices must be 0 or more.")
        if getattr(settings, "PRODUCTION", False) and not allow_production:
            raise CommandError(
                "seed_demo creates a login with a published password, so it refuses to run with "
                "IOTFLEET_ENV=production. Pass --allow-production if you really want demo data."
            )
        started = time.perf_counter()
        password = os.environ.get("DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD
        with transaction.atomic():
            summary = self.seed(plan_devices(devices), password)
        self.report(summary, password, time.perf_counter() - started)
        self.seed_wear()
        self.seed_firmware()

    def seed_wear(self) -> None:
        """A week of wear-indicator history (a few pumps degrading) and a first scoring, so the
        "at risk" list has something to show at once (maintenance/demo.py)."""
        from maintenance.demo import seed_demo_wear
        from maintenance.services import score_fleet

        started = time.perf_counter()
        wear = seed_demo_wear()
        scored = score_fleet()
        self.stdout.write(
            f"Predictive maintenance: {wear.degrading} of the devices with a wear indicator are "
            f"degrading; wrote {wear.readings:,} readings of history; {scored.at_risk} devices "
            f"at risk ({time.perf_counter() - started:.1f} s)."
        )

    def seed_firmware(self) -> None:
        """Signed demo releases for Acme's freezers, ready for the rollout wizard (ota/demo.py)."""
        from ota.demo import seed_demo_firmware

        acme = Tenant.objects.get(slug=TENANTS[0].slug)
        freezer = DeviceType.objects.get(tenant=acme, name=FREEZER.name)
        created = seed_demo_firmware(acme, freezer)
        if created:
            self.stdout.write(f"Firmware: {created} signed demo releases for Acme's freezers.")

    def seed(self, plan: list[PlannedDevice], password: str) -> Counter[str]:
        created: Counter[str] = Counter()
        tenants: dict[str, Tenant] = {}
        types: dict[tuple[str, str], DeviceType] = {}
        groups: dict[tuple[str, str], DeviceGroup] = {}
        for spec in TENANTS:
            tenant, new = Tenant.objects.get_or_create(slug=spec.slug, defaults={"name": spec.name})
            tenants[spec.slug] = tenant
            created["tenants"] += new
            for type_spec, _ in spec.types:
                types[spec.slug, type_spec.slug] = self.device_type(tenant, type_spec, created)
            for name in [site.name for site in spec.sites] + [CANARY_GROUP]:
                group, new = DeviceGroup.objects.get_or_create(
                    tenant=tenant, name=name, defaults={"description": _group_description(name)}
                )
                groups[spec.slug, name] = group
                created["groups"] += new

        existing = set(
            Device.objects.filter(key__in=[p.key for p in plan]).values_list("key", flat=True)
        )
        specs: dict[str, list[DeviceSpec]] = {}
        for planned in plan:
            if planned.key in existing:
                created["devices already there"] += 1
                continue
            tenant_slug = planned.tenant.slug
            device_groups = [groups[tenant_slug, planned.site.name]]
            if planned.is_canary:
                device_groups.append(groups[tenant_slug, CANARY_GROUP])
            fields = planned.fields()
            specs.setdefault(tenant_slug, []).append(
                DeviceSpec(
                    key=planned.key,
                    name=fields.pop("name"),
                    device_type=types[tenant_slug, planned.device_type.slug],
                    groups=device_groups,
                    fields=fields,
                )
            )
            created["devices"] += 1
            created[f"devices of {planned.tenant.name}"] += 1
        for tenant_slug, tenant_specs in specs.items():
            create_devices(tenants[tenant_slug], tenant_specs)

        created["demo user"] += self.demo_user(tenants["acme"], password)
        # Alert rules on Acme's freezers, one narrowed to its first site, and an email channel.
        acme = TENANTS[0]
        created["rules"] += seed_demo_rules(
            tenants[acme.slug],
            types[acme.slug, FREEZER.slug],
            groups[acme.slug, acme.sites[0].name],
        )
        return created

    def device_type(self, tenant: Tenant, spec: TypeSpec, created: Counter[str]) -> DeviceType:
        device_type, new = DeviceType.objects.get_or_create(
            tenant=tenant,
            name=spec.name,
            defaults={"description": spec.description, "heartbeat_timeout": spec.heartbeat_timeout},
        )
        created["device types"] += new
        for metric in spec.metrics:
            wear = {}
            if metric.failure_threshold is not None:
                wear = {"is_wear_indicator": True, "failure_threshold": metric.failure_threshold}
            row, new = Metric.objects.get_or_create(
                device_type=device_type,
                name=metric.name,
                defaults={
                    "unit": metric.unit,
                    "min_value": metric.min_value,
                    "max_value": metric.max_value,
                    **wear,
                },
            )
            created["metrics"] += new
            if wear and not row.is_wear_indicator:  # a fleet seeded before wear indicators
                Metric.objects.filter(pk=row.pk).update(**wear)
        return device_type

    def demo_user(self, acme: Tenant, password: str) -> bool:
        """The demo login, admin of Acme only; its password reset if it no longer matches."""
        user: AbstractUser
        user, new = get_user_model().objects.get_or_create(
            username=DEMO_USERNAME,
            defaults={"email": "demo@example.com", "first_name": "Demo", "last_name": "Operator"},
        )
        if new or not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            if not new:
                self.stdout.write("Reset the demo user's password to the one printed below.")
        add_member(user, acme, Role.ADMIN)
        return new

    def report(self, created: Counter[str], password: str, seconds: float) -> None:
        out = self.stdout
        out.write(
            f"Created {created['tenants']} tenants, {created['device types']} device types, "
            f"{created['metrics']} metrics, {created['groups']} groups, "
            f"{created['devices']} devices; {created['devices already there']} devices "
            f"were already there and were left as they are ({seconds:.1f} s)."
        )
        out.write(f"Created {created['rules']} alert rules on Acme's freezers.")
        for spec in TENANTS:
            count = created[f"devices of {spec.name}"]
            if count:
                out.write(f"  {spec.name}: {count} new devices")
        out.write(
            self.style.SUCCESS(
                f"Demo login: {DEMO_USERNAME} / {password} — admin of Acme Cold Chain, "
                "not a member of Globex Pumps (a superuser sees both)."
            )
        )


def _group_description(name: str) -> str:
    if name == CANARY_GROUP:
        return f"One device in {CANARY_EVERY}: first to receive new firmware."
    return f"Devices at {name}."
