"""The real processes start and work: daphne serves the admin, a Celery worker answers a ping.

Each test starts the process as `make run` does (through the virtualenv's python) and always stops
it again, whatever happens.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from iotfleet.celery import app as celery_app
from tests.servers import (
    REPO,
    Launch,
    celery_worker,
    database_url,
    free_port,
    output_of,
    start_daphne,
    wait_for_http,
    wait_for_log,
)

START_TIMEOUT = 60.0
HTTP = urllib.request.build_opener()


@pytest.fixture
def fast_passwords():
    """Keep Django's real password hashers: daphne, a separate process, checks the login."""


@pytest.fixture
def web(launch: Launch, transactional_db) -> str:
    """A daphne server on the test database; committed rows are what it sees."""
    return start_daphne(launch)


def log_in(base: str, username: str, password: str) -> tuple[str, str, http.cookiejar.CookieJar]:
    """Log in through the admin's login form as a browser does: final URL, page, cookies."""
    cookies = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    with browser.open(f"{base}/admin/login/?next=/admin/", timeout=10) as response:
        assert response.status == 200
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the login page has no CSRF token"
    form = urllib.parse.urlencode(
        {
            "csrfmiddlewaretoken": token.group(1),
            "username": username,
            "password": password,
            "next": "/admin/",
        }
    ).encode()
    with browser.open(f"{base}/admin/login/?next=/admin/", data=form, timeout=10) as response:
        return response.url, response.read().decode(), cookies


def test_daphne_serves_the_admin_login_page(web):
    with HTTP.open(f"{web}/admin/login/", timeout=10) as response:
        assert response.status == 200
        assert "IoTFleet" in response.read().decode()


def test_a_seeded_user_logs_in_to_the_admin_through_daphne(web, monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    call_command("seed_demo", devices=3, stdout=StringIO())

    url, page, cookies = log_in(web, "demo", "iotfleet-demo")

    assert urllib.parse.urlsplit(url).path == "/admin/"
    assert "sessionid" in {cookie.name for cookie in cookies}
    assert "Fleet administration" in page


def test_a_wrong_password_stays_on_the_login_page(web):
    call_command("seed_demo", devices=0, stdout=StringIO())

    url, page, cookies = log_in(web, "demo", "not-the-password")

    assert urllib.parse.urlsplit(url).path == "/admin/login/"
    assert "sessionid" not in {cookie.name for cookie in cookies}
    assert "Please enter the correct username and password" in page


def test_a_celery_worker_answers_a_ping_and_stops_on_sigterm(launch):
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    # Its own queue, so this worker never takes tasks meant for a developer's running worker.
    worker = launch(*celery_worker(name), "-Q", name)

    deadline = time.monotonic() + START_TIMEOUT
    replies: list[dict] = []
    while not replies and time.monotonic() < deadline:
        assert worker.poll() is None, f"the worker exited early:\n{output_of(worker)}"
        replies = [
            reply
            for reply in celery_app.control.ping(timeout=1.0)
            if next(iter(reply)).startswith(f"{name}@")
        ]
    assert replies, f"the worker did not answer a ping:\n{output_of(worker)}"
    assert next(iter(replies[0].values())) == {"ok": "pong"}

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0, output_of(worker)
    assert "warm shutdown" in output_of(worker).lower()


def test_make_run_brings_up_a_live_fleet_with_the_printed_login(tmp_path, mosquitto):
    """`make run` as a newcomer types it: its own fresh database, every process up, the printed
    URL and login working, simulated devices coming online with readings; Ctrl-C stops
    everything it started. (A private broker, so no developer's ingest session is touched.)"""
    database = f"iotfleet_makerun_{uuid.uuid4().hex[:8]}"
    port = free_port()
    log = tmp_path / "make-run.log"
    env = {k: v for k, v in os.environ.items() if k not in {"DEMO_PASSWORD", "MAKEFLAGS"}}
    env |= {
        "DATABASE_URL": database_url(database),
        "PORT": str(port),
        "DEVICES": "20",
        "MQTT_URL": mosquitto.url,
    }
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so Ctrl-C can be sent to all of it
        )
    make.log = log  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/admin/login/", make)
        wait_for_log(make, "celery@", "ready.")  # the worker connected to the broker
        wait_for_log(make, "beat: Starting")
        printed = log.read_text(errors="replace")
        assert f"{base}/admin/" in printed
        assert f"{base}/api/v1/docs/" in printed
        assert "demo / iotfleet-demo" in printed
        assert f"created the database '{database}'" in printed
        # The printed login works: the seeded demo user gets an API token.
        body = urllib.parse.urlencode({"username": "demo", "password": "iotfleet-demo"}).encode()
        with HTTP.open(f"{base}/api/v1/auth/token/", data=body, timeout=10) as response:
            assert response.status == 200
            token = json.loads(response.read())["token"]
        # The simulator's devices come online through MQTT, ingest, Celery and the database.
        wait_for_log(make, "mqtt_ingest started")
        online = wait_for_api(f"{base}/api/v1/devices/?status=online", token, make)
        key = online["results"][0]["key"]
        latest = wait_for_api(f"{base}/api/v1/devices/{key}/latest/", token, make, "latest")
        assert latest["latest"][0]["value"] is not None
    finally:
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(timeout=5)
        drop_database(database)
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.killpg(make.pid, 0)  # nothing of the group is left running


def wait_for_api(url: str, token: str, process: subprocess.Popen, field: str = "results") -> dict:
    """GET `url` with the token until its `field` is non-empty."""
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})  # noqa: S310
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with HTTP.open(request, timeout=10) as response:
            body = json.loads(response.read())
        if body.get(field):
            return body
        time.sleep(0.5)
    pytest.fail(f"{url} still empty after {START_TIMEOUT:g} s:\n{output_of(process)}")


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(database_url("postgres"), autocommit=True) as maintenance:
        maintenance.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_procfile_runs_web_worker_beat_ingest_and_the_simulator():
    processes = dict(
        line.split(":", 1)
        for line in (REPO / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    )

    assert list(processes) == ["web", "worker", "beat", "ingest", "simulator"]
    assert "manage.py mqtt_ingest" in processes["ingest"]
    assert "manage.py simulate" in processes["simulator"]
    assert "daphne -b 127.0.0.1 -p $PORT iotfleet.asgi:application" in processes["web"]
    assert "celery -A iotfleet worker" in processes["worker"]
    assert "django_celery_beat.schedulers:DatabaseScheduler" in processes["beat"]
