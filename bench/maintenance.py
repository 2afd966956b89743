"""Predictive maintenance benchmark (issue 8): how well the model flags wearing devices, and what
scoring a fleet costs next to just reading its data.

    .venv/bin/python bench/maintenance.py                  # ~5 minutes on this machine
    .venv/bin/python bench/maintenance.py --skip-database  # detection figures only (~1 minute)

Seeded (--seed, default 8): the same fleets and figures at every run.

Part 1, detection over time (in memory, the same model code the service runs). A fleet of
DETECT_DEGRADING wearing devices (the four drift shapes of maintenance/wear.py, crossing their
threshold between day 10 and day 24) among DETECT_HEALTHY healthy ones (plain, three times
noisier, a one-off level shift of 15 % of the way to the threshold, a strong daily cycle), 24
days of 1-minute readings reduced to hourly buckets. The model scores the last 7 days every 6
hours from day 7 on, as beat would. Two healthy kinds are traps: a slow drift that reaches the
threshold only 45-90 days later, and a transient rise of 30 % of the way that settles again.
Figures:
- flagged >= 24 h early: share of wearing devices first put at risk at least 24 h before they
  crossed (target >= 90 %), with the median lead time;
- false positives: share of healthy devices ever put at risk, at any of the 69 scorings (target
  <= 5 %);
- date error: |predicted - true crossing| at the first flag, and 7, 3 and 1 days before the
  crossing (median, in days).

Part 2, the database (a dedicated database `iotfleet_maint_bench`, dropped, migrated and
filled): 1,000 devices x 7 days of 1-minute readings = 10,080,000 rows, loaded with COPY
(binary); 10 % of the devices wear (crossing 1.5-12 days ahead), the others are healthy.
- read: COPY (SELECT time, device_id, value ...) TO STDOUT of the window, parsed into numpy:
  what it costs just to get the raw data out;
- score: `maintenance.services.score_fleet()`, everything the beat task does (the date_bin
  query, pandas, the model, the upsert of 1,000 predictions, the alerts); target under 60 s.
Each measured twice (the second with the data in PostgreSQL's cache); plus the single-scoring
detection figures of that fleet.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.databases import database_url, fresh_database  # noqa: E402
from maintenance.readings_copy import COPY_HEADER, COPY_READINGS, COPY_TRAILER, copy_rows  # noqa: E402
from maintenance.scoring import (  # noqa: E402
    HourlySeries,
    Parameters,
    WearIndicator,
    hourly_from_minutes,
    score_device_type,
)
from maintenance.wear import DAY, SHAPES, Wear  # noqa: E402

DATABASE = "iotfleet_maint_bench"
THRESHOLD = 11.2  # mm/s: vibration severity zone D of ISO 10816 for a medium machine
DETECT_DEGRADING = 160
DETECT_HEALTHY = 480
DETECT_DAYS = 24
SCORE_EVERY_HOURS = 6
DB_DEVICES = 1000
DB_DEGRADING_SHARE = 0.10
HEALTHY_KINDS = ("plain", "noisy", "shifted", "daily cycle", "slow drift", "transient")


def log(text: str) -> None:
    print(text, flush=True)


@dataclass
class Planted:
    wear: Wear
    kind: str  # a drift shape, or a kind of healthy device
    shift_at: float = math.inf  # a healthy device's one-off level shift (epoch seconds)
    shift: float = 0.0
    bump_at: float = math.inf  # a healthy device's transient: up over 12 h, back with tau 1 day
    bump: float = 0.0

    @property
    def degrading(self) -> bool:
        """Wearing towards failure within the bench's time (a slow drift is not)."""
        return self.kind in SHAPES

    def minutes(self, start: float, days: float, rng: np.random.Generator) -> np.ndarray:
        times = start + 60.0 * np.arange(int(days * 1440))
        values = self.wear.sample(times, rng)
        if self.shift:
            values[times >= self.shift_at] += self.shift
        if self.bump:
            since = (times - self.bump_at) / 3600
            rise = np.clip(since / 12, 0, 1)
            fall = np.exp(-np.maximum(since - 12, 0) / 24)
            values += self.bump * np.where(since > 0, rise * fall, 0.0)
        return values


def plant(
    rng: np.random.Generator, degrading: bool, number: int, cross_range: tuple[float, float]
) -> Planted:
    """One device; `cross_range` in epoch seconds for a wearing one."""
    baseline = rng.uniform(2.5, 4.5)
    noise = rng.uniform(0.25, 0.5)
    common = {
        "daily_amplitude": rng.uniform(0.0, 0.3),
        "phase": rng.uniform(0, 2 * math.pi),
        "wander": noise * rng.uniform(0.3, 0.8),
    }
    if degrading:
        shape = SHAPES[number % len(SHAPES)]
        cross_at = rng.uniform(*cross_range)
        start = cross_at - rng.uniform(6, 20) * DAY
        wear = Wear(
            baseline, THRESHOLD, noise, start=start, cross_at=cross_at, shape=shape, **common
        )
        return Planted(wear, shape)
    kind = HEALTHY_KINDS[number % len(HEALTHY_KINDS)]
    if kind == "noisy":
        noise *= 3
        common["wander"] *= 3
    if kind == "daily cycle":
        common["daily_amplitude"] = 1.2
    wear = Wear(baseline, THRESHOLD, noise, **common)
    if kind == "slow drift":
        # Wears too, but reaches the threshold only 45-90 days later: not within the horizon.
        cross_at = cross_range[1] + rng.uniform(45, 90) * DAY
        wear = Wear(
            baseline,
            THRESHOLD,
            noise,
            start=cross_range[0] - 30 * DAY,
            cross_at=cross_at,
            shape="linear",
            **common,
        )
    planted = Planted(wear, kind)
    if kind == "shifted":
        planted.shift = 0.15 * (THRESHOLD - baseline)
        planted.shift_at = cross_range[0] - rng.uniform(0, 10) * DAY
    if kind == "transient":
        planted.bump = 0.3 * (THRESHOLD - baseline)
        planted.bump_at = rng.uniform(cross_range[0] - 3 * DAY, cross_range[1] - 2 * DAY)
    return planted


# --- Part 1: detection over time ----------------------------------------------------------------


def detection(seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = 1_800_000_000.0 - 1_800_000_000.0 % 3600
    end = start + DETECT_DAYS * DAY
    fleet = [plant(rng, True, n, (start + 10 * DAY, end)) for n in range(DETECT_DEGRADING)] + [
        plant(rng, False, n, (start + 10 * DAY, end)) for n in range(DETECT_HEALTHY)
    ]
    log(
        f"Part 1: {DETECT_DEGRADING} wearing devices ({', '.join(SHAPES)}) among "
        f"{DETECT_HEALTHY} healthy ones ({', '.join(HEALTHY_KINDS)}), {DETECT_DAYS} days of "
        "1-minute readings..."
    )
    started = time.perf_counter()
    hourly = [hourly_from_minutes(p.minutes(start, DETECT_DAYS, rng)[None, :]) for p in fleet]
    mean = np.vstack([h[0] for h in hourly])
    std = np.vstack([h[1] for h in hourly])
    count = np.vstack([h[2] for h in hourly])
    readings = len(fleet) * DETECT_DAYS * 1440
    log(f"  generated {readings:,} readings in {time.perf_counter() - started:.0f} s")

    params = Parameters()
    indicator = WearIndicator(1, "vibration", THRESHOLD)
    crossing = np.array([p.wear.cross_at for p in fleet])
    first_flag = np.full(len(fleet), np.inf)
    predicted_at_flag = np.full(len(fleet), np.nan)
    errors_before: dict[int, dict[int, float]] = {7: {}, 3: {}, 1: {}}
    window = 7 * 24
    scorings = 0
    started = time.perf_counter()
    for end_hour in range(window, DETECT_DAYS * 24 + 1, SCORE_EVERY_HOURS):
        now = start + end_hour * 3600
        columns = slice(end_hour - window, end_hour)
        series = HourlySeries(
            np.arange(len(fleet)),
            datetime.fromtimestamp(start + (end_hour - window) * 3600, UTC),
            mean[:, columns],
            std[:, columns],
            count[:, columns],
        )
        scored = score_device_type([(indicator, series)], params)[0]
        scorings += 1
        predicted = now + scored.fit.days_to_cross * DAY
        new = scored.at_risk & ~np.isfinite(first_flag) & (now < crossing)
        first_flag[new] = now
        predicted_at_flag[new] = predicted[new]
        for days_before, errors in errors_before.items():
            # The scoring closest after "days_before days before the crossing".
            due = (crossing - now <= days_before * DAY) & (
                crossing - now > days_before * DAY - SCORE_EVERY_HOURS * 3600
            )
            for row in np.flatnonzero(due):
                errors[row] = abs(predicted[row] - crossing[row]) / DAY
    log(f"  {scorings} scorings of {len(fleet)} devices in {time.perf_counter() - started:.1f} s")

    degrading = np.array([p.degrading for p in fleet])
    kinds = np.array([p.kind for p in fleet])
    flagged_ever = np.isfinite(first_flag)
    lead_hours = np.full(len(fleet), -np.inf)
    lead_hours[flagged_ever] = (crossing[flagged_ever] - first_flag[flagged_ever]) / 3600
    early = degrading & (lead_hours >= 24)
    log("")
    log(
        f"  flagged >= 24 h before crossing: {early.sum()}/{degrading.sum()} = "
        f"{early.sum() / degrading.sum():.1%} (target >= 90 %)"
    )
    for shape in SHAPES:
        rows = kinds == shape
        flagged = flagged_ever[rows]
        median_lead = np.median(lead_hours[rows][flagged]) / 24 if flagged.any() else math.nan
        log(
            f"    {shape:<13} {early[rows].sum():>3}/{rows.sum():<3} = {early[rows].mean():6.1%}"
            f"   median lead {median_lead:4.1f} days"
        )
    healthy = ~degrading
    false = healthy & np.isfinite(first_flag)
    log(
        f"  false positives (healthy devices ever at risk, {scorings} scorings): "
        f"{false.sum()}/{healthy.sum()} = {false.sum() / healthy.sum():.1%} (target <= 5 %)"
    )
    for kind in HEALTHY_KINDS:
        rows = kinds == kind
        log(f"    {kind:<13} {false[rows].sum():>3}/{rows.sum()}")
    caught = degrading & flagged_ever
    at_flag = np.abs(predicted_at_flag - crossing)[caught] / DAY
    log("  error of the predicted date (median |predicted - true crossing|, days):")
    log(
        f"    at the first flag   {np.median(at_flag):5.2f}   "
        f"(median lead {np.median(lead_hours[caught]) / 24:.1f} days)"
    )
    for days_before, errors in errors_before.items():
        values = list(errors.values())
        by_shape = "  ".join(
            f"{shape} {statistics.median([e for r, e in errors.items() if kinds[r] == shape]):.2f}"
            for shape in SHAPES
            if any(kinds[r] == shape for r in errors)
        )
        log(
            f"    {days_before} day{'s' if days_before > 1 else ' '} before      "
            f"{statistics.median(values):5.2f}   ({by_shape})"
        )


# --- Part 2: the database -----------------------------------------------------------------------


def setup_database() -> None:

    fresh_database(DATABASE)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "iotfleet.settings",
            "DATABASE_URL": database_url(DATABASE),
            "DEBUG": "false",
            "MQTT_DYNSEC_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    # Live pushes go nowhere: no dashboards watch the bench, and no one else's Redis hears it.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    call_command("migrate", verbosity=0, interactive=False)


def database(seed: int) -> None:
    log("")
    log(f"Part 2: {DB_DEVICES:,} devices x 7 days of 1-minute readings in database {DATABASE}")
    started = time.perf_counter()
    setup_database()
    from django.db import connection

    from devices.models import Tenant
    from devices.services import DeviceSpec, create_devices
    from maintenance.models import MaintenancePrediction
    from maintenance.services import score_fleet, window_end
    from tests.factories import make_pump_type

    tenant = Tenant.objects.create(name="Bench", slug="bench")
    pump, vibration = make_pump_type(tenant, THRESHOLD)
    keys = [f"bench-pump-{n:04d}" for n in range(DB_DEVICES)]
    devices = create_devices(tenant, [DeviceSpec(key=k, name=k, device_type=pump) for k in keys])
    device_ids = [credential.device.pk for credential in devices]
    log(f"  migrated and created the devices in {time.perf_counter() - started:.0f} s")

    now = datetime.now(UTC)
    end = window_end(now).timestamp()
    start = end - 7 * DAY
    rng = np.random.default_rng(seed + 1)
    degrading_count = int(DB_DEVICES * DB_DEGRADING_SHARE)
    fleet = [
        plant(rng, n < degrading_count, n, (end + 1.5 * DAY, end + 12 * DAY))
        for n in range(DB_DEVICES)
    ]
    times = start + 60.0 * np.arange(7 * 1440)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(COPY_READINGS) as copy:
            copy.write(COPY_HEADER)
            for number, (device_id, planted) in enumerate(zip(device_ids, fleet, strict=True)):
                values = planted.minutes(start, 7, rng)
                copy.write(copy_rows(times, device_id, vibration.pk, values))
                if (number + 1) % 100 == 0:
                    elapsed = time.perf_counter() - started
                    log(f"  loaded {(number + 1) * len(times):>12,} rows ({elapsed:.0f} s)")
            copy.write(COPY_TRAILER)
        raw.commit()
        cursor.execute("ANALYZE telemetry_reading")
        cursor.execute("SELECT count(*) FROM telemetry_reading")
        rows = cursor.fetchone()[0]
    log(f"  {rows:,} rows loaded with COPY and analysed in {time.perf_counter() - started:.0f} s")

    def read_window() -> tuple[float, int]:
        began = time.perf_counter()
        with connection.cursor() as cursor:
            buffer = bytearray()
            with cursor.connection.cursor().copy(
                "COPY (SELECT time, device_id, value FROM telemetry_reading WHERE metric_id = %s "
                "AND time >= to_timestamp(%s) AND time < to_timestamp(%s)) "
                "TO STDOUT (FORMAT BINARY)",
                [vibration.pk, start, end],
            ) as copy:
                for block in copy:
                    buffer += block
        body = np.frombuffer(bytes(buffer[19:-2]), dtype=READ_ROW)
        assert (body["fields"] == 3).all()
        readings = (
            body["time"].astype(np.int64),
            body["device"].astype(np.int64),
            body["value"].astype(float),
        )
        return time.perf_counter() - began, len(readings[0])

    results = []
    for attempt in (1, 2):
        read_seconds, read_rows = read_window()
        began = time.perf_counter()
        fleet_score = score_fleet(now)
        score_seconds = time.perf_counter() - began
        results.append((read_seconds, read_rows, score_seconds, fleet_score.types[0]))
        log(
            f"  run {attempt}: read {read_rows:,} readings in {read_seconds:5.1f} s;"
            f" scored {fleet_score.scored:,} devices in {score_seconds:5.1f} s"
        )
    log("")
    log("  time (s)                     run 1    run 2")
    log(f"  read the raw window         {results[0][0]:6.1f}   {results[1][0]:6.1f}")
    log(
        f"  score the fleet             {results[0][2]:6.1f}   {results[1][2]:6.1f}   (target < 60)"
    )
    for label, attr in (
        ("    date_bin query", "seconds_query"),
        ("    pandas + model", "seconds_model"),
        ("    store + alerts", "seconds_store"),
    ):
        first, second = getattr(results[0][3], attr), getattr(results[1][3], attr)
        log(f"  {label:<27} {first:6.1f}   {second:6.1f}")
    ratios = [result[2] / result[0] for result in results]
    log(f"  score / read                {ratios[0]:6.2f}   {ratios[1]:6.2f}")

    predictions = {p.device_id: p for p in MaintenancePrediction.objects.filter(metric=vibration)}
    flagged = np.array([predictions[d].at_risk for d in device_ids])
    degrading = np.array([p.degrading for p in fleet])
    log("")
    log(
        f"  one scoring of this fleet: {flagged[degrading].sum()}/{degrading.sum()} wearing "
        f"devices at risk (crossing 1.5-12 days ahead), "
        f"{flagged[~degrading].sum()}/{(~degrading).sum()} healthy ones"
    )
    errors = [
        abs(predictions[d].predicted_at.timestamp() - p.wear.cross_at) / DAY
        for d, p in zip(device_ids, fleet, strict=True)
        if p.degrading and predictions[d].at_risk and predictions[d].predicted_at
    ]
    if errors:
        log(f"  median date error of those at risk: {statistics.median(errors):.2f} days")


READ_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("device_len", ">i4"),
        ("device", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--skip-database", action="store_true", help="Part 1 only.")
    parser.add_argument("--skip-detection", action="store_true", help="Part 2 only.")
    args = parser.parse_args()
    log(f"bench/maintenance.py, seed {args.seed}, {os.cpu_count()} CPUs")
    if not args.skip_detection:
        detection(args.seed)
    if not args.skip_database:
        database(args.seed)


if __name__ == "__main__":
    main()
