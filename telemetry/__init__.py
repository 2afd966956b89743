"""MQTT ingest worker, batch ingest task, time-series storage and queries (see DESIGN.md)."""
