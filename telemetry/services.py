"""Storing a batch of ingested messages: `ingest_batch(entries)`, in one transaction.

1. Load the batch's devices and their types' metrics (two queries); reject entries for unknown or
   disabled devices, metrics the type does not define and values outside their range (or flag
   them, as the device type says).
2. COPY the readings into a temporary staging table (psycopg binary COPY), then INSERT them
   into the readings table, unique on (device, metric, time), in a savepoint. Nearly always every
   reading is new and that is all; if one is not (a redelivered batch, a message sent twice),
   the insert fails on the unique index, is rolled back to the savepoint and runs again as
   INSERT ... ON CONFLICT DO NOTHING RETURNING what was new: a redelivered batch stores nothing
   twice. (ON CONFLICT and RETURNING on every batch cost 45 % of this, the biggest statement.)
   Rows go in sorted order so two batches holding the same readings (a redelivery racing its
   original) cannot deadlock.
3. Upsert the latest value per device and metric (only ever moving forward in time).
4. Per device: sequence-number accounting (gaps, resets), rejected-message counters, last_seen
   and status (a status message, including the last will `offline`, counts at once), and the
   reported shadow.

Validation that needs no database happened at the edge (telemetry/validation.py).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import psycopg
from django.db import connection, transaction

from alerts import services as alerts
from devices.models import Device, DeviceStatus, DeviceType, Metric, OutOfRange
from devices.services import CommandAnswer, record_command_answers, update_reported
from iotfleet import live
from ota.ingest import FirmwareReports
from rules import engine as rules_engine
from telemetry import rates
from telemetry.models import IngestEvent, IngestEventKind, RejectedMessage
from telemetry.validation import (
    COMMAND_ACK,
    OTA_STATUS,
    REJECTED,
    REPORTED,
    STATUS,
    TELEMETRY,
    Entry,
)

log = logging.getLogger(__name__)

# A device's row is wide and indexed on last_seen (no HOT update): rewriting it for every batch
# was a fifth of a batch's time. last_seen moves when it advances by this much (or the status
# changes), which offline detection, counted in minutes, cannot tell apart.
LAST_SEEN_RESOLUTION_MS = 1000

# IngestEvent.count is a PositiveIntegerField; a device may jump its seq by more than that.
COUNT_MAX = 2**31 - 1

LOAD_DEVICES = f"""
SELECT d.id, d.key, d.tenant_id, d.is_enabled, d.device_type_id, t.name, t.out_of_range,
    d.status
FROM {Device._meta.db_table} d JOIN {DeviceType._meta.db_table} t ON t.id = d.device_type_id
WHERE d.key = ANY(%b::text[])
"""  # noqa: S608 (table names from the models)
LOAD_METRICS = f"""
SELECT device_type_id, name, id, min_value, max_value, unit FROM {Metric._meta.db_table}
WHERE device_type_id = ANY(%b::bigint[])
"""  # noqa: S608 (table name from the model)

STAGE = "telemetry_stage"
# Emptied at every commit; and at the start of a batch, for a batch that runs inside a longer
# transaction (tests, an HTTP request) after another one.
CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE} (
    ts_ms bigint, device_id bigint, metric_id integer, value double precision, flagged boolean
) ON COMMIT DELETE ROWS;
DELETE FROM {STAGE}
"""  # noqa: S608 (constant names)
INSERT_READINGS = f"""
INSERT INTO telemetry_reading (time, device_id, metric_id, value, flagged)
SELECT timestamptz 'epoch' + ts_ms * interval '1 millisecond', device_id, metric_id, value, flagged
FROM {STAGE} ORDER BY device_id, metric_id, ts_ms
"""  # noqa: S608 (constant names)
INSERT_NEW_READINGS = f"""
{INSERT_READINGS}
ON CONFLICT DO NOTHING
RETURNING device_id, metric_id, (date_part('epoch', time) * 1000)::bigint, value
"""
UPSERT_LATEST = f"""
INSERT INTO telemetry_latestreading (device_id, metric_id, time, value, flagged)
SELECT DISTINCT ON (device_id, metric_id)
    device_id, metric_id, timestamptz 'epoch' + ts_ms * interval '1 millisecond', value, flagged
FROM {STAGE} ORDER BY device_id, metric_id, ts_ms DESC
ON CONFLICT (device_id, metric_id) DO UPDATE
SET time = EXCLUDED.time, value = EXCLUDED.value, flagged = EXCLUDED.flagged
WHERE telemetry_latestreading.time < EXCLUDED.time
"""  # noqa: S608 (constant names)
# The usual batch in one round trip (statements without parameters go as one simple query). On a
# unique violation PostgreSQL stops at the insert, and write_readings rolls back to the savepoint.
SAVEPOINT = "telemetry_new_readings"
STORE_ALL_NEW = (
    f"SAVEPOINT {SAVEPOINT}; {INSERT_READINGS}; RELEASE SAVEPOINT {SAVEPOINT}; {UPSERT_LATEST}"
)
EPOCH_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"
LOCK_STATES = """
SELECT device_id, seq_base, seq_high, (date_part('epoch', seq_high_time) * 1000)::bigint,
    seq_received, lost_before_reset, seq_resets
FROM telemetry_deviceingeststate WHERE device_id = ANY(%b::bigint[]) ORDER BY device_id FOR UPDATE
"""
CREATE_STATES = """
INSERT INTO telemetry_deviceingeststate (device_id, rejected_messages, seq_received,
    lost_before_reset, seq_resets)
SELECT unnest(%b::bigint[]), 0, 0, 0, 0 ON CONFLICT DO NOTHING
"""
UPDATE_STATES = f"""
UPDATE telemetry_deviceingeststate s SET
    seq_base = v.base, seq_high = v.high, seq_high_time = {EPOCH_MS.format("v.high_ms")},
    seq_received = v.received, lost_before_reset = v.lost, seq_resets = v.resets,
    rejected_messages = s.rejected_messages + v.rejected,
    last_rejected_at = GREATEST(s.last_rejected_at, {EPOCH_MS.format("v.last_rejected_ms")})
FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
            %b::int[], %b::int[], %b::bigint[])
    AS v(device_id, base, high, high_ms, received, lost, resets, rejected, last_rejected_ms)
WHERE s.device_id = v.device_id
"""  # noqa: S608 (constant fragments)
UPDATE_DEVICES = f"""
UPDATE {Device._meta.db_table} d SET
    last_seen = GREATEST(d.last_seen, {EPOCH_MS.format("v.last_seen_ms")}),
    status = CASE WHEN d.status = %b THEN d.status ELSE COALESCE(v.status, d.status) END
FROM unnest(%b::bigint[], %b::bigint[], %b::text[]) AS v(id, last_seen_ms, status)
WHERE d.id = v.id AND (
    d.last_seen IS NULL
    OR {EPOCH_MS.format("v.last_seen_ms")} >= d.last_seen + %b::int * interval '1 millisecond'
    OR (v.status <> d.status AND d.status <> %b)
)
RETURNING d.id, d.status
"""  # noqa: S608 (table name from the model)


@dataclass
class IngestResult:
    messages: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    rejected: int = 0
    devices_updated: int = 0
    events: list[IngestEvent] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "readings_stored": self.readings_stored,
            "readings_duplicate": self.readings_duplicate,
            "rejected": self.rejected,
            "rejections": self.rejections,
        }


@dataclass
class DeviceInfo:
    id: int
    tenant_id: int
    enabled: bool
    type_id: int
    type_name: str
    flag_out_of_range: bool
    status: str


@dataclass
class DeviceActivity:
    """What one batch says about one device."""

    last_seen_ms: int | None = None
    status: str | None = None
    sequence: list[tuple[int, int, bool]] = field(default_factory=list)  # (ts_ms, seq, counted)
    rejected: int = 0
    last_rejected_ms: int = 0


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _cursor() -> psycopg.Cursor:
    """psycopg's own server-binding cursor on Django's connection, in its transaction. Django's
    cursors (and `connection.connection.cursor()`, a ClientCursor) quote every parameter in
    Python, arrays of a thousand values element by element; here arrays go as binary (`%b`)."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


class MetricRange(NamedTuple):
    id: int
    min_value: float | None
    max_value: float | None
    unit: str


def _load_devices(
    keys: set[str],
) -> tuple[dict[str, DeviceInfo], dict[int, dict[str, MetricRange]]]:
    """The batch's devices by key, and their types' metrics (type id -> name -> range)."""
    with _cursor() as cursor:
        cursor.execute(LOAD_DEVICES, [list(keys)])
        devices = {
            key: DeviceInfo(
                pk, tenant, enabled, type_id, type_name, policy == OutOfRange.FLAG, status
            )
            for pk, key, tenant, enabled, type_id, type_name, policy, status in cursor.fetchall()
        }
        metrics: dict[int, dict[str, MetricRange]] = defaultdict(dict)
        type_ids = list({info.type_id for info in devices.values()})
        if type_ids:
            cursor.execute(LOAD_METRICS, [type_ids])
            for type_id, name, pk, low, high, unit in cursor.fetchall():
                metrics[type_id][name] = MetricRange(pk, low, high, unit)
    return devices, metrics


class BatchWriter:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.result = IngestResult(messages=len(entries))
        self.rows: list[tuple[int, int, int, float, bool]] = []
        self.rejections: list[RejectedMessage] = []
        self.activity: dict[int, DeviceActivity] = defaultdict(DeviceActivity)
        self.reported: list[tuple[int, dict]] = []
        # (device id, ts_ms) of readings that were sent, with their seq, pending "is it new?"
        self.sequenced: list[tuple[int, int, int, bool]] = []
        self.devices: dict[int, DeviceInfo] = {}
        # (device_id, metric_id, ts_ms, value) of the readings this batch really stored.
        # (device_id, metric_id, ts_ms, value) of the readings this batch really stored, one row
        # each (float64: ids and epoch ms are exact), as rule evaluation takes them.
        self.stored = np.zeros((0, 4))
        self.went_offline: list[int] = []
        self.came_online: list[int] = []
        self.firmware = FirmwareReports()  # OTA progress and reported versions (ota/ingest.py)
        self.keys: dict[int, str] = {}  # device id -> key, of the batch's known devices
        self.answers: list[tuple[CommandAnswer, str, str]] = []  # (answer, key, topic)

    # --- step 1: device-level checks ------------------------------------------------------
    def reject(
        self,
        device: DeviceInfo | None,
        key: str,
        received_ms: int,
        topic: str,
        reason: str,
        excerpt: str,
        size: int = 0,
    ) -> None:
        self.rejections.append(
            RejectedMessage(
                tenant_id=device.tenant_id if device else None,
                device_id=device.id if device else None,
                device_key=key[:200],
                topic=topic[:300],
                reason=reason,
                payload_excerpt=excerpt,
                payload_size=size or len(excerpt.encode()),
                received_at=_when(received_ms),
            )
        )
        self.result.rejections.append(reason)
        if device:
            activity = self.activity[device.id]
            activity.rejected += 1
            activity.last_rejected_ms = max(activity.last_rejected_ms, received_ms)

    def sort(self, devices: dict[str, DeviceInfo], metrics: dict) -> None:
        for entry in self.entries:
            kind, key, received_ms = entry[0], entry[1], entry[2]
            if kind == REJECTED:
                _, _, _, topic, reason, excerpt, size = entry
                self.reject(devices.get(key), key, received_ms, topic, reason, excerpt, size)
                continue
            device = devices.get(key)
            if device is None or not device.enabled:
                reason = (
                    f"unknown device {key!r}: create it (admin or API) or fix the device's key"
                    if device is None
                    else "the device is disabled: enable it to accept its messages"
                )
                body = json.dumps(entry[3], separators=(",", ":"))
                self.reject(device, key, received_ms, _topic(entry), reason, body[:300])
                continue
            self.devices[device.id] = device
            self.keys[device.id] = key
            activity = self.activity[device.id]
            self.firmware.take(device.id, entry)
            if kind == STATUS:
                activity.status = entry[3]
                if entry[3] == DeviceStatus.ONLINE:
                    activity.last_seen_ms = max(activity.last_seen_ms or 0, received_ms)
                continue
            activity.last_seen_ms = max(activity.last_seen_ms or 0, received_ms)
            if kind == REPORTED:
                self.reported.append((device.id, entry[3]))
                continue
            if kind == OTA_STATUS:
                continue
            if kind == COMMAND_ACK:
                _, _, _, command_id, status, result, message = entry
                answer = CommandAnswer(
                    device.id, command_id, status == "ok", result, message, _when(received_ms)
                )
                self.answers.append((answer, key, _topic(entry)))
                continue
            activity.status = DeviceStatus.ONLINE
            self.add_telemetry(device, metrics[device.type_id], entry)

    def add_telemetry(
        self, device: DeviceInfo, metrics: dict[str, MetricRange], entry: Entry
    ) -> None:
        """The entry's readings of defined metrics, in range (or flagged, as the type says).
        Runs for every message: locals and inline range checks (a method call per value was
        a tenth of a worker's CPU)."""
        _, key, received_ms, readings, problems, excerpt = entry
        problems = list(problems)
        device_id, flag_out_of_range = device.id, device.flag_out_of_range
        rows, sequenced = self.rows, self.sequenced
        for ts_ms, seq, values in readings:
            stored_any = False
            for name, value in values.items():
                metric = metrics.get(name)
                if metric is None:
                    problems.append(
                        f"metric {name!r} is not defined for device type {device.type_name!r}: "
                        "add it to the type or stop sending it"
                    )
                    continue
                low, high = metric.min_value, metric.max_value
                flagged = (low is not None and value < low) or (high is not None and value > high)
                if flagged and not flag_out_of_range:
                    problems.append(
                        f"metric {name!r} = {value:g} is outside its valid range {_range(metric)}"
                    )
                    continue
                rows.append((ts_ms, device_id, metric.id, value, flagged))
                stored_any = True
            if seq is not None:
                # A reading whose every value was refused was still sent: it is not "lost".
                sequenced.append((device_id, ts_ms, seq, not stored_any))
        if problems:
            if not excerpt:
                excerpt = json.dumps(readings, separators=(",", ":"))[:300]
            topic = _topic(entry)
            self.reject(device, key, received_ms, topic, "; ".join(problems), excerpt)

    # --- step 2 and 3: readings and latest values ------------------------------------------
    def write_readings(self, cursor: psycopg.Cursor) -> set[tuple[int, int]] | None:
        """Store the rows; returns (device id, ts_ms) of the readings that were new, or None
        when all of them were."""
        if not self.rows:
            return set()
        cursor.execute(CREATE_STAGE)
        with cursor.copy(
            f"COPY {STAGE} (ts_ms, device_id, metric_id, value, flagged) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "int4", "float8", "bool"])
            for row in self.rows:
                copy.write_row(row)
        new: set[tuple[int, int]] | None = None
        try:
            cursor.execute(STORE_ALL_NEW)  # savepoint, insert, release, latest values: one trip
            self.stored = np.array(self.rows, dtype=np.float64)[:, [1, 2, 0, 3]]
        except psycopg.errors.UniqueViolation:
            # Some were stored already (a redelivery): only the new ones count, and go to rules.
            cursor.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
            cursor.execute(INSERT_NEW_READINGS)
            stored = cursor.fetchall()
            self.stored = np.array(stored, dtype=np.float64).reshape(-1, 4)
            new = {(device_id, ts_ms) for device_id, _, ts_ms, _ in stored}
            cursor.execute(UPSERT_LATEST)
        self.result.readings_stored = len(self.stored)
        self.result.readings_duplicate = len(self.rows) - len(self.stored)
        return new

    # --- step 4: per-device state -----------------------------------------------------------
    def account_sequences(self, new: set[tuple[int, int]] | None) -> None:
        activity = self.activity
        for device_id, ts_ms, seq, always in self.sequenced:
            counted = new is None or always or (device_id, ts_ms) in new
            activity[device_id].sequence.append((ts_ms, seq, counted))

    def lock_states(self, cursor: psycopg.Cursor, ids: list[int]) -> list[tuple]:
        """The devices' DeviceIngestState rows, locked (created first for new devices)."""
        cursor.execute(LOCK_STATES, [ids])
        rows = cursor.fetchall()
        if len(rows) < len(ids):
            missing = sorted(set(ids).difference(row[0] for row in rows))
            cursor.execute(CREATE_STATES, [missing])
            cursor.execute(LOCK_STATES, [missing])
            rows = sorted(rows + cursor.fetchall())
        return rows

    def update_states(self, cursor: psycopg.Cursor) -> None:
        ids = sorted(d for d, a in self.activity.items() if a.sequence or a.rejected)
        if not ids:
            return
        updates = []
        for device_id, base, high, high_ms, received, lost, resets in self.lock_states(cursor, ids):
            activity = self.activity[device_id]
            window = SequenceWindow(base, high, high_ms, received)
            for ts_ms, seq, counted in sorted(activity.sequence):
                event = window.see(ts_ms, seq, counted)
                if event is None:
                    continue
                kind, detail, count = event
                if kind == IngestEventKind.RESET:
                    lost += count
                    resets += 1
                self.result.events.append(
                    IngestEvent(
                        device_id=device_id,
                        kind=kind,
                        time=_when(ts_ms),
                        detail=detail,
                        count=min(count, COUNT_MAX),
                    )
                )
            updates.append(
                (
                    device_id,
                    window.base,
                    window.high,
                    window.high_ms,
                    window.received,
                    lost,
                    resets,
                    activity.rejected,
                    activity.last_rejected_ms if activity.rejected else None,
                )
            )
        cursor.execute(UPDATE_STATES, [list(column) for column in zip(*updates, strict=True)])

    def update_devices(self, cursor: psycopg.Cursor) -> None:
        seen = sorted(
            (device_id, a.last_seen_ms, a.status)
            for device_id, a in self.activity.items()
            if a.last_seen_ms or a.status
        )
        if not seen:
            return
        ids, last_seen, statuses = (list(column) for column in zip(*seen, strict=True))
        cursor.execute(
            UPDATE_DEVICES,
            [
                DeviceStatus.MAINTENANCE,
                ids,
                last_seen,
                statuses,
                LAST_SEEN_RESOLUTION_MS,
                DeviceStatus.MAINTENANCE,
            ],
        )
        self.result.devices_updated = cursor.rowcount
        for device_id, status in cursor.fetchall():
            before = self.devices[device_id].status
            if status == DeviceStatus.OFFLINE and before != DeviceStatus.OFFLINE:
                self.went_offline.append(device_id)
            elif status == DeviceStatus.ONLINE and before == DeviceStatus.OFFLINE:
                self.came_online.append(device_id)

    def apply_reported(self) -> None:
        if not self.reported:
            return
        devices = Device.objects.in_bulk({device_id for device_id, _ in self.reported})
        for device_id, patch in self.reported:
            if device_id in devices:
                update_reported(devices[device_id], patch)

    def record_answers(self) -> None:
        """Devices' answers to commands; one that matches no pending command is rejected."""
        if not self.answers:
            return
        topics = {id(answer): (key, topic) for answer, key, topic in self.answers}
        for answer, reason in record_command_answers([a for a, _, _ in self.answers]):
            key, topic = topics[id(answer)]
            body = json.dumps({"ok": answer.ok, "message": answer.message}, separators=(",", ":"))
            received_ms = int(answer.at.timestamp() * 1000)
            self.reject(self.devices.get(answer.device_id), key, received_ms, topic, reason, body)

    def push_latest(self) -> None:
        """After commit: per tenant, one `telemetry.latest` event naming the devices whose
        readings this batch stored (not one per reading), and the tenants' ingest counters."""
        ids, counts = np.unique(self.stored[:, 0].astype(np.int64), return_counts=True)
        keys: dict[int, list[str]] = defaultdict(list)
        per_tenant: dict[int, int] = defaultdict(int)
        for device_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
            tenant_id = self.devices[device_id].tenant_id
            keys[tenant_id].append(self.keys[device_id])
            per_tenant[tenant_id] += count
        live.push_many(
            (tenant_id, "telemetry.latest", latest_payload(sorted(names), per_tenant[tenant_id]))
            for tenant_id, names in keys.items()
        )
        if per_tenant:
            counts = dict(per_tenant)
            transaction.on_commit(lambda: rates.count_readings(counts), robust=True)

    def follow_up(self) -> None:
        """Alerts on what the batch stored: status changes (a last will opens an offline alert
        at once) and the rules. Each runs in a savepoint: a failure there is logged, and the
        readings are stored all the same, never lost to it."""
        now = datetime.now(UTC)
        steps = []
        if self.went_offline:
            steps.append(("offline alerts", alerts.devices_went_offline, (self.went_offline, now)))
        if self.came_online:
            steps.append(("online again", alerts.devices_came_online, (self.came_online, now)))
        if len(self.stored):
            devices = {info.id: (info.tenant_id, info.type_id) for info in self.devices.values()}
            # Asked outside a savepoint: a fleet without rules pays one query, not three.
            try:
                rules = rules_engine.enabled_rules({type_id for _, type_id in devices.values()})
            except Exception:
                log.exception("the rules could not be loaded for a batch; not evaluated")
                rules = []
            if rules:
                steps.append(("rules", rules_engine.evaluate_batch, (self.stored, devices, rules)))
        if self.firmware:
            steps.append(("firmware updates", self.firmware.record, ()))
        for what, step, arguments in steps:
            try:
                with transaction.atomic():
                    step(*arguments)
            except Exception:
                log.exception("%s failed for a batch; its readings are stored regardless", what)

    def write(self) -> IngestResult:
        keys = {entry[1] for entry in self.entries if entry[1]}
        devices, metrics = _load_devices(keys)
        self.sort(devices, metrics)
        with transaction.atomic(), _cursor() as cursor:
            new = self.write_readings(cursor)
            self.account_sequences(new)
            self.update_states(cursor)
            self.update_devices(cursor)
            self.apply_reported()
            self.record_answers()
            RejectedMessage.objects.bulk_create(self.rejections)
            IngestEvent.objects.bulk_create(self.result.events)
            self.follow_up()
            self.push_latest()
        self.result.rejected = len(self.rejections)
        return self.result


# A telemetry.latest event names at most this many devices; past it, it names none and says
# "truncated", and pages refresh as if any device had changed (a fleet-wide batch is not a
# 10,000-key message to every dashboard).
LATEST_KEYS_MAX = 200


def latest_payload(keys: list[str], readings: int) -> dict:
    if len(keys) > LATEST_KEYS_MAX:
        return {"devices": [], "count": readings, "truncated": True}
    return {"devices": keys, "count": readings}


def _topic(entry: Entry) -> str:
    """The topic an entry came from (the batch keeps only the key and the kind)."""
    kind, key = entry[0], entry[1]
    if kind == COMMAND_ACK:
        return f"fleet/{key}/commands/{entry[3]}/ack"
    suffix = {TELEMETRY: "telemetry", STATUS: "status", OTA_STATUS: "ota/status"}
    return f"fleet/{key}/" + suffix.get(kind, "shadow/reported")


def _range(metric: MetricRange) -> str:
    low = "-∞" if metric.min_value is None else f"{metric.min_value:g}"
    high = "∞" if metric.max_value is None else f"{metric.max_value:g}"
    return f"[{low}, {high}]" + (f" {metric.unit}" if metric.unit else "")


class SequenceWindow:
    """A device's sequence numbers since its last reset (see DeviceIngestState)."""

    def __init__(self, base: int | None, high: int | None, high_ms: int | None, received: int):
        self.base, self.high, self.high_ms, self.received = base, high, high_ms, received

    @property
    def missing(self) -> int:
        if self.base is None or self.high is None:
            return 0
        return max(0, self.high - self.base + 1 - self.received)

    def start(self, ts_ms: int, seq: int) -> None:
        self.base, self.high, self.high_ms, self.received = seq, seq, ts_ms, 1

    def see(self, ts_ms: int, seq: int, counted: bool) -> tuple[str, str, int] | None:
        """Take one sequenced reading; returns an event (kind, detail, messages lost) or None."""
        if self.high is None or self.base is None or self.high_ms is None:
            self.start(ts_ms, seq)
            return None
        if seq > self.high:
            gap = seq - self.high - 1
            previous = self.high
            self.high, self.high_ms = seq, ts_ms
            self.received += counted
            if gap > 0:
                return (
                    IngestEventKind.GAP,
                    f"seq jumped from {previous} to {seq}: {gap} message"
                    f"{'s' if gap > 1 else ''} missing",
                    gap,
                )
            return None
        if ts_ms > self.high_ms:
            # A lower number at a later time: the device restarted its counter (a reboot).
            lost, previous = self.missing, self.high
            self.start(ts_ms, seq)
            return (
                IngestEventKind.RESET,
                f"sequence restarted at {seq} after {previous}"
                + (f"; {lost} message{'s' if lost > 1 else ''} had gone missing" if lost else ""),
                lost,
            )
        if seq < self.base:
            # An earlier message of the same boot, stored after later ones (two workers' batches
            # commit in either order): the window reaches back to it.
            self.base = seq
        self.received += counted  # a late arrival fills its gap; a redelivery counts 0
        return None


def ingest_batch(entries: list[Entry]) -> IngestResult:
    """Store one batch of validated entries (see telemetry/validation.py); idempotent."""
    return BatchWriter(entries).write()


def reject_unstorable(entry: Entry, error: Exception) -> None:
    """Record an entry the database refused for what it holds (not for being down), so that a
    single poison message costs only itself."""
    key = entry[1] if isinstance(entry[1], str) else ""
    received_ms = (
        entry[2] if isinstance(entry[2], int) else int(datetime.now(UTC).timestamp() * 1000)
    )
    device = Device.objects.filter(key=key).values_list("id", "tenant_id").first()
    body = json.dumps(entry[3:], separators=(",", ":"), default=str)[:300].replace("\x00", "")
    reason = f"could not be stored ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    RejectedMessage.objects.create(
        device_id=device[0] if device else None,
        tenant_id=device[1] if device else None,
        device_key=key[:200],
        topic=f"fleet/{key}/telemetry"[:300],
        reason=reason.replace("\x00", ""),
        payload_excerpt=body,
        payload_size=len(body),
        received_at=_when(received_ms),
    )
