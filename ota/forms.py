"""Forms of the OTA pages: the release upload, a signing key, the rollout wizard and the rollback.

Choices are limited to the user's tenants (operator role for writing); what the forms cannot
check alone (signatures, wave plans, target rules) the services check, and the views put their
ValidationError back on the fields.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings

from devices.models import DeviceGroup, DeviceType, Role, Tenant

from .models import FirmwareRelease, WaveMode
from .services import rollback_plan


def writable_tenants(user: Any) -> Any:
    return Tenant.objects.for_user(user, role=Role.OPERATOR)


class TenantChoiceMixin:
    """A `tenant` field when the user operates several tenants; hidden when only one."""

    only_tenant: Tenant | None = None

    def setup_tenant(self, user: Any) -> None:
        tenants = writable_tenants(user)
        self.fields["tenant"].queryset = tenants
        if tenants.count() == 1:
            self.only_tenant = tenants.first()
            self.fields["tenant"].initial = self.only_tenant
            self.fields["tenant"].required = False
            self.fields["tenant"].widget = forms.HiddenInput()

    def clean_tenant(self) -> Tenant:
        tenant = self.cleaned_data.get("tenant") or self.only_tenant
        if tenant is None:
            raise forms.ValidationError("Pick the tenant.")
        return tenant


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").replace(";", ",").split(",") if part.strip()]


class ReleaseForm(TenantChoiceMixin, forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    version = forms.CharField(max_length=64, help_text="Semantic version, e.g. 2.1.0.")
    device_types = forms.ModelMultipleChoiceField(
        queryset=DeviceType.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text="The device types this image runs on.",
    )
    file = forms.FileField(help_text="The firmware image.")
    signature = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Ed25519 signature of the image's SHA-256 digest, base64 or hex "
        "(required once your tenant registered a signing key).",
    )
    sha256 = forms.CharField(
        required=False,
        max_length=80,
        label="Expected SHA-256",
        help_text="Optional: the build's SHA-256, checked against the upload.",
    )
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}))

    def __init__(self, *args: Any, user: Any, upload_refused: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup_tenant(user)
        # The upload was stopped before its file arrived (ota/uploads.py): say why, not
        # "this field is required".
        self.upload_refused = upload_refused
        if upload_refused:
            self.fields["file"].required = False
        self.fields["device_types"].queryset = DeviceType.objects.for_user(
            user, role=Role.OPERATOR
        ).select_related("tenant")
        limit = settings.OTA_MAX_UPLOAD_BYTES
        self.fields["file"].help_text = f"The firmware image, at most {limit / 2**20:,.0f} MiB."

    def clean_file(self) -> Any:
        if self.upload_refused:
            raise forms.ValidationError(self.upload_refused)
        file = self.cleaned_data["file"]
        limit = settings.OTA_MAX_UPLOAD_BYTES
        if file.size > limit:
            raise forms.ValidationError(
                f"The file is {file.size:,} bytes; the limit is {limit:,} bytes."
            )
        return file


class SigningKeyForm(TenantChoiceMixin, forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    name = forms.CharField(max_length=100, help_text="e.g. Release key 2026")
    public_key = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="PEM (`openssl pkey -in key.pem -pubout`), or the 32 bytes in base64 or hex.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup_tenant(user)


# A year: any longer soak or timeout is a typo (and past what a duration can hold, a crash).
MAX_MINUTES = 365 * 24 * 60


class RolloutForm(forms.Form):
    """The rollout wizard: 1. release and target, 2. waves and gates, 3. review."""

    # Step 1
    release = forms.ModelChoiceField(queryset=FirmwareRelease.objects.none())
    name = forms.CharField(max_length=200, required=False, help_text="Blank: '<version> rollout'.")
    device_type = forms.ModelChoiceField(
        queryset=DeviceType.objects.none(),
        required=False,
        empty_label="Every type the release is for",
    )
    groups = forms.ModelMultipleChoiceField(
        queryset=DeviceGroup.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Devices in any of these groups; none ticked: any group.",
    )
    tags = forms.CharField(
        required=False, help_text="Devices carrying all of these tags, comma-separated."
    )
    allow_downgrade = forms.BooleanField(
        required=False, help_text="Also install on devices running a newer version."
    )
    # Step 2
    wave_mode = forms.ChoiceField(choices=WaveMode.choices, initial=WaveMode.PERCENT)
    wave_plan = forms.CharField(
        initial="1, 10, 50, 100",
        help_text="Percentages: cumulative shares of the target (1, 10, 50, 100). Sizes: devices "
        "per wave (10, 100, 1000; the last wave takes the rest).",
    )
    soak_minutes = forms.IntegerField(
        min_value=0,
        max_value=MAX_MINUTES,
        initial=30,
        label="Soak (minutes)",
        help_text="Per wave, before the next.",
    )
    success_threshold = forms.IntegerField(
        min_value=1, max_value=100, initial=95, label="Success threshold (%)"
    )
    failure_threshold = forms.IntegerField(
        min_value=0, max_value=100, initial=5, label="Failure threshold (%)"
    )
    min_finished = forms.IntegerField(
        min_value=1, initial=10, label="…counted once finished", help_text="devices of the wave"
    )
    max_concurrent = forms.IntegerField(min_value=1, initial=100, label="At most updating at once")
    timeout_minutes = forms.IntegerField(
        min_value=1, max_value=MAX_MINUTES, initial=30, label="Update timeout (minutes)"
    )
    window_start = forms.TimeField(required=False, label="Maintenance window from (UTC)")
    window_end = forms.TimeField(required=False, label="to (UTC)")
    health_gate = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Pause before the next wave when updated devices go offline, alert or reboot "
        "clearly more than those not yet updated.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["release"].queryset = (
            FirmwareRelease.objects.for_user(user, role=Role.OPERATOR)
            .select_related("tenant")
            .order_by("-created_at")
        )
        self.fields["device_type"].queryset = DeviceType.objects.for_user(user, role=Role.OPERATOR)
        self.fields["groups"].queryset = DeviceGroup.objects.for_user(user, role=Role.OPERATOR)

    def clean_wave_plan(self) -> list[int]:
        try:
            plan = [
                int(part.rstrip("%").strip())
                for part in _comma_list(self.cleaned_data["wave_plan"])
            ]
        except ValueError:
            raise forms.ValidationError(
                "Whole numbers separated by commas: 1, 10, 50, 100."
            ) from None
        return plan

    def clean_tags(self) -> list[str]:
        return _comma_list(self.cleaned_data["tags"])

    def rollout_fields(self) -> dict[str, Any]:
        """The service's keyword arguments (see ota.services.create_rollout)."""
        data = self.cleaned_data
        return {
            "release": data["release"],
            "groups": list(data.get("groups") or []),
            "name": data.get("name") or "",
            "device_type": data.get("device_type"),
            "tags": data.get("tags") or [],
            "allow_downgrade": bool(data.get("allow_downgrade")),
            "wave_mode": data["wave_mode"],
            "wave_plan": data["wave_plan"],
            "soak_time": timedelta(minutes=data["soak_minutes"]),
            "success_threshold": data["success_threshold"],
            "failure_threshold": data["failure_threshold"],
            "min_finished": data["min_finished"],
            "max_concurrent": data["max_concurrent"],
            "update_timeout": timedelta(minutes=data["timeout_minutes"]),
            "window_start": data.get("window_start"),
            "window_end": data.get("window_end"),
            "health_gate": bool(data.get("health_gate")),
        }


# Service field names → the wizard's fields that show their errors.
SERVICE_FIELDS = {"soak_time": "soak_minutes", "update_timeout": "timeout_minutes"}


class RollbackForm(forms.Form):
    release = forms.ModelChoiceField(queryset=FirmwareRelease.objects.none(), label="Back to")
    include_updated = forms.BooleanField(
        required=False,
        initial=True,
        label="Also the devices that updated successfully",
        help_text="Unticked: only the devices that failed or timed out.",
    )
    allow_downgrade = forms.BooleanField(
        required=False, label="Allow the downgrade (installs an older version)"
    )

    def __init__(self, *args: Any, rollout: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["release"].queryset = FirmwareRelease.objects.filter(
            tenant=rollout.tenant_id
        ).exclude(pk=rollout.release_id)
        if not self.is_bound:  # proposed: the version most of the devices ran before
            self.initial = {"release": rollback_plan(rollout).release, "include_updated": True}
