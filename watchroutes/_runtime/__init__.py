"""The anyio runtime: the Hub, the watch driver and shutdown."""
