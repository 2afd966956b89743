from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0002_device_type_out_of_range'),
    ]

    operations = [
        migrations.AddField(
            model_name='metric',
            name='failure_direction',
            field=models.CharField(blank=True, choices=[('rising', 'Fails when rising to the threshold'), ('falling', 'Fails when falling to the threshold')], default='rising', help_text='Wear indicator: whether the value rises or falls towards the threshold.', max_length=8),
        ),
        migrations.AddField(
            model_name='metric',
            name='failure_threshold',
            field=models.FloatField(blank=True, help_text='Wear indicator: the value at which the device is expected to fail.', null=True),
        ),
        migrations.AddField(
            model_name='metric',
            name='is_wear_indicator',
            field=models.BooleanField(default=False, help_text="Predictive maintenance watches this metric's trend towards its failure threshold."),
        ),
    ]
