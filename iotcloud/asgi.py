"""ASGI entry point: HTTP (Django) and the operator websocket (Channels).

Served by daphne (`manage.py runserver` in development, `daphne
iotcloud.asgi:application` in production); the device and operator HTTP API
can keep running under gunicorn (WSGI) beside it.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
django_application = get_asgi_application()  # sets Django up before the imports below

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from iotcloud.live.routing import websocket_urlpatterns  # noqa: E402
from iotcloud.live.security import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
