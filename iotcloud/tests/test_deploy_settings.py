"""Production settings: `check --deploy` is clean with production env vars; missing essentials fail at start."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

BASE_DIR = Path(__file__).resolve().parents[2]
# Variables the settings read for security; the tests start from none of them (the defaults).
SECURITY_VARS = (
    "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "USE_X_FORWARDED_PROTO", "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE", "LOG_FORMAT", "DEVICE_RATE_LIMIT", "DEVICE_RATE_BURST", "METRICS_TOKEN", "METRICS_PUBLIC",
)  # fmt: skip


def production_env(tmp_path, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_VARS}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'deploy-check.sqlite3'}",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="iot.example.com",
        USE_X_FORWARDED_PROTO="true",  # TLS terminated by the proxy in front
        METRICS_TOKEN=secrets.token_urlsafe(32),
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def manage(env, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_production_env(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNING" not in output and "?:" not in output, output


def test_check_deploy_reports_a_weakened_setting(tmp_path):
    """The check is live: turning HTTPS redirection off in production is reported."""
    env = production_env(tmp_path, SECURE_SSL_REDIRECT="false")
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W008" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("ALLOWED_HOSTS", "ALLOWED_HOSTS must be set when DEBUG is off"),
        ("SECRET_KEY", "SECRET_KEY must be set when DEBUG is off"),
        ("METRICS_TOKEN", "METRICS_TOKEN must be set when DEBUG is off"),
    ],
)
def test_start_fails_clearly_without_essentials(tmp_path, missing, message):
    result = manage(production_env(tmp_path, **{missing: None}), "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr


def test_metrics_public_is_an_explicit_opt_out_of_the_metrics_token(tmp_path):
    code = "from django.conf import settings as s; print([s.METRICS_TOKEN, s.METRICS_PUBLIC, s.METRICS_DEBUG_OPEN])"
    env = production_env(tmp_path, METRICS_TOKEN=None, METRICS_PUBLIC="true")
    result = manage(env, "shell", "--verbosity", "0", "--command", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == repr(["", True, False])
    # make run: DEBUG without a token starts, and keeps /metrics and /readyz open as before
    env = production_env(tmp_path, METRICS_TOKEN=None, DEBUG="true")
    result = manage(env, "shell", "--verbosity", "0", "--command", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == repr(["", False, True])


def test_start_fails_clearly_on_a_bad_rate_limit(tmp_path):
    result = manage(production_env(tmp_path, DEVICE_RATE_LIMIT="fast"), "check")
    assert result.returncode != 0
    assert "DEVICE_RATE_LIMIT must look like" in result.stderr, result.stderr


def test_production_defaults(tmp_path):
    """What DEBUG=false turns on by itself, read back from the settings module of a fresh process."""
    code = (
        "from django.conf import settings as s; print([s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER, s.LOG_FORMAT])"
    )
    result = manage(production_env(tmp_path), "shell", "--verbosity", "0", "--command", code)
    assert result.returncode == 0, result.stderr
    expected = [True, 31536000, True, True, ("HTTP_X_FORWARDED_PROTO", "https"), "json"]
    assert result.stdout.strip().splitlines()[-1] == repr(expected)


@override_settings(SECURE_SSL_REDIRECT=True)
def test_ssl_redirect_spares_probes(client, db):
    """Plain HTTP is redirected to HTTPS, except probes (container health checks call them over HTTP)."""
    assert client.get("/healthz").status_code == 200
    redirect = client.get("/device/v1/shadow")
    assert redirect.status_code == 301 and redirect["Location"].startswith("https://")
    assert client.get("/device/v1/shadow", headers={"X-Forwarded-Proto": "https"}).status_code == 301  # not trusted
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert client.get("/device/v1/shadow", headers={"X-Forwarded-Proto": "https"}).status_code == 401
