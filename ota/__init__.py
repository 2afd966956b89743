"""Firmware releases, staged rollouts and per-device update status (see DESIGN.md)."""
