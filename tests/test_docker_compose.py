"""docker-compose.yml is valid and describes the platform's services as the design has them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
APP_PROCESSES = ("web", "worker", "beat", "ingest")


def compose_command() -> list[str]:
    """`docker-compose` (Debian's 1.29) or the `docker compose` plugin, whichever is here."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(
        "Neither docker-compose nor `docker compose` is installed: apt-get install docker-compose"
    )


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_command(), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The services as compose resolves them (anchors merged, variables substituted)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_compose_file_is_valid():
    result = compose("config", "-q")

    assert result.returncode == 0, result.stderr


def test_compose_names_every_service(services):
    assert {"db", "redis", "mosquitto", *APP_PROCESSES} <= set(services)
    assert services["db"]["image"].startswith("timescale/timescaledb:")
    assert services["db"]["image"].endswith("-pg16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")


def test_redis_keeps_its_queue_across_a_crash(services):
    command = services["redis"]["command"]
    command = command.split() if isinstance(command, str) else command

    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(
        volume.endswith(":/data") or ":/data:" in volume for volume in _volumes(services["redis"])
    )


def test_mosquitto_persists_and_listens_on_1883(services):
    config = (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()

    assert "persistence true" in config
    assert "listener 1883" in config
    assert any("/mosquitto/config/mosquitto.conf" in v for v in _volumes(services["mosquitto"]))
    assert any(":/mosquitto/data" in v for v in _volumes(services["mosquitto"]))


@pytest.mark.parametrize("process", APP_PROCESSES)
def test_app_processes_reach_the_backing_services_once_healthy(services, process):
    service = services[process]
    environment = service["environment"]

    assert "@db:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://redis:6379")
    assert environment["MQTT_URL"].endswith("@mosquitto:1883")  # the platform's broker login
    assert environment["MQTT_DYNSEC_ENABLED"] == "true"
    for backing in ("db", "redis", "mosquitto"):
        assert service["depends_on"][backing]["condition"] == "service_healthy"
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_backing_service_has_a_healthcheck(services):
    for name in ("db", "redis", "mosquitto"):
        assert services[name]["healthcheck"]["test"], name


def test_ingest_runs_under_a_stable_client_id_with_time_to_flush(services):
    command = services["ingest"]["command"]
    assert command[:3] == ["python", "manage.py", "mqtt_ingest"]
    assert command[command.index("--client-id") + 1] == "iotfleet-ingest-1"
    assert "profiles" not in services["ingest"]


def test_redis_keeps_queued_batches_on_disk_at_every_write(services):
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"


def test_the_processes_share_one_image(services):
    images = {services[name].get("image") for name in (*APP_PROCESSES, "migrate")}

    assert len(images) == 1
    assert all(services[name]["build"] for name in APP_PROCESSES)


def test_the_image_runs_daphne_as_a_non_root_user():
    dockerfile = (REPO / "Dockerfile").read_text()

    assert "FROM python:3.11-slim" in dockerfile
    assert "\nUSER iotfleet\n" in dockerfile
    assert "collectstatic" in dockerfile
    assert (
        'CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "iotfleet.asgi:application"]' in dockerfile
    )


def _volumes(service: dict[str, Any]) -> list[str]:
    """Volumes as 'source:target[:mode]' strings, whichever syntax compose printed them in."""
    volumes = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            volumes.append(volume)
        else:
            volumes.append(f"{volume.get('source', '')}:{volume['target']}")
    return volumes
