"""Fixtures of telemetry tests: metrics of Acme's device, and the real ingest pipeline
(tests/telemetry/pipeline.py)."""

import pytest

from devices.models import Metric
from tests.telemetry.pipeline import pipeline, pipeline_postgres, publisher  # noqa: F401


@pytest.fixture
def temperature(acme_device) -> Metric:
    return acme_device.device_type.metrics.get(name="temperature")


@pytest.fixture
def humidity(acme_device) -> Metric:
    return Metric.objects.create(device_type=acme_device.device_type, name="humidity", unit="%")
