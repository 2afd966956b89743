"""`manage.py check_services`: do PostgreSQL, Redis and MQTT answer? If not, how to start them.

Creates the configured database when the server is up but the database is not there yet, so a
fresh machine needs nothing beyond the three services running.
"""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from iotfleet.services_check import DEFAULT_TIMEOUT, check_services


class Command(BaseCommand):
    help = (
        "Check that PostgreSQL (DATABASE_URL), Redis (REDIS_URL) and the MQTT broker (MQTT_URL) "
        "answer; create the database if it is missing. Exits non-zero if any service is unusable."
    )
    # The point is to run before anything else works; system checks add nothing here.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"Seconds to wait for each service (default {DEFAULT_TIMEOUT:g}).",
        )
        parser.add_argument(
            "--no-create-database",
            action="store_true",
            help="Report a missing database instead of creating it.",
        )

    def handle(self, *args: Any, timeout: float, no_create_database: bool, **options: Any) -> None:
        results = check_services(
            database_url=settings.DATABASE_URL,
            redis_urls={
                "REDIS_URL": settings.REDIS_URL,
                "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                "CHANNELS_REDIS_URL": settings.CHANNELS_REDIS_URL,
            },
            mqtt_url=settings.MQTT_URL,
            timeout=timeout,
            create_database=not no_create_database,
        )
        for result in results:
            if result.ok:
                self.stdout.write(self.style.SUCCESS(result.line()))
            else:
                self.stderr.write(result.line())
        failed = [result.service for result in results if not result.ok]
        if failed:
            raise CommandError(
                f"Not usable: {', '.join(failed)}. Start them as shown above, then run this again."
            )
