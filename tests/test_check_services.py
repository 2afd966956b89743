"""`manage.py check_services`: a line per missing service, a created database, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from iotfleet.services_check import PostgresTarget, check_mqtt, check_postgres, check_redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on (bound and released, so nobody else holds it right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_check_services(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check_services", "--timeout", "3"],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "iotfleet.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def database_url(name: str) -> str:
    """The configured server and login, with another database name."""
    return urlsplit(settings.DATABASE_URL)._replace(path=f"/{name}").geturl()


def maintenance_connection() -> psycopg.Connection:
    target = PostgresTarget.parse(settings.DATABASE_URL)
    return target.connect("postgres", timeout=5)


@pytest.fixture
def missing_database() -> Iterator[str]:
    """A database name that does not exist yet, dropped again after the test."""
    name = f"iotfleet_check_{uuid.uuid4().hex[:12]}"
    yield name
    with maintenance_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with maintenance_connection() as conn:
        return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def test_all_services_reachable_exits_zero():
    # The existing maintenance database, so the check has no side effect here.
    result = run_check_services(DATABASE_URL=database_url("postgres"))

    assert result.returncode == 0, result.stderr
    for service in ("PostgreSQL ok", "Redis ok", "MQTT broker ok"):
        assert service in result.stdout


@pytest.mark.parametrize(
    ("variable", "url", "service", "how_to_start"),
    [
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:{port}/iotfleet",
            "PostgreSQL",
            "pg_ctlcluster",
        ),
        ("REDIS_URL", "redis://127.0.0.1:{port}/0", "Redis", "redis-server --daemonize yes"),
        ("MQTT_URL", "mqtt://127.0.0.1:{port}", "MQTT broker", "mosquitto -d"),
    ],
)
def test_an_unreachable_service_is_named_with_how_to_start_it(variable, url, service, how_to_start):
    port = free_port()

    result = run_check_services(**{variable: url.format(port=port)})

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{service} is not usable at 127.0.0.1:{port}" in output
    assert how_to_start in output
    assert "docker compose up -d" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "is not usable" in line]) == 1


def test_all_three_unreachable_are_all_reported_at_once():
    result = run_check_services(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/iotfleet",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        MQTT_URL=f"mqtt://127.0.0.1:{free_port()}",
    )

    assert result.returncode != 0
    assert "Not usable: PostgreSQL, Redis, MQTT broker" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_server_that_does_not_speak_mqtt_fails_the_mqtt_check():
    # Redis accepts the TCP connection but never sends a CONNACK: only a real CONNECT notices.
    redis = urlsplit(settings.REDIS_URL)
    address = f"{redis.hostname}:{redis.port or 6379}"

    result = run_check_services(MQTT_URL=f"mqtt://{address}")

    assert result.returncode != 0
    assert f"MQTT broker is not usable at {address}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_database_is_created(missing_database):
    assert not database_exists(missing_database)

    result = run_check_services(DATABASE_URL=database_url(missing_database))

    assert result.returncode == 0, result.stderr
    assert f"created the database '{missing_database}'" in result.stdout
    assert database_exists(missing_database)


def test_a_missing_database_is_only_reported_when_creating_is_off(missing_database):
    result = check_postgres(database_url(missing_database), create_missing=False)

    assert not result.ok
    assert "does not exist" in result.detail
    assert not database_exists(missing_database)


def test_a_wrong_login_is_reported_as_such_not_as_a_stopped_server():
    url = database_url("postgres").replace("://postgres@", "://no_such_role_iotfleet@", 1)

    result = check_postgres(url)

    assert not result.ok
    assert "DATABASE_URL" in result.hint
    assert "pg_ctlcluster" not in result.hint


def test_the_checks_answer_within_their_timeout_and_never_raise():
    port = free_port()

    results = [
        check_postgres(f"postgres://postgres@127.0.0.1:{port}/x", timeout=1),
        check_redis(f"redis://127.0.0.1:{port}/0", timeout=1),
        check_mqtt(f"mqtt://127.0.0.1:{port}", timeout=1),
        check_mqtt("http://127.0.0.1:1883", timeout=1),
    ]

    assert [result.ok for result in results] == [False, False, False, False]
    assert "mqtt://" in results[3].hint


def test_the_configured_services_pass_the_checks():
    assert check_redis(settings.REDIS_URL).ok
    assert check_mqtt(settings.MQTT_URL).ok
