"""Scenario 8, rules (issue 12): what policy rules cost a submission, with 0 and `--n-rules` (50) rules of the
issue's five kinds (each kind ten times, none firing on the job, so every condition is evaluated in full, and
the script file is looked for once per submission). Budget: at most 20 us per rule per job.

- the master's core alone (MasterState.requests, in this process): us per job, and per rule per job;
- a master daemon (no nodes, so nothing but submission runs): one `submit_many` batch of `--n-rules-jobs`
  jobs (submit-only jobs/s), and the round trip of single `Client.submit` calls (p50). The clusters with
  and without rules alternate, run after run, so a change of load on a shared machine hits both alike."""

from __future__ import annotations

import statistics
import time

from bench.clusters import job_spec, start_cluster, teardown
from bench.meter import wait_idle
from bench.report import say

KEY, NAME = "8", "rules"
SCENARIO = f"{KEY} {NAME}"
SINGLE = 200  # single submits per run


def add_options(ap) -> None:
    ap.add_argument("--n-rules", type=int, default=50, help="rules in the config with rules (default 50)")
    ap.add_argument("--n-rules-jobs", type=int, default=2000, help="jobs in the submit_many batch (default 2000)")


SMOKE = {"n_rules": 10, "n_rules_jobs": 100}


def make_rules(n: int) -> list[dict]:
    """n rules of the issue's five kinds, none of which fires on `true` submitted by the benchmark."""
    kinds = [lambda i: {"if": f'prog == "align{i}.py" and size(argv[2]) > 1G', "default": {"memory": "8G", "cpus": 4}},
             lambda i: {"if": f'script ~ "import torch{i}"', "params": {"gpu": 1}},
             lambda i: {"if": f'group == "students{i}" and cpus > 8', "reject": "at most 8 cpus"},
             lambda i: {"if": f'cmd ~ "rm -rf /{i}"', "warn": "removes files under /"},
             lambda i: {"if": f'user == "alice{i}"', "priority": "+10", "nodes": 'labels.os == "debian12"'}]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def core_us_per_job(rules: list[dict], n: int) -> float:
    from grun.actors.master import RuleFacts
    from grun.core.master_state import MasterState
    from grun.core.rules import compile_rules
    state, specs = MasterState(rules=compile_rules(rules), allow_root=True), [job_spec()] * n
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        state.requests(specs, RuleFacts(), [])
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def cluster_run(args, rules: list[dict]) -> dict:
    cluster = start_cluster(args, master_only=True, prepare=lambda c: c.master_extra.update(rules=rules))
    try:
        client, spec, n = cluster.client(), job_spec(), args.n_rules_jobs
        note = wait_idle(args.idle_wait)
        t0 = time.perf_counter()
        client.submit_many([spec] * n)
        batch = n / (time.perf_counter() - t0)
        took = []
        for _ in range(SINGLE):
            t0 = time.perf_counter()
            client.submit_spec(spec)
            took.append(time.perf_counter() - t0)
        return {"rules": len(rules), "batch_per_s": batch, "single_p50_ms": 1000 * statistics.median(took),
                "note": note}
    finally:
        teardown(cluster)


def run(args, res) -> None:
    many = make_rules(args.n_rules)
    say(f"scenario 8: submission with 0 and {len(many)} rules (core alone, then a master daemon)")
    core = {k: [core_us_per_job(rules, args.n_rules_jobs) for _ in range(args.repeat)] for k, rules in
            (("none", []), ("rules", many))}
    per_rule = [(r - z) / len(many) for r, z in zip(core["rules"], core["none"])]
    res.add(SCENARIO, "core: MasterState.requests, 0 rules", core["none"], "us/job")
    res.add(SCENARIO, f"core: MasterState.requests, {len(many)} rules", core["rules"], "us/job")
    res.add(SCENARIO, "core: cost per rule per job", per_rule, "us", "≤ 20 us (issue 12)")
    runs = {0: [], len(many): []}
    for _ in range(args.repeat):  # alternating, so both sides see the same load
        for rules in ([], many):
            runs[len(rules)].append(cluster_run(args, rules))
            say(f"  {len(rules)} rules: batch {runs[len(rules)][-1]['batch_per_s']:.0f} jobs/s, "
                f"single p50 {runs[len(rules)][-1]['single_p50_ms']:.2f} ms")
    for count, done in runs.items():
        notes = "; ".join(sorted({r["note"] for r in done if r["note"]}))
        res.add(SCENARIO, f"master daemon, {count} rules: submit_many of {args.n_rules_jobs}, submit only",
                [r["batch_per_s"] for r in done], "jobs/s", "", notes)
        res.add(SCENARIO, f"master daemon, {count} rules: single Client.submit round trip p50",
                [r["single_p50_ms"] for r in done], "ms")
    res.details[SCENARIO] = {"core_us_per_job": core, "clusters": runs}
