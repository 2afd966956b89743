"""Which readings layout the platform picks, and that this server got the partitioned one."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from telemetry import storage, timescale


@pytest.mark.parametrize(
    ("requested", "available", "layout"),
    [
        ("auto", True, storage.TIMESCALEDB),
        ("auto", False, storage.PARTITIONED),
        ("partitioned", True, storage.PARTITIONED),
        ("timescaledb", True, storage.TIMESCALEDB),
    ],
)
def test_the_layout_follows_the_setting_and_the_server(requested, available, layout):
    assert storage.choose_layout(requested, available) == layout


def test_asking_for_timescaledb_on_a_server_without_it_says_what_to_do():
    with pytest.raises(ImproperlyConfigured, match="shared_preload_libraries"):
        storage.choose_layout("timescaledb", False)


def test_an_unknown_layout_setting_is_refused():
    with pytest.raises(ImproperlyConfigured, match="use one of auto, partitioned, timescaledb"):
        storage.choose_layout("cassandra", False)


def test_this_server_has_no_timescaledb_so_readings_are_range_partitioned(db):
    with connection.cursor() as cursor:
        assert timescale.available(cursor) is False
        assert timescale.is_hypertable(cursor, storage.TABLE) is False
    assert storage.current_layout() == storage.PARTITIONED
