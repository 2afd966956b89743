"""Rule evaluation on ingest (owned by the engine helper; contract below)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def evaluate_batch(
    readings: Sequence[tuple[int, int, int, float]], devices: Mapping[int, tuple[int, int]]
) -> None:
    """Evaluate the enabled rules on the readings a batch has just stored.

    `readings`: (device_id, metric_id, ts_ms, value) of the rows that were new (a redelivered
    batch passes only what it really stored, so nothing is evaluated twice);
    `devices`: device_id -> (tenant_id, device_type_id) for every device in `readings`.
    Runs inside the batch's transaction (telemetry/services.py calls it in a savepoint).
    """
    raise NotImplementedError
