"""`HOST:PORT` addresses, parsed by one set of rules for listeners and bootstrap servers.

A leaf module: the CLI checks options with it and the broker binds with it, so an
address the command line accepts is one the broker can use, and the other way round.
"""

from __future__ import annotations

#: the largest TCP port number
MAX_PORT = 65_535


def parse_host_port(value: str, *, port_zero: bool = False) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); `[::1]:9092` for IPv6, returned without the brackets.

    Port 0 ("any free port") is accepted only where `port_zero` allows it: a listener,
    never an address to connect to. Raises ValueError saying what is wrong and what is
    allowed.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{value!r} is not HOST:PORT")
    lowest = 0 if port_zero else 1
    if not lowest <= int(port) <= MAX_PORT:
        raise ValueError(f"{value!r}: port {int(port)} is outside {lowest}..{MAX_PORT}")
    return host, int(port)
