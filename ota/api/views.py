"""Viewsets of the OTA API: parse, authorize, call ota.services, respond.

Releases and keys are created by operators of the tenant; rollouts are created as drafts and
driven by actions (preview, start, pause, resume, abort, retry, rollback, progress). A state
that does not allow an action answers 409 with why; invalid data 400 by field.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from devices.api.filters import TenantFilterSet
from devices.api.tenancy import (
    TENANT_HEADER_PARAMETER,
    Conflict,
    TenantScopedReadOnlyViewSet,
    TenantScopedViewSet,
    request_tenant,
)
from devices.models import Role
from iotfleet.parsers import JSONParser
from ota import services, uploads
from ota.models import (
    DeviceUpdate,
    FirmwareRelease,
    Rollout,
    RolloutStatus,
    SigningKey,
    UpdateState,
)

from .serializers import (
    DeviceUpdateSerializer,
    FirmwareReleaseSerializer,
    PreviewResultSerializer,
    ProgressSerializer,
    RetrySerializer,
    RollbackSerializer,
    RolloutPreviewSerializer,
    RolloutSerializer,
    SigningKeySerializer,
    rollout_fields,
)


def refused(error: DjangoValidationError) -> serializers.ValidationError:
    return serializers.ValidationError(
        error.message_dict if hasattr(error, "error_dict") else {"detail": error.messages}
    )


@extend_schema_view(create=extend_schema(parameters=[TENANT_HEADER_PARAMETER]))
class SigningKeyViewSet(TenantScopedViewSet):
    """Ed25519 public keys of your tenants: a tenant with an active key accepts only releases
    signed by one of its keys. Retire a key with is_active = false."""

    queryset = SigningKey.objects.select_related("tenant")
    serializer_class = SigningKeySerializer
    search_fields = ["name", "fingerprint"]

    def perform_create(self, serializer: SigningKeySerializer) -> None:
        try:
            serializer.instance = services.register_signing_key(
                self.target_tenant,
                serializer.validated_data["name"],
                serializer.validated_data["public_key"],
            )
        except DjangoValidationError as error:
            raise refused(error) from error
        if serializer.validated_data.get("is_active") is False:
            serializer.instance.is_active = False
            serializer.instance.save(update_fields=["is_active"])

    def perform_update(self, serializer: SigningKeySerializer) -> None:
        serializer.validated_data.pop("public_key", None)
        serializer.save()


class ReleaseFilter(TenantFilterSet):
    device_type = filters.NumberFilter(field_name="device_types", help_text="Device type id.")
    version = filters.CharFilter()

    class Meta:
        model = FirmwareRelease
        fields = ["tenant", "device_type", "version"]


@extend_schema_view(create=extend_schema(parameters=[TENANT_HEADER_PARAMETER]))
class FirmwareReleaseViewSet(TenantScopedViewSet):
    """Firmware releases of your tenants. Upload with multipart/form-data; the sha256 is
    computed from the upload and a signature verified against the tenant's keys (400 with the
    reason when it does not verify)."""

    queryset = FirmwareRelease.objects.select_related("tenant", "signing_key").prefetch_related(
        "device_types"
    )
    serializer_class = FirmwareReleaseSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    filterset_class = ReleaseFilter
    search_fields = ["version", "notes"]
    ordering_fields = ["created_at", "version"]

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        if request.method == "POST":
            uploads.limit_upload(request)  # before authentication's CSRF check reads the body
        return super().initialize_request(request, *args, **kwargs)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        refused = uploads.refusal(request)
        if refused:
            return Response({"file": [refused]}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer: FirmwareReleaseSerializer) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = services.create_release(
                tenant=self.target_tenant,
                version=data.get("version", ""),
                file=data.get("file"),
                device_types=data.get("device_types", []),
                notes=data.get("notes", ""),
                signature=data.get("signature", ""),
                expected_sha256=data.get("sha256", ""),
                user=self.request.user,
            )
        except DjangoValidationError as error:
            raise refused(error) from error

    def perform_update(self, serializer: FirmwareReleaseSerializer) -> None:
        data = serializer.validated_data
        release = serializer.instance
        fixed = [
            name
            for name in ("version", "file", "signature", "sha256")
            if name in data and data[name] not in ("", getattr(release, name, None))
        ]
        if fixed:
            raise serializers.ValidationError(
                {key: ["Fixed once uploaded: upload a new release instead."] for key in fixed}
            )
        try:
            services.update_release(
                release, notes=data.get("notes"), device_types=data.get("device_types")
            )
        except DjangoValidationError as error:
            raise refused(error) from error

    def perform_destroy(self, instance: FirmwareRelease) -> None:
        if instance.rollouts.exists():
            raise Conflict(
                f"Release {instance.version} is used by {instance.rollouts.count()} rollout(s): "
                "it stays as their record."
            )
        services.delete_release(instance)


class RolloutFilter(TenantFilterSet):
    status = filters.MultipleChoiceFilter(choices=RolloutStatus.choices)
    release = filters.NumberFilter(field_name="release")

    class Meta:
        model = Rollout
        fields = ["tenant", "status", "release"]


ACTION = {"request": None, "responses": {200: RolloutSerializer}}


@extend_schema_view(
    create=extend_schema(parameters=[TENANT_HEADER_PARAMETER], summary="Create a draft rollout")
)
class RolloutViewSet(TenantScopedViewSet):
    """Staged rollouts of your tenants. Create a draft, preview it, start it; pause, resume,
    abort; retry failed devices; roll back. Progress per wave and state at .../progress/."""

    queryset = Rollout.objects.select_related("tenant", "release").prefetch_related("groups")
    serializer_class = RolloutSerializer
    filterset_class = RolloutFilter
    search_fields = ["name"]
    ordering_fields = ["created_at", "started_at", "status"]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if self.action == "preview":
            self.target_tenant = request_tenant(request, Role.VIEWER)

    def perform_create(self, serializer: RolloutSerializer) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = services.create_rollout(
                tenant=self.target_tenant,
                groups=data.get("groups", []),
                user=self.request.user,
                **rollout_fields(data),
            )
        except DjangoValidationError as error:
            raise refused(error) from error

    def perform_update(self, serializer: RolloutSerializer) -> None:
        data = serializer.validated_data
        try:
            services.update_rollout(
                serializer.instance, groups=data.get("groups"), **rollout_fields(data)
            )
        except services.RolloutStateError as error:
            raise Conflict(error.message) from error
        except DjangoValidationError as error:
            raise refused(error) from error

    def perform_destroy(self, instance: Rollout) -> None:
        try:
            services.delete_rollout(instance)
        except services.RolloutStateError as error:
            raise Conflict(error.message) from error

    @extend_schema(
        request=RolloutPreviewSerializer,
        responses=PreviewResultSerializer,
        parameters=[TENANT_HEADER_PARAMETER],
        summary="How many devices each wave of a rollout would hold (nothing saved)",
    )
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        body = RolloutPreviewSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        data = body.validated_data
        target = services.Target(
            tenant=self.target_tenant,
            release=data["release"],
            device_type=data.get("device_type"),
            groups=data.get("groups", []),
            tags=data.get("tags", []),
            allow_downgrade=data.get("allow_downgrade", False),
        )
        try:
            services.check_wave_plan(data.get("wave_mode", "percent"), data["wave_plan"])
        except DjangoValidationError as error:
            raise refused(error) from error
        preview = services.preview_rollout(
            target, data.get("wave_mode", "percent"), data["wave_plan"]
        )
        return Response(preview.as_dict())

    def _act(self, change: Any, **arguments: Any) -> Response:
        rollout = self.get_object()  # 404 for another tenant's, 403 for a viewer
        try:
            change(rollout, self.request.user, **arguments)
        except services.RolloutStateError as error:
            raise Conflict(error.message) from error
        except DjangoValidationError as error:
            raise refused(error) from error
        return Response(RolloutSerializer(self.get_queryset().get(pk=rollout.pk)).data)

    @extend_schema(summary="Start a draft: wave 1 is sent its jobs (operator)", **ACTION)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str) -> Response:
        return self._act(services.start_rollout)

    @extend_schema(summary="Pause: no new job is sent (operator)", **ACTION)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        return self._act(services.pause_rollout)

    @extend_schema(
        summary="Resume: what made it pause is accepted for the current wave (operator)", **ACTION
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return self._act(services.resume_rollout)

    @extend_schema(summary="Abort: devices not sent their job are cancelled (operator)", **ACTION)
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str) -> Response:
        return self._act(services.abort_rollout)

    @extend_schema(
        request=RetrySerializer,
        responses={200: RolloutSerializer},
        summary="Queue failed and timed-out devices again (operator)",
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        body = RetrySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        wave = body.validated_data.get("wave")
        return self._act(lambda rollout, user: services.retry_failed(rollout, wave, user))

    @extend_schema(
        request=RollbackSerializer,
        responses={201: RolloutSerializer},
        summary="Roll failed (and updated) devices back to the previous version (operator)",
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str) -> Response:
        rollout = self.get_object()
        body = RollbackSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        try:
            rollback = services.roll_back(rollout, request.user, **body.validated_data)
        except services.RolloutStateError as error:
            raise Conflict(error.message) from error
        except DjangoValidationError as error:
            raise refused(error) from error
        return Response(
            RolloutSerializer(self.get_queryset().get(pk=rollback.pk)).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses=ProgressSerializer, summary="Devices per wave and per state")
    @action(detail=True, methods=["get"])
    def progress(self, request: Request, pk: str) -> Response:
        return Response(services.rollout_progress(self.get_object()))


class DeviceUpdateFilter(filters.FilterSet):
    rollout = filters.NumberFilter(field_name="rollout")
    state = filters.MultipleChoiceFilter(choices=UpdateState.choices)
    wave = filters.NumberFilter()
    device = filters.CharFilter(field_name="device__key", help_text="Device key.")

    class Meta:
        model = DeviceUpdate
        fields = ["rollout", "state", "wave", "device"]


class DeviceUpdateViewSet(TenantScopedReadOnlyViewSet):
    """Each device's update in each rollout: state, progress, the device's reason, attempts and
    times. Filter with ?rollout=5&state=failed."""

    queryset = DeviceUpdate.objects.all()
    serializer_class = DeviceUpdateSerializer
    filterset_class = DeviceUpdateFilter
    ordering_fields = ["wave", "state", "finished_at", "sent_at"]

    def get_queryset(self) -> QuerySet:
        return super().get_queryset().select_related("device", "rollout__tenant")


router = SimpleRouter()
router.register("signing-keys", SigningKeyViewSet, basename="signing-key")
router.register("firmware-releases", FirmwareReleaseViewSet, basename="firmware-release")
router.register("rollouts", RolloutViewSet, basename="rollout")
router.register("device-updates", DeviceUpdateViewSet, basename="device-update")
