"""The `emotune` CLI and launch helpers."""
