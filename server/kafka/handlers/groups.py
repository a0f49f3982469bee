"""Kafka handlers: groups (being built)."""
