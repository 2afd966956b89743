"""The device simulator behind `manage.py simulate`: demo devices that speak MQTT as real ones do.

Each simulated device has its own MQTT connection (client id and username = its key) with a last
will that marks it offline, announces itself online, reports its shadow once per boot and then
publishes telemetry with drifting values for every metric of its type. One thread drives all the
connections through a selector, with paho-mqtt's external event loop API (the socket callbacks,
`loop_read()`, `loop_write()`, `loop_misc()`), so 2,000 devices cost 2,000 sockets, not threads.

Demo options make the fleet misbehave as real fleets do: `flaky` devices lose power (their socket
closes without DISCONNECT, so the broker publishes their will) and boot again later with `seq`
back at 0; `bad` messages are malformed, to show the ingest's rejection path.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import random
import resource
import selectors
import signal
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import connection

from devices.models import Device
from devices.services import rotate_credentials_of
from ota.simulation import OtaAgent, OtaOptions

log = logging.getLogger(__name__)

DAY = 86_400.0
QOS = 1
KEEPALIVE = 60
CONNECT_TIMEOUT = 5.0  # a broker that accepts TCP but sends no CONNACK within this is dropped
MAX_BACKOFF = 60.0
REPORT_EVERY = 10.0
WARNINGS_PER_REPORT = 5
SHUTDOWN_GRACE = 3.0  # seconds to deliver the offline statuses on SIGTERM before closing anyway
ROTATE_BATCH = 500  # devices per credential rotation: one transaction, one broker round trip
BAD_KINDS = ("truncated", "nan", "string", "out_of_range")


# --- Values ---------------------------------------------------------------------------------


class ValueModel(Protocol):
    def step(self, dt: float, now: float, rng: random.Random) -> float: ...


def plausible_range(min_value: float | None, max_value: float | None) -> tuple[float, float]:
    """The range to simulate in: the metric's, a missing bound put 100 units from the other."""
    if min_value is None and max_value is None:
        return 0.0, 100.0
    if min_value is None:
        return float(max_value) - 100.0, float(max_value)  # type: ignore[arg-type]
    if max_value is None:
        return float(min_value), float(min_value) + 100.0
    return float(min_value), float(max_value)


@dataclass
class DriftingValue:
    """A reading that wanders like a real sensor's: an Ornstein-Uhlenbeck walk around a set point
    plus a slow daily sine, clipped to the range and rounded to 2 decimals.

    The walk is pulled back to the set point with time constant `1 / reversion` seconds and
    spreads `spread` (its standard deviation in the long run) around it. Its step is the exact
    solution of the process over `dt`, so any message rate gives the same statistics.
    """

    low: float
    high: float
    set_point: float
    spread: float
    amplitude: float = 0.0  # of the daily sine
    phase: float = 0.0
    reversion: float = 1 / 300
    deviation: float = 0.0  # the walk's current distance from the set point

    @classmethod
    def for_range(
        cls, min_value: float | None, max_value: float | None, rng: random.Random
    ) -> DriftingValue:
        """A set point in the middle of the range, 5 % of it as spread, 10 % as daily swing:
        the sum stays inside the range almost always, and clipping handles the rest."""
        low, high = plausible_range(min_value, max_value)
        span = high - low
        return cls(
            low=low,
            high=high,
            set_point=low + span * rng.uniform(0.3, 0.7),
            spread=0.05 * span,
            amplitude=0.1 * span,
            phase=rng.uniform(0, 2 * math.pi),
            deviation=rng.gauss(0, 0.05 * span),
        )

    def step(self, dt: float, now: float, rng: random.Random) -> float:
        decay = math.exp(-self.reversion * max(dt, 0.0))
        self.deviation = self.deviation * decay + self.spread * math.sqrt(
            1 - decay * decay
        ) * rng.gauss(0, 1)
        daily = self.amplitude * math.sin(2 * math.pi * now / DAY + self.phase)
        return self.clip(round(self.set_point + daily + self.deviation, 2))

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)


@dataclass
class OnOffValue:
    """A 0/1 reading such as `door_open`: mostly 0, now and then 1 for a little while."""

    mean_off: float = 600.0  # seconds
    mean_on: float = 30.0
    on: bool = False

    def step(self, dt: float, now: float, rng: random.Random) -> float:
        mean = self.mean_on if self.on else self.mean_off
        if rng.random() < 1 - math.exp(-max(dt, 0.0) / mean):
            self.on = not self.on
        return 1.0 if self.on else 0.0


def value_model(
    min_value: float | None, max_value: float | None, unit: str, rng: random.Random
) -> ValueModel:
    """A unitless metric whose range is exactly [0, 1] is a flag; every other one drifts."""
    if min_value == 0 and max_value == 1 and not unit:
        return OnOffValue()
    return DriftingValue.for_range(min_value, max_value, rng)


# --- Messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    min_value: float | None
    max_value: float | None
    failure_threshold: float | None = None  # a wear indicator (predictive maintenance)
    rising: bool = True


def telemetry_payload(ts_ms: int, seq: int, metrics: dict[str, float]) -> bytes:
    return json.dumps({"ts": ts_ms, "seq": seq, "metrics": metrics}).encode()


def malformed_payload(
    kind: str, ts_ms: int, seq: int, metrics: dict[str, float], specs: list[MetricSpec]
) -> bytes:
    """A telemetry message the platform must reject: cut-off JSON, a bare NaN token, a string
    where a number belongs, or a value outside its metric's range."""
    bad = dict(metrics)
    name = next(iter(bad), "value")
    if kind == "truncated":
        text = telemetry_payload(ts_ms, seq, bad)
        return text[: max(1, len(text) // 2)]
    if kind == "nan":
        bad[name] = math.nan  # json.dumps writes NaN, which is not JSON
    elif kind == "string":
        bad[name] = str(bad.get(name, "n/a"))  # type: ignore[assignment]
    elif kind == "out_of_range":
        spec = next((s for s in specs if s.name == name), None)
        low, high = plausible_range(
            spec.min_value if spec else None, spec.max_value if spec else None
        )
        bad[name] = round(high + max(high - low, 1.0), 2)
    else:
        raise ValueError(f"Unknown kind of bad message: {kind}")
    return telemetry_payload(ts_ms, seq, bad)


# --- Devices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    """What the simulator needs of a device, read once from the database."""

    key: str
    firmware_version: str
    metrics: tuple[MetricSpec, ...]
    password: str | None = None
    wear_plan: dict | None = None  # seed_demo's plan of its wear indicator (maintenance/demo.py)


class DeviceState:
    OFF = "off"  # not booted yet, or without power
    CONNECTING = "connecting"
    ONLINE = "online"
    WAITING = "waiting"  # connection lost, retrying after a backoff
    STOPPED = "stopped"


@dataclass(eq=False)
class SimulatedDevice:
    profile: DeviceProfile
    values: list[ValueModel]
    client: mqtt.Client | None = None
    state: str = DeviceState.OFF
    seq: int = 0
    boots: int = 0
    needs_shadow: bool = True  # report the shadow on the first connection after a boot
    interval: float | None = None  # seconds between messages, once set by the desired shadow
    settings: dict = field(default_factory=dict)  # applied desired state (reported back)
    last_step: float | None = None  # wall-clock time of the last values, for the walk's dt
    epoch: int = 0  # bumped whenever the device's scheduled actions become stale
    backoff: float = 1.0
    offline_mid: int | None = None

    @property
    def key(self) -> str:
        return self.profile.key

    def topic(self, suffix: str) -> str:
        return f"fleet/{self.key}/{suffix}"

    def readings(self, now: float, rng: random.Random) -> dict[str, float]:
        dt = 0.0 if self.last_step is None else now - self.last_step
        self.last_step = now
        return {
            spec.name: model.step(dt, now, rng)
            for spec, model in zip(self.profile.metrics, self.values, strict=True)
        }


def simulated_device(profile: DeviceProfile, degrading: float = 0.0) -> SimulatedDevice:
    # Seeded by key, so a device keeps its set points from one run of the simulator to the next.
    rng = random.Random(profile.key)
    values = [
        wear_model(profile, m, degrading)
        if m.failure_threshold is not None
        else value_model(m.min_value, m.max_value, m.unit, rng)
        for m in profile.metrics
    ]
    return SimulatedDevice(profile=profile, values=values)


def wear_model(profile: DeviceProfile, metric: MetricSpec, degrading: float) -> ValueModel:
    """A wear indicator drifts towards its failure threshold on degrading devices and stays
    healthy on the others (maintenance/wear.py)."""
    from maintenance.wear import wearing_value

    return wearing_value(
        profile.key,
        metric.name,
        float(metric.failure_threshold),  # type: ignore[arg-type]
        metric.rising,
        metric.min_value,
        metric.max_value,
        profile.wear_plan,
        degrading,
        time.time(),
    )


def load_profiles(count: int | None = None, tenant: str | None = None) -> list[DeviceProfile]:
    """The first `count` enabled devices by key (of one tenant, given its slug).

    With `MQTT_DYNSEC_ENABLED` the broker checks passwords, and since secrets are stored only
    hashed the simulator takes the devices over: it rotates their credentials (on the broker
    too) and uses the new secrets; the old ones stop working.
    """
    devices = (
        Device.objects.filter(is_enabled=True)
        .select_related("device_type")
        .prefetch_related("device_type__metrics")
        .order_by("key")
    )
    if tenant:
        devices = devices.filter(tenant__slug=tenant)
    if count is not None:
        devices = devices[:count]
    devices = list(devices)
    passwords: dict[str, str] = {}
    if devices and getattr(settings, "MQTT_DYNSEC_ENABLED", False):
        log.info(
            "MQTT_DYNSEC_ENABLED: rotating the credentials of the %d simulated devices, which "
            "the simulator takes over; their previous secrets no longer work.",
            len(devices),
        )
        for start in range(0, len(devices), ROTATE_BATCH):
            for credential in rotate_credentials_of(devices[start : start + ROTATE_BATCH]):
                passwords[credential.device.key] = credential.secret
    profiles = [
        DeviceProfile(
            key=device.key,
            firmware_version=device.firmware_version or "1.0.0",
            metrics=tuple(
                MetricSpec(
                    m.name,
                    m.unit,
                    m.min_value,
                    m.max_value,
                    m.failure_threshold if m.is_wear_indicator else None,
                    m.rises_to_failure,
                )
                for m in device.device_type.metrics.all()
            ),
            password=passwords.get(device.key),
            wear_plan=device.attributes.get("simulated_wear"),
        )
        for device in devices
    ]
    return profiles


# --- The simulator --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rate: float = 0.2  # telemetry messages per second per device
    duration: float | None = None  # seconds; None runs until stop()
    flaky: float = 0.0  # probability per device per `flaky_period` seconds of a power cut
    flaky_period: float = 60.0
    flaky_downtime: tuple[float, float] = (30.0, 120.0)
    bad: float = 0.0  # fraction of telemetry messages sent malformed
    connect_rate: float = 200.0  # new connections per second
    degrading: float = 0.0  # share of devices with a wear indicator (and no seeded plan) wearing
    ota: OtaOptions | None = None  # answer firmware update jobs (ota/simulation.py)


def broker_address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"MQTT_URL: the simulator speaks plain mqtt://, not {parts.scheme}://")
    return parts.hostname or "127.0.0.1", parts.port or 1883


@dataclass(order=True)
class _Timer:
    when: float
    order: int
    device: SimulatedDevice = field(compare=False)
    epoch: int = field(compare=False)
    action: Callable[[SimulatedDevice], None] = field(compare=False)


class Simulator:
    """Drives every simulated device from the calling thread; `run()` returns after `stop()`
    (safe from a signal handler) or the duration, with every device's offline status sent."""

    def __init__(
        self,
        profiles: Iterable[DeviceProfile],
        host: str,
        port: int,
        options: Options | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or Options()
        self.devices = [simulated_device(p, self.options.degrading) for p in profiles]
        self.ota = OtaAgent(self, self.options.ota) if self.options.ota else None
        self.host = host
        self.port = port
        self.interval = 1 / self.options.rate
        self.rng = rng or random.Random()
        self.selector = selectors.DefaultSelector()
        self.timers: list[_Timer] = []
        self._order = itertools.count()
        self.stopping = False
        self.sent = 0  # telemetry messages
        self.sent_bad = 0
        self.power_cuts = 0
        self.warnings = 0  # since the last report; only the first few are logged one by one
        # While the broker refuses connections, one device probes it and the others wait.
        self.broker_down_until = 0.0
        self.broker_backoff = 1.0

    # Scheduling: an action runs at `when` unless its device's epoch moved on meanwhile.

    def at(self, when: float, device: SimulatedDevice, action: Callable[..., None]) -> None:
        heapq.heappush(self.timers, _Timer(when, next(self._order), device, device.epoch, action))

    def run_due_timers(self, now: float) -> None:
        while self.timers and self.timers[0].when <= now and not self.stopping:
            timer = heapq.heappop(self.timers)
            if timer.epoch == timer.device.epoch:
                timer.action(timer.device)

    # The loop.

    def stop(self) -> None:
        self.stopping = True

    def run(self) -> None:
        raise_file_limit(len(self.devices) + 100)
        started = time.monotonic()
        deadline = started + self.options.duration if self.options.duration else math.inf
        log.info(
            "Simulating %d devices on %s:%d, %g telemetry messages per second each.",
            len(self.devices),
            self.host,
            self.port,
            self.options.rate,
        )
        for number, device in enumerate(self.devices):
            self.at(started + number / self.options.connect_rate, device, self.boot)
        next_misc = started + 1.0
        next_report = started + REPORT_EVERY
        last_report = (started, 0)
        while not self.stopping:
            now = time.monotonic()
            if now >= deadline:
                break
            wait = min(0.25, next_misc - now, deadline - now)
            if self.timers:
                wait = min(wait, self.timers[0].when - now)
            self.poll(max(wait, 0.0))
            now = time.monotonic()
            self.run_due_timers(now)
            if self.ota:
                self.ota.poll()
            if now >= next_misc:
                next_misc = now + 1.0
                for device in self.devices:
                    if device.client is not None and device.client.socket() is not None:
                        device.client.loop_misc()  # keepalive pings
            if now >= next_report:
                next_report = now + REPORT_EVERY
                last_report = self.report(now, *last_report)
        self.shutdown()

    def poll(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            device: SimulatedDevice = key.data
            client = device.client
            if client is None or client.socket() is not key.fileobj:
                continue
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE and client.socket() is key.fileobj:
                client.loop_write()

    def warn(self, message: str, *args: Any) -> None:
        """A device's trouble, logged one by one up to WARNINGS_PER_REPORT per report: when the
        broker goes away, 2,000 devices lose their connection at once."""
        self.warnings += 1
        if self.warnings <= WARNINGS_PER_REPORT:
            log.warning(message, *args)

    def report(self, now: float, since: float, sent_then: int) -> tuple[float, int]:
        connected = sum(d.state == DeviceState.ONLINE for d in self.devices)
        rate = (self.sent - sent_then) / max(now - since, 1e-9)
        extra = ""
        if self.options.bad:
            extra += f", {self.sent_bad} malformed"
        if self.options.flaky:
            down = sum(1 for d in self.devices if d.state == DeviceState.OFF and d.boots)
            extra += f", {self.power_cuts} power cuts ({down} devices down now)"
        if self.warnings > WARNINGS_PER_REPORT:
            extra += f"; {self.warnings - WARNINGS_PER_REPORT} more warnings not shown"
        self.warnings = 0
        log.info(
            "%d/%d devices connected, %d telemetry messages sent (%.1f/s)%s.",
            connected,
            len(self.devices),
            self.sent,
            rate,
            extra,
        )
        return now, self.sent

    # A device's life.

    def boot(self, device: SimulatedDevice) -> None:
        device.boots += 1
        device.seq = 0
        device.needs_shadow = True
        device.backoff = 1.0
        self.open(device)

    def open(self, device: SimulatedDevice) -> None:
        now = time.monotonic()
        if now < self.broker_down_until:
            self.at(self.broker_down_until + self.rng.uniform(0, 1), device, self.open)
            return
        client = self.new_client(device)
        device.client = client
        device.state = DeviceState.CONNECTING
        try:
            client.connect(self.host, self.port, keepalive=KEEPALIVE)
        except OSError as error:
            self.forget(client)
            device.client = None
            device.state = DeviceState.WAITING
            if self.broker_backoff == 1.0 or self.broker_backoff >= MAX_BACKOFF:
                log.warning(
                    "Cannot reach the MQTT broker at %s:%d: %s", self.host, self.port, error
                )
            self.broker_down_until = now + self.broker_backoff
            self.broker_backoff = min(self.broker_backoff * 2, MAX_BACKOFF)
            self.at(self.broker_down_until, device, self.open)
            return
        self.broker_backoff = 1.0
        self.at(now + CONNECT_TIMEOUT, device, self.check_connected)

    def new_client(self, device: SimulatedDevice) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device.key,
            protocol=mqtt.MQTTv311,
            userdata=device,
        )
        client.username_pw_set(device.key, device.profile.password)
        client.will_set(device.topic("status"), json.dumps({"state": "offline"}), qos=QOS)
        client.connect_timeout = CONNECT_TIMEOUT
        client.max_inflight_messages_set(0)  # no local queue that could hold the offline status
        client.on_connect = self.on_connect
        client.on_message = self.on_message
        client.on_disconnect = self.on_disconnect
        client.on_publish = self.on_publish
        client.on_socket_open = self.on_socket_open
        client.on_socket_close = self.on_socket_close
        client.on_socket_register_write = self.on_socket_register_write
        client.on_socket_unregister_write = self.on_socket_unregister_write
        return client

    def check_connected(self, device: SimulatedDevice) -> None:
        if device.state == DeviceState.CONNECTING:
            self.warn("%s: no CONNACK within %g s; reconnecting.", device.key, CONNECT_TIMEOUT)
            self.cut_connection(device)
            self.retry(device)

    def retry(self, device: SimulatedDevice) -> None:
        device.epoch += 1
        device.state = DeviceState.WAITING
        delay = device.backoff * self.rng.uniform(0.5, 1.5)
        device.backoff = min(device.backoff * 2, MAX_BACKOFF)
        self.at(time.monotonic() + delay, device, self.open)

    def send_telemetry(self, device: SimulatedDevice) -> None:
        if device.state != DeviceState.ONLINE or device.client is None:
            return
        now = time.time()
        metrics = device.readings(now, self.rng)
        ts_ms = int(now * 1000)
        if self.options.bad and self.rng.random() < self.options.bad:
            kind = self.rng.choice(BAD_KINDS)
            payload = malformed_payload(kind, ts_ms, device.seq, metrics, device.profile.metrics)
            self.sent_bad += 1
        else:
            payload = telemetry_payload(ts_ms, device.seq, metrics)
        device.client.publish(device.topic("telemetry"), payload, qos=QOS)
        device.seq += 1
        self.sent += 1
        self.at(time.monotonic() + (device.interval or self.interval), device, self.send_telemetry)

    def power_cut(self, device: SimulatedDevice) -> None:
        """The device loses power: its socket closes without DISCONNECT, so the broker publishes
        its will; it boots again after a downtime, with seq back at 0."""
        low, high = self.options.flaky_downtime
        downtime = self.rng.uniform(low, high)
        log.info("%s loses power; it boots again in %.0f s.", device.key, downtime)
        self.power_cuts += 1
        self.cut_connection(device)
        device.epoch += 1
        device.state = DeviceState.OFF
        self.at(time.monotonic() + downtime, device, self.boot)

    def cut_connection(self, device: SimulatedDevice) -> None:
        """Close the device's socket as a power cut or a broken link does: no DISCONNECT. The
        client is dropped with it; the next connection gets a new one."""
        client, device.client = device.client, None
        if client is None:
            return
        sock = client.socket()
        self.forget(client)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def forget(self, client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is not None:
            self.on_socket_close(client, None, sock)

    def next_power_cut(self) -> float | None:
        """Seconds until the next power cut: exponential, with P(cut within the period) = flaky."""
        flaky = self.options.flaky
        if flaky <= 0:
            return None
        hazard = -math.log(1 - min(flaky, 0.999999)) / self.options.flaky_period
        return self.rng.expovariate(hazard)

    # paho callbacks; they run inside loop_read()/loop_write() in this same thread.

    def on_connect(
        self, client: mqtt.Client, device: SimulatedDevice, flags: Any, reason: Any, props: Any
    ) -> None:
        if client is not device.client:
            return
        if reason.is_failure:
            self.warn("%s: the broker refused the connection: %s", device.key, reason)
            return  # the broker closes the connection; on_disconnect retries after a backoff
        device.state = DeviceState.ONLINE
        device.backoff = 1.0
        client.publish(device.topic("status"), json.dumps({"state": "online"}), qos=QOS)
        # Platform → device: commands, and the desired state (retained: it arrives at once).
        client.subscribe([(device.topic("commands/+"), QOS), (device.topic("shadow/desired"), QOS)])
        if device.needs_shadow:
            device.needs_shadow = False
            shadow = {
                "firmware_version": device.profile.firmware_version,
                "reporting_interval": round(device.interval or self.interval, 3),
                **device.settings,
            }
            client.publish(device.topic("shadow/reported"), json.dumps(shadow), qos=QOS)
        if self.ota:
            self.ota.connected(device, client)
        now = time.monotonic()
        if device.profile.metrics:
            # Spread the devices' first messages over one interval, so the load is smooth.
            self.at(now + self.rng.uniform(0, self.interval), device, self.send_telemetry)
        cut_in = self.next_power_cut()
        if cut_in is not None:
            self.at(now + cut_in, device, self.power_cut)

    def on_message(self, client: mqtt.Client, device: SimulatedDevice, message: Any) -> None:
        """The platform's messages: a desired state to apply and report, or a command to
        answer on .../commands/{id}/ack."""
        if client is not device.client or device.state != DeviceState.ONLINE:
            return
        if self.ota and message.topic == device.topic("ota"):
            self.ota.received(device, message.payload)  # a firmware job (ota/simulation.py)
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            self.warn("%s: unreadable message on %s", device.key, message.topic)
            return
        if message.topic == device.topic("shadow/desired"):
            self.apply_desired(device, body)
            return
        command_id = message.topic.rsplit("/", 1)[-1]
        if message.topic.startswith(device.topic("commands/")) and command_id.isdigit():
            answer = self.run_command(device, body if isinstance(body, dict) else {})
            client.publish(device.topic(f"commands/{command_id}/ack"), json.dumps(answer), qos=QOS)

    def apply_desired(self, device: SimulatedDevice, body: Any) -> None:
        """Take the desired state as a device does: apply it (reporting_interval changes how
        often it sends), then report it back, so the shadow's delta clears."""
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, dict) or not state or device.client is None:
            return
        interval = state.get("reporting_interval")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            device.interval = min(max(float(interval), 0.1), 3600.0)
        device.settings.update(state)
        log.debug("%s applies its desired state: %s", device.key, json.dumps(state)[:200])
        device.client.publish(device.topic("shadow/reported"), json.dumps(state), qos=QOS)

    def run_command(self, device: SimulatedDevice, command: dict) -> dict:
        """The simulated firmware's commands; anything else is refused with a reason."""
        name, params = command.get("name"), command.get("params") or {}
        if name == "ping":
            return {"status": "ok", "result": {"pong": True, "seq": device.seq}}
        if name == "reboot":
            device.seq = 0  # the next messages start a new sequence, as after a real reboot
            device.boots += 1
            return {"status": "ok", "result": {"rebooted": True, "boots": device.boots}}
        if name == "identify":
            return {"status": "ok", "result": {"blinking_s": params.get("seconds", 10)}}
        if name == "set_interval":
            seconds = params.get("seconds") if isinstance(params, dict) else None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                return {"status": "error", "message": 'set_interval needs {"seconds": N > 0}'}
            device.interval = min(max(float(seconds), 0.1), 3600.0)
            return {"status": "ok", "result": {"reporting_interval": device.interval}}
        return {
            "status": "error",
            "message": f"unknown command {str(name)[:40]!r}: this device knows ping, reboot, "
            "identify and set_interval",
        }

    def on_disconnect(
        self, client: mqtt.Client, device: SimulatedDevice, flags: Any, reason: Any, props: Any
    ) -> None:
        if client is not device.client:
            return
        device.client = None
        if self.stopping:
            device.state = DeviceState.STOPPED
            return
        self.warn("%s: connection lost (%s); reconnecting.", device.key, reason)
        self.retry(device)

    def on_publish(
        self, client: mqtt.Client, device: SimulatedDevice, mid: int, reason: Any, props: Any
    ) -> None:
        if self.stopping and mid == device.offline_mid and client is device.client:
            client.disconnect()

    def on_socket_open(self, client: mqtt.Client, device: SimulatedDevice, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, device)

    def on_socket_close(self, client: mqtt.Client, device: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # already forgotten
            self.selector.unregister(sock)

    def on_socket_register_write(
        self, client: mqtt.Client, device: SimulatedDevice, sock: Any
    ) -> None:
        self._watch(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)

    def on_socket_unregister_write(
        self, client: mqtt.Client, device: SimulatedDevice, sock: Any
    ) -> None:
        self._watch(sock, selectors.EVENT_READ, device)

    def _watch(self, sock: Any, events: int, device: SimulatedDevice) -> None:
        with contextlib.suppress(KeyError, ValueError):  # already closed
            self.selector.modify(sock, events, device)

    # Stopping.

    def shutdown(self) -> None:
        """Say offline for every connected device, then DISCONNECT cleanly (so the broker keeps
        the will to itself); a device still connecting is cut off, and the broker's will says
        offline for it."""
        self.stopping = True
        if self.ota:
            self.ota.close()
        goodbyes = 0
        for device in self.devices:
            device.epoch += 1
            if device.state == DeviceState.ONLINE and device.client is not None:
                info = device.client.publish(
                    device.topic("status"), json.dumps({"state": "offline"}), qos=QOS
                )
                device.offline_mid = info.mid
                goodbyes += 1
            elif device.client is not None:
                self.cut_connection(device)
                device.state = DeviceState.STOPPED
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while time.monotonic() < deadline and any(d.client is not None for d in self.devices):
            self.poll(0.05)
        for device in self.devices:
            if device.client is not None:
                self.cut_connection(device)
        self.selector.close()
        log.info(
            "Stopped: %d devices said offline; %d telemetry messages sent in all.",
            goodbyes,
            self.sent,
        )


def raise_file_limit(needed: int) -> None:
    """Each device holds a socket: raise the soft limit on open files towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning("Only %d open files allowed; %d devices may not all connect.", hard, needed)


def simulate(
    count: int | None = None, tenant: str | None = None, options: Options | None = None
) -> int:
    """Run the simulator on the first `count` enabled devices until SIGINT/SIGTERM or the
    duration; returns how many devices it simulated."""
    host, port = broker_address(settings.MQTT_URL)
    profiles = load_profiles(count, tenant)
    connection.close()  # a long-running process must not hold a database connection it won't use
    if not profiles:
        return 0
    silent = sum(not p.metrics for p in profiles)
    if silent:
        log.info("%d devices have a type without metrics: they only report status.", silent)
    simulator = Simulator(profiles, host, port, options)
    previous = {
        sig: signal.signal(sig, lambda *_: simulator.stop())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        simulator.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return len(profiles)
