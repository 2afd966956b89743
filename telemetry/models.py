"""Readings, the latest value per device and metric, rejected messages and ingest health.

The readings table itself is created by telemetry/storage.py (a TimescaleDB hypertable or a
natively range-partitioned table, whichever the server supports), so `Reading` is unmanaged; the
schema and the queries are the same on both.
"""

from __future__ import annotations

from django.db import models

from devices.models import Device, Metric, Tenant, TenantQuerySet


class ReadingQuerySet(TenantQuerySet):
    tenant_lookup = "device__tenant"


class Reading(models.Model):
    """One value of one metric of one device at one time; (device, metric, time) is unique, which
    is what makes a redelivered batch store nothing twice."""

    pk = models.CompositePrimaryKey("device", "metric", "time")
    time = models.DateTimeField()
    # No database foreign keys: a partitioned table of millions of rows should not be scanned
    # when a device is deleted; retention drops orphaned readings with their partition.
    device = models.ForeignKey(
        Device, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    metric = models.ForeignKey(
        Metric, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    value = models.FloatField()
    flagged = models.BooleanField(
        default=False, help_text="Outside the metric's valid range, kept because its type flags."
    )

    objects = ReadingQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "telemetry_reading"

    def __str__(self) -> str:
        return f"{self.device_id}/{self.metric_id}@{self.time:%Y-%m-%d %H:%M:%S}={self.value}"


class LatestReading(models.Model):
    """The newest value per device and metric, kept current by ingest so the fleet view never
    scans the history."""

    pk = models.CompositePrimaryKey("device", "metric")
    device = models.ForeignKey(
        Device, on_delete=models.DO_NOTHING, db_constraint=False, related_name="latest_readings"
    )
    metric = models.ForeignKey(
        Metric, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    time = models.DateTimeField()
    value = models.FloatField()
    flagged = models.BooleanField(default=False)

    objects = ReadingQuerySet.as_manager()

    class Meta:
        db_table = "telemetry_latestreading"

    def __str__(self) -> str:
        return f"{self.metric.name}={self.value} at {self.time:%Y-%m-%d %H:%M:%S}"


class RejectionQuerySet(TenantQuerySet):
    pass


class RejectedMessage(models.Model):
    """A message (or the part of it) that was not stored, and why. Kept for the operator; the
    messages around it are stored as usual."""

    # Null when the topic named no known device: only superusers see those.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, null=True, blank=True, related_name="rejections"
    )
    device_key = models.CharField(max_length=200, blank=True)
    topic = models.CharField(max_length=300)
    reason = models.TextField()
    payload_excerpt = models.TextField(blank=True)
    payload_size = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(db_index=True)

    objects = RejectionQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["device", "-received_at"], name="rejection_device_time")]

    def __str__(self) -> str:
        return f"{self.topic}: {self.reason}"


class IngestStateQuerySet(TenantQuerySet):
    tenant_lookup = "device__tenant"


class DeviceIngestState(models.Model):
    """What ingest knows about one device's stream: rejected messages, and the sequence numbers
    (`seq`) that reveal messages lost upstream.

    Since the last reset, the device sent seq_base..seq_high and we stored seq_received distinct
    messages of them, so `seq_high - seq_base + 1 - seq_received` went missing; the count does not
    depend on the order batches arrive in, and a redelivery (stored nothing new) is not counted.
    """

    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, primary_key=True, related_name="ingest_state"
    )
    rejected_messages = models.PositiveBigIntegerField(default=0)
    last_rejected_at = models.DateTimeField(null=True, blank=True)
    seq_base = models.BigIntegerField(null=True, blank=True)
    seq_high = models.BigIntegerField(null=True, blank=True)
    seq_high_time = models.DateTimeField(null=True, blank=True)
    seq_received = models.BigIntegerField(default=0)
    lost_before_reset = models.PositiveBigIntegerField(
        default=0, help_text="Messages lost in sequence windows closed by a reset."
    )
    seq_resets = models.PositiveIntegerField(default=0)

    objects = IngestStateQuerySet.as_manager()

    class Meta:
        verbose_name = "device ingest state"

    def __str__(self) -> str:
        return f"ingest state of {self.device_id}"

    @property
    def tenant_id(self) -> int:
        return self.device.tenant_id

    @property
    def missing_in_window(self) -> int:
        if self.seq_base is None or self.seq_high is None:
            return 0
        return max(0, self.seq_high - self.seq_base + 1 - self.seq_received)

    @property
    def messages_lost(self) -> int:
        """Messages the device numbered but the platform never received."""
        return self.lost_before_reset + self.missing_in_window


class IngestEventKind(models.TextChoices):
    GAP = "gap", "Messages lost"
    RESET = "reset", "Sequence reset (reboot)"


class IngestEventQuerySet(TenantQuerySet):
    tenant_lookup = "device__tenant"


class IngestEvent(models.Model):
    """Something an operator should know about a device's stream: a gap in its sequence numbers
    (messages lost between the device and us) or a reset (it rebooted)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="ingest_events")
    kind = models.CharField(max_length=8, choices=IngestEventKind.choices)
    time = models.DateTimeField(db_index=True)
    detail = models.CharField(max_length=300)
    count = models.PositiveIntegerField(default=0, help_text="Messages lost, for a gap.")

    objects = IngestEventQuerySet.as_manager()

    class Meta:
        ordering = ["-time", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.detail}"

    @property
    def tenant_id(self) -> int:
        return self.device.tenant_id
