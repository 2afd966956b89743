"""Tenancy cases of the channels API viewsets (see tests/api/tenancy_cases.py)."""

from __future__ import annotations

from tests.api.tenancy_cases import ApiCase

CASES: list[ApiCase] = []
