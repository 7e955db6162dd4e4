"""A master with many nodes asks them to beat less often, and a real node daemon follows: the sum of
all nodes' heartbeats stays bounded (grun.core.nodes.HEARTBEATS_PER_SEC) however big the cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
from cluster import LocalCluster

from grun.core.nodes import HEARTBEATS_PER_SEC

SIM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "sim_nodes.py")


def _heartbeat_gaps(client, name: str, seconds: float) -> float:
    """The longest time the master went without hearing from the node, sampled over `seconds`."""
    longest, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        for node in client.call("nodes"):
            if node["name"] == name:
                longest = max(longest, node["last_seen"])
        time.sleep(0.2)
    return longest


def test_a_node_beats_at_the_longer_interval_a_big_master_asks_for():
    c = LocalCluster(nodes={"real": {"cpus": 1, "memory": 1000, "heartbeat": 1}})
    try:
        c.start()
        _check(c)
    finally:
        c.stop()


def _check(c: LocalCluster) -> None:
    client = c.client()
    assert _heartbeat_gaps(client, "real", 3) < 2.0  # its own interval while the cluster is small
    many = 2 * HEARTBEATS_PER_SEC  # the master now wants a beat every ~2 s from each node
    sim = subprocess.Popen([sys.executable, SIM, "--master", f"127.0.0.1:{c.port}", "--nodes", str(many),
                            "--heartbeat", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        ready = json.loads(sim.stdout.readline())
        assert ready.get("ready"), ready
        time.sleep(2.5)  # one beat on the old interval brings the real node the new one
        assert _heartbeat_gaps(client, "real", 6) > 1.6
    finally:
        sim.terminate()
        sim.wait(30)


def _connected_samples(node_pid: int, port: int, count: int) -> list[bool]:
    """Whether the node has a connection open to the master port, sampled every 0.1 s."""
    samples = []
    for _ in range(count):
        samples.append(any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                           for c in psutil.Process(node_pid).net_connections(kind="tcp")))
        time.sleep(0.1)
    return samples


def test_past_500_nodes_a_node_closes_its_idle_connection_to_the_master():
    """The master serves each open connection with a thread of its own (1,024 at most): in a big
    cluster a node connects for what it has to say and does not sit on a connection in between."""
    c = LocalCluster(nodes={"real": {"cpus": 1, "memory": 1000, "heartbeat": 1}})
    sim = None
    try:
        c.start()
        node_pid = c.procs["real"].pid
        assert all(_connected_samples(node_pid, c.port, 20)), "a node of a small cluster keeps its connection"
        sim = subprocess.Popen([sys.executable, SIM, "--master", f"127.0.0.1:{c.port}", "--nodes", "1000",
                                "--heartbeat", "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert json.loads(sim.stdout.readline()).get("ready")
        time.sleep(2.5)
        seen = _connected_samples(node_pid, c.port, 60)
        assert False in seen and True in seen, seen
        job = c.grun("-H", "real", "echo", "still here")  # and it still runs jobs and reports them
        assert (job.returncode, job.stdout) == (0, b"still here\n"), job.stderr
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(30)
        c.stop()
