"""Give the platform's MQTT user what it needs on a broker with dynamic security (docs/mqtt.md).

`mosquitto_ctrl dynsec init FILE USER PASSWORD` makes USER the plugin's admin: it may manage
accounts and subscribe to everything, but publish nothing. This adds the role that lets the
ingest workers share their subscriptions and the platform publish to devices. Safe to run again:
it changes only what is missing (docker-compose runs it in the `migrate` service).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.broker_accounts import (
    PLATFORM_ACLS,
    PLATFORM_ROLE,
    BrokerAccountError,
    grant_platform_access,
    platform_user,
    target,
)


class Command(BaseCommand):
    help = (
        "Give MQTT_URL's user the platform role on Mosquitto's dynamic security plugin (ingest "
        "shared subscriptions, publishing to fleet/#). Does nothing unless MQTT_DYNSEC_ENABLED."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MQTT_DYNSEC_ENABLED:
            self.stdout.write(
                "MQTT_DYNSEC_ENABLED is off: the broker is not managed by the platform, "
                "nothing to set up."
            )
            return
        try:
            user, address = platform_user(), target().address
            changes = grant_platform_access()
        except BrokerAccountError as error:
            raise CommandError(str(error)) from error
        for change in changes:
            self.stdout.write(f"Mosquitto at {address}: {change}.")
        rights = ", ".join(f"{acl['acltype']} {acl['topic']}" for acl in PLATFORM_ACLS)
        self.stdout.write(
            self.style.SUCCESS(
                f"Mosquitto at {address}: {user!r} holds the role {PLATFORM_ROLE} ({rights})"
                + ("." if changes else "; nothing to change.")
            )
        )
