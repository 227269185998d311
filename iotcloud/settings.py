"""iotcloud settings: one module, driven by the environment (django-environ).

With no environment at all the platform runs on a SQLite file in var/ so a
newcomer with only Python can try it. Production sets DATABASE_URL,
SECRET_KEY, DEBUG=false and ALLOWED_HOSTS; a missing SECRET_KEY with DEBUG
off fails fast instead of running with a guessable key.
"""

import hashlib
import hmac
import ipaddress
import os
import socket
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from iotcloud.rules import RATE_RE

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off: a long random string, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = "insecure-dev-only-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"] if DEBUG else [])
if not ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must be set when DEBUG is off: the host names clients use to reach this "
        "server, comma-separated (e.g. ALLOWED_HOSTS=iot.example.com)"
    )
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
    "axes",  # sign-in lockout (see "Sign-in lockout" below)
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
    # First: counts and times every response, including those of the middleware below.
    "iotcloud.metrics.metrics_middleware",
    # Before anything reads the query string: NUL is never valid and PostgreSQL cannot take it.
    "iotcloud.middleware.reject_nul_in_query",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Changes made while serving a request know its operator or device (the audit trail).
    "devices.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a sign-in that django-axes refused (locked out) into a 429 page (devices.lockout).
    "axes.middleware.AxesMiddleware",
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
    # Django's backend with a health check that needs no round trip (iotcloud/db/postgresql/base.py).
    _db["ENGINE"] = "iotcloud.db.postgresql"
    # Persistent connections: one per worker process/thread, health-checked.
    _db.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    _db.setdefault("CONN_HEALTH_CHECKS", True)
    # An unreachable database host fails a request (and /readyz) in seconds, not after TCP's
    # two-minute connect timeout.
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT_SECONDS", default=5))
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    if _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # A file, not memory, for the test database too: the MQTT tests run the
    # bridge as a separate process against it. One per test run (pid), so two
    # runs on one checkout do not share it; pytest-django deletes it at the end.
    _db.setdefault("TEST", {"NAME": str(VAR_DIR / f"test-iotcloud-{os.getpid()}.sqlite3")})
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

# Tests only (conftest.py sets it, also for the servers and bridges tests start as processes):
# hash new passwords with a fast hasher; the usual ones still verify. Never set it in production.
if env.bool("TEST_FAST_PASSWORD_HASHER", default=False):
    PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
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

# --- Production security ------------------------------------------------------------
# Secure defaults when DEBUG is off (`manage.py check --deploy` is clean); each can be
# turned off for a plain-HTTP trial. TLS is terminated in front of Django (a proxy or
# load balancer): set USE_X_FORWARDED_PROTO=true when that proxy sets X-Forwarded-Proto
# (and strips it from clients), so Django knows the request came over HTTPS.
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Plain-HTTP requests are redirected to https://, except probes, metrics and the broker's
# auth hooks, which are called from inside the network.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)(/|$)", r"^mqtt/"]
# HSTS is only sent on HTTPS responses; browsers then refuse plain HTTP to this host for
# SECURE_HSTS_SECONDS (one year by default). 0 turns it off.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
# Preloading is a commitment for the whole registered domain, which only its owner can make
# (hstspreload.org): off unless asked for, and check --deploy's reminder (W021) is silenced.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "security.W021"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)

# --- MQTT ---------------------------------------------------------------------
# mqtt://user:pass@host:1883 or mqtts://... (TLS); ?protocol=5|3.1.1|auto, ?ca_file=/path.
# Empty: the embedded broker (manage.py mqtt_broker), which make run starts.
MQTT_URL = env.str("MQTT_URL", default="")
# Set (e.g. "iotcloud") to subscribe as $share/<group>/... so bridges split reports.
MQTT_SHARED_GROUP = env.str("MQTT_SHARED_GROUP", default="")
# Ingest processes of `manage.py mqtt_bridge` (mqtt_bridge.partitions; one Python process uses about one
# core): 1 = ingest in the bridge's own process; N > 1 = N worker processes, each device's messages on
# one of them; 0 (the default) = the number of cores with MQTT_URL, 1 with the embedded broker.
MQTT_BRIDGE_PROCESSES = env.int("MQTT_BRIDGE_PROCESSES", default=0)
if MQTT_BRIDGE_PROCESSES < 0:
    raise ImproperlyConfigured("MQTT_BRIDGE_PROCESSES must be 0 (one per core) or more")
# Stable id + persistent session: QoS 1 reports queued while the bridge is down
# are delivered when it returns. Give every bridge instance its own id; unset, it
# is one per host (container), so `docker compose up --scale bridge=N` gives each
# replica its own, with a suffix derived from SECRET_KEY that nobody can guess (a
# client that knew it could try to take the bridge's session over).
MQTT_CLIENT_ID = env.str("MQTT_CLIENT_ID", default="") or "iotcloud-bridge-{}-{}".format(
    socket.gethostname(),
    hmac.new(SECRET_KEY.encode(), b"mqtt-client-id:" + socket.gethostname().encode(), hashlib.sha256).hexdigest()[:16],
)
MQTT_SESSION_EXPIRY_SECONDS = env.int("MQTT_SESSION_EXPIRY_SECONDS", default=7 * 24 * 3600)
MQTT_KEEPALIVE_SECONDS = env.int("MQTT_KEEPALIVE_SECONDS", default=30)
MQTT_BATCH_MAX = env.int("MQTT_BATCH_MAX", default=2000)
MQTT_BATCH_WAIT_MS = env.int("MQTT_BATCH_WAIT_MS", default=0)  # 0: a batch takes what is queued, never waits
MQTT_MAX_PAYLOAD_BYTES = env.int("MQTT_MAX_PAYLOAD_BYTES", default=64 * 1024)
# Reports per device over MQTT (as DEVICE_RATE_LIMIT for HTTP; same syntax): over it, a report is
# dropped and answered on .../shadow/reported/rejected. Counted in each bridge process's memory.
MQTT_REPORT_RATE_LIMIT = env.str("MQTT_REPORT_RATE_LIMIT", default="20/s")
MQTT_REPORT_RATE_BURST = env.int("MQTT_REPORT_RATE_BURST", default=0)
# The device protocol's topic trees (shadow get/update/delete, jobs): "native" (tenant/<t>/device/<d>/...)
# and "aws" ($aws/things/<tenant>:<device>/...). Take one out to turn it off; the seed's topics
# (shadow/desired, shadow/reported, jobs/notify) are always on.
MQTT_DIALECTS = env.list("MQTT_DIALECTS", default=["native", "aws"])
if not set(MQTT_DIALECTS) <= {"native", "aws"}:
    raise ImproperlyConfigured(f'MQTT_DIALECTS takes "native" and/or "aws", not {",".join(MQTT_DIALECTS)!r}')
MQTT_PUBLISH_TIMEOUT_SECONDS = env.float("MQTT_PUBLISH_TIMEOUT_SECONDS", default=10.0)
# The shadow events (update/documents, update/delta) of the bridge's own batches are published by it
# right after the commit; if the broker has not acknowledged them within this lease (the bridge died,
# the broker went away), the delivery loop of any bridge publishes them from the outbox.
MQTT_EVENT_LEASE_SECONDS = env.float("MQTT_EVENT_LEASE_SECONDS", default=30.0)
MQTT_DELIVERY_BATCH = env.int("MQTT_DELIVERY_BATCH", default=500)
# Safety-net poll for desired delivery; PostgreSQL also wakes the bridge at once (LISTEN/NOTIFY).
MQTT_POLL_SECONDS = env.float(
    "MQTT_POLL_SECONDS", default=5.0 if DATABASES["default"]["ENGINE"].endswith("postgresql") else 0.5
)
# A broker that lost its retained messages gets every device's desired state and jobs lists back from
# the database (mqtt_bridge/recovery.py): when the bridge connects without a session, and when the
# canary each bridge keeps retained on the broker is missing or went back, read on every connect and
# every MQTT_CANARY_CHECK_SECONDS (0: no canary). As a second net, every MQTT_ANTI_ENTROPY_SECONDS
# each bridge re-sends the retained state of the next MQTT_ANTI_ENTROPY_DEVICES devices, rolling
# through the fleet by id: anything lost is back within fleet size / devices x seconds (100,000
# devices: 200 passes, 3 h 20 min at the defaults), at 500 messages a minute. 0 turns it off.
MQTT_CANARY_CHECK_SECONDS = env.float("MQTT_CANARY_CHECK_SECONDS", default=60.0)
MQTT_ANTI_ENTROPY_SECONDS = env.float("MQTT_ANTI_ENTROPY_SECONDS", default=60.0)
MQTT_ANTI_ENTROPY_DEVICES = env.int("MQTT_ANTI_ENTROPY_DEVICES", default=500)
# Per-device broker accounts. "dynsec": the bridge keeps Mosquitto's dynamic security plugin in
# step with provisioning, rotation and decommission (its MQTT_URL account needs the plugin's admin
# role). "" : the broker authenticates devices some other way (the embedded broker asks the
# database; EMQX-style brokers call /mqtt/auth and /mqtt/acl).
MQTT_DEVICE_AUTH = env.str("MQTT_DEVICE_AUTH", default="")
if MQTT_DEVICE_AUTH not in ("", "dynsec"):
    raise ImproperlyConfigured(f'MQTT_DEVICE_AUTH must be "" or "dynsec", not {MQTT_DEVICE_AUTH!r}')
# Read directly: django-environ would take the leading "$" for a reference to another variable.
MQTT_DYNSEC_TOPIC = os.environ.get("MQTT_DYNSEC_TOPIC", "$CONTROL/dynamic-security/v1")
# Encrypts a new device token on its way to the broker (erased once applied); defaults to a key
# derived from SECRET_KEY.
BROKER_CREDENTIALS_KEY = env.str("BROKER_CREDENTIALS_KEY", default="")
# Shared secret that EMQX-style brokers send (Authorization: Bearer ...) to /mqtt/auth and /mqtt/acl.
MQTT_AUTH_HOOK_TOKEN = env.str("MQTT_AUTH_HOOK_TOKEN", default="")
EMBEDDED_MQTT_HOST = env.str("EMBEDDED_MQTT_HOST", default="127.0.0.1")
EMBEDDED_MQTT_PORT = env.int("EMBEDDED_MQTT_PORT", default=1884)
# The embedded broker's MQTT over TLS port (0: none), with the development certificate from MQTT_TLS_DIR.
EMBEDDED_MQTT_TLS_PORT = env.int("EMBEDDED_MQTT_TLS_PORT", default=8884)
# Where `manage.py tls_dev_ca` keeps the development CA and broker certificate (mqtt_bridge.dev_tls).
MQTT_TLS_DIR = Path(env.str("MQTT_TLS_DIR", default=str(VAR_DIR / "tls")))

REDIS_URL = env.str("REDIS_URL", default="")

# --- Rate limits -------------------------------------------------------------------
# Per-device limit on the device HTTP API (devices/throttling.py): "20/s" (AWS IoT's
# per-thing rate), "600/m", "100/10s"; empty or "0" turns it off. DEVICE_RATE_BURST
# requests may come at once (0: the rate's count). Over it: 429 + Retry-After.
DEVICE_RATE_LIMIT = env.str("DEVICE_RATE_LIMIT", default="20/s").strip().replace(" ", "")
DEVICE_RATE_BURST = env.int("DEVICE_RATE_BURST", default=0)
if DEVICE_RATE_LIMIT not in ("", "0") and not RATE_RE.fullmatch(DEVICE_RATE_LIMIT):
    raise ImproperlyConfigured(f'DEVICE_RATE_LIMIT must look like "20/s" or "600/m", not {DEVICE_RATE_LIMIT!r}')
# The counters live in the cache: Redis when REDIS_URL is set (shared by every worker and
# host), else local memory (per process: with N workers a device gets up to N times the limit).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "iotcloud",
            # A slow or absent Redis must not stall the API (the throttle lets requests through then).
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "iotcloud"}}

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
# Every accepted shadow change publishes update/documents (and update/delta when due). The seed's
# whole reports (shadow/reported, POST /device/v1/shadow/reported) can be left out: a fleet that
# reports that way at a high rate and has nobody watching documents saves an outbox row per report.
TWIN_EVENTS_FOR_SEED_REPORTS = env.bool("TWIN_EVENTS_FOR_SEED_REPORTS", default=True)
# last_seen is refreshed at most this often by reads, so a polling fleet
# does not turn every GET into a write.
DEVICE_LAST_SEEN_RESOLUTION = timedelta(seconds=env.int("DEVICE_LAST_SEEN_RESOLUTION_SECONDS", default=60))
DEVICE_MAX_TAGS = env.int("DEVICE_MAX_TAGS", default=32)
# X.509 device certificates (devices.certificates): days a device certificate and the platform CA are valid.
DEVICE_CERTIFICATE_DAYS = env.int("DEVICE_CERTIFICATE_DAYS", default=365)
DEVICE_CA_DAYS = env.int("DEVICE_CA_DAYS", default=3650)
# The device HTTP API takes a device's certificate from a TLS proxy that verified it: in this header
# (URL-escaped PEM, nginx's $ssl_client_escaped_cert), only from these addresses or networks
# (comma-separated, e.g. "10.0.0.5,10.1.0.0/16"); empty: never (the default).
DEVICE_CERT_HEADER = env.str("DEVICE_CERT_HEADER", default="X-Client-Certificate")
DEVICE_CERT_META = "HTTP_" + DEVICE_CERT_HEADER.upper().replace("-", "_")
try:
    DEVICE_CERT_PROXY_NETWORKS = [ipaddress.ip_network(n.strip(), strict=False)
                                  for n in env.list("DEVICE_CERT_PROXIES", default=[]) if n.strip()]  # fmt: skip
except ValueError as exc:
    raise ImproperlyConfigured(f"DEVICE_CERT_PROXIES: {exc}") from None
# Bulk provisioning (POST /customer/devices/bulk, the admin's "Provision devices from a file"): at most
# this many devices per call, in a body or file (JSON or CSV) of at most this many bytes.
DEVICES_BULK_MAX_ROWS = env.int("DEVICES_BULK_MAX_ROWS", default=10_000)
DEVICES_BULK_MAX_BYTES = env.int("DEVICES_BULK_MAX_BYTES", default=8 * 1024 * 1024)
if DEVICES_BULK_MAX_ROWS < 1 or DEVICES_BULK_MAX_BYTES < 1:
    raise ImproperlyConfigured("DEVICES_BULK_MAX_ROWS and DEVICES_BULK_MAX_BYTES must be 1 or more")
# Fleet provisioning by claim (devices.claims): serials on a template's allow-list, at most; and registrations
# per claim token (POST /device/v1/register and MQTT), same syntax as DEVICE_RATE_LIMIT (empty or "0": off).
PROVISIONING_MAX_ALLOWED_SERIALS = env.int("PROVISIONING_MAX_ALLOWED_SERIALS", default=10_000)
CLAIM_RATE_LIMIT = env.str("CLAIM_RATE_LIMIT", default="10/s").strip().replace(" ", "")
CLAIM_RATE_BURST = env.int("CLAIM_RATE_BURST", default=0)
if CLAIM_RATE_LIMIT not in ("", "0") and not RATE_RE.fullmatch(CLAIM_RATE_LIMIT):
    raise ImproperlyConfigured(f'CLAIM_RATE_LIMIT must look like "10/s" or "600/m", not {CLAIM_RATE_LIMIT!r}')
# How long a registration waits for a template's pre-provisioning hook before it is refused (503).
PROVISIONING_HOOK_TIMEOUT_SECONDS = env.float("PROVISIONING_HOOK_TIMEOUT_SECONDS", default=5.0)
if not 0 < PROVISIONING_HOOK_TIMEOUT_SECONDS <= 60:
    raise ImproperlyConfigured("PROVISIONING_HOOK_TIMEOUT_SECONDS must be more than 0 and at most 60")

# --- Jobs ------------------------------------------------------------------------
JOB_MAX_DOCUMENT_BYTES = env.int("JOB_MAX_DOCUMENT_BYTES", default=32 * 1024)
JOB_MAX_STATUS_DETAILS_BYTES = env.int("JOB_MAX_STATUS_DETAILS_BYTES", default=4 * 1024)
JOBS_PENDING_LIMIT = env.int("JOBS_PENDING_LIMIT", default=10)
# How often the bridge runs the timeout/expiry sweep (also: manage.py sweep_jobs).
JOBS_SWEEP_SECONDS = env.float("JOBS_SWEEP_SECONDS", default=5.0)
# The audit trail (devices.audit) keeps this many days of events; 0 keeps everything.
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=365)
# Finished jobs (COMPLETED, CANCELED) older than this many days are deleted with their executions
# and history, by the bridge, hourly; 0 keeps them all.
JOBS_RETENTION_DAYS = env.int("JOBS_RETENTION_DAYS", default=0)
# How often each bridge's rollout scheduler releases executions of jobs with a rollout and checks
# abort criteria (jobs.release); the pace itself is the job's, this only sets its granularity.
JOBS_ROLLOUT_TICK_SECONDS = env.float("JOBS_ROLLOUT_TICK_SECONDS", default=1.0)
# At most this many executions are released (a desired-state job's: patched) per transaction, so
# that a wave of 100,000 holds its device rows' locks for a second or two at a time, not a minute.
JOBS_RELEASE_BATCH = env.int("JOBS_RELEASE_BATCH", default=2000)

# --- Health and metrics ---------------------------------------------------------
# Bridges upsert a row in bridge_heartbeats this often; /readyz fails when none beat within the stale window.
BRIDGE_HEARTBEAT_SECONDS = env.float("BRIDGE_HEARTBEAT_SECONDS", default=5.0)
BRIDGE_HEARTBEAT_STALE_SECONDS = env.float("BRIDGE_HEARTBEAT_STALE_SECONDS", default=30.0)
# false: the bridge check is reported but does not make /readyz fail (web deployed apart from bridges).
READY_REQUIRE_BRIDGE = env.bool("READY_REQUIRE_BRIDGE", default=True)
# /readyz fails when the oldest undelivered desired change is older than this; 0 turns the gate off.
READY_MAX_DELIVERY_LAG_SECONDS = env.float("READY_MAX_DELIVERY_LAG_SECONDS", default=60.0)
READY_BROKER_TIMEOUT_SECONDS = env.float("READY_BROKER_TIMEOUT_SECONDS", default=1.0)
# Operational data (fleet counts, bridge client ids, the broker's address) is for operators only:
# /metrics requires Authorization: Bearer <METRICS_TOKEN>, and /readyz without it says only which
# checks failed. Required when DEBUG is off, unless METRICS_PUBLIC=true deliberately serves /metrics
# without authentication (bridge client ids replaced by pseudonyms; /readyz stays minimal). With a
# token, METRICS_PUBLIC changes nothing.
# Several worker processes: set PROMETHEUS_MULTIPROC_DIR (read by prometheus_client) for totals across them.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
if not METRICS_TOKEN and not METRICS_PUBLIC and not DEBUG:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be set when DEBUG is off: /metrics and the detail of /readyz are only served "
        "with Authorization: Bearer <METRICS_TOKEN> (a long random string, e.g. the output of python -c "
        "'import secrets; print(secrets.token_urlsafe(32))'); set METRICS_PUBLIC=true instead to serve "
        "/metrics without authentication"
    )
# Derived, not read from the environment: DEBUG without a token (make run) shows everything to anyone.
METRICS_DEBUG_OPEN = DEBUG and not METRICS_TOKEN and not METRICS_PUBLIC

# --- Sign-in lockout (django-axes) -----------------------------------------------------
# Password sign-ins (POST /customer/auth/token, /admin/login/, /api-auth/login/) are counted in the
# database per username and per client address: the LOGIN_FAILURE_LIMIT-th failure within
# LOGIN_LOCKOUT_MINUTES locks that username, and that address, out for LOGIN_LOCKOUT_MINUTES (each
# attempt meanwhile starts it again, and the right password does not get through): 429 with
# Retry-After. LOGIN_FAILURE_LIMIT=0 turns it off. Bearer tokens are not affected. Unlock early
# with manage.py axes_reset_username <name> / axes_reset_ip <address>.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
if LOGIN_FAILURE_LIMIT < 0 or LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured(
        "LOGIN_FAILURE_LIMIT must be 0 (no lockout) or more and LOGIN_LOCKOUT_MINUTES 1 or more, "
        f"not {LOGIN_FAILURE_LIMIT} and {LOGIN_LOCKOUT_MINUTES}"
    )
# The client address is REMOTE_ADDR; X-Forwarded-For is ignored. Behind reverse proxies that append
# to X-Forwarded-For, set TRUSTED_PROXY_COUNT to how many there are: the address is then the one the
# outermost proxy saw (the N-th from the right). Only with such proxies: else clients pick their address.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
AXES_ENABLED = LOGIN_FAILURE_LIMIT > 0
AXES_FAILURE_LIMIT = max(LOGIN_FAILURE_LIMIT, 1)
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks: one account, or one address
# axes' database handler (shared by every worker and host), keeping NUL and oversize values out of it.
AXES_HANDLER = "devices.lockout.AxesHandler"
AXES_CLIENT_IP_CALLABLE = "devices.lockout.client_ip"
AXES_USERNAME_CALLABLE = "devices.lockout.client_username"
AXES_VERBOSE = False  # no banner at every start; failures and lockouts are still logged
AXES_LOCKOUT_CALLABLE = "devices.lockout.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
# A success does not wipe failures: it would also wipe its address's failures against other accounts.
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True  # keep failures only (no row, and no forced session, per successful sign-in)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out sign-in before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]

# --- REST framework -----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # knox's, with malformed tokens answered 401 (not a 500).
        "devices.authentication.OperatorTokenAuthentication",
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

# Operator bearer tokens live OPERATOR_TOKEN_TTL_HOURS (30 days; 0: no expiry) and an operator holds at
# most OPERATOR_TOKEN_LIMIT unexpired ones (0: no cap): one more is refused (409 token_limit) until one is
# revoked or expires. A new password (any path) revokes all of the operator's tokens.
_token_ttl_hours = env.int("OPERATOR_TOKEN_TTL_HOURS", default=720)
_token_limit = env.int("OPERATOR_TOKEN_LIMIT", default=10)
if _token_ttl_hours < 0 or _token_limit < 0:
    raise ImproperlyConfigured("OPERATOR_TOKEN_TTL_HOURS and OPERATOR_TOKEN_LIMIT must be 0 (off) or more")
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Bearer",
    "TOKEN_TTL": timedelta(hours=_token_ttl_hours) if _token_ttl_hours else None,
    "TOKEN_LIMIT_PER_USER": _token_limit or None,
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
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "iotcloud.api.schema.add_device_rate_limit",
    ],
}

# One JSON object per line (for log collectors) unless DEBUG is on.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # One line per record whatever it carries (control characters escaped: no forged lines).
        "plain": {"()": "iotcloud.logs.PlainFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "iotcloud.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Failed sign-ins and lockouts are warnings; axes' routine steps are not worth a line each.
        "axes": {"level": "WARNING"},
        # daphne's runserver prints each request itself; don't log it twice.
        "django.channels.server": {"level": "WARNING"},
    },
}
