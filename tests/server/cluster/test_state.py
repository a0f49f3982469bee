"""The records kept in etcd: what is written reads back the same, and records written
before a field existed still read."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from logstore.server.cluster.state import BrokerRegistration


@given(
    broker_id=st.integers(0, 2**31 - 1),
    host=st.sampled_from(["127.0.0.1", "b1.example", "::1"]),
    port=st.integers(1, 65_535),
    replication_port=st.integers(0, 65_535),
)
def test_a_registration_reads_back_as_written(
    broker_id: int, host: str, port: int, replication_port: int
) -> None:
    written = BrokerRegistration(broker_id, host, port, replication_port=replication_port)
    read = BrokerRegistration.from_json(written.to_json(), epoch=7)
    assert read == BrokerRegistration(broker_id, host, port, 7, replication_port)
    if replication_port:
        assert read.replication_address == f"{host}:{replication_port}"
    else:
        assert read.replication_address == ""


def test_a_registration_without_a_replication_port_means_no_stream() -> None:
    """A broker with no stream (secured, or switched off) writes no port, and followers
    fetch from it over gRPC."""
    record = json.dumps({"broker_id": 3, "host": "b3.example", "port": 9092})
    read = BrokerRegistration.from_json(record)
    assert (read.address, read.replication_address) == ("b3.example:9092", "")
    assert "replication_port" not in BrokerRegistration(3, "b3.example", 9092).to_json()
