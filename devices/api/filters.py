"""Query-string filters of the devices API; the rows are already scoped to the user's tenants."""

from django.db.models import QuerySet
from django_filters import rest_framework as filters

from devices.models import Command, CommandState, Device, DeviceGroup, DeviceStatus, DeviceType


class TenantFilterSet(filters.FilterSet):
    tenant = filters.CharFilter(
        field_name="tenant__slug", help_text="Only objects of the tenant with this slug."
    )


class DeviceTypeFilter(TenantFilterSet):
    class Meta:
        model = DeviceType
        fields = ["tenant"]


class DeviceGroupFilter(TenantFilterSet):
    class Meta:
        model = DeviceGroup
        fields = ["tenant"]


class DeviceFilter(TenantFilterSet):
    status = filters.ChoiceFilter(choices=DeviceStatus.choices)
    device_type = filters.NumberFilter(field_name="device_type", help_text="Device type id.")
    group = filters.NumberFilter(
        field_name="groups", help_text="Devices in the group with this id."
    )
    tag = filters.CharFilter(method="filter_tag", help_text="Devices carrying this tag.")
    firmware_version = filters.CharFilter()
    is_enabled = filters.BooleanFilter()
    last_seen_before = filters.IsoDateTimeFilter(
        field_name="last_seen", lookup_expr="lt", help_text="Last heard before (ISO 8601)."
    )
    last_seen_after = filters.IsoDateTimeFilter(
        field_name="last_seen", lookup_expr="gte", help_text="Last heard at or after (ISO 8601)."
    )

    class Meta:
        model = Device
        fields = [
            "tenant",
            "status",
            "device_type",
            "group",
            "tag",
            "firmware_version",
            "is_enabled",
            "last_seen_before",
            "last_seen_after",
        ]

    def filter_tag(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(tags__contains=[value])


class CommandFilter(TenantFilterSet):
    device = filters.CharFilter(field_name="device__key", help_text="The device's key.")
    state = filters.MultipleChoiceFilter(choices=CommandState.choices)
    name = filters.CharFilter()

    class Meta:
        model = Command
        fields = ["tenant", "device", "state", "name"]
