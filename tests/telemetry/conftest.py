"""Fixtures of the real ingest pipeline (tests/telemetry/pipeline.py)."""

from tests.telemetry.pipeline import pipeline, pipeline_postgres, publisher  # noqa: F401
