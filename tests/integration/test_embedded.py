"""The embedded NATS cluster `make run`, the tests and the benchmarks start: a port taken between its pick and the
bind (CI once saw a node's client port handed out again as another node's route port) must not leave a cluster
that never elects a meta leader."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dev.embedded import HOST, EmbeddedNatsCluster, PortTaken, free_port


def _hold(port: int) -> socket.socket:
    s = socket.socket()
    s.bind((HOST, port))
    s.listen()
    return s


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_a_new_cluster_whose_port_another_process_took_starts_on_new_ports(tmp_path: Path) -> None:
    cluster = EmbeddedNatsCluster(tmp_path / "nats", 3, sync_always=False)
    taken = cluster.nodes[2].port
    with _hold(taken):
        try:
            cluster.start(timeout=30)
            assert taken not in [n.port for n in cluster.nodes]
            assert all(n.healthy() for n in cluster.nodes)
        finally:
            cluster.stop()


def test_a_cluster_on_fixed_ports_reports_the_taken_port_at_once_naming_the_node(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    cluster = EmbeddedNatsCluster(tmp_path / "nats", 3, sync_always=False, ports=ports)
    with _hold(ports[2]), pytest.raises(PortTaken, match=f"node n3 exited(?s:.*){ports[2]}.*address already in use"):
        cluster.start(timeout=30)
    assert all(n.proc is None or n.proc.poll() is not None for n in cluster.nodes)
