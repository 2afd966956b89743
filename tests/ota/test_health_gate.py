"""The health gate compares a wave's updated devices with the target's devices not updated yet
over the soak, and pauses the rollout before the next wave when the updated ones are clearly
worse (gone offline, alerts, reboots) — even though every install reported success."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import Alert, AlertKind
from ota import services
from ota.health import fisher_greater, judge
from ota.models import DeviceUpdate, PauseReason, RolloutStatus, UpdateState
from tests.ota.conftest import device_message, draft, ingest, report

SOAK = timedelta(minutes=30)


def telemetry(devices, at, seq=1):
    return ingest(
        [
            device_message(
                device.key,
                "telemetry",
                {"ts": int(at.timestamp() * 1000), "seq": seq, "metrics": {"temperature": -18}},
                at,
            )
            for device in devices
        ]
    )


@pytest.fixture
def wave_one_installed(make_release, fleet):
    """50 online freezers, a rollout in waves of 20 % and 100 % (10, then 40 devices) whose
    wave 1 installed successfully at t0 + 1 min: (rollout, wave-1 devices, the others, t0)."""
    devices = fleet(50)
    rollout = services.start_rollout(draft(make_release(), wave_plan=[20, 100], soak_time=SOAK))
    t0 = timezone.now()
    wave1 = list(DeviceUpdate.objects.filter(rollout=rollout, wave=1).select_related("device"))
    installed_at = t0 + timedelta(minutes=1)
    ingest(
        [report(u, "installing", installed_at) for u in wave1]
        + [report(u, "succeeded", installed_at, version="2.1.0") for u in wave1]
    )
    services.advance_rollout(rollout.pk, installed_at)
    updated = [u.device for u in wave1]
    others = [d for d in devices if d not in updated]
    return rollout, updated, others, t0


def wave2_sent(rollout) -> int:
    return DeviceUpdate.objects.filter(rollout=rollout, wave=2).exclude(state="queued").count()


def test_the_gate_pauses_before_wave_2_when_half_of_wave_1_stops_sending_telemetry(
    wave_one_installed,
):
    rollout, updated, others, t0 = wave_one_installed
    assert DeviceUpdate.objects.filter(rollout=rollout, wave=1, state="succeeded").count() == 10
    still_talking = others + updated[:5]
    for minute in (10, 20, 30):
        telemetry(still_talking, t0 + timedelta(minutes=minute), seq=minute)

    outcome = services.advance_rollout(rollout.pk, t0 + timedelta(minutes=32))

    assert outcome == "paused: health gate"
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED
    assert rollout.pause_reason == PauseReason.HEALTH_GATE
    assert rollout.current_wave == 1
    assert wave2_sent(rollout) == 0
    offline = next(m for m in rollout.evidence["measures"] if m["key"] == "offline")
    assert (offline["updated"], offline["updated_of"]) == (5, 10)
    assert (offline["control"], offline["control_of"]) == (0, 40)
    assert offline["worse"] is True
    assert offline["p_value"] < 0.001
    assert "gone offline: 5 of 10 updated (50%) vs 0 of 40 not updated (0%)" in (
        rollout.pause_detail
    )
    assert rollout.waves.get(number=1).health == rollout.evidence


def test_a_healthy_wave_passes_the_gate_and_wave_2_starts(wave_one_installed):
    rollout, updated, others, t0 = wave_one_installed
    for minute in (10, 20, 30):
        telemetry(others + updated, t0 + timedelta(minutes=minute), seq=minute)

    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=32))

    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    assert rollout.current_wave == 2
    assert wave2_sent(rollout) == 40
    health = rollout.waves.get(number=1).health
    assert health["worse"] is False
    assert "did no worse" in health["summary"]


def test_the_gate_waits_for_the_soak(wave_one_installed):
    rollout, _updated, others, t0 = wave_one_installed
    telemetry(others, t0 + timedelta(minutes=10))

    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=20))

    rollout.refresh_from_db()
    assert (rollout.status, rollout.current_wave) == (RolloutStatus.RUNNING, 1)
    assert rollout.waves.get(number=1).health == {}


def test_updated_devices_that_keep_rebooting_are_caught(wave_one_installed):
    rollout, updated, others, t0 = wave_one_installed
    for minute in (10, 20, 30):
        telemetry(others, t0 + timedelta(minutes=minute), seq=minute)
        # seq falls back to 0 every time: each of these devices rebooted since the last message
        telemetry(updated[:6], t0 + timedelta(minutes=minute), seq=minute % 3)
        telemetry(updated[6:], t0 + timedelta(minutes=minute), seq=minute)

    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=32))

    rollout.refresh_from_db()
    reboots = next(m for m in rollout.evidence["measures"] if m["key"] == "reboots")
    assert (reboots["updated"], reboots["control"]) == (6, 0)
    assert rollout.pause_reason == PauseReason.HEALTH_GATE


def test_updated_devices_raising_alerts_are_caught(wave_one_installed):
    rollout, updated, others, t0 = wave_one_installed
    for minute in (10, 20, 30):
        telemetry(others + updated, t0 + timedelta(minutes=minute), seq=minute)
    at = t0 + timedelta(minutes=15)
    for device in updated[:7] + others[:2]:
        Alert.objects.create(
            tenant=device.tenant,
            kind=AlertKind.RULE,
            device=device,
            title="Too warm",
            first_triggered_at=at,
            last_triggered_at=at,
        )

    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=32))

    rollout.refresh_from_db()
    alerts = next(m for m in rollout.evidence["measures"] if m["key"] == "alerts")
    assert (alerts["updated"], alerts["updated_of"], alerts["control"]) == (7, 10, 2)
    assert rollout.status == RolloutStatus.PAUSED


def test_resuming_past_the_gate_starts_the_next_wave(wave_one_installed):
    rollout, _updated, others, t0 = wave_one_installed
    telemetry(others, t0 + timedelta(minutes=30))
    services.advance_rollout(rollout.pk, t0 + timedelta(minutes=32))
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.PAUSED

    services.resume_rollout(rollout, now=t0 + timedelta(minutes=40))

    assert rollout.current_wave == 2
    assert wave2_sent(rollout) == 40
    assert DeviceUpdate.objects.filter(rollout=rollout, state=UpdateState.SENT).count() == 40


def test_fisher_exact_tail_matches_the_hypergeometric_by_hand():
    # 5 of 10 updated gone vs 0 of 40: only the most extreme split, C(10,5) / C(50,5)
    assert fisher_greater(5, 10, 0, 40) == pytest.approx(math.comb(10, 5) / math.comb(50, 5))
    assert fisher_greater(0, 10, 3, 40) == pytest.approx(1.0)
    assert fisher_greater(1, 1, 0, 99) == pytest.approx(0.01)


def test_a_small_difference_is_not_clearly_worse_however_certain():
    # 3 % vs 1 % over ten thousand devices: significant, but below the 10-point minimum effect
    assert judge("offline", "Gone offline", 150, 5000, 50, 5000).worse is False
    # the same effect in a handful of devices is chance
    assert judge("offline", "Gone offline", 1, 5, 0, 5).worse is False
    assert judge("offline", "Gone offline", 5, 10, 0, 40).worse is True
