"""Celery tasks of the devices app: publishing to devices (commands, desired shadows) and the
command deadline. Thin: each calls a service of devices/services.py."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from devices import services
from devices.publishing import PublishError

log = logging.getLogger(__name__)

# Publishing retries: 1, 2, 4, 8, 16 s; a command's default timeout (60 s) covers them.
COMMAND_RETRIES = 5
DESIRED_RETRIES = 12
RETRY_MAX_SECONDS = 60


def _backoff(retries: int) -> int:
    return min(RETRY_MAX_SECONDS, 2**retries)


@shared_task(bind=True, name="devices.publish_command", acks_late=True, max_retries=COMMAND_RETRIES)
def publish_command_task(self, command_id: int) -> bool:
    """Publish a queued command; if the broker stays unreachable, the command fails with why."""
    try:
        return services.publish_command(command_id)
    except PublishError as error:
        if self.request.retries >= COMMAND_RETRIES:
            log.error("command %s could not be published: %s", command_id, error)
            services.fail_command(command_id, f"Could not be sent to the device: {error}")
            return False
        raise self.retry(exc=error, countdown=_backoff(self.request.retries)) from error


@shared_task(bind=True, name="devices.publish_desired", acks_late=True, max_retries=DESIRED_RETRIES)
def publish_desired_task(self, device_ids: list[int]) -> int:
    """Publish the devices' desired state (retained), retrying while the broker is away."""
    try:
        return services.publish_desired(device_ids)
    except PublishError as error:
        log.warning("desired state of %d devices not published yet: %s", len(device_ids), error)
        raise self.retry(exc=error, countdown=_backoff(self.request.retries)) from error


@shared_task(name="devices.expire_commands", acks_late=True)
def expire_commands_task() -> int:
    """Commands not answered by their deadline time out (beat, every 15 s)."""
    return services.expire_commands(timezone.now())
