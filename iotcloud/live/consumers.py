"""The operator websocket: /ws/live.

The browser's admin session authenticates it (AuthMiddlewareStack). After
connecting, a screen subscribes to one tenant:

    -> {"subscribe": "acme"}            (or a list of tenant ids)
    <- {"type": "subscribed", "tenants": ["acme"]}
    <- {"type": "twin.changed", "tenant": "acme", "devices": ["pump-1"]}
    <- {"type": "jobs.changed", "tenant": "acme", "jobs": ["fw-2"]}

Only staff users reach it at all; an operator may subscribe to their own
tenant, a superuser to any. A refused subscription is answered with an
error and the socket is closed (code 4403).
"""

from __future__ import annotations

import re

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from devices.models import TENANT_ID_RE, Tenant
from devices.selectors import operator_tenant
from iotcloud.live.events import tenant_group

FORBIDDEN = 4403
UNAUTHENTICATED = 4401


MAX_TENANTS = 100


class LiveConsumer(AsyncJsonWebsocketConsumer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant_ids: set[str] = set()

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active or not user.is_staff:
            await self.close(code=UNAUTHENTICATED)
            return
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        # Not JSON (or binary): explain instead of letting the decoder's exception drop the socket.
        try:
            content = await self.decode_json(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if content is None:
            await self.send_json({"type": "error", "detail": 'Send JSON text: {"subscribe": "<tenant id>"}'})
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs):
        wanted = content.get("subscribe") if isinstance(content, dict) else None
        if isinstance(wanted, str):
            wanted = [wanted]
        if (
            not isinstance(wanted, list)
            or not 0 < len(wanted) <= MAX_TENANTS
            or not all(isinstance(t, str) and re.fullmatch(TENANT_ID_RE, t) for t in wanted)
        ):
            detail = f'Send {{"subscribe": "<tenant id>"}} or a list of at most {MAX_TENANTS} tenant ids'
            await self.send_json({"type": "error", "detail": detail})
            return
        refused = await self._refused(set(wanted))
        if refused:
            await self.send_json({"type": "error", "detail": f"You may not watch tenant {refused[:63]!r}"})
            await self.close(code=FORBIDDEN)
            return
        for tenant_id in sorted(set(wanted) - self.tenant_ids):
            await self.channel_layer.group_add(tenant_group(tenant_id), self.channel_name)
        self.tenant_ids |= set(wanted)
        await self.send_json({"type": "subscribed", "tenants": sorted(self.tenant_ids)})

    async def disconnect(self, code):
        for tenant_id in self.tenant_ids:
            await self.channel_layer.group_discard(tenant_group(tenant_id), self.channel_name)

    @database_sync_to_async
    def _refused(self, tenant_ids: set[str]) -> str | None:
        """The first tenant this user may not watch, or None."""
        user = self.scope["user"]
        if user.is_superuser:
            known = set(Tenant.objects.filter(id__in=tenant_ids).values_list("id", flat=True))
            return next(iter(sorted(tenant_ids - known)), None)
        own = operator_tenant(user)
        return next(iter(sorted(t for t in tenant_ids if own is None or t != own.id)), None)

    # Group messages (type "twin.changed" -> twin_changed) go to the browser as they are.
    async def twin_changed(self, event):
        await self.send_json(event)

    async def jobs_changed(self, event):
        await self.send_json(event)
