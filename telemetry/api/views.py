"""Telemetry API views: a device's readings and latest values, and a group's latest values.

They hang under the devices' and groups' URLs (`devices/{key}/readings/`), so they are plain
generic views rather than viewsets; `TenantScopedMixin` scopes their lookup to the user's tenants
(another tenant's device or group answers 404) and the default permissions let viewers read.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.api.tenancy import TenantScopedMixin
from devices.models import Device, DeviceGroup
from telemetry import queries
from telemetry.services import ingest_batch
from telemetry.validation import parse_message, rejection

from .authentication import DeviceCredentialAuthentication, IsDevice
from .serializers import (
    DeviceLatestSerializer,
    ReadingsQuerySerializer,
    ReadingsSerializer,
    TelemetryIngestResultSerializer,
)

READINGS_PARAMETERS = [
    OpenApiParameter(
        "metric",
        OpenApiTypes.STR,
        many=True,
        description="Metric name; repeat it or separate names with commas. "
        "Default: every metric of the device's type.",
    ),
    OpenApiParameter(
        "start",
        OpenApiTypes.DATETIME,
        description="Included. ISO 8601 (e.g. 2025-01-31T12:00:00Z). Default: end minus 24 hours.",
    ),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="Excluded. ISO 8601. Default: now."),
    OpenApiParameter(
        "bucket",
        OpenApiTypes.STR,
        enum=list(queries.BUCKETS),
        description="Aggregate into buckets of this width (aligned to UTC: 1h on the hour, 1d at "
        "midnight). Without it: raw readings, at most "
        f"{queries.MAX_RAW_RANGE.days} days and {queries.RAW_LIMIT} rows per request.",
    ),
    OpenApiParameter(
        "agg",
        OpenApiTypes.STR,
        description=f"With bucket: comma-separated aggregates among {','.join(queries.AGGREGATES)}"
        " (default: all). `last` is the value at the bucket's latest time.",
    ),
]


class TelemetryView(TenantScopedMixin, GenericAPIView):
    """A read-only view of one tenant-scoped object, looked up through `.for_user()`."""

    filter_backends: list = []
    pagination_class = None


class DeviceReadingsView(TelemetryView):
    queryset = Device.objects.select_related("device_type")
    lookup_field = "key"

    @extend_schema(
        operation_id="devices_readings",
        summary="A device's readings over a time range, raw or bucketed",
        parameters=READINGS_PARAMETERS,
        responses=ReadingsSerializer,
        tags=["devices"],
    )
    def get(self, request: Request, key: str) -> Response:
        """Raw readings (time, metric, value, flagged), oldest first, or with `bucket` one row per
        bucket and metric with the requested aggregates. The range includes start and excludes
        end."""
        device = self.get_object()
        query = ReadingsQuerySerializer(data=request.query_params, context={"device": device})
        query.is_valid(raise_exception=True)
        asked = query.validated_data
        bucket = asked["bucket"]
        series = queries.readings(
            device, asked["metrics"], asked["start"], asked["end"], bucket, asked["aggregates"]
        )
        body: dict[str, Any] = {
            "device": device.key,
            "start": asked["start"],
            "end": asked["end"],
            "metrics": [metric.name for metric in asked["metrics"]],
            "bucket": bucket,
            "aggregates": asked["aggregates"] if bucket else None,
            "truncated": series.truncated,
            "next_start": series.next_start,
        }
        body["buckets" if bucket else "readings"] = series.rows
        if series.truncated:
            body["detail"] = (
                f"More than {queries.RAW_LIMIT} readings: these are the first. Ask again with "
                "start=next_start for the rest, or add bucket= for aggregates."
            )
        return Response(ReadingsSerializer(body).data)


class DeviceLatestView(TelemetryView):
    queryset = Device.objects.all()
    lookup_field = "key"

    @extend_schema(
        operation_id="devices_latest",
        summary="A device's latest value per metric",
        responses=DeviceLatestSerializer,
        tags=["devices"],
    )
    def get(self, request: Request, key: str) -> Response:
        """The device's status, when it was last seen, and its latest value per metric (with unit,
        time and whether it was flagged out of range); metrics that never reported are left out."""
        device = self.get_object()
        return Response(DeviceLatestSerializer(_with_latest([device])[0]).data)


class GroupLatestView(TelemetryView):
    queryset = DeviceGroup.objects.all()
    pagination_class = GenericAPIView.pagination_class

    @extend_schema(
        operation_id="groups_latest",
        summary="The latest values of a group's devices",
        responses=DeviceLatestSerializer(many=True),
        tags=["groups"],
    )
    def get(self, request: Request, pk: int) -> Response:
        """Each device of the group (by key, paginated) with its status, when it was last seen and
        its latest value per metric."""
        group = self.get_object()
        page = self.paginate_queryset(self.group_devices(group))
        return self.get_paginated_response(
            DeviceLatestSerializer(_with_latest(page), many=True).data
        )

    def group_devices(self, group: DeviceGroup) -> QuerySet:
        return Device.objects.for_user(self.request.user).filter(groups=group).order_by("key")


def _with_latest(devices: list[Device]) -> list[dict[str, Any]]:
    """The devices as rows with their latest values, fetched in one query."""
    latest = queries.latest_for_devices(device.pk for device in devices)
    return [
        {
            "key": device.key,
            "name": device.name,
            "status": device.status,
            "last_seen": device.last_seen,
            "latest": latest.get(device.pk, []),
        }
        for device in devices
    ]


class TelemetryIngestView(APIView):
    """HTTP ingest for devices that cannot speak MQTT: the body is what the device would publish
    on `fleet/{key}/telemetry`; it takes the MQTT path's validation and storage, synchronously, so
    a 2xx answer means stored."""

    authentication_classes = [DeviceCredentialAuthentication]
    permission_classes = [IsDevice]
    parser_classes: list = []  # the raw body is validated as MQTT payloads are
    throttle_classes: list = []

    @extend_schema(
        operation_id="telemetry_ingest",
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            201: TelemetryIngestResultSerializer,
            200: TelemetryIngestResultSerializer,
            400: TelemetryIngestResultSerializer,
            403: TelemetryIngestResultSerializer,
            413: TelemetryIngestResultSerializer,
        },
        description="Authenticate with HTTP Basic `key:secret` (the device's MQTT login). Body: "
        '`{"ts": epoch ms or ISO-8601, "seq": n, "metrics": {"temperature": 21.5}}` or a list of '
        "these. 201: stored; 200: nothing new (a repeat); 400/403/413: rejected, with reasons "
        "(also recorded on the device's page).",
    )
    def post(self, request: Request) -> Response:
        device: Device = request.auth
        topic = f"fleet/{device.key}/telemetry"
        received_ms = int(time.time() * 1000)
        limit = settings.TELEMETRY_MAX_PAYLOAD_BYTES
        size = int(request.META.get("CONTENT_LENGTH") or 0)
        if size > limit:
            reason = f"payload of {size} bytes exceeds the {limit}-byte limit"
            entry = rejection(device.key, received_ms, topic, reason, b"")
            entry[-1] = size
        else:
            entry = parse_message(topic, request.body, received_ms)
        result = ingest_batch([entry])
        body = {
            "stored": result.readings_stored,
            "duplicates": result.readings_duplicate,
            "rejected": result.rejections,
        }
        if result.readings_stored or result.readings_duplicate:
            return Response(body, status=201 if result.readings_stored else 200)
        if size > limit:
            return Response(body, status=413)
        return Response(body, status=403 if not device.is_enabled else 400)
