"""The OTA protocol between the platform and a device, with no database in it (docs/ota.md).

Job, platform → device on `fleet/{key}/ota` (QoS 1):

    {"job": 812, "rollout": 5, "version": "2.1.0", "url": "https://.../ota/download/<token>/",
     "size": 1048576, "sha256": "<64 hex>", "signature": "<base64>" | null,
     "key": "<signing key fingerprint>" | null}

Progress, device → platform on `fleet/{key}/ota/status` (QoS 1):

    {"job": 812, "state": "downloading", "progress": 40}
    {"job": 812, "state": "installing"}
    {"job": 812, "state": "succeeded", "version": "2.1.0"}
    {"job": 812, "state": "failed", "reason": "sha256 mismatch"}

`parse_status_report()` is the edge validation of the latter (telemetry/validation.py calls it).
"""

from __future__ import annotations

import json
import math
from typing import Any

REPORTED_STATES = ("downloading", "installing", "succeeded", "failed")
VERSION_MAX = 64
REASON_MAX = 500


class BadReport(ValueError):
    """The report cannot be used; the text says what the device should send."""


def job_payload(
    *,
    job: int,
    rollout: int,
    version: str,
    url: str,
    size: int,
    sha256: str,
    signature: str | None,
    key: str | None,
) -> str:
    return json.dumps(
        {
            "job": job,
            "rollout": rollout,
            "version": version,
            "url": url,
            "size": size,
            "sha256": sha256,
            "signature": signature or None,
            "key": key or None,
        },
        separators=(",", ":"),
    )


def parse_version(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > VERSION_MAX:
        raise BadReport(f'"{field}" must be a version string of at most {VERSION_MAX} characters')
    return value.strip()


def parse_status_report(body: Any) -> dict[str, Any]:
    """A device's OTA progress report, checked: {"job": int|None, "state", "progress": int|None,
    "version": str|None, "reason": str}."""
    if not isinstance(body, dict):
        raise BadReport('an OTA status is a JSON object like {"job": 12, "state": "installing"}')
    state = body.get("state")
    if state not in REPORTED_STATES:
        raise BadReport(f'"state" must be one of {", ".join(REPORTED_STATES)}')
    job = body.get("job")
    if job is not None and (isinstance(job, bool) or not isinstance(job, int) or job < 1):
        raise BadReport('"job" must be the positive integer id of the job being answered')
    progress = body.get("progress")
    if progress is not None:
        if (
            isinstance(progress, bool)
            or not isinstance(progress, int | float)
            or not math.isfinite(progress)
            or not 0 <= progress <= 100
        ):
            raise BadReport('"progress" must be a number from 0 to 100')
        progress = int(progress)
    version = body.get("version")
    if version is not None:
        version = parse_version(version, "version")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadReport('"reason" must be text')
    if state == "failed" and not reason.strip():
        reason = "the device reported a failure without a reason"
    return {
        "job": job,
        "state": state,
        "progress": progress,
        "version": version,
        "reason": reason.replace("\x00", "")[:REASON_MAX],
    }
