"""WSGI entry point: production HTTP runs here (gunicorn workers)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotcloud.settings")
application = get_wsgi_application()
