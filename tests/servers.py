"""Private servers for tests: a Mosquitto and a Redis of the test's own, on free ports.

Tests that kill, restart or configure a broker (credentials, ACLs, persistence) must not touch the
machine's shared services, and two test runs must not take each other's messages or tasks. Each
server here runs from a config generated in the test's tmp_path and is stopped when the test ends.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
SBIN = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")

Launch = Callable[..., subprocess.Popen]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    assert found, f"{name} is not installed (Debian: apt-get install {name}); .ci/run installs it"
    return found


def database_url(name: str | None = None) -> str:
    """The URL of the database this test runs against (pytest-django's `test_...` database), or
    of another database `name` on the same server."""
    from django.db import connection

    db = connection.settings_dict
    login = urllib.parse.quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        login += ":" + urllib.parse.quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    return f"postgres://{login}@{host}:{db['PORT'] or 5432}/{name or db['NAME']}"


def output_of(process: subprocess.Popen) -> str:
    log: Path | None = getattr(process, "log", None)
    return log.read_text(errors="replace")[-6000:] if log and log.exists() else ""


def wait_for_log(
    process: subprocess.Popen, *fragments: str, timeout: float = START_TIMEOUT, what: str = ""
) -> None:
    """Wait until one line of the process's output holds every fragment (the whole log is read:
    a line printed early is found however much follows it)."""
    deadline = time.monotonic() + timeout
    what = what or "the process"
    while time.monotonic() < deadline:
        log: Path | None = getattr(process, "log", None)
        text = log.read_text(errors="replace") if log and log.exists() else ""
        if any(all(f in line for f in fragments) for line in text.splitlines()):
            return
        assert process.poll() is None, f"{what} exited early:\n{output_of(process)}"
        time.sleep(0.2)
    pytest.fail(f"{what}: no line with {fragments} within {timeout:g} s:\n{output_of(process)}")


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited early:\n{output_of(process)}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(
        f"{what} did not listen on {port} within {START_TIMEOUT:g} s:\n{output_of(process)}"
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def celery_worker(name: str, concurrency: int = 1, level: str = "info") -> list[str]:
    """Arguments (after the python executable) of a Celery worker named `name`@host that skips
    the cluster chatter a test does not need."""
    return [
        "-m", "celery", "-A", "iotfleet", "worker", "-l", level,
        "--concurrency", str(concurrency), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    process.log = log  # type: ignore[attr-defined]
    return process


@dataclass
class Server(abc.ABC):
    """A server process of the test's own; `restart()` keeps its port, config and data."""

    directory: Path
    port: int
    process: subprocess.Popen | None = field(default=None, init=False)
    name = "server"

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The command line that starts it."""

    def start(self) -> None:
        self.process = _spawn(self.argv(), self.directory / f"{self.name}.log")
        wait_for_port(self.port, self.process, self.name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process:
            stop(self.process, sig)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def log(self) -> str:
        path = self.directory / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Mosquitto(Server):
    admin: tuple[str, str] | None = None  # dynamic security admin (username, password)
    name = "mosquitto"

    @property
    def config(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def url(self) -> str:
        if self.admin:
            user, password = (urllib.parse.quote(part, safe="") for part in self.admin)
            return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"
        return f"mqtt://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [executable("mosquitto"), "-c", str(self.config)]


def start_mosquitto(
    directory: Path, *, dynsec: bool = False, extra: str = "", port: int | None = None
) -> Mosquitto:
    """Start a Mosquitto configured as IoTFleet expects in production (deploy/mosquitto/): a
    persistent store, unlimited queues for the ingest workers' sessions, and with `dynsec` the
    dynamic security plugin with an admin client (anonymous clients refused)."""
    directory.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(directory=directory, port=port or free_port())
    lines = [
        f"listener {broker.port} 127.0.0.1",
        # As root, mosquitto would switch to its own user, which cannot write to pytest's tmp.
        *(["user root"] if os.geteuid() == 0 else []),
        "persistence true",
        f"persistence_location {directory}/",
        "autosave_interval 1",
        "max_queued_messages 0",
        "max_inflight_messages 0",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if dynsec:
        broker.admin = ("iotfleet-admin", "admin-" + os.urandom(6).hex())
        dynsec_file = directory / "dynamic-security.json"
        subprocess.run(
            [executable("mosquitto_ctrl"), "dynsec", "init", str(dynsec_file), *broker.admin],
            check=True,
            capture_output=True,
        )
        lines += [
            "allow_anonymous false",
            f"plugin {dynsec_plugin()}",
            f"plugin_opt_config_file {dynsec_file}",
        ]
    else:
        lines.append("allow_anonymous true")
    broker.config.write_text("\n".join(lines) + "\n" + extra)
    broker.start()
    return broker


def dynsec_plugin() -> str:
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    ):
        if Path(candidate).exists():
            return candidate
    pytest.fail("mosquitto's dynamic security plugin is missing (Debian package mosquitto)")


@dataclass
class Redis(Server):
    name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [executable("redis-server"), str(self.directory / "redis.conf")]


def start_redis(directory: Path, *, persistent: bool = True) -> Redis:
    """A redis-server of the test's own; `persistent` turns on the append-only file with an
    fsync per write, the configuration under which a queued Celery task survives a restart."""
    directory.mkdir(parents=True, exist_ok=True)
    server = Redis(directory=directory, port=free_port())
    lines = [
        "bind 127.0.0.1",
        f"port {server.port}",
        f"dir {directory}",
        'save ""',
        f"appendonly {'yes' if persistent else 'no'}",
        "appendfsync always",
    ]
    (directory / "redis.conf").write_text("\n".join(lines) + "\n")
    server.start()
    return server


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def secured_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker with the dynamic security plugin: only provisioned clients get in."""
    broker = start_mosquitto(tmp_path / "mosquitto-dynsec", dynsec=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    """Wait until `url` answers (any HTTP status) while `process` runs."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited early:\n{output_of(process)}"
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a local test server)
                return
        except urllib.error.HTTPError:
            return  # it answers, whatever it says
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout:g} s:\n{output_of(process)}")


def process_env(
    redis: Redis | None = None, mosquitto: Mosquitto | None = None, **extra: str
) -> dict[str, str]:
    """Settings for a process a test launches: the test database without persistent connections
    (so it can be emptied and dropped after), and the test's own Redis (Celery, Channels) and
    broker when given; `extra` adds or overrides."""
    env = {"DATABASE_URL": database_url(), "DATABASE_CONN_MAX_AGE": "0"}
    if redis:
        names = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CHANNELS_REDIS_URL")
        env.update(dict.fromkeys(names, redis.url))
    if mosquitto:
        env["MQTT_URL"] = mosquitto.url
    return {**env, **extra}


def start_daphne(launch: Launch, **env: str) -> str:
    """A daphne process serving the project (HTTP and websockets) on the test database; returns
    its base URL. Committed rows are what it sees; `env` adds settings (CHANNELS_REDIS_URL...)."""
    port = free_port()
    process = launch(
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "iotfleet.asgi:application",
        **process_env(**env),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/admin/login/", process)
    return base


@pytest.fixture
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Launch]:
    """Start Python processes in the repository (`launch("manage.py", "mqtt_ingest", X="y")`);
    all of them are stopped when the test ends, before the database is emptied and the test's
    own broker and Redis stop."""
    # What the processes talk to is set up first, so torn down after them: pytest-django's
    # TRUNCATE deadlocked with a worker still writing, and mqtt_ingest stopping with its Redis
    # gone spent its grace period retrying the handover, then was killed (20 s a test).
    for name in ("transactional_db", "mosquitto", "secured_mosquitto", "redis_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
    started: list[subprocess.Popen] = []

    def start(*args: str, **env: str) -> subprocess.Popen:
        log = tmp_path / f"process-{len(started)}.log"
        process = _spawn(
            [sys.executable, *args],
            log,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "iotfleet.settings", **env},
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            stop(process)


PG_BIN = Path("/usr/lib/postgresql")


def pg_binary(name: str) -> str:
    versions = sorted(PG_BIN.glob("*/bin/" + name), key=lambda p: int(p.parts[-3]))
    assert versions, f"PostgreSQL's {name} is missing (Debian: apt-get install postgresql)"
    return str(versions[-1])


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Postgres:
    """A PostgreSQL cluster of the test's own, which a test may crash and restart."""

    directory: Path
    port: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres([pg_binary("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.directory / "postgres.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """`mode="immediate"` is a crash: no checkpoint, recovery from the WAL on the next start."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("-m", mode, "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()


def start_postgres(directory: Path) -> Postgres:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        for parent in directory.parents:  # pytest's tmp dirs are 0700: let postgres through
            if str(parent).startswith(tempfile.gettempdir() + os.sep):
                parent.chmod(parent.stat().st_mode | 0o711)
    server = Postgres(directory=directory, port=free_port())
    subprocess.run(
        as_postgres(
            [
                pg_binary("initdb"),
                "-D",
                str(server.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    server.start()
    return server
