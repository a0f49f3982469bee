"""Kafka handlers: produce (being built)."""
