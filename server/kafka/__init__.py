"""The Kafka wire protocol listener: unmodified Kafka clients over LogStore's core.

Layout (h11's shape: protocol logic is pure code over bytes, the socket loop a thin shell):

- `frames`      size-prefixed frames out of a byte stream (pure)
- `apis`        the APIs and versions served, and their request/response classes
- `connection`  one connection's state machine: bytes in, requests out, responses to bytes
- `error_codes` LogStore's exceptions as Kafka error codes
- `context`     what a handler sees: the broker's core objects and the connection's session
- `router`      API key -> handler
- `handlers/`   one module per family of APIs, each a function (context, request) -> response
- `listener`    the TCP (and TLS) shell: a thread per connection, requests served in order

Requests on one connection are answered in the order they arrived, one at a time, as
Kafka's own broker does (it mutes a connection while a request is in flight): a long-poll
fetch therefore holds only its own connection.
"""
