"""Validation at the edge: what a device sent, checked before anything is queued or stored.

`parse_message(topic, payload, received_ms)` turns one MQTT message (or one HTTP request body)
into a compact, JSON-able *entry* for a Celery batch, or a rejection with a reason an operator can
act on. It needs no database: checks that depend on the device (unknown or disabled device,
metrics its type does not define, values outside a metric's range) run in the batch service
(telemetry/services.py), which loads the batch's devices in one query.

Batch entries (lists, to keep a batch of a thousand small and quick to encode):

    ["t", key, received_ms, [[ts_ms, seq|None, {metric: value}], ...], [problem, ...], excerpt]
    ["s", key, received_ms, "online"|"offline"(, firmware_version)]
    ["r", key, received_ms, {reported state}]
    ["o", key, received_ms, {OTA progress report}]   (ota/protocol.py)
    ["c", key, received_ms, command_id, "ok"|"error", result|None, message]
    ["x", key|"", received_ms, topic, reason, excerpt, size]

A telemetry entry keeps its valid readings; `problems` lists what was dropped from it (a NaN, a
string for a number), which the batch records as one rejection (with the payload's excerpt, sent
only then), so one bad value does not cost the good ones beside it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from ota import protocol as ota_protocol

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
METRIC_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")
EXCERPT_BYTES = 300
# Epoch milliseconds below this are years before 1973: almost surely seconds.
SMALLEST_EPOCH_MS = 100_000_000_000

TELEMETRY, STATUS, REPORTED, REJECTED, OTA_STATUS = "t", "s", "r", "x", "o"
COMMAND_ACK = "c"
# A device's answer to a command: fleet/{key}/commands/{id}/ack (devices/services.py sends them).
COMMAND_ACK_TOPIC = re.compile(r"^fleet/([^/]+)/commands/([0-9]{1,18})/ack$")
COMMAND_STATUSES = ("ok", "error")
COMMAND_MESSAGE_CHARS = 1000
KINDS = {
    "telemetry": TELEMETRY,
    "status": STATUS,
    "shadow/reported": REPORTED,
    "ota/status": OTA_STATUS,
}
STATES = ("online", "offline")

Entry = list


class Limits(NamedTuple):
    payload_bytes: int
    readings_per_message: int
    clock_ahead_ms: float
    max_age_ms: float


@functools.cache
def _limits() -> Limits:
    """The TELEMETRY_* limits, read once: settings' lazy lookups cost ~4 % of ingest's CPU."""
    return Limits(
        settings.TELEMETRY_MAX_PAYLOAD_BYTES,
        settings.TELEMETRY_MAX_READINGS_PER_MESSAGE,
        settings.TELEMETRY_MAX_CLOCK_AHEAD.total_seconds() * 1000,
        settings.TELEMETRY_MAX_AGE.total_seconds() * 1000,
    )


@receiver(setting_changed)
def _forget_limits(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("TELEMETRY_"):
        _limits.cache_clear()


class Invalid(ValueError):
    """The whole message is unusable; the text says why and what the device should send."""


def _reject_constant(name: str) -> float:
    raise Invalid(f"{name} is not a number JSON allows; send finite numbers only")


# One decoder for every message: json.loads(parse_constant=...) would build one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(payload: bytes) -> Any:
    """JSON without Python's extensions: NaN, Infinity and -Infinity are refused."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Invalid(f"payload is not UTF-8 text (byte {error.start})") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise Invalid(
            f"bad JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def excerpt(payload: bytes) -> str:
    """The start of a payload as text an operator can read (PostgreSQL text holds no NUL)."""
    text = payload[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "\\x00")
    return text + ("…" if len(payload) > EXCERPT_BYTES else "")


def split_topic(topic: str) -> tuple[str, str]:
    """(device key, kind) of `fleet/{key}/telemetry|status|shadow/reported|ota/status`."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != "fleet" or parts[2] not in KINDS:
        raise Invalid(
            "unexpected topic: devices publish to fleet/{key}/telemetry, fleet/{key}/status, "
            "fleet/{key}/shadow/reported or fleet/{key}/ota/status"
        )
    if not KEY_PATTERN.match(parts[1]):
        raise Invalid(f"{parts[1][:80]!r} is not a valid device key")
    return parts[1], KINDS[parts[2]]


def parse_time(value: Any, received_ms: int) -> int:
    """A reading's time as epoch milliseconds: epoch ms (number) or ISO-8601 with an offset."""
    if isinstance(value, bool) or value is None:
        raise Invalid('"ts" is missing: give each reading a time, epoch ms or ISO-8601')
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise Invalid('"ts" is not a finite number')
        if 0 < value < SMALLEST_EPOCH_MS:
            raise Invalid(f'"ts" {value} looks like seconds: send epoch milliseconds')
        ts_ms = int(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(f'"ts" {value[:40]!r} is not ISO-8601 or epoch milliseconds') from None
        if moment.tzinfo is None:
            raise Invalid(f'"ts" {value[:40]!r} has no UTC offset: add "Z" or "+00:00"')
        ts_ms = round(moment.timestamp() * 1000)
    else:
        raise Invalid(f'"ts" is a {type(value).__name__}: send epoch ms or an ISO-8601 string')
    ahead_ms = ts_ms - received_ms
    limits = _limits()
    if ahead_ms > limits.clock_ahead_ms:
        raise Invalid(
            f'"ts" is {ahead_ms // 1000} s ahead of the platform clock: check the device\'s '
            "clock (NTP)"
        )
    if received_ms - ts_ms > limits.max_age_ms:
        days = (received_ms - ts_ms) // 86_400_000
        raise Invalid(
            f'"ts" is {days} days old, older than the {settings.TELEMETRY_MAX_AGE.days} days '
            "accepted: check the device's clock"
        )
    return ts_ms


# Devices send the same few metric names over and over: remember the valid ones (bounded).
_valid_names: set[str] = set()
VALID_NAMES_KEPT = 10_000


def _valid_metric_name(name: str) -> bool:
    if not METRIC_PATTERN.match(name):
        return False
    if len(_valid_names) < VALID_NAMES_KEPT:
        _valid_names.add(name)
    return True


def parse_reading(item: Any, received_ms: int, problems: list[str]) -> list | None:
    """One `{"ts", "seq", "metrics"}` object → [ts_ms, seq, {metric: value}]; bad values go to
    `problems` and are left out; None when nothing in it is usable."""
    if not isinstance(item, dict):
        raise Invalid('a reading is a JSON object like {"ts": ..., "metrics": {...}}')
    ts_ms = parse_time(item.get("ts"), received_ms)
    seq = item.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise Invalid('"seq" must be a non-negative integer')
    metrics = item.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise Invalid('"metrics" must be a non-empty object like {"temperature": 21.5}')
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if name not in _valid_names and not _valid_metric_name(name):
            problems.append(f"metric name {name[:40]!r} is not valid")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"metric {name!r} is a {type(value).__name__}: send a number")
        elif not math.isfinite(value):
            problems.append(f"metric {name!r} is not a finite number")
        else:
            values[name] = float(value)
    return [ts_ms, seq, values] if values else None


def parse_telemetry(body: Any, received_ms: int) -> tuple[list, list[str]]:
    items = body if isinstance(body, list) else [body]
    if not items:
        raise Invalid("an empty list holds no readings")
    limit = _limits().readings_per_message
    if len(items) > limit:
        raise Invalid(f"{len(items)} readings in one message; send at most {limit}")
    problems: list[str] = []
    readings = [r for item in items if (r := parse_reading(item, received_ms, problems))]
    if not readings:
        raise Invalid("no valid reading: " + "; ".join(problems))
    return readings, problems


def parse_status(body: Any) -> list:
    """[state] or [state, firmware_version]: a device may say what it runs as it comes online."""
    state = body.get("state") if isinstance(body, dict) else None
    if state not in STATES:
        raise Invalid('status is {"state": "online"} or {"state": "offline"}')
    version = body.get("firmware_version")
    if version is None:
        return [state]
    try:
        return [state, ota_protocol.parse_version(version, "firmware_version")]
    except ota_protocol.BadReport as error:
        raise Invalid(str(error)) from None


def parse_command_ack(key: str, command_id: int, body: Any, received_ms: int) -> Entry:
    """A device's answer to command `command_id`: {"status": "ok"|"error", "result": any JSON,
    "message": "text"}; "result" and "message" are optional."""
    if not isinstance(body, dict) or body.get("status") not in COMMAND_STATUSES:
        raise Invalid(
            'a command answer is {"status": "ok"} or {"status": "error", "message": "why"}, '
            'optionally with "result"'
        )
    message = body.get("message", "")
    if not isinstance(message, str):
        raise Invalid('"message" is text: say what happened in words')
    return [
        COMMAND_ACK,
        key,
        received_ms,
        command_id,
        body["status"],
        body.get("result"),
        message[:COMMAND_MESSAGE_CHARS],
    ]


def rejection(key: str, received_ms: int, topic: str, reason: str, payload: bytes) -> Entry:
    return [REJECTED, key, received_ms, topic[:300], reason, excerpt(payload), len(payload)]


def parse_message(topic: str, payload: bytes, received_ms: int) -> Entry:
    """The batch entry for one message: telemetry, status, reported state, or a rejection."""
    key = ""
    try:
        ack = COMMAND_ACK_TOPIC.match(topic)
        if ack and not KEY_PATTERN.match(ack.group(1)):
            raise Invalid(f"{ack.group(1)[:80]!r} is not a valid device key")
        key, kind = (ack.group(1), COMMAND_ACK) if ack else split_topic(topic)
        limit = _limits().payload_bytes
        if len(payload) > limit:
            raise Invalid(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit")
        body = loads(payload)
        if ack:
            if b"\\u0000" in payload:
                raise Invalid("the answer holds a \\u0000 character, which cannot be stored")
            return parse_command_ack(key, int(ack.group(2)), body, received_ms)
        if kind == TELEMETRY:
            readings, problems = parse_telemetry(body, received_ms)
            return [
                TELEMETRY,
                key,
                received_ms,
                readings,
                problems,
                excerpt(payload) if problems else "",
            ]
        if kind == STATUS:
            return [STATUS, key, received_ms, *parse_status(body)]
        if kind == OTA_STATUS:
            try:
                return [OTA_STATUS, key, received_ms, ota_protocol.parse_status_report(body)]
            except ota_protocol.BadReport as error:
                raise Invalid(str(error)) from None
        if not isinstance(body, dict):
            raise Invalid('reported state is a JSON object like {"reporting_interval": 30}')
        if b"\\u0000" in payload:
            raise Invalid("reported state holds a \\u0000 character, which cannot be stored")
        return [REPORTED, key, received_ms, body]
    except Invalid as error:
        return rejection(key, received_ms, topic, str(error), payload)
    except RecursionError:
        return rejection(key, received_ms, topic, "JSON nested too deeply", payload)
