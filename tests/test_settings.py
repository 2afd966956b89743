"""Settings: production is `check --deploy` clean, refuses to start without its secrets; the
project's checks and migrations are clean."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCTION_VARIABLES = ("IOTFLEET_ENV", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG")


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in a fresh process, with the production variables only as given here."""
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION_VARIABLES}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**base, "DJANGO_SETTINGS_MODULE": "iotfleet.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production(**env: str) -> dict[str, str]:
    return {
        "IOTFLEET_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "fleet.example.com",
        **env,
    }


def test_production_settings_pass_the_deploy_check_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without(missing):
    env = production()
    del env[missing]

    result = manage("check", **env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr.splitlines()[-1]


def test_an_unknown_environment_name_is_refused():
    result = manage("check", IOTFLEET_ENV="prod")

    assert result.returncode != 0
    assert "IOTFLEET_ENV must be 'development' or 'production'" in result.stderr


def test_development_settings_need_no_variables():
    result = manage("check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_models_and_migrations_agree():
    result = manage("makemigrations", "--check", "--dry-run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
