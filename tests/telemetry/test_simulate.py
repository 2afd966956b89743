"""`manage.py simulate`: demo devices that publish real MQTT, checked from a real subscriber on a
broker of the test's own; and the value model that makes their readings drift believably."""

from __future__ import annotations

import json
import math
import random
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.core.management import CommandError, call_command

from devices.broker_accounts import grant_platform_access
from devices.models import Device, Metric, Tenant
from telemetry.simulator import (
    BAD_KINDS,
    DriftingValue,
    MetricSpec,
    OnOffValue,
    load_profiles,
    malformed_payload,
    plausible_range,
)
from tests.factories import make_device, make_device_type
from tests.servers import Launch, Mosquitto, database_url, output_of

KEYS = ["acme-sim-1", "acme-sim-2", "acme-sim-3"]
RANGES = {  # the demo type's metrics: (min, max)
    "temperature": (-40, 60),
    "humidity": (0, 100),
    "pressure": (0, None),
    "door_open": (0, 1),
}


# --- A real subscriber ----------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    at: float

    @property
    def key(self) -> str:
        return self.topic.split("/")[1]

    @property
    def kind(self) -> str:
        return self.topic.split("/", 2)[2]

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client subscribed to `fleet/#`, keeping every message in arrival order."""

    def __init__(
        self,
        port: int,
        topics: tuple[str, ...] = ("fleet/#",),
        login: tuple[str, str] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if login:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda c, *_: c.subscribe([(topic, 1) for topic in topics])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the test subscriber could not subscribe"

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append(Received(message.topic, message.payload, time.time()))

    def of(self, key: str, kind: str | None = None) -> list[Received]:
        with self.lock:
            return [m for m in self.received if m.key == key and kind in (None, m.kind)]

    def wait_for(self, what: str, done: Callable[[], bool], process: Any, timeout=20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            assert process.poll() is None, f"the simulator exited early:\n{output_of(process)}"
            time.sleep(0.05)
        pytest.fail(f"no {what} within {timeout:g} s:\n{output_of(process)}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    listener = Subscriber(mosquitto.port)
    try:
        yield listener
    finally:
        listener.close()


def make_fleet() -> list[Device]:
    """Three enabled Acme devices, plus two the simulator must leave alone: a disabled one that
    sorts first and one of another tenant."""
    acme = Tenant.objects.create(name="Acme Cold Chain", slug="acme")
    globex = Tenant.objects.create(name="Globex Pumps", slug="globex")
    device_type = make_device_type(acme, "Freezer")
    for name, (low, high) in RANGES.items():
        Metric.objects.update_or_create(
            device_type=device_type, name=name, defaults={"min_value": low, "max_value": high}
        )
    make_device(acme, "acme-sim-0", device_type=device_type, is_enabled=False)
    make_device(globex, "a-globex-1")
    return [
        make_device(acme, key, device_type=device_type, firmware_version=version)
        for key, version in zip(KEYS, ["2.0.1", "", "2.0.1"], strict=True)
    ]


@pytest.fixture
def fleet(transactional_db) -> list[Device]:
    return make_fleet()


def start_simulator(launch: Launch, mosquitto: Mosquitto, *options: str, **env: str):
    return launch(
        "manage.py",
        "simulate",
        "--devices",
        str(len(KEYS)),
        "--tenant",
        "acme",
        "--duration",
        "60",  # a safety net: every test stops it sooner
        *options,
        MQTT_URL=mosquitto.url,
        DATABASE_URL=database_url(),
        DATABASE_CONN_MAX_AGE="0",
        **env,
    )


def strict_json(payload: bytes) -> Any:
    def reject(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(payload, parse_constant=reject)


def in_range(name: str, value: float) -> bool:
    low, high = RANGES[name]
    return (low is None or value >= low) and (high is None or value <= high)


def statuses(subscriber: Subscriber, key: str) -> list[str]:
    return [m.json()["state"] for m in subscriber.of(key, "status")]


# --- The process, seen from the broker ------------------------------------------------------


def test_each_device_says_online_reports_its_shadow_and_sends_telemetry_in_range(
    fleet, mosquitto, subscriber, launch
):
    simulator = start_simulator(launch, mosquitto, "--rate", "5")

    subscriber.wait_for(
        "8 telemetry messages from each device",
        lambda: all(len(subscriber.of(key, "telemetry")) >= 8 for key in KEYS),
        simulator,
    )

    assert {m.key for m in subscriber.received} == set(KEYS)
    for key, firmware in zip(KEYS, ["2.0.1", "1.0.0", "2.0.1"], strict=True):
        kinds = [m.kind for m in subscriber.of(key)]
        assert kinds[:2] == ["status", "shadow/reported"], kinds
        assert statuses(subscriber, key) == ["online"]
        shadow = subscriber.of(key, "shadow/reported")[0].json()
        assert shadow == {"firmware_version": firmware, "reporting_interval": 0.2}
        telemetry = subscriber.of(key, "telemetry")
        bodies = [strict_json(m.payload) for m in telemetry]
        assert [body["seq"] for body in bodies] == list(range(len(bodies)))
        for message, body in zip(telemetry, bodies, strict=True):
            assert isinstance(body["ts"], int)
            assert abs(body["ts"] / 1000 - message.at) < 2
            assert set(body["metrics"]) == set(RANGES)
            for name, value in body["metrics"].items():
                assert isinstance(value, float)
                assert in_range(name, value), (name, value)
            assert body["metrics"]["door_open"] in (0.0, 1.0)
        temperatures = [body["metrics"]["temperature"] for body in bodies]
        assert len(set(temperatures)) > 1, temperatures


def test_sigterm_sends_offline_for_every_device_and_exits_promptly(
    fleet, mosquitto, subscriber, launch
):
    simulator = start_simulator(launch, mosquitto, "--rate", "5")
    subscriber.wait_for(
        "telemetry from every device",
        lambda: all(subscriber.of(key, "telemetry") for key in KEYS),
        simulator,
    )

    started = time.monotonic()
    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=5) == 0, output_of(simulator)
    assert time.monotonic() - started < 5

    time.sleep(0.5)  # a will the broker sent would arrive now: a clean DISCONNECT sends none
    for key in KEYS:
        assert statuses(subscriber, key) == ["online", "offline"]
    assert "Stopped: 3 devices said offline" in output_of(simulator)


def test_a_killed_simulator_leaves_the_broker_to_publish_every_devices_will(
    fleet, mosquitto, subscriber, launch
):
    simulator = start_simulator(launch, mosquitto, "--rate", "5")
    subscriber.wait_for(
        "telemetry from every device",
        lambda: all(subscriber.of(key, "telemetry") for key in KEYS),
        simulator,
    )

    simulator.kill()
    simulator.wait(timeout=5)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        statuses(subscriber, key) != ["online", "offline"] for key in KEYS
    ):
        time.sleep(0.05)
    for key in KEYS:
        assert statuses(subscriber, key) == ["online", "offline"]


def test_a_device_that_loses_power_comes_back_rebooted_with_seq_0(
    fleet, mosquitto, subscriber, launch
):
    # P(power cut within 2 s) = 0.9 for each device; 0.5 s without power.
    simulator = start_simulator(
        launch,
        mosquitto,
        "--rate",
        "10",
        "--flaky",
        "0.9",
        "--flaky-period",
        "2",
        "--flaky-downtime",
        "0.5",
    )

    def rebooted(key: str) -> bool:
        kinds = [(m.kind, m.json()) for m in subscriber.of(key)]
        if ("status", {"state": "offline"}) not in kinds:
            return False
        after = kinds[kinds.index(("status", {"state": "offline"})) :]
        return any(kind == "telemetry" for kind, _ in after)

    subscriber.wait_for("a device rebooting", lambda: any(map(rebooted, KEYS)), simulator)

    key = next(k for k in KEYS if rebooted(k))
    messages = subscriber.of(key)
    will = next(i for i, m in enumerate(messages) if m.json() == {"state": "offline"})
    kinds = [m.kind for m in messages[will + 1 :]]
    assert kinds[:2] == ["status", "shadow/reported"]  # a boot: online, then the shadow again
    assert messages[will + 1].json() == {"state": "online"}
    first_after = next(m for m in messages[will + 1 :] if m.kind == "telemetry")
    assert first_after.json()["seq"] == 0
    assert "loses power" in output_of(simulator)


def test_bad_messages_are_malformed_in_each_way_the_ingest_rejects(
    fleet, mosquitto, subscriber, launch
):
    simulator = start_simulator(launch, mosquitto, "--rate", "10", "--bad", "1")
    subscriber.wait_for(
        "40 telemetry messages",
        lambda: sum(len(subscriber.of(key, "telemetry")) for key in KEYS) >= 40,
        simulator,
    )

    kinds = set()
    for key in KEYS:
        for message in subscriber.of(key, "telemetry"):
            kinds.add(bad_kind(message.payload))
    assert None not in kinds, "a valid message was sent with --bad 1"
    assert len(kinds) >= 3, kinds


def bad_kind(payload: bytes) -> str | None:
    try:
        body = strict_json(payload)
    except ValueError as error:
        return "nan" if "NaN" in str(error) else "truncated"
    for name, value in body["metrics"].items():
        if isinstance(value, str):
            return "string"
        if not in_range(name, value):
            return "out_of_range"
    return None


def test_the_command_refuses_to_run_without_enabled_devices(transactional_db):
    with pytest.raises(CommandError, match="No enabled devices"):
        call_command("simulate", "--duration", "1")


# --- Credentials ----------------------------------------------------------------------------


def test_with_dynamic_security_the_simulator_takes_over_the_devices_credentials(
    transactional_db, settings, secured_mosquitto, launch
):
    """The broker lets only provisioned devices in, with their secrets: the simulator rotates
    them (on the broker too) and connects with the new ones."""
    settings.MQTT_DYNSEC_ENABLED = True
    settings.MQTT_URL = secured_mosquitto.url
    devices = make_fleet()  # provisioned on the broker, with secrets nobody kept
    grant_platform_access()  # lets the test subscriber (the admin) share the ingest subscriptions
    hashes = {device.key: device.credential_hash for device in devices}
    listener = Subscriber(
        secured_mosquitto.port,
        topics=tuple(f"$share/ingest/fleet/+/{kind}" for kind in ("status", "telemetry")),
        login=secured_mosquitto.admin,
    )
    try:
        simulator = start_simulator(
            launch, secured_mosquitto, "--rate", "5", MQTT_DYNSEC_ENABLED="true"
        )
        listener.wait_for(
            "telemetry from every device",
            lambda: all(listener.of(key, "telemetry") for key in KEYS),
            simulator,
        )
    finally:
        listener.close()

    assert "rotating the credentials of the 3 simulated devices" in output_of(simulator)
    for device in Device.objects.filter(key__in=KEYS):
        assert device.credential_hash != hashes[device.key]
        assert device.credential_rotated_at is not None


def test_without_dynamic_security_the_credentials_are_left_alone(db, settings, acme_device):
    """The machine's anonymous broker: devices log in with their key and no password."""
    settings.MQTT_DYNSEC_ENABLED = False
    before = acme_device.credential_hash

    [profile] = load_profiles(1)

    acme_device.refresh_from_db()
    assert profile.password is None
    assert acme_device.credential_hash == before


# --- The value model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high"),
    [(-40, 20), (0, 5000), (-120, 0), (None, None), (0, None), (None, -5), (3, 3), (0.333, 0.336)],
)
def test_a_drifting_value_stays_in_its_range_over_10000_steps(low, high):
    rng = random.Random(42)
    model = DriftingValue.for_range(low, high, rng)
    bottom, top = plausible_range(low, high)

    values = [model.step(5.0, 1_700_000_000 + 5.0 * i, rng) for i in range(10_000)]

    assert all(bottom <= v <= top for v in values)
    if top - bottom >= 0.01:  # narrower ranges may hold no 2-decimal value: the range wins
        assert all(v == round(v, 2) for v in values)
    if top > bottom + 1:
        assert len(set(values)) > 100  # it moves


def test_a_drifting_value_reverts_to_its_set_point():
    rng = random.Random(7)
    # 200 devices start far above their set point (90 for 50): the walk pulls them back.
    models = [
        DriftingValue(low=0, high=100, set_point=50, spread=5, deviation=40) for _ in range(200)
    ]
    after_two_time_constants = [[m.step(5.0, 5.0 * i, rng) for i in range(120)][-1] for m in models]
    assert 50 + 40 * math.exp(-2) - 2 < statistics.mean(after_two_time_constants) < 50 + 8

    long_run = [models[0].step(5.0, 0.0, rng) for _ in range(10_000)]
    assert statistics.mean(long_run) == pytest.approx(50, abs=1.5)
    assert statistics.stdev(long_run) == pytest.approx(5, abs=1)


def test_a_drifting_value_follows_a_daily_cycle():
    rng = random.Random(3)
    model = DriftingValue(low=0, high=100, set_point=50, spread=0.001, amplitude=10)

    assert model.step(5.0, 86_400 / 4, rng) == pytest.approx(60, abs=0.1)
    assert model.step(5.0, 3 * 86_400 / 4, rng) == pytest.approx(40, abs=0.1)


def test_an_on_off_value_is_mostly_off_and_sometimes_on():
    rng = random.Random(5)
    model = OnOffValue()

    values = [model.step(5.0, 5.0 * i, rng) for i in range(10_000)]

    assert set(values) == {0.0, 1.0}
    assert 0.01 < statistics.mean(values) < 0.15  # about 30 s open in every 630


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_kind_of_bad_message_is_invalid(kind):
    specs = [MetricSpec("temperature", "°C", -40, 60), MetricSpec("humidity", "%", 0, 100)]
    metrics = {"temperature": 21.5, "humidity": 40.0}

    payload = malformed_payload(kind, 1_700_000_000_000, 4, metrics, specs)

    assert bad_kind(payload) == kind


# --- Platform → device: desired state and commands (SCENARIOS.md #4) ---------------------------


def test_a_device_applies_its_desired_state_reports_it_and_changes_its_rate(
    fleet, mosquitto, subscriber, launch, settings
):
    from devices.publishing import Outgoing, publish

    settings.MQTT_URL = mosquitto.url
    key = KEYS[0]
    desired = {"version": 4, "state": {"reporting_interval": 0.1, "led": "green"}, "delta": {}}
    # Retained before the device connects: it finds it at once, as after a reboot.
    publish([Outgoing(f"fleet/{key}/shadow/desired", json.dumps(desired), retain=True)])
    simulator = start_simulator(launch, mosquitto, "--rate", "1")

    subscriber.wait_for(
        "the desired state reported back",
        lambda: any(m.json() == desired["state"] for m in subscriber.of(key, "shadow/reported")),
        simulator,
    )
    # Ten messages a second now, where the others send one.
    started = time.time()
    time.sleep(3)
    sent = [m for m in subscriber.of(key, "telemetry") if m.at > started]
    others = [m for m in subscriber.of(KEYS[1], "telemetry") if m.at > started]
    assert len(sent) >= 15, len(sent)
    assert len(others) <= 5, len(others)


def test_a_device_answers_its_commands_on_the_ack_topic(
    fleet, mosquitto, subscriber, launch, settings
):
    from devices.publishing import Outgoing, publish

    settings.MQTT_URL = mosquitto.url
    key = KEYS[1]
    simulator = start_simulator(launch, mosquitto, "--rate", "1")
    subscriber.wait_for(
        "the device online", lambda: statuses(subscriber, key) == ["online"], simulator
    )
    time.sleep(0.5)  # its subscription follows its online status
    commands = {
        7: {"id": 7, "name": "ping", "params": {}},
        8: {"id": 8, "name": "set_interval", "params": {"seconds": 2}},
        9: {"id": 9, "name": "self_destruct", "params": {}},
    }
    publish(Outgoing(f"fleet/{key}/commands/{n}", json.dumps(body)) for n, body in commands.items())

    def answers() -> dict[int, dict]:
        return {
            int(m.topic.split("/")[3]): m.json()
            for m in subscriber.of(key)
            if m.topic.endswith("/ack")
        }

    subscriber.wait_for("three answers", lambda: len(answers()) == 3, simulator)
    got = answers()
    assert got[7]["status"] == "ok"
    assert got[7]["result"]["pong"] is True
    assert got[8] == {"status": "ok", "result": {"reporting_interval": 2.0}}
    assert got[9]["status"] == "error"
    assert "unknown command 'self_destruct'" in got[9]["message"]
