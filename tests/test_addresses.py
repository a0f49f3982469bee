"""`HOST:PORT` parsing: the one set of rules the CLI checks options by and the broker binds by."""

from __future__ import annotations

import pytest

from logstore.addresses import MAX_PORT, parse_host_port


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:9092", ("::1", 9092)),
        ("0.0.0.0:65535", ("0.0.0.0", MAX_PORT)),
    ],
)
def test_valid_addresses_split_into_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value) == expected
    assert parse_host_port(value, port_zero=True) == expected


def test_port_zero_is_only_for_listeners() -> None:
    assert parse_host_port("[::1]:0", port_zero=True) == ("::1", 0)
    assert parse_host_port("localhost:0", port_zero=True) == ("localhost", 0)
    with pytest.raises(ValueError, match=r"port 0 is outside 1\.\.65535"):
        parse_host_port("localhost:0")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9100", "is not HOST:PORT"),
        (":9100", "is not HOST:PORT"),
        ("[]:9100", "is not HOST:PORT"),
        ("host:", "is not HOST:PORT"),
        ("host:port", "is not HOST:PORT"),
        ("host:-1", "is not HOST:PORT"),
        ("host:²", "is not HOST:PORT"),  # a digit to str.isdigit(), not to int()
        ("host:70000", r"port 70000 is outside 0\.\.65535"),
        ("host:65536", r"port 65536 is outside 0\.\.65535"),
    ],
)
def test_malformed_addresses_are_refused_saying_why(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        parse_host_port(value, port_zero=True)
    assert repr(value) in str(refused.value)
