"""One feed per tenant per web process: the fan-out behind the dashboards' websockets.

Had every websocket joined its tenants' Channels groups itself, each event would cost one
channel-layer message (a Redis write and a read) and one merge per open dashboard: at 300
dashboards, a tenant's 12 events a second became 3,600 layer messages a second, about what one
daphne process can take (bench/live.py). Here each process reads each tenant's events once:

- a `TenantFeed` holds one channel-layer channel joined to the tenant's group, reads it, and
  merges what arrives (dashboards/coalesce.py) until the next frame;
- a frame goes out at once after a quiet spell, then at most once per LIVE_FRAME_SECONDS,
  serialized once and sent to every socket of the tenant in this process.

So the layer carries each event once per process, and a socket costs one send per frame, however
many events the frame merges. The feed starts with the tenant's first socket in the process and
stops with its last; it joins its group again every GROUP_REFRESH_SECONDS, since channels-redis
forgets group members after a day and a Redis restarted without its data forgets them at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeout

from dashboards.coalesce import EventBuffer
from iotfleet.live import MESSAGE_TYPE, tenant_group

log = logging.getLogger(__name__)

GROUP_REFRESH_SECONDS = 60.0
RETRY_SECONDS = 1.0


class Socket(Protocol):
    async def send_frame(self, text: str) -> None: ...


class TenantFeed:
    def __init__(self, layer: Any, tenant_id: int, frame_seconds: float) -> None:
        self.layer = layer
        self.tenant_id = tenant_id
        self.group = tenant_group(tenant_id)
        self.frame_seconds = frame_seconds
        self.sockets: set[Socket] = set()
        self.buffer = EventBuffer()
        self.channel = ""
        self.last_frame = 0.0
        self.flusher: asyncio.Task | None = None
        self.tasks: list[asyncio.Task] = []
        self.stopping = False

    async def start(self) -> None:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.tasks = [asyncio.create_task(self.read()), asyncio.create_task(self.stay_in_group())]

    async def stop(self) -> None:
        self.stopping = True
        for task in [*self.tasks, *([self.flusher] if self.flusher else [])]:
            task.cancel()
        try:
            await self.layer.group_discard(self.group, self.channel)
        except Exception:  # Redis away: the membership expires by itself
            log.warning("could not leave %s", self.group, exc_info=True)

    async def read(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except RedisTimeout:
                # A blocking read that waited longer than redis-py's read timeout: nothing came
                # (channels-redis keeps a message popped meanwhile in its backup queue). A read
                # cancelled by stop() ends here too.
                if self.stopping:
                    return
                continue
            except Exception:
                if self.stopping:
                    return
                # Redis restarting: keep trying; the pages reconnect and refresh meanwhile.
                log.warning("reading %s failed; retrying", self.group, exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if message.get("type") != MESSAGE_TYPE:
                continue
            self.buffer.add(message["event"], message.get("payload", {}))
            if self.flusher is None:
                loop = asyncio.get_running_loop()
                delay = max(0.0, self.last_frame + self.frame_seconds - loop.time())
                self.flusher = asyncio.create_task(self.send_frame(delay))

    async def send_frame(self, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.flusher = None
        events = self.buffer.drain()
        self.last_frame = asyncio.get_running_loop().time()
        if not events:
            return
        frame = json.dumps({"events": events}, separators=(",", ":"))
        results = await asyncio.gather(
            *(socket.send_frame(frame) for socket in list(self.sockets)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):  # a socket closing meanwhile; it leaves by itself
                log.debug("a frame to a closing socket was lost: %s", result)

    async def stay_in_group(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            try:
                await self.layer.group_add(self.group, self.channel)
            except Exception:
                log.warning("could not renew %s", self.group, exc_info=True)


class Hub:
    """The tenant feeds of one event loop (one web process)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.feeds: dict[int, TenantFeed] = {}
        self.lock = asyncio.Lock()

    async def join(self, socket: Socket, tenant_ids: list[int]) -> None:
        async with self.lock:
            for tenant_id in tenant_ids:
                feed = self.feeds.get(tenant_id)
                if feed is None:
                    frame_seconds = float(getattr(settings, "LIVE_FRAME_SECONDS", 0.25))
                    feed = TenantFeed(self.layer, tenant_id, frame_seconds)
                    await feed.start()
                    self.feeds[tenant_id] = feed
                feed.sockets.add(socket)

    async def leave(self, socket: Socket) -> None:
        async with self.lock:
            for tenant_id, feed in list(self.feeds.items()):
                feed.sockets.discard(socket)
                if not feed.sockets:
                    del self.feeds[tenant_id]
                    await feed.stop()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """This event loop's hub, on the current channel layer."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    current = _hubs.get(loop)
    if current is None or current.layer is not layer:
        current = _hubs[loop] = Hub(layer)
    return current
