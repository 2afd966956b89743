"""Maintenance predictions in the admin: read-only (the model writes them), worst health first."""

from __future__ import annotations

from django.contrib import admin

from devices.admin.tenancy import ReadOnlyTenantAdmin, TenantScopedFilter
from maintenance.models import MaintenancePrediction


@admin.register(MaintenancePrediction)
class MaintenancePredictionAdmin(ReadOnlyTenantAdmin):
    list_display = [
        "device",
        "metric",
        "health",
        "at_risk",
        "predicted_at",
        "confidence",
        "level",
        "threshold",
        "slope_per_day",
        "anomaly",
        "scored_at",
    ]
    list_filter = [("tenant", TenantScopedFilter), "at_risk", "crossed"]
    list_select_related = ["device", "metric", "tenant"]
    search_fields = ["device__key", "device__name", "metric__name"]
    ordering = ["health"]
