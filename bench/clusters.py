"""The benchmark's clusters and jobs: where a run keeps its clusters, starting one (tests/cluster.py's
LocalCluster, its daemons in a cgroup of their own) and tearing it down fast, the job spec `grun CMD`
submits, filling a queue, and waiting for many jobs without loading the master."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.meter import CpuGroup

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
_BIN_GRUN = os.path.join(os.path.dirname(sys.executable), "grun")
# The console script next to this interpreter (what people type), not a pyenv shim in front of it.
GRUN = [_BIN_GRUN] if os.access(_BIN_GRUN, os.X_OK) else [sys.executable, "-m", "grun.cli"]

_SESSION: dict = {}


def session_dir(args) -> str:
    """This invocation's directory for cluster roots, under --root (default /var/tmp/grun-bench).

    Not /tmp: on this machine /tmp's ext4 block groups are churned by other test suites, and creating a
    file next to thousands of recently deleted inodes costs 0.3-1 ms instead of ~20 us (bench/README.md).
    Finished clusters' files are deleted only at exit, for the same reason."""
    if "dir" not in _SESSION:
        base = args.root
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            base = tempfile.gettempdir()
        _SESSION["dir"] = tempfile.mkdtemp(prefix=f"run-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base)
        _SESSION["n"] = 0
    return _SESSION["dir"]


def cleanup_session(args) -> None:
    """Delete this invocation's clusters, node spools and the bytecode of a --commit export."""
    if "dir" in _SESSION:
        path = _SESSION.pop("dir")
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(os.path.join(args.root, "pycache") + path, ignore_errors=True)
        if args.node_spool:
            shutil.rmtree(os.path.join(args.node_spool, os.path.basename(path)), ignore_errors=True)


def new_cluster(args, nodes: int, master_only: bool = False):
    from cluster import LocalCluster
    _SESSION["n"] = _SESSION.get("n", 0) + 1
    root = os.path.join(session_dir(args), f"c{_SESSION['n']}")
    os.makedirs(root)
    level = {"log_level": args.log_level}
    specs = {} if master_only else {f"n{i + 1}": {"cpus": args.node_cpus, "memory": 64000, **level}
                                    for i in range(nodes)}
    if args.node_spool:
        for name, spec in specs.items():
            spec["spool"] = os.path.join(args.node_spool, os.path.basename(session_dir(args)),
                                         f"c{_SESSION['n']}", name)
            os.makedirs(spec["spool"])
    keys = {}
    if getattr(args, "auth", False) or getattr(args, "tls", False):  # every daemon and client proves a cluster
        keys = {"auth": "secret", "secret_file": os.path.join(root, "secret")}  # secret (README: Trust)
        with open(os.open(keys["secret_file"], os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(32).hex())
        if getattr(args, "tls", False):  # and speaks TLS, with certificates of a CA made here
            from cluster import tls_ca, tls_signed
            keys["tls"] = tls_signed(root, "host", tls_ca(root, "ca"))
        os.environ["GRUN_BENCH_KEYS"] = json.dumps(keys)  # this process's clients and its helpers'
        from grun import auth
        auth.use(keys["secret_file"], None, keys.get("tls"))
        for spec in specs.values():
            spec.update(keys)
    cluster = LocalCluster(nodes=specs, root=root, master_extra=dict(level, **keys))
    if keys:
        cluster.client_config = cluster.write_config("client", {"services": "exec", **keys})
    return cluster


def start_cluster(args, nodes: int | None = None, master_only: bool = False, prepare=None):
    """A new benchmark cluster, started and tracked; `prepare(cluster)` runs before its daemons start."""
    cluster = new_cluster(args, args.nodes if nodes is None else nodes, master_only)
    try:
        if prepare is not None:
            prepare(cluster)
        cluster.start()
        track(cluster)
    except BaseException:
        teardown(cluster)
        raise
    return cluster


def track(cluster) -> None:
    """Put the cluster's daemons (and so everything they start later) in a cgroup of their own."""
    cluster.bench_cgroup = CpuGroup.create()
    if cluster.bench_cgroup is not None:
        for proc in cluster.procs.values():
            try:
                cluster.bench_cgroup.add(proc.pid)
            except OSError:
                pass


def teardown(cluster, discard: bool = False) -> None:
    """Stop a benchmark cluster fast: SIGKILL every daemon at once (its state is thrown away), then
    LocalCluster.stop() kills leftover jobs. A graceful stop costs ~4 s per node, one node after the
    other (bench/README.md). The files stay until the end of the run unless discard (big spools)."""
    for proc in cluster.procs.values():
        if proc.poll() is None:
            proc.kill()
    for proc in cluster.procs.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    cluster.stop()
    if getattr(cluster, "bench_cgroup", None) is not None:
        cluster.bench_cgroup.remove()
    if discard:
        shutil.rmtree(cluster.root, ignore_errors=True)
        for spec in cluster.node_specs.values():
            if "spool" in spec:
                shutil.rmtree(spec["spool"], ignore_errors=True)


def master_state_dir(cluster) -> str:
    """Where the master daemon keeps its store: <spool>/master, spool being <root>/master (LocalCluster)."""
    return os.path.join(cluster.root, "master", "master")


# ---- jobs ------------------------------------------------------------------------------------------

def job_spec(cmd=("true",)) -> dict:
    """What `grun CMD` submits (grun.client.job_spec, which grun.running.cli_spec calls), so the API paths
    carry the same payload."""
    from grun.client import default_env
    return {"cmd": list(cmd), "shell": False, "cwd": "/tmp", "env": default_env(),
            "user": getpass.getuser(), "uid": os.getuid(), "gid": os.getgid()}


def fill_queue(client, count: int, spec: dict | None = None) -> list[float]:
    """Submit `count` copies of a job through master.submit_many, 2,000 a call; each call's seconds."""
    spec = spec or job_spec()
    took = []
    for done in range(0, count, 2000):
        batch = [spec] * min(2000, count - done)
        t0 = time.perf_counter()
        client.call("submit_many", batch)
        took.append(time.perf_counter() - t0)
    return took


def wait_done(client, ids: list[int], timeout: float) -> dict[int, dict]:
    """Wait until every job in ids has finished and return their records, cheaply for the master:
    block on one job at a time (the newest pending one; jobs finish roughly in order), then sweep
    the rest once. Not master.wait(all ids): it re-scans every id on every record of any of them,
    O(N^2) in the master, which would bill the benchmark's own waiting to grun."""
    deadline = time.monotonic() + timeout
    pending, out = [int(i) for i in ids], {}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs not finished after {timeout:.0f} s")
        if not client.call("wait", [pending[-1]], min(left, 30.0)):
            continue
        for i in range(0, len(pending), 5000):
            got = client.call("wait", pending[i:i + 5000], 0)
            out.update({int(k): v for k, v in got.items()})
        pending = [i for i in pending if i not in out]
    return out


def job_phases(records: list[dict]) -> dict:
    """Medians of the steps of each job's life, from the master's records (all on this machine's clock)."""
    def med(a, b):
        vals = [r[b] - r[a] for r in records if r.get(a) and r.get(b)]
        return round(statistics.median(vals) * 1000, 2) if vals else None
    return {"submit_to_dispatch_ms": med("submit_time", "dispatch_time"),
            "dispatch_to_start_ms": med("dispatch_time", "start_time"),
            "start_to_master_finish_ms": med("start_time", "end_time")}
