"""The alert lifecycle: breaches open and count, clears resolve, people acknowledge and resolve,
flapping reopens quietly, and two workers at once still make one alert."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from alerts import notifications
from alerts.models import Alert, AlertEvent, AlertEventKind, AlertKind, AlertState
from alerts.services import (
    AlertStateError,
    Breach,
    acknowledge_alert,
    acknowledge_alerts,
    auto_resolve,
    record_breaches,
    record_clears,
    resolve_alert,
    resolve_cleared_alerts,
)
from rules.models import Rule, RuleKind, RuleState, Severity
from tests.factories import make_device

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def too_hot(acme, acme_freezer_type):
    return Rule.objects.create(
        tenant=acme,
        name="Too hot",
        kind=RuleKind.THRESHOLD,
        condition="temperature  >  80",
        device_type=acme_freezer_type,
        severity=Severity.CRITICAL,
        hysteresis=timedelta(minutes=5),
    )


@pytest.fixture
def queued(monkeypatch) -> list[tuple[int, str]]:
    """The notifications the services queue on commit, as (alert id, reason)."""
    calls: list[tuple[int, str]] = []

    def record(alert_ids: list[int], reason: str) -> None:
        calls.extend((alert_id, reason) for alert_id in alert_ids)

    monkeypatch.setattr(notifications, "queue_notifications_many", record)
    return calls


def breach(rule, device, count=1, at=T0, **values) -> Breach:
    return Breach(
        rule_id=rule.pk,
        device_id=device.pk,
        tenant_id=rule.tenant_id,
        first_at=at,
        last_at=at + timedelta(seconds=max(0, count - 1)),
        count=count,
        values=values or {"temperature": 85.0},
    )


def the_alert(rule, device) -> Alert:
    return Alert.objects.get(rule=rule, device=device, state__in=["open", "acknowledged"])


def events_of(alert) -> list[str]:
    return list(AlertEvent.objects.filter(alert=alert).values_list("kind", flat=True))


# --- Opening and counting -----------------------------------------------------------------------


def test_a_breach_opens_an_alert_with_the_rules_severity_title_and_values(
    too_hot, acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        record_breaches([breach(too_hot, acme_device, count=3, temperature=91.5)])
    alert = the_alert(too_hot, acme_device)
    assert alert.kind == AlertKind.RULE
    assert alert.tenant == too_hot.tenant
    assert alert.severity == Severity.CRITICAL
    assert alert.title == "Too hot: temperature > 80 on Freezer 1"
    assert alert.values == {"temperature": 91.5}
    assert alert.count == 3
    assert alert.first_triggered_at == T0
    assert alert.last_triggered_at == T0 + timedelta(seconds=2)
    assert alert.state == AlertState.OPEN
    assert events_of(alert) == [AlertEventKind.OPENED]
    assert queued == [(alert.pk, "opened")]


def test_a_thousand_breaking_readings_make_one_open_alert_counting_a_thousand(
    too_hot, acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        # One batch holding 400 breaking readings reported one by one ...
        record_breaches(
            [breach(too_hot, acme_device, at=T0 + timedelta(seconds=n)) for n in range(400)]
        )
        # ... then six more batches of 100.
        for n in range(6):
            at = T0 + timedelta(minutes=10 + n)
            record_breaches([breach(too_hot, acme_device, count=100, at=at, temperature=80.0 + n)])
    alert = Alert.objects.get()
    assert alert.count == 1000
    assert alert.values == {"temperature": 85.0}
    assert alert.last_triggered_at == T0 + timedelta(minutes=15, seconds=99)
    assert events_of(alert) == [AlertEventKind.OPENED]
    assert queued == [(alert.pk, "opened")]


def test_an_older_batch_arriving_late_keeps_the_latest_values(too_hot, acme_device):
    record_breaches([breach(too_hot, acme_device, at=T0 + timedelta(minutes=5), temperature=90)])
    record_breaches([breach(too_hot, acme_device, at=T0, temperature=81)])
    alert = the_alert(too_hot, acme_device)
    assert alert.values == {"temperature": 90.0}
    assert alert.last_triggered_at == T0 + timedelta(minutes=5)
    assert alert.count == 2


def test_an_acknowledged_alert_keeps_counting_without_reopening(too_hot, acme_device, alice):
    record_breaches([breach(too_hot, acme_device)])
    acknowledge_alert(the_alert(too_hot, acme_device), alice)
    record_breaches([breach(too_hot, acme_device, count=4, at=T0 + timedelta(minutes=1))])
    alert = Alert.objects.get()
    assert (alert.state, alert.count) == (AlertState.ACKNOWLEDGED, 5)


def test_each_device_and_rule_gets_its_own_alert(too_hot, acme, acme_device, acme_freezer_type):
    other = make_device(acme, "acme-freezer-2", device_type=acme_freezer_type, name="Freezer 2")
    too_cold = Rule.objects.create(
        tenant=acme, name="Too cold", condition="temperature < -30", device_type=acme_freezer_type
    )
    record_breaches(
        [
            breach(too_hot, acme_device),
            breach(too_hot, other),
            breach(too_cold, acme_device, temperature=-35),
        ]
    )
    assert Alert.objects.count() == 3
    assert Alert.objects.get(rule=too_cold).title == "Too cold: temperature < -30 on Freezer 1"


def test_unknown_values_are_stored_as_null(too_hot, acme_device):
    record_breaches([breach(too_hot, acme_device, temperature=float("nan"), humidity=12)])
    assert the_alert(too_hot, acme_device).values == {"temperature": None, "humidity": 12.0}


def test_titles_say_how_long_for_duration_and_no_data_rules(acme, acme_freezer_type, acme_device):
    held = Rule.objects.create(
        tenant=acme,
        name="Door left open",
        kind=RuleKind.DURATION,
        condition="door > 0",
        for_duration=timedelta(minutes=5),
        device_type=acme_freezer_type,
    )
    silent = Rule.objects.create(
        tenant=acme,
        name="Silent sensor",
        kind=RuleKind.NO_DATA,
        metric="temperature",
        for_duration=timedelta(hours=2),
        device_type=acme_freezer_type,
    )
    record_breaches([breach(held, acme_device), breach(silent, acme_device)])
    assert (
        Alert.objects.get(rule=held).title == "Door left open: door > 0 for 5 minutes on Freezer 1"
    )
    assert Alert.objects.get(rule=silent).title == (
        "Silent sensor: no temperature data for 2 hours on Freezer 1"
    )


def test_a_breach_of_a_deleted_rule_is_ignored(too_hot, acme_device):
    stale = breach(too_hot, acme_device)
    too_hot.delete()
    record_breaches([stale])
    assert not Alert.objects.exists()


# --- Two workers at once ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_workers_recording_the_same_breach_at_once_make_one_alert(too_hot, acme_device):
    """Worker A opens the alert and holds its transaction; worker B records its breach meanwhile.
    B cannot see A's uncommitted alert, so a look-then-insert would make a second one (or fail
    on the unique constraint); B must wait for A and count into A's alert."""
    a_inserted = threading.Event()
    errors: list[BaseException] = []

    def worker_a() -> None:
        try:
            with transaction.atomic():
                record_breaches([breach(too_hot, acme_device, count=600)])
                a_inserted.set()
                time.sleep(0.5)  # B is now blocked on A's row
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
            a_inserted.set()
        finally:
            connection.close()

    def worker_b() -> None:
        try:
            a_inserted.wait(10)
            record_breaches([breach(too_hot, acme_device, count=400, at=T0 + timedelta(1))])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker_a), threading.Thread(target=worker_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    alert = Alert.objects.get()
    assert alert.count == 1000
    assert alert.last_triggered_at == T0 + timedelta(days=1, seconds=399)
    assert events_of(alert) == [AlertEventKind.OPENED]


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_batches_keep_one_alert_and_every_count(too_hot, acme_device):
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for round_ in range(10):
                if round_ == 0:
                    start.wait(10)
                record_breaches([breach(too_hot, acme_device, count=25, at=T0 + timedelta(n))])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert Alert.objects.count() == 1
    assert Alert.objects.get().count == 4 * 10 * 25


# --- Clearing and resolving by themselves -------------------------------------------------------


def firing_state(rule, device, **fields) -> RuleState:
    return RuleState.objects.create(
        rule=rule, device=device, firing=True, clear_since=T0 + timedelta(minutes=1), **fields
    )


def test_a_clear_marks_since_when_and_a_new_breach_unmarks(too_hot, acme_device):
    record_breaches([breach(too_hot, acme_device)])
    record_clears([(too_hot.pk, acme_device.pk, T0 + timedelta(minutes=1))])
    record_clears([(too_hot.pk, acme_device.pk, T0 + timedelta(minutes=2))])
    assert the_alert(too_hot, acme_device).cleared_at == T0 + timedelta(minutes=1)
    record_breaches([breach(too_hot, acme_device, at=T0 + timedelta(minutes=3))])
    assert the_alert(too_hot, acme_device).cleared_at is None


def test_auto_resolve_resolves_resets_the_rule_state_and_notifies(
    too_hot, acme_device, queued, django_capture_on_commit_callbacks
):
    record_breaches([breach(too_hot, acme_device)])
    state = firing_state(too_hot, acme_device)
    record_clears([(too_hot.pk, acme_device.pk, T0 + timedelta(minutes=1))])
    with django_capture_on_commit_callbacks(execute=True):
        auto_resolve([(too_hot.pk, acme_device.pk, T0 + timedelta(minutes=6))])
    alert = Alert.objects.get()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_at == T0 + timedelta(minutes=6)
    assert alert.resolved_by is None
    assert events_of(alert) == [AlertEventKind.OPENED, AlertEventKind.AUTO_RESOLVED]
    assert queued == [(alert.pk, "resolved")]
    state.refresh_from_db()
    assert (state.firing, state.clear_since) == (False, None)


def test_auto_resolve_of_nothing_unresolved_does_nothing(too_hot, acme_device, queued):
    auto_resolve([(too_hot.pk, acme_device.pk, T0)])
    assert not Alert.objects.exists()
    assert queued == []


def test_the_beat_resolves_alerts_clear_for_the_hysteresis(too_hot, acme_device):
    record_breaches([breach(too_hot, acme_device)])
    state = firing_state(too_hot, acme_device)
    record_clears([(too_hot.pk, acme_device.pk, T0 + timedelta(minutes=1))])
    assert resolve_cleared_alerts(T0 + timedelta(minutes=5, seconds=59)) == 0
    assert the_alert(too_hot, acme_device).state == AlertState.OPEN
    assert resolve_cleared_alerts(T0 + timedelta(minutes=6)) == 1
    alert = Alert.objects.get()
    assert alert.state == AlertState.RESOLVED
    assert alert.resolved_at == T0 + timedelta(minutes=6)
    assert events_of(alert)[-1] == AlertEventKind.AUTO_RESOLVED
    state.refresh_from_db()
    assert state.firing is False


def test_the_beat_leaves_alerts_still_breaking(too_hot, acme_device):
    record_breaches([breach(too_hot, acme_device)])
    assert resolve_cleared_alerts(T0 + timedelta(days=1)) == 0
    assert the_alert(too_hot, acme_device).state == AlertState.OPEN


# --- Flapping -----------------------------------------------------------------------------------


def flap(rule, device, times: int) -> None:
    for n in range(times):
        at = T0 + timedelta(minutes=n)
        record_breaches([breach(rule, device, at=at)])
        auto_resolve([(rule.pk, device.pk, timezone.now())])


def test_an_alert_back_within_the_flap_window_reopens_instead_of_opening_anew(
    too_hot, acme_device, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        flap(too_hot, acme_device, 1)
        record_breaches([breach(too_hot, acme_device, at=T0 + timedelta(minutes=3))])
    alert = Alert.objects.get()
    assert alert.state == AlertState.OPEN
    assert alert.reopened == 1
    assert alert.count == 2
    assert (alert.resolved_at, alert.cleared_at) == (None, None)
    assert events_of(alert) == [
        AlertEventKind.OPENED,
        AlertEventKind.AUTO_RESOLVED,
        AlertEventKind.REOPENED,
    ]
    assert queued == [(alert.pk, "opened"), (alert.pk, "resolved"), (alert.pk, "opened")]


def test_a_flapping_alert_stops_notifying_past_the_quiet_limit(
    too_hot, acme_device, queued, settings, django_capture_on_commit_callbacks
):
    settings.ALERT_FLAP_QUIET = 2
    with django_capture_on_commit_callbacks(execute=True):
        flap(too_hot, acme_device, 5)
    alert = Alert.objects.get()
    assert alert.reopened == 4
    # Opened and resolved, then reopened twice with notices; the 3rd and 4th time in silence.
    assert [reason for _, reason in queued] == ["opened", "resolved"] * 3
    notes = AlertEvent.objects.filter(alert=alert, kind=AlertEventKind.REOPENED)
    assert ["Flapping: no notifications" in event.note for event in notes] == [
        False,
        False,
        True,
        True,
    ]


def test_an_alert_back_after_the_flap_window_opens_a_new_one(too_hot, acme_device, settings):
    flap(too_hot, acme_device, 1)
    Alert.objects.update(resolved_at=timezone.now() - settings.ALERT_FLAP_WINDOW - timedelta(1))
    record_breaches([breach(too_hot, acme_device, at=T0 + timedelta(hours=1))])
    assert Alert.objects.count() == 2
    assert the_alert(too_hot, acme_device).reopened == 0


def test_an_alert_resolved_by_a_person_is_not_reopened(too_hot, acme_device, alice):
    record_breaches([breach(too_hot, acme_device)])
    resolve_alert(the_alert(too_hot, acme_device), alice, "Fixed the door seal")
    record_breaches([breach(too_hot, acme_device, at=T0 + timedelta(minutes=1))])
    assert Alert.objects.count() == 2
    assert the_alert(too_hot, acme_device).reopened == 0


# --- People -------------------------------------------------------------------------------------


def test_an_operator_acknowledges_an_open_alert_with_a_note(too_hot, acme_device, alice):
    record_breaches([breach(too_hot, acme_device)])
    alert = acknowledge_alert(the_alert(too_hot, acme_device), alice, "  On my way  ")
    assert alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == alice
    assert alert.acknowledged_at is not None
    assert alert.acknowledge_note == "On my way"
    event = AlertEvent.objects.get(alert=alert, kind=AlertEventKind.ACKNOWLEDGED)
    assert (event.user, event.note) == (alice, "On my way")


def test_acknowledging_twice_is_refused_saying_who_did_it(too_hot, acme_device, alice, dave):
    record_breaches([breach(too_hot, acme_device)])
    alert = acknowledge_alert(the_alert(too_hot, acme_device), alice)
    with pytest.raises(AlertStateError, match="already acknowledged by alice"):
        acknowledge_alert(alert, dave)
    assert AlertEvent.objects.filter(kind=AlertEventKind.ACKNOWLEDGED).count() == 1


def test_a_resolved_alert_can_be_neither_acknowledged_nor_resolved_again(
    too_hot, acme_device, alice
):
    record_breaches([breach(too_hot, acme_device)])
    alert = resolve_alert(the_alert(too_hot, acme_device), alice, "Replaced the compressor")
    with pytest.raises(AlertStateError, match=r"is resolved by alice .* can no longer be ackn"):
        acknowledge_alert(alert, alice)
    with pytest.raises(AlertStateError, match="already resolved by alice"):
        resolve_alert(alert, alice)


def test_resolving_records_who_and_why_resets_the_rule_state_and_notifies(
    too_hot, acme_device, alice, queued, django_capture_on_commit_callbacks
):
    record_breaches([breach(too_hot, acme_device)])
    state = firing_state(too_hot, acme_device)
    alert = acknowledge_alert(the_alert(too_hot, acme_device), alice)
    with django_capture_on_commit_callbacks(execute=True):
        alert = resolve_alert(alert, alice, "Replaced the compressor")
    assert alert.state == AlertState.RESOLVED
    assert (alert.resolved_by, alert.resolve_note) == (alice, "Replaced the compressor")
    assert events_of(alert)[-1] == AlertEventKind.RESOLVED
    assert queued == [(alert.pk, "resolved")]
    state.refresh_from_db()
    assert (state.firing, state.clear_since) == (False, None)


def test_bulk_acknowledge_takes_only_the_open_alerts(
    too_hot, acme, acme_device, acme_freezer_type, alice
):
    devices = [acme_device] + [
        make_device(acme, f"acme-bulk-{n}", device_type=acme_freezer_type) for n in range(3)
    ]
    record_breaches([breach(too_hot, device) for device in devices])
    resolve_alert(Alert.objects.get(device=devices[3]), alice)
    acknowledge_alert(Alert.objects.get(device=devices[2]), alice)
    assert acknowledge_alerts(Alert.objects.all(), alice, "Seen") == 2
    states = dict(Alert.objects.values_list("device__key", "state"))
    assert states == {
        devices[0].key: AlertState.ACKNOWLEDGED,
        devices[1].key: AlertState.ACKNOWLEDGED,
        devices[2].key: AlertState.ACKNOWLEDGED,
        devices[3].key: AlertState.RESOLVED,
    }
    assert AlertEvent.objects.filter(kind=AlertEventKind.ACKNOWLEDGED, note="Seen").count() == 2
