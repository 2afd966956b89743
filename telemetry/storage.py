"""Where readings are stored: one narrow table, `telemetry_reading`, in one of two layouts.

- TimescaleDB, when the server has the extension: a hypertable with compression and retention
  policies (the SQL is in telemetry/timescale.py and nowhere else).
- Plain PostgreSQL: native range partitioning by time, one partition per UTC day, created ahead
  and dropped at retention by `maintain_partitions()` (a beat task), with a DEFAULT partition so a
  reading for a day that has no partition yet is still stored, never lost; upkeep moves such rows
  into their day's partition once it exists.

Both have the same columns and the unique index on (device_id, metric_id, time), so the same
INSERT ... ON CONFLICT and the same queries (`date_bin`) work on either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from telemetry import timescale

log = logging.getLogger(__name__)

TABLE = "telemetry_reading"
DEFAULT_PARTITION = f"{TABLE}_default"
PARTITIONED = "partitioned"
TIMESCALEDB = "timescaledb"
CHOICES = ("auto", PARTITIONED, TIMESCALEDB)

COLUMNS = """
    time timestamptz NOT NULL,
    device_id bigint NOT NULL,
    metric_id integer NOT NULL,
    value double precision NOT NULL,
    flagged boolean NOT NULL DEFAULT false
"""


def choose_layout(requested: str, timescaledb_available: bool) -> str:
    """The layout for a `TELEMETRY_STORAGE` setting on a server that has TimescaleDB or not."""
    if requested not in CHOICES:
        raise ImproperlyConfigured(
            f"TELEMETRY_STORAGE={requested!r}: use one of {', '.join(CHOICES)}."
        )
    if requested == TIMESCALEDB and not timescaledb_available:
        raise ImproperlyConfigured(
            "TELEMETRY_STORAGE=timescaledb, but this PostgreSQL server cannot load the "
            "timescaledb extension (install it and add it to shared_preload_libraries), or set "
            "TELEMETRY_STORAGE=auto."
        )
    if requested == "auto":
        return TIMESCALEDB if timescaledb_available else PARTITIONED
    return requested


def current_layout() -> str:
    """The layout of the existing readings table (what the migration chose)."""
    with connection.cursor() as cursor:
        if timescale.is_hypertable(cursor, TABLE):
            return TIMESCALEDB
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        if cursor.fetchone():
            return PARTITIONED
    raise ImproperlyConfigured(f"{TABLE} is neither a hypertable nor partitioned: migrate first.")


def create_readings_table(schema_editor) -> str:
    """Create the readings table in the layout this server supports; used by the migration."""
    with schema_editor.connection.cursor() as cursor:
        layout = choose_layout(settings.TELEMETRY_STORAGE, timescale.available(cursor))
        if layout == TIMESCALEDB:
            cursor.execute(f"CREATE TABLE {TABLE} ({COLUMNS})")
            cursor.execute(
                f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} (device_id, metric_id, time)"
            )
            timescale.make_hypertable(cursor, TABLE, settings.TELEMETRY_RETENTION_DAYS)
        else:
            cursor.execute(f"CREATE TABLE {TABLE} ({COLUMNS}) PARTITION BY RANGE (time)")
            cursor.execute(
                f"CREATE UNIQUE INDEX {TABLE}_key ON {TABLE} (device_id, metric_id, time)"
            )
            cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
    log.info("telemetry readings: %s", layout)
    return layout


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


@dataclass
class Upkeep:
    layout: str
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_from_default: int = 0


def _partitions(cursor) -> dict[str, date]:
    cursor.execute(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = %s::regclass
        """,
        [TABLE],
    )
    days = {}
    prefix = f"{TABLE}_p"
    for (name,) in cursor.fetchall():
        if name.startswith(prefix):
            days[name] = datetime.strptime(name[len(prefix) :], "%Y%m%d").date()
    return days


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _create_partition(cursor, day: date) -> int:
    """Create the day's partition; rows already in the default partition for that day move in.
    Returns how many moved."""
    name, (start, end) = partition_name(day), _day_bounds(day)
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)")
    cursor.execute(
        f"""
        WITH moved AS (
            DELETE FROM {DEFAULT_PARTITION} WHERE time >= %s AND time < %s RETURNING *
        )
        INSERT INTO {name} SELECT * FROM moved
        """,  # noqa: S608 (table names are constants and dates, never input)
        [start, end],
    )
    moved = cursor.rowcount
    cursor.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, end]
    )
    return max(moved, 0)


def maintain_partitions(today: date | None = None) -> Upkeep:
    """Partitions from the oldest day a reading may have (TELEMETRY_MAX_AGE) to
    TELEMETRY_PARTITIONS_AHEAD_DAYS ahead exist; those wholly past retention are dropped; readings
    that landed in the default partition move to their day's partition. Idempotent."""
    layout = current_layout()
    upkeep = Upkeep(layout=layout)
    if layout != PARTITIONED:
        return upkeep  # TimescaleDB's own policies create chunks and enforce retention
    today = today or datetime.now(UTC).date()
    horizon = today - timedelta(days=settings.TELEMETRY_RETENTION_DAYS)
    first = max(horizon, today - timedelta(days=settings.TELEMETRY_MAX_AGE.days + 1))
    last = today + timedelta(days=settings.TELEMETRY_PARTITIONS_AHEAD_DAYS)
    with transaction.atomic(), connection.cursor() as cursor:
        # One upkeep at a time (two beat ticks, or a migrate running beside a beat task).
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
        existing = _partitions(cursor)
        wanted = {first + timedelta(days=n) for n in range((last - first).days + 1)}
        cursor.execute(f"SELECT DISTINCT (time AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION}")  # noqa: S608
        wanted |= {day for (day,) in cursor.fetchall() if day >= horizon}
        for day in sorted(wanted - set(existing.values())):
            upkeep.moved_from_default += _create_partition(cursor, day)
            upkeep.created.append(partition_name(day))
        for name, day in sorted(existing.items(), key=lambda item: item[1]):
            if day < horizon:
                cursor.execute(f"DROP TABLE {name}")
                upkeep.dropped.append(name)
    if upkeep.created or upkeep.dropped:
        log.info(
            "telemetry partitions: created %d, dropped %d, moved %d rows out of the default",
            len(upkeep.created),
            len(upkeep.dropped),
            upkeep.moved_from_default,
        )
    return upkeep
