"""A report made, stored, downloaded, emailed (locmem) and scheduled: its CSV carries every
figure, its email the summary, the HTML with inline charts, and the CSV attached."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from reports.models import FleetReport, ReportRecipient, ReportTrigger
from reports.services import email_report, generate_report, period_of
from reports.tasks import send_fleet_reports_task
from tests.reports.conftest import END, START


@pytest.fixture
def emails(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    return mail.outbox


@pytest.fixture
def recipients(fleet):
    ReportRecipient.objects.create(tenant=fleet.acme, email="ops@acme.example", name="Ops")
    ReportRecipient.objects.create(tenant=fleet.acme, email="boss@acme.example")
    ReportRecipient.objects.create(tenant=fleet.acme, email="gone@acme.example", is_enabled=False)
    ReportRecipient.objects.create(tenant=fleet.globex, email="ops@globex.example")


def csv_figures(report: FleetReport) -> dict[tuple[str, str, str], str]:
    rows = list(csv.reader(io.StringIO(report.csv)))
    assert rows[0] == ["section", "item", "figure", "value"]
    return {(section, item, figure): value for section, item, figure, value in rows[1:]}


def test_a_report_is_stored_with_its_figures_charts_and_html(fleet):
    report = generate_report(fleet.acme, end=END)
    assert (report.period_start, report.period_end) == (START, END)
    assert report.figures["devices"]["uptime_percent"] == 91.07
    assert set(report.charts) == {"devices", "alerts", "rollouts", "ingest", "rejections", "health"}
    assert report.html.count('src="data:image/png;base64,') == 6
    assert "Fleet report · Acme Cold Chain" in report.html
    assert "91.07 %" in report.html
    assert "no valid reading: metric &#x27;…&#x27; is not a finite number" in report.html
    assert "<td>Canary</td><td>2.1.0</td><td>completed</td>" in report.html


def test_the_csv_holds_every_figure(fleet):
    figures = csv_figures(generate_report(fleet.acme, end=END))
    assert figures["devices", "", "total"] == "4"
    assert figures["devices", "", "uptime_percent"] == "91.07"
    assert figures["devices", "", "offline_hours"] == "7.5"
    assert figures["alerts", "", "opened"] == "6"
    assert figures["alerts", "kind:maintenance", "opened"] == "1"
    assert figures["alerts", "severity:critical", "median_minutes_to_acknowledge"] == "15.0"
    assert figures["alerts", "severity:warning", "median_minutes_to_acknowledge"] == ""
    assert figures["alerts", "severity:warning", "median_minutes_to_resolve"] == "60.0"
    assert figures["risk", "", "devices_at_risk"] == "1"
    assert figures["risk", "acme-one/temperature", "health"] == "20.0"
    assert figures["risk", "health:fair", "devices"] == "1"
    assert figures["ingest", "", "readings"] == "18"
    assert figures["ingest", (START + timedelta(hours=1)).isoformat(), "readings"] == "13"
    assert figures["ingest", "", "rejected"] == "6"
    assert figures["rejected", "bad JSON: Expecting value at line N column N", "messages"] == "3"
    assert figures["rollouts", "", "started"] == "2"
    assert figures["rollouts", "status:running", "rollouts"] == "2"
    assert figures["rollout", "Canary", "failed"] == "2"
    assert figures["rollout", "Wave 2", "unfinished"] == "2"


def test_the_email_goes_to_enabled_recipients_with_inline_charts_and_the_csv(
    fleet, recipients, emails
):
    report = generate_report(fleet.acme, end=END)
    assert email_report(report) == ["boss@acme.example", "ops@acme.example"]
    [message] = emails
    assert message.to == ["boss@acme.example", "ops@acme.example"]
    assert message.subject == f"[IoTFleet] Fleet report Acme Cold Chain, {END:%Y-%m-%d}"
    assert "uptime 91.07 %, 3 outages" in message.body
    assert "critical: 3 opened, 2 acknowledged (median 15.0 min), 1 resolved" in message.body
    assert "3 x bad JSON: Expecting value at line N column N" in message.body
    assert "Canary (2.1.0, completed): 2 of 4 devices updated, 2 failed" in message.body
    [(filename, content, mimetype)] = message.attachments
    assert filename == report.filename("csv")
    assert (content, mimetype) == (report.csv, "text/csv")
    mime = message.message()
    assert mime.get_content_type() == "multipart/mixed"
    alternative = mime.get_payload()[0]
    assert alternative.get_content_type() == "multipart/alternative"
    text, related = alternative.get_payload()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, *images = related.get_payload()
    assert html.get_content_type() == "text/html"
    body = html.get_payload(decode=True).decode()
    assert 'src="cid:devices"' in body
    assert "data:image" not in body
    assert sorted(image["Content-ID"] for image in images) == [
        "<alerts>",
        "<devices>",
        "<health>",
        "<ingest>",
        "<rejections>",
        "<rollouts>",
    ]
    assert images[0].get_payload(decode=True).startswith(b"\x89PNG")
    report.refresh_from_db()
    assert report.emailed_to == "boss@acme.example, ops@acme.example"
    assert report.emailed_at is not None


def test_a_tenant_without_recipients_gets_a_stored_report_and_no_email(fleet, emails):
    report = generate_report(fleet.acme, end=END)
    assert email_report(report) == []
    assert emails == []


def test_beat_sends_the_daily_report_at_seven(db):
    task = PeriodicTask.objects.get(task="reports.send_fleet_reports")
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("0", "7", "*")
    assert task.kwargs == '{"period": "daily"}'


def test_the_task_reports_on_the_tenants_named_over_the_period_asked(fleet, recipients, emails):
    [report_id] = send_fleet_reports_task(tenants=["acme"], period="weekly")
    report = FleetReport.objects.get(pk=report_id)
    assert report.tenant == fleet.acme
    assert report.period_end - report.period_start == timedelta(days=7)
    assert [m.to for m in emails] == [["boss@acme.example", "ops@acme.example"]]


def test_a_tenant_slug_that_names_no_tenant_is_logged_with_what_to_fix(
    fleet, recipients, emails, caplog
):
    made = send_fleet_reports_task(tenants=["acme", "acmee"])
    assert len(made) == 1
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "acmee" in warning.getMessage()
    assert "Periodic tasks" in warning.getMessage()


def test_every_tenant_gets_its_report_by_default(fleet, recipients, emails):
    ids = send_fleet_reports_task()
    assert sorted(
        FleetReport.objects.filter(pk__in=ids).values_list("tenant__slug", flat=True)
    ) == [
        "acme",
        "globex",
    ]
    assert sorted(m.to[0] for m in emails) == ["boss@acme.example", "ops@globex.example"]


@pytest.mark.parametrize("period", ["monthly", "0", "-1", "1000"])
def test_a_bad_period_is_refused_with_the_choices(period):
    with pytest.raises(ValueError, match=r"daily|between"):
        period_of(period)


# --- The admin ----------------------------------------------------------------------------------


def test_an_operator_makes_a_report_now_and_downloads_it(client, alice, fleet, recipients, emails):
    client.force_login(alice)
    page = client.get(reverse("admin:reports_fleetreport_generate"))
    assert page.status_code == 200
    assert list(page.context["form"].fields["tenant"].queryset) == [fleet.acme]
    response = client.post(
        reverse("admin:reports_fleetreport_generate"),
        {"tenant": fleet.acme.pk, "period": "weekly", "send": "on"},
    )
    report = FleetReport.objects.get()
    assert response["Location"] == reverse("admin:reports_fleetreport_change", args=[report.pk])
    assert report.trigger == ReportTrigger.ON_DEMAND
    assert len(emails) == 1
    listed = client.get(reverse("admin:reports_fleetreport_changelist"))
    assert "Make a report now" in listed.text
    assert reverse("admin:reports_fleetreport_download", args=[report.pk, "csv"]) in listed.text
    download = client.get(reverse("admin:reports_fleetreport_download", args=[report.pk, "csv"]))
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in download["Content-Disposition"]
    assert download.content.decode() == report.csv
    html = client.get(reverse("admin:reports_fleetreport_download", args=[report.pk, "html"]))
    assert html.content.decode() == report.html


def test_a_viewer_downloads_reports_but_cannot_make_them(client, bob, fleet):
    report = generate_report(fleet.acme, end=END)
    client.force_login(bob)
    assert client.get(reverse("admin:reports_fleetreport_generate")).status_code == 403
    url = reverse("admin:reports_fleetreport_download", args=[report.pk, "csv"])
    assert client.get(url).status_code == 200


def test_another_tenants_reports_stay_hidden(client, carol, fleet):
    report = generate_report(fleet.acme, end=END)
    client.force_login(carol)
    listed = client.get(reverse("admin:reports_fleetreport_changelist"))
    assert report.pk not in {r.pk for r in listed.context["cl"].result_list}
    url = reverse("admin:reports_fleetreport_download", args=[report.pk, "csv"])
    assert client.get(url).status_code == 404
    response = client.post(
        reverse("admin:reports_fleetreport_generate"), {"tenant": fleet.acme.pk, "period": "daily"}
    )
    assert response.status_code == 200  # the form refuses a tenant she does not operate
    assert not FleetReport.objects.filter(trigger=ReportTrigger.ON_DEMAND).exists()


def test_recipients_are_edited_per_tenant_in_the_admin(client, alice, fleet):
    client.force_login(alice)
    response = client.post(
        reverse("admin:reports_reportrecipient_add"),
        {"tenant": fleet.acme.pk, "email": "night@acme.example", "name": "", "is_enabled": "on"},
    )
    assert response.status_code == 302
    assert ReportRecipient.objects.get(email="night@acme.example").tenant == fleet.acme
    response = client.post(
        reverse("admin:reports_reportrecipient_add"),
        {"tenant": fleet.globex.pk, "email": "x@acme.example", "is_enabled": "on"},
    )
    assert response.status_code == 200
    assert not ReportRecipient.objects.filter(email="x@acme.example").exists()
