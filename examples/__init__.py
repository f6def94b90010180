"""The orders example app (docs/protocol.md §6): ``python -m examples starlette|fastapi --port 8000``."""
