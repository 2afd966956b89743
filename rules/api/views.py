"""Viewsets of the rules API: parse, authorize, call `rules.services` or the back-test, respond."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from devices.api.filters import TenantFilterSet
from devices.api.tenancy import TENANT_HEADER_PARAMETER, TenantScopedViewSet, request_tenant
from devices.models import Role
from rules.backtest import backtest
from rules.models import Rule, RuleKind, Severity
from rules.services import RuleInvalid, delete_rule, save_rule

from .serializers import (
    BacktestDaysSerializer,
    BacktestResultSerializer,
    RuleBacktestSerializer,
    RuleRefused,
    RuleSerializer,
)


class RuleFilter(TenantFilterSet):
    kind = filters.ChoiceFilter(choices=RuleKind.choices)
    severity = filters.ChoiceFilter(choices=Severity.choices)
    is_enabled = filters.BooleanFilter()
    device_type = filters.NumberFilter(field_name="device_type", help_text="Device type id.")
    group = filters.NumberFilter(field_name="group", help_text="Group id.")
    device = filters.CharFilter(field_name="device__key", help_text="Device key.")

    class Meta:
        model = Rule
        fields = ["tenant", "kind", "severity", "is_enabled", "device_type", "group", "device"]


@extend_schema_view(create=extend_schema(parameters=[TENANT_HEADER_PARAMETER]))
class RuleViewSet(TenantScopedViewSet):
    """Alert rules of your tenants; operators write them, every member reads them.

    A condition that does not parse, names a metric the device type lacks or does not fit the
    kind answers 400: {"condition": ["... (at character 13)"], "position": 12}. Back-test a rule
    before saving it with POST /rules/backtest/, or a saved one with POST /rules/{id}/backtest/.
    """

    queryset = Rule.objects.select_related(
        "tenant", "device_type", "group", "device", "created_by"
    ).prefetch_related("rule_channels", "channels")
    serializer_class = RuleSerializer
    filterset_class = RuleFilter
    search_fields = ["name", "description", "condition", "tag"]
    ordering_fields = ["name", "kind", "severity", "created_at", "updated_at"]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if self.action == "backtest_draft":
            # A preview saves nothing, so any member may run one in their tenant.
            self.target_tenant = request_tenant(request, Role.VIEWER)

    def perform_create(self, serializer: RuleSerializer) -> None:
        self._save(serializer)

    def perform_update(self, serializer: RuleSerializer) -> None:
        self._save(serializer)

    def perform_destroy(self, instance: Rule) -> None:
        delete_rule(instance)

    def _save(self, serializer: RuleSerializer) -> None:
        rule = serializer.rule_from(serializer.validated_data)
        try:
            serializer.instance = save_rule(
                rule, serializer.validated_data.get("channels"), self.request.user
            )
        except RuleInvalid as error:
            raise RuleRefused(error.message_dict, error.position) from error
        # Drop the prefetched channel list so the response shows the one just saved.
        getattr(serializer.instance, "_prefetched_objects_cache", {}).clear()

    @extend_schema(
        request=RuleBacktestSerializer,
        responses=BacktestResultSerializer,
        parameters=[TENANT_HEADER_PARAMETER],
        summary="Back-test a rule before saving it",
        operation_id="rules_backtest_unsaved",
    )
    @action(detail=False, methods=["post"], url_path="backtest")
    def backtest_draft(self, request: Request) -> Response:
        """How many alerts a rule (the body of a create, plus `days`) would have raised on the
        stored readings of the last `days` days, on which devices and which days. Nothing is
        saved."""
        serializer = RuleBacktestSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        rule = serializer.rule_from(serializer.validated_data)
        return Response(backtest(rule, serializer.validated_data["days"]).as_dict())

    @extend_schema(
        request=BacktestDaysSerializer,
        responses=BacktestResultSerializer,
        summary="Back-test a saved rule",
        operation_id="rules_backtest_saved",
    )
    @action(detail=True, methods=["post"], url_path="backtest")
    def backtest(self, request: Request, pk: str) -> Response:
        """How many alerts this rule would have raised over the last `days` days of stored
        readings. Nothing changes, so any member of the rule's tenant may ask."""
        rule = self._readable_rule(pk)
        days = BacktestDaysSerializer(data=request.data)
        days.is_valid(raise_exception=True)
        return Response(backtest(rule, days.validated_data["days"]).as_dict())

    def _readable_rule(self, pk: str) -> Rule:
        # get_object() would demand the operator role of a POST; reading is enough here.
        queryset: QuerySet = self.get_queryset()
        try:
            return queryset.get(pk=int(pk))
        except (ValueError, Rule.DoesNotExist) as missing:
            raise Http404("No rule with this id in your tenants.") from missing
