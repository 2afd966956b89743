"""Ingest benchmark (issue 4): how fast telemetry goes from MQTT into PostgreSQL on this machine.

    .venv/bin/python bench/ingest.py            # full run, < ~10 minutes
    .venv/bin/python bench/ingest.py --quick    # smoke run, < ~2 minutes

It builds its own world, so runs are repeatable: a private Mosquitto configured as in production
(tests/servers.py: persistence, unlimited queues), a private Redis (append-only file, fsync per
write, as the end-to-end tests run it) and a database `iotfleet_bench` on the machine's PostgreSQL
(127.0.0.1:5432), dropped, migrated and seeded with a tenant, a device type of 3 metrics and
1,000 devices. Every phase empties the readings first. Then it measures, all on this machine:

- R_mqtt  a bare paho subscriber (MQTT v5, QoS 1, shared subscription, manual ack of each message
          at once) while publisher processes flood QoS 1 telemetry of 3 metrics;
- R_copy  psycopg 3 binary COPY of (time, device_id, metric_id, value, flagged) rows straight into
          telemetry_reading, 50,000 rows per COPY and commit (rows/s, and rows/s ÷ 3 as messages);
- R_naive one INSERT per message (Reading.objects.bulk_create of the message's 3 readings, in
          autocommit) in a paho on_message callback, acking each message after its insert;
- R_pipe  the real pipeline (`manage.py mqtt_ingest` + `celery -A iotfleet worker`) at fixed
          offered rates, searched upward (doubling, then bisecting) for the highest sustained;
- latency publish→stored at R_pipe / 2, and an overload of 2 x R_pipe for 20 s then R_pipe / 2:
          RSS of every process and the time the backlog takes to drain.

See docs/performance.md for the method, the figures of a run and what limits them.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.databases import database_url, fresh_database  # noqa: E402
from tests.servers import celery_worker, start_mosquitto, start_redis  # noqa: E402

DATABASE = "iotfleet_bench"
DEVICES = 1000
KEYS = [f"bench-{n:04d}" for n in range(DEVICES)]
METRICS = (("temperature", "°C", -40, 60), ("humidity", "%", 0, 100), ("co2", "ppm", 0, 5000))
PAYLOAD = b'{"ts":%d,"seq":%d,"metrics":{"temperature":%d.5,"humidity":48.25,"co2":612}}'
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SAMPLE_EVERY = 25
FLOOD_AHEAD = 20_000  # latency: every 25th message of a publisher is followed to the database

TARGET_RATE = 10_000
TARGET_LATENCY_P99_MS = 250


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- publishers ---------------------------------------------------------------------------------
@dataclass
class Segment:
    rate: float | None  # messages/s over all publishers; None: as fast as possible
    seconds: float


def _length(n: int) -> bytes:
    """MQTT's variable-length 'remaining length'."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keep-alive off (a run is short and the socket is busy).
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(client_id).to_bytes(2, "big") + client_id.encode()
    return b"\x10" + _length(len(body)) + body


def publish(
    port: int,
    index: int,
    share: int,
    plan: list[Segment],
    sent: mp.Value,
    acked: mp.Value,
    samples: mp.Queue | None,
    ids: list[int],
    first_seq: int = 0,
    consumed: mp.Value | None = None,
) -> None:
    """One publisher process: devices index::share of KEYS, QoS 1 PUBLISH packets written to the
    socket in chunks, PUBACKs counted as they come (4 bytes each). A device-side MQTT client,
    reduced to what the broker sees: paho costs ~50 µs of CPU per publish, so two paho publishers
    at 10,000 msg/s took half a core from the pipeline they measure. `ts` is the publish time
    (epoch ms), unique per device."""
    import socket

    keys = KEYS[index::share]
    device_ids = ids[index::share]
    heads = [len(t := f"fleet/{key}/telemetry".encode()).to_bytes(2, "big") + t for key in keys]
    seqs = [first_seq] * len(keys)
    last_ts = [0] * len(keys)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"bench-pub-{index}-{os.getpid()}"))
    assert sock.recv(4)[:2] == b"\x20\x02", "the broker refused the publisher"
    sock.setblocking(False)
    received = 0  # bytes of PUBACK

    def read_acks() -> None:
        nonlocal received
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(65536):
                received += len(chunk)

    n = 0
    chunk = 50
    for segment in plan:
        start = time.monotonic()
        end = start + segment.seconds
        rate = segment.rate / share if segment.rate else None
        done = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if rate:
                due = (now - start) * rate - done
                if due < chunk:
                    time.sleep(min(0.02, (chunk - due) / rate))
                    continue
                count = min(int(due), 4 * chunk)
            else:
                count = chunk
            # A flood stays at most FLOOD_AHEAD messages ahead of its consumer: an unbounded one
            # makes the broker spend a core queueing (and GBs holding) what nobody reads yet.
            while consumed is not None and sent.value - consumed.value > FLOOD_AHEAD:
                time.sleep(0.001)
                read_acks()
            while n - received // 4 > 20_000:  # outstanding QoS 1 messages (packet ids)
                time.sleep(0.001)
                read_acks()
            now_ms = int(time.time() * 1000)
            packets = []
            for _ in range(count):
                d = n % len(keys)
                ts = now_ms if now_ms > last_ts[d] else last_ts[d] + 1
                last_ts[d] = ts
                body = (
                    heads[d] + (n % 65535 + 1).to_bytes(2, "big") + PAYLOAD % (ts, seqs[d], n % 50)
                )
                packets.append(b"\x32" + _length(len(body)) + body)
                seqs[d] += 1
                n += 1
                if samples is not None and n % SAMPLE_EVERY == 0:
                    samples.put((device_ids[d], ts))
            data = b"".join(packets)
            sock.setblocking(True)
            sock.sendall(data)
            sock.setblocking(False)
            done += count
            with sent.get_lock():
                sent.value += count
            read_acks()
    deadline = time.monotonic() + 60
    while received // 4 < n and time.monotonic() < deadline:
        time.sleep(0.01)
        read_acks()
    with acked.get_lock():
        acked.value += received // 4
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


class Publishers:
    def __init__(self, port: int, processes: int, ids: list[int]) -> None:
        self.port, self.processes, self.ids = port, processes, ids
        self.sent = mp.Value("q", 0)
        self.acked = mp.Value("q", 0)
        self.samples: mp.Queue | None = None
        self.procs: list[mp.Process] = []
        self.phase = 0

    def start(
        self, plan: list[Segment], sampled: bool = False, consumed: mp.Value | None = None
    ) -> None:
        # Each phase's sequence numbers go on from far above the last's, so a device's
        # sequence window (telemetry_deviceingeststate) never restarts: a fresh window is
        # opened by whichever batch commits first, and with two Celery processes that may be
        # the later one, whose earlier messages would then not be counted.
        self.phase += 1
        self.sent.value = self.acked.value = 0
        self.samples = mp.Queue() if sampled else None
        self.procs = [
            mp.Process(
                target=publish,
                args=(
                    self.port,
                    i,
                    self.processes,
                    plan,
                    self.sent,
                    self.acked,
                    self.samples,
                    self.ids,
                    self.phase * 10_000_000,
                    consumed,
                ),
                daemon=True,
            )
            for i in range(self.processes)
        ]
        for proc in self.procs:
            proc.start()

    def running(self) -> bool:
        return any(proc.is_alive() for proc in self.procs)

    def join(self) -> None:
        for proc in self.procs:
            proc.join(timeout=60)


# --- the world ------------------------------------------------------------------------------
@dataclass
class World:
    tmp: Path
    args: argparse.Namespace
    mosquitto: object = None
    redis: object = None
    env: dict[str, str] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    metric_ids: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    baseline: int = 0

    @property
    def database_url(self) -> str:
        return database_url(DATABASE)

    def setup(self) -> None:

        self.mosquitto = start_mosquitto(self.tmp / "mosquitto")
        self.redis = start_redis(self.tmp / "redis", persistent=True)
        fresh_database(DATABASE)
        self.env = {
            "DJANGO_SETTINGS_MODULE": "iotfleet.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_RESULT_BACKEND": self.redis.url,
            "MQTT_URL": self.mosquitto.url,
            "MQTT_DYNSEC_ENABLED": "false",
            # As in production: with DEBUG on, Django keeps every query of a worker in memory.
            "DEBUG": "false",
            "LOG_LEVEL": "INFO",
            "INGEST_STATS_SECONDS": "5",
            # The backends' CPU is counted by pid: a reconnection (every minute by default)
            # would lose the old backend's share. One connection a minute costs nothing here.
            "DATABASE_CONN_MAX_AGE": "3600",
        }
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        self.seed()

    def seed(self) -> None:
        from django.db import connections

        from devices.models import DeviceType, Metric, Tenant
        from devices.services import DeviceSpec, create_devices

        tenant = Tenant.objects.create(name="Bench", slug="bench")
        kind = DeviceType.objects.create(tenant=tenant, name="Environment sensor")
        for name, unit, low, high in METRICS:
            Metric.objects.create(
                device_type=kind, name=name, unit=unit, min_value=low, max_value=high
            )
        create_devices(tenant, [DeviceSpec(key=key, name=key, device_type=kind) for key in KEYS])
        from devices.models import Device

        by_key = dict(Device.objects.values_list("key", "id"))
        self.ids = [by_key[key] for key in KEYS]
        self.metric_ids = list(
            Metric.objects.filter(device_type=kind).order_by("id").values_list("id", flat=True)
        )
        connections.close_all()  # forked processes must not share the connection

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, application_name="bench") as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def empty(self) -> None:
        """Empty the readings (not the devices' sequence windows: see Publishers.start)."""
        self.sql(
            "TRUNCATE telemetry_reading, telemetry_latestreading, telemetry_rejectedmessage, "
            "telemetry_ingestevent"
        )
        self.sql("CHECKPOINT")
        self.sql("VACUUM ANALYZE devices_device, telemetry_deviceingeststate")
        self.baseline = self._received()

    def _received(self) -> int:
        query = "SELECT coalesce(sum(seq_received), 0) FROM telemetry_deviceingeststate"
        return int(self.sql(query)[0][0])

    def stored_messages(self) -> int:
        """Messages of this phase stored so far (the devices' counts of sequenced readings
        received): an aggregate over 1,000 rows, where count(*) would scan millions."""
        return self._received() - self.baseline

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends of the benchmark's database but for the script's own
        (application_name "bench", see sql())."""
        query = (
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name <> 'bench'"
            " AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in self.sql(query, (DATABASE,))]

    def stored_rows(self) -> int:
        return int(self.sql("SELECT count(*) FROM telemetry_reading")[0][0])

    def launch(self, name: str, *argv: str, **extra: str) -> subprocess.Popen:
        log_path = self.tmp / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO,
                env={**os.environ, **self.env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log = log_path  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def wait_for_log(self, process: subprocess.Popen, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in process.log.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise RuntimeError(process.log.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        raise RuntimeError(f"{text!r} not logged:\n{process.log.read_text()[-3000:]}")

    def stop(self, process: subprocess.Popen, timeout: float = 30) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def teardown(self) -> None:
        for process in self.processes:
            self.stop(process)
        for server in (self.mosquitto, self.redis):
            if server:
                server.stop()


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(c) for c in text]
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


# --- R_mqtt ---------------------------------------------------------------------------------
def bare_subscriber(port: int, received: mp.Value, ready: mp.Event, stop: mp.Event) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    count = 0

    def on_message(client, userdata, message) -> None:
        nonlocal count
        client.ack(message.mid, message.qos)
        count += 1
        if count % 500 == 0:
            with received.get_lock():
                received.value += 500

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([("$share/bare/fleet/+/telemetry", SubscribeOptions(qos=1))])

    def on_subscribe(*_args) -> None:
        ready.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="bench-bare",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.on_message, client.on_connect, client.on_subscribe = on_message, on_connect, on_subscribe
    properties = Properties(PacketTypes.CONNECT)
    # The same Receive Maximum as mqtt_ingest (the environment's, else the settings' default).
    from django.conf import settings

    properties.ReceiveMaximum = settings.INGEST_RECEIVE_MAXIMUM
    client.connect("127.0.0.1", port, clean_start=True, properties=properties)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def measure_mqtt(world: World, publishers: Publishers, seconds: float) -> dict:
    world.empty()
    received, ready, stop = mp.Value("q", 0), mp.Event(), mp.Event()
    sub = mp.Process(target=bare_subscriber, args=(world.mosquitto.port, received, ready, stop))
    sub.start()
    ready.wait(10)
    publishers.start([Segment(None, seconds + 2)], consumed=received)
    time.sleep(2)  # warm up
    r0, p0, t0 = received.value, publishers.sent.value, time.monotonic()
    time.sleep(seconds)
    r1, p1, t1 = received.value, publishers.sent.value, time.monotonic()
    publishers.join()
    stop.set()
    sub.join(10)
    return {"rate": (r1 - r0) / (t1 - t0), "offered": (p1 - p0) / (t1 - t0)}


# --- R_copy ---------------------------------------------------------------------------------
def measure_copy(world: World, messages: int) -> dict:
    import psycopg

    world.empty()
    start_ms = int(time.time() * 1000) - 3_600_000
    rows = []
    for n in range(messages):
        d = n % DEVICES
        when = datetime.fromtimestamp((start_ms + n // DEVICES) / 1000, tz=UTC)
        for m, metric_id in enumerate(world.metric_ids):
            rows.append((when, world.ids[d], metric_id, 20.0 + m, False))
    chunk = 50_000
    with psycopg.connect(world.database_url) as conn:
        t0 = time.monotonic()
        for i in range(0, len(rows), chunk):
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY telemetry_reading (time, device_id, metric_id, value, flagged) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["timestamptz", "int8", "int4", "float8", "bool"])
                for row in rows[i : i + chunk]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.monotonic() - t0
    assert world.stored_rows() == len(rows)
    return {"rows": len(rows) / elapsed, "messages": len(rows) / 3 / elapsed}


# --- R_naive --------------------------------------------------------------------------------
def naive_subscriber(
    port: int, received: mp.Value, ready: mp.Event, stop: mp.Event, ids, metric_ids
):
    import json

    import paho.mqtt.client as mqtt
    from django.db import connection
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from telemetry.models import Reading

    connection.close()
    device_of = dict(zip(KEYS, ids, strict=True))  # cached: only the insert is naive
    metric_of = dict(zip([m[0] for m in METRICS], metric_ids, strict=True))

    def on_message(client, userdata, message) -> None:
        body = json.loads(message.payload)
        device_id = device_of[message.topic.split("/")[1]]
        when = datetime.fromtimestamp(body["ts"] / 1000, tz=UTC)
        Reading.objects.bulk_create(
            [
                Reading(time=when, device_id=device_id, metric_id=metric_of[name], value=value)
                for name, value in body["metrics"].items()
            ]
        )
        client.ack(message.mid, message.qos)
        with received.get_lock():
            received.value += 1

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([("$share/naive/fleet/+/telemetry", SubscribeOptions(qos=1))])

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="bench-naive",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.on_message, client.on_connect = on_message, on_connect
    client.on_subscribe = lambda *_: ready.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = 100
    client.connect("127.0.0.1", port, clean_start=True, properties=properties)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def measure_naive(world: World, publishers: Publishers, seconds: float) -> dict:
    world.empty()
    received, ready, stop = mp.Value("q", 0), mp.Event(), mp.Event()
    sub = mp.Process(
        target=naive_subscriber,
        args=(world.mosquitto.port, received, ready, stop, world.ids, world.metric_ids),
    )
    sub.start()
    ready.wait(10)
    publishers.start([Segment(3000, seconds + 2)])
    time.sleep(2)
    r0, t0 = received.value, time.monotonic()
    time.sleep(seconds)
    r1, t1 = received.value, time.monotonic()
    stop.set()
    publishers.join()
    sub.join(10)
    return {"rate": (r1 - r0) / (t1 - t0)}


# --- R_pipe ---------------------------------------------------------------------------------
@dataclass
class Pipeline:
    world: World
    ingests: list[subprocess.Popen] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start(self, ingests: int, concurrency: int) -> None:
        for n in range(ingests):
            process = self.world.launch(
                f"ingest-{n}", "manage.py", "mqtt_ingest", "--client-id", f"bench-ingest-{n}"
            )
            self.ingests.append(process)
        worker = self.world.launch(
            "worker",
            *celery_worker(f"bench-{uuid.uuid4().hex[:6]}", concurrency, level="warning"),
            "--without-heartbeat",
        )
        self.workers.append(worker)
        for process in self.ingests:
            self.world.wait_for_log(process, "connected to")
        time.sleep(3)  # the worker's pool boots (it logs nothing at level warning)

    def pids(self) -> dict[str, list[int]]:
        workers = []
        for worker in self.workers:
            workers += [worker.pid, *children(worker.pid)]
        return {
            "ingest": [p.pid for p in self.ingests],
            "worker": workers,
            "mosquitto": [self.world.mosquitto.process.pid],
        }

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds so far of every process of the pipeline, by pid: the ingest and worker
        processes, Mosquitto, Redis and the PostgreSQL backends serving the pipeline (the
        database's shared WAL writer and checkpointer are left out: other databases use them)."""
        pids = self.pids()
        pids["redis"] = [self.world.redis.process.pid]
        pids["postgres"] = self.world.backend_pids()
        return {name: {pid: cpu_seconds(pid) for pid in found} for name, found in pids.items()}

    def queue_length(self) -> int:
        import redis

        return int(redis.Redis.from_url(self.world.redis.url).llen("celery"))


@dataclass
class Run:
    offered: float
    achieved: float
    stored_rate: float
    backlog_mid: int
    backlog_end: int
    samples: list[tuple[float, int, int]]  # (t, published, stored)

    @property
    def sustained(self) -> bool:
        """The issue's definition: stored keeps up with published, the backlog does not grow
        over the second half of the window (5 % of a half-window's messages of slack for
        batch-sized steps)."""
        half = self.achieved * (self.samples[-1][0] / 2 if self.samples else 1)
        return (
            self.achieved >= 0.95 * self.offered
            and self.stored_rate >= 0.97 * self.achieved
            and self.backlog_end <= self.backlog_mid + max(0.05 * half, 2000)
        )


def prime(world: World, publishers: Publishers) -> None:
    """One message per device, stored, before anything is measured: every device's sequence
    window opens in order, and the workers have their connections and prepared statements."""
    world.empty()
    publishers.start([Segment(DEVICES, 1.0)])
    publishers.join()
    deadline = time.monotonic() + 60
    while world.stored_rows() < 3 * publishers.sent.value and time.monotonic() < deadline:
        time.sleep(0.2)


def drain(world: World, publishers: Publishers, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if world.stored_messages() >= publishers.sent.value:
            return time.monotonic() - start
        time.sleep(0.2)
    return float("inf")


def offer(world: World, publishers: Publishers, rate: float, seconds: float) -> Run:
    world.empty()
    publishers.start([Segment(rate, seconds)])
    t0 = time.monotonic()
    samples = []
    while publishers.running():
        time.sleep(max(0.0, 1 - (time.monotonic() - t0) % 1))
        samples.append((time.monotonic() - t0, publishers.sent.value, world.stored_messages()))
    publishers.join()
    end = [s for s in samples if s[0] <= seconds + 0.5][-1]
    mid = min(samples, key=lambda s: abs(s[0] - seconds / 2))
    achieved = end[1] / end[0]
    stored_rate = (end[2] - mid[2]) / (end[0] - mid[0])
    run = Run(rate, achieved, stored_rate, mid[1] - mid[2], end[1] - end[2], samples)
    drained = drain(world, publishers)
    published = publishers.sent.value
    rows = world.stored_rows()
    log(
        f"offered {rate:,.0f}/s: published {achieved:,.0f}/s, stored {stored_rate:,.0f}/s over "
        f"the 2nd half, backlog {run.backlog_mid:,} → {run.backlog_end:,}, drained in "
        f"{drained:.1f} s → {'sustained' if run.sustained else 'NOT sustained'}"
    )
    assert rows == 3 * published, f"{rows} rows stored for {published} messages"
    return run


def search(
    world: World, publishers: Publishers, start: float, seconds: float, steps: int
) -> tuple[float, Run]:
    best, best_run, low, high = 0.0, None, 0.0, None
    rate = start
    for _ in range(steps):
        run = offer(world, publishers, rate, seconds)
        if run.sustained:
            best, best_run, low = run.achieved, run, rate
        else:
            high = rate
        if high is None:
            rate = rate * 2
        else:
            if high - low < 0.06 * high:
                break
            rate = (low + high) / 2 if low else high / 2
    return best, best_run


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict:
    """CPU seconds each kind of process used between two Pipeline.cpu() snapshots (a process
    that started in between counts from zero)."""
    return {
        name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
        for name, pids in after.items()
    }


def measure_latency(
    world: World, publishers: Publishers, pipeline: Pipeline, rate: float, seconds: float
) -> dict:
    import psycopg

    world.empty()
    cpu0 = pipeline.cpu()
    publishers.start([Segment(rate, seconds)], sampled=True)
    pending: dict[tuple[int, int], None] = {}
    latencies: list[float] = []
    metric_id = world.metric_ids[0]
    with psycopg.connect(world.database_url, autocommit=True, application_name="bench") as conn:
        deadline = float("inf")
        while publishers.running() or pending or not publishers.samples.empty():
            if not publishers.running():
                deadline = min(deadline, time.monotonic() + 30)
                if time.monotonic() > deadline:
                    log(f"latency: {len(pending)} samples never seen stored")
                    break
            while not publishers.samples.empty():
                pending[publishers.samples.get_nowait()] = None
            if pending:
                asked = time.time()
                devices = [d for d, _ in pending]
                times = [EPOCH + timedelta(milliseconds=ts) for _, ts in pending]
                found = conn.execute(
                    "SELECT r.device_id, (extract(epoch FROM r.time) * 1000)::bigint "
                    "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(device_id, time) "
                    "JOIN telemetry_reading r ON r.device_id = v.device_id "
                    "AND r.metric_id = %s AND r.time = v.time",
                    (devices, times, metric_id),
                ).fetchall()
                for device_id, ts in found:
                    pending.pop((device_id, ts), None)
                    latencies.append(asked * 1000 - ts)
            time.sleep(0.01)
    publishers.join()
    drain(world, publishers)
    cpu = cpu_used(cpu0, pipeline.cpu())
    stored = world.stored_messages()
    latencies.sort()
    return {
        "cpu_us": {name: used / max(stored, 1) * 1e6 for name, used in cpu.items()},
        "count": len(latencies),
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "max": latencies[-1],
    }


def measure_overload(
    world: World, pipeline: Pipeline, publishers: Publishers, rate: float, seconds: float
) -> dict:
    world.empty()
    before = {name: sum(rss_kb(p) for p in pids) for name, pids in pipeline.pids().items()}
    publishers.start([Segment(2 * rate, seconds), Segment(rate / 2, 90)])
    t0 = time.monotonic()
    peak = dict.fromkeys(before, 0)
    peak_queue = 0
    overload_end = None
    drained_after = None
    trace = []
    while publishers.running():
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0) % 0.5))
        t = time.monotonic() - t0
        for name, pids in pipeline.pids().items():
            peak[name] = max(peak[name], sum(rss_kb(p) for p in pids))
        queue = pipeline.queue_length()
        peak_queue = max(peak_queue, queue)
        backlog = publishers.sent.value - world.stored_messages()
        trace.append((round(t, 1), backlog, queue, publishers.sent.value))
        if t >= seconds and overload_end is None:
            overload_end = t
        if overload_end is not None and t > overload_end + 1 and backlog <= max(rate / 2, 1000):
            drained_after = t - overload_end
            break
    overload_sent = next((sent for t, _, _, sent in trace if t >= seconds), 0)
    for proc in publishers.procs:
        proc.terminate()
    publishers.join()
    drain(world, publishers)
    return {
        "offered": overload_sent / seconds,
        "before_mb": {k: v / 1024 for k, v in before.items()},
        "peak_mb": {k: v / 1024 for k, v in peak.items()},
        "peak_backlog": max(b for _, b, _, _ in trace),
        "peak_queue": peak_queue,
        "drain_s": drained_after,
        "trace": trace,
    }


# --- report ---------------------------------------------------------------------------------
def cpu_line(per_message: dict[str, float]) -> str:
    """CPU µs per message by process, and the rate at which they would fill every CPU."""
    total = sum(per_message.values())
    parts = ", ".join(f"{name} {us:.0f}" for name, us in per_message.items())
    full = (os.cpu_count() or 1) * 1e6 / total if total else 0.0
    return f"{parts} µs (total {total:.0f} µs: all CPUs busy at ~{full:,.0f} msg/s)"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 2 min)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--ingests", type=int, default=1, help="mqtt_ingest processes")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--start-rate", type=float, default=5000, help="first rate of the search")
    parser.add_argument("--only-pipe", action="store_true", help="skip R_mqtt, R_copy, R_naive")
    parser.add_argument(
        "--latency-at", type=float, help="only measure latency at this rate (msg/s), no search"
    )
    args = parser.parse_args()
    window = 6.0 if args.quick else 20.0
    steps = 3 if args.quick else 7

    tmp = Path(tempfile.mkdtemp(prefix="iotfleet-bench-"))
    world = World(tmp, args)
    results: dict = {}
    t_start = time.monotonic()
    try:
        log(f"setting up in {tmp}")
        world.setup()
        publishers = Publishers(world.mosquitto.port, args.publishers, world.ids)
        if not args.only_pipe:
            log("R_mqtt: bare paho subscriber")
            results["mqtt"] = measure_mqtt(world, publishers, 4 if args.quick else 10)
            log(f"R_mqtt {results['mqtt']}")
            log("R_copy: binary COPY into telemetry_reading")
            results["copy"] = measure_copy(world, 100_000 if args.quick else 400_000)
            log(f"R_copy {results['copy']}")
            log("R_naive: one INSERT per message")
            results["naive"] = measure_naive(world, publishers, 4 if args.quick else 10)
            log(f"R_naive {results['naive']}")
        log("R_pipe: mqtt_ingest + Celery worker")
        pipeline = Pipeline(world)
        pipeline.start(args.ingests, args.concurrency)
        prime(world, publishers)
        if args.latency_at:
            results["latency"] = latency = measure_latency(
                world, publishers, pipeline, args.latency_at, window
            )
            print(
                f"latency at {args.latency_at:,.0f}/s: p50 {latency['p50']:.0f} ms, p99 "
                f"{latency['p99']:.0f} ms, max {latency['max']:.0f} ms ({latency['count']} "
                f"samples); CPU per message: {cpu_line(latency['cpu_us'])}"
            )
            return
        cpu0 = pipeline.cpu()
        rate, run = search(world, publishers, args.start_rate, window, steps)
        results["pipe"] = rate
        results["pipe_run"] = run
        results["cpu"] = cpu_used(cpu0, pipeline.cpu())
        log(f"R_pipe {rate:,.0f}")
        if rate:
            log(f"latency at {rate / 2:,.0f}/s")
            results["latency"] = measure_latency(world, publishers, pipeline, rate / 2, window)
            log(f"latency {results['latency']}")
            log(f"overload: {2 * rate:,.0f}/s for {window:g} s, then {rate / 2:,.0f}/s")
            results["overload"] = measure_overload(world, pipeline, publishers, rate, window)
            log(f"overload {results['overload']}")
    finally:
        world.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, time.monotonic() - t_start, args)


def report(results: dict, elapsed: float, args: argparse.Namespace) -> None:
    pipe = results.get("pipe", 0.0)
    lines = [
        f"IoTFleet ingest benchmark ({'quick' if args.quick else 'full'} run, {os.cpu_count()} "
        f"CPUs, {args.publishers} publisher(s), {args.ingests} mqtt_ingest, Celery concurrency "
        f"{args.concurrency}; {elapsed:.0f} s)",
        "",
    ]
    mqtt_rate = results.get("mqtt", {}).get("rate")
    copy = results.get("copy", {})
    naive = results.get("naive", {}).get("rate")
    if mqtt_rate:
        lines.append(
            f"R_mqtt   bare paho subscriber          {mqtt_rate:>9,.0f} msg/s "
            f"(publishers offered {results['mqtt']['offered']:,.0f}/s)"
        )
    if copy:
        lines.append(
            f"R_copy   binary COPY                   {copy['rows']:>9,.0f} rows/s "
            f"(= {copy['messages']:,.0f} msg/s of 3 metrics)"
        )
    if naive:
        lines.append(f"R_naive  one INSERT per message        {naive:>9,.0f} msg/s")
    lines.append(
        f"R_pipe   mqtt_ingest + Celery, sustained{pipe:>8,.0f} msg/s ({3 * pipe:,.0f} rows/s)"
    )
    run = results.get("pipe_run")
    if run:
        lines.append(
            f"         backlog at R_pipe over its window: {run.backlog_mid:,} → "
            f"{run.backlog_end:,} messages (not growing)"
        )
    latency = results.get("latency")
    if latency:
        lines.append(
            f"latency  publish→stored at {pipe / 2:,.0f}/s   p50 {latency['p50']:.0f} ms, "
            f"p99 {latency['p99']:.0f} ms, max {latency['max']:.0f} ms ({latency['count']} samples)"
        )
        lines.append(f"CPU      per message at {pipe / 2:,.0f}/s    {cpu_line(latency['cpu_us'])}")
    overload = results.get("overload")
    if overload:
        peak = ", ".join(
            f"{k} {overload['before_mb'][k]:.0f}→{v:.0f} MB" for k, v in overload["peak_mb"].items()
        )
        drain = overload["drain_s"]
        lines.append(
            f"overload 2xR_pipe for the window       RSS {peak}; peak backlog "
            f"{overload['peak_backlog']:,} msgs, Celery queue ≤ {overload['peak_queue']}; "
            f"drained {f'{drain:.1f} s' if drain is not None else 'NOT'} after"
        )
    if results.get("cpu"):
        lines.append(
            "CPU during the search: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in results["cpu"].items())
        )
    if mqtt_rate and naive:
        # R_naive is one commit (one fsync) per message: a disk with fast fsyncs raises it, and
        # no pipeline on a paho subscriber can go past R_mqtt.
        lines.append(
            f"ceiling  R_mqtt / R_naive = {mqtt_rate / naive:.1f}: the most a paho-based pipeline "
            "could reach of 'R_pipe ≥ 20 x R_naive'"
        )
    if mqtt_rate and copy:
        # Every stored row came through MQTT: no pipeline built on a paho subscriber can store
        # more than 3 x R_mqtt rows/s, whatever the database does.
        lines.append(
            f"ceiling  3 x R_mqtt / R_copy = {3 * mqtt_rate / copy['rows']:.2f}: the most a "
            "paho-based pipeline could reach of 'rows/s ≥ 0.35 x R_copy'"
        )
    lines += ["", "target                                   value      verdict"]
    checks = [("R_pipe ≥ 10,000 msg/s", f"{pipe:,.0f}", pipe >= TARGET_RATE)]
    if mqtt_rate:
        checks.append(("R_pipe ≥ 0.5 x R_mqtt", f"{pipe / mqtt_rate:.2f}", pipe >= 0.5 * mqtt_rate))
    if copy:
        ratio = 3 * pipe / copy["rows"]
        checks.append(("rows/s ≥ 0.35 x R_copy", f"{ratio:.2f}", ratio >= 0.35))
        if mqtt_rate:
            ceiling = 3 * mqtt_rate / copy["rows"]
            checks.append(
                (
                    "  (ceiling: 3 x R_mqtt / R_copy)",
                    f"{ceiling:.2f}",
                    f"{ratio / ceiling:.0%} of it",
                )
            )
    if naive:
        checks.append(("R_pipe ≥ 20 x R_naive", f"{pipe / naive:.1f}", pipe >= 20 * naive))
        if mqtt_rate:
            ceiling = mqtt_rate / naive
            checks.append(
                (
                    "  (ceiling: R_mqtt / R_naive)",
                    f"{ceiling:.1f}",
                    f"{pipe / naive / ceiling:.0%} of it",
                )
            )
    if latency:
        checks.append(
            ("p99 ≤ 250 ms at R_pipe/2", f"{latency['p99']:.0f} ms", latency["p99"] <= 250)
        )
    if overload:
        checks.append(
            (
                "overload: bounded, drains",
                f"{overload['drain_s'] or 0:.1f} s",
                overload["drain_s"] is not None,
            )
        )
    for name, value, ok in checks:
        lines.append(f"{name:<40} {value:>9}  {ok if isinstance(ok, str) else verdict(ok)}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
