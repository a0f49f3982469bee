"""Kafka handlers: sasl (being built)."""
