"""IoTFleet settings, read from environment variables with working local defaults.

`IOTFLEET_ENV=production` switches to production behaviour: DEBUG off, secure cookies and HSTS,
and `SECRET_KEY` / `ALLOWED_HOSTS` must be given (ImproperlyConfigured otherwise).
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

IOTFLEET_ENV = env.str("IOTFLEET_ENV", default="development")
if IOTFLEET_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"IOTFLEET_ENV must be 'development' or 'production', not {IOTFLEET_ENV!r}."
    )
PRODUCTION = IOTFLEET_ENV == "production"


def required_in_production(name: str, default: str) -> str:
    """The variable's value; in production it must be set, locally `default` is used."""
    value = env.str(name, default="")
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"Set the {name} environment variable (IOTFLEET_ENV=production)")
    return default


SECRET_KEY = required_in_production(
    "SECRET_KEY", "django-insecure-local-development-key-never-use-in-production"
)
DEBUG = env.bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("Set ALLOWED_HOSTS (comma-separated) when IOTFLEET_ENV=production.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "devices",
    "telemetry",
    "rules",
    "alerts",
    "ota",
    "dashboards",
    "maintenance",
    "reports",
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

ROOT_URLCONF = "iotfleet.urls"

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
                "dashboards.context_processors.navigation",
            ],
        },
    },
]

WSGI_APPLICATION = "iotfleet.wsgi.application"
ASGI_APPLICATION = "iotfleet.asgi.application"

# --- Backing services -------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/iotfleet")
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CHANNELS_REDIS_URL = env.str("CHANNELS_REDIS_URL", default=REDIS_URL)
MQTT_URL = env.str("MQTT_URL", default="mqtt://127.0.0.1:1883")
# Per-device MQTT accounts (devices/broker_accounts.py, docs/mqtt.md): with this on, creating,
# rotating, disabling and deleting devices provisions them on Mosquitto's dynamic security plugin,
# logged in as MQTT_URL's user (mqtt://USER:PASSWORD@HOST:1883). Off, the broker is not touched.
MQTT_DYNSEC_ENABLED = env.bool("MQTT_DYNSEC_ENABLED", default=False)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [CHANNELS_REDIS_URL], "prefix": "iotfleet:channels"},
    }
}

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# At-least-once: a task is acknowledged after it ran, and comes back if its worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fix-up closes the database connection before and after every task (Celery 5.6
# went back to that, celery#9824): every ingest batch paid a new PostgreSQL backend, with cold
# caches and its staging table to create again. Workers keep their connection as the web process
# does (CONN_MAX_AGE, health checks, closed after an error: iotfleet/celery.py); the fix-up
# closes it only every this many tasks.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Unacknowledged tasks are redelivered after this long; the default (1 h) would hold a dead
# worker's batch back for an hour.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=300)
}
CELERY_RESULT_EXPIRES = timedelta(hours=6)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Installed into django-celery-beat's tables when beat starts; operators may retime them there.
CELERY_BEAT_SCHEDULE = {
    "telemetry-partitions": {"task": "telemetry.maintain_partitions", "schedule": 3600.0},
    "devices-expire-commands": {"task": "devices.expire_commands", "schedule": 15.0},
}

# --- Auth -------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Live dashboards --------------------------------------------------------------------------
# A dashboard's websocket sends at most one frame per this many seconds; what arrives meanwhile
# is merged into the next frame (dashboards/consumers.py, docs/dashboards.md).
LIVE_FRAME_SECONDS = env.float("LIVE_FRAME_SECONDS", default=0.25)

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an unauthenticated request then gets 401 with `WWW-Authenticate: Token`.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # DRF's parsers, with the JSON one refusing JSON nested too deep with a 400, not a 500.
    "DEFAULT_PARSER_CLASSES": [
        "iotfleet.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "devices.api.permissions.TenantRolePermission",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
if not DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] = ["rest_framework.renderers.JSONRenderer"]

SPECTACULAR_SETTINGS = {
    "TITLE": "IoTFleet API",
    "DESCRIPTION": (
        "Tenant-scoped REST API for devices, groups, device types and shadows. Authenticate with "
        "a token (`Authorization: Token <key>`) or a session. Objects of tenants you are not a "
        "member of answer 404."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    # No badge fetched from validator.swagger.io: the docs page loads only local files.
    "SWAGGER_UI_SETTINGS": {
        "deepLinking": True,
        "validatorUrl": None,
        "persistAuthorization": True,
    },
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Alerts and notification channels both have a `kind`, devices and rollouts a `status`:
    # name their enums apart.
    "ENUM_NAME_OVERRIDES": {
        "AlertKindEnum": "alerts.models.AlertKind",
        "ChannelKindEnum": "alerts.models.ChannelKind",
        "RolloutStatusEnum": "ota.models.RolloutStatus",
        "DeviceStatusEnum": "devices.models.DeviceStatus",
    },
}

# --- Internationalisation, static files -------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "media")))
# Locally whitenoise serves straight from the apps' static folders, so no collectstatic is needed.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Email ------------------------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="IoTFleet <iotfleet@localhost>")

# --- Devices ----------------------------------------------------------------------------------
# Largest device CSV an operator may import at once.
DEVICE_IMPORT_MAX_BYTES = env.int("DEVICE_IMPORT_MAX_BYTES", default=5 * 1024 * 1024)
DEVICE_IMPORT_MAX_ROWS = env.int("DEVICE_IMPORT_MAX_ROWS", default=20_000)

# Commands to devices (devices/services.py): a device that has not answered a command within this
# many seconds (unless the sender gives another timeout) has it marked timed out.
COMMAND_TIMEOUT_SECONDS = env.int("COMMAND_TIMEOUT_SECONDS", default=60)

# --- Telemetry ----------------------------------------------------------------------------------
# Where readings live: "auto" picks a TimescaleDB hypertable when the server has the extension and
# native range partitioning otherwise; "timescaledb" or "partitioned" force one (telemetry/storage).
TELEMETRY_STORAGE = env.str("TELEMETRY_STORAGE", default="auto")
TELEMETRY_RETENTION_DAYS = env.int("TELEMETRY_RETENTION_DAYS", default=90)
TELEMETRY_PARTITIONS_AHEAD_DAYS = env.int("TELEMETRY_PARTITIONS_AHEAD_DAYS", default=7)
# Edge validation (telemetry/validation.py): what a device may send.
TELEMETRY_MAX_PAYLOAD_BYTES = env.int("TELEMETRY_MAX_PAYLOAD_BYTES", default=16 * 1024)
TELEMETRY_MAX_READINGS_PER_MESSAGE = env.int("TELEMETRY_MAX_READINGS_PER_MESSAGE", default=100)
TELEMETRY_MAX_CLOCK_AHEAD = timedelta(seconds=env.int("TELEMETRY_MAX_CLOCK_AHEAD", default=300))
TELEMETRY_MAX_AGE = timedelta(days=env.int("TELEMETRY_MAX_AGE_DAYS", default=7))
# The MQTT ingest worker (telemetry/ingest.py): a batch goes to Celery when it holds this many
# messages or is this old, whichever comes first (held up to 1 s while batches wait in Celery).
# RECEIVE_MAXIMUM caps the unacknowledged QoS 1 messages the broker sends ahead (MQTT v5), i.e.
# what the worker may hold in memory; keep it a few batches, so messages flow during a handover.
# (docs/performance.md: the figures behind these.)
INGEST_BATCH_SIZE = env.int("INGEST_BATCH_SIZE", default=5000)
INGEST_FLUSH_SECONDS = env.float("INGEST_FLUSH_SECONDS", default=0.05)
INGEST_RECEIVE_MAXIMUM = env.int("INGEST_RECEIVE_MAXIMUM", default=20000)
# While batches wait in Celery, a due batch is held up to this long (or until full) to grow; a
# batch smaller than INGEST_MIN_BATCH waits that long too (a quiet fleet: ~1 task a second).
INGEST_HOLD_SECONDS = env.float("INGEST_HOLD_SECONDS", default=1.0)
INGEST_MIN_BATCH = env.int("INGEST_MIN_BATCH", default=100)
INGEST_STATS_SECONDS = env.float("INGEST_STATS_SECONDS", default=30.0)
# mqtt_ingest reads its socket, decodes the usual PUBLISH and acknowledges through paho-mqtt
# internals (telemetry/ingest.py: IngestClient), half the CPU a message of paho's own client. Only
# with the paho-mqtt release it was written for; off (or another release) = paho's own client.
INGEST_PAHO_FAST_PATH = env.bool("INGEST_PAHO_FAST_PATH", default=True)

# --- Rules and alerts -------------------------------------------------------------------------
# An alert that comes back within this long after resolving reopens (flapping) instead of
# opening anew; past ALERT_FLAP_QUIET reopenings it stops notifying until it stays resolved.
ALERT_FLAP_WINDOW = timedelta(seconds=env.int("ALERT_FLAP_WINDOW_SECONDS", default=600))
ALERT_FLAP_QUIET = env.int("ALERT_FLAP_QUIET", default=3)
# Back-testing a rule reads at most this many days of history.
RULES_BACKTEST_MAX_DAYS = env.int("RULES_BACKTEST_MAX_DAYS", default=30)
# Webhook deliveries: per-request timeout, and attempts before a delivery counts as failed.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)

# --- Predictive maintenance -------------------------------------------------------------------
# Scoring looks at this many days of hourly buckets; a crossing predicted within the horizon
# with at least this confidence (0-1) puts the device at risk and opens a maintenance alert.
MAINTENANCE_WINDOW_DAYS = env.int("MAINTENANCE_WINDOW_DAYS", default=7)
MAINTENANCE_HORIZON_DAYS = env.float("MAINTENANCE_HORIZON_DAYS", default=14.0)
MAINTENANCE_MIN_CONFIDENCE = env.float("MAINTENANCE_MIN_CONFIDENCE", default=0.5)

# --- OTA firmware ---------------------------------------------------------------------------
# Largest firmware image an upload may carry (docs/ota.md).
OTA_MAX_UPLOAD_BYTES = env.int("OTA_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
# Devices download firmware from signed URLs under this base (what they can reach), valid for
# OTA_DOWNLOAD_URL_SECONDS from the job.
OTA_DOWNLOAD_BASE_URL = env.str(
    "OTA_DOWNLOAD_BASE_URL", default=f"http://127.0.0.1:{env.int('PORT', default=8000)}"
).rstrip("/")
OTA_DOWNLOAD_URL_SECONDS = env.int("OTA_DOWNLOAD_URL_SECONDS", default=3600)
# The health gate (ota/health.py): updated devices are "clearly worse" on a measure when their
# share exceeds the not-yet-updated devices' by at least MIN_EFFECT and a one-sided Fisher exact
# test gives p < ALPHA / 3 (three measures). A reboot within REBOOT_GRACE after the update
# finished is the update's own.
OTA_HEALTH_MIN_EFFECT = env.float("OTA_HEALTH_MIN_EFFECT", default=0.10)
OTA_HEALTH_ALPHA = env.float("OTA_HEALTH_ALPHA", default=0.05)
OTA_REBOOT_GRACE = timedelta(seconds=env.int("OTA_REBOOT_GRACE_SECONDS", default=120))

# --- Production hardening ---------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
