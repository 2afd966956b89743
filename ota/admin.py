"""OTA in the admin, tenant-scoped like every admin (devices/admin/tenancy.py).

Releases, keys and rollouts are created on the OTA pages, which run every upload through the
signature check and every rollout through the wizard: the admin's "add" buttons go there. Here
an operator reads everything, edits what may change (a release's notes and device types, a key's
name and whether it is active), and pauses, resumes or aborts rollouts in bulk through
ota/services.py. Device updates are read-only.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from devices.admin.tenancy import ReadOnlyTenantAdmin, TenantScopedAdmin, TenantScopedFilter
from devices.models import Role, has_role

from . import services
from .models import DeviceUpdate, FirmwareRelease, Rollout, RolloutStatus, SigningKey


class AddOnThePages:
    """The admin's add view sends the user to the OTA page that creates the object."""

    add_url_name = ""

    def add_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponseRedirect(reverse(self.add_url_name))


@admin.register(SigningKey)
class SigningKeyAdmin(AddOnThePages, TenantScopedAdmin):
    add_url_name = "ota:key-new"
    list_display = ["name", "tenant", "fingerprint", "is_active", "created_at"]
    list_filter = [("tenant", TenantScopedFilter), "is_active"]
    search_fields = ["name", "fingerprint"]
    fields = ["tenant", "name", "public_key", "fingerprint", "is_active", "created_at"]
    readonly_fields = ["public_key", "fingerprint", "created_at"]


@admin.register(FirmwareRelease)
class FirmwareReleaseAdmin(AddOnThePages, TenantScopedAdmin):
    add_url_name = "ota:release-new"
    list_display = ["version", "tenant", "size", "short_sha256", "signed", "created_at"]
    list_filter = [("tenant", TenantScopedFilter)]
    search_fields = ["version", "notes", "sha256"]
    fields = [
        "tenant",
        "version",
        "device_types",
        "file_name",
        "size",
        "sha256",
        "signature",
        "signing_key",
        "notes",
        "created_by",
        "created_at",
    ]
    readonly_fields = [
        "version",
        "file_name",
        "size",
        "sha256",
        "signature",
        "signing_key",
        "created_by",
        "created_at",
    ]
    filter_horizontal = ["device_types"]

    @admin.display(description="SHA-256")
    def short_sha256(self, release: FirmwareRelease) -> str:
        return release.sha256[:16] + "…"

    @admin.display(description="Signed", boolean=True)
    def signed(self, release: FirmwareRelease) -> bool:
        return release.is_signed

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.rollouts.exists():
            return False  # it stays as the record of what its rollouts sent
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: FirmwareRelease) -> None:
        services.delete_release(obj)


def _bulk(request: HttpRequest, queryset: QuerySet, change: Any, verb: str) -> None:
    done, refused = 0, []
    for rollout in queryset:
        if not has_role(request.user, rollout.tenant_id, Role.OPERATOR):
            refused.append(f"{rollout}: your role does not allow it")
            continue
        try:
            change(rollout, request.user)
            done += 1
        except services.RolloutStateError as error:
            refused.append(f"{rollout}: {error.message}")
    if done:
        messages.success(request, f"{done} rollout(s) {verb}.")
    for problem in refused:
        messages.warning(request, problem)


@admin.register(Rollout)
class RolloutAdmin(AddOnThePages, TenantScopedAdmin):
    add_url_name = "ota:rollout-new"
    list_display = ["name", "tenant", "release", "status", "current_wave", "page", "started_at"]
    list_filter = [("tenant", TenantScopedFilter), "status"]
    search_fields = ["name", "release__version"]
    actions = ["pause", "resume", "abort"]
    exclude = ["groups", "target_devices"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A rollout changes through its page and actions, never by editing its fields.
        return [field.name for field in Rollout._meta.fields]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status != RolloutStatus.DRAFT:
            return False  # a started rollout is history: abort it instead
        return super().has_delete_permission(request, obj)

    @admin.display(description="Page")
    def page(self, rollout: Rollout) -> str:
        return format_html(
            '<a href="{}">progress</a>', reverse("ota:rollout", kwargs={"pk": rollout.pk})
        )

    @admin.action(description="Pause the selected rollouts")
    def pause(self, request: HttpRequest, queryset: QuerySet) -> None:
        _bulk(request, queryset, services.pause_rollout, "paused")

    @admin.action(description="Resume the selected rollouts")
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        _bulk(request, queryset, services.resume_rollout, "resumed")

    @admin.action(
        description="Abort the selected rollouts (devices not sent the job are cancelled)"
    )
    def abort(self, request: HttpRequest, queryset: QuerySet) -> None:
        _bulk(request, queryset, services.abort_rollout, "aborted")


@admin.register(DeviceUpdate)
class DeviceUpdateAdmin(ReadOnlyTenantAdmin):
    list_display = ["device", "rollout", "wave", "state", "progress", "attempts", "reason"]
    list_filter = ["state", "wave", ("rollout", TenantScopedFilter)]
    search_fields = ["device__key", "device__name", "reason"]
    list_select_related = ["device", "rollout"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in DeviceUpdate._meta.fields]
