"""Scenario 9, trace (issue 11): a lab's day of jobs, replayed three ways on the same nodes. A seeded trace
of --trace-jobs jobs of twelve kinds (python scripts named after the tools they stand for: align.py,
sortbam.py, ..., plot.py), each of which really allocates its memory (every page touched), burns its cpu
and waits out the rest of its run; kinds differ 15x in memory (20-300 MB) and 10x in run time, each run
+-20 % around its kind, and one run in 40 of assemble.py takes 8x its usual memory. All of it is submitted
at once on --trace-nodes nodes of 4 cpus and 1,200 MB, without -m/-c (as users do) in modes:
  (a) defaults   learn off: every job reserves default_cpus (1) and default_memory (100 MB);
  (b) overask    learn off, each job asks -m 4x its kind's usual peak (what a careful user types);
  (c) learned    learn on, after a warm-up of 5 runs of each kind (not counted).
Figures per mode: makespan (first submit to last end), mean wait (submit to start), peak concurrency,
jobs killed for memory (each with its reason), and the peak of memory the jobs on one node held (their
peaks summed over the jobs running together) over the node's 1,200 MB: above 100 % a real node of that size
would have been out of memory. Run times are scaled by --trace-scale so that the three modes take a few
minutes on 2 cores."""

from __future__ import annotations

import os
import random
import statistics
import time

from bench.clusters import job_spec, session_dir, start_cluster, teardown, wait_done
from bench.report import say

KEY, NAME = "9", "trace"
SCENARIO = f"{KEY} {NAME}"
NODE_CPUS, NODE_MB = 4, 1200
# kind: (usual peak MB, usual run time s, cpu seconds per run time s)
KINDS = {"align.py": (300, 3.0, 0.03), "assemble.py": (250, 2.5, 0.02), "callvar.py": (200, 2.0, 0.03),
         "sortbam.py": (150, 1.5, 0.03), "index.py": (120, 1.2, 0.02), "merge.py": (100, 1.0, 0.02),
         "dedup.py": (80, 0.8, 0.02), "count.py": (60, 0.6, 0.03), "trim.py": (40, 0.5, 0.03),
         "convert.py": (30, 0.4, 0.02), "qc.py": (25, 0.35, 0.03), "plot.py": (20, 0.3, 0.03)}
OUTLIER_KIND, OUTLIER_EVERY, OUTLIER_X = "assemble.py", 40, 8
BASE_MB = 8  # what `python3 -S` holds before it allocates
PROGRAM = """import sys, time
t0 = time.time()
mb, secs, cpu = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
data = b"x" * (mb << 20)  # every page written: resident
end = time.process_time() + cpu
while time.process_time() < end:
    pass
time.sleep(max(0.0, secs - (time.time() - t0)))
"""
MODES = ("defaults", "overask", "learned")


def add_options(ap) -> None:
    ap.add_argument("--trace-jobs", type=int, default=500, help="jobs in the trace (default 500)")
    ap.add_argument("--trace-nodes", type=int, default=3, help="nodes of 4 cpus and 1,200 MB (default 3)")
    ap.add_argument("--trace-scale", type=float, default=1.0, help="run times x this (default 1)")


SMOKE = {"trace_jobs": 24, "trace_scale": 0.3}


def make_trace(n: int, scale: float, seed: int = 11) -> list[tuple[str, int, float, float]]:
    """(kind, peak MB, run time s, cpu s) of each job, in submission order."""
    rng, out = random.Random(seed), []
    for i in range(n):
        kind = rng.choice(list(KINDS))
        mb, secs, cpu = KINDS[kind]
        peak = mb * rng.uniform(0.8, 1.2) * (OUTLIER_X if kind == OUTLIER_KIND and rng.randrange(OUTLIER_EVERY) == 0 else 1)
        secs *= rng.uniform(0.8, 1.2) * scale
        out.append((kind, round(peak), secs, secs * cpu))
    return out


def _spec(bin_dir: str, job: tuple, memory: int | None = None) -> dict:
    kind, peak, secs, cpu = job
    argv = ["python3", "-S", os.path.join(bin_dir, kind), str(max(1, peak - BASE_MB)), f"{secs:.3f}", f"{cpu:.3f}"]
    return dict(job_spec(argv), **({"memory": memory} if memory else {}))


def _cluster(args, mode: str):
    """A fresh cluster of --trace-nodes nodes of NODE_CPUS and NODE_MB; learn on in mode (c) only."""
    def prepare(cluster):
        for spec in cluster.node_specs.values():
            spec.update(cpus=NODE_CPUS, memory=NODE_MB)
        cluster.master_extra["learn"] = mode == "learned"
    return start_cluster(args, args.trace_nodes, prepare=prepare)


def peaks(records: list[dict]) -> tuple[int, float]:
    """(most jobs running at once, the largest sum of peaks held on one node at once / its memory)."""
    events = sorted((t, d, r.get("node"), (r.get("usage") or {}).get("maxrss_kb", 0) / 1024)
                    for r in records if r.get("start_time") and r.get("end_time")
                    for t, d in ((r["start_time"], 1), (r["end_time"], -1)))
    running, most, held, fullest = 0, 0, {}, 0.0
    for _, d, node, mb in events:
        running += d
        held[node] = held.get(node, 0.0) + d * mb
        most, fullest = max(most, running), max(fullest, held[node] / NODE_MB)
    return most, fullest


def trace_run(args, mode: str, trace: list, bin_dir: str) -> dict:
    cluster = _cluster(args, mode)
    try:
        client = cluster.client()
        if mode == "learned":  # warm-up: 5 runs of each kind
            warm = [job for job in make_trace(len(KINDS) * 40, args.trace_scale, seed=5) if job[0] != OUTLIER_KIND
                    or job[1] < 2 * KINDS[OUTLIER_KIND][0]]
            runs = {kind: [j for j in warm if j[0] == kind][:5] for kind in KINDS}
            wait_done(client, client.submit_many([_spec(bin_dir, j) for js in runs.values() for j in js]), 600)
        specs = [_spec(bin_dir, j, 4 * KINDS[j[0]][0] if mode == "overask" else None) for j in trace]
        t0 = time.time()
        ids = client.submit_many(specs)
        records = list(wait_done(client, ids, timeout=1800).values())
        most, fullest = peaks(records)
        usual = [r for r in records if (r.get("usage") or {}).get("maxrss_kb", 0) < 3 * 1024 * KINDS[os.path.basename(r["cmd"][2])][0]]
        killed = [f"{os.path.basename(r['cmd'][2])}: {r.get('limit_detail') or r.get('error')}" for r in records
                  if r.get("limit") == "memory"]
        out = {"mode": mode, "n": len(records), "makespan": max(r["end_time"] for r in records) - t0,
               "mean_wait": statistics.mean(r.get("queue_wait") or 0.0 for r in records), "peak_running": most,
               "killed_memory": len(killed), "killed": killed, "node_memory_peak_pct": 100 * fullest,
               "node_memory_usual_pct": 100 * peaks(usual)[1],
               "not_done": sum(r["state"] != "done" for r in records) - len(killed),
               "mean_reserved_mb": statistics.mean(r["memory"] for r in records),
               "stretch": statistics.mean(r["usage"]["wall"] / float(r["cmd"][4]) for r in records if r.get("usage")),
               "mean_reserved_cpus": statistics.mean(r["cpus"] for r in records)}
        say(f"  {mode}: makespan {out['makespan']:.1f} s, mean wait {out['mean_wait']:.1f} s, peak {most} running, "
            f"{len(killed)} killed for memory, node memory peak {out['node_memory_peak_pct']:.0f} % "
            f"({out['node_memory_usual_pct']:.0f} % the outliers aside), "
            f"reserved {out['mean_reserved_cpus']:.2f} cpus / {out['mean_reserved_mb']:.0f} MB a job, "
            f"runs took {out['stretch']:.2f}x their run time (cpu contention)")
        for line in killed:
            say(f"    killed: {line}")
        return out
    finally:
        teardown(cluster)


def run(args, res) -> None:
    bin_dir = os.path.join(session_dir(args), "trace-bin")
    os.makedirs(bin_dir, exist_ok=True)
    for kind in KINDS:
        with open(os.path.join(bin_dir, kind), "w") as f:
            f.write(PROGRAM)
    trace = make_trace(args.trace_jobs, args.trace_scale)
    say(f"scenario 9: a trace of {len(trace)} jobs of {len(KINDS)} kinds on {args.trace_nodes} nodes "
        f"({NODE_CPUS} cpus, {NODE_MB} MB), {sum(j[2] for j in trace):.0f} job-seconds; modes {', '.join(MODES)}")
    detail = {mode: [] for mode in MODES}
    for _ in range(args.repeat):
        for mode in MODES:  # alternated, so load from others falls on all three alike
            detail[mode].append(trace_run(args, mode, trace, bin_dir))
    for mode in MODES:
        runs = detail[mode]
        killed = sorted({line for r in runs for line in r["killed"]})
        res.add(SCENARIO, f"({mode}) makespan", [r["makespan"] for r in runs], "s")
        res.add(SCENARIO, f"({mode}) mean wait", [r["mean_wait"] for r in runs], "s")
        res.add(SCENARIO, f"({mode}) peak concurrency", [r["peak_running"] for r in runs], "jobs")
        res.add(SCENARIO, f"({mode}) killed for memory", [r["killed_memory"] for r in runs], "jobs", "<= 1 %",
                "; ".join(killed)[:300])
        res.add(SCENARIO, f"({mode}) node memory peak", [r["node_memory_peak_pct"] for r in runs], "%", "<= 100")
        res.add(SCENARIO, f"({mode}) node memory peak, outliers aside", [r["node_memory_usual_pct"] for r in runs],
                "%", "<= 100")
        res.add(SCENARIO, f"({mode}) run time stretch", [r["stretch"] for r in runs], "x", "1")
    res.details[SCENARIO] = detail
