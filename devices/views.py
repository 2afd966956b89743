"""The devices' operator pages: the device list (`/devices/`) and the device page
(`/devices/<key>/`), with the partials their live sections re-fetch."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from alerts.models import Alert
from dashboards.pages import live_page, paginate
from devices import pages, services
from devices.forms import CommandForm, DesiredEditForm, DeviceFilterForm, GroupDesiredForm
from devices.models import Device, DeviceGroup, Role, has_role
from telemetry.queries import latest_for_devices

PAGE_SIZE = 50
VALUES_IN_LIST = 4


def with_open_alerts(devices: QuerySet) -> QuerySet:
    """Annotate `open_alerts`, the device's unresolved alerts (a subquery: no row per alert)."""
    return devices.annotate(open_alerts=Alert.objects.unresolved().count_per("device"))


def _device_list(request: HttpRequest) -> dict[str, Any]:
    form = DeviceFilterForm(request.GET or None, request.user)
    form.is_valid()  # invalid fields are shown and left out of the filter
    devices = form.filter(
        with_open_alerts(
            Device.objects.for_user(request.user)
            .select_related("device_type", "tenant")
            .prefetch_related("groups")
        )
    )
    listed = paginate(request, devices, PAGE_SIZE)
    page = listed["page"]
    latest = latest_for_devices(device.pk for device in page)
    for device in page:
        device.latest_values = latest.get(device.pk, [])[:VALUES_IN_LIST]
    return {"form": form, "keys": " ".join(device.key for device in page), **listed}


device_list, device_rows = live_page(
    _device_list, "devices/list.html", "devices/partials/rows.html"
)


# --- The device page ----------------------------------------------------------------------------


def _device(request: HttpRequest, key: str) -> Device:
    return get_object_or_404(
        Device.objects.for_user(request.user).select_related("device_type", "tenant", "shadow"),
        key=key,
    )


def _device_page(request: HttpRequest, device: Device, **forms: Any) -> dict[str, Any]:
    span = pages.chart_range(request.GET.get("range"))
    can_operate = has_role(request.user, device.tenant_id, Role.OPERATOR)
    context: dict[str, Any] = {
        "device": device,
        "groups": list(device.groups.all()),
        "can_operate": can_operate,
        "open_alerts": Alert.objects.filter(device=device).unresolved().count(),
        "desired_form": forms.get("desired_form")
        or DesiredEditForm(shadow=getattr(device, "shadow", None)),
        "command_form": forms.get("command_form") or CommandForm(),
    }
    for section in (
        pages.latest(device),
        pages.charts(device, span),
        pages.shadow(device),
        pages.recent_alerts(device),
        pages.recent_commands(device),
        pages.ingest_health(device),
    ):
        context.update(section)
    return context


@require_GET
@login_required
def device_detail(request: HttpRequest, key: str) -> HttpResponse:
    device = _device(request, key)
    return render(request, "devices/detail.html", _device_page(request, device))


SECTIONS = {
    "facts": (
        "devices/partials/facts.html",
        lambda request, device: {"groups": list(device.groups.all())},
    ),
    "latest": ("devices/partials/latest.html", lambda request, device: pages.latest(device)),
    "charts": (
        "devices/partials/charts.html",
        lambda request, device: pages.charts(device, pages.chart_range(request.GET.get("range"))),
    ),
    "shadow": ("devices/partials/shadow.html", lambda request, device: pages.shadow(device)),
    "alerts": (
        "devices/partials/alerts.html",
        lambda request, device: pages.recent_alerts(device),
    ),
    "commands": (
        "devices/partials/commands.html",
        lambda request, device: pages.recent_commands(device),
    ),
}


@require_GET
@login_required
def device_section(request: HttpRequest, key: str, section: str) -> HttpResponse:
    """One live section of the device page, alone."""
    if section not in SECTIONS:
        raise Http404("No such section.")
    device = _device(request, key)
    template, build = SECTIONS[section]
    return render(request, template, {"device": device, **build(request, device)})


def _operator_device(request: HttpRequest, key: str) -> Device:
    device = _device(request, key)
    if not has_role(request.user, device.tenant_id, Role.OPERATOR):
        raise PermissionDenied("Viewers cannot change devices: ask a tenant admin for operator.")
    return device


@require_POST
@login_required
def edit_desired(request: HttpRequest, key: str) -> HttpResponse:
    device = _operator_device(request, key)
    form = DesiredEditForm(request.POST, shadow=getattr(device, "shadow", None))
    if not form.is_valid():
        context = _device_page(request, device, desired_form=form)
        return render(request, "devices/detail.html", context, status=400)
    services.replace_desired(device, form.cleaned_data["desired"])
    messages.success(request, "Desired state saved; it is on its way to the device.")
    return redirect(f"{reverse('devices:detail', args=[device.key])}#shadow")


@require_POST
@login_required
def send_command(request: HttpRequest, key: str) -> HttpResponse:
    device = _operator_device(request, key)
    form = CommandForm(request.POST)
    if form.is_valid():
        timeout = form.cleaned_data["timeout"]
        try:
            command = services.send_command(
                device,
                form.cleaned_data["name"],
                form.cleaned_data["params"],
                user=request.user,
                timeout=timedelta(seconds=timeout) if timeout else None,
            )
        except services.CommandRefused as error:
            for field, problems in error.message_dict.items():
                form.add_error(field if field in form.fields else None, problems)
        else:
            messages.success(request, f"Command {command.name} #{command.pk} queued.")
            return redirect(f"{reverse('devices:detail', args=[device.key])}#commands")
    context = _device_page(request, device, command_form=form)
    return render(request, "devices/detail.html", context, status=400)


# --- Groups: one desired state for all their devices ----------------------------------------


def _group(request: HttpRequest, pk: int) -> DeviceGroup:
    return get_object_or_404(
        DeviceGroup.objects.for_user(request.user).select_related("tenant"), pk=pk
    )


def _group_page(request: HttpRequest, group: DeviceGroup, form: Any = None) -> dict[str, Any]:
    return {
        "group": group,
        "catch_up": services.group_catch_up(group),
        "can_operate": has_role(request.user, group.tenant_id, Role.OPERATOR),
        "form": form or GroupDesiredForm(),
    }


@require_GET
@login_required
def group_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "devices/group.html", _group_page(request, _group(request, pk)))


@require_GET
@login_required
def group_catch_up(request: HttpRequest, pk: int) -> HttpResponse:
    group = _group(request, pk)
    context = {"group": group, "catch_up": services.group_catch_up(group)}
    return render(request, "devices/partials/catch_up.html", context)


@require_POST
@login_required
def edit_group_desired(request: HttpRequest, pk: int) -> HttpResponse:
    group = _group(request, pk)
    if not has_role(request.user, group.tenant_id, Role.OPERATOR):
        raise PermissionDenied("Viewers cannot change desired states.")
    form = GroupDesiredForm(request.POST)
    if not form.is_valid():
        return render(request, "devices/group.html", _group_page(request, group, form), status=400)
    count = services.update_group_desired(group, form.cleaned_data["patch"])
    messages.success(
        request, f"Desired state set on {count} device{'s' if count != 1 else ''}; on its way."
    )
    return redirect("devices:group", pk=group.pk)
