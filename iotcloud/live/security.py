"""Websocket origin check: same origin as the page (or a CSRF-trusted origin).

Browsers send cookies with cross-site websocket handshakes, so without this
any web page could open /ws/live with an operator's session. Channels'
AllowedHostsOriginValidator follows ALLOWED_HOSTS, which is "*" in
development; comparing the Origin with the Host header holds everywhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings


class SameOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not self.allowed(dict(scope.get("headers", []))):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.application(scope, receive, send)

    @staticmethod
    def allowed(headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if not origin:
            return False  # browsers always send it; a missing Origin is not a browser page of ours
        if origin in settings.CSRF_TRUSTED_ORIGINS:
            return True
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
