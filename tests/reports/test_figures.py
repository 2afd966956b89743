"""A report's figures on the fixture fleet (tests/reports/conftest.py), each number checked."""

from __future__ import annotations

from datetime import timedelta

from reports.figures import fleet_figures
from tests.reports.conftest import END, START


def test_device_figures(fleet):
    devices = fleet_figures(fleet.acme, START, END).devices
    assert (devices.total, devices.online, devices.offline, devices.maintenance) == (4, 2, 1, 1)
    assert devices.outages == 3
    assert devices.offline_hours == 7.5
    assert devices.uptime_percent == round(100 * (1 - 7.5 / 84), 2) == 91.07


def test_alert_figures_by_severity_with_times_to_acknowledge_and_resolve(fleet):
    alerts = fleet_figures(fleet.acme, START, END).alerts
    assert alerts.opened == 6
    assert alerts.by_kind == {"rule": 3, "offline": 2, "maintenance": 1}
    critical, warning, info = alerts.by_severity
    assert critical.severity == "critical"
    assert (critical.opened, critical.acknowledged, critical.resolved, critical.still_open) == (
        3,
        2,
        1,
        2,
    )
    assert critical.median_minutes_to_acknowledge == 15.0
    assert critical.median_minutes_to_resolve == 40.0
    assert (warning.opened, warning.acknowledged, warning.resolved, warning.still_open) == (
        3,
        0,
        2,
        1,
    )
    assert warning.median_minutes_to_acknowledge is None
    assert warning.median_minutes_to_resolve == 60.0
    assert (info.opened, info.median_minutes_to_resolve) == (0, None)


def test_devices_at_risk_and_health_bands(fleet):
    risk = fleet_figures(fleet.acme, START, END).risk
    assert risk.at_risk == 1
    assert [(d["device"], d["health"], d["days_left"], d["confidence"]) for d in risk.devices] == [
        ("acme-one", 20.0, 5.0, 0.8)
    ]
    assert risk.health_bands == {"good": 1, "fair": 1, "poor": 1}


def test_ingest_volume_per_hour_and_rejections_by_reason(fleet):
    ingest = fleet_figures(fleet.acme, START, END).ingest
    assert ingest.readings == 18
    assert ingest.readings_per_hour == [
        ((START + timedelta(hours=1)).isoformat(), 13),
        ((START + timedelta(hours=3)).isoformat(), 5),
    ]
    assert ingest.rejected == 6
    assert ingest.rejected_by_reason == [
        ("bad JSON: Expecting value at line N column N", 3),
        ("no valid reading: metric '…' is not a finite number", 3),
    ]


def test_rollouts_that_ran_in_the_period_with_their_outcomes(fleet):
    rollouts = fleet_figures(fleet.acme, START, END).rollouts
    assert rollouts.started == 2
    assert rollouts.outcomes == {"running": 2, "completed": 1}
    assert [
        (
            r["name"],
            r["status"],
            r["devices"],
            r["succeeded"],
            r["failed"],
            r["cancelled"],
            r["unfinished"],
        )
        for r in rollouts.rollouts
    ] == [
        ("Still going", "running", 1, 0, 0, 1, 0),
        ("Canary", "completed", 4, 2, 2, 0, 0),
        ("Wave 2", "running", 3, 1, 0, 0, 2),
    ]
    assert rollouts.rollouts[1]["release"] == "2.1.0"
    assert rollouts.rollouts[1]["finished_at"] == (START + timedelta(hours=5)).isoformat()


def test_another_tenants_report_counts_only_its_own_rows(fleet):
    figures = fleet_figures(fleet.globex, START, END)
    assert figures.devices.total == 1
    assert figures.devices.outages == 1
    assert figures.alerts.opened == 2
    assert figures.ingest.readings == 1
    assert figures.ingest.rejected == 1
    assert figures.risk.at_risk == 1
    assert [r["name"] for r in figures.rollouts.rollouts] == ["Globex's"]
