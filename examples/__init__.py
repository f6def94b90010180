"""The orders example app (DESIGN 6): ``python -m examples starlette|fastapi --port 8000``."""
