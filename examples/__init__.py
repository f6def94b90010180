"""The orders example app (protocol.md §6): ``python -m examples FRAMEWORK --port 8000``."""
