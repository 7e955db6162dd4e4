"""Scenario 3, scale: a master with 1,000 and 10,000 simulated nodes (bench/sim_nodes.py: many node actors
per process, jobs run by a timer) and 100,000 queued jobs: dispatch rate, time to register, master CPU per
job and RSS, and the master's CPU for heartbeats alone. Run by hand (`--only 3`): not in the default set."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time

import psutil

from bench.clusters import BENCH, fill_queue, job_spec, start_cluster, teardown
from bench.meter import wait_idle
from bench.report import fmt, median, notes, say

KEY, NAME = "3", "scale"
SCENARIO = f"{KEY} {NAME}"
SIM = os.path.join(BENCH, "sim_nodes.py")


def add_options(ap) -> None:
    ap.add_argument("--scale-nodes", default="1000,10000", type=lambda text: [int(x) for x in text.split(",") if x.strip()],
                    help="simulated node counts (default 1000,10000)")
    ap.add_argument("--scale-queue", type=int, default=100000, help="queued jobs (default 100000)")
    ap.add_argument("--scale-cpus", type=float, default=4, help="cpus per simulated node (default 4)")
    ap.add_argument("--scale-duration", type=float, default=0.0, help="seconds a simulated job runs (default 0)")
    ap.add_argument("--scale-heartbeat", type=float, default=5.0, help="heartbeat interval (default 5 s, grun's default)")
    ap.add_argument("--scale-procs", type=int, default=0, help="simulator processes (default: one per 2,500 nodes, 1-4)")
    ap.add_argument("--scale-idle", type=float, default=10.0, help="seconds of heartbeats-only load measured")
    ap.add_argument("--scale-repeat", type=int, default=0, help="runs per figure (default --repeat)")


SMOKE = {"scale_nodes": [50], "scale_queue": 500, "scale_idle": 2.0}


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
        fill_queue(client, queue, spec)
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
        fill_queue(client, queue, spec)
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


def add_rows(args, res, nodes: int, runs: list[dict]) -> None:
    Q, tag = args.scale_queue, f"{nodes:,} nodes"

    def med(key):
        return median((r[key] for r in runs), 0)
    res.add(SCENARIO, f"{tag}: dispatch, {Q:,} jobs submitted to registered nodes, first submit -> last done",
            [r["done_per_s"] for r in runs], "jobs/s", "≥ 2,000 jobs/s",
            notes(f"steady (10-90 %) {fmt(med('steady_per_s'))} jobs/s",
                  f"submit_many alone {fmt(Q / med('submit_s'))} jobs/s", *sorted({r["note"] for r in runs})))
    res.add(SCENARIO, f"{tag}: master CPU per job in that dispatch (submit, dispatch, start, finish, heartbeats)",
            [r["master_cpu_ms_per_job"] for r in runs], "ms", "≤ 0.5 ms: 2,000/s on one core",
            f"master {fmt(med('master_cpu_pct'))}% of a core, simulators {fmt(med('sim_cpu_ms_per_job'))} ms/job")
    res.add(SCENARIO, f"{tag}: backlog of {Q:,} queued, nodes start -> last done", [r["backlog_per_s"] for r in runs],
            "jobs/s", "", f"all registered after {fmt(med('register_s'))} s ({runs[0]['sim_procs']} simulator "
            f"processes); master {fmt(med('backlog_master_cpu_ms_per_job'))} ms/job incl. registrations")
    res.add(SCENARIO, f"{tag}: master RSS with {Q:,} queued, no node yet", [r["rss_queued_mb"] for r in runs], "MB",
            "≤ 300 MB", f"peak {fmt(med('rss_peak_mb'))} MB; after the backlog {fmt(med('rss_after_backlog_mb'))}, "
            f"at the end {fmt(med('rss_end_mb'))} MB; "
            f"{fmt(med('master_threads'))} threads, {fmt(med('master_fds'))} fds")
    res.add(SCENARIO, f"{tag}: heartbeat load, idle ({fmt(med('heartbeats_per_s'))} heartbeats/s)",
            [r["idle_cpu_pct"] for r in runs], "% core", "",
            f"{fmt(med('us_per_heartbeat'))} µs of master CPU per heartbeat (nodes configured for every "
            f"{fmt(args.scale_heartbeat)} s; past 2,500 nodes the master asks for less)")


def run(args, res) -> None:
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
        add_rows(args, res, n, runs)
    res.details["scale"] = detail
