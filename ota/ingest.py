"""What the telemetry ingest batch hands to OTA (telemetry/services.py calls `take()` for each
accepted entry and `record()` once, in a savepoint, after the batch is stored).

OTA progress reports (`fleet/{key}/ota/status`) and the firmware versions devices state in their
status (`{"state": "online", "firmware_version": "2.1.0"}`) or reported shadow
(`{"firmware_version": "2.1.0"}`) go to `ota.services.record_device_reports`.
"""

from __future__ import annotations

from telemetry.validation import OTA_STATUS, REPORTED, STATUS, Entry

from .protocol import VERSION_MAX


class FirmwareReports:
    def __init__(self) -> None:
        self.reports: list = []
        self.versions: dict[int, str] = {}

    def __bool__(self) -> bool:
        return bool(self.reports or self.versions)

    def take(self, device_id: int, entry: Entry) -> None:
        kind = entry[0]
        if kind == OTA_STATUS:
            from .services import Report

            self.reports.append(Report(device_id, entry[2], entry[3]))
        elif kind == STATUS and len(entry) > 4:
            self.versions[device_id] = entry[4]
        elif kind == REPORTED:
            version = entry[3].get("firmware_version")
            if isinstance(version, str) and 0 < len(version.strip()) <= VERSION_MAX:
                self.versions[device_id] = version.strip()

    def record(self) -> None:
        from .services import record_device_reports

        record_device_reports(self.reports, self.versions)
