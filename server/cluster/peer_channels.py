"""How one broker opens gRPC channels to the other brokers of its cluster.

Every inter-broker call (replica fetches, leader epochs, ListOffsets sent to a partition's
leader) goes through `PeerChannels.open`, so the transport and credentials brokers use
with each other are decided in this one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

#: gRPC channel options, as (name, value) pairs
ChannelOptions = Sequence[tuple[str, Any]]


class PeerChannels:
    """Opens channels to peer brokers: plaintext, with no credentials.

    Invariant: a channel from `open` reaches the peer at `address` with the same
    transport and identity for every caller in this broker.
    """

    def open(self, address: str, options: ChannelOptions = ()) -> grpc.Channel:
        """A new channel to the broker listening at `address` ("host:port")."""
        return grpc.insecure_channel(address, options=list(options))
