"""Commands to devices: queued → sent over the real broker → acknowledged or failed by the
device's answer through the ingest batch; timed out without one; refused when malformed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.models import Command, CommandState
from devices.services import CommandAnswer, CommandRefused, send_command
from devices.tasks import publish_command_task
from telemetry.models import RejectedMessage
from telemetry.services import ingest_batch
from telemetry.validation import parse_message
from tests.devices.test_broker_accounts import Peer
from tests.factories import make_device
from tests.servers import free_port


def answer_entry(device, command, body: dict) -> list:
    topic = f"fleet/{device.key}/commands/{command.pk}/ack"
    return parse_message(topic, json.dumps(body).encode(), int(timezone.now().timestamp() * 1000))


def test_sending_queues_the_command_and_publishes_it_after_commit(
    acme_device, alice, django_capture_on_commit_callbacks, monkeypatch
):
    queued: list[int] = []
    monkeypatch.setattr(publish_command_task, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        command = send_command(acme_device, "reboot", {"delay_s": 5}, user=alice)
    assert queued == []  # nothing leaves before the commit
    for callback in callbacks:
        callback()
    assert queued == [command.pk]
    assert command.state == CommandState.QUEUED
    assert command.tenant_id == acme_device.tenant_id
    assert command.created_by == alice
    assert command.expires_at - timezone.now() == pytest.approx(
        timedelta(seconds=60), abs=timedelta(seconds=5)
    )


@pytest.mark.parametrize(
    ("name", "params", "timeout", "field"),
    [
        ("", {}, None, "name"),
        ("re boot", {}, None, "name"),
        ("x" * 65, {}, None, "name"),
        ("reboot", ["not", "an", "object"], None, "params"),
        ("reboot", {"blob": "x" * 5000}, None, "params"),
        ("reboot", {}, timedelta(0), "timeout"),
        ("reboot", {}, timedelta(days=8), "timeout"),
    ],
)
def test_a_malformed_command_is_refused_with_the_field_to_fix(
    acme_device, name, params, timeout, field
):
    with pytest.raises(CommandRefused) as refused:
        send_command(acme_device, name, params, timeout=timeout)
    assert field in refused.value.message_dict
    assert not Command.objects.exists()


def test_a_disabled_device_gets_no_command(acme_device):
    acme_device.is_enabled = False
    with pytest.raises(CommandRefused, match="disabled"):
        send_command(acme_device, "reboot")


def test_the_task_publishes_on_the_commands_topic_and_marks_it_sent(
    acme_device, mosquitto, settings
):
    settings.MQTT_URL = mosquitto.url
    command = send_command(acme_device, "set_interval", {"seconds": 30})
    device = Peer(mosquitto, "", "", client_id=acme_device.key)
    try:
        assert device.subscribe(f"fleet/{acme_device.key}/commands/+")
        assert services.publish_command(command.pk) is True
        device._wait_for(lambda: device.received, "the command")
        [(topic, payload)] = device.received
    finally:
        device.close()
    assert topic == f"fleet/{acme_device.key}/commands/{command.pk}"
    message = json.loads(payload)
    assert message["id"] == command.pk
    assert message["name"] == "set_interval"
    assert message["params"] == {"seconds": 30}
    command.refresh_from_db()
    assert command.state == CommandState.SENT
    assert command.sent_at is not None
    # A repeated task (redelivery) publishes nothing twice.
    assert services.publish_command(command.pk) is False


def test_a_broker_that_stays_away_is_retried_with_backoff_then_fails_the_command(
    acme_device, settings, caplog
):
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"
    command = send_command(acme_device, "reboot")

    # Run eagerly, each retry runs at once; a worker would wait the countdown in between.
    publish_command_task.apply(args=[command.pk])

    retries = [r.getMessage() for r in caplog.records if "Retry in" in r.getMessage()]
    assert [m.split("Retry in ")[1].split(":")[0] for m in retries] == [
        "1s",
        "2s",
        "4s",
        "8s",
        "16s",
    ]
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert "Could not be sent to the device" in command.error
    assert "is it running" in command.error


def test_the_devices_answer_through_ingest_acknowledges_it_with_its_result(acme_device):
    command = send_command(acme_device, "ping")
    Command.objects.filter(pk=command.pk).update(state=CommandState.SENT)

    ingest_batch([answer_entry(acme_device, command, {"status": "ok", "result": {"pong": True}})])

    command.refresh_from_db()
    assert command.state == CommandState.ACKNOWLEDGED
    assert command.result == {"pong": True}
    assert command.answered_at is not None
    assert command.error == ""


def test_an_error_answer_fails_it_with_the_devices_message(acme_device):
    command = send_command(acme_device, "set_interval")
    ingest_batch(
        [answer_entry(acme_device, command, {"status": "error", "message": "seconds missing"})]
    )
    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert command.error == "seconds missing"
    assert command.sent_at is not None  # answered, so it was sent


def test_a_device_cannot_answer_another_devices_command(acme, acme_device):
    other = make_device(acme, "acme-freezer-2")
    command = send_command(acme_device, "reboot")

    ingest_batch([answer_entry(other, command, {"status": "ok"})])

    command.refresh_from_db()
    assert command.state == CommandState.QUEUED
    rejection = RejectedMessage.objects.get()
    assert rejection.device_key == "acme-freezer-2"
    assert f"command #{command.pk} is not one of this device's" in rejection.reason
    assert rejection.topic == f"fleet/acme-freezer-2/commands/{command.pk}/ack"


def test_a_second_or_late_answer_is_rejected_and_changes_nothing(acme_device):
    command = send_command(acme_device, "reboot")
    ingest_batch([answer_entry(acme_device, command, {"status": "ok", "result": 1})])
    ingest_batch([answer_entry(acme_device, command, {"status": "error", "message": "late"})])
    command.refresh_from_db()
    assert (command.state, command.result) == (CommandState.ACKNOWLEDGED, 1)
    assert "was already acknowledged" in RejectedMessage.objects.get().reason


def test_an_answer_for_an_unknown_device_is_rejected(db):
    entry = parse_message("fleet/ghost/commands/5/ack", b'{"status": "ok"}', 1_800_000_000_000)
    ingest_batch([entry])
    assert "unknown device 'ghost'" in RejectedMessage.objects.get().reason


def test_unanswered_commands_time_out_and_answered_ones_stay(acme_device):
    late = send_command(acme_device, "reboot", timeout=timedelta(seconds=5))
    fresh = send_command(acme_device, "ping", timeout=timedelta(minutes=5))
    done = send_command(acme_device, "identify", timeout=timedelta(seconds=5))
    services.record_command_answers(
        [CommandAnswer(acme_device.pk, done.pk, True, None, "", timezone.now())]
    )

    expired = services.expire_commands(timezone.now() + timedelta(seconds=30))

    assert expired == 1
    states = dict(Command.objects.values_list("pk", "state"))
    assert states == {
        late.pk: CommandState.TIMED_OUT,
        fresh.pk: CommandState.QUEUED,
        done.pk: CommandState.ACKNOWLEDGED,
    }
    assert "did not answer in time" in Command.objects.get(pk=late.pk).error
    assert services.expire_commands(timezone.now() + timedelta(seconds=30)) == 0


def test_an_expired_queued_command_is_not_published(acme_device, settings):
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"  # would raise if it tried
    command = send_command(acme_device, "reboot", timeout=timedelta(seconds=1))
    Command.objects.filter(pk=command.pk).update(expires_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert services.publish_command(command.pk) is False
    command.refresh_from_db()
    assert command.state == CommandState.TIMED_OUT
