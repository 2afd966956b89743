"""Is each backing service (PostgreSQL, Redis, MQTT) there, and if not, how does one start it?

Used by `manage.py check_services`, which `make run` calls before anything else, so a newcomer
gets one readable line per missing service instead of a traceback from deep inside a process.
Every check returns a `ServiceCheck`; none raises.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import environ
import paho.mqtt.client as mqtt
import psycopg
import redis
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_TIMEOUT = 3.0
MAINTENANCE_DATABASE = "postgres"
# Keys django-environ may put in a database's OPTIONS that are Django's, not libpq's.
_DJANGO_ONLY_DB_OPTIONS = {"pool", "server_side_binding", "isolation_level", "assume_role"}


@dataclass(frozen=True)
class ServiceCheck:
    """The outcome of checking one service: `ok`, or what went wrong and what to do about it."""

    service: str
    address: str
    ok: bool
    detail: str = ""
    hint: str = ""

    def line(self) -> str:
        """One line for the terminal."""
        if self.ok:
            done = f" ({self.detail})" if self.detail else ""
            return f"{self.service} ok at {self.address}{done}"
        detail = self.detail.rstrip(".")
        return f"{self.service} is not usable at {self.address}: {detail}. {self.hint}"


# --- How to start each service ------------------------------------------------------------------


def postgres_cluster_version(config_dir: Path = Path("/etc/postgresql")) -> str:
    """The newest Debian PostgreSQL cluster version installed here (15 when none is found)."""
    try:
        versions = [p.name for p in config_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    except OSError:
        versions = []
    return max(versions, key=int) if versions else "15"


def postgres_start_hint() -> str:
    version = postgres_cluster_version()
    return (
        f"Start it with `pg_ctlcluster {version} main start` "
        "(or `sudo systemctl start postgresql`), or in Docker with `docker compose up -d db`, "
        "or point DATABASE_URL at a running server."
    )


REDIS_START_HINT = (
    "Start it with `redis-server --daemonize yes` (or `sudo systemctl start redis-server`), "
    "or in Docker with `docker compose up -d redis`, or point {variable} at a running server."
)
MQTT_START_HINT = (
    "Start it with `mosquitto -d` (or `sudo systemctl start mosquitto`), or in Docker with "
    "`docker compose up -d mosquitto`, or point MQTT_URL at a running broker."
)


def port_is_open(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _first_line(error: BaseException) -> str:
    """The gist of an error: its first line, from libpq's `FATAL:` on when there is one."""
    text = str(error).strip() or type(error).__name__
    text = " ".join(text.splitlines()[0].split())
    _, fatal, reason = text.partition("FATAL: ")
    return f"{fatal}{reason}" if fatal else text


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    options: Mapping[str, str]

    @classmethod
    def parse(cls, url: str) -> PostgresTarget:
        config = environ.Env.db_url_config(url)
        options = {
            key: str(value)
            for key, value in (config.get("OPTIONS") or {}).items()
            if key not in _DJANGO_ONLY_DB_OPTIONS and isinstance(value, str | int)
        }
        return cls(
            host=config.get("HOST") or "",
            port=int(config.get("PORT") or 5432),
            user=config.get("USER") or "",
            password=config.get("PASSWORD") or "",
            dbname=config.get("NAME") or "",
            options=options,
        )

    @property
    def address(self) -> str:
        return f"{self.host or 'local socket'}:{self.port}/{self.dbname}"

    def connect(self, dbname: str, timeout: float) -> psycopg.Connection[Any]:
        params: dict[str, Any] = {
            "dbname": dbname,
            "port": self.port,
            "connect_timeout": max(1, round(timeout)),
            **self.options,
        }
        for key, value in (("host", self.host), ("user", self.user), ("password", self.password)):
            if value:
                params[key] = value
        return psycopg.connect(autocommit=True, **params)

    def server_is_listening(self, timeout: float) -> bool:
        if self.host.startswith("/"):
            return Path(self.host, f".s.PGSQL.{self.port}").exists()
        return port_is_open(self.host or "localhost", self.port, timeout)


def check_postgres(
    url: str, timeout: float = DEFAULT_TIMEOUT, create_missing: bool = True
) -> ServiceCheck:
    """Connect to the database; if only the database is missing, create it (when allowed)."""
    service = "PostgreSQL"
    try:
        target = PostgresTarget.parse(url)
    except Exception as exc:  # a malformed URL is reported like any other problem
        return ServiceCheck(
            service,
            "DATABASE_URL",
            ok=False,
            detail=f"cannot read the URL ({_first_line(exc)})",
            hint="Use the form postgres://USER:PASSWORD@HOST:5432/NAME.",
        )
    try:
        with target.connect(target.dbname, timeout):
            return ServiceCheck(service, target.address, ok=True)
    except psycopg.Error as exc:
        error = exc
    except Exception as exc:
        return ServiceCheck(service, target.address, False, _first_line(exc), postgres_start_hint())

    if not target.server_is_listening(timeout):
        return ServiceCheck(
            service, target.address, False, "nothing answers there", postgres_start_hint()
        )
    if target.dbname == MAINTENANCE_DATABASE:
        return _postgres_refused(target, error)
    return _create_database_if_missing(target, error, timeout, create_missing)


def _postgres_refused(target: PostgresTarget, error: BaseException) -> ServiceCheck:
    return ServiceCheck(
        "PostgreSQL",
        target.address,
        ok=False,
        detail=f"the server refused the connection ({_first_line(error)})",
        hint="Check the user, password and database name in DATABASE_URL.",
    )


def _create_database_if_missing(
    target: PostgresTarget, error: BaseException, timeout: float, create_missing: bool
) -> ServiceCheck:
    """The server answers but the database connection failed: create the database if that is
    what is missing (asking the maintenance database, whatever language the server speaks)."""
    try:
        with target.connect(MAINTENANCE_DATABASE, timeout) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [target.dbname]
            ).fetchone()
            if exists:
                return _postgres_refused(target, error)
            if not create_missing:
                return ServiceCheck(
                    "PostgreSQL",
                    target.address,
                    ok=False,
                    detail=f"the database {target.dbname!r} does not exist",
                    hint=f"Create it with `createdb {target.dbname}`.",
                )
            # Created by someone else meanwhile is just as good.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
    except psycopg.errors.InsufficientPrivilege as exc:
        return ServiceCheck(
            "PostgreSQL",
            target.address,
            ok=False,
            detail=f"the database {target.dbname!r} does not exist and {target.user or 'this user'}"
            f" may not create it ({_first_line(exc)})",
            hint=f"Create it as a user who may: `createdb -U postgres {target.dbname}`.",
        )
    except psycopg.Error:
        # The maintenance database refuses us too: the login itself is the problem.
        return _postgres_refused(target, error)
    return ServiceCheck(
        "PostgreSQL",
        target.address,
        ok=True,
        detail=f"created the database {target.dbname!r}, which did not exist",
    )


# --- Redis --------------------------------------------------------------------------------------


def redis_address(url: str) -> str:
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{database}"


def check_redis(
    url: str, timeout: float = DEFAULT_TIMEOUT, variable: str = "REDIS_URL"
) -> ServiceCheck:
    """PING the Redis server at `url` (named by the setting `variable` in messages)."""
    service = "Redis" if variable == "REDIS_URL" else f"Redis ({variable})"
    try:
        address = redis_address(url)
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # No retries: the question is whether it answers now, and it should answer fast.
            retry=Retry(NoBackoff(), 0),
        )
    except Exception as exc:
        return ServiceCheck(
            service,
            variable,
            ok=False,
            detail=f"cannot read the URL ({_first_line(exc)})",
            hint="Use the form redis://HOST:6379/0.",
        )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        return ServiceCheck(
            service,
            address,
            ok=False,
            detail=f"the server refused the login ({_first_line(exc)})",
            hint=f"Check the password in {variable} (redis://:PASSWORD@HOST:6379/0).",
        )
    except (redis.RedisError, OSError) as exc:
        return ServiceCheck(
            service, address, False, _first_line(exc), REDIS_START_HINT.format(variable=variable)
        )
    finally:
        client.close()
    return ServiceCheck(service, address, ok=True)


# --- MQTT ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str
    password: str

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp", "mqtts", "ssl"}:
            raise ValueError(f"unknown scheme {parts.scheme!r}, use mqtt:// or mqtts://")
        tls = parts.scheme in {"mqtts", "ssl"}
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def check_mqtt(url: str, timeout: float = DEFAULT_TIMEOUT) -> ServiceCheck:
    """Open a TCP connection, then send a real MQTT CONNECT and wait for the broker's CONNACK."""
    service = "MQTT broker"
    try:
        target = MqttTarget.parse(url)
    except ValueError as exc:
        return ServiceCheck(
            service,
            "MQTT_URL",
            ok=False,
            detail=f"cannot read the URL ({exc})",
            hint="Use the form mqtt://HOST:1883 (or mqtts://USER:PASSWORD@HOST:8883).",
        )
    if not port_is_open(target.host, target.port, timeout):
        return ServiceCheck(
            service, target.address, False, "nothing answers there", MQTT_START_HINT
        )
    try:
        answer = _mqtt_connack(target, timeout)
    except Exception as exc:
        answer = _first_line(exc)
    if answer is None:
        return ServiceCheck(service, target.address, ok=True)
    if answer.startswith("refused"):
        hint = "Check the user and password in MQTT_URL (mqtt://USER:PASSWORD@HOST:1883)."
    else:
        hint = f"Is it an MQTT broker? {MQTT_START_HINT}"
    return ServiceCheck(service, target.address, ok=False, detail=answer, hint=hint)


def _mqtt_connack(target: MqttTarget, timeout: float) -> str | None:
    """None when the broker accepted the CONNECT, else what happened instead."""
    outcome: dict[str, Any] = {}

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        outcome["reason"] = reason_code

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"iotfleet-check-{os.getpid()}-{secrets.token_hex(4)}",
        clean_session=True,
    )
    client.connect_timeout = timeout
    client.on_connect = on_connect
    if target.username:
        client.username_pw_set(target.username, target.password or None)
    if target.tls:
        client.tls_set()
    try:
        client.connect(target.host, target.port, keepalive=max(5, round(timeout * 2)))
        deadline = time.monotonic() + timeout
        while "reason" not in outcome and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                return "the connection closed before the broker answered the MQTT CONNECT"
        if "reason" not in outcome:
            return f"no answer to an MQTT CONNECT within {timeout:g} s"
        reason = outcome["reason"]
        if reason.is_failure:
            return f"refused the MQTT CONNECT ({reason})"
        return None
    finally:
        client.disconnect()
        client.loop(timeout=0.05)
        # Without a network loop thread the socket closes only on the next loop; make sure.
        sock = client.socket()
        if sock is not None:
            sock.close()


# --- All together ---------------------------------------------------------------------------------


def check_services(
    database_url: str,
    redis_urls: Mapping[str, str],
    mqtt_url: str,
    timeout: float = DEFAULT_TIMEOUT,
    create_database: bool = True,
) -> list[ServiceCheck]:
    """Check PostgreSQL, every distinct Redis URL (keyed by the setting's name), and MQTT."""
    results = [check_postgres(database_url, timeout, create_missing=create_database)]
    seen: set[str] = set()
    for variable, url in redis_urls.items():
        if url in seen or not url.startswith(("redis://", "rediss://", "unix://")):
            continue
        seen.add(url)
        results.append(check_redis(url, timeout, variable=variable))
    results.append(check_mqtt(mqtt_url, timeout))
    return results
