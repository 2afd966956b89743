"""The dashboards' websocket, `/ws/fleet/`: the live events of the user's tenants, coalesced.

The ASGI stack (iotfleet/asgi.py) checks the origin against ALLOWED_HOSTS and loads the user from
the Django session. The consumer refuses anonymous and inactive users and subscribes the socket
to the feed of each tenant the user belongs to (`Tenant.objects.for_user`, superusers: all) in
this process's hub (dashboards/hub.py), which reads each tenant's Channels group once per process
and sends its sockets frames

    {"events": [{"event": "devices.status", "payload": {...}}, ...]}

The first event after a quiet spell goes out at once; later ones wait until LIVE_FRAME_SECONDS
have passed since the previous frame and go out together, merged (dashboards/coalesce.py). So a
device sending 100 messages a second, or 10,000 devices, cost a browser at most
1 / LIVE_FRAME_SECONDS frames a second per tenant, each bounded in size.

Memberships are read when the socket opens: a user added to a tenant sees its events after the
page reconnects (any reload); a user removed from one stops receiving them on the next connect.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboards.hub import hub
from devices.models import Tenant

log = logging.getLogger(__name__)

# Close codes the page's script understands: do not retry without a new login.
CLOSE_NOT_LOGGED_IN = 4401


@database_sync_to_async
def tenant_ids_of(user: Any) -> list[int]:
    return list(Tenant.objects.for_user(user).order_by("pk").values_list("pk", flat=True))


class FleetConsumer(AsyncJsonWebsocketConsumer):
    # No channel of its own: the hub reads the layer for every socket of the process. (A channel
    # per socket also meant a receive per socket, cancelled at each disconnect, which redis-py
    # turns into a TimeoutError that crashed the consumer before it could leave the hub.)
    channel_layer_alias = None

    async def connect(self) -> None:
        self.joined = False
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_NOT_LOGGED_IN)
            return
        tenant_ids = await tenant_ids_of(user)
        await self.accept()
        # Joined before "ready", so a page that waits for it misses nothing after it.
        await hub().join(self, tenant_ids)
        self.joined = True
        await self.send_json(
            {"events": [{"event": "live.ready", "payload": {"tenants": tenant_ids}}]}
        )

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await hub().leave(self)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing but pings (to keep proxies from closing an idle socket)."""

    async def send_frame(self, text: str) -> None:
        """A frame the hub serialized once for every socket of the tenant."""
        await self.send(text_data=text)
