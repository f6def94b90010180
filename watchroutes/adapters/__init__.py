"""Framework adapters; each imports its own framework and nothing else optional."""
