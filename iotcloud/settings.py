"""iotcloud settings: one module, driven by the environment (django-environ).

With no environment at all the platform runs on a SQLite file in var/ so a
newcomer with only Python can try it. Production sets DATABASE_URL,
SECRET_KEY, DEBUG=false and ALLOWED_HOSTS; a missing SECRET_KEY with DEBUG
off fails fast instead of running with a guessable key.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-dev-only-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"] if DEBUG else ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",  # first: makes `runserver` serve ASGI (websockets)
    "iotcloud.apps.IotcloudAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "iotcloud",
    "devices",
    "twin",
    "jobs",
    "mqtt_bridge",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "iotcloud.urls"
WSGI_APPLICATION = "iotcloud.wsgi.application"
ASGI_APPLICATION = "iotcloud.asgi.application"
# Routes have no trailing slash (the contract); never redirect to add one.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'iotcloud.sqlite3'}"),
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Persistent connections: one per worker process/thread, health-checked.
    _db.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    _db.setdefault("CONN_HEALTH_CHECKS", True)
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    if _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # A file, not memory, for the test database too: the MQTT tests run the
    # bridge as a separate process against it.
    _db.setdefault("TEST", {"NAME": str(VAR_DIR / "test-iotcloud.sqlite3")})
    # WAL and a busy timeout let the web server and the bridge share the file.
    # IMMEDIATE transactions take the write lock at BEGIN, so concurrent
    # writers queue on the busy timeout instead of failing with "database is
    # locked" when a read lock cannot be upgraded.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

# The original schema's index name (idx_device_state_shadow_pending) is longer
# than Oracle's 30 characters; we run on PostgreSQL and SQLite only.
SILENCED_SYSTEM_CHECKS = ["models.E034"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(VAR_DIR / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- MQTT ---------------------------------------------------------------------
# mqtt://user:pass@host:1883 or mqtts://... (TLS); ?protocol=5|3.1.1|auto, ?ca_file=/path.
# Empty: the embedded broker (manage.py mqtt_broker), which make run starts.
MQTT_URL = env.str("MQTT_URL", default="")
# Stable id + persistent session: QoS 1 reports queued while the bridge is down
# are delivered when it returns. Give every bridge instance its own id.
MQTT_CLIENT_ID = env.str("MQTT_CLIENT_ID", default="iotcloud-bridge")
# Set (e.g. "iotcloud") to subscribe as $share/<group>/... so bridges split reports.
MQTT_SHARED_GROUP = env.str("MQTT_SHARED_GROUP", default="")
MQTT_SESSION_EXPIRY_SECONDS = env.int("MQTT_SESSION_EXPIRY_SECONDS", default=7 * 24 * 3600)
MQTT_KEEPALIVE_SECONDS = env.int("MQTT_KEEPALIVE_SECONDS", default=30)
MQTT_BATCH_MAX = env.int("MQTT_BATCH_MAX", default=2000)
MQTT_BATCH_WAIT_MS = env.int("MQTT_BATCH_WAIT_MS", default=20)
MQTT_MAX_PAYLOAD_BYTES = env.int("MQTT_MAX_PAYLOAD_BYTES", default=64 * 1024)
MQTT_PUBLISH_TIMEOUT_SECONDS = env.float("MQTT_PUBLISH_TIMEOUT_SECONDS", default=10.0)
MQTT_DELIVERY_BATCH = env.int("MQTT_DELIVERY_BATCH", default=500)
# Safety-net poll for desired delivery; PostgreSQL also wakes the bridge at once (LISTEN/NOTIFY).
MQTT_POLL_SECONDS = env.float(
    "MQTT_POLL_SECONDS", default=5.0 if DATABASES["default"]["ENGINE"].endswith("postgresql") else 0.5
)
EMBEDDED_MQTT_HOST = env.str("EMBEDDED_MQTT_HOST", default="127.0.0.1")
EMBEDDED_MQTT_PORT = env.int("EMBEDDED_MQTT_PORT", default=1884)

REDIS_URL = env.str("REDIS_URL", default="")

# --- Live updates (Channels) ------------------------------------------------------
# Events reach operator screens through a channel layer. Several processes
# (web workers, bridges) need Redis; without REDIS_URL everything that should
# see an event must run in one process (`make run` does).
LIVE_UPDATES = env.bool("LIVE_UPDATES", default=True)
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "iotcloud.live.layers.ThreadSafeInMemoryChannelLayer"}}

# --- Twin limits and timing -------------------------------------------------
TWIN_MAX_DOCUMENT_BYTES = env.int("TWIN_MAX_DOCUMENT_BYTES", default=8 * 1024)
TWIN_MAX_DEPTH = env.int("TWIN_MAX_DEPTH", default=6)
TWIN_MAX_KEY_LENGTH = env.int("TWIN_MAX_KEY_LENGTH", default=128)
# A request body may carry a document plus its envelope; anything larger is
# refused with 413 before it is parsed.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)
TWIN_STALE_AFTER = timedelta(seconds=env.int("TWIN_STALE_AFTER_SECONDS", default=30 * 60))
# last_seen is refreshed at most this often by reads, so a polling fleet
# does not turn every GET into a write.
DEVICE_LAST_SEEN_RESOLUTION = timedelta(seconds=env.int("DEVICE_LAST_SEEN_RESOLUTION_SECONDS", default=60))
DEVICE_MAX_TAGS = env.int("DEVICE_MAX_TAGS", default=32)

# --- Jobs ------------------------------------------------------------------------
JOB_MAX_DOCUMENT_BYTES = env.int("JOB_MAX_DOCUMENT_BYTES", default=32 * 1024)
JOB_MAX_STATUS_DETAILS_BYTES = env.int("JOB_MAX_STATUS_DETAILS_BYTES", default=4 * 1024)
JOBS_PENDING_LIMIT = env.int("JOBS_PENDING_LIMIT", default=10)
# How often the bridge runs the timeout/expiry sweep (also: manage.py sweep_jobs).
JOBS_SWEEP_SECONDS = env.float("JOBS_SWEEP_SECONDS", default=5.0)

# --- REST framework -----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["devices.permissions.IsOperator"],
    "DEFAULT_PARSER_CLASSES": ["iotcloud.api.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "iotcloud.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

# Operator tokens do not expire unless the deployment sets a lifetime.
_token_ttl_hours = env.int("OPERATOR_TOKEN_TTL_HOURS", default=0)
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Bearer",
    "TOKEN_TTL": timedelta(hours=_token_ttl_hours) if _token_ttl_hours else None,
    "AUTO_REFRESH": False,
    "TOKEN_PREFIX": "iotop_",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "iotcloud API",
    "DESCRIPTION": (
        "Device twins (desired / reported state) and jobs for IoT fleets. "
        "Operators use `Authorization: Bearer <token>`; devices use `X-Provision-Token`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DeviceStatusEnum": "devices.choices.DeviceStatus",
        "JobStatusEnum": "jobs.choices.JobStatus",
        "ExecutionStatusEnum": "jobs.choices.ExecutionStatus",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "iotcloud.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": env.str("LOG_FORMAT", default="plain")},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # daphne's runserver prints each request itself; don't log it twice.
        "django.channels.server": {"level": "WARNING"},
    },
}
