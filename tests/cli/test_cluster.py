"""`logstore cluster describe` against a real standalone broker, and its text for a cluster."""

from __future__ import annotations

import json

import pytest

from logstore.cli.cluster import STANDALONE, print_cluster
from logstore.types import BrokerInfo, ClusterDescription
from tests.cli.conftest import Cli, table
from tests.server.conftest import BrokerProcess


def test_a_standalone_broker_says_so_and_lists_itself(cli: Cli, broker: BrokerProcess) -> None:
    text = cli.ok("cluster", "describe").out
    lines = text.splitlines()
    assert lines[0] == STANDALONE
    assert "Controller: 0" in lines[1] and "AnsweredBy: 0" in lines[1]
    rows = table(text)
    header = rows.index(["BROKER-ID", "ADDRESS", "CONTROLLER"])
    assert rows[header + 1] == ["0", broker.address, "yes"]
    assert "etcd" not in text

    described = json.loads(cli.ok("cluster", "describe", "--json").out)
    assert described["cluster_mode"] is False
    assert described["controller"] == 0
    assert described["brokers"] == [
        {"broker_id": 0, "host": "127.0.0.1", "port": broker.port, "address": broker.address}
    ]
    assert described["etcd_endpoints"] == [] and described["etcd_healthy"] is False


def test_a_cluster_shows_its_brokers_controller_and_etcd(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_cluster(
        ClusterDescription(
            cluster_id="c-1",
            controller=2,
            brokers=[BrokerInfo(1, "b1", 9092), BrokerInfo(2, "b2", 9092)],
            cluster_mode=True,
            broker_id=1,
            etcd_endpoints=["e1:2379", "e2:2379"],
            etcd_healthy=False,
            etcd_status="connection refused",
        )
    )
    text = capsys.readouterr().out
    assert STANDALONE not in text
    rows = table(text)
    assert rows[0] == ["ClusterId:", "c-1", "Controller:", "2", "AnsweredBy:", "1"]
    header = rows.index(["BROKER-ID", "ADDRESS", "CONTROLLER"])
    assert rows[header + 1 : header + 3] == [["1", "b1:9092", "-"], ["2", "b2:9092", "yes"]]
    assert text.splitlines()[-1] == "etcd: e1:2379,e2:2379  UNREACHABLE  (connection refused)"


def test_a_cluster_without_a_controller_says_none(capsys: pytest.CaptureFixture[str]) -> None:
    print_cluster(ClusterDescription("c", -1, [], True, 0, ["e:2379"], True, "etcd 3.4.23"))
    assert "Controller: none" in capsys.readouterr().out
