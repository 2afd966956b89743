"""The OTA pages: firmware releases and keys, the rollout wizard, the rollout list and page with
live progress, and the confirmation pages of the rollout actions. Views parse, authorize (the
operator role in the object's tenant to change anything), call ota.services and render."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboards.pages import live_page
from devices.models import Device, Role, has_role

from . import pages, services, uploads
from .forms import SERVICE_FIELDS, ReleaseForm, RollbackForm, RolloutForm, SigningKeyForm
from .models import FirmwareRelease, Rollout, SigningKey
from .uploads import limits_firmware_uploads


def _rollout(request: HttpRequest, pk: int) -> Rollout:
    return get_object_or_404(
        Rollout.objects.for_user(request.user).select_related("release", "tenant"), pk=pk
    )


def _may_change(request: HttpRequest, tenant_id: int) -> bool:
    return has_role(request.user, tenant_id, Role.OPERATOR)


def _errors_to_form(
    form: Any, error: ValidationError, fields: dict[str, str] | None = None
) -> None:
    fields = fields or {}
    for name, problems in (error.message_dict if hasattr(error, "error_dict") else {}).items():
        target = fields.get(name, name)
        form.add_error(target if target in form.fields else None, problems)
    if not hasattr(error, "error_dict"):
        form.add_error(None, error.messages)


# --- Firmware ---------------------------------------------------------------------------------


@require_GET
@login_required
def releases(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "ota/releases.html",
        {
            "releases": FirmwareRelease.objects.for_user(request.user)
            .select_related("tenant", "signing_key")
            .prefetch_related("device_types")
            .order_by("-created_at"),
            "keys": SigningKey.objects.for_user(request.user).select_related("tenant"),
            "may_upload": bool(pages.writable_tenant_ids(request.user)),
        },
    )


@limits_firmware_uploads
@require_http_methods(["GET", "POST"])
@login_required
def release_new(request: HttpRequest) -> HttpResponse:
    if not pages.writable_tenant_ids(request.user):
        raise PermissionDenied("Uploading firmware needs the operator role in a tenant.")
    refused = uploads.refusal(request) if request.method == "POST" else ""
    form = ReleaseForm(
        request.POST or None, request.FILES or None, user=request.user, upload_refused=refused
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            release = services.create_release(
                tenant=data["tenant"],
                version=data["version"],
                file=data["file"],
                device_types=data["device_types"],
                notes=data["notes"],
                signature=data["signature"],
                expected_sha256=data["sha256"],
                user=request.user,
            )
        except ValidationError as error:
            _errors_to_form(form, error)
        else:
            signed = f"signed with {release.signing_key}" if release.signing_key else "unsigned"
            messages.success(
                request, f"Release {release.version} stored: sha256 {release.sha256}, {signed}."
            )
            return redirect("ota:releases")
    status = 413 if refused else 200
    return render(request, "ota/release_form.html", {"form": form}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def key_new(request: HttpRequest) -> HttpResponse:
    if not pages.writable_tenant_ids(request.user):
        raise PermissionDenied("Registering a key needs the operator role in a tenant.")
    form = SigningKeyForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            key = services.register_signing_key(data["tenant"], data["name"], data["public_key"])
        except ValidationError as error:
            _errors_to_form(form, error)
        else:
            messages.success(request, f"Signing key {key} registered for {key.tenant}.")
            return redirect("ota:releases")
    return render(request, "ota/key_form.html", {"form": form})


# --- Rollouts ---------------------------------------------------------------------------------


def _rollout_list(request: HttpRequest) -> dict:
    return pages.rollout_list(request.user)


rollouts, rollouts_partial = live_page(
    _rollout_list, "ota/rollouts.html", "ota/partials/rollout_rows.html"
)


@require_GET
@login_required
def in_progress(request: HttpRequest) -> HttpResponse:
    """The fleet overview's "rollouts in progress" panel."""
    return render(
        request, "ota/partials/in_progress.html", pages.rollout_list(request.user, active=True)
    )


@require_http_methods(["GET", "POST"])
@login_required
def rollout_new(request: HttpRequest) -> HttpResponse:
    if not pages.writable_tenant_ids(request.user):
        raise PermissionDenied("Creating a rollout needs the operator role in a tenant.")
    initial = {"release": request.GET.get("release")} if request.GET.get("release") else None
    form = RolloutForm(request.POST or None, initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        fields = form.rollout_fields()
        release = fields.pop("release")
        try:
            rollout = services.create_rollout(
                tenant=release.tenant, release=release, user=request.user, **fields
            )
        except ValidationError as error:
            _errors_to_form(form, error, SERVICE_FIELDS)
        else:
            messages.success(
                request, f"Rollout “{rollout.name}” created as a draft: check it and start it."
            )
            return redirect("ota:rollout", pk=rollout.pk)
    preview = pages.wizard_preview(form) if request.method == "POST" else None
    return render(request, "ota/rollout_new.html", {"form": form, "preview": preview})


@require_POST
@login_required
def rollout_preview(request: HttpRequest) -> HttpResponse:
    """The wizard's review step, re-rendered as the operator changes the form."""
    form = RolloutForm(request.POST, user=request.user)
    return render(request, "ota/partials/preview.html", {"preview": pages.wizard_preview(form)})


@require_GET
@login_required
def rollout(request: HttpRequest, pk: int) -> HttpResponse:
    rollout = _rollout(request, pk)
    context = pages.rollout_page(rollout)
    context["may_change"] = _may_change(request, rollout.tenant_id)
    context["actions"] = pages.available_actions(rollout) if context["may_change"] else []
    return render(request, "ota/rollout_detail.html", context)


@require_GET
@login_required
def rollout_progress(request: HttpRequest, pk: int) -> HttpResponse:
    return render(
        request, "ota/partials/rollout_progress.html", pages.rollout_page(_rollout(request, pk))
    )


@require_http_methods(["GET", "POST"])
@login_required
def rollout_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """GET: what the action will do, with a button to confirm; POST: do it."""
    rollout = _rollout(request, pk)
    if action not in pages.ACTIONS:
        return redirect("ota:rollout", pk=rollout.pk)
    if not _may_change(request, rollout.tenant_id):
        raise PermissionDenied("Changing a rollout needs the operator role in its tenant.")
    form = RollbackForm(request.POST or None, rollout=rollout) if action == "rollback" else None
    if request.method == "POST":
        try:
            done = pages.perform(action, rollout, request.user, form)
        except services.RolloutStateError as error:
            messages.error(request, error.message)
            return redirect("ota:rollout", pk=rollout.pk)
        except ValidationError as error:
            if form is None:
                messages.error(request, " ".join(error.messages))
                return redirect("ota:rollout", pk=rollout.pk)
            _errors_to_form(form, error)
        else:
            if done is not None:
                messages.success(request, done.message)
                return redirect("ota:rollout", pk=done.rollout_id)
    return render(
        request,
        "ota/confirm.html",
        {
            "rollout": rollout,
            "action": action,
            "label": pages.ACTIONS[action],
            "explanation": pages.explain(action, rollout),
            "form": form,
        },
    )


@require_GET
@login_required
def device_firmware(request: HttpRequest, key: str) -> HttpResponse:
    """The device page's firmware section: what it runs and its updates."""
    device = get_object_or_404(Device.objects.for_user(request.user), key=key)
    return render(request, "ota/partials/device_firmware.html", pages.device_firmware(device))


def rollout_url(rollout: Rollout) -> str:
    return reverse("ota:rollout", kwargs={"pk": rollout.pk})
