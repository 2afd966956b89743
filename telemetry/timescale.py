"""All the TimescaleDB-specific SQL, in one place (telemetry/storage.py decides when it runs).

CI runs on plain PostgreSQL; docker-compose runs the timescale/timescaledb image, where this path
makes `telemetry_reading` a hypertable of one-day chunks, compressed after a week (segmented by
device and metric, so a device's history stays cheap to read) and dropped at retention.
"""

from __future__ import annotations

COMPRESS_AFTER_DAYS = 7


def available(cursor) -> bool:
    """Whether the extension is installed (or can be) in this database."""
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if cursor.fetchone():
        return True
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not cursor.fetchone():
        return False
    # Available but not preloaded: CREATE EXTENSION fails, so the server cannot use it.
    cursor.execute("SELECT current_setting('shared_preload_libraries')")
    return "timescaledb" in cursor.fetchone()[0]


def is_hypertable(cursor, table: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if not cursor.fetchone():
        return False
    cursor.execute(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", [table]
    )
    return cursor.fetchone() is not None


def make_hypertable(cursor, table: str, retention_days: int) -> None:
    cursor.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    cursor.execute("SELECT create_hypertable(%s, by_range('time', INTERVAL '1 day'))", [table])
    cursor.execute(
        f"ALTER TABLE {table} SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'device_id, metric_id', "
        "timescaledb.compress_orderby = 'time DESC')"
    )
    cursor.execute(
        "SELECT add_compression_policy(%s, make_interval(days => %s))",
        [table, COMPRESS_AFTER_DAYS],
    )
    cursor.execute(
        "SELECT add_retention_policy(%s, make_interval(days => %s))", [table, retention_days]
    )
