"""Rules benchmark (issue 5): what evaluating 100 rules costs a 10,000-reading batch, next to
what storing that batch costs.

    .venv/bin/python bench/rules.py              # ~1 minute
    .venv/bin/python bench/rules.py --profile    # and cProfile's top entries of evaluate_batch

It builds its own world: a database `iotfleet_bench_rules` on the machine's PostgreSQL
(127.0.0.1:5432, or BENCH_POSTGRES_URL), dropped, migrated and seeded with a tenant, a device type
of 3 metrics, 1,000 devices and 100 rules of mixed kinds over all of them. A batch is 3,334
telemetry messages of 3 metrics (10,002 readings) spread over the 1,000 devices, as
telemetry/validation.py builds them; every repetition has fresh timestamps, 10 s after the last.

- store     ingest_batch with every rule disabled (what issue 4 measured);
- store+eval ingest_batch with the 100 rules enabled (evaluation runs inside it);
- eval      evaluate_batch alone on a batch's readings, in its own transaction.
Medians of REPS repetitions after WARMUP; the target: eval / store < 1.0.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.databases import database_url, fresh_database  # noqa: E402

DATABASE = "iotfleet_bench_rules"
DEVICES = 1000
MESSAGES = 3334
METRICS = (("temperature", "°C", -40, 60), ("humidity", "%", 0, 100), ("co2", "ppm", 0, 5000))
WARMUP = 2
REPS = 7
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def rule_specs() -> list[tuple[str, str, str, int]]:
    """(kind, name, condition, for seconds): 100 rules, thresholds the most, as fleets have."""
    specs = []
    for n in range(30):
        metric, limit = [("temperature", 38 + n % 10), ("humidity", 90 + n % 8), ("co2", 1800)][
            n % 3
        ]
        specs.append(("threshold", f"threshold {n}", f"{metric} > {limit}", 0))
    for n in range(15):
        specs.append(("duration", f"duration {n}", f"temperature > {36 + n % 6}", 300))
    for n in range(15):
        specs.append(
            (
                "compound",
                f"compound {n}",
                f"(temperature > {30 + n % 5} and humidity > 70) or (co2 > 1500 and not "
                f"humidity < {20 + n})",
                0,
            )
        )
    for n in range(15):
        condition = (
            f"rate(temperature, 5m) > {5 + n % 3}" if n % 2 else f"rate(co2, 5m) > {100 + n}"
        )
        specs.append(("rate", f"rate {n}", condition, 0))
    for n in range(10):
        specs.append(("zscore", f"zscore {n}", f"zscore(temperature, 1h) > {4 + n % 3}", 0))
    for n in range(15):
        condition = f"avg(temperature, 10m) > {35 + n % 5}"
        if n % 3 == 0:
            condition = f"abs(temperature - avg(temperature, 10m)) > {8 + n % 4}"
        specs.append(("compound" if n % 3 == 0 else "threshold", f"avg {n}", condition, 0))
    assert len(specs) == 100
    return specs


def setup() -> None:

    fresh_database(DATABASE)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "iotfleet.settings",
            "DATABASE_URL": database_url(DATABASE),
            "DEBUG": "false",
            "MQTT_DYNSEC_ENABLED": "false",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def seed() -> tuple[list[str], dict[str, int]]:
    from datetime import timedelta

    from devices.models import DeviceType, Metric, Tenant
    from devices.services import DeviceSpec, create_devices
    from rules.models import Rule

    tenant = Tenant.objects.create(name="Bench", slug="bench")
    kind = DeviceType.objects.create(tenant=tenant, name="Environment sensor")
    metric_ids = {}
    for name, unit, low, high in METRICS:
        metric_ids[name] = Metric.objects.create(
            device_type=kind, name=name, unit=unit, min_value=low, max_value=high
        ).id
    keys = [f"bench-{n:04d}" for n in range(DEVICES)]
    create_devices(tenant, [DeviceSpec(key=key, name=key, device_type=kind) for key in keys])
    Rule.objects.bulk_create(
        Rule(
            tenant=tenant,
            device_type=kind,
            name=name,
            kind=rule_kind,
            condition=condition,
            for_duration=timedelta(seconds=seconds),
            is_enabled=False,
        )
        for rule_kind, name, condition, seconds in rule_specs()
    )
    return keys, metric_ids


class Batches:
    """Fresh batches: each device drifts around its own level; a few run hot, so some rules
    break (and their alerts open, count and resolve) as in a real fleet."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.rng = random.Random(5)
        self.level = [
            (self.rng.uniform(15, 30), self.rng.uniform(30, 70), self.rng.uniform(450, 1200))
            for _ in keys
        ]
        self.hot = set(self.rng.sample(range(len(keys)), 20))
        self.n = 0

    def next(self) -> list[list]:
        base = START_MS + self.n * 10_000
        self.n += 1
        entries = []
        for i in range(MESSAGES):
            d = i % len(self.keys)
            ts = base + (i // len(self.keys)) * 3000 + d % 1000
            temperature, humidity, co2 = self.level[d]
            temperature += self.rng.gauss(0, 0.05) + (15 if d in self.hot else 0)
            metrics = {
                "temperature": round(min(temperature, 59.0), 2),
                "humidity": round(humidity + self.rng.gauss(0, 0.5), 1),
                "co2": round(co2 + self.rng.gauss(0, 2)),
            }
            entries.append(["t", self.keys[d], ts, [[ts, None, metrics]], [], ""])
        return entries


def readings_of(entries: list[list], ids: dict[str, int], metric_ids: dict[str, int]) -> list:
    return [
        (ids[entry[1]], metric_ids[name], ts, float(value))
        for entry in entries
        for ts, _, metrics in entry[3]
        for name, value in metrics.items()
    ]


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile evaluate_batch")
    parser.add_argument("--reps", type=int, default=REPS)
    args = parser.parse_args()
    setup()
    from django.db import transaction

    from devices.models import Device
    from rules import engine
    from rules.models import Rule, RuleState
    from telemetry.services import ingest_batch

    keys, metric_ids = seed()
    # As a Celery worker process does at start (iotfleet/celery.py): what is loaded by now stays
    # out of the garbage collector's rounds, which the batches' allocations set off.
    gc.collect()
    gc.freeze()
    ids = dict(Device.objects.values_list("key", "id"))
    info = dict(Device.objects.values_list("id", "tenant_id"))
    type_ids = dict(Device.objects.values_list("id", "device_type_id"))
    devices = {pk: (info[pk], type_ids[pk]) for pk in ids.values()}
    batches = Batches(keys)

    def store_runs() -> list[float]:
        times = [timed(ingest_batch, batches.next()) for _ in range(WARMUP + args.reps)]
        return times[WARMUP:]

    def evaluate(readings: list) -> None:
        with transaction.atomic():
            engine.evaluate_batch(readings, devices)

    print(f"batch: {MESSAGES} messages, {MESSAGES * 3} readings, {DEVICES} devices", flush=True)
    store = store_runs()
    Rule.objects.update(is_enabled=True)
    both = store_runs()
    eval_runs = []
    for n in range(WARMUP + args.reps):
        readings = readings_of(batches.next(), ids, metric_ids)
        took = timed(evaluate, readings)
        if n >= WARMUP:
            eval_runs.append(took)
    from alerts.models import Alert

    if args.profile:
        import cProfile
        import pstats

        readings = readings_of(batches.next(), ids, metric_ids)
        profile = cProfile.Profile()
        profile.runcall(evaluate, readings)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(r"engine|services|rules.py", 25)

    median_store, median_both, median_eval = (
        statistics.median(store),
        statistics.median(both),
        statistics.median(eval_runs),
    )
    ratio = median_eval / median_store
    added = (median_both - median_store) / median_store
    print(f"rules: 100 enabled ({', '.join(sorted({s[0] for s in rule_specs()}))})")
    print(f"store (no rules)         median {median_store:7.1f} ms  runs {_runs(store)}")
    print(f"store + evaluate         median {median_both:7.1f} ms  runs {_runs(both)}")
    print(f"evaluate_batch alone     median {median_eval:7.1f} ms  runs {_runs(eval_runs)}")
    print(
        f"state rows kept: {RuleState.objects.count()}, alerts: {Alert.objects.count()} "
        f"({Alert.objects.exclude(state='resolved').count()} unresolved)"
    )
    print("target: evaluation adds less than the storage itself (< 1.0), measured both ways")
    print(f"  evaluate_batch alone / store                {ratio:5.2f}  {_verdict(ratio)}")
    print(f"  (store + evaluate - store) / store          {added:5.2f}  {_verdict(added)}")


def _verdict(ratio: float) -> str:
    return "PASS" if ratio < 1.0 else "FAIL"


def _runs(times: list[float]) -> str:
    return " ".join(f"{t:.0f}" for t in times)


if __name__ == "__main__":
    main()
