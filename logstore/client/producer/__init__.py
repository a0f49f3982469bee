"""The producer (this commit only moves producer.py into the package; the split
into an I/O-free core and thin threads follows)."""

from logstore.client.producer.facade import *  # noqa: F403
from logstore.client.producer.facade import _fast_records, _frame_batch  # noqa: F401
