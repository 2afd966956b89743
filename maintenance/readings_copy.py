"""Readings in PostgreSQL's binary COPY format, built by numpy: how seed_demo backfills a week
of history and bench/maintenance.py loads 10 million rows in seconds. No Django here, so the
bench can use it before Django is set up."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

# One row of telemetry_reading (time, device_id, metric_id, value, flagged) in binary COPY format.
COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("device_len", ">i4"),
        ("device", ">i8"),
        ("metric_len", ">i4"),
        ("metric", ">i4"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("flagged_len", ">i4"),
        ("flagged", "u1"),
    ]
)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
COPY_READINGS = (
    "COPY telemetry_reading (time, device_id, metric_id, value, flagged) FROM STDIN (FORMAT BINARY)"
)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()


def copy_rows(times: np.ndarray, device_id: int, metric_id: int, values: np.ndarray) -> bytes:
    """Readings (epoch-second times) as binary COPY rows of telemetry_reading."""
    rows = np.empty(len(times), dtype=COPY_ROW)
    rows["fields"] = 5
    rows["time_len"], rows["device_len"], rows["value_len"] = 8, 8, 8
    rows["metric_len"], rows["flagged_len"] = 4, 1
    rows["time"] = np.round((times - PG_EPOCH) * 1_000_000).astype(np.int64)
    rows["device"] = device_id
    rows["metric"] = metric_id
    rows["value"] = values
    rows["flagged"] = 0
    return rows.tobytes()
