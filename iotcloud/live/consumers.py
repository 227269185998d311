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

The socket lives only as long as its session (iotcloud.live.sessions): logout,
a password change, deactivation, a removed membership or an expired session
close it with code 4401, after
    <- {"type": "error", "detail": "Session ended: sign in again"}
and no event of the tenant reaches it afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from devices.models import Tenant
from devices.selectors import operator_tenant
from iotcloud.live import sessions
from iotcloud.live.events import tenant_group
from iotcloud.rules import TENANT_ID

logger = logging.getLogger(__name__)

FORBIDDEN = 4403
UNAUTHENTICATED = 4401
SESSION_ENDED = "Session ended: sign in again"
NO_LONGER_ALLOWED = "You may no longer watch these tenants"


MAX_TENANTS = 100


class LiveConsumer(AsyncJsonWebsocketConsumer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant_ids: set[str] = set()
        self.session_key: str | None = None
        self.checked_at = 0.0
        self.closing = False
        self.watchdog: asyncio.Task | None = None

    async def connect(self):
        user = self.scope.get("user")
        session = self.scope.get("session")
        if (
            user is None
            or not user.is_authenticated
            or not user.is_active
            or not user.is_staff
            or session is None
            or not session.session_key
        ):
            await self.close(code=UNAUTHENTICATED)
            return
        self.session_key = session.session_key
        await self.channel_layer.group_add(sessions.session_group(self.session_key), self.channel_name)
        await self.channel_layer.group_add(sessions.user_group(user.pk), self.channel_name)
        # Checked again once in the groups: a logout between the handshake and here would be missed.
        if await self._session_problem() is not None:
            await self._leave_groups()
            await self.close(code=UNAUTHENTICATED)
            return
        self.checked_at = time.monotonic()
        await self.accept()
        self.watchdog = asyncio.create_task(self._watch_session())

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
        if self.closing:
            return
        wanted = content.get("subscribe") if isinstance(content, dict) else None
        if isinstance(wanted, str):
            wanted = [wanted]
        if (
            not isinstance(wanted, list)
            or not 0 < len(wanted) <= MAX_TENANTS
            or not all(TENANT_ID.matches(t) for t in wanted)
        ):
            detail = f'Send {{"subscribe": "<tenant id>"}} or a list of at most {MAX_TENANTS} tenant ids'
            await self.send_json({"type": "error", "detail": detail})
            return
        if not await self._session_still_valid():
            return
        refused = await self._refused(set(wanted))
        if refused:
            await self._end(FORBIDDEN, f"You may not watch tenant {refused[:63]!r}")
            return
        for tenant_id in sorted(set(wanted) - self.tenant_ids):
            await self.channel_layer.group_add(tenant_group(tenant_id), self.channel_name)
        self.tenant_ids |= set(wanted)
        await self.send_json({"type": "subscribed", "tenants": sorted(self.tenant_ids)})

    async def disconnect(self, code):
        if self.watchdog is not None:
            self.watchdog.cancel()
        await self._leave_groups()

    async def _leave_groups(self):
        groups = [tenant_group(t) for t in self.tenant_ids]
        if self.session_key:
            groups += [sessions.session_group(self.session_key), sessions.user_group(self.scope["user"].pk)]
        self.tenant_ids = set()
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- the session behind the socket -------------------------------------------------

    async def _end(self, code=UNAUTHENTICATED, detail=SESSION_ENDED):
        """Close for good: leave every group first, so no further event is forwarded."""
        if self.closing:
            return
        self.closing = True
        await self._leave_groups()
        await self.send_json({"type": "error", "detail": detail})
        await self.close(code=code)

    async def _session_still_valid(self, *, max_age: float = 0.0) -> bool:
        """Check the session again (unless checked within max_age seconds); close the socket if it ended."""
        if self.closing:
            return False
        if max_age and time.monotonic() - self.checked_at < max_age:
            return True
        code = await self._session_problem()
        self.checked_at = time.monotonic()
        if code is not None:
            await self._end(code, SESSION_ENDED if code == UNAUTHENTICATED else NO_LONGER_ALLOWED)
            return False
        return True

    @database_sync_to_async
    def _session_problem(self) -> int | None:
        """None while the session is alive and may watch what it watches, else the close code."""
        user = sessions.session_user(self.session_key)
        if user is None or user.pk != self.scope["user"].pk:
            return UNAUTHENTICATED
        if not user.is_superuser and operator_tenant(user) is None:
            return UNAUTHENTICATED  # membership removed: no longer an operator
        self.scope["user"] = user  # fresh flags (is_superuser) for the checks below and later subscriptions
        return FORBIDDEN if self.tenant_ids and self._refused_now(self.tenant_ids) else None

    async def _watch_session(self):
        """Idle sockets too: check every CHECK_SECONDS (expiry, deletions that send no signal)."""
        while not self.closing:
            await asyncio.sleep(sessions.CHECK_SECONDS)
            try:
                await self._session_still_valid()
            except Exception:  # the database is down, say: try again next time, the socket stays
                logger.warning("live session check failed", exc_info=True)

    async def session_end(self, event):
        await self._end()

    async def session_check(self, event):
        await self._session_still_valid()

    @database_sync_to_async
    def _refused(self, tenant_ids: set[str]) -> str | None:
        return self._refused_now(tenant_ids)

    def _refused_now(self, tenant_ids: set[str]) -> str | None:
        """The first tenant this user may not watch, or None."""
        user = self.scope["user"]
        if user.is_superuser:
            known = set(Tenant.objects.filter(id__in=tenant_ids).values_list("id", flat=True))
            return next(iter(sorted(tenant_ids - known)), None)
        own = operator_tenant(user)
        return next(iter(sorted(t for t in tenant_ids if own is None or t != own.id)), None)

    # Group messages (type "twin.changed" -> twin_changed) go to the browser as they are,
    # while the session lasts (checked again when the last check is older than CHECK_SECONDS).
    async def twin_changed(self, event):
        await self._forward(event)

    async def jobs_changed(self, event):
        await self._forward(event)

    async def _forward(self, event):
        if await self._session_still_valid(max_age=sessions.CHECK_SECONDS):
            await self.send_json(event)
