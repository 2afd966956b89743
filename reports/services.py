"""Making, storing and sending fleet reports.

- `generate_report(tenant, end, period)`: the figures (reports/figures.py), the charts
  (reports/charts.py), the HTML page with the charts embedded (data: URIs, so the downloaded
  file stands alone) and the CSV, stored as a `FleetReport`;
- `email_report(report)`: to the tenant's enabled recipients, through Django's email backend
  (EMAIL_URL): a plain-text summary, the HTML with the charts as inline images (cid:), and
  the CSV attached;
- `send_fleet_reports(...)`: what beat runs, for every tenant or the ones named.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import smtplib
from datetime import datetime, timedelta
from email.mime.image import MIMEImage
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import SafeMIMEMultipart, SafeMIMEText
from django.template.loader import render_to_string
from django.utils import timezone

from devices.models import Tenant
from reports.charts import report_charts
from reports.figures import fleet_figures
from reports.models import FleetReport, ReportRecipient, ReportTrigger

log = logging.getLogger(__name__)

PERIODS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}


def period_of(period: str | int | float) -> timedelta:
    """'daily', 'weekly' or a number of days."""
    if isinstance(period, str) and period in PERIODS:
        return PERIODS[period]
    try:
        days = float(period)
    except (TypeError, ValueError):
        raise ValueError(
            f"Unknown report period {period!r}: use 'daily', 'weekly' or a number of days."
        ) from None
    if not 0 < days <= 92:
        raise ValueError("A report period is between 0 and 92 days.")
    return timedelta(days=days)


def generate_report(
    tenant: Tenant,
    end: datetime | None = None,
    period: timedelta = PERIODS["daily"],
    trigger: str = ReportTrigger.SCHEDULED,
) -> FleetReport:
    end = end or timezone.now()
    start = end - period
    figures = fleet_figures(tenant, start, end).as_json()
    charts = {name: base64.b64encode(png).decode() for name, png in report_charts(figures).items()}
    report = FleetReport(
        tenant=tenant,
        period_start=start,
        period_end=end,
        generated_at=timezone.now(),
        trigger=trigger,
        figures=figures,
        charts=charts,
    )
    report.html = render_html(report, {n: f"data:image/png;base64,{b}" for n, b in charts.items()})
    report.csv = render_csv(figures)
    report.save()
    log.info("fleet report %s for %s (%s)", report.pk, tenant.slug, report.period_label)
    return report


def render_html(report: FleetReport, images: dict[str, str]) -> str:
    return render_to_string(
        "reports/fleet_report.html",
        {
            "f": report.figures,
            "images": images,
            "period": report.period_label,
            "generated_at": f"{report.generated_at:%Y-%m-%d %H:%M} UTC",
        },
    )


def csv_rows(figures: dict[str, Any]) -> list[list[Any]]:
    """section, item, figure, value: every number of the report, one per row."""
    rows: list[list[Any]] = [
        ["report", "", "tenant", figures["tenant"]],
        ["report", "", "period_start", figures["period_start"]],
        ["report", "", "period_end", figures["period_end"]],
    ]
    rows += [["devices", "", name, value] for name, value in figures["devices"].items()]
    alerts = figures["alerts"]
    rows.append(["alerts", "", "opened", alerts["opened"]])
    rows += [["alerts", f"kind:{kind}", "opened", n] for kind, n in alerts["by_kind"].items()]
    for row in alerts["by_severity"]:
        rows += [
            ["alerts", f"severity:{row['severity']}", name, "" if value is None else value]
            for name, value in row.items()
            if name != "severity"
        ]
    rollouts = figures["rollouts"]
    rows.append(["rollouts", "", "ran", len(rollouts["rollouts"])])
    rows.append(["rollouts", "", "started", rollouts["started"]])
    rows += [["rollouts", f"status:{s}", "rollouts", n] for s, n in rollouts["outcomes"].items()]
    for rollout in rollouts["rollouts"]:
        rows += [
            ["rollout", rollout["name"], name, "" if rollout[name] is None else rollout[name]]
            for name in (
                "release",
                "status",
                "started_at",
                "finished_at",
                "devices",
                "succeeded",
                "failed",
                "cancelled",
                "unfinished",
            )
        ]
    risk = figures["risk"]
    rows.append(["risk", "", "devices_at_risk", risk["at_risk"]])
    rows += [["risk", f"health:{band}", "devices", n] for band, n in risk["health_bands"].items()]
    for device in risk["devices"]:
        item = f"{device['device']}/{device['metric']}"
        rows += [
            ["risk", item, name, "" if device[name] is None else device[name]]
            for name in ("health", "predicted_at", "days_left", "confidence", "crossed")
        ]
    ingest = figures["ingest"]
    rows.append(["ingest", "", "readings", ingest["readings"]])
    rows += [["ingest", hour, "readings", n] for hour, n in ingest["readings_per_hour"]]
    rows.append(["ingest", "", "rejected", ingest["rejected"]])
    rows += [["rejected", reason, "messages", n] for reason, n in ingest["rejected_by_reason"]]
    return rows


def render_csv(figures: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "item", "figure", "value"])
    writer.writerows(csv_rows(figures))
    return buffer.getvalue()


class ReportEmail(EmailMultiAlternatives):
    """text/plain and text/html alternatives, the HTML's charts as inline images (cid:) in a
    multipart/related part; attachments (the CSV) around them in multipart/mixed."""

    def __init__(self, *args: Any, html: str, images: dict[str, bytes], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.html = html
        self.images = images

    def _create_alternatives(self, msg: Any) -> Any:
        encoding = self.encoding or settings.DEFAULT_CHARSET
        related = SafeMIMEMultipart(_subtype="related", encoding=encoding)
        related.attach(SafeMIMEText(self.html, "html", encoding))
        for name, png in self.images.items():
            image = MIMEImage(png, "png")
            image.add_header("Content-ID", f"<{name}>")
            image.add_header("Content-Disposition", "inline", filename=f"{name}.png")
            related.attach(image)
        alternative = SafeMIMEMultipart(_subtype="alternative", encoding=encoding)
        alternative.attach(msg)
        alternative.attach(related)
        return alternative


def text_summary(report: FleetReport) -> str:
    f = report.figures
    lines = [
        f"Fleet report of {f['tenant']}, {report.period_label}",
        "",
        f"Devices: {f['devices']['total']} ({f['devices']['online']} online, "
        f"{f['devices']['offline']} offline, {f['devices']['maintenance']} in maintenance); "
        f"uptime {f['devices']['uptime_percent']:.2f} %, {f['devices']['outages']} outages.",
        f"Alerts opened: {f['alerts']['opened']}.",
    ]
    for row in f["alerts"]["by_severity"]:
        if row["opened"]:
            ack = row["median_minutes_to_acknowledge"]
            done = row["median_minutes_to_resolve"]
            lines.append(
                f"  {row['severity']}: {row['opened']} opened, {row['acknowledged']} "
                f"acknowledged (median {'-' if ack is None else f'{ack:.1f} min'}), "
                f"{row['resolved']} resolved (median {'-' if done is None else f'{done:.1f} min'})"
            )
    lines.append(f"Firmware rollouts that ran: {len(f['rollouts']['rollouts'])}.")
    for rollout in f["rollouts"]["rollouts"]:
        lines.append(
            f"  {rollout['name']} ({rollout['release']}, {rollout['status']}): "
            f"{rollout['succeeded']} of {rollout['devices']} devices updated, "
            f"{rollout['failed']} failed"
        )
    lines.append(f"Devices at risk: {f['risk']['at_risk']}.")
    for device in f["risk"]["devices"][:10]:
        when = "past the threshold" if device["crossed"] else f"in {device['days_left']} days"
        lines.append(f"  {device['name']} ({device['device']}): {device['metric']} {when}")
    lines.append(
        f"Readings stored: {f['ingest']['readings']:,}; messages rejected: "
        f"{f['ingest']['rejected']:,}."
    )
    for reason, count in f["ingest"]["rejected_by_reason"]:
        lines.append(f"  {count} x {reason}")
    lines += ["", "The charts are in the HTML part of this email; every figure is in the CSV."]
    return "\n".join(lines) + "\n"


def email_report(report: FleetReport) -> list[str]:
    """Send the report to the tenant's enabled recipients; returns who it went to (none: no
    recipients). A mail server error is recorded on the report and raised."""
    recipients = list(
        ReportRecipient.objects.for_tenant(report.tenant)
        .filter(is_enabled=True)
        .order_by("email")
        .values_list("email", flat=True)
    )
    if not recipients:
        return []
    images = {name: base64.b64decode(data) for name, data in report.charts.items()}
    message = ReportEmail(
        subject=f"[IoTFleet] Fleet report {report.tenant.name}, {report.period_end:%Y-%m-%d}",
        body=text_summary(report),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        html=render_html(report, {name: f"cid:{name}" for name in images}),
        images=images,
    )
    message.attach(report.filename("csv"), report.csv, "text/csv")
    try:
        message.send(fail_silently=False)
    except (smtplib.SMTPException, OSError) as error:
        FleetReport.objects.filter(pk=report.pk).update(
            email_error=f"The mail server refused or did not answer ({error}): check EMAIL_URL."
        )
        raise
    now = timezone.now()
    FleetReport.objects.filter(pk=report.pk).update(
        emailed_to=", ".join(recipients), emailed_at=now, email_error=""
    )
    report.emailed_to, report.emailed_at = ", ".join(recipients), now
    return recipients


def send_fleet_reports(
    tenants: list[str] | None = None,
    period: str | int | float = "daily",
    end: datetime | None = None,
) -> list[FleetReport]:
    """A report per tenant (all, or those whose slugs are given), each emailed to its
    recipients. One tenant's failure does not stop the others."""
    span = period_of(period)
    queryset = Tenant.objects.order_by("slug")
    if tenants:
        queryset = queryset.filter(slug__in=tenants)
        unknown = sorted(set(tenants) - set(queryset.values_list("slug", flat=True)))
        if unknown:  # a typo in a beat row's kwargs would otherwise mean silence
            log.warning(
                "fleet reports: no tenant has the slug %s: correct the task's kwargs "
                "(Admin → Periodic tasks)",
                ", ".join(repr(slug) for slug in unknown),
            )
    made = []
    for tenant in queryset:
        try:
            report = generate_report(tenant, end=end, period=span)
            email_report(report)
        except Exception:
            log.exception("the fleet report of %s failed", tenant.slug)
            continue
        made.append(report)
    return made
