"""The consumer (this commit only moves consumer.py into the package; the split
into an I/O-free core and thin threads follows)."""

from logstore.client.consumer.consumer import *  # noqa: F403
from logstore.client.consumer.consumer import _fetchable, _PartitionState  # noqa: F401
