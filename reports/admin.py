"""Reports in the admin: each tenant's recipients, and the reports made (listed, opened,
downloaded as HTML or CSV, sent again), with a page to make one now."""

from __future__ import annotations

import smtplib
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from devices.admin.tenancy import (
    TenantScopedAdmin,
    TenantScopedFilter,
    holds_role_anywhere,
    holds_role_for,
)
from devices.models import Role, Tenant
from reports import services
from reports.models import FleetReport, ReportRecipient, ReportTrigger


@admin.register(ReportRecipient)
class ReportRecipientAdmin(TenantScopedAdmin):
    list_display = ["email", "name", "tenant", "is_enabled"]
    list_filter = [("tenant", TenantScopedFilter), "is_enabled"]
    list_select_related = ["tenant"]
    search_fields = ["email", "name"]
    fields = ["tenant", "email", "name", "is_enabled"]


class GenerateForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    period = forms.ChoiceField(
        choices=[
            ("daily", "The last day"),
            ("weekly", "The last 7 days"),
            ("30", "The last 30 days"),
        ],
        initial="daily",
    )
    send = forms.BooleanField(
        required=False, initial=False, label="Email it to the tenant's recipients too"
    )


@admin.register(FleetReport)
class FleetReportAdmin(TenantScopedAdmin):
    list_display = ["__str__", "tenant", "trigger", "generated_at", "emailed_to", "downloads"]
    list_filter = [("tenant", TenantScopedFilter), "trigger"]
    list_select_related = ["tenant"]
    date_hierarchy = "generated_at"
    actions = ["send_again"]
    fields = [
        "tenant",
        "period_start",
        "period_end",
        "generated_at",
        "trigger",
        "emailed_to",
        "emailed_at",
        "email_error",
        "downloads",
        "preview",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by the service: see "Make a report now"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("generate/", view(self.generate_view), name="reports_fleetreport_generate"),
            path(
                "<int:pk>/download/<str:kind>/",
                view(self.download_view),
                name="reports_fleetreport_download",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Download")
    def downloads(self, report: FleetReport) -> SafeString:
        def url(kind: str) -> str:
            return reverse("admin:reports_fleetreport_download", args=[report.pk, kind])

        return format_html('<a href="{}">HTML</a> · <a href="{}">CSV</a>', url("html"), url("csv"))

    @admin.display(description="Report")
    def preview(self, report: FleetReport) -> SafeString:
        # The stored page in a sandboxed frame: its own styles, no scripts.
        return format_html(
            '<iframe sandbox src="{}?inline=1" style="width:100%;height:900px;border:1px solid '
            '#ddd" title="Fleet report"></iframe>',
            reverse("admin:reports_fleetreport_download", args=[report.pk, "html"]),
        )

    def download_view(self, request: HttpRequest, pk: int, kind: str) -> HttpResponse:
        report = get_object_or_404(self.get_queryset(request).select_related("tenant"), pk=pk)
        if not self.has_view_permission(request, report) or kind not in {"html", "csv"}:
            raise PermissionDenied
        if kind == "csv":
            response = HttpResponse(report.csv, content_type="text/csv; charset=utf-8")
        else:
            response = HttpResponse(report.html, content_type="text/html; charset=utf-8")
            response["Content-Security-Policy"] = (
                "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
            )
        disposition = "inline" if request.GET.get("inline") else "attachment"
        response["Content-Disposition"] = f'{disposition}; filename="{report.filename(kind)}"'
        if disposition == "inline":
            response["X-Frame-Options"] = "SAMEORIGIN"
        return response

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        if not holds_role_anywhere(request, Role.OPERATOR):
            raise PermissionDenied
        form = GenerateForm(request.POST or None)
        form.fields["tenant"].queryset = Tenant.objects.for_user(request.user, role=Role.OPERATOR)
        if request.method == "POST" and form.is_valid():
            tenant = form.cleaned_data["tenant"]
            report = services.generate_report(
                tenant,
                period=services.period_of(form.cleaned_data["period"]),
                trigger=ReportTrigger.ON_DEMAND,
            )
            if form.cleaned_data["send"]:
                self._send(request, report)
            else:
                self.message_user(request, f"Made the {report}.", messages.SUCCESS)
            return HttpResponseRedirect(
                reverse("admin:reports_fleetreport_change", args=[report.pk])
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Make a fleet report now",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/reports/fleetreport/generate.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        extra_context = {
            **(extra_context or {}),
            "can_generate": holds_role_anywhere(request, Role.OPERATOR),
        }
        return super().changelist_view(request, extra_context)

    @admin.action(description="Email the selected reports again", permissions=["send"])
    def send_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        for report in queryset.select_related("tenant"):
            if self.has_send_permission(request, report):
                self._send(request, report)

    def has_send_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, Role.OPERATOR)
        return holds_role_for(request, obj, Role.OPERATOR)

    def _send(self, request: HttpRequest, report: FleetReport) -> None:
        try:
            sent = services.email_report(report)
        except (smtplib.SMTPException, OSError) as error:
            self.message_user(
                request,
                f"{report}: the mail server refused or did not answer ({error}). Check EMAIL_URL.",
                messages.ERROR,
            )
            return
        if sent:
            self.message_user(request, f"Sent the {report} to {', '.join(sent)}.", messages.SUCCESS)
        else:
            self.message_user(
                request,
                f"{report}: {report.tenant} has no report recipients; add them under Report "
                "recipients.",
                messages.WARNING,
            )
