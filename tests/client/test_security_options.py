"""The security keyword arguments, declared once (`SecurityOptions`) for every client."""

from __future__ import annotations

import pytest

from logstore import Admin, Consumer, Producer
from logstore.client._connection import SecurityOptions

CLIENTS = [Admin, Producer, Consumer]


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.__name__)
def test_a_misspelt_option_is_refused_by_the_clients_name(client: type) -> None:
    """**security takes every unknown keyword: a typo must still read as Python's own
    error for the constructor, naming the client and the word."""
    for word in ("ssl_ca_file", "lingr_ms"):
        expected = f"^{client.__name__}\\(\\) got an unexpected keyword argument '{word}'$"
        with pytest.raises(TypeError, match=expected):
            client("127.0.0.1:1", **{word: "x"})


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.__name__)
def test_security_options_reach_the_connection(client: type) -> None:
    """A client certificate without a CA is refused by the shared validation, whichever
    client it was given to: the keyword arguments are not dropped on the way."""
    with pytest.raises(ValueError, match="needs TLS"):
        client("127.0.0.1:1", ssl_certfile="c.pem", ssl_keyfile="k.pem")


def test_every_client_documents_the_options_in_one_place() -> None:
    assert set(SecurityOptions.__annotations__) == {
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "token",
    }
    for client in CLIENTS:
        assert "SecurityOptions" in (client.__doc__ or ""), client.__name__
