"""Forms of the devices admin: tenant-safe model forms, action pages and the CSV import."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Q, QuerySet

from .models import Device, DeviceGroup, DeviceShadow, DeviceStatus, DeviceType, Tenant


def _reject_constant(name: str) -> Any:
    # PostgreSQL's jsonb has no NaN or Infinity: refuse them here rather than fail on save.
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


class StrictJSONDecoder(json.JSONDecoder):
    """Standard JSON only: no NaN / Infinity, which Python accepts but PostgreSQL does not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parse_constant"] = _reject_constant
        super().__init__(*args, **kwargs)


# Deeper than any real configuration; much deeper and Python's recursion gives out (a 500).
MAX_JSON_DEPTH = 32
TOO_DEEP = f"Nest the JSON at most {MAX_JSON_DEPTH} levels deep: flatten the deepest part."


def json_depth(value: Any) -> int:
    """How many objects and arrays deep a JSON value goes (counted without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL's jsonb refuses it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


class JSONObjectField(forms.JSONField):
    """A JSON object edited as indented text; empty input means `{}`."""

    widget = forms.Textarea(attrs={"rows": 8, "cols": 60, "class": "vLargeTextField"})

    def __init__(self, *, example: str = '{"interval_s": 60}', **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(decoder=StrictJSONDecoder, **kwargs)
        self.example = example

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(TOO_DEEP) from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        """A form shown back keeps JSON nested too deep as the text typed (re-encoding it
        would recurse as deep)."""
        try:
            value = super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)
        if json_depth(value) > MAX_JSON_DEPTH:
            return forms.fields.InvalidJSONInput(data)
        return value

    def clean(self, value: Any) -> dict:
        result = super().clean(value)
        if result is None:
            return {}
        if not isinstance(result, dict):
            raise ValidationError(f"Enter a JSON object in braces, e.g. {self.example}.")
        if json_depth(result) > MAX_JSON_DEPTH:
            raise ValidationError(TOO_DEEP)
        if contains_nul(result):
            raise ValidationError("Remove the NUL characters (\\u0000): they cannot be stored.")
        return result


class TenantScopedModelForm(forms.ModelForm):
    """A model form that refuses related rows (device type, groups, ...) of another tenant.

    The admin already limits the choices to the user's tenants; this catches a user who is a
    member of several tenants picking, say, Acme as the tenant and a Globex group.
    """

    tenant_field = "tenant"

    def clean(self) -> dict:
        cleaned = super().clean()
        tenant_id = self._chosen_tenant_id()
        if tenant_id is None:
            return cleaned
        problems: dict[str, list[Any]] = {}
        for name, field in self.fields.items():
            if name == self.tenant_field or not isinstance(field, forms.ModelChoiceField):
                continue
            value = cleaned.get(name)
            if isinstance(field, forms.ModelMultipleChoiceField):
                chosen = list(value or [])
            else:
                chosen = [] if value is None else [value]
            foreign = [
                obj
                for obj in chosen
                if not isinstance(obj, Tenant) and getattr(obj, "tenant_id", tenant_id) != tenant_id
            ]
            if foreign:
                problems[name] = foreign
        if problems:
            tenant = Tenant.objects.filter(pk=tenant_id).first()
            for name, foreign in problems.items():
                plural = self.fields[name].queryset.model._meta.verbose_name_plural
                names = ", ".join(str(obj) for obj in foreign)
                self.add_error(
                    name,
                    f"{names}: of another tenant. Choose {plural} of {tenant}, the tenant of "
                    "this object.",
                )
        return cleaned

    def _chosen_tenant_id(self) -> int | None:
        if self.tenant_field in self.fields:
            tenant = self.cleaned_data.get(self.tenant_field)
            return tenant.pk if tenant is not None else None
        try:
            return self.instance.tenant_id
        except (AttributeError, ObjectDoesNotExist):
            return None

    def _get_validation_exclusions(self) -> set[str]:
        exclude = super()._get_validation_exclusions()
        # Once set, the tenant is read-only and so not on the form; keep it in model validation
        # anyway, or per-tenant unique names would go unchecked and fail in the database.
        tenant_is_set = getattr(self.instance, f"{self.tenant_field}_id", None) is not None
        if self.instance.pk is not None and tenant_is_set:
            exclude.discard(self.tenant_field)
        return exclude


class DeviceForm(TenantScopedModelForm):
    attributes = JSONObjectField(
        example='{"site": "north", "rack": 4}',
        help_text='Free-form facts about the device as a JSON object, e.g. {"site": "north"}.',
    )

    class Meta:
        model = Device
        fields = [
            "tenant",
            "key",
            "name",
            "device_type",
            "groups",
            "is_enabled",
            "location",
            "latitude",
            "longitude",
            "firmware_version",
            "tags",
            "attributes",
        ]
        help_texts = {"tags": "Separate tags with commas, e.g. cold-room, critical."}


class DeviceShadowForm(TenantScopedModelForm):
    desired = JSONObjectField(
        help_text="The whole desired state as a JSON object; the device receives what differs "
        "from what it reports."
    )
    # The version the operator saw: saving over a shadow that changed since is refused.
    based_on_version = forms.IntegerField(widget=forms.HiddenInput, min_value=0)

    class Meta:
        model = DeviceShadow
        fields = ["desired"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["based_on_version"].initial = self.instance.version

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        seen = cleaned.get("based_on_version")
        current = DeviceShadow.objects.filter(pk=self.instance.pk).values_list("version", flat=True)
        now = current.first()
        if seen is not None and now is not None and seen != now and "desired" in self.changed_data:
            raise forms.ValidationError(
                f"The shadow changed since you opened this page (version {seen}, now {now}): "
                "reload the page, check the desired state and apply your change again."
            )
        return cleaned


class UsernameField(forms.ModelChoiceField):
    """Pick a user by typing their username, so the form never lists every account."""

    widget = forms.TextInput(attrs={"autocomplete": "off"})
    default_error_messages = {
        "invalid_choice": "No active user is called “%(value)s”: check the spelling, or ask a "
        "superuser to create the account first."
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs["queryset"] = get_user_model().objects.filter(is_active=True)
        kwargs["to_field_name"] = get_user_model().USERNAME_FIELD
        kwargs.setdefault("help_text", "The username of an existing account.")
        super().__init__(**kwargs)


class TenantLabelledChoiceField(forms.ModelChoiceField):
    """Labels rows "Tenant / name" when they come from several tenants (names may repeat)."""

    def __init__(self, queryset: QuerySet, **kwargs: Any) -> None:
        super().__init__(queryset=queryset, **kwargs)
        self.show_tenant = queryset.order_by().values("tenant").distinct().count() > 1

    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.tenant} / {obj}" if self.show_tenant else str(obj)


class MoveToGroupForm(forms.Form):
    def __init__(self, *args: Any, groups: QuerySet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["group"] = TenantLabelledChoiceField(
            queryset=groups.select_related("tenant"),
            help_text="Devices join the group if they belong to its tenant; others are left out.",
        )


class AddTagForm(forms.Form):
    tag = forms.CharField(
        max_length=64, help_text="One tag of up to 64 characters, e.g. cold-room."
    )

    def clean_tag(self) -> str:
        tag = self.cleaned_data["tag"].strip()
        if "," in tag:
            raise ValidationError("A tag cannot contain a comma: add one tag at a time.")
        return tag


class ConfirmForm(forms.Form):
    """An action page with nothing to fill in, only a confirmation."""


class DeviceImportForm(forms.Form):
    tenant = forms.ModelChoiceField(
        queryset=Tenant.objects.none(), help_text="The tenant the devices will belong to."
    )
    file = forms.FileField(
        label="CSV file",
        help_text="UTF-8 CSV with a header row; see the columns below.",
    )

    def __init__(self, *args: Any, tenants: QuerySet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants
        only = list(tenants[:2])
        if len(only) == 1:
            self.fields["tenant"].initial = only[0].pk


# --- Dashboard pages ------------------------------------------------------------------------------

DEVICE_SORTS = {
    "key": ("key",),
    "name": ("name", "key"),
    "-last_seen": ("-last_seen", "key"),
    "status": ("status", "key"),
    "type": ("device_type__name", "key"),
}


class DeviceFilterForm(forms.Form):
    """The device list's search and filters (GET). A value that is not valid (another tenant's
    group, an unknown status) is shown as an error and left out of the filter."""

    q = forms.CharField(
        required=False,
        max_length=100,
        label="Search",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Key, name, location or tag"}
        ),
    )
    status = forms.ChoiceField(choices=[("", "Any status"), *DeviceStatus.choices], required=False)
    alerting = forms.BooleanField(required=False, label="Only alerting")
    type = forms.ModelChoiceField(
        queryset=DeviceType.objects.none(), required=False, empty_label="Any type"
    )
    group = forms.ChoiceField(required=False)
    sort = forms.ChoiceField(
        required=False,
        choices=[
            ("key", "Key"),
            ("name", "Name"),
            ("-last_seen", "Last seen"),
            ("status", "Status"),
            ("type", "Type"),
        ],
    )

    def __init__(self, data: Any, user: Any) -> None:
        super().__init__(data)
        self.fields["type"].queryset = DeviceType.objects.for_user(user).select_related("tenant")
        groups = DeviceGroup.objects.for_user(user).values_list("pk", "name")
        self.fields["group"].choices = [
            ("", "Any group"),
            ("none", "No group"),
            *((str(pk), name) for pk, name in groups),
        ]

    def filter(self, devices: QuerySet) -> QuerySet:
        data = self.cleaned_data if self.is_bound else {}
        if data.get("q"):
            text = data["q"].strip()
            devices = devices.filter(
                Q(key__icontains=text)
                | Q(name__icontains=text)
                | Q(location__icontains=text)
                | Q(tags__contains=[text])
            )
        if data.get("status"):
            devices = devices.filter(status=data["status"])
        if data.get("alerting"):
            from alerts.models import Alert, AlertState  # alerts builds on devices

            devices = devices.filter(
                pk__in=Alert.objects.exclude(state=AlertState.RESOLVED).values("device_id")
            )
        if data.get("type"):
            devices = devices.filter(device_type=data["type"])
        if data.get("group") == "none":
            devices = devices.filter(groups__isnull=True)
        elif data.get("group"):
            devices = devices.filter(groups=int(data["group"]))
        return devices.order_by(*DEVICE_SORTS.get(data.get("sort") or "key", ("key",)))

    @property
    def narrows_by_state(self) -> bool:
        """Whether rows may come and go as devices change state (not only change in place)."""
        data = self.cleaned_data if self.is_bound else {}
        return bool(
            data.get("status")
            or data.get("alerting")
            or data.get("sort") in {"-last_seen", "status"}
        )


class DesiredEditForm(forms.Form):
    """The device page's edit of the whole desired state. Refused if someone else changed the
    desired state since the page was loaded (reports from the device do not count)."""

    desired = JSONObjectField(
        example='{"reporting_interval": 30}',
        help_text="The whole desired state as a JSON object; the device receives what differs "
        "from what it reports.",
    )
    seen = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, shadow: DeviceShadow | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shadow = shadow
        current = shadow.desired if shadow else {}
        self.fields["desired"].initial = current
        self.fields["seen"].initial = json.dumps(current, sort_keys=True)
        self.fields["desired"].widget.attrs.update({"rows": 8, "class": ""})

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        try:
            seen = json.loads(cleaned.get("seen") or "{}")
        except ValueError:
            seen = None
        current = self.shadow.desired if self.shadow else {}
        if seen != current:
            raise ValidationError(
                "Someone changed the desired state since you opened this page: check the "
                "current state (shown above) and apply your change again."
            )
        return cleaned


class CommandForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "e.g. reboot", "list": "command-names"}),
    )
    params = JSONObjectField(
        label="Parameters",
        example='{"level": 2}',
        initial=dict,
        help_text="A JSON object; empty for none.",
    )
    timeout = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=7 * 86400,
        label="Answer within (s)",
        widget=forms.NumberInput(attrs={"placeholder": "60"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["params"].widget.attrs.update({"rows": 3, "class": ""})


class GroupDesiredForm(forms.Form):
    patch = JSONObjectField(
        label="Change",
        example='{"reporting_interval": 30}',
        initial=dict,
        help_text="Merged into the desired state of the group and of each of its devices; a "
        "null removes a key.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["patch"].widget.attrs.update({"rows": 4, "class": ""})

    def clean_patch(self) -> dict:
        patch = self.cleaned_data["patch"]
        if not patch:
            raise ValidationError('Give at least one key, e.g. {"reporting_interval": 30}.')
        return patch
