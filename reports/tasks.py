"""Beat task of the reports (schedules: django-celery-beat rows of `reports.send_fleet_reports`,
the first created by migration 0002; operators add and edit them in the admin)."""

from __future__ import annotations

from celery import shared_task

from reports import services


@shared_task(name="reports.send_fleet_reports", acks_late=True)
def send_fleet_reports_task(
    tenants: list[str] | None = None, period: str | int | float = "daily"
) -> list[int]:
    """Make and email a fleet report per tenant (or the tenants named by slug) over the last
    day ('daily'), week ('weekly') or number of days. Returns the report ids."""
    return [report.pk for report in services.send_fleet_reports(tenants, period)]
