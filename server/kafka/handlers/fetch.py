"""Kafka handlers: fetch (being built)."""
