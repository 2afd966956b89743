"""The telemetry REST API: readings and latest values under /api/v1/devices/ and /api/v1/groups/."""
