"""Device types (with their metrics) and device groups."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from devices.admin.tenancy import (
    TenantScopedAdmin,
    TenantScopedFilter,
    TenantScopedInline,
    count_column,
    count_of,
)
from devices.models import (
    Device,
    DeviceGroup,
    DeviceType,
    Metric,
)

# --- Device types and groups --------------------------------------------------------------------


class MetricInline(TenantScopedInline):
    model = Metric
    fields = [
        "name",
        "unit",
        "min_value",
        "max_value",
        "is_wear_indicator",
        "failure_threshold",
        "failure_direction",
    ]


@admin.register(DeviceType)
class DeviceTypeAdmin(TenantScopedAdmin):
    list_display = ["name", "tenant", "heartbeat_timeout", "metric_count", "device_count"]
    list_filter = [("tenant", TenantScopedFilter)]
    list_select_related = ["tenant"]
    search_fields = ["name", "description"]
    fields = ["tenant", "name", "description", "heartbeat_timeout"]
    inlines = [MetricInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                metric_count=count_of(Metric, "device_type"),
                device_count=count_of(Device, "device_type"),
            )
        )

    metric_count = count_column("metric_count", "Metrics")

    device_count = count_column("device_count", "Devices")


@admin.register(DeviceGroup)
class DeviceGroupAdmin(TenantScopedAdmin):
    list_display = ["name", "tenant", "device_count", "description"]
    list_filter = [("tenant", TenantScopedFilter)]
    list_select_related = ["tenant"]
    search_fields = ["name", "description"]
    fields = ["tenant", "name", "description"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(device_count=Count("devices"))

    device_count = count_column("device_count", "Devices")
