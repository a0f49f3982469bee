"""Kafka handlers: admin (being built)."""
