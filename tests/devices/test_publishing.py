"""devices/publishing.py: many messages over one connection, every one acknowledged, retained
ones kept for a device that subscribes later; a broker that is not there is named with what to do.
"""

from __future__ import annotations

import pytest

from devices.publishing import Outgoing, PublishError, publish
from tests.devices.test_broker_accounts import Peer
from tests.servers import free_port


def test_a_thousand_messages_go_out_over_one_connection_and_all_arrive(mosquitto, settings):
    settings.MQTT_URL = mosquitto.url
    device = Peer(mosquitto, "", "", client_id="d1")
    try:
        assert device.subscribe("fleet/d1/commands/+")
        sent = publish(Outgoing(f"fleet/d1/commands/{n}", f'{{"n": {n}}}') for n in range(1000))

        assert sent == 1000
        device._wait_for(lambda: len(device.received) == 1000, "1000 messages")
        assert {topic for topic, _ in device.received} == {
            f"fleet/d1/commands/{n}" for n in range(1000)
        }
    finally:
        device.close()


def test_a_retained_message_reaches_a_device_that_subscribes_afterwards(mosquitto, settings):
    settings.MQTT_URL = mosquitto.url
    publish([Outgoing("fleet/d2/shadow/desired", b'{"version": 3}', retain=True)])

    device = Peer(mosquitto, "", "", client_id="d2")
    try:
        assert device.subscribe("fleet/d2/shadow/desired")
        device._wait_for(lambda: device.received, "the retained desired shadow")
        assert device.received == [("fleet/d2/shadow/desired", b'{"version": 3}')]
    finally:
        device.close()


def test_no_broker_is_an_error_that_says_where_it_looked(settings):
    port = free_port()
    settings.MQTT_URL = f"mqtt://127.0.0.1:{port}"
    with pytest.raises(PublishError, match=rf"127\.0\.0\.1:{port}.*is it running"):
        publish([Outgoing("fleet/d3/commands/1", b"{}")], timeout=2)


def test_nothing_to_send_does_not_connect(settings):
    settings.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"
    assert publish([]) == 0
