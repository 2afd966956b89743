from tests.telemetry.pipeline import pipeline, pipeline_postgres, publisher  # noqa: F401
