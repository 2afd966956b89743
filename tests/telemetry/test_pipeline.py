"""End to end, with real processes: devices publish QoS 1 over MQTT, `mqtt_ingest` batches into a
real Celery worker, readings land in PostgreSQL exactly once — whatever is killed or restarted."""

from __future__ import annotations

import signal
import time

import paho.mqtt.client as mqtt

from devices import broker_accounts
from tests.servers import output_of
from tests.telemetry.pipeline import (
    KEYS,
    Pipeline,
    stream_of,
    telemetry_payload,
)

METRICS_PER_MESSAGE = 3


def lost_per_device(pipeline: Pipeline) -> dict[str, int]:
    rows = pipeline.query(
        "SELECT d.key, s.seq_high - s.seq_base + 1 - s.seq_received + s.lost_before_reset "
        "FROM telemetry_deviceingeststate s JOIN devices_device d ON d.id = s.device_id"
    )
    return dict(rows)


def test_every_reading_is_stored_once_with_the_ingest_worker_killed_twice(pipeline, publisher):
    pipeline.start_worker()
    pipeline.start_ingest()
    messages = stream_of(6000)

    for sent in publisher.stream(messages, seconds=6):
        if sent in (2000, 4000):
            pipeline.kill_ingest()  # SIGKILL: whatever it held unacknowledged comes back
            pipeline.start_ingest()
    publisher.wait_all_acknowledged()

    pipeline.wait_for_readings(len(messages) * METRICS_PER_MESSAGE)
    assert pipeline.scalar(
        "SELECT count(*) FROM (SELECT DISTINCT device_id, time FROM telemetry_reading) m"
    ) == len(messages)
    # Every device's sequence is complete: nothing lost, a redelivery not counted twice.
    assert lost_per_device(pipeline) == dict.fromkeys(KEYS, 0)
    assert pipeline.scalar("SELECT count(*) FROM telemetry_rejectedmessage") == 0


def test_bad_messages_among_good_ones_are_recorded_and_the_good_ones_stored(pipeline, publisher):
    pipeline.start_worker()
    ingest = pipeline.start_ingest()
    good = stream_of(400)
    bad = [
        ("fleet/pl-000/telemetry", b'{"ts": 1, "metrics": {"temperature": 2'),
        ("fleet/pl-001/telemetry", b'{"ts": %d, "metrics": {"temperature": NaN}}' % 10**12),
        ("fleet/pl-002/telemetry", b"\xff\xfe\x00"),
        ("fleet/pl-003/telemetry", b'{"metrics": {"temperature": 1}}'),
        # A device the platform does not know; its clock is current, so the device is the fault.
        ("fleet/ghost/telemetry", telemetry_payload(int(time.time() * 1000), 0, 1.0)),
        ("fleet/pl-004/telemetry", b"x" * 20_000),
        ("fleet/pl-005/status", b'{"state": "sleeping"}'),
        ("fleet/pl-006/telemetry", b"[" * 5000 + b"]" * 5000),
    ]
    stream = []
    for n, message in enumerate(good):
        stream.append(message)
        if n % 50 == 0 and bad:
            stream.append(bad.pop())
    for _ in publisher.stream(stream, seconds=2):
        pass
    publisher.wait_all_acknowledged()

    pipeline.wait_for_readings(len(good) * METRICS_PER_MESSAGE)
    pipeline.wait_until(
        "8 rejections",
        lambda: pipeline.scalar("SELECT count(*) FROM telemetry_rejectedmessage") == 8,
    )
    reasons = dict(pipeline.query("SELECT topic, reason FROM telemetry_rejectedmessage"))
    assert "bad JSON" in reasons["fleet/pl-000/telemetry"]
    assert "NaN" in reasons["fleet/pl-001/telemetry"]
    assert "not UTF-8" in reasons["fleet/pl-002/telemetry"]
    assert '"ts" is missing' in reasons["fleet/pl-003/telemetry"]
    assert "unknown device 'ghost'" in reasons["fleet/ghost/telemetry"]
    assert "exceeds the 16384-byte limit" in reasons["fleet/pl-004/telemetry"]
    assert "status is" in reasons["fleet/pl-005/status"]
    assert "nested too deeply" in reasons["fleet/pl-006/telemetry"]
    assert ingest.poll() is None, "the ingest worker died on bad input"


def test_nothing_is_lost_or_doubled_when_redis_restarts_mid_stream(pipeline, publisher):
    pipeline.start_worker()
    ingest = pipeline.start_ingest()
    messages = stream_of(4000)

    for sent in publisher.stream(messages, seconds=6):
        if sent == 1500:
            pipeline.redis.stop()
        if sent == 2500:
            pipeline.redis.start()
    publisher.wait_all_acknowledged()

    pipeline.wait_for_readings(len(messages) * METRICS_PER_MESSAGE, timeout=120)
    assert lost_per_device(pipeline) == dict.fromkeys(KEYS, 0)
    assert "cannot hand" in output_of(ingest), "the outage never reached the ingest worker"
    assert ingest.poll() is None


def test_nothing_is_lost_or_doubled_when_postgres_crashes_mid_stream(pipeline, publisher):
    worker = pipeline.start_worker()
    pipeline.start_ingest()
    messages = stream_of(4000)

    for sent in publisher.stream(messages, seconds=6):
        if sent == 1500:
            pipeline.postgres.stop(mode="immediate")  # a crash: recovery from the WAL
        if sent == 2500:
            pipeline.postgres.start()
    publisher.wait_all_acknowledged()

    pipeline.wait_for_readings(len(messages) * METRICS_PER_MESSAGE, timeout=120)
    assert lost_per_device(pipeline) == dict.fromkeys(KEYS, 0)
    assert "database unavailable" in output_of(worker), "the outage never reached the worker"


def test_the_worker_keeps_its_database_connection_from_batch_to_batch(pipeline, publisher):
    # Celery's Django fix-up would open a PostgreSQL backend per batch (see iotfleet/celery.py).
    pipeline.start_worker()
    pipeline.start_ingest()
    first = stream_of(100)
    for _ in publisher.stream(first, seconds=0.2):
        pass
    pipeline.wait_for_readings(len(first) * METRICS_PER_MESSAGE)
    backends = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    serving = {pid for (pid,) in pipeline.query(backends)}
    assert serving, "the worker holds no connection between batches"

    more = stream_of(2000, start_ms=int(time.time() * 1000) - 30_000)
    for _ in publisher.stream(more, seconds=2):
        pass
    publisher.wait_all_acknowledged()
    pipeline.wait_for_readings((len(first) + len(more)) * METRICS_PER_MESSAGE)
    assert serving & {pid for (pid,) in pipeline.query(backends)}, "every connection was replaced"


def test_sigterm_hands_over_what_the_worker_holds_and_exits_cleanly(pipeline, publisher):
    pipeline.start_worker()
    # A batch that would not flush by itself for a minute: only SIGTERM's flush stores it.
    ingest = pipeline.start_ingest(INGEST_FLUSH_SECONDS="60", INGEST_BATCH_SIZE="100000")
    messages = stream_of(300)
    for _ in publisher.stream(messages, seconds=0.5):
        pass
    publisher.wait_all_acknowledged()
    pipeline.wait_until("the worker to hold 300", lambda: "holding 300" in output_of(ingest))

    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(timeout=15) == 0
    assert "stopped cleanly" in output_of(ingest)
    pipeline.wait_for_readings(len(messages) * METRICS_PER_MESSAGE)


def test_a_flood_goes_to_celery_in_batches_not_a_task_per_message(pipeline, publisher):
    pipeline.start_worker()
    ingest = pipeline.start_ingest()
    messages = stream_of(10_000)
    for _ in publisher.stream(messages, seconds=3):
        pass
    publisher.wait_all_acknowledged()
    pipeline.wait_for_readings(len(messages) * METRICS_PER_MESSAGE)
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(timeout=15) == 0

    totals = pipeline.ingest_totals()
    assert totals["messages"] == len(messages)
    assert totals["batches"] / totals["messages"] <= 0.01, totals


def test_status_and_last_will_set_the_device_status(pipeline, publisher):
    pipeline.start_worker()
    pipeline.start_ingest()
    publisher.publish(f"fleet/{KEYS[0]}/status", b'{"state": "online"}')
    publisher.publish(f"fleet/{KEYS[1]}/status", b'{"state": "online"}')
    publisher.publish(f"fleet/{KEYS[1]}/status", b'{"state": "offline"}')
    publisher.wait_all_acknowledged()

    def statuses() -> dict[str, str]:
        return dict(
            pipeline.query(
                "SELECT key, status FROM devices_device WHERE key = ANY(%s)", (KEYS[:2],)
            )
        )

    pipeline.wait_until(
        "statuses", lambda: statuses() == {KEYS[0]: "online", KEYS[1]: "offline"}, timeout=30
    )


def test_with_per_device_accounts_a_device_cannot_write_another_devices_readings(
    pipeline, secured_mosquitto, settings
):
    """The production broker setup: devices log in with their own secrets and may publish only
    under fleet/{key}/; the ingest worker logs in as the platform. A device publishing on its
    neighbour's topic stores nothing for the neighbour."""
    settings.MQTT_URL = secured_mosquitto.url
    settings.MQTT_DYNSEC_ENABLED = True
    broker_accounts.provision_devices([(KEYS[0], "secret-0", True), (KEYS[1], "secret-1", True)])
    broker_accounts.grant_platform_access()
    pipeline.mosquitto = secured_mosquitto
    pipeline.start_worker()
    pipeline.start_ingest()

    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=KEYS[0])
    device.username_pw_set(KEYS[0], "secret-0")
    device.connect("127.0.0.1", secured_mosquitto.port)
    device.loop_start()
    try:
        now = int(time.time() * 1000)
        own = device.publish(f"fleet/{KEYS[0]}/telemetry", telemetry_payload(now, 0, 2.0), qos=1)
        own.wait_for_publish(10)
        # Last: Mosquitto 2.0.11 may drop a client soon after refusing its publish.
        forged = device.publish(f"fleet/{KEYS[1]}/telemetry", telemetry_payload(now, 0, 1.0), qos=1)
        forged.wait_for_publish(10)
    finally:
        device.loop_stop()
        device.disconnect()

    pipeline.wait_for_readings(METRICS_PER_MESSAGE)  # the device's own message only
    stored = pipeline.query(
        "SELECT DISTINCT d.key FROM telemetry_reading r JOIN devices_device d ON d.id = r.device_id"
    )
    assert stored == [(KEYS[0],)]
