"""Viewsets of the devices API: parse, authorize, call a service, respond."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, ProtectedError, QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from devices.broker_accounts import BrokerAccountError
from devices.models import Command, Device, DeviceGroup, DeviceShadow, DeviceType, Tenant
from devices.services import (
    CommandRefused,
    ShadowVersionConflict,
    create_device,
    delete_devices,
    rotate_credentials,
    send_command,
    update_desired,
    update_device,
)

from .filters import CommandFilter, DeviceFilter, DeviceGroupFilter, DeviceTypeFilter
from .serializers import (
    CommandSerializer,
    CredentialSerializer,
    DesiredChangeSerializer,
    DeviceCreatedSerializer,
    DeviceGroupSerializer,
    DeviceSerializer,
    DeviceTypeSerializer,
    SendCommandSerializer,
    ShadowConflictSerializer,
    ShadowSerializer,
    TenantSerializer,
)
from .tenancy import (
    TENANT_HEADER_PARAMETER,
    Conflict,
    TenantScopedReadOnlyViewSet,
    TenantScopedViewSet,
)

create_in_tenant = extend_schema(parameters=[TENANT_HEADER_PARAMETER])


class BrokerUnavailable(exceptions.APIException):
    """The MQTT broker did not take a device account change; nothing was saved."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The MQTT broker did not take the change; nothing was saved. Try again."
    default_code = "broker_unavailable"


@extend_schema_view(
    list=extend_schema(summary="Your tenants, with your role in each"),
    retrieve=extend_schema(summary="One of your tenants"),
)
class TenantViewSet(TenantScopedReadOnlyViewSet):
    """The tenants you are a member of and your role in each (viewer, operator, admin)."""

    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer
    lookup_field = "slug"
    search_fields = ["slug", "name"]
    ordering_fields = ["slug", "name", "created_at"]


@extend_schema_view(create=create_in_tenant)
class DeviceTypeViewSet(TenantScopedViewSet):
    """Device types of your tenants with their metrics; operators change them.

    Sending `metrics` replaces the type's metric list; a type that devices use cannot be deleted.
    """

    queryset = DeviceType.objects.select_related("tenant").prefetch_related("metrics")
    serializer_class = DeviceTypeSerializer
    filterset_class = DeviceTypeFilter
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]


@extend_schema_view(create=create_in_tenant)
class DeviceGroupViewSet(TenantScopedViewSet):
    """Device groups of your tenants with how many devices each holds; operators change them."""

    queryset = DeviceGroup.objects.select_related("tenant")
    serializer_class = DeviceGroupSerializer
    filterset_class = DeviceGroupFilter
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "device_count"]

    def get_queryset(self) -> QuerySet:
        return super().get_queryset().annotate(device_count=Count("devices"))


@extend_schema_view(
    create=extend_schema(
        parameters=[TENANT_HEADER_PARAMETER],
        responses={201: DeviceCreatedSerializer},
        description="Registers a device. The response carries its MQTT secret, this once.",
    )
)
class DeviceViewSet(TenantScopedViewSet):
    """Devices of your tenants, addressed by key; operators register, change and remove them."""

    queryset = Device.objects.select_related("tenant").prefetch_related("groups")
    serializer_class = DeviceSerializer
    filterset_class = DeviceFilter
    lookup_field = "key"
    # Keys may hold '.', ':', '_' and '-'; only '/' ends the path segment.
    lookup_value_regex = r"[^/]+"
    search_fields = ["key", "name", "location"]
    ordering_fields = ["key", "name", "status", "last_seen", "firmware_version", "created_at"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            new = create_device(tenant=self.target_tenant, **serializer.validated_data)
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.message_dict) from error
        context = {**self.get_serializer_context(), "credential_secret": new.secret}
        body = DeviceCreatedSerializer(new.device, context=context).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: DeviceSerializer) -> None:
        try:
            update_device(serializer.instance, **serializer.validated_data)
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.message_dict) from error

    def perform_destroy(self, instance: Device) -> None:
        try:
            delete_devices([instance])
        except ProtectedError as error:
            raise Conflict(
                f"{len(error.protected_objects)} object(s) still refer to this device: "
                "delete them first."
            ) from error

    def handle_exception(self, exc: Exception) -> Response:
        # Creating, changing, rotating and deleting devices changes their MQTT accounts too.
        if isinstance(exc, BrokerAccountError):
            exc = BrokerUnavailable(f"Nothing was saved: {exc}")
        return super().handle_exception(exc)

    @extend_schema(request=None, responses=CredentialSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-credentials")
    def rotate_credentials(self, request: Request, key: str) -> Response:
        """Give the device a new MQTT secret (shown once); the old one stops working at once."""
        new = rotate_credentials(self.get_object())
        body = {
            "key": new.device.key,
            "credential_secret": new.secret,
            "credential_rotated_at": new.device.credential_rotated_at,
        }
        return Response(CredentialSerializer(body).data)

    @extend_schema(methods=["GET"], request=None, responses=ShadowSerializer)
    @extend_schema(
        methods=["PATCH"],
        request=DesiredChangeSerializer,
        responses={200: ShadowSerializer, 409: ShadowConflictSerializer},
        description="Merge a change into the desired state; the platform sends it to the device. "
        "With `version`, a shadow that moved on since answers 409 and nothing changes.",
    )
    @action(detail=True, methods=["get", "patch"])
    def shadow(self, request: Request, key: str) -> Response:
        """The device's desired and reported state, and what is still to be applied (delta)."""
        device = self.get_object()
        if request.method == "GET":
            return Response(ShadowSerializer(_shadow_of(device)).data)
        patch = DesiredChangeSerializer(data=request.data)
        patch.is_valid(raise_exception=True)
        try:
            shadow = update_desired(
                device, patch.validated_data["desired"], patch.validated_data.get("version")
            )
        except ShadowVersionConflict as conflict:
            body = {"detail": str(conflict), "current_version": conflict.current}
            return Response(body, status=status.HTTP_409_CONFLICT)
        return Response(ShadowSerializer(shadow).data)

    @extend_schema(methods=["GET"], request=None, responses=CommandSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=SendCommandSerializer,
        responses={201: CommandSerializer},
        description="Queue a command; the platform publishes it on fleet/{key}/commands/{id} and "
        "the device answers on .../ack. Follow it with GET /api/v1/commands/{id}/.",
    )
    @action(detail=True, methods=["get", "post"])
    def commands(self, request: Request, key: str) -> Response:
        """The device's commands, latest first (GET); send it one (POST, operators)."""
        device = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(
                Command.objects.filter(device=device).select_related(
                    "device", "tenant", "created_by"
                )
            )
            return self.get_paginated_response(CommandSerializer(page, many=True).data)
        body = SendCommandSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        timeout = body.validated_data.get("timeout")
        try:
            command = send_command(
                device,
                body.validated_data["name"],
                body.validated_data["params"],
                user=request.user,
                timeout=timedelta(seconds=timeout) if timeout else None,
            )
        except CommandRefused as error:
            raise serializers.ValidationError(error.message_dict) from error
        return Response(CommandSerializer(command).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(summary="Commands sent to your devices, latest first"),
    retrieve=extend_schema(summary="One command and its state: queued, sent, acknowledged..."),
)
class CommandViewSet(TenantScopedReadOnlyViewSet):
    """Commands to devices and their answers. Send one with POST /devices/{key}/commands/."""

    queryset = Command.objects.select_related("device", "tenant", "created_by")
    serializer_class = CommandSerializer
    filterset_class = CommandFilter
    ordering_fields = ["created_at", "state", "name"]


def _shadow_of(device: Device) -> DeviceShadow:
    """The device's shadow; an empty, unsaved one if it has none yet (first write creates it)."""
    try:
        return device.shadow
    except ObjectDoesNotExist:
        return DeviceShadow(device=device)
