"""Alerts in the API: list and filter, read one with its history, acknowledge and resolve.

Alerts are raised by rules and offline detection, never created or edited through the API.
Acknowledge and resolve need the operator role in the alert's tenant; a state that does not
allow the change answers 409 with why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from alerts import services
from alerts.models import Alert, AlertKind, AlertState
from devices.api.filters import TenantFilterSet
from devices.api.tenancy import Conflict, TenantScopedReadOnlyViewSet
from rules.models import Severity

from .serializers import (
    AlertConflictSerializer,
    AlertNoteSerializer,
    AlertSerializer,
)


class AlertFilter(TenantFilterSet):
    state = filters.MultipleChoiceFilter(
        choices=AlertState.choices, help_text="Repeat for several: ?state=open&state=acknowledged."
    )
    severity = filters.MultipleChoiceFilter(choices=Severity.choices)
    kind = filters.ChoiceFilter(choices=AlertKind.choices)
    device = filters.CharFilter(field_name="device__key", help_text="Key of the device.")
    rule = filters.NumberFilter(field_name="rule", help_text="Id of the rule.")
    since = filters.IsoDateTimeFilter(
        field_name="last_triggered_at",
        lookup_expr="gte",
        help_text="Triggered at or after this time (ISO 8601).",
    )
    until = filters.IsoDateTimeFilter(
        field_name="first_triggered_at",
        lookup_expr="lt",
        help_text="First triggered before this time (ISO 8601).",
    )

    class Meta:
        model = Alert
        fields = ["tenant", "state", "severity", "kind", "device", "rule", "since", "until"]


ACTION_SCHEMA = {
    "request": AlertNoteSerializer,
    "responses": {200: AlertSerializer, 409: AlertConflictSerializer},
}


@extend_schema_view(
    list=extend_schema(summary="Alerts of your tenants, latest first"),
    retrieve=extend_schema(summary="One alert with its history"),
)
class AlertViewSet(TenantScopedReadOnlyViewSet):
    queryset = Alert.objects.all()
    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    search_fields = ["title", "device__key"]
    ordering_fields = ["last_triggered_at", "first_triggered_at", "severity", "state", "count"]

    def get_queryset(self) -> QuerySet:
        return (
            super()
            .get_queryset()
            .select_related("tenant", "device", "metric", "rule", "acknowledged_by", "resolved_by")
            .prefetch_related("events__user")
        )

    @extend_schema(summary="Acknowledge an open alert (operator)", **ACTION_SCHEMA)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str) -> Response:
        return self._change(request, services.acknowledge_alert)

    @extend_schema(summary="Resolve an open or acknowledged alert (operator)", **ACTION_SCHEMA)
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str) -> Response:
        return self._change(request, services.resolve_alert)

    def _change(self, request: Request, change: Callable[[Alert, Any, str], Alert]) -> Response:
        alert = self.get_object()  # 404 for another tenant's, 403 for a viewer
        body = AlertNoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            change(alert, request.user, body.validated_data.get("note", ""))
        except services.AlertStateError as error:
            raise Conflict(error.message) from error
        return Response(AlertSerializer(self.get_queryset().get(pk=alert.pk)).data)


router = SimpleRouter()
router.register("alerts", AlertViewSet, basename="alert")
