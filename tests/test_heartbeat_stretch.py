"""A master with many nodes asks them to beat less often, and a real node daemon follows: the sum of
all nodes' heartbeats stays bounded (grun.actors.master.HEARTBEATS_PER_SEC) however big the cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from grun.actors.master import HEARTBEATS_PER_SEC
from grun.testing import LocalCluster

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
