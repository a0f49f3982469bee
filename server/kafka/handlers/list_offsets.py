"""Kafka handlers: list_offsets (being built)."""
