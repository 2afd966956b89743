"""The benchmarks' own databases, on the machine's PostgreSQL (BENCH_POSTGRES_URL, without a
database name; default the local server): each script drops and recreates its database at the
start of a run, so runs are repeatable."""

from __future__ import annotations

import os

SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")


def database_url(name: str) -> str:
    return f"{SERVER_URL}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_database(name: str) -> str:
    """Drop the database `name` if it exists, create it empty, and return its URL."""
    import psycopg

    drop_database(name)
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return database_url(name)
