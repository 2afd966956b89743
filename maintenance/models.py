"""Maintenance predictions: what the model last said about each wear indicator of each device.

One row per (device, wear metric), replaced at every scoring run (beat: `maintenance.score_fleet`),
with the evidence behind it: the features, the trend, the hourly means the chart draws. A device's
health is the lowest health of its wear indicators.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Min
from django.utils import timezone

from devices.models import Device, Metric, Tenant, TenantQuerySet


class PredictionQuerySet(TenantQuerySet):
    def at_risk(self) -> PredictionQuerySet:
        return self.filter(at_risk=True)

    def worst_first(self) -> PredictionQuerySet:
        return self.order_by("health", "predicted_at", "device__key")

    def device_health(self) -> dict[int, float]:
        """{device id: its health (the lowest of its wear indicators)}."""
        rows = self.order_by().values("device_id").annotate(health=Min("health"))
        return {row["device_id"]: row["health"] for row in rows}


class MaintenancePrediction(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="maintenance_predictions"
    )
    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, related_name="+")
    scored_at = models.DateTimeField(help_text="End of the window the model looked at.")
    window_start = models.DateTimeField()
    health = models.FloatField(help_text="0 (failing) to 100 (as good as its fleet).")
    at_risk = models.BooleanField(
        default=False,
        db_index=True,
        help_text="Crossed the failure threshold, or predicted to within the horizon.",
    )
    crossed = models.BooleanField(default=False, help_text="Already past the threshold.")
    predicted_at = models.DateTimeField(
        null=True, blank=True, help_text="When the trend reaches the failure threshold."
    )
    earliest_at = models.DateTimeField(null=True, blank=True)
    latest_at = models.DateTimeField(
        null=True, blank=True, help_text="End of the 90 % interval (blank: maybe never)."
    )
    confidence = models.FloatField(
        default=0.0, help_text="0-1: 1 - interval width / (2 x time to crossing)."
    )
    threshold = models.FloatField()
    rising = models.BooleanField(default=True)
    level = models.FloatField(help_text="Mean of the last 24 hours.")
    spread = models.FloatField(help_text="Median within-hour standard deviation, last 24 hours.")
    slope_per_day = models.FloatField()
    anomaly = models.FloatField(help_text="IsolationForest anomaly score among the type, 0-1.")
    evidence = models.JSONField(
        default=dict, help_text="Features, trend fit and the hourly means behind the prediction."
    )

    objects = PredictionQuerySet.as_manager()

    class Meta:
        ordering = ["health", "device__key"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "metric"], name="prediction_one_per_device_metric"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "at_risk", "health"], name="prediction_risk")]

    def __str__(self) -> str:
        return f"{self.metric.name} of {self.device.key}: health {self.health:.0f}"

    @property
    def days_left(self) -> float | None:
        if self.predicted_at is None:
            return None
        return max((self.predicted_at - self.scored_at) / timedelta(days=1), 0.0)

    def hourly_points(self) -> list[tuple[datetime, float]]:
        """The hourly means of the window, for the chart (hours without data left out)."""
        start = datetime.fromisoformat(self.evidence.get("start", self.window_start.isoformat()))
        return [
            (start + timedelta(hours=hour), value)
            for hour, value in enumerate(self.evidence.get("hourly_mean", []))
            if value is not None
        ]

    def is_stale(self, now: datetime | None = None) -> bool:
        """Not scored for over a day: the device has stopped sending its wear indicator."""
        return (now or timezone.now()) - self.scored_at > timedelta(days=1)
