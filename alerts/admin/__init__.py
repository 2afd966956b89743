"""Alerts in the admin: alerts and their history (`alerts.py`), notification channels and
deliveries (`channels.py`)."""

from . import alerts, channels  # noqa: F401  (registers the admins)
