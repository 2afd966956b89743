"""Maintenance predictions in the admin: read-only (the model writes them), worst health first."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from devices.admin.tenancy import TenantScopedAdmin, TenantScopedFilter
from maintenance.models import MaintenancePrediction


@admin.register(MaintenancePrediction)
class MaintenancePredictionAdmin(TenantScopedAdmin):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
