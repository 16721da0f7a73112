"""Per-micrograph tasks and their orchestration."""
