"""Devices (list, badges, actions, add with a one-time secret, CSV import) and their shadows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, LogEntry
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms import Form, ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from devices import services
from devices.admin.tenancy import TenantScopedAdmin, TenantScopedFilter
from devices.broker_accounts import BrokerAccountError
from devices.device_import import (
    COLUMNS,
    LIST_SEPARATOR,
    REQUIRED_COLUMNS,
    ImportResult,
    import_devices,
)
from devices.forms import (
    AddTagForm,
    ConfirmForm,
    DeviceForm,
    DeviceImportForm,
    DeviceShadowForm,
    MoveToGroupForm,
)
from devices.models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceStatus,
    Role,
    Tenant,
)
from telemetry.admin import DEVICE_TELEMETRY_FIELDS, DEVICE_TELEMETRY_FIELDSET

# --- Devices ------------------------------------------------------------------------------------

STATUS_COLOURS = {
    DeviceStatus.ONLINE: "#2e7d32",
    DeviceStatus.OFFLINE: "#757575",
    DeviceStatus.MAINTENANCE: "#e69500",
}


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _when(moment: Any) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else "never"


def shadow_summary(shadow: DeviceShadow) -> SafeString:
    """The shadow's three documents side by side, read-only, with version and timestamps."""
    documents = format_html_join(
        "",
        '<div><strong>{}</strong><pre style="margin:4px 0;white-space:pre-wrap">{}</pre></div>',
        (
            (label, pretty_json(value))
            for label, value in (
                ("Desired", shadow.desired),
                ("Reported", shadow.reported),
                ("Delta (desired, not yet reported)", shadow.delta),
            )
        ),
    )
    return format_html(
        "<div>Version {} · {} · desired changed {} · reported {}</div>"
        '<div style="display:flex;gap:2em;flex-wrap:wrap">{}</div>'
        '<div><a href="{}">Open the shadow</a> to change the desired state.</div>',
        shadow.version,
        "in sync" if shadow.in_sync else "waiting for the device",
        _when(shadow.desired_updated_at),
        _when(shadow.reported_updated_at),
        documents,
        reverse("admin:devices_deviceshadow_change", args=[shadow.pk]),
    )


def credentials_csv_href(credentials: Iterable[services.NewCredential]) -> str:
    """A data: URL of the secrets as CSV, so the browser saves them and the server keeps none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["key", "name", "tenant", "secret"])
    for credential in credentials:
        device = credential.device
        writer.writerow([device.key, device.name, device.tenant.name, credential.secret])
    return "data:text/csv;charset=utf-8," + quote(buffer.getvalue())


@admin.register(Device)
class DeviceAdmin(TenantScopedAdmin):
    form = DeviceForm
    list_display = [
        "key",
        "name",
        "device_type",
        "status_badge",
        "last_seen",
        "firmware_version",
        "tenant",
    ]
    list_display_links = ["key", "name"]
    list_filter = [
        "status",
        ("tenant", TenantScopedFilter),
        ("device_type", TenantScopedFilter),
        ("groups", TenantScopedFilter),
        "is_enabled",
    ]
    list_select_related = ["tenant", "device_type"]
    search_fields = ["key", "name", "location", "tags"]
    search_help_text = "Key, name, location or tag."
    filter_horizontal = ["groups"]
    readonly_fields = [
        "status",
        "last_seen",
        "credential_rotated_at",
        "created_at",
        "updated_at",
        "shadow_state",
        *DEVICE_TELEMETRY_FIELDS,
    ]
    actions = [
        "move_to_group",
        "add_tag",
        "rotate_credentials",
        "put_in_maintenance",
        "take_out_of_maintenance",
    ]
    edit_fieldsets = [
        (None, {"fields": ["tenant", "key", "name", "device_type", "groups", "is_enabled"]}),
        ("Location", {"fields": ["location", "latitude", "longitude"]}),
        ("Details", {"fields": ["firmware_version", "tags", "attributes"]}),
    ]
    state_fieldsets = [
        (
            "State",
            {
                "fields": [
                    "status",
                    "last_seen",
                    "credential_rotated_at",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
        ("Shadow", {"fields": ["shadow_state"]}),
        DEVICE_TELEMETRY_FIELDSET,
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list:
        return self.edit_fieldsets if obj is None else self.edit_fieldsets + self.state_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        # The key is the device's MQTT username: changing it would cut the device off.
        return [*fields, "key"] if obj is not None else fields

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Device) -> SafeString:
        return format_html(
            '<span style="background:{};color:#fff;padding:2px 8px;border-radius:9px;'
            'font-size:11px;white-space:nowrap">{}</span>',
            STATUS_COLOURS.get(obj.status, "#757575"),
            obj.get_status_display(),
        )

    @admin.display(description="Shadow")
    def shadow_state(self, obj: Device) -> SafeString | str:
        shadow = DeviceShadow.objects.filter(device=obj).first()
        return shadow_summary(shadow) if shadow is not None else "No shadow yet."

    # Adding goes through create_device(), which hashes the credential, makes the shadow and the
    # device's MQTT account; the secret lives only on this request until the response shows it.
    # Changing goes through update_device(), deleting through delete_devices(). If the broker does
    # not take the change, the transaction rolls back and the operator is told what to do.

    def save_model(self, request: HttpRequest, obj: Device, form: Any, change: bool) -> None:
        if change:
            changes = {
                name: form.cleaned_data[name]
                for name in form.changed_data
                if name in services.UPDATABLE_FIELDS or name == "groups"
            }
            services.update_device(obj, **changes)
            return
        data = dict(form.cleaned_data)
        credential = services.create_device(
            tenant=data.pop("tenant"),
            key=data.pop("key"),
            name=data.pop("name"),
            device_type=data.pop("device_type"),
            groups=data.pop("groups", None) or (),
            **data,
        )
        device = credential.device
        for field in Device._meta.concrete_fields:
            setattr(obj, field.attname, getattr(device, field.attname))
        obj._state.adding = False
        obj._state.db = device._state.db
        request._iotfleet_new_credentials = [credential]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The groups were set by create_device() / update_device(); only formsets are left.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: Device) -> None:
        services.delete_devices([obj])

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A shadow goes with its device: its admin refuses deleting one on its own, not this.
        perms_needed.discard(DeviceShadow._meta.verbose_name)
        return deleted, model_count, perms_needed, protected

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.delete_devices(queryset)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except BrokerAccountError as error:
            # Nothing was saved (the transaction rolled back): the same form again, with why.
            request._iotfleet_broker_error = error
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        form = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "_iotfleet_broker_error", None)
        return form if error is None else _refused_by_broker(form, error)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except BrokerAccountError as error:
            self.message_user(request, _not_saved(error), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        if request.method != "POST":
            return super().changelist_view(request, extra_context)
        # Actions (delete, rotate credentials) change the broker too: all or nothing.
        try:
            with transaction.atomic():
                return super().changelist_view(request, extra_context)
        except BrokerAccountError as error:
            self.message_user(request, _not_saved(error), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def response_add(
        self, request: HttpRequest, obj: Device, post_url_continue: str | None = None
    ) -> HttpResponse:
        credentials = getattr(request, "_iotfleet_new_credentials", None)
        if not credentials:
            return super().response_add(request, obj, post_url_continue)
        return self.credentials_page(
            request,
            credentials,
            title=f"Device {obj.key} added",
            intro="The device was created. Configure it with this secret as its MQTT password.",
        )

    def credentials_page(
        self,
        request: HttpRequest,
        credentials: Sequence[services.NewCredential],
        *,
        title: str,
        intro: str,
        skipped: int = 0,
    ) -> TemplateResponse:
        """Each device's key and new secret, shown this once; the response must not be cached."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "intro": intro,
            "credentials": credentials,
            "csv_href": credentials_csv_href(credentials),
            "skipped": skipped,
        }
        response = TemplateResponse(request, "admin/devices/device/credentials.html", context)
        add_never_cache_headers(response)
        return response

    # --- Actions: each acts only on selected devices the user may change --------------------

    def changeable(self, request: HttpRequest, queryset: QuerySet) -> tuple[list[Device], int]:
        """The selected devices in tenants where the user is an operator, and how many are not."""
        devices = list(queryset.for_user(request.user, role=Role.OPERATOR).select_related("tenant"))
        return devices, queryset.count() - len(devices)

    def action_page(
        self,
        request: HttpRequest,
        *,
        action: str,
        title: str,
        intro: str,
        form: Form,
        devices: list[Device],
        skipped: int,
        submit: str,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "intro": intro,
            "form": form,
            "devices": devices,
            "skipped": skipped,
            "action": action,
            "submit": submit,
            # The page posts back the original selection; the changelist rebuilds the queryset
            # from it (and its filters, kept in the URL), and the action re-checks every device.
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/devices/device/action.html", context)

    def report(self, request: HttpRequest, message: str, skipped: int) -> None:
        self.message_user(request, message, messages.SUCCESS)
        if skipped:
            self.message_user(request, _skipped_message(skipped), messages.WARNING)

    def nothing_changeable(self, request: HttpRequest) -> None:
        self.message_user(
            request,
            "None of the selected devices is in a tenant where you are an operator, so nothing "
            "changed. Ask a tenant admin for operator rights.",
            messages.ERROR,
        )

    @admin.action(description="Move to group…", permissions=["change"])
    def move_to_group(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        devices, skipped = self.changeable(request, queryset)
        if not devices:
            return self.nothing_changeable(request)
        groups = DeviceGroup.objects.for_user(request.user, role=Role.OPERATOR).filter(
            tenant__in={device.tenant_id for device in devices}
        )
        form = MoveToGroupForm(_applied(request), groups=groups)
        if form.is_valid():
            group = form.cleaned_data["group"]
            added = services.add_devices_to_group(devices, group)
            message = f"Added {added} device(s) to the group “{group}”."
            if added < len(devices):
                message += (
                    f" {len(devices) - added} device(s) of other tenants were left out: a group "
                    "holds only devices of its own tenant."
                )
            self.report(request, message, skipped)
            return None
        return self.action_page(
            request,
            action="move_to_group",
            title="Move devices to a group",
            intro="The devices join the group and stay in their other groups."
            + ("" if groups.exists() else " Their tenant has no groups yet: add one first."),
            form=form,
            devices=devices,
            skipped=skipped,
            submit="Move to group",
        )

    @admin.action(description="Add a tag…", permissions=["change"])
    def add_tag(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        devices, skipped = self.changeable(request, queryset)
        if not devices:
            return self.nothing_changeable(request)
        form = AddTagForm(_applied(request))
        if form.is_valid():
            tag = form.cleaned_data["tag"]
            tagged = services.add_tag(devices, tag)
            message = f"Tagged {tagged} device(s) with “{tag}”."
            if tagged < len(devices):
                message += f" {len(devices) - tagged} already had it."
            self.report(request, message, skipped)
            return None
        return self.action_page(
            request,
            action="add_tag",
            title="Add a tag to devices",
            intro="Each device gets the tag once; devices that have it already stay as they are.",
            form=form,
            devices=devices,
            skipped=skipped,
            submit="Add tag",
        )

    @admin.action(description="Rotate credentials…", permissions=["change"])
    def rotate_credentials(
        self, request: HttpRequest, queryset: QuerySet
    ) -> TemplateResponse | None:
        devices, skipped = self.changeable(request, queryset)
        if not devices:
            return self.nothing_changeable(request)
        form = ConfirmForm(_applied(request))
        if not form.is_valid():
            return self.action_page(
                request,
                action="rotate_credentials",
                title="Rotate device credentials",
                intro="Each device gets a new secret and its current one stops working at once: "
                "the device cannot connect until it is configured with the new secret, "
                "which the next page shows once.",
                form=form,
                devices=devices,
                skipped=skipped,
                submit="Rotate credentials",
            )
        with transaction.atomic():
            credentials = services.rotate_credentials_of(devices)
            for device in devices:
                self.log_change(request, device, "Rotated the device credentials.")
        return self.credentials_page(
            request,
            credentials,
            title="New device credentials",
            intro="The old secrets no longer work. Configure each device with its new secret.",
            skipped=skipped,
        )

    @admin.action(description="Put in maintenance", permissions=["change"])
    def put_in_maintenance(self, request: HttpRequest, queryset: QuerySet) -> None:
        devices, skipped = self.changeable(request, queryset)
        if not devices:
            return self.nothing_changeable(request)
        changed = services.set_maintenance(devices, on=True)
        self.report(request, f"Put {changed} device(s) in maintenance.", skipped)
        return None

    @admin.action(description="Take out of maintenance", permissions=["change"])
    def take_out_of_maintenance(self, request: HttpRequest, queryset: QuerySet) -> None:
        devices, skipped = self.changeable(request, queryset)
        if not devices:
            return self.nothing_changeable(request)
        changed = services.set_maintenance(devices, on=False)
        self.report(
            request,
            f"Took {changed} device(s) out of maintenance; they count as offline until heard.",
            skipped,
        )
        return None

    # --- CSV import -------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_import",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        tenants = Tenant.objects.for_user(request.user, role=Role.OPERATOR)
        if request.method == "POST":
            form = DeviceImportForm(request.POST, request.FILES, tenants=tenants)
        else:
            form = DeviceImportForm(tenants=tenants)
        errors: list[str] = []
        if form.is_valid():
            tenant = form.cleaned_data["tenant"]
            try:
                result = import_devices(tenant, form.cleaned_data["file"])
            except BrokerAccountError as error:
                result = ImportResult(errors=[(None, _not_saved(error))])
            if result.ok:
                LogEntry.objects.log_actions(
                    request.user.pk,
                    [credential.device for credential in result.created],
                    ADDITION,
                    "Imported from a CSV file.",
                )
                return self.credentials_page(
                    request,
                    result.created,
                    title=f"Imported {len(result.created)} devices into {tenant}",
                    intro="Every device was created. Configure each with its secret.",
                )
            errors = result.error_messages()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import devices from a CSV file",
            "form": form,
            "errors": errors,
            "columns": COLUMNS,
            "required_columns": REQUIRED_COLUMNS,
            "separator": LIST_SEPARATOR,
        }
        return TemplateResponse(request, "admin/devices/device/import.html", context)


def _not_saved(error: BrokerAccountError) -> str:
    return f"Nothing was saved: the MQTT broker did not take the change. {error}"


def _refused_by_broker(form: type[ModelForm], error: BrokerAccountError) -> type[ModelForm]:
    """The device form, failing validation with the broker's refusal so the operator's input is
    shown again with what to do."""

    class RefusedByBroker(form):  # type: ignore[valid-type, misc]
        def clean(self) -> dict[str, Any]:
            super().clean()
            raise ValidationError(_not_saved(error))

    return RefusedByBroker


def _applied(request: HttpRequest) -> Any:
    """The posted data once the action page was submitted (its `apply` button), else None."""
    return request.POST if "apply" in request.POST else None


def _skipped_message(skipped: int) -> str:
    return (
        f"{skipped} selected device(s) were left alone: you may only view them. Ask a tenant "
        "admin for operator rights."
    )


@admin.register(DeviceShadow)
class DeviceShadowAdmin(TenantScopedAdmin):
    """Operators edit the desired state; the rest is what the device reports, read-only."""

    form = DeviceShadowForm
    list_display = [
        "device",
        "tenant",
        "version",
        "in_sync",
        "desired_updated_at",
        "reported_updated_at",
    ]
    list_select_related = ["device", "device__tenant"]
    list_filter = [("device__tenant", TenantScopedFilter)]
    search_fields = ["device__key", "device__name"]
    ordering = ["device__key"]
    fields = [
        "device",
        "desired",
        "based_on_version",
        "reported_document",
        "delta_document",
        "version",
        "desired_updated_at",
        "reported_updated_at",
        "updated_at",
    ]
    readonly_fields = [
        "device",
        "reported_document",
        "delta_document",
        "version",
        "desired_updated_at",
        "reported_updated_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # every device gets its shadow from create_device()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a shadow goes with its device

    def save_model(self, request: HttpRequest, obj: DeviceShadow, form: Any, change: bool) -> None:
        if "desired" in form.changed_data:
            try:
                services.replace_desired(
                    obj.device,
                    form.cleaned_data["desired"],
                    expected_version=form.cleaned_data["based_on_version"],
                )
            except services.ShadowVersionConflict as conflict:
                # The device reported between the form's check and this save.
                self.message_user(request, str(conflict), messages.ERROR)
        obj.refresh_from_db()

    @admin.display(description="Tenant", ordering="device__tenant__name")
    def tenant(self, obj: DeviceShadow) -> str:
        return str(obj.device.tenant)

    @admin.display(description="In sync", boolean=True)
    def in_sync(self, obj: DeviceShadow) -> bool:
        return obj.in_sync

    @admin.display(description="Reported")
    def reported_document(self, obj: DeviceShadow) -> SafeString:
        return format_html('<pre style="margin:0">{}</pre>', pretty_json(obj.reported))

    @admin.display(description="Delta (desired, not yet reported)")
    def delta_document(self, obj: DeviceShadow) -> SafeString:
        return format_html('<pre style="margin:0">{}</pre>', pretty_json(obj.delta))
