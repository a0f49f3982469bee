"""The Kafka API handlers, one module per family; importing this registers them all."""

from logstore.server.kafka.handlers import (  # noqa: F401  (each registers its handlers)
    admin,
    api_versions,
    fetch,
    groups,
    list_offsets,
    metadata,
    produce,
    sasl,
)
