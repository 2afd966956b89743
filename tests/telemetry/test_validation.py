"""Edge validation: every way a device's message can be wrong gets a reason it can act on."""

from __future__ import annotations

import json
import time

import pytest

from telemetry.validation import (
    COMMAND_ACK,
    REJECTED,
    REPORTED,
    STATUS,
    TELEMETRY,
    parse_message,
)

NOW_MS = int(time.time() * 1000)
TOPIC = "fleet/fr-1/telemetry"


def parse(payload: bytes | str, topic: str = TOPIC) -> list:
    if isinstance(payload, str):
        payload = payload.encode()
    return parse_message(topic, payload, NOW_MS)


def reason_of(payload: bytes | str, topic: str = TOPIC) -> str:
    entry = parse(payload, topic)
    assert entry[0] == REJECTED, f"accepted: {entry}"
    return entry[4]


def test_a_reading_with_epoch_ms_is_accepted_with_its_seq():
    entry = parse(json.dumps({"ts": NOW_MS, "seq": 7, "metrics": {"temperature": -18.5}}))
    assert entry == [TELEMETRY, "fr-1", NOW_MS, [[NOW_MS, 7, {"temperature": -18.5}]], [], ""]


def test_an_iso_time_with_offset_and_a_list_of_readings_are_accepted():
    body = [
        {"ts": "2026-11-23T10:00:00Z", "metrics": {"t": 1}},
        {"ts": "2026-11-23T12:00:00+02:00", "metrics": {"t": 2}},
    ]
    received = 1795428000000  # 2026-11-23T10:00:00Z
    entry = parse_message(TOPIC, json.dumps(body).encode(), received)
    assert [reading[0] for reading in entry[3]] == [received, received]
    assert [reading[2]["t"] for reading in entry[3]] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"ts": 1, "metrics": {"t": 1', "bad JSON"),
        ("not json", "bad JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ('{"ts": TS, "metrics": {"t": NaN}}', "NaN is not a number JSON allows"),
        ('{"ts": TS, "metrics": {"t": Infinity}}', "Infinity is not a number"),
        ('{"ts": TS, "metrics": {"t": -Infinity}}', "-Infinity is not a number"),
        ('{"metrics": {"t": 1}}', '"ts" is missing'),
        ('{"ts": 1700000000, "metrics": {"t": 1}}', "looks like seconds"),
        ('{"ts": "yesterday", "metrics": {"t": 1}}', "not ISO-8601"),
        ('{"ts": "2026-11-23T10:00:00", "metrics": {"t": 1}}', "no UTC offset"),
        (
            '{"ts": TS, "metrics": {"t": 1}}'.replace("TS", "TS_AHEAD"),
            "ahead of the platform clock",
        ),
        ('{"ts": TS, "metrics": {"t": 1}}'.replace("TS", "TS_OLD"), "days old"),
        ('{"ts": TS, "metrics": {}}', "non-empty object"),
        ('{"ts": TS, "metrics": [1, 2]}', "non-empty object"),
        ('{"ts": TS, "seq": -1, "metrics": {"t": 1}}', "non-negative integer"),
        ('{"ts": TS, "seq": "3", "metrics": {"t": 1}}', "non-negative integer"),
        ('{"ts": TS, "metrics": {"t": "22.5"}}', "is a str: send a number"),
        ('{"ts": TS, "metrics": {"t": true}}', "is a bool: send a number"),
        ('{"ts": TS, "metrics": {"t": 1e999}}', "not a finite number"),
        ("[]", "empty list"),
        ("42", "a reading is a JSON object"),
    ],
)
def test_a_bad_telemetry_message_is_rejected_with_its_reason(payload, reason):
    if isinstance(payload, str):
        payload = (
            payload.replace("TS_AHEAD", str(NOW_MS + 3_600_000))
            .replace("TS_OLD", str(NOW_MS - 30 * 86_400_000))
            .replace("TS", str(NOW_MS))
        )
    assert reason in reason_of(payload)


def test_the_rejection_keeps_topic_key_size_and_an_excerpt():
    payload = b'{"ts": 1, "metrics": {"t": NaN' + b"x" * 1000
    entry = parse(payload)
    assert entry[:4] == [REJECTED, "fr-1", NOW_MS, TOPIC]
    assert entry[5].startswith('{"ts": 1, "metrics"')
    assert entry[5].endswith("…")
    assert len(entry[5]) <= 301
    assert entry[6] == len(payload)


def test_an_oversize_payload_is_rejected_before_parsing(settings):
    settings.TELEMETRY_MAX_PAYLOAD_BYTES = 100
    reason = reason_of(json.dumps({"ts": NOW_MS, "metrics": {"t": 1}, "pad": "x" * 200}))
    assert "exceeds the 100-byte limit" in reason


def test_too_many_readings_in_one_message_are_rejected(settings):
    settings.TELEMETRY_MAX_READINGS_PER_MESSAGE = 3
    body = [{"ts": NOW_MS - n, "metrics": {"t": 1}} for n in range(4)]
    assert "send at most 3" in reason_of(json.dumps(body))


def test_one_bad_value_is_dropped_and_named_while_its_neighbours_are_kept():
    entry = parse(json.dumps({"ts": NOW_MS, "metrics": {"t": 1.5, "h": "wet"}}))
    assert entry[0] == TELEMETRY
    assert entry[3] == [[NOW_MS, None, {"t": 1.5}]]
    assert entry[4] == ["metric 'h' is a str: send a number"]
    assert '"h": "wet"' in entry[5]


@pytest.mark.parametrize(
    "topic",
    ["fleet/fr-1/other", "devices/fr-1/telemetry", "fleet//telemetry", "fleet/a b/telemetry"],
)
def test_an_unexpected_topic_is_rejected(topic):
    reason = reason_of('{"state": "online"}', topic)
    assert "topic" in reason or "not a valid device key" in reason


def test_status_and_reported_state_are_parsed():
    assert parse('{"state": "offline"}', "fleet/fr-1/status") == [STATUS, "fr-1", NOW_MS, "offline"]
    assert parse('{"reporting_interval": 30}', "fleet/fr-1/shadow/reported") == [
        REPORTED,
        "fr-1",
        NOW_MS,
        {"reporting_interval": 30},
    ]
    assert "status is" in reason_of('{"state": "asleep"}', "fleet/fr-1/status")
    assert "JSON object" in reason_of("[1]", "fleet/fr-1/shadow/reported")


def test_deeply_nested_json_is_rejected_not_a_crash():
    assert "nested too deeply" in reason_of("[" * 8000 + "]" * 8000)


def test_an_excerpt_never_holds_a_nul_byte_which_postgresql_text_refuses():
    entry = parse(b"\xff\xfe\x00 and more")
    assert "\x00" not in entry[5]
    assert "\\x00" in entry[5]


def test_reported_state_with_a_nul_character_is_rejected_at_the_edge():
    reason = reason_of(b'{"note": "a\\u0000b"}', "fleet/fr-1/shadow/reported")
    assert "\\u0000 character" in reason


# --- Answers to commands: fleet/{key}/commands/{id}/ack ------------------------------------------

ACK_TOPIC = "fleet/fr-1/commands/42/ack"


def test_a_command_answer_is_accepted_with_its_result():
    entry = parse(json.dumps({"status": "ok", "result": {"pong": True}}), ACK_TOPIC)
    assert entry == [COMMAND_ACK, "fr-1", NOW_MS, 42, "ok", {"pong": True}, ""]


def test_an_error_answer_keeps_its_message():
    entry = parse(json.dumps({"status": "error", "message": "no such LED"}), ACK_TOPIC)
    assert entry == [COMMAND_ACK, "fr-1", NOW_MS, 42, "error", None, "no such LED"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"status": "done"}', 'a command answer is {"status": "ok"}'),
        (b'["ok"]', 'a command answer is {"status": "ok"}'),
        (b'{"status": "error", "message": 5}', '"message" is text'),
        (b'{"status": "ok", "result": "a\\u0000b"}', "\\u0000 character"),
        (b'{"status": "ok"', "bad JSON"),
    ],
)
def test_a_malformed_command_answer_is_rejected_with_why(payload, reason):
    assert reason in reason_of(payload, ACK_TOPIC)


@pytest.mark.parametrize(
    "topic",
    ["fleet/fr-1/commands/abc/ack", "fleet/fr-1/commands/42", "fleet/fr-1/commands/42/ack/x"],
)
def test_other_command_topics_are_not_answers(topic):
    assert "unexpected topic" in reason_of(b'{"status": "ok"}', topic)


def test_an_answer_on_a_bad_device_key_is_rejected():
    assert "is not a valid device key" in reason_of(b'{"status": "ok"}', "fleet/a+b/commands/1/ack")
