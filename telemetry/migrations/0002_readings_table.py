"""The readings table: a TimescaleDB hypertable or a range-partitioned table (telemetry/storage)."""

from django.db import migrations


def create(apps, schema_editor):
    from telemetry import storage

    storage.create_readings_table(schema_editor)
    storage.maintain_partitions()


def drop(apps, schema_editor):
    schema_editor.execute("DROP TABLE IF EXISTS telemetry_reading CASCADE")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
