"""The MQTT ingest worker behind `manage.py mqtt_ingest`.

At least once, never lost:
- MQTT v5, QoS 1, a persistent session (clean_start off, a session expiry) under a stable client
  id, so the broker keeps this worker's share of messages while it restarts and redelivers what
  it had sent but not seen acknowledged;
- a shared subscription (`$share/ingest/...`), so several workers split the load;
- paho-mqtt's manual acks: a message is acknowledged only after the batch holding it was handed
  to Celery (pushed to Redis). Our Receive Maximum caps how many unacknowledged messages the broker
  sends ahead, which bounds what the worker holds in memory;
- a batch goes to Celery when it reaches INGEST_BATCH_SIZE messages or INGEST_FLUSH_SECONDS of
  age, or, while batches already wait in Celery, when full or INGEST_HOLD_SECONDS old: a worker
  stores a batch of 5,000 for little more than one of 500 (its cost goes with the devices in it),
  so under load batches grow and the workers catch up, while idle a message waits only
  INGEST_FLUSH_SECONDS; if Redis is down the worker keeps the batch, retries with backoff and
  acknowledges nothing,
  and the broker stops sending once Receive Maximum messages are unacknowledged;
- on SIGTERM it hands over what it holds, acknowledges it and disconnects cleanly.

Messages are validated here (telemetry/validation.py) before they are batched; a bad one becomes
a rejection entry in the batch, so it is recorded and acknowledged like the rest.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from django.conf import settings
from kombu.exceptions import ChannelError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from telemetry.validation import REJECTED, Entry, parse_message

log = logging.getLogger("telemetry.ingest")

SHARE_GROUP = "ingest"
TOPICS = (
    "fleet/+/telemetry",
    "fleet/+/status",
    "fleet/+/shadow/reported",
    "fleet/+/ota/status",  # firmware update progress (ota/protocol.py)
    "fleet/+/commands/+/ack",
)
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600
HANDOVER_BACKOFF_MAX = 10.0
# On SIGTERM with Redis down, how long to keep trying before leaving the batch to redelivery.
STOP_GRACE_SECONDS = 10.0

Send = Callable[[list[Entry]], None]
Backlog = Callable[[], int]


# The paho-mqtt release IngestClient and send_pubacks were written and tested against: they use
# paho's private methods and attributes, which any other release may have changed.
FAST_PATH_PAHO = "2.2.0"
FAST_PATH_NEEDS = ("_create_socket", "_handle_publish", "_packet_queue", "_send_puback")


def fast_path_refusal() -> str | None:
    """Why mqtt_ingest must use paho's own client (None: the fast path may be used)."""
    if not settings.INGEST_PAHO_FAST_PATH:
        return "INGEST_PAHO_FAST_PATH is off"
    if paho.mqtt.__version__ != FAST_PATH_PAHO:
        return (
            f"paho-mqtt is {paho.mqtt.__version__}, the fast path was written for "
            f"{FAST_PATH_PAHO}: pin paho-mqtt=={FAST_PATH_PAHO} to get it back"
        )
    missing = [name for name in FAST_PATH_NEEDS if not hasattr(mqtt.Client, name)]
    if missing:
        return f"paho-mqtt lacks {', '.join(missing)}"
    return None


class BufferedSocket:
    """The broker's socket, read 64 KB at a time.

    paho reads every packet with three recv() calls (its type, its length, the rest), each a
    system call that also hands the GIL over: two thirds of this process's CPU is paho's, and a
    quarter of that went to those calls. `pending()` is what paho asks of a TLS socket: bytes
    already read wait here, so its loop reads them without waiting in select() first. Everything
    else (send, fileno, close, setblocking...) goes to the socket itself."""

    CHUNK = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        if self._offset >= len(self._buffer):
            data = self._sock.recv(max(size, self.CHUNK))  # BlockingIOError, b"" at EOF: as is
            if len(data) <= size:
                return data
            self._buffer, self._offset = data, 0
        start = self._offset
        self._offset = min(start + size, len(self._buffer))
        chunk = self._buffer[start : self._offset]
        if self._offset == len(self._buffer):
            self._buffer, self._offset = b"", 0
        return chunk

    def buffered(self) -> int:
        return len(self._buffer) - self._offset

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)  # a TLS socket's own buffer
        return self.buffered() + (inner() if inner else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class IngestClient(mqtt.Client):
    """paho's client reading its socket through a BufferedSocket, and reading every whole packet
    already buffered in one go (paho reads one packet per turn of its loop, each turn a
    select()). A bare subscriber of this kind used 30 µs of CPU a message where plain paho
    used 41 (docs/performance.md)."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        """A QoS 0 or 1 PUBLISH without properties, what devices send, decoded here in a few
        slices; anything else (QoS 2, MQTT v5 properties) as paho does. paho's own decoding
        builds a Properties object, formats struct patterns and walks its topic-callback
        matcher for every message: 16 µs a message where this takes 5."""
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        topic_end = end = 2 + int.from_bytes(packet[0:2], "big")
        if qos > 1 or self._protocol != mqtt.MQTTv5 or len(packet) < end + 1 + 2 * (qos > 0):
            return super()._handle_publish()
        mid = 0
        if qos:
            mid = int.from_bytes(packet[end : end + 2], "big")
            end += 2
        if packet[end] != 0:  # a property length: paho reads the properties
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid, bytes(packet[2:topic_end]))
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.dup = bool(header & 0x08)
        message.payload = bytes(packet[end + 1 :])
        message.timestamp = time.monotonic()
        with self._in_callback_mutex:
            on_message = self.on_message
            if on_message is not None:
                on_message(self, self._userdata, message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # Each call reads one packet, or stops at a packet not yet whole (the socket would
        # block, the buffer is then empty): this ends.
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(self._sock, BufferedSocket):
            if not self._sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc


PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")  # an MQTT v5 PUBACK with reason Success: type, length 2, id


def send_pubacks(client: mqtt.Client, mids: list[int]) -> None:
    """Acknowledge QoS 1 messages by id, all in one write. paho's `ack()` queues a packet and
    wakes its network thread per message (~6 µs each, a tenth of this process's CPU); here one
    queued write carries them all. It uses paho's packet queue (paho-mqtt is pinned, and
    tests/telemetry/test_ingest_worker.py fails if the acks stop reaching the broker); with
    paho's own client (fast path off), one `ack()` per message."""
    if not mids:
        return
    if not isinstance(client, IngestClient):
        for mid in mids:
            client.ack(mid, 1)
        return
    pack = _PUBACK.pack
    client._packet_queue(PUBACK, b"".join([pack(PUBACK, 2, mid) for mid in mids]), 0, 0)


def subscriptions(group: str = SHARE_GROUP) -> list[tuple[str, SubscribeOptions]]:
    return [(f"$share/{group}/{topic}", SubscribeOptions(qos=1)) for topic in TOPICS]


def default_client_id() -> str:
    return f"iotfleet-ingest-{socket.gethostname()}"


def send_to_celery(entries: list[Entry]) -> None:
    from telemetry.tasks import ingest_batch_task

    # The batch goes as one JSON text: Celery decodes a task's arguments twice (its main process
    # reads them too) with a Python hook per JSON object, where the worker decodes this text
    # once with the C decoder (telemetry/tasks.py).
    batch = json.dumps(entries, separators=(",", ":"))
    # Fail fast (a few seconds) rather than hang: the worker retries the handover itself.
    ingest_batch_task.apply_async(
        args=[batch],
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def celery_backlog() -> int:
    """Batches waiting in the ingest task's queue (not yet taken by a worker)."""
    from telemetry.tasks import ingest_batch_task

    app = ingest_batch_task.app
    queue = getattr(ingest_batch_task, "queue", None) or app.conf.task_default_queue
    with app.pool.acquire(block=True) as connection:
        try:
            return connection.default_channel.queue_declare(queue, passive=True).message_count
        except ChannelError:  # Redis drops an empty list: no queue, nothing waits
            return 0


@dataclass
class Counters:
    messages: int = 0
    rejected: int = 0
    batches: int = 0
    since: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        self.messages = self.rejected = self.batches = 0
        self.since = time.monotonic()


class IngestWorker:
    def __init__(
        self,
        url: str | None = None,
        client_id: str | None = None,
        *,
        batch_size: int | None = None,
        flush_seconds: float | None = None,
        receive_maximum: int | None = None,
        stats_seconds: float | None = None,
        send: Send = send_to_celery,
        backlog: Backlog | None = celery_backlog,
    ) -> None:
        self.url = urllib.parse.urlsplit(url or settings.MQTT_URL)
        self.client_id = client_id or default_client_id()
        self.batch_size = batch_size or settings.INGEST_BATCH_SIZE
        self.flush_seconds = flush_seconds or settings.INGEST_FLUSH_SECONDS
        self.receive_maximum = receive_maximum or settings.INGEST_RECEIVE_MAXIMUM
        self.stats_seconds = stats_seconds or settings.INGEST_STATS_SECONDS
        self.send = send
        self.backlog = backlog
        self.hold_seconds = max(settings.INGEST_HOLD_SECONDS, self.flush_seconds)
        self.min_batch = min(settings.INGEST_MIN_BATCH, self.batch_size)
        self.busy_until = 0.0  # monotonic time until which Celery is taken to be busy

        self.lock = threading.Lock()
        self.pending: list[Entry] = []
        self.acks: list[tuple[int, int, int]] = []  # (connection, mid, qos)
        self.oldest = 0.0  # monotonic time the oldest pending message arrived
        self.full = threading.Event()
        self.stopping = threading.Event()
        self.connection = 0  # bumped on every connect: acks only go back on their own connection
        self.connected = threading.Event()
        self.interval = Counters()
        self.total = Counters()
        self.client = self._make_client()

    # --- MQTT ---------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        refusal = fast_path_refusal()
        if refusal:
            log.warning("receiving with paho's own client, ~2x the CPU a message: %s", refusal)
        client = (mqtt.Client if refusal else IngestClient)(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.url.username:
            client.username_pw_set(
                urllib.parse.unquote(self.url.username),
                urllib.parse.unquote(self.url.password or ""),
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        return client

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error(
                "MQTT broker %s refused the connection: %s (check MQTT_URL's user and password)",
                self.url.hostname,
                reason_code,
            )
            return
        with self.lock:
            self.connection += 1
        log.info(
            "connected to %s:%s as %s (session %s)",
            self.url.hostname,
            self.url.port or 1883,
            self.client_id,
            "resumed" if flags.session_present else "new",
        )
        client.subscribe(subscriptions())
        self.connected.set()

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("lost the MQTT broker (%s); reconnecting with backoff", reason_code)

    def on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        entry = parse_message(message.topic, message.payload, int(time.time() * 1000))
        with self.lock:
            if not self.pending:
                self.oldest = time.monotonic()
            self.pending.append(entry)
            if message.qos:
                self.acks.append((self.connection, message.mid, message.qos))
            if len(self.pending) >= self.batch_size:
                self.full.set()

    # --- batches ------------------------------------------------------------------------------
    def take_batch(self) -> tuple[list[Entry], list[tuple[int, int, int]]]:
        with self.lock:
            batch, acks = self.pending, self.acks
            self.pending, self.acks = [], []
            self.full.clear()
            return batch, acks

    def hand_over(self, batch: list[Entry]) -> bool:
        """Push the batch to Celery, retrying with backoff; False if stopping cut it short."""
        delay, deadline = 0.5, None
        while True:
            try:
                self.send(batch)
                return True
            except Exception as error:  # the broker's errors vary by transport; all mean "retry"
                if self.stopping.is_set():
                    deadline = deadline or time.monotonic() + STOP_GRACE_SECONDS
                    if time.monotonic() > deadline:
                        log.error(
                            "stopping with %d messages not handed to Celery (%s); they stay "
                            "unacknowledged and the MQTT broker redelivers them",
                            len(batch),
                            error,
                        )
                        return False
                log.warning(
                    "cannot hand %d messages to Celery (%s: %s); holding them, retry in %.1f s",
                    len(batch),
                    type(error).__name__,
                    error,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, HANDOVER_BACKOFF_MAX)

    def flush(self) -> None:
        batch, acks = self.take_batch()
        if not batch:
            return
        if not self.hand_over(batch):
            return
        with self.lock:
            current = self.connection
        # A message from an earlier connection is redelivered by the broker on this one (and
        # stored only once): acknowledging its old id here could ack another message.
        send_pubacks(self.client, [mid for c, mid, qos in acks if c == current and qos == 1])
        for connection, mid, qos in acks:
            if connection == current and qos > 1:  # we subscribe at QoS 1: should not happen
                self.client.ack(mid, qos)
        rejected = sum(1 for entry in batch if entry[0] == REJECTED)
        for counters in (self.interval, self.total):
            counters.messages += len(batch)
            counters.rejected += rejected
            counters.batches += 1

    def due(self) -> bool:
        with self.lock:
            if not self.pending:
                return False
            size = len(self.pending)
            if size >= self.batch_size:
                return True
            age = time.monotonic() - self.oldest
        if age >= self.hold_seconds:
            return True
        if age < self.flush_seconds or size < self.min_batch:
            return False  # a trickle gathers for up to hold_seconds: no task per message
        return not self.celery_busy()

    def celery_busy(self) -> bool:
        """Whether batches wait in Celery (asked at most every flush_seconds / 4)."""
        now = time.monotonic()
        if now < self.busy_until:
            return True
        if self.backlog is None:
            return False
        try:
            waiting = self.backlog()
        except Exception:  # the handover will meet (and retry) the same trouble
            return False
        if waiting:
            self.busy_until = now + self.flush_seconds / 4
        return bool(waiting)

    def wait_time(self) -> float:
        with self.lock:
            if not self.pending:
                return self.flush_seconds
            age = time.monotonic() - self.oldest
        if age < self.flush_seconds:
            return self.flush_seconds - age
        # Gathering a small batch, or held while Celery is busy: look again shortly.
        again = max(self.busy_until - time.monotonic(), self.flush_seconds / 4)
        return max(0.0, min(again, self.hold_seconds - age))

    def log_throughput(self, final: bool = False) -> None:
        counters = self.total if final else self.interval
        elapsed = max(time.monotonic() - counters.since, 1e-9)
        per_batch = counters.messages / counters.batches if counters.batches else 0.0
        log.info(
            "%s: %d messages in %.0f s (%.0f msg/s), %d batches (%.0f per batch, %.4f tasks per "
            "message), %d rejected, holding %d",
            "ingest total" if final else "ingest",
            counters.messages,
            elapsed,
            counters.messages / elapsed,
            counters.batches,
            per_batch,
            counters.batches / counters.messages if counters.messages else 0.0,
            counters.rejected,
            len(self.pending),
        )
        if not final:
            self.interval.reset()

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self.stopping.set()
        self.full.set()

    def run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        properties.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(
            self.url.hostname or "127.0.0.1",
            self.url.port or 1883,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        # What the process holds now (Django, paho, Celery: ~200,000 objects) stays out of the
        # garbage collector's rounds, which the parsed messages set off every few batches.
        gc.freeze()
        self.client.loop_start()
        log.info(
            "mqtt_ingest started: %s, batches of %d or %.2f s, receive maximum %d",
            ", ".join(f"$share/{SHARE_GROUP}/{t}" for t in TOPICS),
            self.batch_size,
            self.flush_seconds,
            self.receive_maximum,
        )
        next_stats = time.monotonic() + self.stats_seconds
        try:
            while not self.stopping.is_set():
                self.full.wait(
                    timeout=min(self.wait_time(), max(0.0, next_stats - time.monotonic()))
                )
                if self.due():
                    self.flush()
                if time.monotonic() >= next_stats:
                    self.log_throughput()
                    next_stats = time.monotonic() + self.stats_seconds
            self.flush()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.log_throughput(final=True)
            log.info("mqtt_ingest stopped cleanly")
