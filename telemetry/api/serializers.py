"""Serializers of the telemetry API: the query string of a readings request, and the answers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from devices.models import Device, Metric
from telemetry.queries import AGGREGATES, BUCKETS, MAX_BUCKETS, MAX_RAW_RANGE, bucket_count

DEFAULT_RANGE = timedelta(hours=24)
TIME_HELP = (
    "ISO 8601 with a UTC offset, e.g. 2025-01-31T12:00:00Z (in a URL, send a '+' offset as %2B)."
)


def _names(values: list[str]) -> list[str]:
    """Names given repeated (?metric=a&metric=b) or comma-separated (?metric=a,b), in order."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"


def _fitting_buckets(start: datetime, end: datetime) -> list[str]:
    return [name for name in BUCKETS if bucket_count(start, end, name) <= MAX_BUCKETS]


class ReadingsQuerySerializer(serializers.Serializer):
    """Parses and checks `?metric=&start=&end=&bucket=&agg=` for one device.

    The context holds the `device`; validated data has `metrics` (Metric rows), `start`, `end`,
    `bucket` (None for raw readings) and `aggregates`.
    """

    metric = serializers.ListField(child=serializers.CharField(), required=False)
    start = serializers.DateTimeField(
        required=False, error_messages={"invalid": f"start is not a time: use {TIME_HELP}"}
    )
    end = serializers.DateTimeField(
        required=False, error_messages={"invalid": f"end is not a time: use {TIME_HELP}"}
    )
    bucket = serializers.CharField(required=False)
    agg = serializers.ListField(child=serializers.CharField(), required=False)

    def validate_bucket(self, value: str) -> str:
        if value not in BUCKETS:
            raise serializers.ValidationError(
                f"Unknown bucket {value!r}: use one of {', '.join(BUCKETS)}, or leave it out "
                "for raw readings."
            )
        return value

    def validate_agg(self, value: list[str]) -> list[str]:
        names = _names(value)
        unknown = [name for name in names if name not in AGGREGATES]
        if unknown or not names:
            raise serializers.ValidationError(
                f"Unknown aggregate {', '.join(map(repr, unknown)) or repr('')}: use one or "
                f"more of {','.join(AGGREGATES)} (comma-separated), or leave agg out for all."
            )
        return names

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        device: Device = self.context["device"]
        now: datetime = self.context.get("now") or timezone.now()
        end = attrs.get("end") or now
        start = attrs.get("start") or end - DEFAULT_RANGE
        if start >= end:
            raise serializers.ValidationError(
                {
                    "start": f"start ({start.isoformat()}) must be before end ({end.isoformat()}); "
                    "the range includes start and excludes end."
                }
            )
        bucket = attrs.get("bucket")
        if "agg" in attrs and bucket is None:
            raise serializers.ValidationError(
                {"agg": f"agg applies to buckets: add bucket= (one of {', '.join(BUCKETS)})."}
            )
        if bucket is None and end - start > MAX_RAW_RANGE:
            raise serializers.ValidationError(
                {
                    "start": f"Raw readings cover at most {_span(MAX_RAW_RANGE)} per request and "
                    f"{_span(end - start)} were asked for: narrow start/end, or add bucket= "
                    f"({', '.join(_fitting_buckets(start, end))}) for aggregates over the range."
                }
            )
        if bucket is not None and bucket_count(start, end, bucket) > MAX_BUCKETS:
            larger = _fitting_buckets(start, end)
            raise serializers.ValidationError(
                {
                    "bucket": f"{_span(end - start)} in {bucket} buckets is more than "
                    f"{MAX_BUCKETS} buckets per metric: narrow start/end"
                    + (f" or use a larger bucket ({', '.join(larger)})." if larger else ".")
                }
            )
        return {
            "metrics": self._metrics(device, _names(attrs.get("metric", []))),
            "start": start,
            "end": end,
            "bucket": bucket,
            "aggregates": attrs.get("agg") or list(AGGREGATES),
        }

    def _metrics(self, device: Device, names: list[str]) -> list[Metric]:
        known = {metric.name: metric for metric in device.device_type.metrics.all()}
        unknown = [name for name in names if name not in known]
        if unknown:
            valid = ", ".join(sorted(known)) or "none: the type defines no metrics yet"
            raise serializers.ValidationError(
                {
                    "metric": f"Device type {device.device_type.name!r} has no metric "
                    f"{', '.join(map(repr, unknown))}: use one or more of {valid}."
                }
            )
        return [known[name] for name in names] if names else list(known.values())


class SampleSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    metric = serializers.CharField()
    value = serializers.FloatField()
    flagged = serializers.BooleanField(help_text="Outside the metric's valid range, kept flagged.")


class BucketSerializer(serializers.Serializer):
    """One bucket of one metric; only the aggregates asked for are present."""

    time = serializers.DateTimeField(help_text="Start of the bucket.")
    metric = serializers.CharField()
    avg = serializers.FloatField(required=False)
    min = serializers.FloatField(required=False)
    max = serializers.FloatField(required=False)
    count = serializers.IntegerField(required=False)
    last = serializers.FloatField(
        required=False, help_text="The value at the bucket's latest time."
    )


class ReadingsSerializer(serializers.Serializer):
    device = serializers.CharField(help_text="The device's key.")
    start = serializers.DateTimeField(help_text="Included.")
    end = serializers.DateTimeField(help_text="Excluded.")
    metrics = serializers.ListField(child=serializers.CharField())
    bucket = serializers.CharField(allow_null=True, help_text="Null for raw readings.")
    aggregates = serializers.ListField(
        child=serializers.CharField(), allow_null=True, help_text="Null for raw readings."
    )
    truncated = serializers.BooleanField(
        help_text="Raw readings stopped at the row limit: ask again with start=next_start."
    )
    next_start = serializers.DateTimeField(
        allow_null=True, help_text="Where the rest begins when truncated, else null."
    )
    detail = serializers.CharField(required=False, help_text="Why the answer is truncated.")
    readings = SampleSerializer(many=True, required=False, help_text="Raw readings, oldest first.")
    buckets = BucketSerializer(many=True, required=False, help_text="With bucket=, oldest first.")


class LatestValueSerializer(serializers.Serializer):
    metric = serializers.CharField()
    unit = serializers.CharField()
    value = serializers.FloatField()
    time = serializers.DateTimeField()
    flagged = serializers.BooleanField()


class DeviceLatestSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()
    last_seen = serializers.DateTimeField(allow_null=True)
    latest = LatestValueSerializer(many=True, help_text="One per metric that has reported.")


class TelemetryIngestResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="Readings stored by this request.")
    duplicates = serializers.IntegerField(help_text="Readings already stored (a repeat).")
    rejected = serializers.ListField(
        child=serializers.CharField(), help_text="Why a message or values in it were refused."
    )
