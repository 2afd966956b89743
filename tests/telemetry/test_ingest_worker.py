"""The ingest worker against a real Mosquitto: a message is acknowledged to the broker only once
its batch was handed over, and the acknowledgements do reach the broker."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemetry import ingest
from telemetry.ingest import BufferedSocket, IngestClient, IngestWorker
from tests.servers import Mosquitto

RECEIVE_MAXIMUM = 10


class Handover:
    """Stands in for Celery: records the batches, and can hold the first one back."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.holding = 0  # messages of the batch being handed over
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: list) -> None:
        self.holding = len(batch)
        self.release.wait(30)
        self.batches.append(batch)
        self.holding = 0

    @property
    def messages(self) -> int:
        return sum(len(batch) for batch in self.batches)


@pytest.fixture
def handover() -> Handover:
    return Handover()


@pytest.fixture(params=["fast path", "paho's own client"])
def worker(request, settings, mosquitto: Mosquitto, handover: Handover) -> Iterator[IngestWorker]:
    settings.INGEST_HOLD_SECONDS = 0.05
    settings.INGEST_PAHO_FAST_PATH = request.param == "fast path"
    worker = IngestWorker(
        mosquitto.url,
        "pytest-acks",
        batch_size=5,
        flush_seconds=0.02,
        receive_maximum=RECEIVE_MAXIMUM,
        send=handover,
        backlog=None,
    )
    assert isinstance(worker.client, IngestClient) == settings.INGEST_PAHO_FAST_PATH
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.connected.wait(10), "the worker did not connect"
    time.sleep(0.3)  # subscribed
    yield worker
    handover.release.set()
    worker.stop()
    thread.join(15)


def publish(broker: Mosquitto, count: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pytest-acks-device")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    now = int(time.time() * 1000)
    sent = [
        client.publish(
            f"fleet/dev-{n % 7}/telemetry",
            json.dumps({"ts": now - 10_000 + n, "metrics": {"temperature": n}}),
            qos=1,
        )
        for n in range(count)
    ]
    for info in sent:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def wait_for(check, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_acknowledgements_reach_the_broker_so_it_keeps_sending(mosquitto, worker, handover):
    # The broker sends at most RECEIVE_MAXIMUM unacknowledged messages: 300 arrive only if the
    # worker's acknowledgements get back to it.
    publish(mosquitto, 300)
    assert wait_for(lambda: handover.messages == 300), f"{handover.messages} of 300 arrived"


def test_nothing_is_acknowledged_before_its_batch_is_handed_over(mosquitto, worker, handover):
    handover.release.clear()  # Celery "is down": the first batch cannot be handed over
    publish(mosquitto, 100)

    def received() -> int:
        return handover.holding + len(worker.pending)

    # The broker sends up to its limit of unacknowledged messages, and then nothing more.
    assert wait_for(lambda: received() == RECEIVE_MAXIMUM), f"{received()} received"
    time.sleep(1.0)
    assert received() == RECEIVE_MAXIMUM
    assert handover.messages == 0
    handover.release.set()
    assert wait_for(lambda: handover.messages == 100), f"{handover.messages} of 100 arrived"


def test_messages_with_and_without_properties_at_qos_0_and_1_all_arrive_whole(
    mosquitto, worker, handover
):
    # The ingest client decodes the usual PUBLISH itself and leaves the rest to paho.
    device = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="pytest-v5-device", protocol=mqtt.MQTTv5
    )
    device.connect("127.0.0.1", mosquitto.port)
    device.loop_start()
    now = int(time.time() * 1000)
    with_properties = Properties(PacketTypes.PUBLISH)
    with_properties.PayloadFormatIndicator = 1
    with_properties.UserProperty = [("firmware", "2.1.0")]
    sent = [
        device.publish(
            f"fleet/dev-{n}/telemetry",
            json.dumps({"ts": now - n, "metrics": {"temperature": float(n)}}),
            qos=n % 2,
            properties=with_properties if n % 3 == 0 else None,
        )
        for n in range(12)
    ]
    for info in sent:
        info.wait_for_publish(10)
    assert wait_for(lambda: handover.messages == 12), f"{handover.messages} of 12 arrived"
    device.disconnect()
    device.loop_stop()
    entries = sorted((e for batch in handover.batches for e in batch), key=lambda e: e[1])
    assert [(e[0], e[1], e[3][0][2]) for e in entries] == sorted(
        ("t", f"dev-{n}", {"temperature": float(n)}) for n in range(12)
    )


def test_the_buffered_socket_hands_out_what_one_read_brought_piece_by_piece():
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    buffered = BufferedSocket(ours)
    with pytest.raises(BlockingIOError):
        buffered.recv(1)  # nothing sent yet: the socket's own answer
    broker.sendall(b"\x30\x05hello\x30\x03abc")
    assert wait_for(lambda: select.select([ours], [], [], 0)[0])
    assert buffered.recv(1) == b"\x30"  # one system call read all 12 bytes
    assert (buffered.pending(), buffered.recv(1), buffered.recv(5)) == (11, b"\x05", b"hello")
    assert buffered.recv(100) == b"\x30\x03abc"  # what is left, not more
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):
        buffered.recv(1)
    broker.close()
    assert buffered.recv(1) == b""  # the broker closed the connection
    assert buffered.fileno() == ours.fileno()
    ours.close()


def test_another_paho_release_gets_paho_s_own_client_and_a_warning(monkeypatch, caplog):
    # The fast path uses paho's internals: a paho upgrade must not silently run it.
    monkeypatch.setattr(ingest.paho.mqtt, "__version__", "2.3.0")
    with caplog.at_level("WARNING", logger="telemetry.ingest"):
        worker = IngestWorker("mqtt://127.0.0.1:1", "pytest-upgrade", send=list, backlog=None)
    assert type(worker.client) is mqtt.Client
    assert "paho-mqtt is 2.3.0, the fast path was written for 2.2.0" in caplog.text
