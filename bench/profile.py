#!/usr/bin/env python3
"""Where grun's time goes: profiles of the throughput and latency paths on a real local cluster.

    python bench/profile.py throughput [--n 2000] [--out DIR]   # py-spy on master and nodes, perf on the machine
    python bench/profile.py latency [--runs 30] [--out DIR]     # cProfile of `grun true`, py-spy on the daemons

Needs py-spy (`pip install py-spy`); perf (linux-perf) is used when present. Prints the top frames by self
and inclusive time per process role, and leaves raw collapsed stacks (flamegraph input) in DIR.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import psutil

from bench import run
from bench.clusters import GRUN, cleanup_session, job_spec, start_cluster, teardown, wait_done
from bench.meter import CpuMeter, xrun
from bench.report import pct as percentile


def spy(pid: int, path: str, rate: int, gil: bool = False) -> subprocess.Popen:
    cmd = ["py-spy", "record", "-p", str(pid), "-o", path, "-f", "raw", "-r", str(rate), "--nonblocking"]
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def _frame(f: str) -> str:
    # "submit_many (grun/actors/master.py:151)" -> "submit_many (grun/actors/master.py)"
    return re.sub(r":\d+\)$", ")", f.strip())


def collapsed(path: str) -> tuple[collections.Counter, collections.Counter, int]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own, incl, total = collections.Counter(), collections.Counter(), 0
    if not os.path.exists(path):
        return own, incl, 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(x) for x in stack.split(";") if x and not x.startswith("process ")
                      and not x.startswith("thread ")]
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    return own, incl, total


def report_spy(label: str, path: str, top: int) -> str:
    own, incl, total = collapsed(path)
    if not total:
        return f"## {label}: no samples\n"
    lines = [f"## {label}: {total} samples (active threads only)", "", "self %   function"]
    lines += [f"{100 * n / total:5.1f}   {fr}" for fr, n in own.most_common(top)]
    lines += ["", "incl %   function"]
    skip = ("_bootstrap", "run (threading.py)", "Worker.run", "_worker", "__call__ (Pyro5/svr_threads.py)")
    lines += [f"{100 * n / total:5.1f}   {fr}" for fr, n in incl.most_common(top * 3)
              if not any(s in fr for s in skip)][:top]
    return "\n".join(lines) + "\n"


def thread_ids(pid: int) -> list[int]:
    try:
        return [t.id for t in psutil.Process(pid).threads()]
    except psutil.Error:
        return [pid]


def perf_by_role(perf_data: str, roles: dict[int, str], top: int) -> str:
    """CPU samples per process role from `perf record -a`, and the top symbols of each role."""
    out = subprocess.run(["perf", "report", "-i", perf_data, "--stdio", "--no-children", "--sort", "pid,dso,sym",
                          "-g", "none"], capture_output=True, text=True, timeout=600).stdout
    share: collections.Counter = collections.Counter()
    syms: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):(.+?)\s{2,}(\S+)\s+\[(.)\]\s+(.+)$", line)
        if not m:
            continue
        pct, tid, comm, dso, kind, sym = float(m.group(1)), int(m.group(2)), m.group(3).strip(), m.group(4), \
            m.group(5), m.group(6).strip()
        role = roles.get(tid)
        if role is None:
            if comm == "true":
                role = "jobs (/bin/true)"
            elif tid == 0:
                role = "idle"
            elif comm.startswith("python"):
                role = "other python: job supervisors AND other people's python"
            else:
                role = f"other: {comm}"
        share[role] += pct
        syms[role][f"{'kernel' if kind == 'k' else os.path.basename(dso)}: {sym}"] += pct
    busy = sum(v for k, v in share.items() if k != "idle")
    lines = ["## whole machine (perf record -a): share of busy CPU samples by process role",
             "(by thread id; the cgroup split in the CPU line above is the exact one)", ""]
    lines += [f"{100 * pct / busy:6.2f}%  {role}" for role, pct in share.most_common() if role != "idle"][:20]
    for role, pct in share.most_common(8):
        if role == "idle" or role.startswith("other: py-spy"):
            continue
        lines += ["", f"### {role}: top symbols (% of its own samples)"]
        lines += [f"{100 * v / pct:6.2f}%  {k}" for k, v in syms[role].most_common(top)]
    return "\n".join(lines) + "\n"


def _roles(cluster) -> dict[int, str]:
    roles = {t: "bench (this process)" for t in thread_ids(os.getpid())}
    for name, proc in cluster.procs.items():
        role = "master" if name == "master" else f"node daemon {name}"
        roles.update({t: role for t in thread_ids(proc.pid)})
        for child in psutil.Process(proc.pid).children():
            roles.update({t: f"fork server {name}" for t in thread_ids(child.pid)})
    return roles


def _batch(cluster, n: int) -> tuple[float, dict]:
    client = cluster.client()
    meter = CpuMeter(cluster)
    t0 = time.time()
    ids = client.call("submit_many", [job_spec() for _ in range(n)])
    recs = wait_done(client, ids, 600)
    t_last = max(r["end_time"] for r in recs.values())
    return n / (t_last - t0), meter.stop()


def perf_inherited(perf_data: str, top: int) -> str:
    """The fork servers and everything they fork (supervisors, jobs), recorded with perf -p (inherit)."""
    out = subprocess.run(["perf", "report", "-i", perf_data, "--stdio", "--no-children", "--sort", "comm,dso,sym",
                          "-g", "none"], capture_output=True, text=True, timeout=600).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.+)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5).strip()))
    by_comm: collections.Counter = collections.Counter()
    kernel: collections.Counter = collections.Counter()
    for pct, comm, dso, kind, sym in rows:
        by_comm[comm] += pct
        kernel["kernel" if kind == "k" else "user"] += pct
    lines = ["## fork servers + job supervisors + jobs (perf record -p fork servers, children inherited)", "",
             "by command: " + ", ".join(f"{c} {p:.1f}%" for c, p in by_comm.most_common()),
             "kernel/user: " + ", ".join(f"{c} {p:.1f}%" for c, p in kernel.most_common()), ""]
    lines += [f"{pct:6.2f}%  {comm}  {'kernel' if kind == 'k' else os.path.basename(dso)}: {sym}"
              for pct, comm, dso, kind, sym in sorted(rows, reverse=True)[:top]]
    return "\n".join(lines) + "\n"


def profile_throughput(args) -> None:
    out = args.out
    ns = run.parse_args(["--nodes", str(args.nodes), "--node-cpus", str(args.node_cpus)])
    ns.commit = args.commit
    for tool in args.tools.split(","):
        cluster = start_cluster(ns)
        tools: list[subprocess.Popen] = []
        try:
            client = cluster.client()
            wait_done(client, client.call("submit_many", [job_spec() for _ in range(50)]), 60)  # warm up
            roles = _roles(cluster)
            perf_data = os.path.join(out, "perf.data")
            if tool == "perf":
                if not shutil.which("perf"):
                    print("# perf not installed: skipped")
                    continue
                tools.append(subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", perf_data],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                forkservers = [str(pid) for pid, role in roles.items() if role.startswith("fork server")
                               and pid in {c.pid for p in cluster.procs.values()
                                           for c in psutil.Process(p.pid).children()}]
                tools.append(subprocess.Popen(["perf", "record", "-F", "999", "-p", ",".join(forkservers), "-o",
                                               perf_data + ".sup"], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            else:
                for name, proc in cluster.procs.items():
                    tools.append(spy(proc.pid, os.path.join(out, f"{name}.txt"), args.rate, gil=args.gil))
            time.sleep(1.0)
            rate, cpu = _batch(cluster, args.n)
            roles.update(_roles(cluster))  # Pyro starts worker threads on demand
            stop(tools)
            print(f"# {tool}: {args.n} jobs in one batch, {args.nodes} nodes x {args.node_cpus} cpus: "
                  f"{rate:.0f} jobs/s under the profiler; CPU s: {cpu}\n")
            if tool == "perf":
                print(perf_by_role(perf_data, roles, args.top))
                print(perf_inherited(perf_data + ".sup", args.top))
            else:
                for name in cluster.procs:
                    print(report_spy(f"{name} (py-spy{', GIL holders only' if args.gil else ''})",
                                     os.path.join(out, f"{name}.txt"), args.top))
        finally:
            stop(tools)
            teardown(cluster)


def profile_latency(args) -> None:
    out = args.out
    ns = run.parse_args([])
    cluster = start_cluster(ns, nodes=1)
    tools: list[subprocess.Popen] = []
    try:
        for _ in range(3):
            subprocess.run(GRUN + ["true"], env=cluster.env, cwd="/tmp", capture_output=True, timeout=60)
        for name, proc in cluster.procs.items():
            tools.append(spy(proc.pid, os.path.join(out, f"lat-{name}.txt"), 1000))
        time.sleep(0.5)
        prof = os.path.join(out, "grun-true.prof")
        walls = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            argv = [sys.executable, "-m", "cProfile", "-o", prof, "-m", "grun.cli", "true"] if i == 0 else \
                GRUN + ["true"]
            xrun(argv, env=cluster.env, cwd="/tmp", capture_output=True, timeout=60)
            walls.append(time.perf_counter() - t0)
        stop(tools)
        print(f"# latency profile: `grun true` x {args.runs}, p50 {percentile(walls[1:], 50) * 1000:.0f} ms "
              "(first run under cProfile, excluded)\n")
        print("## `grun true` client, cProfile (cumulative), one run\n")
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(args.top)
        for name in cluster.procs:
            print(report_spy(f"{name} during the runs (py-spy)", os.path.join(out, f"lat-{name}.txt"), args.top))
    finally:
        stop(tools)
        teardown(cluster)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["throughput", "latency"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--node-cpus", type=int, default=8)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true", help="py-spy: only samples holding the GIL (about CPU time)")
    ap.add_argument("--tools", default="perf,py-spy", help="throughput: perf and/or py-spy, one run each")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="directory for raw profiles (default: a new temp dir)")
    ap.add_argument("--commit", metavar="REF", help="profile this commit (git archive), not the working tree")
    args = ap.parse_args()
    if args.commit:
        run.use_commit(run.parse_args(["--commit", args.commit]))
    run.installed_like_pycache(run.parse_args([]))
    if shutil.which("py-spy") is None and "py-spy" in args.tools:
        print("py-spy is needed: pip install py-spy", file=sys.stderr)
        return 2
    args.out = args.out or tempfile.mkdtemp(prefix=f"grun-profile-{args.what}-")
    os.makedirs(args.out, exist_ok=True)
    print(f"# raw profiles in {args.out}")
    try:
        (profile_throughput if args.what == "throughput" else profile_latency)(args)
    finally:
        cleanup_session(run.parse_args([]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
