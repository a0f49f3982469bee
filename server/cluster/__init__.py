"""Cluster mode: brokers that replicate partitions, with metadata and leadership in etcd.

Pure modules (no gRPC, no etcd, no threads; tested with an injected clock):
- `state`: the records kept in etcd (broker registrations, topics, partition states).
- `placement`: which brokers hold each new partition's replicas.
- `election`: the controller's decisions: leaders, ISR after a broker dies, reassignment.
- `isr`: the leader's view of its followers: high watermark, ISR shrink and expand.

Adapters:
- `metadata_store`: those records in etcd, written only with compare-and-swap.
- `node`, `replica_manager`, `replica_fetcher`: a broker's part in the cluster.
- `peer_channels`: the one place inter-broker channels (and their credentials) are made.
- `leader_offsets`: partition offset ranges asked of each partition's leader.
- `replication_wire`, `replication_stream`: followers' fetches over a plain TCP stream.
- `throttle`: the reassignment throttle, a token bucket of bytes/s on followers' fetches.
- `settings`: what a broker needs to take part in a cluster.
- `service`: the cluster RPCs (Metadata, ReplicaFetch, reassignment, ...), a mixin of the
  broker's gRPC servicer.
"""
