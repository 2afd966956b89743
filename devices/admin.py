"""The admin, the operator's main tool, showing each user only the tenants they belong to.

`TenantScopedAdmin` (and `TenantScopedInline`) is the base every tenant-scoped admin builds on, in
this app and others. It needs a model whose manager is a `TenantQuerySet` and whose instances have
`tenant_id`, and gives:

- rows: `Model.objects.for_user(user)`, so other tenants' rows do not exist for the user;
- reading: any membership (an object: viewer or more in its tenant); so a viewer gets Django's
  read-only pages;
- adding, changing, deleting: `write_role` (operator by default) in the object's tenant, or in
  any tenant when there is no object yet; superusers may do everything;
- forms: the `tenant` choices are the tenants where the user holds `write_role` (preselected when
  there is one), every other related choice is limited to the user's tenants, related rows of
  another tenant than the object's are refused, and the tenant is read-only once set.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import models, transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from . import services
from .device_import import COLUMNS, LIST_SEPARATOR, REQUIRED_COLUMNS, import_devices
from .forms import (
    AddTagForm,
    ConfirmForm,
    DeviceForm,
    DeviceImportForm,
    DeviceShadowForm,
    MoveToGroupForm,
    TenantScopedModelForm,
    UsernameField,
)
from .models import (
    Device,
    DeviceGroup,
    DeviceShadow,
    DeviceStatus,
    DeviceType,
    Membership,
    Metric,
    Role,
    Tenant,
    TenantQuerySet,
    has_role,
)

# --- Who may do what ----------------------------------------------------------------------------


def roles_held(request: HttpRequest) -> set[str]:
    """The roles the user holds in any tenant, looked up once per request."""
    held = getattr(request, "_iotfleet_roles_held", None)
    if held is None:
        user = request.user
        held = (
            set(Membership.objects.filter(user=user).values_list("role", flat=True))
            if user.is_authenticated
            else set()
        )
        request._iotfleet_roles_held = held
    return held


def holds_role_anywhere(request: HttpRequest, role: str) -> bool:
    """Whether the user holds at least `role` in some tenant (superusers: always)."""
    user = request.user
    if not user.is_active:
        return False
    return user.is_superuser or bool(roles_held(request) & set(Role.at_least(role)))


def holds_role_for(request: HttpRequest, obj: Any, role: str) -> bool:
    """Whether the user holds at least `role` in the tenant of `obj`."""
    return request.user.is_active and has_role(request.user, obj.tenant_id, role)


class TenantScopedFilter(admin.RelatedFieldListFilter):
    """A related-field filter offering only rows of the user's tenants.

    The stock filter lists every row of the related table, which would show one tenant's group
    and type names to another. Names that may repeat across tenants get the tenant as a prefix.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list:
        related = field.remote_field.model
        queryset = related._default_manager.all()
        if isinstance(queryset, TenantQuerySet):
            queryset = queryset.for_user(request.user)
        else:
            # Not tenant-scoped: offer only the rows that the user's visible objects point at.
            used = model_admin.get_queryset(request).values_list(f"{self.field_path}__pk")
            queryset = queryset.filter(pk__in=used)
        ordering = self.field_admin_ordering(field, request, model_admin)
        if ordering:
            queryset = queryset.order_by(*ordering)
        rows = list(queryset)
        tenant_ids = {getattr(row, "tenant_id", None) for row in rows}
        if related is Tenant or len(tenant_ids) < 2:
            return [(row.pk, str(row)) for row in rows]
        names = dict(Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", "name"))
        return [(row.pk, f"{names.get(row.tenant_id, '?')} / {row}") for row in rows]


class _TenantScopedChoices:
    """Rows and form choices limited to the user's tenants; shared by admins and inlines."""

    write_role: str = Role.OPERATOR
    form = TenantScopedModelForm

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).for_user(request.user)

    def get_field_queryset(self, db: str | None, db_field: Any, request: HttpRequest) -> Any:
        related = db_field.remote_field.model
        queryset = super().get_field_queryset(db, db_field, request)
        base = queryset if queryset is not None else related._default_manager.using(db).all()
        if not isinstance(base, TenantQuerySet):
            return queryset
        # New rows go only into tenants where the user may write; other choices need membership.
        role = self.write_role if related is Tenant else Role.VIEWER
        return base.for_user(request.user, role=role)


class TenantScopedAdmin(_TenantScopedChoices, admin.ModelAdmin):
    """The base of every tenant-scoped admin; see the module docstring."""

    tenant_field = "tenant"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.VIEWER)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, Role.VIEWER)
        return holds_role_for(request, obj, Role.VIEWER)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, self.write_role)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, self.write_role)
        return holds_role_for(request, obj, self.write_role)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request, obj)

    def has_tenant_field(self) -> bool:
        try:
            field = self.model._meta.get_field(self.tenant_field)
        except FieldDoesNotExist:
            return False
        return field.many_to_one and field.related_model is Tenant

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        # Moving a row to another tenant would strand its related rows; create it anew instead.
        if obj is not None and self.has_tenant_field() and self.tenant_field not in fields:
            fields.append(self.tenant_field)
        return fields

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        if self.has_tenant_field() and self.tenant_field not in initial:
            writable = list(Tenant.objects.for_user(request.user, role=self.write_role)[:2])
            if len(writable) == 1:
                initial[self.tenant_field] = writable[0].pk
        return initial


class TenantScopedInline(_TenantScopedChoices, admin.TabularInline):
    """Inline rows of a tenant-scoped parent: the parent's tenant decides what the user may do."""

    extra = 0

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, Role.VIEWER)
        return holds_role_for(request, obj, Role.VIEWER)

    def has_add_permission(self, request: HttpRequest, obj: Any) -> bool:
        return self.has_change_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, self.write_role)
        return holds_role_for(request, obj, self.write_role)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request, obj)


def count_of(model: type[models.Model], fk: str) -> Coalesce:
    """A subquery counting `model` rows pointing at the outer row (no join fan-out)."""
    rows = (
        model._default_manager.filter(**{fk: OuterRef("pk")})
        .order_by()
        .values(fk)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rows), 0)


# --- Tenants and memberships --------------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    """Members see their tenants; tenant admins may rename them; only superusers add or delete."""

    write_role = Role.ADMIN
    list_display = ["name", "slug", "your_role", "member_count", "device_count", "created_at"]
    search_fields = ["name", "slug"]
    fields = ["name", "slug"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        role = Membership.objects.filter(tenant=OuterRef("pk"), user=request.user).values("role")
        return (
            super()
            .get_queryset(request)
            .annotate(
                your_role_value=Subquery(role[:1]),
                member_count=count_of(Membership, "tenant"),
                device_count=count_of(Device, "tenant"),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # API clients name the tenant by its slug (X-Tenant): only superusers change it.
            fields.append("slug")
        return fields

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict:
        return {"slug": ("name",)} if obj is None else {}

    @admin.display(description="Your role")
    def your_role(self, obj: Tenant) -> str:
        if obj.your_role_value:
            return Role(obj.your_role_value).label
        return "Superuser"

    @admin.display(description="Members", ordering="member_count")
    def member_count(self, obj: Tenant) -> int:
        return obj.member_count

    @admin.display(description="Devices", ordering="device_count")
    def device_count(self, obj: Tenant) -> int:
        return obj.device_count


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    """Tenant admins manage their tenant's members; viewers and operators only see them."""

    write_role = Role.ADMIN
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", ("tenant", TenantScopedFilter)]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__name"]
    fields = ["user", "tenant", "role"]

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            # Typing a username instead of picking from a list keeps other tenants' users hidden
            # (and no add/view links to the superuser-only user admin are offered).
            return UsernameField(label="User")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "user"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        membership = services.add_member(obj.user, obj.tenant, obj.role)
        obj.pk = membership.pk
        obj.created_at = membership.created_at
        obj._state.adding = False


# --- Device types and groups --------------------------------------------------------------------


class MetricInline(TenantScopedInline):
    model = Metric
    fields = ["name", "unit", "min_value", "max_value"]


@admin.register(DeviceType)
class DeviceTypeAdmin(TenantScopedAdmin):
    list_display = ["name", "tenant", "heartbeat_timeout", "metric_count", "device_count"]
    list_filter = [("tenant", TenantScopedFilter)]
    list_select_related = ["tenant"]
    search_fields = ["name", "description"]
    fields = ["tenant", "name", "description", "heartbeat_timeout"]
    inlines = [MetricInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                metric_count=count_of(Metric, "device_type"),
                device_count=count_of(Device, "device_type"),
            )
        )

    @admin.display(description="Metrics", ordering="metric_count")
    def metric_count(self, obj: DeviceType) -> int:
        return obj.metric_count

    @admin.display(description="Devices", ordering="device_count")
    def device_count(self, obj: DeviceType) -> int:
        return obj.device_count


@admin.register(DeviceGroup)
class DeviceGroupAdmin(TenantScopedAdmin):
    list_display = ["name", "tenant", "device_count", "description"]
    list_filter = [("tenant", TenantScopedFilter)]
    list_select_related = ["tenant"]
    search_fields = ["name", "description"]
    fields = ["tenant", "name", "description"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(device_count=Count("devices"))

    @admin.display(description="Devices", ordering="device_count")
    def device_count(self, obj: DeviceGroup) -> int:
        return obj.device_count


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

    # Adding goes through create_device(), which hashes the credential and makes the shadow; the
    # secret lives only on this request until the response shows it.

    def save_model(self, request: HttpRequest, obj: Device, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
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
            credentials = [services.rotate_credentials(device) for device in devices]
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
            result = import_devices(tenant, form.cleaned_data["file"])
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
            services.replace_desired(obj.device, form.cleaned_data["desired"])
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


# --- API tokens ---------------------------------------------------------------------------------

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class OwnTokenAdmin(TokenAdmin):
    """API tokens: members see, create and delete only their own; superusers see everyone's.

    The token's text is its key, so log entries and messages name its user instead.
    """

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        return ["user"] if request.user.is_superuser else []

    def has_module_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.VIEWER)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if request.user.is_active and request.user.is_superuser:
            return True
        has_token = Token.objects.filter(user=request.user).exists()
        return holds_role_anywhere(request, Role.VIEWER) and not has_token

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a token is created or deleted, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def _owns(self, request: HttpRequest, obj: Any) -> bool:
        user = request.user
        if user.is_active and user.is_superuser:
            return True
        if not holds_role_anywhere(request, Role.VIEWER):
            return False
        return obj is None or obj.user_id == user.pk

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not request.user.is_superuser:
            obj.user = request.user
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: str | None = None
    ) -> HttpResponse:
        self.message_user(request, f"Created an API token for {obj.user}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:authtoken_tokenproxy_changelist"))

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        return super().response_delete(request, "API token", obj_id)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        _log_tokens(request, [obj], ADDITION, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        _log_tokens(request, [obj], CHANGE, message)

    def log_deletions(self, request: HttpRequest, queryset: Iterable[Any]) -> None:
        _log_tokens(request, queryset, DELETION, "")


def _log_tokens(request: HttpRequest, tokens: Iterable[Any], flag: int, message: Any) -> None:
    """Admin log entries naming each token's user, never its key."""
    content_type = ContentType.objects.get_for_model(TokenProxy, for_concrete_model=False)
    if isinstance(message, list):
        message = json.dumps(message)
    LogEntry.objects.bulk_create(
        LogEntry(
            user_id=request.user.pk,
            content_type_id=content_type.pk,
            object_id=str(token.pk),
            object_repr=f"API token of {token.user}"[:200],
            action_flag=flag,
            change_message=message,
        )
        for token in tokens
    )
