"""Alert rules, the safe expression language and their evaluation on ingest (see DESIGN.md)."""
