"""Room on every page for the rows ingest rewrites each batch.

Every batch rewrites its devices' rows in telemetry_latestreading (one per metric) and
telemetry_deviceingeststate. On full pages (fillfactor 100) the new version of a row seldom fits
beside the old one, so nearly every update wrote new index entries (three on the latest values)
and left a dead row for autovacuum: after a few minutes of a 1,000-device fleet the 3,000 latest
values took 60 MB, and the latest-value upsert cost PostgreSQL 42 ms of CPU per 1,000-message
batch. With four fifths of each page free, ~98 % of the updates stay on their page (HOT: no index
entry, the old version pruned on a later visit): 7 ms, and the deviceingeststate update 8 → 3 ms
(docs/performance.md). The tables hold one row per device (and metric), so the room costs little.
"""

from django.db import migrations

TABLES = ("telemetry_latestreading", "telemetry_deviceingeststate")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0002_readings_table")]

    operations = [
        migrations.RunSQL(
            [f"ALTER TABLE {table} SET (fillfactor = 20)" for table in TABLES],
            [f"ALTER TABLE {table} RESET (fillfactor)" for table in TABLES],
        )
    ]
