"""Serializers of the devices API. The tenant is always read-only: viewsets set it on create."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import UniqueValidator

from devices.models import (
    Command,
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceType,
    FailureDirection,
    Metric,
    Tenant,
    device_key_validator,
    role_in,
)

_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JSONObjectField(serializers.JSONField):
    """A JSON object (a dict), not a list, string or number."""

    default_error_messages = {
        "not_an_object": 'Send a JSON object here, e.g. {{"site": "north"}}, not a {kind}.',
    }

    def to_internal_value(self, data: Any) -> dict:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_an_object", kind=_JSON_KINDS.get(type(value), type(value).__name__))
        return value


class TenantScopedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """A reference by primary key to a row of one of the requesting user's tenants.

    Another tenant's row answers "does not exist", as if it did not: its existence does not leak.
    """

    def get_queryset(self) -> QuerySet:
        request = self.context.get("request")
        return super().get_queryset().for_user(getattr(request, "user", None))


class TenantOwnedSerializer(serializers.ModelSerializer):
    """A serializer of a row with a `tenant`: shown as its slug, never written by the client."""

    tenant = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, help_text="Slug of the tenant the object belongs to."
    )

    def target_tenant(self) -> Tenant | None:
        """The tenant the object is in, or goes to when created."""
        if self.instance is not None and isinstance(self.instance, Model):
            return self.instance.tenant
        return self.context.get("tenant")

    def check_same_tenant(self, field: str, related: list[Model]) -> None:
        tenant = self.target_tenant()
        if tenant is None:
            return
        strangers = [obj for obj in related if obj.tenant_id != tenant.pk]
        if strangers:
            names = ", ".join(
                f"{obj} (id {obj.pk}, tenant '{obj.tenant.slug}')" for obj in strangers
            )
            raise serializers.ValidationError(
                {
                    field: f"{names} belongs to another tenant than this object ('{tenant.slug}'): "
                    f"pick one of '{tenant.slug}'."
                }
            )

    def check_unique_name(self, model: type[Model], name: str | None) -> None:
        """Names are unique per tenant; say so before the database refuses with a 500."""
        tenant = self.target_tenant()
        if tenant is None or name is None:
            return
        clash = model.objects.filter(tenant=tenant, name=name)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(
                {
                    "name": f"Tenant '{tenant.slug}' already has a {model._meta.verbose_name} "
                    f"named '{name}': choose another name."
                }
            )


class TenantSerializer(serializers.ModelSerializer):
    """A tenant you are a member of; its slug is what the X-Tenant header takes."""

    role = serializers.SerializerMethodField(help_text="Your role in this tenant.")

    class Meta:
        model = Tenant
        fields = ["slug", "name", "role", "created_at"]
        read_only_fields = fields

    def get_role(self, tenant: Tenant) -> str | None:
        return role_in(self.context["request"].user, tenant.pk)


class MetricSerializer(serializers.ModelSerializer):
    """A metric devices of a type report, and the range a valid reading falls in."""

    class Meta:
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
        # Uniqueness within the type is checked on the whole list by the device type.
        validators: list = []

    def validate(self, attrs: dict) -> dict:
        low, high = attrs.get("min_value"), attrs.get("max_value")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError(
                {"max_value": f"max_value ({high}) is below min_value ({low}): swap or fix them."}
            )
        if attrs.get("is_wear_indicator") and attrs.get("failure_threshold") is None:
            raise serializers.ValidationError(
                {
                    "failure_threshold": "A wear indicator needs the failure threshold it drifts "
                    "to (e.g. 11.2 for a vibration that fails at 11.2 mm/s)."
                }
            )
        return attrs


class DeviceTypeSerializer(TenantOwnedSerializer):
    """A kind of device: its metrics and how long it may stay silent before counting offline."""

    metrics = MetricSerializer(
        many=True,
        required=False,
        help_text="The metrics devices of this type report. Sending the list replaces it.",
    )

    class Meta:
        model = DeviceType
        fields = [
            "id",
            "tenant",
            "name",
            "description",
            "heartbeat_timeout",
            "metrics",
            "created_at",
        ]
        extra_kwargs = {"heartbeat_timeout": {"min_value": timedelta(seconds=1)}}

    def validate_metrics(self, metrics: list[dict]) -> list[dict]:
        names = [metric["name"] for metric in metrics]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise serializers.ValidationError(
                f"Each metric name may appear once; repeated: {', '.join(repeated)}."
            )
        return metrics

    def validate(self, attrs: dict) -> dict:
        self.check_unique_name(DeviceType, attrs.get("name"))
        return attrs

    @transaction.atomic
    def create(self, validated_data: dict) -> DeviceType:
        metrics = validated_data.pop("metrics", [])
        device_type = super().create(validated_data)
        self._replace_metrics(device_type, metrics)
        return device_type

    @transaction.atomic
    def update(self, instance: DeviceType, validated_data: dict) -> DeviceType:
        metrics = validated_data.pop("metrics", None)
        device_type = super().update(instance, validated_data)
        if metrics is not None:
            self._replace_metrics(device_type, metrics)
        return device_type

    @staticmethod
    def _replace_metrics(device_type: DeviceType, metrics: list[dict]) -> None:
        """Make the type's metrics exactly `metrics`, keeping the rows of names that stay."""
        wanted = {metric["name"]: metric for metric in metrics}
        device_type.metrics.exclude(name__in=wanted).delete()
        for name, fields in wanted.items():
            # What a metric leaves out is reset, not kept: the list sent is the whole truth.
            Metric.objects.update_or_create(
                device_type=device_type,
                name=name,
                defaults={
                    "unit": fields.get("unit", ""),
                    "min_value": fields.get("min_value"),
                    "max_value": fields.get("max_value"),
                    "is_wear_indicator": fields.get("is_wear_indicator", False),
                    "failure_threshold": fields.get("failure_threshold"),
                    "failure_direction": fields.get("failure_direction") or FailureDirection.RISING,
                },
            )
        # Drop a prefetched list so the response shows the metrics just saved.
        getattr(device_type, "_prefetched_objects_cache", {}).pop("metrics", None)


class DeviceGroupSerializer(TenantOwnedSerializer):
    """A named set of devices of one tenant (a site, a customer, a rollout wave)."""

    device_count = serializers.SerializerMethodField(help_text="How many devices are in the group.")

    class Meta:
        model = DeviceGroup
        fields = ["id", "tenant", "name", "description", "device_count", "created_at"]

    def get_device_count(self, group: DeviceGroup) -> int:
        annotated = getattr(group, "device_count", None)
        return annotated if annotated is not None else group.devices.count()

    def validate(self, attrs: dict) -> dict:
        self.check_unique_name(DeviceGroup, attrs.get("name"))
        return attrs


class DeviceSerializer(TenantOwnedSerializer):
    """A device: its key is its MQTT username; status and last_seen come from its messages."""

    key = serializers.CharField(
        max_length=64,
        validators=[
            device_key_validator,
            UniqueValidator(
                queryset=Device.objects.all(),
                message="A device with this key already exists. Keys are unique across the "
                "platform (they are MQTT usernames): choose another.",
            ),
        ],
        help_text="Unique key: the device's MQTT username and topic prefix fleet/{key}/. "
        "Fixed after create.",
    )
    device_type = TenantScopedPrimaryKeyField(
        queryset=DeviceType.objects.all(),
        help_text="Id of a device type of the device's tenant.",
    )
    groups = TenantScopedPrimaryKeyField(
        queryset=DeviceGroup.objects.all(),
        many=True,
        required=False,
        help_text="Ids of groups of the device's tenant.",
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        help_text="Free labels, e.g. ['cold-chain', 'pilot']; filter with ?tag=.",
    )
    attributes = JSONObjectField(
        required=False, help_text='Free key/value data as a JSON object, e.g. {"site": "north"}.'
    )

    class Meta:
        model = Device
        fields = [
            "key",
            "name",
            "tenant",
            "device_type",
            "groups",
            "tags",
            "attributes",
            "location",
            "latitude",
            "longitude",
            "firmware_version",
            "status",
            "is_enabled",
            "last_seen",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "last_seen"]
        extra_kwargs = {
            "latitude": {"min_value": -90, "max_value": 90},
            "longitude": {"min_value": -180, "max_value": 180},
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.instance, Model):
            # The key is fixed after create; a PUT need not repeat it.
            self.fields["key"].required = False

    def validate_key(self, key: str) -> str:
        if isinstance(self.instance, Model) and key != self.instance.key:
            raise serializers.ValidationError(
                f"The key cannot change after create (it is the device's MQTT username and topic "
                f"prefix); leave it as '{self.instance.key}', or create a new device."
            )
        return key

    def validate_tags(self, tags: list[str]) -> list[str]:
        cleaned = list(dict.fromkeys(tag.strip() for tag in tags))
        if "" in cleaned:
            raise serializers.ValidationError("A tag cannot be empty; remove the blank one.")
        return cleaned

    def validate(self, attrs: dict) -> dict:
        if "device_type" in attrs:
            self.check_same_tenant("device_type", [attrs["device_type"]])
        if "groups" in attrs:
            self.check_same_tenant("groups", attrs["groups"])
        return attrs


class DeviceCreatedSerializer(DeviceSerializer):
    """A new device with its secret: the only response that ever carries the secret."""

    credential_secret = serializers.SerializerMethodField(
        help_text="The device's MQTT password. Shown once, now: store it on the device; only a "
        "hash is kept, so a lost secret means rotating credentials."
    )

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "credential_secret"]

    def get_credential_secret(self, device: Device) -> str:
        return self.context["credential_secret"]


class CredentialSerializer(serializers.Serializer):
    """A freshly rotated device credential: the secret is shown this once."""

    key = serializers.CharField(read_only=True, help_text="The device key (its MQTT username).")
    credential_secret = serializers.CharField(
        read_only=True,
        help_text="The new MQTT password; the old one no longer works. Shown once.",
    )
    credential_rotated_at = serializers.DateTimeField(read_only=True)


class ShadowSerializer(serializers.ModelSerializer):
    """The device's desired and reported state; every change bumps the version."""

    desired = JSONObjectField(read_only=True)
    reported = JSONObjectField(read_only=True)
    delta = JSONObjectField(
        read_only=True, help_text="What desired asks for that reported does not show yet."
    )

    class Meta:
        model = DeviceShadow
        fields = [
            "desired",
            "reported",
            "delta",
            "version",
            "desired_updated_at",
            "reported_updated_at",
            "updated_at",
        ]
        read_only_fields = fields


class DesiredChangeSerializer(serializers.Serializer):
    """A change to the desired state; the device reports its side over MQTT."""

    desired = JSONObjectField(
        help_text="Required. Merged into the desired state key by key; a null value removes "
        "the key."
    )
    version = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="The shadow version your change is based on; if the shadow has moved on, "
        "the request answers 409 and changes nothing.",
    )

    read_only_keys = {
        "reported": "the device reports it over MQTT (fleet/{key}/shadow/reported)",
        "delta": "the platform computes it from desired and reported",
    }

    def validate(self, attrs: dict) -> dict:
        errors = {
            key: f"'{key}' is not writable here: {why}. Send only 'desired' and 'version'."
            for key, why in self.read_only_keys.items()
            if key in self.initial_data
        }
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ShadowConflictSerializer(serializers.Serializer):
    """The shadow moved on since the version sent: GET it, reapply the change, send again."""

    detail = serializers.CharField(read_only=True)
    current_version = serializers.IntegerField(read_only=True)


class CommandSerializer(serializers.ModelSerializer):
    device = serializers.SlugRelatedField(slug_field="key", read_only=True)
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    params = JSONObjectField(read_only=True)
    result = serializers.JSONField(read_only=True)

    class Meta:
        model = Command
        fields = [
            "id",
            "tenant",
            "device",
            "name",
            "params",
            "state",
            "created_by",
            "created_at",
            "sent_at",
            "answered_at",
            "expires_at",
            "result",
            "error",
        ]
        read_only_fields = fields


class SendCommandSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, help_text="The command, e.g. reboot.")
    params = JSONObjectField(required=False, default=dict, help_text="Its parameters.")
    timeout = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=7 * 86400,
        help_text="Seconds the device has to answer (default COMMAND_TIMEOUT_SECONDS, 60).",
    )
