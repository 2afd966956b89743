"""OTA sections other apps' pages include: `{% load ota %}`, then `{% rollouts_in_progress %}`
(the fleet overview) or `{% device_firmware device %}` (a device's page)."""

from __future__ import annotations

from typing import Any

from django import template

from ota import pages

register = template.Library()


@register.inclusion_tag("ota/partials/in_progress.html", takes_context=True)
def rollouts_in_progress(context: Any) -> dict:
    return pages.rollout_list(context["request"].user, active=True)


@register.inclusion_tag("ota/partials/device_firmware.html")
def device_firmware(device: Any) -> dict:
    return pages.device_firmware(device)
