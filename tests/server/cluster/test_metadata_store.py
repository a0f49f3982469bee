"""ClusterMetadataStore against a real etcd: registrations and epochs, leases, the
controller election, the compare-and-swap fences, topics, producer id blocks, the watch,
and what callers see while etcd is down or silent."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator

import etcd3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.addresses import parse_host_port
from logstore.errors import (
    BrokerNotRegisteredError,
    ClusterMetadataUnavailableError,
    InvalidPartitionsError,
    TopicExistsError,
    UnknownTopicOrPartitionError,
)
from logstore.server.cluster.metadata_store import (
    DEFAULT_MAX_TXN_OPS,
    BrokerIdInUseError,
    ClusterMetadataStore,
    NotControllerError,
)
from logstore.server.cluster.state import BrokerRegistration, PartitionState, TopicRecord
from tests.cluster.etcd import EtcdServer, free_port
from tests.helpers import wait_until

PREFIX = "/logstore/test/"
#: the shortest lease the tests use (s); etcd's minimum under tests/cluster/etcd.py is 1 s
SHORT_TTL_S = 2
#: RPC timeout of the stores under test (s)
TIMEOUT_S = 2.0

StoreFactory = Callable[..., ClusterMetadataStore]


@pytest.fixture
def make_store(etcd_server: EtcdServer) -> Iterator[StoreFactory]:
    """Stores on the test's etcd; all closed at the end of the test."""
    stores: list[ClusterMetadataStore] = []

    def make(
        prefix: str = PREFIX, endpoints: list[str] | None = None, **kwargs: float
    ) -> ClusterMetadataStore:
        kwargs.setdefault("timeout_s", TIMEOUT_S)
        store = ClusterMetadataStore(endpoints or [etcd_server.endpoint], prefix, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def raw(etcd_server: EtcdServer) -> Iterator[etcd3.MultiEndpointEtcd3Client]:
    """A plain etcd client, for what an operator (or etcd itself) does behind the store."""
    host, port = parse_host_port(etcd_server.endpoint)
    client = etcd3.client(host, port, timeout=TIMEOUT_S)
    yield client
    client.close()


def reg(broker_id: int) -> BrokerRegistration:
    return BrokerRegistration(broker_id, "127.0.0.1", 9000 + broker_id)


def states(count: int, replicas: tuple[int, ...] = (1, 2)) -> dict[int, PartitionState]:
    return {p: PartitionState(replicas, replicas[0], 0, replicas) for p in range(count)}


def topic(name: str, partitions: int) -> TopicRecord:
    return TopicRecord(name, f"id-{name}", partitions)


def lease_of(raw: etcd3.MultiEndpointEtcd3Client, key: str) -> int:
    _, meta = raw.get(key)
    assert meta is not None, f"{key} is not in etcd"
    return int(meta.lease_id)


# -- cluster id ------------------------------------------------------------------------


def test_cluster_id_is_created_once_and_shared(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    cluster_id = first.cluster_id()
    assert len(cluster_id) == 22  # a UUID in URL-safe base64, as Kafka prints cluster ids
    assert second.cluster_id() == cluster_id == first.cluster_id()
    assert make_store(prefix="/logstore/other/").cluster_id() != cluster_id


# -- registration and leases ------------------------------------------------------------


def test_registration_epochs_grow(make_store: StoreFactory) -> None:
    store, observer = make_store(), make_store()
    first = store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    assert store.broker_epoch == first
    assert observer.live_brokers() == {1: BrokerRegistration(1, "127.0.0.1", 9001, first)}

    # Registering again ends the first registration and gives a larger epoch.
    second = store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    assert second > first
    assert observer.live_brokers()[1].epoch == second

    # So does a new process (store) after a clean shutdown.
    store.close()
    assert observer.live_brokers() == {}
    third = make_store().register_broker(reg(1), ttl_s=SHORT_TTL_S)
    assert third > second
    assert observer.live_brokers()[1].epoch == third


def test_a_live_broker_id_cannot_be_registered_twice(make_store: StoreFactory) -> None:
    holder, intruder, observer = make_store(), make_store(), make_store()
    epoch = holder.register_broker(reg(1), ttl_s=30)
    with pytest.raises(BrokerIdInUseError) as caught:
        intruder.register_broker(BrokerRegistration(1, "10.0.0.9", 7777), ttl_s=30)
    assert str(caught.value) == (
        "broker id 1 is already registered by a live broker at 127.0.0.1:9001"
    )
    assert intruder.broker_epoch == -1 and not intruder.lease_valid()
    assert observer.live_brokers() == {1: BrokerRegistration(1, "127.0.0.1", 9001, epoch)}

    # Other ids are free; and once the holder shuts down cleanly, the id is free at once.
    assert intruder.register_broker(reg(2), ttl_s=30) > epoch
    holder.close()
    assert make_store().register_broker(reg(1), ttl_s=30) > epoch


def test_keepalive_keeps_a_short_lease_alive(make_store: StoreFactory) -> None:
    store, observer = make_store(), make_store()
    epoch = store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    # Three TTLs: without refreshes etcd would have deleted the key long before.
    deadline = time.monotonic() + 3 * SHORT_TTL_S
    while time.monotonic() < deadline:
        assert observer.live_brokers()[1].epoch == epoch
        assert store.lease_valid()
        time.sleep(0.2)
    renewed = store.last_renewed_monotonic
    assert renewed is not None and time.monotonic() - renewed < SHORT_TTL_S


def test_lease_expires_when_the_keepalive_stops(make_store: StoreFactory) -> None:
    store, observer = make_store(), make_store()
    store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    store.campaign_controller(1)
    store.close(revoke=False)  # a crash: no refreshes, no revocation
    assert 1 in observer.live_brokers()
    wait_until(lambda: 1 not in observer.live_brokers(), "etcd to expire broker 1's lease")
    assert observer.controller() is None  # the controller key was on the same lease


def test_lease_valid_is_measured_from_the_last_refresh_sent(make_store: StoreFactory) -> None:
    store = make_store()
    before = time.monotonic()
    store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    renewed = store.last_renewed_monotonic
    assert renewed is not None and renewed >= before
    assert store.lease_valid(now=renewed + SHORT_TTL_S - 0.001)
    assert not store.lease_valid(now=renewed + SHORT_TTL_S)


def test_a_paused_etcd_fences_the_broker_before_etcd_expires_the_lease(
    etcd_server: EtcdServer, make_store: StoreFactory
) -> None:
    store = make_store()
    store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    etcd_server.pause()
    try:
        # No refresh can succeed, and etcd (stopped) expires nothing: the broker must
        # still give itself up within its TTL.
        wait_until(lambda: not store.lease_valid(), "lease_valid() to turn False")
    finally:
        etcd_server.resume()


@pytest.mark.parametrize("how", ["key deleted", "lease revoked"])
def test_session_loss_is_reported_once_and_re_registration_is_a_new_epoch(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client, how: str
) -> None:
    store = make_store()
    lost: list[str] = []
    store.on_session_lost = lambda: lost.append(threading.current_thread().name)
    epoch = store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    key = f"{PREFIX}brokers/1"
    if how == "key deleted":
        raw.delete(key)
    else:
        raw.revoke_lease(lease_of(raw, key))
    wait_until(lambda: lost, "on_session_lost")
    assert not store.lease_valid() and store.broker_epoch == -1
    with pytest.raises(BrokerNotRegisteredError):
        store.campaign_controller(1)
    time.sleep(SHORT_TTL_S)  # the keepalive has stopped: no second report
    assert len(lost) == 1

    again = store.register_broker(reg(1), ttl_s=SHORT_TTL_S)
    assert again > epoch and store.lease_valid()


# -- controller ------------------------------------------------------------------------


def test_exactly_one_concurrent_campaigner_wins(make_store: StoreFactory) -> None:
    brokers = {b: make_store() for b in range(1, 7)}
    for broker_id, store in brokers.items():
        store.register_broker(reg(broker_id), ttl_s=30)
    barrier = threading.Barrier(len(brokers))
    results: dict[int, int | None] = {}

    def campaign(broker_id: int) -> None:
        barrier.wait(timeout=10)
        results[broker_id] = brokers[broker_id].campaign_controller(broker_id)

    threads = [threading.Thread(target=campaign, args=(b,)) for b in brokers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == len(brokers)
    winners = {b: epoch for b, epoch in results.items() if epoch is not None}
    assert len(winners) == 1
    [(winner, epoch)] = winners.items()
    assert brokers[1].controller() == (winner, epoch)
    assert epoch > max(store.broker_epoch for store in brokers.values())

    # Campaigning again does not unseat it, even by itself.
    assert brokers[winner].campaign_controller(winner) is None
    assert brokers[1].controller() == (winner, epoch)


def test_a_new_controller_wins_after_the_old_lease_ends_and_the_old_one_is_fenced(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    old, new = make_store(), make_store()
    old.register_broker(reg(1), ttl_s=30)
    new.register_broker(reg(2), ttl_s=30)
    old.create_topic(topic("t", 1), states(1))
    old_epoch = old.campaign_controller(1)
    assert old_epoch is not None
    assert new.campaign_controller(2) is None

    # The old controller's lease ends (expiry, as if it hung) while it still believes.
    raw.revoke_lease(lease_of(raw, f"{PREFIX}brokers/1"))
    new_epoch = new.campaign_controller(2)
    assert new_epoch is not None and new_epoch > old_epoch
    assert new.controller() == (2, new_epoch)

    current = new.partition_state("t", 0)
    assert current is not None
    moved = PartitionState((1, 2), 2, 1, (2,))
    assert (
        old.update_partition_as_controller("t", 0, moved, current.mod_revision, old_epoch) is None
    )
    assert new.partition_state("t", 0) == current
    revision = new.update_partition_as_controller("t", 0, moved, current.mod_revision, new_epoch)
    assert revision is not None and revision > current.mod_revision
    assert new.partition_state("t", 0) is not None
    assert new.partition_state("t", 0).value == moved  # type: ignore[union-attr]


def test_controller_writes_are_compare_and_swap(make_store: StoreFactory) -> None:
    store = make_store()
    store.register_broker(reg(1), ttl_s=30)
    epoch = store.campaign_controller(1)
    assert epoch is not None
    store.create_topic(topic("t", 1), states(1))
    read = store.partition_state("t", 0)
    assert read is not None
    first = PartitionState((1, 2), 1, 1, (1,))
    revision = store.update_partition_as_controller("t", 0, first, read.mod_revision, epoch)
    assert revision is not None
    # A second writer that read the same version loses.
    second = PartitionState((1, 2), 2, 1, (2,))
    assert store.update_partition_as_controller("t", 0, second, read.mod_revision, epoch) is None
    now = store.partition_state("t", 0)
    assert now is not None and now.value == first and now.mod_revision == revision


# -- the leader's ISR changes ------------------------------------------------------------


def test_leader_writes_are_fenced_by_mod_revision_and_broker_epoch(
    make_store: StoreFactory,
) -> None:
    admin, leader = make_store(), make_store()
    admin.create_topic(topic("t", 1), {0: PartitionState((1, 2), 1, 3, (1, 2))})
    stale_epoch = leader.register_broker(reg(1), ttl_s=30)
    epoch = leader.register_broker(reg(1), ttl_s=30)
    read = admin.partition_state("t", 0)
    assert read is not None
    shrunk = read.value.with_isr((1,))

    # From a registration that has ended: refused.
    assert (
        leader.update_partition_as_leader("t", 0, shrunk, read.mod_revision, 1, stale_epoch) is None
    )
    # From a stale read: refused.
    assert (
        leader.update_partition_as_leader("t", 0, shrunk, read.mod_revision - 1, 1, epoch) is None
    )
    assert admin.partition_state("t", 0) == read
    revision = leader.update_partition_as_leader("t", 0, shrunk, read.mod_revision, 1, epoch)
    assert revision is not None and revision > read.mod_revision
    assert admin.partition_state("t", 0) is not None
    assert admin.partition_state("t", 0).value.isr == (1,)  # type: ignore[union-attr]

    # Once the leader's registration ends, its epoch no longer writes.
    leader.close()
    expanded = shrunk.with_isr((1, 2))
    assert admin.update_partition_as_leader("t", 0, expanded, revision, 1, epoch) is None


# -- topics ----------------------------------------------------------------------------


def test_create_topic_writes_the_topic_and_its_partitions_together(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    store.create_topic(topic("orders", 3), states(3))
    topics = store.topics()
    assert list(topics) == ["orders"]
    assert topics["orders"].value == topic("orders", 3)
    found = store.partition_states("orders")
    assert {k: v.value for k, v in found.items()} == {
        ("orders", p): s for p, s in states(3).items()
    }
    # The record first, then the states (three fit one chunk).
    assert {v.mod_revision for v in found.values()} == {topics["orders"].mod_revision + 1}

    with pytest.raises(TopicExistsError):
        store.create_topic(topic("orders", 5), states(5, replicas=(3,)))
    assert store.partition_states("orders") == found
    assert store.topics() == topics


def test_concurrent_creations_of_one_topic_leave_one_whole_winner(
    make_store: StoreFactory,
) -> None:
    creators = [make_store() for _ in range(5)]
    barrier = threading.Barrier(len(creators))
    outcomes: dict[int, str] = {}

    def create(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            creators[i].create_topic(topic("t", 2 + i), states(2 + i, replicas=(i + 1,)))
            outcomes[i] = "created"
        except TopicExistsError:
            outcomes[i] = "exists"

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(creators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [i for i, outcome in outcomes.items() if outcome == "created"]
    assert len(outcomes) == len(creators) and len(winners) == 1
    [winner] = winners
    found = creators[0].partition_states("t")
    assert creators[0].topics()["t"].value.partitions == 2 + winner
    assert {k: v.value for k, v in found.items()} == {
        ("t", p): s for p, s in states(2 + winner, replicas=(winner + 1,)).items()
    }


def test_a_thousand_partitions_fit_etcds_default_transaction_limit_in_chunks(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    """etcd runs with its default --max-txn-ops (128): the states go in chunks of 126."""
    store = make_store()
    assert store.max_txn_ops == DEFAULT_MAX_TXN_OPS and store.chunk_size == 126
    revision = store.create_topic(topic("big", 1000), states(1000))
    assert store.topics()["big"].create_revision == revision
    found = store.partition_states("big")
    assert {k: v.value for k, v in found.items()} == {
        ("big", p): s for p, s in states(1000).items()
    }
    # One transaction per chunk, after the record's.
    chunks = sorted({v.mod_revision for v in found.values()})
    assert chunks == list(range(revision + 1, revision + 1 + 8))

    # Growing it is chunked too, and a deletion removes every key in one transaction.
    grown = store.topics()["big"]
    new = {p: PartitionState((2,), 2, 0, (2,)) for p in range(1000, 1300)}
    assert store.add_partitions("big", 1300, new, grown.mod_revision)
    assert store.topics()["big"].value.partitions == 1300
    assert len(store.partition_states("big")) == 1300
    last = max(v.mod_revision for v in store.partition_states("big").values())
    store.delete_topic("big")
    assert store.topics() == {} and store.partition_states() == {}
    assert list(raw.get_prefix(PREFIX + "partitions/")) == []
    raw.put(PREFIX + "sentinel", "after")
    _, meta = raw.get(PREFIX + "sentinel")
    assert meta is not None and meta.mod_revision == last + 2  # the delete took one revision


def write_half_finished_creation(
    raw: etcd3.MultiEndpointEtcd3Client, record: TopicRecord, written: dict[int, PartitionState]
) -> None:
    """What a broker that died creating `record` leaves in etcd: the record, and the
    states of the chunks it wrote before it died."""
    raw.put(f"{PREFIX}topics/{record.name}", record.to_json())
    for p, state in written.items():
        raw.put(f"{PREFIX}partitions/{record.name}/{p}", state.to_json())


def test_missing_states_are_written_without_touching_the_ones_present(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    store = make_store()
    first_chunk = states(126)
    write_half_finished_creation(raw, topic("t", 300), first_chunk)
    before = store.partition_states("t")
    assert len(before) == 126

    # The controller's path: only the missing ones, fenced by the controller epoch.
    store.register_broker(reg(1), ttl_s=30)
    epoch = store.campaign_controller(1)
    assert epoch is not None
    other = {p: PartitionState((3,), 3, 0, (3,)) for p in range(300)}
    current = store.topics()["t"]
    assert (
        store.write_missing_partition_states(
            "t", current.create_revision, other, controller_epoch=epoch
        )
        == 300 - 126
    )
    after = store.partition_states("t")
    assert len(after) == 300
    assert {k: after[k] for k in before} == before  # the same values and revisions
    assert all(after[("t", p)].value == other[p] for p in range(126, 300))
    # Writing again writes nothing.
    assert store.write_missing_partition_states("t", current.create_revision, other) == 0


def test_concurrent_writers_of_missing_states_never_overwrite_each_other(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    """A creator still writing while the controller completes the topic: each state is
    written once, by one of them (every key at version 1), all of them in the end."""
    write_half_finished_creation(raw, topic("t", 600), {})
    revision = make_store().topics()["t"].create_revision
    writers = [make_store(max_txn_ops=8) for _ in range(3)]
    barrier = threading.Barrier(len(writers))
    counts: dict[int, int] = {}

    def write(i: int) -> None:
        barrier.wait(timeout=10)
        mine = {p: PartitionState((i,), i, 0, (i,)) for p in random.sample(range(600), 600)}
        counts[i] = writers[i].write_missing_partition_states("t", revision, mine)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(counts) == len(writers) and sum(counts.values()) == 600
    for value, meta in raw.get_prefix(PREFIX + "partitions/t/"):
        assert meta.version == 1, meta.key
        assert PartitionState.from_json(value).leader in counts


def test_states_are_never_written_for_a_topic_deleted_or_created_again(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    store = make_store()
    old = store.create_topic(topic("t", 1), states(1))
    store.delete_topic("t")
    with pytest.raises(UnknownTopicOrPartitionError, match="was deleted"):
        store.write_missing_partition_states("t", old, states(3))
    assert store.partition_states("t") == {}
    write_half_finished_creation(raw, topic("t", 3), {})
    with pytest.raises(UnknownTopicOrPartitionError, match="was deleted"):
        store.write_missing_partition_states("t", old, states(3))
    assert store.partition_states("t") == {}


def test_a_deposed_controller_writes_no_missing_state(
    make_store: StoreFactory, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    old, new = make_store(), make_store()
    old.register_broker(reg(1), ttl_s=30)
    old_epoch = old.campaign_controller(1)
    assert old_epoch is not None
    old.close()
    new.register_broker(reg(2), ttl_s=30)
    assert new.campaign_controller(2) is not None
    write_half_finished_creation(raw, topic("t", 2), {})
    revision = new.topics()["t"].create_revision
    with pytest.raises(NotControllerError, match=f"epoch {old_epoch} is over"):
        new.write_missing_partition_states("t", revision, states(2), controller_epoch=old_epoch)
    assert new.partition_states("t") == {}


def test_delete_topic_removes_only_that_topic(make_store: StoreFactory) -> None:
    store = make_store()
    store.create_topic(topic("a", 2), states(2))
    store.create_topic(topic("ab", 2), states(2))  # "a" is a prefix of its name
    store.delete_topic("a")
    assert list(store.topics()) == ["ab"]
    assert set(store.partition_states()) == {("ab", 0), ("ab", 1)}
    assert store.partition_state("a", 0) is None
    with pytest.raises(UnknownTopicOrPartitionError):
        store.delete_topic("a")
    # The name is free again.
    store.create_topic(topic("a", 1), states(1))
    assert set(store.partition_states("a")) == {("a", 0)}


def test_topic_config_and_partition_count_change_by_compare_and_swap(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    store.create_topic(topic("t", 2), states(2))
    read = store.topics()["t"]
    assert store.update_topic_config("t", {"retention.ms": "1000"}, read.mod_revision)
    assert not store.update_topic_config("t", {"retention.ms": "5"}, read.mod_revision)
    after_config = store.topics()["t"]
    assert after_config.value.config == {"retention.ms": "1000"}

    assert not store.add_partitions("t", 4, states(4), read.mod_revision)
    new = {p: s for p, s in states(4, replicas=(2, 1)).items() if p >= 2}
    assert store.add_partitions("t", 4, new, after_config.mod_revision)
    grown = store.topics()["t"].value
    assert grown.partitions == 4 and grown.config == {"retention.ms": "1000"}
    assert {k: v.value for k, v in store.partition_states("t").items()} == {
        ("t", 0): states(2)[0],
        ("t", 1): states(2)[1],
        ("t", 2): new[2],
        ("t", 3): new[3],
    }
    with pytest.raises(InvalidPartitionsError):
        store.add_partitions("t", 4, {}, store.topics()["t"].mod_revision)
    with pytest.raises(UnknownTopicOrPartitionError):
        store.update_topic_config("nope", {}, 1)


# -- ACLs --------------------------------------------------------------------------------


def test_the_acl_document_is_replaced_only_from_the_revision_read(
    make_store: StoreFactory,
) -> None:
    first, second = make_store(), make_store()
    assert first.acl_document() is None
    assert first.replace_acl_document(b'{"acls": []}', 0)
    assert not second.replace_acl_document(b'{"acls": [1]}', 0)  # no longer absent
    document, revision = second.acl_document() or (b"", 0)
    assert document == b'{"acls": []}'
    assert second.replace_acl_document(b'{"acls": [2]}', revision)
    # The first store's revision is stale now: its write is refused, the newer one kept.
    assert not first.replace_acl_document(b'{"acls": [3]}', revision)
    assert first.acl_document() is not None
    assert (first.acl_document() or (b"", 0))[0] == b'{"acls": [2]}'


# -- producer ids ----------------------------------------------------------------------


def test_producer_id_blocks_never_overlap_across_threads(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(4)]
    rng = random.Random(7)
    plans = [[rng.randint(1, 50) for _ in range(15)] for _ in range(8)]
    blocks: list[tuple[int, int]] = []
    lock = threading.Lock()

    def allocate(store: ClusterMetadataStore, sizes: list[int]) -> None:
        for size in sizes:
            start = store.allocate_producer_ids(size)
            with lock:
                blocks.append((start, start + size))

    threads = [
        threading.Thread(target=allocate, args=(stores[i % len(stores)], sizes))
        for i, sizes in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(blocks) == sum(len(p) for p in plans)
    blocks.sort()
    # Disjoint and with no gaps: each block starts where the one before ended.
    assert blocks[0][0] == 0
    for (_, end), (start, _) in itertools.pairwise(blocks):
        assert start == end
    assert blocks[-1][1] == sum(sum(p) for p in plans)


_PREFIXES = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=8))
def test_producer_id_blocks_are_consecutive(make_store: StoreFactory, sizes: list[int]) -> None:
    store = make_store(prefix=f"/logstore/pid-{next(_PREFIXES)}/")
    starts = [store.allocate_producer_ids(size) for size in sizes]
    assert starts == [sum(sizes[:i]) for i in range(len(sizes))]


# -- watch -----------------------------------------------------------------------------


class Calls:
    """Counts callback calls, for waiting on the next one."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


def test_watch_fires_on_changes_and_again_after_etcd_restarts(
    etcd_server: EtcdServer, make_store: StoreFactory
) -> None:
    watcher, writer = make_store(), make_store()
    outsider = make_store(prefix="/logstore/elsewhere/")
    calls = Calls()
    watcher.watch(calls)
    wait_until(lambda: calls.count >= 1, "the watch to be established")
    time.sleep(0.3)
    established = calls.count

    outsider.create_topic(topic("x", 1), states(1))  # another cluster: not ours
    time.sleep(0.3)
    assert calls.count == established
    writer.create_topic(topic("t", 1), states(1))
    wait_until(lambda: calls.count > established, "a callback for the new topic")
    time.sleep(0.3)
    # The creation is two transactions (the record, then its one chunk of states): two
    # revisions, which etcd may send in one watch response.
    assert established + 1 <= calls.count <= established + 2

    etcd_server.kill()
    before_restart = calls.count
    etcd_server.start()
    wait_until(lambda: calls.count > before_restart, "a callback after etcd restarted")
    time.sleep(0.3)
    after_restart = calls.count
    writer.delete_topic("t")
    wait_until(lambda: calls.count > after_restart, "a callback after the restart's change")


# -- etcd unavailable ------------------------------------------------------------------


def test_a_stopped_etcd_is_reported_not_raised_raw(
    etcd_server: EtcdServer, make_store: StoreFactory
) -> None:
    store = make_store()
    store.register_broker(reg(1), ttl_s=30)
    ok, message = store.health()
    assert (
        ok and message.startswith("etcd 3.") and f" at {etcd_server.endpoint}, leader " in message
    )

    etcd_server.kill()
    ok, message = store.health()
    assert not ok and etcd_server.endpoint in message
    calls: list[Callable[[], object]] = [
        store.topics,
        store.live_brokers,
        store.controller,
        store.cluster_id,
        lambda: store.create_topic(topic("t", 1), states(1)),
        lambda: store.campaign_controller(1),
        lambda: store.allocate_producer_ids(10),
        lambda: make_store().register_broker(reg(2), ttl_s=30),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(ClusterMetadataUnavailableError, match=etcd_server.endpoint):
            call()
        assert time.monotonic() - started < TIMEOUT_S + 1.0

    etcd_server.start()
    wait_until(lambda: store.health()[0], "health() after etcd restarted")
    assert store.topics() == {}


def test_a_silent_etcd_times_out_instead_of_hanging(
    etcd_server: EtcdServer, make_store: StoreFactory
) -> None:
    store = make_store()
    assert store.topics() == {}
    etcd_server.pause()
    try:
        started = time.monotonic()
        ok, message = store.health()
        assert not ok and f"no answer within {TIMEOUT_S} s" in message
        with pytest.raises(ClusterMetadataUnavailableError, match="no answer within"):
            store.create_topic(topic("t", 1), states(1))
        assert time.monotonic() - started < 2 * TIMEOUT_S + 2.0
    finally:
        etcd_server.resume()
    wait_until(lambda: store.health()[0], "health() after etcd resumed")


def test_reads_fail_over_to_a_live_endpoint(
    etcd_server: EtcdServer, make_store: StoreFactory
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = make_store(endpoints=[dead, etcd_server.endpoint])
    ok, message = store.health()
    assert ok and etcd_server.endpoint in message
    assert store.topics() == {}  # the first endpoint refuses; the read goes on to the next
    store.create_topic(topic("t", 1), states(1))  # and later calls stay there
    assert list(store.topics()) == ["t"]
