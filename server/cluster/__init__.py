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
"""
