"""The in-memory channel layer, made safe to send to from other threads.

`make run` keeps web and MQTT bridge in one process so live updates work
without Redis. Channels' InMemoryChannelLayer hands messages to asyncio
queues owned by the web server's event loop; a send from the bridge's thread
(async_to_sync runs it on a private loop) would wake a future of another
loop from the wrong thread. This layer remembers the loop its consumers live
on and runs sends there. Several processes need the Redis layer instead
(settings: REDIS_URL).
"""

from __future__ import annotations

import asyncio

from channels.layers import InMemoryChannelLayer


class ThreadSafeInMemoryChannelLayer(InMemoryChannelLayer):
    _home: asyncio.AbstractEventLoop | None = None

    async def group_add(self, group, channel):
        self._home = asyncio.get_running_loop()
        await super().group_add(group, channel)

    async def group_send(self, group, message):
        home = self._home
        if home is None or home.is_closed() or home is asyncio.get_running_loop():
            await super().group_send(group, message)
            return
        future = asyncio.run_coroutine_threadsafe(super().group_send(group, message), home)
        await asyncio.wrap_future(future)

    def has_listeners(self, group: str) -> bool:
        """Whether anyone in this process listens to the group: a web worker or bridge with no
        websocket consumers skips the send (and its event loop round trip) altogether."""
        return bool(self.groups.get(group))
