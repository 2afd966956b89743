"""`python manage.py mqtt_ingest`: the MQTT subscriber that batches telemetry into Celery."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from telemetry.ingest import IngestWorker, default_client_id


class Command(BaseCommand):
    help = (
        "Subscribe to devices' telemetry, status and reported state (shared subscription, QoS 1, "
        "persistent session), validate, and hand batches to Celery. Stops cleanly on SIGTERM."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--client-id",
            default=default_client_id(),
            help="Stable MQTT client id: the broker keeps this worker's session under it, so run "
            "each worker with its own, the same after every restart (default: %(default)s).",
        )
        parser.add_argument(
            "--batch-size", type=int, help="Messages per batch (INGEST_BATCH_SIZE)."
        )
        parser.add_argument(
            "--flush-seconds", type=float, help="Longest a message waits for its batch."
        )
        parser.add_argument(
            "--stats-seconds", type=float, help="How often to log the throughput line."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker = IngestWorker(
            client_id=options["client_id"],
            batch_size=options["batch_size"],
            flush_seconds=options["flush_seconds"],
            stats_seconds=options["stats_seconds"],
        )
        signal.signal(signal.SIGTERM, worker.stop)
        signal.signal(signal.SIGINT, worker.stop)
        worker.run()
