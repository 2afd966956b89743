"""The batch service: readings stored exactly once, device state kept, bad input recorded."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from devices.models import DeviceStatus, Metric, OutOfRange
from devices.services import set_maintenance
from telemetry.models import (
    DeviceIngestState,
    IngestEvent,
    IngestEventKind,
    LatestReading,
    Reading,
    RejectedMessage,
)
from telemetry.services import ingest_batch
from telemetry.validation import parse_message
from tests.factories import make_device, make_device_type

NOW_MS = int(time.time() * 1000)


def telemetry(key: str, ts_ms: int, seq: int | None = None, **metrics: object) -> list:
    body: dict = {"ts": ts_ms, "metrics": metrics}
    if seq is not None:
        body["seq"] = seq
    return parse_message(f"fleet/{key}/telemetry", json.dumps(body).encode(), NOW_MS)


def message(key: str, kind: str, body: object) -> list:
    return parse_message(f"fleet/{key}/{kind}", json.dumps(body).encode(), NOW_MS)


@pytest.fixture
def freezer_type(acme):
    device_type = make_device_type(acme, "Freezer")
    Metric.objects.create(device_type=device_type, name="humidity", min_value=0, max_value=100)
    return device_type


@pytest.fixture
def fr1(acme, freezer_type):
    return make_device(acme, "fr-1", device_type=freezer_type)


@pytest.fixture
def fr2(acme, freezer_type):
    return make_device(acme, "fr-2", device_type=freezer_type)


def readings_of(device) -> list[tuple]:
    return list(
        Reading.objects.filter(device=device)
        .order_by("time", "metric__name")
        .values_list("metric__name", "value", "flagged")
    )


def test_a_batch_stores_every_reading_and_the_latest_values(fr1, fr2):
    result = ingest_batch(
        [
            telemetry("fr-1", NOW_MS - 2000, temperature=-18.0, humidity=40),
            telemetry("fr-2", NOW_MS - 2000, temperature=-20.0),
            telemetry("fr-1", NOW_MS - 1000, temperature=-17.5, humidity=41),
        ]
    )
    assert (result.readings_stored, result.readings_duplicate, result.rejected) == (5, 0, 0)
    assert readings_of(fr1) == [
        ("humidity", 40.0, False),
        ("temperature", -18.0, False),
        ("humidity", 41.0, False),
        ("temperature", -17.5, False),
    ]
    latest = dict(LatestReading.objects.filter(device=fr1).values_list("metric__name", "value"))
    assert latest == {"temperature": -17.5, "humidity": 41.0}


def test_a_redelivered_batch_stores_nothing_twice(fr1):
    batch = [telemetry("fr-1", NOW_MS - n * 1000, temperature=float(n)) for n in range(50)]
    ingest_batch(batch)
    again = ingest_batch([*batch, telemetry("fr-1", NOW_MS - 60000, temperature=1.0)])
    assert (again.readings_stored, again.readings_duplicate) == (1, 50)
    assert Reading.objects.filter(device=fr1).count() == 51


def test_the_latest_value_never_moves_back_in_time(fr1):
    ingest_batch([telemetry("fr-1", NOW_MS, temperature=-10.0)])
    ingest_batch([telemetry("fr-1", NOW_MS - 60_000, temperature=-30.0)])
    assert LatestReading.objects.get(device=fr1).value == -10.0


def test_telemetry_marks_the_device_online_and_seen(fr1):
    assert fr1.status == DeviceStatus.OFFLINE
    ingest_batch([telemetry("fr-1", NOW_MS, temperature=1.0)])
    fr1.refresh_from_db()
    assert fr1.status == DeviceStatus.ONLINE
    assert abs(fr1.last_seen.timestamp() * 1000 - NOW_MS) < 2


def test_the_last_will_marks_the_device_offline_at_once(fr1):
    ingest_batch(
        [
            telemetry("fr-1", NOW_MS, temperature=1.0),
            message("fr-1", "status", {"state": "offline"}),
        ]
    )
    fr1.refresh_from_db()
    assert fr1.status == DeviceStatus.OFFLINE


def test_a_device_in_maintenance_stays_in_maintenance(fr1):
    set_maintenance([fr1], True)
    ingest_batch([message("fr-1", "status", {"state": "online"})])
    fr1.refresh_from_db()
    assert fr1.status == DeviceStatus.MAINTENANCE


def test_reported_state_merges_into_the_shadow(fr1):
    ingest_batch([message("fr-1", "shadow/reported", {"reporting_interval": 30, "fw": "1.2"})])
    ingest_batch([message("fr-1", "shadow/reported", {"fw": None})])
    fr1.shadow.refresh_from_db()
    assert fr1.shadow.reported == {"reporting_interval": 30}


def test_unknown_and_disabled_devices_are_rejected_and_their_neighbours_stored(acme, fr1, fr2):
    fr2.is_enabled = False
    fr2.save()
    result = ingest_batch(
        [
            telemetry("ghost", NOW_MS, temperature=1.0),
            telemetry("fr-1", NOW_MS, temperature=2.0),
            telemetry("fr-2", NOW_MS, temperature=3.0),
            parse_message("fleet/fr-1/telemetry", b'{"ts": 1, "metrics": {"t": NaN}}', NOW_MS),
        ]
    )
    assert result.readings_stored == 1
    rejected = {r.device_key: r for r in RejectedMessage.objects.all()}
    assert set(rejected) == {"ghost", "fr-1", "fr-2"}
    assert "unknown device 'ghost'" in rejected["ghost"].reason
    assert rejected["ghost"].tenant_id is None
    assert "disabled" in rejected["fr-2"].reason
    assert rejected["fr-2"].tenant_id == acme.id
    assert "NaN" in rejected["fr-1"].reason
    assert rejected["fr-1"].topic == "fleet/fr-1/telemetry"
    assert DeviceIngestState.objects.get(device=fr1).rejected_messages == 1
    assert DeviceIngestState.objects.get(device=fr2).rejected_messages == 1


def test_an_undefined_metric_is_refused_and_the_defined_ones_kept(fr1):
    ingest_batch([telemetry("fr-1", NOW_MS, temperature=1.0, pressure=3.0)])
    assert readings_of(fr1) == [("temperature", 1.0, False)]
    reason = RejectedMessage.objects.get(device=fr1).reason
    assert "metric 'pressure' is not defined for device type 'Freezer'" in reason


def test_an_out_of_range_value_is_rejected_by_default(fr1):
    ingest_batch([telemetry("fr-1", NOW_MS, temperature=99.0, humidity=50)])
    assert readings_of(fr1) == [("humidity", 50.0, False)]
    assert "outside its valid range [-40, 60] °C" in RejectedMessage.objects.get().reason


def test_an_out_of_range_value_is_stored_flagged_when_the_type_says_flag(fr1, freezer_type):
    freezer_type.out_of_range = OutOfRange.FLAG
    freezer_type.save()
    result = ingest_batch([telemetry("fr-1", NOW_MS, temperature=99.0)])
    assert result.rejected == 0
    assert readings_of(fr1) == [("temperature", 99.0, True)]
    assert LatestReading.objects.get(device=fr1).flagged


def sequence(device, *seqs_and_offsets: tuple[int, int]) -> None:
    ingest_batch(
        [
            telemetry(device.key, NOW_MS - 100_000 + off, seq, temperature=1.0)
            for seq, off in seqs_and_offsets
        ]
    )


def test_a_gap_in_seq_is_counted_and_recorded_as_an_event(fr1):
    sequence(fr1, (0, 0), (1, 1000), (2, 2000))
    sequence(fr1, (6, 6000), (7, 7000))
    state = DeviceIngestState.objects.get(device=fr1)
    assert state.messages_lost == 3
    event = IngestEvent.objects.get(device=fr1)
    assert (event.kind, event.count) == (IngestEventKind.GAP, 3)
    assert "from 2 to 6" in event.detail


def test_a_late_message_fills_its_gap_and_a_redelivery_counts_nothing(fr1):
    sequence(fr1, (0, 0), (2, 2000))
    assert DeviceIngestState.objects.get(device=fr1).messages_lost == 1
    sequence(fr1, (1, 1000))
    sequence(fr1, (0, 0), (1, 1000), (2, 2000))  # redelivered
    assert DeviceIngestState.objects.get(device=fr1).messages_lost == 0


def test_a_seq_jump_beyond_any_counter_is_recorded_and_the_readings_stored(fr1):
    sequence(fr1, (0, 0))
    sequence(fr1, (10**12, 1000))  # a device's bug, not 10^12 lost messages
    assert Reading.objects.filter(device=fr1).count() == 2
    event = IngestEvent.objects.get(device=fr1)
    assert event.count == 2**31 - 1  # as many as the counter holds; the detail says the truth
    assert "999999999999 messages missing" in event.detail
    assert not RejectedMessage.objects.exists()


def test_a_reboot_resets_the_sequence_and_keeps_what_was_lost(fr1):
    sequence(fr1, (0, 0), (1, 1000), (5, 5000))
    sequence(fr1, (0, 10_000), (1, 11_000))
    state = DeviceIngestState.objects.get(device=fr1)
    assert (state.seq_resets, state.messages_lost, state.seq_base, state.seq_high) == (1, 3, 0, 1)
    assert list(IngestEvent.objects.order_by("time").values_list("kind", flat=True)) == [
        IngestEventKind.GAP,
        IngestEventKind.RESET,
    ]


def test_a_reading_for_a_day_with_no_partition_is_stored_and_moved_in_by_upkeep(fr1, settings):
    from telemetry import storage

    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TABLE IF EXISTS telemetry_reading_p{}".format(
                datetime.now(UTC).strftime("%Y%m%d")
            )
        )
    ingest_batch([telemetry("fr-1", NOW_MS, temperature=4.0)])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_reading_default")
        assert cursor.fetchone()[0] == 1
    upkeep = storage.maintain_partitions()
    assert upkeep.moved_from_default == 1
    assert storage.partition_name(datetime.now(UTC).date()) in upkeep.created
    assert readings_of(fr1) == [("temperature", 4.0, False)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_reading_default")
        assert cursor.fetchone()[0] == 0


def test_upkeep_drops_partitions_past_retention_and_creates_ahead(db, settings):
    from telemetry import storage

    today = datetime.now(UTC).date()
    settings.TELEMETRY_RETENTION_DAYS = 3
    upkeep = storage.maintain_partitions(today)
    assert upkeep.layout == storage.PARTITIONED
    assert storage.partition_name(today - timedelta(days=4)) in upkeep.dropped
    assert storage.partition_name(today - timedelta(days=2)) not in upkeep.dropped
    later = storage.maintain_partitions(today + timedelta(days=1))
    assert later.created == [storage.partition_name(today + timedelta(days=8))]
    assert storage.maintain_partitions(today + timedelta(days=1)).created == []


def test_a_poison_entry_the_database_refuses_costs_only_itself(fr1, fr2):
    from telemetry.tasks import store

    poison = ["r", "fr-2", NOW_MS, {"note": "a\u0000b"}]  # jsonb refuses \u0000
    store(
        [
            telemetry("fr-1", NOW_MS - 1000, temperature=1.0),
            poison,
            telemetry("fr-1", NOW_MS, temperature=2.0),
        ]
    )
    assert readings_of(fr1) == [("temperature", 1.0, False), ("temperature", 2.0, False)]
    rejection = RejectedMessage.objects.get()
    assert rejection.device_id == fr2.id
    assert rejection.reason.startswith("could not be stored (")


def test_an_earlier_batch_stored_after_a_later_one_still_counts(fr1):
    sequence(fr1, (3, 3000), (4, 4000))  # the later batch commits first
    sequence(fr1, (0, 0), (1, 1000), (2, 2000))
    state = DeviceIngestState.objects.get(device=fr1)
    assert (state.seq_base, state.seq_high, state.seq_received) == (0, 4, 5)
    assert state.messages_lost == 0
    assert not IngestEvent.objects.exists()
