#!/usr/bin/env python3
"""grun's benchmark harness: real daemons on 127.0.0.1, medians of several runs, the reference next to
each figure, a table on stdout and the details in JSON.

    python bench/run.py                     # scenarios 1-5 with the default sizes (several minutes)
    python -m bench.run --tsp --slurm       # + task-spooler and Slurm (scenario 6) as peers
    python bench/run.py --only 1,2 --repeat 5 --json out.json
    python bench/run.py --smoke             # tiny sizes, one repeat: checks that the harness works

Scenarios (numbers as in issue 5):
  1 throughput  N trivial jobs (`true`) through (a) the Pyro5 API with several concurrent submitter
                processes, one connection each, (b) one master.submit_many batch, (c) a loop of
                `grun --nowait true`; jobs/s from the first submit to the last completion, and
                submit-only jobs/s. References: spawning /bin/true from Python (sequential, 2-way) and,
                with --tsp, Debian's task-spooler.
  2 latency     `grun true` / `grun hostname` p50/p90, where the time goes (from the job records), and
                the CLI's import time (`python -X importtime -m grun.cli --version`).
  3 scale       (--only 3) a master with 1,000 and 10,000 simulated nodes (bench/sim_nodes.py: many node
                actors per process, jobs run by a timer) and 100,000 queued jobs: dispatch rate, time
                to register, master CPU per job and RSS, and the master's CPU for heartbeats alone.
  4 history     per-job cost with 0 vs H finished jobs in history (the history is written straight into
                the master's store with grun.store.Store before the master starts); master restart time
                with Q queued jobs (queued through master.submit_many with no node registered).
  5 streaming   a job writing 1 GiB (10 GiB with --big) to stdout, received by `grun` and piped to
                `cat > /dev/null`, next to a raw pipe `head -c 1G /dev/zero | cat > /dev/null`.
  6 slurm       (--slurm) the same N jobs through `sbatch --wrap true` (loop), `sbatch --array`, and
                `srun true` latency, on ../shared/anchors/slurm/setup.sh's Slurm; ratios grun/Slurm.

Each scenario starts its own cluster (tests/cluster.py's LocalCluster) and stops it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "tests")):  # tests/cluster.py: the clusters tests use too
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil

THIS = os.path.abspath(__file__)
SLURM_DIR = os.path.abspath(os.path.join(REPO, "..", "shared", "anchors", "slurm"))
_BIN_GRUN = os.path.join(os.path.dirname(sys.executable), "grun")
# The console script next to this interpreter (what people type), not a pyenv shim in front of it.
GRUN = [_BIN_GRUN] if os.access(_BIN_GRUN, os.X_OK) else [sys.executable, "-m", "grun.cli"]
GiB = 1 << 30

TARGETS = {
    "throughput": "≥ 500 jobs/s, ≥ 4x Slurm",
    "latency": "p50 ≤ 60 ms",
    "stream": "≥ 1000 MB/s",
    "history": "within 10% of empty",
    "restart": "≤ 3 s",
}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- results -----------------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.rows: list[dict] = []
        self.details: dict[str, object] = {}

    def add(self, scenario: str, name: str, runs, unit: str, target: str = "", note: str = "",
            value=None) -> dict:
        runs = [r for r in (runs if isinstance(runs, (list, tuple)) else [runs]) if r is not None]
        if value is None and runs:
            value = statistics.median(runs)
        row = {"scenario": scenario, "name": name, "value": value, "unit": unit, "runs": runs,
               "target": target, "note": note}
        self.rows.append(row)
        return row

    def find(self, scenario: str, prefix: str):
        for row in self.rows:
            if row["scenario"] == scenario and row["name"].startswith(prefix) and row["value"] is not None:
                return row
        return None


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def render(results: Results, machine: dict) -> str:
    lines = [f"grun benchmark  {machine['date']}  host {machine['hostname']}: {machine['cores']} cores "
             f"({machine['cpu_model']}), {machine['memory_gib']:.1f} GiB, Python {machine['python']}, "
             f"{machine['kernel']}",
             f"grun {machine['grun_version']} @ {machine['git_commit']}  repeat={machine['repeat']}"
             f"{'  SMOKE' if machine.get('smoke') else ''}  (each figure: median of the runs shown)", ""]
    head = ["scenario", "measurement", "median", "unit", "runs", "target / reference", "note"]
    cells = [head]
    for r in results.rows:
        runs = "[" + ", ".join(fmt(x) for x in r["runs"]) + "]" if len(r["runs"]) > 1 else ""
        cells.append([r["scenario"], r["name"], fmt(r["value"]), r["unit"], runs, r["target"], r["note"]])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    for c in cells:
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)) + "  " + c[-1])
        if c is head:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    return "\n".join(line.rstrip() for line in lines)


# ---- the machine ---------------------------------------------------------------------------------

def machine_info(args) -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    import grun
    measured = getattr(args, "measured", None) or f"working tree at {commit}"
    commit = measured
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "hostname": socket.gethostname(), "cores": os.cpu_count(), "cpu_model": model,
            "memory_gib": psutil.virtual_memory().total / GiB, "python": platform.python_version(),
            "kernel": f"{platform.system()} {platform.release()}", "platform": platform.platform(),
            "grun_version": grun.__version__, "git_commit": commit, "grun_cli": " ".join(GRUN),
            "repeat": args.repeat, "smoke": args.smoke}


def busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy, busy + v[3] + v[4]


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_pct(interval: float = 0.5) -> float:
    a = busy_ticks()
    time.sleep(interval)
    b = busy_ticks()
    total = b[1] - a[1]
    return 100.0 * (b[0] - a[0]) / total if total > 0 else 0.0


def wait_idle(max_wait: float) -> str:
    """Other work on a shared machine skews timings: wait (bounded) for < 15 % busy; '' when idle."""
    if max_wait <= 0:
        return ""
    deadline = time.monotonic() + max_wait
    while True:
        pct = machine_busy_pct()
        if pct < 15:
            return ""
        if time.monotonic() > deadline:
            say(f"machine still {pct:.0f}% busy; measuring anyway")
            return f"bg-busy-{pct:.0f}%"


class CpuGroup:
    """A cgroup-v1 cpuacct group holding one cluster's daemons and, by inheritance, their fork servers,
    job supervisors and jobs: the only way to count the CPU of the short-lived supervisor processes
    (the fork server ignores SIGCHLD, so their time reaches nobody's rusage). None when unavailable."""

    ROOT = "/sys/fs/cgroup/cpuacct"
    _count = 0

    def __init__(self):
        CpuGroup._count += 1
        self.path = os.path.join(self.ROOT, f"grun-bench-{os.getpid()}-{CpuGroup._count}")
        os.mkdir(self.path)

    @classmethod
    def create(cls):
        if not os.access(os.path.join(cls.ROOT, "cgroup.procs"), os.W_OK):
            return None
        try:
            return cls()
        except OSError:
            return None

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def usage(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def remove(self) -> None:
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # dying processes leave the group a moment later


def _own_cpu() -> tuple[float, float]:
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class CpuMeter:
    """CPU seconds over an interval: the cluster's daemons (psutil), the whole cluster with its
    supervisors and jobs (cgroup), the clients this process started and waited for (rusage), the
    whole machine (/proc/stat), and what is left: other people's work on a shared machine."""

    def __init__(self, cluster):
        self.cgroup = getattr(cluster, "bench_cgroup", None)
        self.procs = {}
        for name, p in cluster.procs.items():
            try:
                self.procs[name] = psutil.Process(p.pid)
            except psutil.Error:
                pass
        self.start = self._sample()

    def _sample(self) -> dict:
        me, kids = _own_cpu()
        out = {"machine": busy_ticks()[0] / TICK, "forkservers": 0.0, "bench": me, "clients": kids,
               "cluster": self.cgroup.usage() if self.cgroup else None, "daemons": {}}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out["daemons"][name] = t.user + t.system
                for child in p.children():
                    if "grun.spawner" in " ".join(child.cmdline()):
                        ct = child.cpu_times()
                        out["forkservers"] += ct.user + ct.system
            except psutil.Error:
                pass
        return out

    def stop(self) -> dict:
        a, b = self.start, self._sample()
        d = {k: b[k] - a[k] for k in ("machine", "forkservers", "bench", "clients")}
        daemons = {k: b["daemons"].get(k, 0.0) - a["daemons"].get(k, 0.0) for k in b["daemons"]}
        out = {"master": daemons.get("master", 0.0),
               "node_daemons": sum(v for k, v in daemons.items() if k != "master"),
               "forkservers": d["forkservers"], "clients": d["clients"], "bench": d["bench"],
               "machine": d["machine"], "cluster": None, "supervisors_and_jobs": None, "foreign": None}
        if a["cluster"] is not None:
            out["cluster"] = b["cluster"] - a["cluster"]
            out["supervisors_and_jobs"] = out["cluster"] - out["master"] - out["node_daemons"] - out["forkservers"]
            out["foreign"] = max(0.0, out["machine"] - out["cluster"] - out["clients"] - out["bench"])
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def cpu_note(cpus: list[dict], n: int) -> str:
    """'per job: master 1.1, node daemons 3.2, ...' in ms, medians over runs."""
    def med(key):
        vals = [c[key] for c in cpus if c.get(key) is not None]
        return statistics.median(vals) * 1000 / n if vals else None
    parts = [f"{label} {fmt(med(key))}" for key, label in (
        ("master", "master"), ("node_daemons", "node daemons"), ("forkservers", "fork servers"),
        ("supervisors_and_jobs", "supervisors+jobs"), ("clients", "clients"))
        if med(key) is not None]
    return "CPU ms/job: " + ", ".join(parts)


def other_load(cpus: list[dict], walls: list[float]) -> str:
    """Other people's work during the runs, in % of one core: '' when negligible (< 10 %)."""
    pct = [100 * c["foreign"] / w for c, w in zip(cpus, walls) if c.get("foreign") is not None and w > 0]
    if not pct or statistics.median(pct) < 10:
        return ""
    return f"OTHER LOAD {statistics.median(pct):.0f}% of a core (max {max(pct):.0f}%)"


def rss_mb(cluster, name: str) -> float | None:
    try:
        return psutil.Process(cluster.procs[name].pid).memory_info().rss / 1e6
    except (KeyError, psutil.Error):
        return None


def xrun(cmd, timeout: float, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run without its timeout polling: run(timeout=...) waits by polling with sleeps of up
    to 50 ms, which added 20-40 ms to every timed 40-100 ms command. A timer kills the command
    instead, and the wait is a blocking waitpid."""
    import threading
    capture = kwargs.pop("capture_output", False)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    with subprocess.Popen(cmd, **kwargs) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            out, err = proc.communicate()
        finally:
            timer.cancel()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


# ---- clusters and jobs ---------------------------------------------------------------------------

def job_spec(cmd=("true",)) -> dict:
    """What `grun CMD` submits (grun.cli.run_job), so the API paths carry the same payload."""
    from grun.client import default_env
    return {"cmd": list(cmd), "shell": False, "cwd": "/tmp", "env": default_env(),
            "user": getpass.getuser(), "uid": os.getuid(), "gid": os.getgid()}


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
    if "dir" in _SESSION:
        path = _SESSION.pop("dir")
        shutil.rmtree(path, ignore_errors=True)
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
    return LocalCluster(nodes=specs, root=root, master_extra=dict(level))


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


def phases(records: list[dict]) -> dict:
    """Medians of the steps of each job's life, from the master's records (all on this machine's clock)."""
    def med(a, b):
        vals = [r[b] - r[a] for r in records if r.get(a) and r.get(b)]
        return round(statistics.median(vals) * 1000, 2) if vals else None
    return {"submit_to_dispatch_ms": med("submit_time", "dispatch_time"),
            "dispatch_to_start_ms": med("dispatch_time", "start_time"),
            "start_to_master_finish_ms": med("start_time", "end_time")}


def spawn_children(mode: str, counts: list[int], extra: list[str]) -> list[subprocess.Popen]:
    """Helper processes that get ready, wait for 'go' on stdin, work, and print one JSON line."""
    procs = [subprocess.Popen([sys.executable, THIS, mode, str(c), *extra], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for c in counts]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            for q in procs:
                q.kill()
            raise RuntimeError(f"{mode} helper did not start: {line!r}")
    return procs


def go_and_collect(procs: list[subprocess.Popen]) -> tuple[float, list[dict]]:
    t0 = time.time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"helper failed with code {p.returncode}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return t0, outs


def _helper_submitter(count: int, host: str, port: str) -> None:
    from grun.client import Client
    client = Client(host, int(port))
    client.call("ping")
    spec = job_spec()
    print("ready", flush=True)
    sys.stdin.readline()
    ids = [client.submit(spec) for _ in range(count)]
    print(json.dumps({"ids": ids, "end": time.time()}), flush=True)


def _helper_spawner(count: int) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(count):
        subprocess.run(["/bin/true"])
    print(json.dumps({"end": time.time()}), flush=True)


# ---- scenario 1: throughput ----------------------------------------------------------------------

def throughput_run(args, mode: str, n: int) -> dict:
    cluster = start_cluster(args)
    try:
        client = cluster.client()
        note = wait_idle(args.idle_wait)
        if mode == "api":
            k = max(1, min(args.submitters, n))
            counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
            procs = spawn_children("_submitter", counts, ["127.0.0.1", str(cluster.port)])
            meter = CpuMeter(cluster)
            t0, outs = go_and_collect(procs)
            ids = [i for o in outs for i in o["ids"]]
            t_sub = max(o["end"] for o in outs)
        elif mode == "batch":
            specs = [job_spec() for _ in range(n)]
            meter = CpuMeter(cluster)
            t0 = time.time()
            ids = client.call("submit_many", specs)
            t_sub = time.time()
        elif mode == "cli":
            meter = CpuMeter(cluster)
            t0, ids = time.time(), []
            for _ in range(n):
                r = xrun(GRUN + ["--nowait", "true"], env=cluster.env, cwd="/tmp",
                                   capture_output=True, text=True, timeout=60)
                m = re.search(r"Job_ID: (\d+)", r.stdout)
                if r.returncode != 0 or not m:
                    raise RuntimeError(f"grun --nowait failed ({r.returncode}): {r.stderr.strip()[-300:]}")
                ids.append(int(m.group(1)))
            t_sub = time.time()
        elif mode == "array":
            meter = CpuMeter(cluster)
            t0 = time.time()
            r = xrun(GRUN + ["--nowait", "--array", f"1-{n}", "true"], env=cluster.env, cwd="/tmp",
                     capture_output=True, text=True, timeout=120)
            t_sub = time.time()
            ids = [int(i) for i in re.findall(r"Job_ID: (\d+)", r.stdout)]
            if r.returncode != 0 or len(ids) != n:
                raise RuntimeError(f"grun --array failed ({r.returncode}, {len(ids)} ids): {r.stderr.strip()[-300:]}")
        else:
            raise ValueError(mode)
        records = wait_done(client, ids, timeout=max(60.0, n / 10))
        t_seen = time.time()
        cpu = meter.stop()
        ends = [r["end_time"] for r in records.values() if r.get("end_time")]
        t_last = max(ends) if ends else t_seen
        bad = sum(1 for r in records.values() if r.get("state") != "done")
        out = {"mode": mode, "n": n, "submit_s": round(t_sub - t0, 4), "total_s": round(t_last - t0, 4),
               "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_last - t0), "not_done": bad,
               "cpu_s": cpu, "master_cpu_ms_per_job": 1000 * cpu["master"] / n,
               "cluster_cpu_ms_per_job": 1000 * cpu["cluster"] / n if cpu["cluster"] is not None else None,
               "machine_cpu_ms_per_job": 1000 * cpu["machine"] / n, "master_rss_mb": rss_mb(cluster, "master"),
               "phases": phases(list(records.values())), "note": note}
        say(f"  {mode} n={n}: submit {out['submit_per_s']:.0f}/s, done {out['done_per_s']:.0f}/s, "
            f"cpu-s: master {cpu['master']:.2f}, cluster {cpu['cluster']}, clients {cpu['clients']:.2f}, "
            f"foreign {cpu['foreign']} {note}")
        return out
    finally:
        teardown(cluster)


def raw_spawn(n: int, workers: int) -> float:
    if workers == 1:
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(["/bin/true"])
        return n / (time.perf_counter() - t0)
    procs = spawn_children("_spawner", [n // workers] * workers, [])
    t0, outs = go_and_collect(procs)
    return (n // workers * workers) / (max(o["end"] for o in outs) - t0)


def tsp_run(n: int, slots: int = 2) -> dict:
    tmp = tempfile.mkdtemp(prefix="grun-bench-tsp-")
    env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "socket"), TS_MAXFINISHED=str(2 * n + 10),
               TS_MAXCONN=str(2 * n + 100), TMPDIR=tmp)
    try:
        subprocess.run(["tsp", "-S", str(slots)], env=env, capture_output=True, timeout=10)
        t0 = time.time()
        for _ in range(n):
            xrun(["tsp", "-n", "true"], env=env, stdout=subprocess.DEVNULL, timeout=30, check=True)
        t_sub = time.time()
        deadline = time.monotonic() + max(60.0, n / 10)
        while time.monotonic() < deadline:
            listing = xrun(["tsp", "-l"], env=env, capture_output=True, text=True, timeout=20).stdout
            if not re.search(r" (queued|running|allocating) ", listing):
                break
            time.sleep(0.05)
        t_end = time.time()
        return {"n": n, "slots": slots, "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_end - t0)}
    finally:
        subprocess.run(["tsp", "-K"], env=env, capture_output=True, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def scenario_throughput(args, res: Results) -> None:
    n, n_cli, R = args.n, args.n_cli, args.repeat
    shape = f"{args.nodes} nodes x {args.node_cpus} cpus"
    detail: dict = {"n": n, "n_cli": n_cli, "nodes": args.nodes, "node_cpus": args.node_cpus,
                    "submitters": args.submitters, "runs": {}}
    labels = {"api": f"API, {args.submitters} submitter processes",
              "batch": "API, one submit_many batch",
              "cli": "CLI loop `grun --nowait true`",
              "array": "CLI `grun --nowait --array 1-N true`"}
    for mode in args.modes:
        count = n_cli if mode == "cli" else n
        say(f"scenario 1: {labels[mode]}, N={count}, {shape}")
        runs = []
        for _ in range(R):
            try:
                runs.append(throughput_run(args, mode, count))
            except Exception as exc:
                say(f"  {mode} run failed: {exc}")
                traceback.print_exc(file=sys.stderr)
                runs.append({"mode": mode, "error": str(exc)})
        detail["runs"][mode] = runs
        ok = [r for r in runs if "error" not in r]
        notes = sorted({r["note"] for r in ok if r.get("note")} | {f"{r['not_done']} not done" for r in ok if r["not_done"]}
                       | ({"failed runs"} if len(ok) < len(runs) else set()))
        load = other_load([r["cpu_s"] for r in ok], [r["total_s"] for r in ok])
        if load:
            notes.append(load)
        res.add("1 throughput", f"{labels[mode]}, N={count}: submit->last done", [r["done_per_s"] for r in ok],
                "jobs/s", TARGETS["throughput"], "; ".join(notes))
        res.add("1 throughput", f"{labels[mode]}: submit only", [r["submit_per_s"] for r in ok], "jobs/s")
        if ok:
            ph = {k: statistics.median([r["phases"][k] for r in ok if r["phases"][k] is not None] or [0])
                  for k in ok[0]["phases"]}
            cl = [r["cluster_cpu_ms_per_job"] for r in ok if r["cluster_cpu_ms_per_job"] is not None]
            res.add("1 throughput", f"{labels[mode]}: cluster CPU per job (master+nodes+supervisors+jobs)",
                    cl, "ms", "", cpu_note([r["cpu_s"] for r in ok], count))
            res.add("1 throughput", f"{labels[mode]}: master CPU per job", [r["master_cpu_ms_per_job"] for r in ok],
                    "ms", "", "job phases, median ms: " + ", ".join(f"{k.replace('_ms', '')} {fmt(v)}"
                                                                     for k, v in ph.items()))
    say("scenario 1: references (spawning /bin/true from Python)")
    nraw = args.n_raw
    seq = [raw_spawn(nraw, 1) for _ in range(R)]
    par = [raw_spawn(nraw, 2) for _ in range(R)]
    res.add("1 throughput", f"reference: Python spawns /bin/true, sequential, N={nraw}", seq, "jobs/s",
            "DESIGN: 1,530/s")
    res.add("1 throughput", f"reference: Python spawns /bin/true, 2 processes, N={nraw}", par, "jobs/s",
            "DESIGN: 2,970/s")
    detail["raw"] = {"sequential": seq, "two_way": par}
    if args.tsp:
        if shutil.which("tsp") is None:
            msg = "task-spooler not installed: apt-get install -y task-spooler"
            say(f"scenario 1: --tsp skipped: {msg}")
            res.add("1 throughput", "reference: task-spooler (tsp -n true loop)", [], "jobs/s", "", msg)
        else:
            say(f"scenario 1: task-spooler, 2 slots, N={n}")
            runs = [tsp_run(n) for _ in range(R)]
            detail["tsp"] = runs
            res.add("1 throughput", f"reference: task-spooler `tsp -n true` loop, 2 slots, N={n}",
                    [r["done_per_s"] for r in runs], "jobs/s", "DESIGN: 490/s",
                    f"submit only {fmt(statistics.median([r['submit_per_s'] for r in runs]))}/s")
    res.details["throughput"] = detail


# ---- scenario 2: latency ---------------------------------------------------------------------------

def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def timed(cmd: list[str], env=None, runs: int = 10) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        xrun(cmd, env=env, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        out.append(time.perf_counter() - t0)
    return out


def importtime(argv: list[str]) -> dict:
    """`python -X importtime ...`: total, and self time summed by top-level package."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                       cwd="/tmp", timeout=60)
    total, by_pkg, mods = 0, {}, []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)
        if indent == 1:
            total += cum_us
        pkg = name.split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0) + self_us
        mods.append((name, self_us, cum_us))
    return {"total_ms": total / 1000, "by_package_ms": {k: v / 1000 for k, v in by_pkg.items()},
            "top_cumulative_ms": [(n, c / 1000) for n, _, c in sorted(mods, key=lambda x: -x[2])[:12]]}


def importtime_median(argv: list[str], runs: int) -> dict:
    samples = [importtime(argv) for _ in range(runs)]
    pkgs = {k for s in samples for k in s["by_package_ms"]}
    by_pkg = {k: statistics.median([s["by_package_ms"].get(k, 0.0) for s in samples]) for k in pkgs}
    by_pkg = dict(sorted(by_pkg.items(), key=lambda kv: -kv[1]))
    return {"runs_total_ms": [s["total_ms"] for s in samples], "by_package_ms": by_pkg,
            "top_cumulative_ms": samples[-1]["top_cumulative_ms"]}


def latency_series(cluster, cmd: list[str], runs: int) -> dict:
    from grun.client import Client
    client = Client("127.0.0.1", cluster.port)
    starts, walls = [], []
    meter, w0 = CpuMeter(cluster), time.perf_counter()
    for _ in range(runs):
        t0 = time.time()
        p0 = time.perf_counter()
        r = xrun(GRUN + cmd, env=cluster.env, cwd="/tmp", capture_output=True, timeout=60)
        walls.append(time.perf_counter() - p0)
        starts.append((t0, time.time()))
        if r.returncode != 0:
            raise RuntimeError(f"grun {' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-300:]}")
    cpu, wall = meter.stop(), time.perf_counter() - w0
    hist = sorted((j for j in client.history(runs + 50) if j.get("cmd") == cmd), key=lambda j: j["id"])[-runs:]
    steps = []
    for (t0, t1), job in zip(starts, hist):
        st = job.get("start_time")
        steps.append({"launch_to_submit": job["submit_time"] - t0,
                      "submit_to_dispatch": job["dispatch_time"] - job["submit_time"],
                      "dispatch_to_start": st - job["dispatch_time"],
                      "start_to_client_exit": t1 - st,
                      "start_to_master_finish": job["end_time"] - st})
    breakdown = {k: round(statistics.median([s[k] for s in steps]) * 1000, 2) for k in steps[0]} if steps else {}
    return {"walls_ms": [w * 1000 for w in walls], "p50_ms": _pct(walls, 50) * 1000,
            "p90_ms": _pct(walls, 90) * 1000, "breakdown_ms": breakdown, "cpu_s": cpu, "wall_s": wall}


def scenario_latency(args, res: Results) -> None:
    R, runs = args.repeat, args.latency_runs
    detail: dict = {"runs_per_series": runs, "series": {}}
    cluster = start_cluster(args)
    try:
        # the first job on a node starts its fork server (a fresh Python, ~50 ms): not the steady state
        subprocess.run(GRUN + ["true"], env=cluster.env, cwd="/tmp", capture_output=True, timeout=60)
        for cmd in (["true"], ["hostname"]):
            say(f"scenario 2: `grun {' '.join(cmd)}` x {runs}, {R} series")
            series = []
            for _ in range(R):
                wait_idle(args.idle_wait)
                series.append(latency_series(cluster, cmd, runs))
            detail["series"][" ".join(cmd)] = series
            bd = {k: statistics.median([s["breakdown_ms"][k] for s in series]) for k in series[0]["breakdown_ms"]}
            res.add("2 latency", f"`grun {' '.join(cmd)}` p50 ({runs} runs)", [s["p50_ms"] for s in series], "ms",
                    TARGETS["latency"] + "; srun 30 ms",
                    "; ".join(x for x in ("median ms: " + ", ".join(f"{k} {fmt(v)}" for k, v in bd.items()),
                                          other_load([s["cpu_s"] for s in series], [s["wall_s"] for s in series])) if x))
            res.add("2 latency", f"`grun {' '.join(cmd)}` p90 ({runs} runs)", [s["p90_ms"] for s in series], "ms")
    finally:
        teardown(cluster)
    say("scenario 2: baselines and import time")
    nb = max(5, runs // 2)
    base = {"python -S -c pass (no site)": [sys.executable, "-S", "-c", "pass"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "grun --version": GRUN + ["--version"],
            # what `grun CMD` imports since the lean client path (no Pyro5, psutil, yaml, grun.daemon)
            "python -c 'import grun.cli, grun.client, grun.stream, msgpack'":
                [sys.executable, "-c", "import grun.cli, grun.client, grun.stream, msgpack"]}
    for label, argv in base.items():
        vals = [statistics.median(timed(argv, runs=nb)) * 1000 for _ in range(R)]
        detail.setdefault("baselines_ms", {})[label] = vals
        res.add("2 latency", f"baseline: {label}", vals, "ms", "", "process wall time, no cluster")
    for label, argv in (("-c pass (site and .pth files)", ["-c", "pass"]),
                        ("-m grun.cli --version", ["-m", "grun.cli", "--version"]),
                        ("grun true's imports (cli, client, stream, msgpack)",
                         ["-c", "import grun.cli, grun.client, grun.stream, msgpack"])):
        it = importtime_median(argv, max(3, R))
        detail.setdefault("importtime", {})[label] = it
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(it["by_package_ms"].items())[:6])
        res.add("2 latency", f"python -X importtime {label}: total", it["runs_total_ms"], "ms", "",
                f"self ms by package: {top}")
    res.details["latency"] = detail


# ---- scenario 3: scale (simulated nodes) ------------------------------------------------------------

SIM = os.path.join(os.path.dirname(THIS), "sim_nodes.py")


class SimFleet:
    """The processes of bench/sim_nodes.py hosting `nodes` simulated nodes against one master."""

    def __init__(self, args, port: int, nodes: int, procs: int):
        per = [nodes // procs + (1 if i < nodes % procs else 0) for i in range(procs)]
        self.procs = []
        for i, count in enumerate(per):
            self.procs.append(subprocess.Popen(
                [sys.executable, SIM, "--master", f"127.0.0.1:{port}", "--nodes", str(count), "--prefix", f"s{i}",
                 "--cpus", str(args.scale_cpus), "--duration", str(args.scale_duration),
                 "--heartbeat", str(args.scale_heartbeat)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True))

    def wait_ready(self, timeout: float) -> list[dict]:
        import selectors
        sel = selectors.DefaultSelector()
        for p in self.procs:
            sel.register(p.stdout, selectors.EVENT_READ, p)
        out, deadline = {}, time.monotonic() + timeout
        while len(out) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.procs) - len(out)} simulator processes not registered after {timeout:.0f} s")
            for key, _ in sel.select(min(left, 1.0)):
                line = key.fileobj.readline()
                if not line:
                    raise RuntimeError("a node simulator exited before its nodes registered")
                out[key.data.pid] = dict(json.loads(line), at=time.time())
                sel.unregister(key.fileobj)
        sel.close()
        return list(out.values())

    def stats(self) -> dict:
        total: dict = {"stats": {}, "cpu_s": 0.0, "first_start": None, "procs": []}
        for p in self.procs:
            p.stdin.write("stats\n")
            p.stdin.flush()
        for p in self.procs:
            st = json.loads(p.stdout.readline())
            total["procs"].append(st)
            total["cpu_s"] += st["cpu_s"]
            for k, v in st["stats"].items():
                total["stats"][k] = total["stats"].get(k, 0) + v
        return total

    def stop(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _proc_sample(proc) -> dict:
    t = proc.cpu_times()
    return {"cpu": t.user + t.system, "rss_mb": proc.memory_info().rss / 1e6, "threads": proc.num_threads(),
            "fds": proc.num_fds(), "at": time.time()}


def _drain(fleet, master, queue: int, base: int, t0: float, peak: dict, timeout: float) -> list:
    """Poll the simulators until `base + queue` jobs are acknowledged; the (seconds, done) series."""
    series, deadline = [], time.monotonic() + timeout
    while True:
        done = fleet.stats()["stats"].get("acked", 0) - base
        series.append((time.time() - t0, done))
        try:
            peak["rss_mb"] = max(peak["rss_mb"], master.memory_info().rss / 1e6)
        except psutil.Error:
            pass
        if done >= queue:
            return series
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {queue} jobs done")
        time.sleep(0.25)


def _steady(series: list, queue: int) -> float | None:
    """Jobs/s between 10 % and 90 % done (the ramp at each end left out)."""
    lo = next((t, a) for t, a in series if a >= queue * 0.1)
    hi = next((t, a) for t, a in series if a >= queue * 0.9)
    return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None


def scale_run(args, nodes: int, queue: int) -> dict:
    """Four phases on one master: (a) Q jobs queued with no node; (b) the simulated nodes start,
    register and drain that backlog; (c) heartbeats only; (d) Q more jobs submitted in batches of
    2,000 to the registered nodes: the dispatch rate."""
    procs = args.scale_procs or max(1, min(4, -(-nodes // 2500)))
    cluster = start_cluster(args, master_only=True)
    fleet = None
    timeout = max(300.0, queue / 100)
    try:
        master = psutil.Process(cluster.procs["master"].pid)
        client = cluster.client()
        spec = job_spec()
        batches = [[spec] * min(2000, queue - i) for i in range(0, queue, 2000)]
        for batch in batches:
            client.call("submit_many", batch)
        time.sleep(1.0)  # let a snapshot the fill made due finish (it is not what is measured)
        queued = _proc_sample(master)
        note = wait_idle(args.idle_wait)
        # (b) registration with a backlog
        peak = {"rss_mb": queued["rss_mb"]}
        t0 = time.time()
        fleet = SimFleet(args, cluster.port, nodes, procs)
        ready = fleet.wait_ready(timeout=max(120.0, nodes / 20))
        registered_at = max(r["at"] for r in ready)
        backlog = _drain(fleet, master, queue, 0, t0, peak, timeout)
        drained = _proc_sample(master)
        # (c) heartbeats only
        time.sleep(1.0)
        idle0, sim0 = _proc_sample(master), fleet.stats()
        time.sleep(args.scale_idle)
        idle1, sim1 = _proc_sample(master), fleet.stats()
        # (d) dispatch to registered nodes
        say(f"  {nodes:,} nodes registered, backlog done, heartbeats measured; now {queue:,} jobs to them")
        t1 = time.time()
        for batch in batches:
            client.call("submit_many", batch)
        submitted = time.time() - t1
        series = _drain(fleet, master, queue, sim1["stats"].get("acked", 0), t1, peak, timeout)
        done, sims_done = _proc_sample(master), fleet.stats()
    finally:
        if fleet is not None:
            fleet.stop()
        teardown(cluster, discard=True)
    beats = sim1["stats"].get("heartbeats", 0) - sim0["stats"].get("heartbeats", 0)
    idle_cpu, idle_s = idle1["cpu"] - idle0["cpu"], idle1["at"] - idle0["at"]
    wall = series[-1][0]
    return {"nodes": nodes, "queue": queue, "sim_procs": procs, "register_s": registered_at - t0,
            "backlog_per_s": queue / backlog[-1][0],
            "backlog_master_cpu_ms_per_job": (drained["cpu"] - queued["cpu"]) * 1000 / queue,
            "done_per_s": queue / wall, "steady_per_s": _steady(series, queue), "wall_s": wall,
            "submit_s": submitted,
            "master_cpu_ms_per_job": (done["cpu"] - idle1["cpu"]) * 1000 / queue,
            "master_cpu_pct": 100 * (done["cpu"] - idle1["cpu"]) / wall,
            "sim_cpu_ms_per_job": (sims_done["cpu_s"] - sim1["cpu_s"]) * 1000 / queue,
            "rss_queued_mb": queued["rss_mb"], "rss_peak_mb": peak["rss_mb"], "rss_end_mb": done["rss_mb"],
            "rss_after_backlog_mb": drained["rss_mb"], "rss_idle_mb": idle1["rss_mb"],
            "idle_cpu_pct": 100 * idle_cpu / idle_s, "heartbeats_per_s": beats / idle_s,
            "us_per_heartbeat": idle_cpu * 1e6 / beats if beats else None,
            "master_threads": done["threads"], "master_fds": done["fds"],
            "sim_counts": sims_done["stats"], "series": series[:: max(1, len(series) // 200)],
            "backlog_series": backlog[:: max(1, len(backlog) // 200)], "note": note}


def scenario_scale(args, res: Results) -> None:
    R, Q = args.scale_repeat or args.repeat, args.scale_queue
    detail: dict = {"queue": Q, "cpus_per_node": args.scale_cpus, "job_duration_s": args.scale_duration,
                    "heartbeat_s": args.scale_heartbeat, "runs": {},
                    "how": "(a) Q jobs queued with no node; (b) bench/sim_nodes.py processes start N simulated "
                           "nodes, which register, run each job by a timer and report it, until the backlog is "
                           "done; (c) heartbeats only; (d) Q more jobs submitted (submit_many x2000) to the "
                           "registered nodes"}
    for n in args.scale_nodes:
        say(f"scenario 3: {n:,} simulated nodes x {fmt(args.scale_cpus)} cpus, {Q:,} jobs, x{R}")
        runs = []
        for _ in range(R):
            runs.append(scale_run(args, n, Q))
            r = runs[-1]
            say(f"  dispatch {r['done_per_s']:.0f} jobs/s (steady {fmt(r['steady_per_s'])}), master "
                f"{r['master_cpu_ms_per_job']:.3f} ms/job; backlog {r['backlog_per_s']:.0f} jobs/s, registered in "
                f"{r['register_s']:.1f} s; RSS {r['rss_queued_mb']:.0f}/{r['rss_peak_mb']:.0f} MB; heartbeats "
                f"{r['idle_cpu_pct']:.1f}% of a core")
        detail["runs"][str(n)] = runs
        tag = f"{n:,} nodes"

        def med(key):
            return statistics.median([r[key] for r in runs if r[key] is not None] or [0])
        notes = "; ".join(x for x in (f"steady (10-90 %) {fmt(med('steady_per_s'))} jobs/s",
                                      f"submit_many alone {fmt(Q / med('submit_s'))} jobs/s",
                                      *sorted({r["note"] for r in runs if r["note"]})) if x)
        res.add("3 scale", f"{tag}: dispatch, {Q:,} jobs submitted to registered nodes, first submit -> last done",
                [r["done_per_s"] for r in runs], "jobs/s", "≥ 2,000 jobs/s", notes)
        res.add("3 scale", f"{tag}: master CPU per job in that dispatch (submit, dispatch, start, finish, heartbeats)",
                [r["master_cpu_ms_per_job"] for r in runs], "ms", "≤ 0.5 ms: 2,000/s on one core",
                f"master {fmt(med('master_cpu_pct'))}% of a core, simulators {fmt(med('sim_cpu_ms_per_job'))} ms/job")
        res.add("3 scale", f"{tag}: backlog of {Q:,} queued, nodes start -> last done", [r["backlog_per_s"] for r in runs],
                "jobs/s", "", f"all registered after {fmt(med('register_s'))} s ({runs[0]['sim_procs']} simulator "
                f"processes); master {fmt(med('backlog_master_cpu_ms_per_job'))} ms/job incl. registrations")
        res.add("3 scale", f"{tag}: master RSS with {Q:,} queued, no node yet", [r["rss_queued_mb"] for r in runs], "MB",
                "≤ 300 MB", f"peak {fmt(med('rss_peak_mb'))} MB; after the backlog {fmt(med('rss_after_backlog_mb'))}, "
                f"at the end {fmt(med('rss_end_mb'))} MB; "
                f"{fmt(med('master_threads'))} threads, {fmt(med('master_fds'))} fds")
        res.add("3 scale", f"{tag}: heartbeat load, idle ({fmt(med('heartbeats_per_s'))} heartbeats/s)",
                [r["idle_cpu_pct"] for r in runs], "% core", "",
                f"{fmt(med('us_per_heartbeat'))} µs of master CPU per heartbeat (nodes configured for every "
                f"{fmt(args.scale_heartbeat)} s; past 2,500 nodes the master asks for less)")
    res.details["scale"] = detail


# ---- scenario 4: history growth and restart ------------------------------------------------------------

def seed_history(state_dir: str, count: int) -> float:
    """Write `count` finished jobs into the master's store (history files + a snapshot with next_id)."""
    from grun.store import Store
    t0 = time.time()
    spec = job_spec()
    base = time.time() - count * 0.002
    store = Store(state_dir)
    store.load()
    batch = []
    for i in range(1, count + 1):
        t = base + i * 0.002
        batch.append(dict(spec, id=i, cpus=1.0, memory=100, stdin=False, priority=20, token=os.urandom(12).hex(),
                          name=None, host=None, state="done", submit_time=t, attempt=1, node="n1",
                          dispatch_time=t + 0.004, start_time=t + 0.008, pid=None, exit_code=0,
                          usage={"wall": 0.001, "utime": 0.0, "stime": 0.001, "maxrss_kb": 1024,
                                 "read_blocks": 0, "write_blocks": 0}, end_time=t + 0.02, exit=0))
        if len(batch) == 10000:
            store.add_history(batch)
            store.flush()  # keeps a million-job history from sitting in memory first
            batch = []
    store.add_history(batch)
    ticket = store.begin_snapshot()
    store.write_snapshot(ticket, {"next_id": count + 1, "jobs": []})
    store.close()
    return time.time() - t0


def history_round(args, cluster, m_single: int, m_batch: int) -> dict:
    client = cluster.client()
    note = wait_idle(args.idle_wait)
    spec = job_spec()
    lat = []
    ids = []
    for _ in range(m_single):
        t0 = time.perf_counter()
        ids.append(client.submit(spec))
        lat.append(time.perf_counter() - t0)
    wait_done(client, ids, timeout=120)
    specs = [job_spec() for _ in range(m_batch)]
    meter = CpuMeter(cluster)
    t0 = time.time()
    ids = client.call("submit_many", specs)
    records = wait_done(client, ids, timeout=max(60.0, m_batch / 10))
    cpu = meter.stop()
    t_last = max(r["end_time"] for r in records.values())
    t1 = time.perf_counter()
    client.job(1)
    lookup = time.perf_counter() - t1
    return {"submit_p50_ms": statistics.median(lat) * 1000, "done_per_s": m_batch / (t_last - t0),
            "wall_s": t_last - t0,
            "master_cpu_ms_per_job": cpu["master"] * 1000 / m_batch, "lookup_job1_ms": lookup * 1000,
            "master_rss_mb": rss_mb(cluster, "master"), "cpu_s": cpu, "note": note}


def ping_until_up(port: int, timeout: float = 120.0) -> float:
    from grun.client import Client, MasterUnreachable
    client = Client("127.0.0.1", port, connect_wait=0)
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        try:
            client.call("ping", wait=0)
            return time.perf_counter() - t0
        except MasterUnreachable:
            time.sleep(0.01)
    raise TimeoutError("master did not come back")


def restart_master(cluster, sig: int) -> dict:
    t0 = time.perf_counter()
    cluster.kill("master", sig)
    stop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster._spawn("master", cluster.configs["master"])
    up = ping_until_up(cluster.port)
    return {"stop_s": stop_s, "start_s": up, "spawn_overhead_s": time.perf_counter() - t0 - up}


def scenario_history(args, res: Results) -> None:
    R, Q = args.repeat, args.queue
    levels = [0] + [h for h in args.history if h]
    m_single, m_batch = args.history_single, args.history_batch
    detail: dict = {"history": levels, "queue": Q, "how_history": "written with grun.store.Store (add_history + "
                    "a snapshot with next_id) before the master starts",
                    "how_queue": "master.submit_many in batches of 2000, no node registered", "rounds": {}}
    per = {}
    for h in levels:
        say(f"scenario 4: {h} finished jobs in history: {m_single} single submits + batch of {m_batch}, x{R}")
        cluster = None
        try:
            cluster = _cluster_with_history(args, h, detail)
            per[h] = [history_round(args, cluster, m_single, m_batch) for _ in range(R)]
        finally:
            if cluster is not None:
                teardown(cluster)
        detail["rounds"][str(h)] = per[h]
    base = per[0]
    for h in levels:
        rounds = per[h]
        tag = f"{h:,} in history"
        cpu = [r["master_cpu_ms_per_job"] for r in rounds]
        ratio = ""
        if h and base:
            ratio = (f"x{statistics.median(cpu) / statistics.median([r['master_cpu_ms_per_job'] for r in base]):.2f}"
                     " of empty")
        ratio = "; ".join(x for x in (ratio, other_load([r["cpu_s"] for r in rounds], [r["wall_s"] for r in rounds])) if x)
        res.add("4 history", f"{tag}: master CPU per job (batch of {m_batch}, submit..finish)", cpu, "ms",
                TARGETS["history"] if h else "", ratio)
        res.add("4 history", f"{tag}: batch submit->last done", [r["done_per_s"] for r in rounds], "jobs/s")
        res.add("4 history", f"{tag}: single submit round trip p50", [r["submit_p50_ms"] for r in rounds], "ms",
                "", f"{m_single} sequential Client.submit calls")
        res.add("4 history", f"{tag}: master.job(oldest id) lookup", [r["lookup_job1_ms"] for r in rounds], "ms",
                "", "not a per-job path; shows the history scan")
    # restart with Q queued
    say(f"scenario 4: master restart with {Q:,} queued jobs")
    cluster = start_cluster(args, master_only=True)
    try:
        empty = [restart_master(cluster, signal.SIGTERM)["start_s"] for _ in range(R)]
        client = cluster.client()
        spec = job_spec()
        t0 = time.perf_counter()
        done = 0
        batch_times = []
        while done < Q:
            k = min(2000, Q - done)
            tb = time.perf_counter()
            client.call("submit_many", [spec] * k)
            batch_times.append(time.perf_counter() - tb)
            done += k
        fill_s = time.perf_counter() - t0
        rss_q = rss_mb(cluster, "master")
        kill9, clean, stops = [], [], []
        for _ in range(R):
            kill9.append(restart_master(cluster, signal.SIGKILL)["start_s"])
            r = restart_master(cluster, signal.SIGTERM)
            clean.append(r["start_s"])
            stops.append(r["stop_s"])
        count = len(cluster.client().jobs())
        detail["restart"] = {"empty_s": empty, "kill9_s": kill9, "clean_s": clean, "stop_s": stops,
                             "fill_s": fill_s, "submit_many_ms": [t * 1000 for t in batch_times],
                             "queued_after": count, "master_rss_mb": rss_q}
    finally:
        teardown(cluster)
    check = "" if count == Q else f"ONLY {count} of {Q} jobs came back"
    res.add("4 history", "master start, empty state", empty, "s", "", "process start to first ping")
    res.add("4 history", f"master restart with {Q:,} queued, after SIGTERM (snapshot)", clean, "s",
            TARGETS["restart"], check or f"stop (writes snapshot) {fmt(statistics.median(stops))} s")
    res.add("4 history", f"master restart with {Q:,} queued, after kill -9 (snapshot + journal)", kill9, "s",
            TARGETS["restart"], check)
    tenth = max(1, len(batch_times) // 10)
    first, last = statistics.median(batch_times[:tenth]), statistics.median(batch_times[-tenth:])
    res.add("4 history", f"filling the queue to {Q:,} (submit_many x2000)", Q / fill_s, "jobs/s", "",
            f"a 2000-job call: {fmt(first * 1000)} ms in the first tenth, {fmt(last * 1000)} ms in the last "
            f"(medians); master RSS {fmt(rss_q)} MB = {fmt(rss_q * 1e6 / Q / 1024)} KiB per queued job")
    res.details["history"] = detail


def _cluster_with_history(args, h: int, detail: dict):
    def seed(cluster) -> None:
        if h:
            secs = seed_history(master_state_dir(cluster), h)
            detail[f"seed_{h}_s"] = secs
            say(f"  seeded {h:,} history records in {secs:.1f} s")
    return start_cluster(args, prepare=seed)


# ---- scenario 5: streaming --------------------------------------------------------------------------

def scenario_stream(args, res: Results) -> None:
    sizes = [args.stream_size] + ([10 * GiB] if args.big else [])
    detail: dict = {}
    cluster = start_cluster(args, nodes=1)
    try:
        from grun.client import Client
        client = Client("127.0.0.1", cluster.port)
        for size in sizes:
            label = f"{size / GiB:g} GiB" if size >= GiB // 4 else f"{size / 2**20:g} MiB"
            R = 1 if size > GiB else args.repeat
            say(f"scenario 5: streaming {label}, x{R}")
            raw, spool, e2e, stream, cpus, walls, dirty = [], [], [], [], [], [], []
            for _ in range(R):
                wait_idle(args.idle_wait)
                t0 = time.perf_counter()
                subprocess.run(["bash", "-c", f"head -c {size} /dev/zero | cat > /dev/null"], check=True)
                raw.append(size / (time.perf_counter() - t0) / 1e6)
                # The job's spool write slows ~3x while the kernel writes back (past ~2.3 GB dirty
                # here): each timed write starts with nothing waiting to be written back, neither the
                # previous runs' spools nor the earlier scenarios' files (sync, untimed), and the
                # row says how much was dirty all the same.
                os.sync()
                with tempfile.NamedTemporaryFile(dir=cluster.root) as f:
                    t0 = time.perf_counter()
                    subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=f, check=True)
                    spool.append(size / (time.perf_counter() - t0) / 1e6)
                cmd = " ".join(GRUN) + f" -v head -c {size} /dev/zero | cat > /dev/null"
                os.sync()
                dirty.append(_dirty_bytes())
                meter = CpuMeter(cluster)
                p0 = time.perf_counter()
                r = xrun(["bash", "-c", "set -o pipefail; " + cmd], env=cluster.env, cwd="/tmp",
                                   capture_output=True, text=True, timeout=600)
                t_end = time.time()
                wall = time.perf_counter() - p0
                cpus.append(meter.stop())
                walls.append(wall)
                m = re.search(r"job (\d+) queued", r.stderr)
                if r.returncode != 0 or not m:
                    raise RuntimeError(f"streaming job failed ({r.returncode}): {r.stderr[-300:]}")
                job = client.job(int(m.group(1)))
                e2e.append(size / wall / 1e6)
                stream.append(size / (t_end - job["start_time"]) / 1e6)
            detail[label] = {"raw_pipe": raw, "spool_write": spool, "grun_end_to_end": e2e,
                             "grun_from_job_start": stream, "cpu_s": cpus, "dirty_bytes_before": dirty}

            def med(key):
                vals = [c[key] for c in cpus if c.get(key) is not None]
                return fmt(statistics.median(vals)) if vals else "?"
            note = "; ".join(x for x in (
                f"whole command incl. CLI start {fmt(statistics.median(e2e))} MB/s",
                f"CPU s: node daemon {med('node_daemons')}, job+supervisor {med('supervisors_and_jobs')}, "
                f"client+cat {med('clients')}",
                "dirty before each run " + "/".join(f"{d / 1e9:.1f}" for d in dirty) + " GB",
                other_load(cpus, walls)) if x)
            res.add("5 streaming", f"{label}: `grun head -c {label} /dev/zero | cat >/dev/null`, from job start",
                    stream, "MB/s", TARGETS["stream"], note)
            res.add("5 streaming", f"{label}: reference raw pipe `head | cat >/dev/null`", raw, "MB/s",
                    "DESIGN: raw TCP 1,860 MB/s")
            res.add("5 streaming", f"{label}: reference `head > file` (the job's spool write alone)", spool, "MB/s")
    finally:
        teardown(cluster, discard=True)
    res.details["streaming"] = detail


def _dirty_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


# ---- scenario 6: Slurm --------------------------------------------------------------------------

def _slurm_active() -> int:
    out = xrun(["squeue", "-h", "-t", "PD,R,CG,CF,S,RQ,RS,RH", "-o", "%i"], capture_output=True,
                         text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
    return len([x for x in out.stdout.split() if x])


def _slurm_quiet(timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _slurm_active() == 0:
            states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                    timeout=20).stdout.split()
            if all(s == "idle" for s in states):
                return
        time.sleep(0.5)


CTLD_LOG = "/var/log/slurm-anchor/slurmctld.log"


def _last_done(offset: int) -> tuple[float | None, int]:
    with open(CTLD_LOG, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    stamps = re.findall(r"^\[([0-9-]+T[0-9:.]+)\] _job_complete: .* done", text, re.MULTILINE)
    if not stamps:
        return None, 0
    return _dt.datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%S.%f").timestamp(), len(stamps)


def slurm_cgroup():
    """Slurm's daemons (and the slurmstepd they fork) and munged in a cpuacct group, so that other
    people's load can be told apart from Slurm's own work, as for grun's clusters."""
    import types
    group = CpuGroup.create()
    if group is not None:
        for pattern in ("/run/slurm-anchor/slurmctld.pid", "/run/slurm-anchor/slurmd-*.pid", "/run/munge/munged.pid"):
            import glob
            for path in glob.glob(pattern):
                try:
                    with open(path) as f:
                        group.add(int(f.read().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
    return types.SimpleNamespace(procs={}, bench_cgroup=group)


def slurm_throughput(n: int, mode: str, holder) -> dict:
    _slurm_quiet()
    offset = os.path.getsize(CTLD_LOG)
    meter = CpuMeter(holder)
    t0 = time.time()
    if mode == "loop":
        for _ in range(n):
            xrun(["sbatch", "-Q", "-o", "/dev/null", "--wrap", "true"], check=True,
                           stdout=subprocess.DEVNULL, timeout=30)
    else:
        xrun(["sbatch", "-Q", "-o", "/dev/null", f"--array=1-{n}", "--wrap", "true"], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
    t_sub = time.time()
    deadline = time.monotonic() + max(120.0, n / 5)
    note = ""
    while _slurm_active():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", "-u", getpass.getuser()], timeout=30)
            note = "TIMEOUT"
            break
        time.sleep(0.1)
    t_end = time.time()
    last, count = _last_done(offset)
    if last and count >= n:
        t_end = last
    else:
        note = (note + f" done-lines={count}, poll time used").strip()
    return {"n": n, "mode": mode, "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_end - t0), "note": note,
            "cpu_s": meter.stop(), "total_s": t_end - t0}


def scenario_slurm(args, res: Results) -> None:
    setup = os.path.join(SLURM_DIR, "setup.sh")
    stop = os.path.join(SLURM_DIR, "stop.sh")
    why = None
    if os.geteuid() != 0:
        why = "needs root (setup.sh installs and starts Slurm)"
    elif not os.access(setup, os.X_OK):
        why = f"{setup} not found"
    detail: dict = {"nodes": args.slurm_nodes}
    if why is None:
        say(f"scenario 6: starting Slurm with {args.slurm_nodes} simulated nodes ({setup})")
        env = dict(os.environ, NODES=str(args.slurm_nodes), INSTALL="1", CLEAN="1")
        r = subprocess.run(["timeout", "600", setup], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            why = f"setup.sh failed ({r.returncode}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    if why is not None:
        say(f"scenario 6 skipped: {why}")
        res.add("6 slurm", "Slurm comparison", [], "", "", f"SKIPPED: {why}")
        res.details["slurm"] = {"skipped": why}
        return
    holder = slurm_cgroup()
    try:
        n, R = args.n, args.repeat
        subprocess.run(["srun", "-n1", "true"], capture_output=True, timeout=60)  # warm-up
        walls = timed(["srun", "-n1", "true"], runs=args.srun_runs)
        srun_p50 = _pct(walls, 50) * 1000
        detail["srun_ms"] = [w * 1000 for w in walls]
        res.add("6 slurm", f"`srun -n1 true` p50 ({args.srun_runs} runs)", srun_p50, "ms", "RESULTS.md: 30 ms",
                f"p90 {fmt(_pct(walls, 90) * 1000)} ms")
        for mode, label in (("loop", f"`sbatch --wrap true` loop, N={n}"), ("array", f"`sbatch --array=1-{n}`")):
            say(f"scenario 6: {label}, x{R}")
            runs = []
            for _ in range(R):
                wait_idle(args.idle_wait)
                runs.append(slurm_throughput(n, mode, holder))
            detail[mode] = runs
            cl = [r["cpu_s"]["cluster"] * 1000 / n for r in runs if r["cpu_s"]["cluster"] is not None]
            res.add("6 slurm", f"{label}: submit->last done ({args.slurm_nodes} slurmd)",
                    [r["done_per_s"] for r in runs], "jobs/s", "RESULTS.md: 100 / 115 jobs/s (8 nodes)",
                    "; ".join(sorted({r["note"] for r in runs if r["note"]}) + [x for x in (
                        f"Slurm CPU {fmt(statistics.median(cl))} ms/job (slurmctld, slurmd, slurmstepd, munged)"
                        if cl else "", other_load([r["cpu_s"] for r in runs], [r["total_s"] for r in runs])) if x]))
        # ratios against grun, when scenario 1/2 ran in this invocation
        pairs = [("API concurrent / sbatch loop", "API, ", "`sbatch --wrap"),
                 ("submit_many batch / sbatch --array", "API, one submit_many", "`sbatch --array"),
                 ("CLI loop / sbatch loop", "CLI loop", "`sbatch --wrap"),
                 ("CLI --array / sbatch --array", "CLI `grun --nowait --array", "`sbatch --array")]
        for label, g, s in pairs:
            grow, srow = res.find("1 throughput", g), res.find("6 slurm", s)
            if grow and srow and srow["value"]:
                res.add("6 slurm", f"ratio grun/Slurm: {label}", grow["value"] / srow["value"], "x", "≥ 4x")
        lat = res.find("2 latency", "`grun true` p50")
        if lat:
            res.add("6 slurm", "ratio `grun true` p50 / `srun true` p50", lat["value"] / srun_p50, "x", "")
    finally:
        say("scenario 6: stopping Slurm (stop.sh)")
        subprocess.run(["timeout", "120", stop], capture_output=True, text=True)
        if holder.bench_cgroup is not None:
            holder.bench_cgroup.remove()
        res.details["slurm"] = detail


# ---- main -------------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.upper().rstrip("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="1,2,3,4,5", help="scenarios to run, e.g. 1,2 (default 1,2,3,4,5; 6 with --slurm)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the table shows the median (default 3)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, no tsp/slurm/big")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    ap.add_argument("--tsp", action="store_true", help="scenario 1: also run Debian's task-spooler")
    ap.add_argument("--slurm", action="store_true", help="scenario 6: Slurm via ../shared/anchors/slurm")
    ap.add_argument("--big", action="store_true", help="scenario 5: also stream 10 GiB")
    ap.add_argument("--modes", default="api,batch,cli,array",
                    help="scenario 1 submission modes (default api,batch,cli,array)")
    ap.add_argument("-n", "--n", type=int, default=1000, help="jobs per throughput run (default 1000)")
    ap.add_argument("--n-cli", type=int, default=100, help="`grun --nowait` calls per CLI run (default 100)")
    ap.add_argument("--n-raw", type=int, default=2000, help="/bin/true spawns per reference run (default 2000)")
    ap.add_argument("--submitters", type=int, default=4, help="concurrent submitter processes (default 4)")
    ap.add_argument("--nodes", type=int, default=2, help="grun nodes (default 2)")
    ap.add_argument("--node-cpus", type=int, default=8, help="cpus each grun node offers (default 8)")
    ap.add_argument("--log-level", default="info", help="daemons' log level (default info)")
    ap.add_argument("--latency-runs", type=int, default=50, help="runs per latency series (default 50)")
    ap.add_argument("--history", type=lambda text: [int(n) for n in text.split(",")], default=[100000, 1000000],
                    help="finished jobs in history, a comma list, each compared with an empty history "
                         "(default 100000,1000000)")
    ap.add_argument("--history-single", type=int, default=100, help="single submits per history round")
    ap.add_argument("--history-batch", type=int, default=1000, help="batch size per history round")
    ap.add_argument("--queue", type=int, default=100000, help="queued jobs for the restart test (default 100000)")
    ap.add_argument("--scale-nodes", default="1000,10000", help="scenario 3: simulated node counts (default 1000,10000)")
    ap.add_argument("--scale-queue", type=int, default=100000, help="scenario 3: queued jobs (default 100000)")
    ap.add_argument("--scale-cpus", type=float, default=4, help="scenario 3: cpus per simulated node (default 4)")
    ap.add_argument("--scale-duration", type=float, default=0.0, help="scenario 3: seconds a simulated job runs (default 0)")
    ap.add_argument("--scale-heartbeat", type=float, default=5.0, help="scenario 3: heartbeat interval (default 5 s, "
                    "grun's default)")
    ap.add_argument("--scale-procs", type=int, default=0, help="scenario 3: simulator processes (default: one per "
                    "2,500 nodes, 1-4)")
    ap.add_argument("--scale-idle", type=float, default=10.0, help="scenario 3: seconds of heartbeats-only load measured")
    ap.add_argument("--scale-repeat", type=int, default=0, help="scenario 3: runs per figure (default --repeat)")
    ap.add_argument("--stream-size", type=parse_size, default=GiB, help="bytes to stream (default 1G)")
    ap.add_argument("--slurm-nodes", type=int, default=8, help="simulated Slurm nodes (default 8)")
    ap.add_argument("--srun-runs", type=int, default=20, help="srun latency runs (default 20)")
    ap.add_argument("--commit", metavar="REF",
                    help="measure this commit (git archive) instead of the working tree, e.g. HEAD")
    ap.add_argument("--root", default="/var/tmp/grun-bench",
                    help="where clusters keep their state and spools (default /var/tmp/grun-bench; not /tmp)")
    ap.add_argument("--node-spool", metavar="DIR", help="put the nodes' job spools under DIR (e.g. /dev/shm)")
    ap.add_argument("--idle-wait", type=float, default=20.0,
                    help="seconds to wait for a quiet machine before each timed run (default 20)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.repeat = 1
        args.tsp = args.slurm = args.big = False
        args.n, args.n_cli, args.n_raw, args.submitters = 20, 3, 50, 2
        args.latency_runs, args.history, args.history_single, args.history_batch = 3, [300], 5, 20
        args.queue, args.stream_size, args.idle_wait = 300, 4 << 20, 0.0
        args.scale_nodes, args.scale_queue, args.scale_idle = "50", 500, 2.0
    args.scenarios = {s.strip() for s in args.only.split(",") if s.strip()}
    args.scale_nodes = [int(x) for x in str(args.scale_nodes).split(",") if x.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip() in ("api", "batch", "cli", "array")]
    if args.slurm:
        args.scenarios.add("6")
    return args


def installed_like_pycache(args) -> None:
    """Measure grun as an installed copy runs: with its bytecode cached. This environment sets
    PYTHONDONTWRITEBYTECODE, so a module whose source is newer than its .pyc (the working tree is being
    edited) or an exported commit would be compiled again by every `grun` process (130 ms measured).
    Children write their caches under --root/pycache (PYTHONPYCACHEPREFIX), never into the source tree."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(args.root, "pycache")
    modules = ["grun.cli", "grun.client", "grun.daemon", "grun.actors.master", "grun.actors.node",
               "grun.spawner", "grun.store", "grun.stream"]
    subprocess.run([sys.executable, "-c", "import importlib\nfor m in %r:\n    try: importlib.import_module(m)\n"
                    "    except ImportError: pass" % modules], cwd="/tmp", capture_output=True, timeout=120)
    subprocess.run(GRUN + ["--version"], cwd="/tmp", capture_output=True, timeout=60)


def use_commit(args) -> None:
    """Measure a committed version (git archive REF) instead of the working tree, which other people
    may be editing: this process and every daemon and CLI it starts import grun from the export."""
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = os.path.join(session_dir(args), f"src-{sha}")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", REPO, "archive", sha, "grun"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    for name in [m for m in sys.modules if m == "grun" or m.startswith("grun.")]:
        del sys.modules[name]
    sys.path.insert(0, dest)
    os.environ["PYTHONPATH"] = dest + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    # `python -m grun.daemon` (and the node's `-m grun.spawner`) put their cwd first on sys.path, ahead
    # of PYTHONPATH: started from the repo, they imported the working tree, not the export.
    os.chdir(dest)
    args.measured = f"git {sha} (exported to {dest})"
    say(f"measuring {args.measured}")


SCENARIOS = [("1", "throughput", scenario_throughput), ("2", "latency", scenario_latency),
             ("3", "scale", scenario_scale), ("4", "history", scenario_history), ("5", "streaming", scenario_stream),
             ("6", "slurm", scenario_slurm)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_submitter":
        _helper_submitter(int(argv[1]), argv[2], argv[3])
        return 0
    if argv and argv[0] == "_spawner":
        _helper_spawner(int(argv[1]))
        return 0
    args = parse_args(argv)
    if args.commit:
        use_commit(args)
    else:
        # the daemons, simulators and CLIs started from here import this tree, wherever their cwd is and
        # whatever an editable install points at (here it named a checkout that is gone)
        os.environ["PYTHONPATH"] = REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    installed_like_pycache(args)
    # a SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every cluster's finally: stops it
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    machine = machine_info(args)
    res = Results()
    failed = []
    t_start = time.time()
    try:
        for key, name, fn in SCENARIOS:
            if key not in args.scenarios:
                continue
            t0 = time.time()
            try:
                fn(args, res)
            except Exception as exc:
                say(f"scenario {key} ({name}) failed: {exc}")
                traceback.print_exc(file=sys.stderr)
                res.add(f"{key} {name}", "scenario failed", [], "", "", f"ERROR: {exc}")
                failed.append(key)
            say(f"scenario {key} ({name}) took {time.time() - t0:.0f} s")
    finally:
        cleanup_session(args)
    res.rows.sort(key=lambda r: int(r["scenario"].split()[0]))  # stable: keeps each scenario's order
    machine["elapsed_s"] = round(time.time() - t_start, 1)
    print(render(res, machine))
    print(f"\n(total {machine['elapsed_s']:.0f} s; details in --json)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": {k: (sorted(v) if isinstance(v, set) else v)
                                                    for k, v in vars(args).items()},
                       "rows": res.rows, "details": res.details}, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
