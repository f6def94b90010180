"""Conformance suite: protocol.md §3 and §6 against real servers of every example app."""
