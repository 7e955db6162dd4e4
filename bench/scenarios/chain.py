"""Scenario 7, chain (issue 13): N trivial jobs (`true`) each submitted `--afterok` the one before, so
they run one after the other, against the same N submitted alike without dependencies (which run side
by side). Jobs/s from the first submit to the last end; what a dependency costs per job is the gap
between the chain's seconds per job and a single job's round trip (submit -> dispatch -> start -> end)."""

from __future__ import annotations

import itertools
import time

from bench.clusters import job_phases, job_spec, start_cluster, teardown, wait_done
from bench.meter import CpuMeter, wait_idle
from bench.report import say

KEY, NAME = "7", "chain"
SCENARIO = f"{KEY} {NAME}"


def add_options(ap) -> None:
    ap.add_argument("--n-chain", type=int, default=1000, help="jobs in the --afterok chain (default 1000)")


SMOKE = {"n_chain": 20}


def chain_run(args, chained: bool) -> dict:
    """One cluster; N submit calls (each job `afterok` the previous one if chained); until the last ends."""
    cluster = start_cluster(args)
    try:
        client, n, spec = cluster.client(), args.n_chain, job_spec()
        note = wait_idle(args.idle_wait)
        meter, t0, ids = CpuMeter(cluster), time.time(), []
        for _ in range(n):
            ids.append(client.submit_spec(dict(spec, afterok=ids[-1:]) if chained else spec))
        t_sub = time.time()
        records = wait_done(client, ids, timeout=max(120.0, n / 5))
        cpu = meter.stop()
        t_last = max(r.get("end_time") or t_sub for r in records.values())
        if chained:
            order = sorted(records.values(), key=lambda r: r["id"])
            assert all(a["end_time"] <= b["start_time"] for a, b in itertools.pairwise(order)), "ran out of order"
        out = {"chained": chained, "n": n, "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_last - t0),
               "not_done": sum(r.get("state") != "done" for r in records.values()),
               "master_cpu_ms_per_job": 1000 * cpu["master"] / n, "phases": job_phases(list(records.values())),
               "note": note}
        say(f"  {'chain' if chained else 'independent'} n={n}: submit {out['submit_per_s']:.0f}/s, "
            f"done {out['done_per_s']:.0f}/s, master cpu {out['master_cpu_ms_per_job']:.2f} ms/job {note}")
        return out
    finally:
        teardown(cluster)


def run(args, res) -> None:
    detail = {}
    for chained, label in ((False, "without dependencies"), (True, "each --afterok the one before")):
        say(f"scenario 7: {args.n_chain} jobs submitted one call each, {label}")
        runs = detail[label] = [chain_run(args, chained) for _ in range(args.repeat)]
        flags = "; ".join(sorted({r["note"] for r in runs if r["note"]} |
                                 {f"{r['not_done']} not done" for r in runs if r["not_done"]}))
        res.add(SCENARIO, f"{args.n_chain} jobs {label}: submit->last done", [r["done_per_s"] for r in runs],
                "jobs/s", "", flags)
        res.add(SCENARIO, f"{args.n_chain} jobs {label}: master CPU per job",
                [r["master_cpu_ms_per_job"] for r in runs], "ms")
    res.details[SCENARIO] = detail
