"""Fixtures of the dashboards' tests: the real channels-redis layer under a prefix of the test's
own, and websocket clients that log in with a Django session as a browser does."""

from __future__ import annotations

import uuid

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.test import Client

from iotfleet.asgi import application


@pytest.fixture
def layer(settings):
    """The channels-redis layer on the local Redis, under a prefix no other test run shares."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [settings.CHANNELS_REDIS_URL],
                "prefix": f"test-dash-{uuid.uuid4().hex}",
                "expiry": 10,
            },
        }
    }
    assert isinstance(get_channel_layer(), RedisChannelLayer)
    return settings.CHANNEL_LAYERS["default"]["CONFIG"]


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def websocket(user=None, origin: str = "http://localhost") -> WebsocketCommunicator:
    """A websocket to /ws/fleet/ through the whole ASGI stack (origin check, session auth)."""
    headers = [(b"origin", origin.encode()), (b"host", b"localhost")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={session_cookie(user)}".encode()))
    return WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
