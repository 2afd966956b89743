"""The dashboards' websocket at the consumer level: who may connect, which tenants' events each
user gets (never another tenant's), and the coalescing of a flood into a few frames."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model

from iotfleet.live import push_to_tenant
from tests.dashboards.conftest import websocket

pytestmark = pytest.mark.django_db(transaction=True)


async def next_frame(socket, timeout: float = 5.0) -> dict:
    return await socket.receive_json_from(timeout=timeout)


async def no_frame(socket, timeout: float = 0.6) -> bool:
    return await socket.receive_nothing(timeout=timeout)


async def connect(socket) -> dict:
    connected, _ = await socket.connect(timeout=10)
    assert connected
    ready = await next_frame(socket)
    assert ready["events"][0]["event"] == "live.ready"
    return ready["events"][0]["payload"]


push = sync_to_async(push_to_tenant)


def test_an_anonymous_visitor_is_refused(layer):
    async def scenario():
        socket = websocket(user=None)
        connected, code = await socket.connect(timeout=10)
        assert not connected
        assert code == 4401
        await socket.disconnect()

    async_to_sync(scenario)()


def test_a_page_of_another_origin_is_refused(layer, alice):
    socket = websocket(alice, origin="https://evil.example.com")

    async def scenario():
        connected, _ = await socket.connect(timeout=10)
        assert not connected
        await socket.disconnect()

    async_to_sync(scenario)()


def test_an_inactive_user_is_refused(layer, alice):
    socket = websocket(alice)

    async def scenario():
        await sync_to_async(type(alice).objects.filter(pk=alice.pk).update)(is_active=False)
        connected, _ = await socket.connect(timeout=10)
        assert not connected
        await socket.disconnect()

    async_to_sync(scenario)()


def test_alice_joins_only_acme_and_never_hears_globex(layer, alice, acme, globex):
    socket = websocket(alice)

    async def scenario():
        ready = await connect(socket)
        assert ready == {"tenants": [acme.pk]}

        await push(globex.pk, "devices.status", {"devices": [{"key": "globex-pump-1"}]})
        assert await no_frame(socket)

        await push(acme.pk, "devices.status", {"devices": [{"key": "acme-freezer-1"}]})
        frame = await next_frame(socket)
        assert frame == {
            "events": [
                {"event": "devices.status", "payload": {"devices": [{"key": "acme-freezer-1"}]}}
            ]
        }
        await socket.disconnect()

    async_to_sync(scenario)()


def test_two_users_of_two_tenants_each_get_only_their_own_events(layer, alice, carol, acme, globex):
    mine, theirs = websocket(alice), websocket(carol)

    async def scenario():
        await connect(mine)
        await connect(theirs)
        for n in range(5):
            await push(acme.pk, "alerts.changed", {"alerts": [{"id": n, "device": "a"}]})
        await push(globex.pk, "alerts.changed", {"alerts": [{"id": 99, "device": "g"}]})

        seen_by_carol = []
        while not await no_frame(theirs, timeout=1.0):
            seen_by_carol += (await next_frame(theirs))["events"]
        seen_by_alice = []
        while not await no_frame(mine, timeout=1.0):
            seen_by_alice += (await next_frame(mine))["events"]

        assert [a["id"] for e in seen_by_carol for a in e["payload"]["alerts"]] == [99]
        assert sorted(a["id"] for e in seen_by_alice for a in e["payload"]["alerts"]) == [
            0, 1, 2, 3, 4,
        ]  # fmt: skip
        await mine.disconnect()
        await theirs.disconnect()

    async_to_sync(scenario)()


def test_a_superuser_hears_every_tenant(layer, acme, globex):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")

    socket = websocket(root)

    async def scenario():
        ready = await connect(socket)
        assert ready == {"tenants": sorted([acme.pk, globex.pk])}
        await push(globex.pk, "ping", {"n": 1})
        assert (await next_frame(socket))["events"] == [{"event": "ping", "payload": {"n": 1}}]
        await socket.disconnect()

    async_to_sync(scenario)()


def test_a_flood_of_events_arrives_as_a_few_merged_frames(layer, alice, acme, settings):
    """500 status events in a burst (one device flapping, others joining) cost the browser a
    handful of frames, at most one per LIVE_FRAME_SECONDS, with every device's latest state."""
    settings.LIVE_FRAME_SECONDS = 0.25

    socket = websocket(alice)

    async def scenario():
        await connect(socket)
        started = time.monotonic()
        for n in range(500):
            status = "online" if n % 2 else "offline"
            await push(
                acme.pk, "devices.status", {"devices": [{"key": f"d{n % 50}", "status": status}]}
            )
        sent_in = time.monotonic() - started
        frames = []
        while not await no_frame(socket, timeout=1.0):
            frames.append(await next_frame(socket))
        latest = {}
        for frame in frames:
            for event in frame["events"]:
                for device in event["payload"]["devices"]:
                    latest[device["key"]] = device["status"]
        # Every device's last state arrives, in far fewer frames than events.
        assert latest == {f"d{n}": "online" if n % 2 else "offline" for n in range(50)}
        assert len(frames) <= sent_in / 0.25 + 2
        assert len(frames) < 50
        await socket.disconnect()

    async_to_sync(scenario)()


def test_the_first_event_after_a_quiet_spell_goes_out_at_once(layer, alice, acme, settings):
    settings.LIVE_FRAME_SECONDS = 2.0  # a long frame interval: the first event must not wait it

    socket = websocket(alice)

    async def scenario():
        await connect(socket)
        await asyncio.sleep(2.1)
        started = time.monotonic()
        await push(acme.pk, "devices.status", {"devices": [{"key": "a", "status": "offline"}]})
        await next_frame(socket, timeout=1.5)
        assert time.monotonic() - started < 1.5
        await socket.disconnect()

    async_to_sync(scenario)()


def test_ingest_pushes_one_compact_event_per_batch_and_tenant(
    layer, alice, acme, globex, acme_freezer_type
):
    """A batch of 300 messages from 3 Acme devices and 1 Globex device: one telemetry.latest per
    tenant naming its devices, none per reading; Alice's socket gets Acme's only."""
    import json as jsonlib

    from telemetry.services import ingest_batch
    from telemetry.validation import parse_message
    from tests.factories import make_device

    acme_keys = [f"acme-{n}" for n in range(3)]
    for key in acme_keys:
        make_device(acme, key, device_type=acme_freezer_type)
    make_device(globex, "globex-1")
    from django.utils import timezone

    from devices.models import Device

    Device.objects.update(status="online", last_seen=timezone.now())  # no status change to push
    now_ms = int(time.time() * 1000)
    entries = [
        parse_message(
            f"fleet/{key}/telemetry",
            jsonlib.dumps({"ts": now_ms - n * 10, "metrics": {"temperature": -18}}).encode(),
            now_ms,
        )
        for n in range(75)
        for key in [*acme_keys, "globex-1"]
    ]
    socket = websocket(alice)

    async def scenario():
        await connect(socket)
        await sync_to_async(ingest_batch)(entries)
        events = []
        while not await no_frame(socket, timeout=1.0):
            events += (await next_frame(socket))["events"]
        assert [e["event"] for e in events] == ["telemetry.latest"]
        assert events[0]["payload"] == {"devices": acme_keys, "count": 225}
        await socket.disconnect()

    async_to_sync(scenario)()


def test_a_fleet_wide_batch_names_no_devices_and_says_truncated(db):
    from telemetry.services import LATEST_KEYS_MAX, latest_payload

    keys = [f"d{n}" for n in range(LATEST_KEYS_MAX + 1)]
    assert latest_payload(keys, 9000) == {"devices": [], "count": 9000, "truncated": True}
    assert latest_payload(keys[:3], 9) == {"devices": keys[:3], "count": 9}


def test_sockets_of_one_tenant_share_one_feed_that_stops_with_the_last(layer, alice, dave, acme):
    """Each process reads a tenant's group once, whatever the number of its open dashboards."""
    from dashboards.hub import hub

    sockets = [websocket(alice), websocket(dave), websocket(alice)]

    async def scenario():
        for socket in sockets:
            await connect(socket)
        feeds = hub().feeds
        assert list(feeds) == [acme.pk]
        assert len(feeds[acme.pk].sockets) == 3
        members = await hub().layer.connection(0).zcard(hub().layer._group_key(f"tenant.{acme.pk}"))
        assert members == 1  # one channel in the group for the three sockets

        await push(acme.pk, "ping", {"n": 1})
        for socket in sockets:
            assert (await next_frame(socket))["events"] == [{"event": "ping", "payload": {"n": 1}}]

        for socket in sockets[:2]:
            await socket.disconnect()
        assert len(hub().feeds[acme.pk].sockets) == 1
        await sockets[2].disconnect()
        assert hub().feeds == {}

    async_to_sync(scenario)()


def test_a_tenants_feed_starts_again_after_its_last_socket_left(layer, alice, acme):
    first, second = websocket(alice), websocket(alice)

    async def scenario():
        await connect(first)
        await first.disconnect()
        await connect(second)
        await push(acme.pk, "ping", {"n": 2})
        assert (await next_frame(second))["events"] == [{"event": "ping", "payload": {"n": 2}}]
        await second.disconnect()

    async_to_sync(scenario)()
