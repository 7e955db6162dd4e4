"""A multi-host cluster on one machine (issue 3, "node loss"): every node runs in its own network
namespace behind a veth pair on a bridge, with addresses from 198.18.0.0/15 only (the benchmarking
range, RFC 2544); the master binds the bridge's address in the root namespace. One node is cut off
(its link set down) for longer than node_timeout, then healed: its jobs are re-queued, the one that
ran elsewhere meanwhile has its stale copy killed, the one that could not is kept, and history
holds every job once. Namespaces, links and daemons are made and removed by the test; it is skipped,
saying why, where namespaces cannot be made (not root, no `ip`, no netns support)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cluster import LocalCluster
from util import job, job_id_from_verbose, nowait, read_line, wait_for, wait_state

from grun import spool
from grun.client import Client

NET = ipaddress.ip_network("198.18.0.0/15")
NODE_TIMEOUT = 3


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no interface on this machine uses."""
    used = _ip("-o", "-4", "addr", "show").stdout
    subnets = list(NET.subnets(new_prefix=24))
    start = os.getpid() % len(subnets)
    for net in subnets[start:] + subnets[:start]:
        if net.network_address.exploded.rsplit(".", 1)[0] + "." not in used:
            return net
    pytest.skip("every /24 of 198.18.0.0/15 is in use here")


class NetnsCluster(LocalCluster):
    """LocalCluster whose nodes each run inside their own network namespace."""

    def __init__(self, nodes: dict[str, dict], **kwargs):
        self.tag = f"{os.getpid() % 100000}"
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.master_ip = str(hosts[0])
        self.node_ip = {name: str(hosts[10 + i]) for i, name in enumerate(nodes)}
        self.netns = {name: f"grun{self.tag}n{i}" for i, name in enumerate(nodes)}
        self.bridge = f"grb{self.tag}"
        self.made: list[tuple[str, str]] = []  # ("ns"|"link", name), for teardown
        super().__init__(nodes=nodes, **kwargs)
        self.master_extra.update(bind=self.master_ip, master=f"{self.master_ip}:{self.port}")
        for name, spec in self.node_specs.items():
            spec.update(bind=self.node_ip[name], master=f"{self.master_ip}:{self.port}")
        self.client_config = self.write_config("client", {"services": "exec",
                                                          "master": f"{self.master_ip}:{self.port}"})

    def make_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        _ip("addr", "add", f"{self.master_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.netns.items()):
            _ip("netns", "add", ns)
            self.made.append(("ns", ns))
            veth = f"grv{self.tag}n{i}"
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", veth))
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.node_ip[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove_network(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "ns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self.made.clear()

    def _spawn(self, name: str, config: str) -> None:
        if name not in self.netns:
            return super()._spawn(name, config)
        log = open(os.path.join(self.root, f"{name}.out"), "ab")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns[name], sys.executable, "-m", "grun.daemon", config],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def client(self, connect_wait: float = 10.0) -> Client:
        return Client(self.master_ip, self.port, connect_wait=connect_wait)

    def cut(self, name: str) -> None:
        _ip("-n", self.netns[name], "link", "set", "eth0", "down")

    def heal(self, name: str, check: bool = True) -> None:
        _ip("-n", self.netns[name], "link", "set", "eth0", "up", check=check)


@pytest.fixture
def netns_cluster():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("ip"):
        pytest.skip("no `ip` command (iproute2)")
    probe = f"grunprobe{os.getpid() % 100000}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {r.stderr.strip()}")
    _ip("netns", "del", probe, check=False)
    c = NetnsCluster({"na": {"cpus": 3, "memory": 3000, "heartbeat": 0.5},
                      "nb": {"cpus": 3, "memory": 3000, "heartbeat": 0.5}},
                     master_extra={"node_timeout": NODE_TIMEOUT})
    try:
        c.make_network()
        c.start()
        yield c
    finally:
        for name in c.netns:  # a cut-off node could not be told to stop its jobs
            c.heal(name, check=False)
        c.stop()
        c.remove_network()


def test_a_partitioned_node_s_jobs_are_requeued_and_the_stale_copy_killed_on_heal(netns_cluster, tmp_path):
    c = netns_cluster
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)

    def script(k, sleep, code, rerun_sleep=None):
        """Logs its start and end; a second run (the marker file exists) sleeps rerun_sleep."""
        rerun = f"[ -e {runs}/{k} ] && s={rerun_sleep}; " if rerun_sleep is not None else ""
        return (f"s={sleep}; {rerun}echo start $GRUN_NODE >> {runs}/{k}; echo start $GRUN_NODE; sleep $s; "
                f"echo end $GRUN_NODE >> {runs}/{k}; echo end; exit {code}")

    # each node really is another host: it answers on its own address, from its own namespace
    assert {n["name"]: n["uri"].split("@")[1].rsplit(":", 1)[0] for n in c.client().nodes()} == c.node_ip
    mover = c.popen("-v", "sh", "-c", script("mover", 20, 3, rerun_sleep=1))
    try:
        read_line(mover.stderr, 20)
        mid = job_id_from_verbose(read_line(mover.stderr, 20))
        cut_node = job(c, mid)["node"]
        other = "nb" if cut_node == "na" else "na"
        pinned = nowait(c, "-H", cut_node, "sh", "-c", script("pinned", 10, 0))
        wait_state(c, pinned, "running")
        assert read_line(mover.stdout, 20) == f"start {cut_node}\n".encode()

        c.cut(cut_node)
        cut_at = time.monotonic()
        moved = wait_for(lambda: j if (j := job(c, mid))["state"] == "running" and j["node"] == other else None,
                         20, what="the job to be re-queued and run on the other node")
        assert moved["attempt"] == 2 and "lost" in moved["requeue_reason"]
        assert job(c, pinned)["state"] == "queued"
        assert {n["name"]: n["up"] for n in c.client().nodes()} == {cut_node: False, other: True}
        time.sleep(max(0.0, NODE_TIMEOUT + 1 - (time.monotonic() - cut_at)))  # longer than node_timeout
        c.heal(cut_node)

        out, err = mover.communicate(timeout=90)  # (its first run's output came: grun follows no second run)
        assert (mover.returncode, out) == (255, b""), err  # ("start": read above)
        assert f"job {mid} was re-queued (node {cut_node} lost".encode() in err and b"--attach" in err, err
        assert c.grun("-q", "wait", str(mid), timeout=90).returncode == 3
    finally:
        if mover.poll() is None:
            mover.kill()
        mover.communicate()
    assert c.grun("-q", "wait", str(pinned), timeout=90).returncode == 0
    history = c.client().history(1000)
    assert sorted(j["id"] for j in history) == sorted([mid, pinned])
    by_id = {j["id"]: j for j in history}
    assert (by_id[mid]["node"], by_id[mid]["exit"], by_id[mid]["attempt"]) == (other, 3, 2)
    assert (by_id[pinned]["node"], by_id[pinned]["attempt"], by_id[pinned]["exit"]) == (cut_node, 1, 0)
    # the stale copy was killed on the healed node before it could finish; the kept one ran to its end
    assert (runs / "mover").read_text() == f"start {cut_node}\nstart {other}\nend {other}\n"
    assert (runs / "pinned").read_text() == f"start {cut_node}\nend {cut_node}\n"
    end = wait_for(lambda: spool.read(os.path.join(c.root, cut_node, "node", "jobs", str(mid)), spool.STATUS), 15,
                   what="the stale copy's end")  # (its reader may catch it half-written: again)
    assert end["signal"] == signal.SIGTERM
