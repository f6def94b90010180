"""The fault suite: seeded, bounded fault injection over real example processes and real logs.

Two or three ``python -m examples`` processes (Starlette and aiohttp) share one log on Redis,
PostgreSQL or NATS; writers write through random nodes, watchers of all four transports (SSE,
JSON lines, long poll, WebSocket) resume on random nodes from the last rv they saw, and each
schedule injects a fault: SIGKILL, SIGTERM, SIGSTOP/SIGCONT with compaction during the pause, Redis
killed and restarted empty or from its AOF, stalled and slow readers, drops inside the initial
events. The oracle (``_oracle``) checks every watcher's events and every list against the
writes the servers acknowledged.

``python -m tests.faults --engine redis --schedules 1000 --seed 1`` runs thousands of
schedules; ``test_faults.py`` runs a few fixed seeds per engine.
"""
