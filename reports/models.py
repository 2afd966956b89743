"""Fleet reports: who receives them per tenant, and the reports made (stored to list, download
and send again). Reports are made by reports/services.py, on beat's schedule (django-celery-beat
rows of the task `reports.send_fleet_reports`) or on demand from the admin."""

from __future__ import annotations

from django.db import models

from devices.models import Tenant, TenantQuerySet


class ReportRecipient(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="report_recipients")
    email = models.EmailField()
    name = models.CharField(max_length=200, blank=True)
    is_enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "email"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "email"], name="report_recipient_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class ReportTrigger(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    ON_DEMAND = "on_demand", "On demand"


class FleetReport(models.Model):
    """One tenant's report over [period_start, period_end): the figures (JSON), the charts (PNG,
    base64 by name), the HTML page with the charts embedded, and the CSV of every figure."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="fleet_reports")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    generated_at = models.DateTimeField()
    trigger = models.CharField(
        max_length=12, choices=ReportTrigger.choices, default=ReportTrigger.SCHEDULED
    )
    figures = models.JSONField(default=dict)
    charts = models.JSONField(default=dict, help_text="PNG images, base64, by chart name.")
    html = models.TextField()
    csv = models.TextField()
    emailed_to = models.TextField(blank=True, help_text="Recipients it was sent to.")
    emailed_at = models.DateTimeField(null=True, blank=True)
    email_error = models.TextField(blank=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-generated_at"]
        indexes = [models.Index(fields=["tenant", "-generated_at"], name="report_tenant_time")]

    def __str__(self) -> str:
        return f"Fleet report of {self.tenant} for {self.period_label}"

    @property
    def period_label(self) -> str:
        start, end = self.period_start, self.period_end
        return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"

    def filename(self, extension: str) -> str:
        return f"fleet-report-{self.tenant.slug}-{self.period_end:%Y%m%d-%H%M}.{extension}"
