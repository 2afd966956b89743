"""Window statistics move from RuleState.windows (JSON, per rule and device) to DeviceWindows
(binary, one row per device): what the rules kept is carried over, so no statistic restarts."""

import django.db.models.deletion
import numpy as np
from django.db import migrations, models

WIDTH = 7  # floats per term (rules/engine.py)


def move_windows(apps, schema_editor):
    RuleState = apps.get_model("rules", "RuleState")
    DeviceWindows = apps.get_model("rules", "DeviceWindows")
    by_device: dict[int, dict[str, list]] = {}
    for device_id, windows in (
        RuleState.objects.exclude(windows={}).order_by("rule_id").values_list("device_id", "windows")
    ):
        for key, row in (windows or {}).items():
            if isinstance(row, list) and len(row) == WIDTH:
                by_device.setdefault(device_id, {}).setdefault(key, row)
    DeviceWindows.objects.bulk_create(
        DeviceWindows(
            device_id=device_id,
            terms="\n".join(terms),
            stats=np.array(
                [[np.nan if v is None else v for v in row] for row in terms.values()], dtype="<f8"
            ).tobytes(),
        )
        for device_id, terms in by_device.items()
    )


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0004_commands_and_group_desired'),
        ('rules', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeviceWindows',
            fields=[
                ('device', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='rule_windows', serialize=False, to='devices.device')),
                ('terms', models.TextField()),
                ('stats', models.BinaryField()),
            ],
            options={
                'verbose_name': 'device window statistics',
                'verbose_name_plural': 'device window statistics',
            },
        ),
        migrations.RunPython(move_windows, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name='rulestate',
            name='windows',
        ),
        # Rewritten by every batch (the windows of each device, the state of each device where a
        # rule breaks or fires): room on the page keeps the new version beside the old one (a
        # HOT update, no new index entries), as for telemetry's per-device rows.
        migrations.RunSQL(
            [
                "ALTER TABLE rules_devicewindows SET (fillfactor = 30)",
                "ALTER TABLE rules_rulestate SET (fillfactor = 30)",
            ],
            [
                "ALTER TABLE rules_devicewindows RESET (fillfactor)",
                "ALTER TABLE rules_rulestate RESET (fillfactor)",
            ],
        ),
    ]
