"""Notification channels in the API: operators create, change, test and delete them.

The webhook secret is write-only: a response only says whether one is set.
"""

from __future__ import annotations

from typing import Any

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from alerts.models import ChannelKind, NotificationChannel
from alerts.notifications import send_test_notification
from alerts.transports import TransportError, channel_problems
from devices.api.filters import TenantFilterSet
from devices.api.serializers import JSONObjectField, TenantOwnedSerializer
from devices.api.tenancy import TENANT_HEADER_PARAMETER, TenantScopedViewSet


class NotificationChannelSerializer(TenantOwnedSerializer):
    """Where alerts are sent: email recipients, a signed webhook, or a command to the device."""

    webhook_secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Webhook: the key of the X-IoTFleet-Signature HMAC-SHA256 header (at least 16 "
        "characters). Write-only; leave it out of an update to keep the current one.",
    )
    has_webhook_secret = serializers.SerializerMethodField(
        help_text="Whether a webhook secret is set (it is never shown)."
    )
    command_params = JSONObjectField(
        required=False, help_text='MQTT command: its parameters, a JSON object, e.g. {"level": 2}.'
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "id",
            "tenant",
            "name",
            "kind",
            "email_to",
            "webhook_url",
            "webhook_secret",
            "has_webhook_secret",
            "command",
            "command_params",
            "max_per_hour",
            "for_offline",
            "for_maintenance",
            "is_enabled",
            "created_at",
        ]
        extra_kwargs = {"max_per_hour": {"min_value": 1}}

    def get_has_webhook_secret(self, channel: NotificationChannel) -> bool:
        return bool(channel.webhook_secret)

    def validate(self, attrs: dict) -> dict:
        self.check_unique_name(NotificationChannel, attrs.get("name"))
        stored = self.instance if isinstance(self.instance, NotificationChannel) else None
        merged = {
            field: attrs.get(field, getattr(stored, field, None))
            for field in (
                "kind",
                "email_to",
                "webhook_url",
                "webhook_secret",
                "command",
                "command_params",
            )
        }
        has_secret = bool(stored and stored.webhook_secret)
        problems = channel_problems(merged, has_secret=has_secret)
        if problems:
            raise serializers.ValidationError(problems)
        if "webhook_secret" in attrs and not attrs["webhook_secret"]:
            attrs.pop("webhook_secret")  # blank keeps the stored secret
        return attrs


class NotificationChannelFilter(TenantFilterSet):
    kind = filters.ChoiceFilter(choices=ChannelKind.choices)
    is_enabled = filters.BooleanFilter()
    for_offline = filters.BooleanFilter()
    for_maintenance = filters.BooleanFilter()

    class Meta:
        model = NotificationChannel
        fields = ["tenant", "kind", "is_enabled", "for_offline", "for_maintenance"]


@extend_schema_view(create=extend_schema(parameters=[TENANT_HEADER_PARAMETER]))
class NotificationChannelViewSet(TenantScopedViewSet):
    """Notification channels of your tenants; rules notify them in order, escalating."""

    queryset = NotificationChannel.objects.select_related("tenant")
    serializer_class = NotificationChannelSerializer
    filterset_class = NotificationChannelFilter
    search_fields = ["name", "email_to", "webhook_url", "command"]
    ordering_fields = ["name", "kind", "created_at"]

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer("ChannelTestSent", {"detail": serializers.CharField()}),
            502: inline_serializer("ChannelTestFailed", {"detail": serializers.CharField()}),
        },
    )
    @action(detail=True, methods=["post"])
    def test(self, request: Request, **kwargs: Any) -> Response:
        """Send a made-up alert through the channel now and say whether it arrived."""
        channel = self.get_object()
        try:
            send_test_notification(channel)
        except TransportError as error:
            body = {"detail": f"The test failed: {error.message}"}
            return Response(body, status=status.HTTP_502_BAD_GATEWAY)
        return Response({"detail": f"Test notification sent through “{channel.name}”."})


router = SimpleRouter()
router.register(
    "notification-channels", NotificationChannelViewSet, basename="notification-channel"
)
