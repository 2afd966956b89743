"""Alerts, notifications, escalation and offline detection (see DESIGN.md)."""
