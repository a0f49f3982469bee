"""LogStore: a Kafka-style partitioned, replayable log store."""

__version__ = "0.1.0"
