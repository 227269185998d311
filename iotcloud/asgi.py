"""ASGI entry point (websockets join here with the admin live-update issue)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
application = get_asgi_application()
