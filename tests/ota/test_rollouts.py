"""Staged rollouts: waves, thresholds, soak, concurrency, windows, pause/resume/abort, retries,
new devices joining, downgrades and rollbacks. Devices answer through the real ingest batch path
(`ingest_batch` with entries validated at the edge, as mqtt_ingest hands them over)."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from devices.models import Device, DeviceStatus
from ota import services
from ota.models import DeviceUpdate, PauseReason, RolloutStatus, UpdateState, WaveMode
from ota.services import RolloutStateError, Target, plan_waves
from tests.factories import make_device_type, make_group
from tests.ota.conftest import device_message, draft, ingest, make_fleet, report


def updates(rollout, **filters):
    return DeviceUpdate.objects.filter(rollout=rollout, **filters).select_related("device")


def states(rollout) -> dict[str, int]:
    return services.rollout_progress(rollout)["counts"]


def install(rollout_updates, at=None, outcome="succeeded", **extra):
    """The devices download, install and report the outcome, in one ingest batch."""
    messages = []
    for update in rollout_updates:
        messages += [
            report(update, "downloading", at, progress=50),
            report(update, "installing", at),
            report(update, outcome, at, **extra),
        ]
    return ingest(messages)


@pytest.mark.parametrize(
    ("mode", "plan", "total", "sizes"),
    [
        ("percent", [1, 10, 50, 100], 1000, [10, 90, 400, 500]),
        ("percent", [1, 10, 50, 100], 10, [1, 4, 5]),
        ("percent", [10, 100], 3, [1, 2]),
        ("percent", [100], 7, [7]),
        ("count", [5, 20, 100], 1000, [5, 20, 975]),
        ("count", [5, 20, 100], 12, [5, 7]),
        ("count", [5], 0, []),
    ],
)
def test_waves_are_planned_from_percentages_or_sizes(mode, plan, total, sizes):
    assert plan_waves(mode, plan, total) == sizes
    assert sum(sizes) == total


@pytest.mark.parametrize(
    ("mode", "plan", "message"),
    [
        ("percent", [10, 5, 100], "cumulative"),
        ("percent", [10, 50], "must reach 100"),
        ("percent", [0, 100], "between 1 and 100"),
        ("count", [10, 0], "at least one device"),
        ("count", [], "at least one wave"),
    ],
)
def test_a_bad_wave_plan_is_refused_with_why(make_release, mode, plan, message):
    with pytest.raises(ValidationError) as caught:
        draft(make_release(), wave_mode=mode, wave_plan=plan)
    assert message in caught.value.message_dict["wave_plan"][0]


def test_the_preview_counts_devices_per_wave_and_says_who_is_left_out(acme, make_release, fleet):
    fleet(97)
    make_fleet(acme, 2, prefix="new", version="2.1.0")
    make_fleet(acme, 1, prefix="newer", version="3.0.0")
    release = make_release("2.1.0")

    preview = services.preview_rollout(Target(acme, release), WaveMode.PERCENT, [1, 10, 100])

    assert preview.as_dict() == {
        "matching": 100,
        "already_on_version": 2,
        "downgrades_left_out": 1,
        "busy_in_other_rollouts": 0,
        "devices": 97,
        "waves": [1, 9, 87],
    }


def test_targets_narrow_by_type_group_and_tags(acme, make_release):
    freezer, chiller = make_device_type(acme, "Freezer"), make_device_type(acme, "Chiller")
    north = make_group(acme, "North")
    tagged = make_fleet(acme, 4, device_type=freezer, prefix="a", tags=["pilot", "eu"])
    make_fleet(acme, 3, device_type=freezer, prefix="b", tags=["pilot"])
    make_fleet(acme, 5, device_type=chiller, prefix="c", tags=["pilot", "eu"])
    north.devices.add(*tagged[:3])
    release = make_release(device_types=[freezer, chiller])

    def count(**narrow):
        return services.preview_rollout(Target(acme, release, **narrow), "percent", [100]).waves

    assert count() == [12]
    assert count(device_type=chiller) == [5]
    assert count(tags=["pilot", "eu"]) == [9]
    assert count(device_type=freezer, tags=["eu"], groups=[north]) == [3]


def test_a_device_type_the_release_is_not_for_is_refused(acme, make_release):
    release = make_release()
    with pytest.raises(ValidationError) as caught:
        draft(release, device_type=make_device_type(acme, "Pump"))
    assert "not for Pump devices" in caught.value.message_dict["device_type"][0]


def test_starting_queues_every_device_in_its_wave_and_sends_wave_one_only(make_release, fleet):
    fleet(100)
    rollout = draft(make_release(), wave_plan=[10, 50, 100])

    services.start_rollout(rollout)

    assert rollout.status == RolloutStatus.RUNNING
    assert rollout.current_wave == 1
    assert [w.planned_size for w in rollout.waves.all()] == [10, 40, 50]
    assert updates(rollout, state=UpdateState.SENT).count() == 10
    assert set(updates(rollout, state=UpdateState.SENT).values_list("wave", flat=True)) == {1}
    assert updates(rollout, state=UpdateState.QUEUED).count() == 90
    assert all(u.from_version == "2.0.0" for u in updates(rollout))


def test_jobs_go_to_online_devices_at_most_max_concurrent_at_once(make_release, fleet):
    devices = fleet(30)
    Device.objects.filter(pk__in=[d.pk for d in devices[:10]]).update(status=DeviceStatus.OFFLINE)
    rollout = draft(make_release(), wave_plan=[100], max_concurrent=8)

    services.start_rollout(rollout)

    sent = updates(rollout, state=UpdateState.SENT)
    assert sent.count() == 8
    assert all(u.device.status == DeviceStatus.ONLINE for u in sent)
    install(sent[:5])
    services.advance_rollout(rollout.pk)
    assert updates(rollout, state=UpdateState.SENT).count() == 8  # 3 still sent + 5 new
    assert updates(rollout, state=UpdateState.SUCCEEDED).count() == 5


def test_a_wave_moves_on_once_it_reached_the_success_threshold_and_soaked(make_release, fleet):
    fleet(100)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[10, 100]))
    start = timezone.now()

    wave1 = list(updates(rollout, wave=1))
    install(wave1[:8], at=start)
    assert services.advance_rollout(rollout.pk, start) == "running"
    assert rollout.waves.get(number=1).reached_at is None  # 8 of 10 < 90 %

    install(wave1[8:], at=start)
    services.advance_rollout(rollout.pk, start)
    wave = rollout.waves.get(number=1)
    assert wave.reached_at == start
    services.advance_rollout(rollout.pk, start + timedelta(minutes=29))
    assert updates(rollout, wave=2).exclude(state=UpdateState.QUEUED).count() == 0

    services.advance_rollout(rollout.pk, start + timedelta(minutes=31))

    rollout.refresh_from_db()
    assert rollout.current_wave == 2
    assert updates(rollout, wave=2, state=UpdateState.SENT).count() == 90
    assert rollout.waves.get(number=1).health["worse"] is False


def test_the_rollout_completes_when_the_last_wave_is_done(make_release, fleet):
    fleet(20)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100], success_threshold=100))
    install(updates(rollout))

    assert services.advance_rollout(rollout.pk) == "completed"

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.COMPLETED
    assert rollout.finished_at is not None
    assert set(Device.objects.values_list("firmware_version", flat=True)) == {"2.1.0"}


def test_two_early_failures_do_not_stop_a_large_wave(make_release, fleet):
    fleet(200)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[100], failure_threshold=5, min_finished=50)
    )
    install(updates(rollout)[:2], outcome="failed", reason="flash write error")

    services.advance_rollout(rollout.pk)

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING


def test_the_rollout_pauses_itself_when_failures_cross_the_threshold(make_release, fleet):
    fleet(200)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[100], failure_threshold=5, min_finished=50)
    )
    batch = list(updates(rollout)[:50])
    install(batch[:47])
    install(batch[47:], outcome="failed", reason="flash write error")  # 3 of 50 = 6 %

    assert services.advance_rollout(rollout.pk) == "paused: failure threshold"

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED
    assert rollout.pause_reason == PauseReason.FAILURE_THRESHOLD
    assert "3 of 50 finished devices failed (6%)" in rollout.pause_detail
    assert rollout.evidence["reasons"] == [{"reason": "flash write error", "devices": 3}]
    before = updates(rollout, state=UpdateState.SENT).count()
    services.advance_rollout(rollout.pk)
    assert updates(rollout, state=UpdateState.SENT).count() == before  # nothing more sent


def test_resuming_accepts_the_failures_seen_and_watches_new_ones(make_release, fleet):
    fleet(60)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[100], failure_threshold=10, min_finished=10)
    )
    sent = list(updates(rollout))
    install(sent[:8])
    install(sent[8:10], outcome="failed", reason="low battery")
    services.advance_rollout(rollout.pk)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED

    services.resume_rollout(rollout)
    assert rollout.status == RolloutStatus.RUNNING
    install(sent[10:20])
    services.advance_rollout(rollout.pk)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING  # the 2 accepted failures no longer count

    install(sent[20:30], outcome="failed", reason="low battery")
    services.advance_rollout(rollout.pk)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED


def test_aborting_cancels_the_devices_not_sent_their_job_yet(make_release, fleet):
    fleet(50)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[20, 100]))

    services.abort_rollout(rollout)

    assert rollout.status == RolloutStatus.ABORTED
    assert states(rollout)["cancelled"] == 40
    assert states(rollout)["sent"] == 10
    with pytest.raises(RolloutStateError, match="Only a paused rollout can be resumed"):
        services.resume_rollout(rollout)
    # A device that was already updating still reports, and it is recorded.
    install(updates(rollout, state=UpdateState.SENT)[:1])
    assert states(rollout)["succeeded"] == 1


def test_a_paused_rollout_sends_nothing_until_resumed(make_release, fleet):
    fleet(40)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100], max_concurrent=10))
    services.pause_rollout(rollout)
    install(updates(rollout, state=UpdateState.SENT))

    assert services.advance_rollout(rollout.pk) == "paused"
    assert states(rollout)["sent"] == 0

    services.resume_rollout(rollout)
    assert states(rollout)["sent"] == 10


@pytest.mark.parametrize(
    ("action", "status", "message"),
    [
        ("pause_rollout", RolloutStatus.DRAFT, "Only a running rollout"),
        ("resume_rollout", RolloutStatus.RUNNING, "Only a paused rollout"),
        ("start_rollout", RolloutStatus.RUNNING, "already running"),
        ("abort_rollout", RolloutStatus.DRAFT, "Only a running or paused"),
    ],
)
def test_an_action_the_state_does_not_allow_says_why(make_release, fleet, action, status, message):
    fleet(5)
    rollout = draft(make_release(), wave_plan=[100])
    if status == RolloutStatus.RUNNING:
        services.start_rollout(rollout)
    with pytest.raises(RolloutStateError, match=message):
        getattr(services, action)(rollout)


def test_failed_devices_can_be_retried(make_release, fleet):
    fleet(10)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100], failure_threshold=100))
    sent = list(updates(rollout))
    install(sent[:7])
    install(sent[7:], outcome="failed", reason="download interrupted")

    assert services.retry_failed(rollout, wave=1) == 3

    retried = updates(rollout, device__in=[u.device for u in sent[7:]])
    assert {(u.state, u.attempts) for u in retried} == {(UpdateState.SENT, 2)}
    install(retried)
    assert services.advance_rollout(rollout.pk) == "completed"


def test_a_device_silent_past_the_update_timeout_times_out(make_release, fleet):
    fleet(3)
    rollout = services.start_rollout(
        draft(make_release(), wave_plan=[100], update_timeout=timedelta(minutes=20))
    )
    first, second, _third = updates(rollout)
    start = timezone.now()
    ingest([report(first, "installing", start + timedelta(minutes=15))])

    services.advance_rollout(rollout.pk, start + timedelta(minutes=25))

    assert DeviceUpdate.objects.get(pk=first.pk).state == UpdateState.INSTALLING
    timed_out = DeviceUpdate.objects.get(pk=second.pk)
    assert timed_out.state == UpdateState.TIMED_OUT
    assert timed_out.reason == "No report for 20 min (last step: Sent)."


def test_a_device_that_reports_the_new_version_counts_as_succeeded(make_release, fleet):
    fleet(2)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    by_status, by_shadow = updates(rollout)

    ingest(
        [
            device_message(
                by_status.device.key, "status", {"state": "online", "firmware_version": "2.1.0"}
            ),
            device_message(by_shadow.device.key, "shadow/reported", {"firmware_version": "2.1.0"}),
        ]
    )

    assert states(rollout)["succeeded"] == 2
    assert set(Device.objects.values_list("firmware_version", flat=True)) == {"2.1.0"}


def test_success_with_another_version_is_a_failure(make_release, fleet):
    fleet(1)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    install(updates(rollout), version="2.0.0")

    update = updates(rollout).get()
    assert update.state == UpdateState.FAILED
    assert update.reason == "The device reported success but runs 2.0.0, not 2.1.0."


def test_a_late_report_of_an_earlier_step_does_not_move_back(make_release, fleet):
    fleet(1)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    update = updates(rollout).get()
    ingest([report(update, "installing")])
    ingest([report(update, "downloading", progress=90)])
    assert DeviceUpdate.objects.get(pk=update.pk).state == UpdateState.INSTALLING


def test_a_report_for_another_devices_job_is_ignored(make_release, fleet):
    fleet(2)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100]))
    mine, theirs = updates(rollout)
    ingest([device_message(mine.device.key, "ota/status", {"job": theirs.pk, "state": "failed"})])
    assert states(rollout)["failed"] == 0


def test_new_devices_matching_the_target_join_the_running_rollout(acme, make_release, fleet):
    fleet(20, tags=["pilot"])
    rollout = services.start_rollout(draft(make_release(), wave_plan=[50, 100], tags=["pilot"]))
    make_fleet(acme, 3, prefix="late", tags=["pilot"])
    make_fleet(acme, 2, prefix="other")

    services.advance_rollout(rollout.pk)

    late = updates(rollout, device__key__startswith="late")
    assert late.count() == 3
    assert set(late.values_list("wave", "state")) == {(2, UpdateState.QUEUED)}
    assert not updates(rollout, device__key__startswith="other").exists()


def test_a_device_updates_in_one_rollout_at_a_time(acme, make_release, fleet):
    fleet(10)
    first = services.start_rollout(draft(make_release("2.1.0"), wave_plan=[100]))
    second = draft(make_release("2.2.0"), wave_plan=[100])

    with pytest.raises(RolloutStateError, match="10 are updating in another rollout"):
        services.start_rollout(second)

    services.abort_rollout(first)  # its 10 devices were sent jobs: still updating
    install(updates(first))
    assert services.start_rollout(second).status == RolloutStatus.RUNNING


def test_downgrades_are_left_out_unless_the_rollout_allows_them(acme, make_release, fleet):
    fleet(5, version="2.2.0")
    release = make_release("2.1.0")

    with pytest.raises(RolloutStateError, match="5 run a newer version"):
        services.start_rollout(draft(release, wave_plan=[100]))

    rollout = services.start_rollout(draft(release, wave_plan=[100], allow_downgrade=True))
    assert states(rollout)["sent"] == 5


def test_jobs_are_sent_only_inside_the_maintenance_window(make_release, fleet):
    fleet(5)
    now = timezone.now().replace(hour=12, minute=0)
    rollout = draft(make_release(), wave_plan=[100], window_start=time(1), window_end=time(4))

    services.start_rollout(rollout, now=now)
    assert states(rollout)["sent"] == 0

    services.advance_rollout(rollout.pk, now.replace(hour=2))
    assert states(rollout)["sent"] == 5


def test_a_window_may_span_midnight(make_release):
    rollout = draft(make_release(), window_start=time(22), window_end=time(3))
    today = timezone.now()
    assert rollout.in_window(today.replace(hour=23))
    assert rollout.in_window(today.replace(hour=2))
    assert not rollout.in_window(today.replace(hour=12))


def test_a_rollback_sends_the_previous_version_to_failed_and_updated_devices(
    acme, make_release, fleet
):
    fleet(10)
    previous = make_release("2.0.0")
    rollout = services.start_rollout(
        draft(make_release("2.1.0"), wave_plan=[100], failure_threshold=100)
    )
    sent = list(updates(rollout))
    install(sent[:6])
    install(sent[6:8], outcome="failed", reason="boot loop")
    services.pause_rollout(rollout)

    with pytest.raises(ValidationError, match="installs an older version"):
        services.roll_back(rollout)
    rollback = services.roll_back(rollout, allow_downgrade=True)

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ABORTED
    assert rollback.release == previous
    assert rollback.rollback_of == rollout
    assert rollback.status == RolloutStatus.RUNNING
    assert set(updates(rollback).values_list("device_id", flat=True)) == {
        u.device_id for u in sent[:8]
    }
    assert states(rollback)["sent"] == 8


def test_a_beat_that_changes_nothing_pushes_nothing(make_release, fleet, monkeypatch):
    fleet(4)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[100], max_concurrent=2))
    pushed = []
    monkeypatch.setattr(services, "push_many", lambda events: pushed.extend(events))

    services.advance_rollout(rollout.pk)  # two devices still updating: nothing to do
    assert pushed == []

    install(updates(rollout, state=UpdateState.SENT))  # one push for the batch...
    services.advance_rollout(rollout.pk)  # ...and one as two more devices are sent their job
    assert [event for _, event, _ in pushed] == ["rollouts.progress", "rollouts.progress"]
    assert pushed[-1][2]["counts"] == {"succeeded": 2, "sent": 2}
