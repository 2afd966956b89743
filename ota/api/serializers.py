"""Serializers of the OTA API: signing keys, firmware releases (multipart upload), rollouts (with
their live progress) and the per-device update records. State changes go through ota.services;
its ValidationError becomes a 400 with the field's message."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import models
from rest_framework import serializers

from devices.api.serializers import TenantOwnedSerializer, TenantScopedPrimaryKeyField
from devices.models import DeviceGroup, DeviceType
from ota import services
from ota.models import (
    DeviceUpdate,
    FirmwareRelease,
    Rollout,
    SigningKey,
    UpdateState,
    WaveMode,
)


class SigningKeySerializer(TenantOwnedSerializer):
    """An Ed25519 public key of the tenant; releases signed with its private key verify."""

    public_key = serializers.CharField(
        help_text="PEM (-----BEGIN PUBLIC KEY-----), or the 32 raw bytes in base64 or hex. "
        "Fixed once registered."
    )

    class Meta:
        model = SigningKey
        fields = ["id", "tenant", "name", "public_key", "fingerprint", "is_active", "created_at"]
        read_only_fields = ["fingerprint", "created_at"]

    def validate(self, attrs: dict) -> dict:
        key = attrs.get("public_key")
        if self.instance is not None and key and key.strip() != self.instance.public_key:
            raise serializers.ValidationError(
                {"public_key": "A key cannot change: register the new key and retire this one."}
            )
        self.check_unique_name(SigningKey, attrs.get("name"))
        return attrs


class FirmwareReleaseSerializer(TenantOwnedSerializer):
    """A firmware image. Create with multipart/form-data: `file`, `version`, `device_types`
    (repeat the field for several ids), and `signature` when the tenant signs its firmware;
    `sha256` (optional) is checked against the upload. Afterwards only `notes` and
    `device_types` change."""

    file = serializers.FileField(write_only=True, required=False, help_text="The image.")
    version = serializers.CharField(required=False, help_text="Semantic version, e.g. 2.1.0.")
    device_types = TenantScopedPrimaryKeyField(
        queryset=DeviceType.objects.all(), many=True, help_text="Ids of the device types."
    )
    signature = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Ed25519 signature of the image's SHA-256 digest, base64 or hex.",
    )
    sha256 = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Give the build's SHA-256 to have the upload checked against it; the stored "
        "value is always the one computed from the upload.",
    )
    signing_key = serializers.SlugRelatedField(slug_field="fingerprint", read_only=True)

    class Meta:
        model = FirmwareRelease
        fields = [
            "id",
            "tenant",
            "version",
            "device_types",
            "file",
            "file_name",
            "size",
            "sha256",
            "signature",
            "signing_key",
            "notes",
            "created_at",
        ]
        read_only_fields = ["file_name", "size", "created_at"]

    def validate_device_types(self, value: list) -> list:
        self.check_same_tenant("device_types", value)
        return value

    def to_representation(self, instance: FirmwareRelease) -> dict:
        data = super().to_representation(instance)
        data["sha256"] = instance.sha256
        data["signature"] = instance.signature or None
        return data


ROLLOUT_STATE = [
    "status",
    "current_wave",
    "pause_reason",
    "pause_detail",
    "evidence",
    "last_error",
    "rollback_of",
    "created_at",
    "started_at",
    "paused_at",
    "finished_at",
]


class RolloutListSerializer(serializers.ListSerializer):
    """Counts the progress of every rollout listed in one query, not one query per rollout."""

    def to_representation(self, data: Any) -> list:
        rollouts = list(data.all() if isinstance(data, models.manager.BaseManager) else data)
        self.child.counted_progress = services.progress_counts(rollout.pk for rollout in rollouts)
        return super().to_representation(rollouts)


class RolloutSerializer(TenantOwnedSerializer):
    """A staged rollout. Created as a draft; `POST .../start/` sends wave 1. Only a draft can be
    edited or deleted. `progress` counts devices per update state."""

    # {rollout id: counts} when a RolloutListSerializer counted them for the whole list.
    counted_progress: dict[int, Counter] | None = None

    release = TenantScopedPrimaryKeyField(
        queryset=FirmwareRelease.objects.all(), help_text="Id of the release to roll out."
    )
    device_type = TenantScopedPrimaryKeyField(
        queryset=DeviceType.objects.all(),
        required=False,
        allow_null=True,
        help_text="Only devices of this type (id); null: every type the release is for.",
    )
    groups = TenantScopedPrimaryKeyField(
        queryset=DeviceGroup.objects.all(),
        many=True,
        required=False,
        help_text="Only devices in one of these groups (ids).",
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        help_text="Only devices carrying all of these tags.",
    )
    wave_plan = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        help_text="Cumulative percentages (wave_mode percent: [1, 10, 50, 100]) or wave sizes "
        "(count: [10, 100, 1000]; the last wave takes the rest).",
    )
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        # What a client sets is what the service takes (ota.services.ROLLOUT_SETTINGS); the
        # rest is the rollout's state, changed by its actions.
        fields = [
            "id",
            "tenant",
            "release",
            "groups",
            *services.ROLLOUT_SETTINGS,
            *ROLLOUT_STATE,
            "progress",
        ]
        read_only_fields = ROLLOUT_STATE
        extra_kwargs = {"name": {"required": False}}
        list_serializer_class = RolloutListSerializer

    def validate(self, attrs: dict) -> dict:
        for field in ("release", "device_type"):
            if attrs.get(field) is not None:
                self.check_same_tenant(field, [attrs[field]])
        self.check_same_tenant("groups", attrs.get("groups", []))
        return attrs

    def get_progress(self, rollout: Rollout) -> dict[str, int]:
        counted = self.counted_progress or {}
        if rollout.pk not in counted:  # one rollout alone (detail, actions)
            counted = services.progress_counts([rollout.pk])
        counts = counted[rollout.pk]
        return {state: counts[state] for state in UpdateState.values}


class RolloutPreviewSerializer(RolloutSerializer):
    """The body of a create, to see what it would do; nothing is saved."""


class PreviewResultSerializer(serializers.Serializer):
    matching = serializers.IntegerField(help_text="Devices matching the target.")
    already_on_version = serializers.IntegerField()
    downgrades_left_out = serializers.IntegerField()
    busy_in_other_rollouts = serializers.IntegerField()
    devices = serializers.IntegerField(help_text="Devices the rollout would update.")
    waves = serializers.ListField(child=serializers.IntegerField(), help_text="Devices per wave.")


class RetrySerializer(serializers.Serializer):
    wave = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Only this wave's failed devices."
    )


class RollbackSerializer(serializers.Serializer):
    release = TenantScopedPrimaryKeyField(
        queryset=FirmwareRelease.objects.all(),
        required=False,
        allow_null=True,
        help_text="The release to go back to; default: the version most of the devices ran.",
    )
    include_updated = serializers.BooleanField(
        default=True, help_text="Also the devices that updated successfully (else failed only)."
    )
    allow_downgrade = serializers.BooleanField(
        default=False, help_text="Must be true: going back installs an older version."
    )


class ProgressSerializer(serializers.Serializer):
    rollout = serializers.IntegerField()
    status = serializers.CharField()
    current_wave = serializers.IntegerField()
    devices = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    waves = serializers.ListField(child=serializers.DictField())


class DeviceUpdateSerializer(serializers.ModelSerializer):
    """One device's update in a rollout."""

    tenant = serializers.SerializerMethodField()
    device = serializers.SlugRelatedField(slug_field="key", read_only=True)

    class Meta:
        model = DeviceUpdate
        fields = [
            "id",
            "tenant",
            "rollout",
            "device",
            "wave",
            "state",
            "progress",
            "from_version",
            "reason",
            "attempts",
            "queued_at",
            "sent_at",
            "reported_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_tenant(self, update: DeviceUpdate) -> str:
        return update.rollout.tenant.slug


def rollout_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The service's keyword arguments from validated rollout data."""
    fields = dict(data)
    fields.pop("groups", None)
    if "wave_mode" not in fields and "wave_plan" in fields:
        fields["wave_mode"] = WaveMode.PERCENT
    return fields
