"""Helpers for tests and demos (tiny models, loopback servers)."""
