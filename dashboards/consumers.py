"""The dashboards' websocket, `/ws/fleet/`: the live events of the user's tenants, coalesced.

The ASGI stack (iotfleet/asgi.py) checks the origin against ALLOWED_HOSTS and loads the user from
the Django session. The consumer refuses anonymous and inactive users, joins the Channels group
of each tenant the user belongs to (`Tenant.objects.for_user`, superusers: all) and forwards
the `fleet.event` messages of those groups (iotfleet/live.py) in frames:

    {"events": [{"event": "devices.status", "payload": {...}}, ...]}

The first event of a frame goes out at once; later ones wait until LIVE_FRAME_SECONDS have
passed since the previous frame and go out together, merged (dashboards/coalesce.py). So a
device sending 100 messages a second, or 10,000 devices, cost a browser at most
1 / LIVE_FRAME_SECONDS frames a second, each bounded in size.

Memberships are read when the socket opens: a user added to a tenant sees its events after the
page reconnects (any reload); a user removed from one stops receiving them on the next connect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from dashboards.coalesce import EventBuffer
from devices.models import Tenant
from iotfleet.live import tenant_group

log = logging.getLogger(__name__)

# Close codes the page's script understands: do not retry without a new login.
CLOSE_NOT_LOGGED_IN = 4401


@database_sync_to_async
def tenant_ids_of(user: Any) -> list[int]:
    return list(Tenant.objects.for_user(user).order_by("pk").values_list("pk", flat=True))


class FleetConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        self.buffer = EventBuffer()
        self.flusher: asyncio.Task | None = None
        self.last_frame = 0.0
        self.frame_seconds = float(getattr(settings, "LIVE_FRAME_SECONDS", 0.25))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_NOT_LOGGED_IN)
            return
        tenant_ids = await tenant_ids_of(user)
        for tenant_id in tenant_ids:
            group = tenant_group(tenant_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.accept()
        await self.send_json(
            {"events": [{"event": "live.ready", "payload": {"tenants": tenant_ids}}]}
        )

    async def disconnect(self, code: int) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing but pings (to keep proxies from closing an idle socket)."""

    async def fleet_event(self, message: dict) -> None:
        self.buffer.add(message["event"], message.get("payload", {}))
        if self.flusher is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self.last_frame + self.frame_seconds - loop.time())
            self.flusher = asyncio.create_task(self._send_frame(delay))

    async def _send_frame(self, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.flusher = None
        events = self.buffer.drain()
        self.last_frame = asyncio.get_running_loop().time()
        if events:
            await self.send_json({"events": events})
