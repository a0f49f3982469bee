"""The clients' cluster metadata: bootstrap lists, the `ClusterMetadata` cache (answers,
KIP-320's leader epoch rule, leader lookup, when to ask again) and `BrokerChannels`
against a real standalone broker."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore import errors
from logstore.addresses import parse_host_port
from logstore.client._connection import BrokerChannels, ClientSecurity, parse_bootstrap
from logstore.client.metadata import NO_LEADER, ClusterMetadata, format_address
from logstore.clock import ManualClock
from logstore.v1 import logstore_pb2 as pb
from tests.client.cluster_relay import RelayCluster
from tests.server.conftest import BrokerProcess

REACHED = "10.0.0.9:9092"
B1, B2, B3 = "10.0.0.1:9092", "10.0.0.2:9092", "10.0.0.3:9092"


def broker(broker_id: int, address: str) -> pb.BrokerDescription:
    host, port = parse_host_port(address)
    return pb.BrokerDescription(broker_id=broker_id, host=host, port=port)


def partition(p: int, leader: int, epoch: int, isr: tuple[int, ...] = ()) -> pb.PartitionMetadata:
    replicas = isr or (leader,)
    return pb.PartitionMetadata(
        partition=p, leader=leader, leader_epoch=epoch, replicas=replicas, isr=isr or replicas
    )


def answer(
    topics: dict[str, list[pb.PartitionMetadata]],
    brokers: tuple[pb.BrokerDescription, ...] = (broker(1, B1), broker(2, B2), broker(3, B3)),
    cluster_id: str = "c1",
    controller_id: int = 1,
) -> pb.MetadataResponse:
    return pb.MetadataResponse(
        cluster_id=cluster_id,
        controller_id=controller_id,
        brokers=brokers,
        topics=[pb.TopicMetadata(topic=t, partitions=ps) for t, ps in topics.items()],
    )


def unknown_topic(name: str) -> pb.TopicMetadata:
    return pb.TopicMetadata(
        topic=name,
        error=pb.Error(
            code=5, kind="UnknownTopicOrPartitionError", message=f"topic {name!r} does not exist"
        ),
    )


def fresh(clock: ManualClock | None = None) -> ClusterMetadata:
    return ClusterMetadata(
        max_age_ms=300_000, backoff_ms=100, backoff_max_ms=1_000, clock=clock or ManualClock()
    )


# --- bootstrap lists -------------------------------------------------------------------------


def test_a_bootstrap_list_is_split_trimmed_and_kept_in_order_once_each() -> None:
    assert parse_bootstrap("127.0.0.1:9092") == ["127.0.0.1:9092"]
    assert parse_bootstrap(" h2:2 , h1:1,h2:2,[::1]:9092 ") == ["h2:2", "h1:1", "[::1]:9092"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "empty"),
        (" , ", "empty"),
        ("h1:1,,h2:2", "empty entry"),
        ("h1:1,", "empty entry"),
        ("h1:1,h2", "'h2' is not HOST:PORT"),
        ("h1:1,h2:0", "port 0 is outside 1..65535"),
        ("h1:99999", "port 99999"),
        (":9092", "is not HOST:PORT"),
    ],
)
def test_a_bad_bootstrap_entry_is_named(value: str, says: str) -> None:
    with pytest.raises(errors.InvalidRequestError, match=says) as caught:
        parse_bootstrap(value)
    assert "HOST:PORT" in str(caught.value) or "port" in str(caught.value)


_HOSTS = st.sampled_from(["127.0.0.1", "localhost", "broker-1.example", "[::1]", "10.1.2.3"])
_ADDRESSES = st.builds(lambda h, p: f"{h}:{p}", _HOSTS, st.integers(1, 65_535))


@given(st.lists(_ADDRESSES, min_size=1, max_size=8), st.lists(st.sampled_from(["", " ", "  "])))
def test_any_list_of_addresses_parses_back_to_its_distinct_entries(
    addresses: list[str], pads: list[str]
) -> None:
    pad = "".join(pads)
    parsed = parse_bootstrap(",".join(f"{pad}{a}{pad}" for a in addresses))
    assert parsed == list(dict.fromkeys(addresses))


@given(st.text(max_size=40))
def test_any_text_parses_to_connectable_addresses_or_says_why_not(value: str) -> None:
    try:
        parsed = parse_bootstrap(value)
    except errors.InvalidRequestError as exc:
        assert str(exc)
        return
    assert parsed and len(parsed) == len(set(parsed))
    for address in parsed:
        parse_host_port(address)  # each one is an address a channel can be opened to


# --- answers and leaders ---------------------------------------------------------------------


def test_an_answer_gives_brokers_and_each_partitions_leader() -> None:
    metadata = fresh()
    changed = metadata.update(
        answer({"orders": [partition(0, 1, 3, (1, 2)), partition(1, 2, 0, (2, 3))]}), REACHED
    )
    assert changed and metadata.known and metadata.version == 1
    assert metadata.cluster_id == "c1" and metadata.controller_id == 1
    assert metadata.brokers == {1: B1, 2: B2, 3: B3}
    assert not metadata.standalone
    assert metadata.leader_address("orders", 0) == B1
    assert metadata.leader_address("orders", 1) == B2
    assert metadata.leader_epoch("orders", 0) == 3
    leadership = metadata.leadership("orders", 1)
    assert leadership is not None and leadership.isr == (2, 3) and leadership.replicas == (2, 3)
    assert metadata.partitions_for("orders") == {0, 1}
    assert metadata.partitions_for("other") is None
    assert metadata.leader_address("orders", 2) is None  # not described
    assert metadata.leader_address("other", 0) is None
    assert metadata.addresses() == [B1, B2, B3]


def test_no_leader_or_a_leader_that_is_not_live_routes_nowhere() -> None:
    metadata = fresh()
    metadata.update(
        answer({"t": [partition(0, NO_LEADER, 4), partition(1, 7, 4)]}, brokers=(broker(1, B1),)),
        REACHED,
    )
    assert metadata.leader_id("t", 0) is None and metadata.leader_address("t", 0) is None
    assert metadata.leader_id("t", 1) == 7 and metadata.leader_address("t", 1) is None


def test_a_standalone_broker_is_reached_where_it_was_asked_and_leads_everything() -> None:
    metadata = fresh()
    standalone = answer(
        {"t": [partition(0, 0, 0)]},
        brokers=(pb.BrokerDescription(broker_id=0, host="", port=0),),
        cluster_id="",
        controller_id=-1,
    )
    metadata.update(standalone, REACHED)
    assert metadata.standalone and metadata.brokers == {0: REACHED}
    assert metadata.leader_address("t", 0) == REACHED
    assert metadata.leader_address("created-later", 5) == REACHED  # no refresh needed
    assert metadata.supported


def test_a_broker_without_the_metadata_rpc_is_a_standalone_one_never_asked_again() -> None:
    clock = ManualClock()
    metadata = fresh(clock)
    assert metadata.is_stale()  # never answered: bootstrap first
    metadata.update_standalone(REACHED)
    assert metadata.known and metadata.standalone and not metadata.supported
    assert metadata.leader_address("any", 3) == REACHED
    metadata.invalidate()
    clock.advance(10 * 300_000)
    assert not metadata.is_stale() and not metadata.refresh_due()
    assert metadata.next_refresh_ms() is None


def test_an_ipv6_broker_address_is_bracketed() -> None:
    assert format_address("::1", 9092) == "[::1]:9092"
    assert format_address("broker", 9092) == "broker:9092"
    metadata = fresh()
    metadata.update(answer({}, brokers=(broker(1, "[::1]:9093"),)), REACHED)
    assert metadata.brokers == {1: "[::1]:9093"}
    assert parse_host_port(metadata.brokers[1]) == ("::1", 9093)


# --- the leader epoch rule (KIP-320) ---------------------------------------------------------


def test_an_older_leader_epoch_never_replaces_a_newer_one() -> None:
    metadata = fresh()
    metadata.update(answer({"t": [partition(0, 2, 5)]}), REACHED)
    version = metadata.version
    # a lagging broker still names the deposed leader, at an older epoch
    assert not metadata.update(answer({"t": [partition(0, 1, 4)]}), REACHED, ["t"])
    assert metadata.leader_address("t", 0) == B2 and metadata.leader_epoch("t", 0) == 5
    assert metadata.version == version
    assert metadata.lagging and "t" in metadata.stale_topics()  # ask another broker
    # an equal epoch updates the replica sets; a newer one moves the leader
    metadata.update(answer({"t": [partition(0, 2, 5, (2, 3))]}), REACHED, ["t"])
    leadership = metadata.leadership("t", 0)
    assert leadership is not None and leadership.isr == (2, 3)
    assert not metadata.lagging and metadata.stale_topics() == set()
    assert metadata.update(answer({"t": [partition(0, 3, 6)]}), REACHED, ["t"])
    assert metadata.leader_address("t", 0) == B3 and metadata.version > version


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(0, 6)),
        min_size=1,
        max_size=30,
    )
)
def test_the_known_epoch_is_the_largest_seen_with_the_leader_last_named_at_it(
    answers: list[tuple[int, int, int]],
) -> None:
    """Answers about partitions 0..3 arrive in any order: each partition ends with the
    largest epoch any answer gave it, and the leader of the last answer at that epoch."""
    metadata = fresh()
    best: dict[int, tuple[int, int]] = {}
    for p, leader, epoch in answers:
        version = metadata.version
        metadata.update(answer({"t": [partition(p, leader, epoch)]}), REACHED, ["t"])
        if p not in best or epoch >= best[p][0]:
            moved = p not in best or best[p][1] != leader
            best[p] = (epoch, leader)
            assert (metadata.version > version) == moved
        else:
            assert metadata.version == version  # ignored: nothing may route differently
    for p, (epoch, leader) in best.items():
        assert metadata.leader_epoch("t", p) == epoch
        assert metadata.leader_id("t", p) == leader
    assert metadata.partitions_for("t") == set(range(max(best) + 1))


# --- topics coming and going -----------------------------------------------------------------


def test_a_topic_that_does_not_exist_is_forgotten_and_says_why() -> None:
    metadata = fresh()
    metadata.update(answer({"gone": [partition(0, 1, 0)], "kept": [partition(0, 2, 0)]}), REACHED)
    deleted = answer({"kept": [partition(0, 2, 0)]})
    deleted.topics.append(unknown_topic("gone"))
    assert metadata.update(deleted, REACHED, ["gone", "kept"])
    assert metadata.partitions_for("gone") is None and metadata.leader_address("gone", 0) is None
    assert metadata.missing("gone") == "topic 'gone' does not exist"
    assert metadata.partitions_for("kept") == {0}
    metadata.update(answer({"gone": [partition(0, 3, 0)]}), REACHED, ["gone"])  # re-created
    assert metadata.missing("gone") is None and metadata.leader_address("gone", 0) == B3


def test_an_answer_about_every_topic_drops_the_ones_it_leaves_out() -> None:
    metadata = fresh()
    metadata.update(answer({"a": [partition(0, 1, 0)], "b": [partition(0, 1, 0)]}), REACHED)
    metadata.update(answer({"a": [partition(0, 1, 0)]}), REACHED, ["a"])  # about "a" only
    assert metadata.partitions_for("b") == {0}
    metadata.update(answer({"a": [partition(0, 1, 0)]}), REACHED)  # about every topic
    assert metadata.topics() == ["a"]


def test_a_topic_never_loses_partitions_to_a_lagging_answer() -> None:
    metadata = fresh()
    metadata.update(answer({"t": [partition(p, 1, 0) for p in range(4)]}), REACHED)
    metadata.update(answer({"t": [partition(p, 1, 0) for p in range(2)]}), REACHED, ["t"])
    assert metadata.partitions_for("t") == {0, 1, 2, 3}
    assert metadata.leader_address("t", 3) == B1


def test_forgetting_a_topic_accepts_its_epochs_from_zero_again() -> None:
    metadata = fresh()
    metadata.update(answer({"t": [partition(0, 1, 9)]}), REACHED)
    metadata.forget("t")
    assert metadata.leader_address("t", 0) is None and "t" in metadata.stale_topics()
    metadata.update(answer({"t": [partition(0, 2, 0)]}), REACHED, ["t"])
    assert metadata.leader_address("t", 0) == B2


def test_an_error_other_than_unknown_topic_keeps_what_was_known() -> None:
    metadata = fresh()
    metadata.update(answer({"t": [partition(0, 1, 0)]}), REACHED)
    denied = answer({})
    denied.topics.append(
        pb.TopicMetadata(
            topic="t", error=pb.Error(code=7, kind="AuthorizationError", message="denied")
        )
    )
    metadata.update(denied, REACHED, ["t"])
    assert metadata.leader_address("t", 0) == B1 and metadata.missing("t") is None


# --- when to ask again -----------------------------------------------------------------------


def test_metadata_is_asked_again_after_max_age_or_at_once_when_invalidated() -> None:
    clock = ManualClock()
    metadata = fresh(clock)
    metadata.update(answer({"t": [partition(0, 1, 0)]}), REACHED)
    assert not metadata.is_stale() and metadata.next_refresh_ms() == 300_000
    clock.advance(299_999)
    assert not metadata.refresh_due()
    clock.advance(1)
    assert metadata.refresh_due()
    metadata.update(answer({"t": [partition(0, 1, 0)]}), REACHED, ["t"])
    assert not metadata.is_stale()
    metadata.invalidate("t")
    assert metadata.refresh_due() and metadata.stale_topics() == {"t"}
    metadata.update(answer({"t": [partition(0, 1, 0)]}), REACHED, ["t"])
    assert not metadata.is_stale()
    metadata.invalidate()
    assert metadata.refresh_due() and metadata.stale_topics() == set()
    metadata.update(answer({"t": [partition(0, 1, 0)]}), REACHED, ["t"])
    assert not metadata.is_stale()


def test_a_partition_without_a_leader_is_asked_about_again_after_the_backoff() -> None:
    """An election or a topic creation under way: the client must learn the new leader
    within the backoff, not after max_age_ms (minutes), or its sends wait that long."""
    clock = ManualClock()
    metadata = fresh(clock)
    metadata.update(answer({"t": [partition(0, 1, 0), partition(1, -1, 0)]}), REACHED)
    assert metadata.leader_address("t", 1) is None
    assert "t" in metadata.stale_topics() and not metadata.refresh_due()
    assert metadata.next_refresh_ms() == 100
    clock.advance(100)
    assert metadata.refresh_due()
    metadata.update(answer({"t": [partition(0, 1, 0), partition(1, -1, 0)]}), REACHED, ["t"])
    assert metadata.next_refresh_ms() == clock.monotonic_ms() + 200  # backing off
    clock.advance(200)
    metadata.update(answer({"t": [partition(0, 1, 0), partition(1, 2, 1)]}), REACHED, ["t"])
    assert metadata.leader_address("t", 1) == B2
    assert not metadata.is_stale() and metadata.next_refresh_ms() == clock.monotonic_ms() + 300_000


def test_failed_refreshes_back_off_doubling_to_the_maximum() -> None:
    clock = ManualClock()
    metadata = fresh(clock)
    metadata.update(answer({}), REACHED)
    metadata.invalidate()
    delays = []
    for _ in range(6):
        metadata.refresh_failed()
        due = metadata.next_refresh_ms()
        assert due is not None
        delays.append(due - clock.monotonic_ms())
        assert not metadata.refresh_due()
        clock.advance(int(delays[-1]))
        assert metadata.refresh_due()
    assert delays == [100, 200, 400, 800, 1_000, 1_000]
    metadata.update(answer({}), REACHED)
    assert not metadata.is_stale() and metadata.next_refresh_ms() == clock.monotonic_ms() + 300_000


# --- channels against a real broker ----------------------------------------------------------


@pytest.fixture
def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound, then freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def channels_of(bootstrap: str) -> BrokerChannels:
    return BrokerChannels(bootstrap, ClientSecurity(), ClusterMetadata(), request_timeout_s=10.0)


@pytest.fixture
def dead_first(broker: BrokerProcess, closed_port: str) -> Iterator[BrokerChannels]:
    channels = channels_of(f"{closed_port},{broker.address}")
    try:
        yield channels
    finally:
        channels.close()


def test_start_up_skips_a_dead_bootstrap_broker_and_routes_to_the_live_one(
    broker: BrokerProcess, dead_first: BrokerChannels
) -> None:
    assert not dead_first.bootstrapped and dead_first.home != broker.address
    dead_first.bootstrap(timeout_s=10.0)
    assert dead_first.bootstrapped and dead_first.home == broker.address
    metadata = dead_first.metadata
    # a standalone broker, whether it answers Metadata or predates it
    assert metadata.standalone and metadata.addresses() == [broker.address]
    assert dead_first.leaders([("any", 0), ("other", 7)]) == {
        ("any", 0): broker.address,
        ("other", 7): broker.address,
    }
    # the channel start-up reached the broker on is the one requests use
    assert dead_first.channel(broker.address) is dead_first.channel(metadata.addresses()[0])
    topics = dead_first.home_stub().ListTopics(pb.ListTopicsRequest(), timeout=10)
    assert isinstance(topics, pb.ListTopicsResponse)


def test_start_up_says_which_brokers_did_not_answer(closed_port: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        other = f"127.0.0.1:{sock.getsockname()[1]}"
    channels = channels_of(f"{closed_port},{other}")
    try:
        with pytest.raises(errors.BrokerUnavailableError) as caught:
            channels.bootstrap(timeout_s=10.0)
        assert closed_port in str(caught.value) and other in str(caught.value)
        assert not channels.bootstrapped
    finally:
        channels.close()


def test_the_first_home_request_goes_to_a_bootstrap_broker_that_answers(
    broker: BrokerProcess, dead_first: BrokerChannels
) -> None:
    listing = dead_first.home_stub().ListTopics(pb.ListTopicsRequest(), timeout=10)
    assert isinstance(listing, pb.ListTopicsResponse)
    assert dead_first.bootstrapped and dead_first.home == broker.address


def test_home_requests_move_to_the_next_broker_when_home_does_not_answer(
    broker: BrokerProcess,
) -> None:
    relays = RelayCluster(broker.address, 2, standalone=True)
    first, second = relays.relays
    channels = channels_of(f"{first.address},{second.address}")
    try:
        home = channels.home_stub()
        home.ListTopics(pb.ListTopicsRequest(), timeout=10)
        assert channels.home == first.address
        first.stop()
        with pytest.raises(grpc.RpcError) as caught:
            home.ListTopics(pb.ListTopicsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert channels.home == second.address  # the caller's retry goes there
        home.ListTopics(pb.ListTopicsRequest(), timeout=10)
        assert second.calls["/logstore.v1.LogStore/ListTopics"] == 1
    finally:
        channels.close()
        relays.close()


def test_closed_channels_refuse_new_requests(broker: BrokerProcess) -> None:
    channels = channels_of(broker.address)
    channels.bootstrap(timeout_s=10.0)
    channels.close()
    with pytest.raises(errors.ClientClosedError):
        channels.channel("127.0.0.1:1")
