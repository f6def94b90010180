"""Event-log backends. The in-memory log is built into the core (``watchroutes._core.log``);
shared engines (Redis, NATS JetStream, PostgreSQL) come as ``watchroutes.backends.<engine>``."""
