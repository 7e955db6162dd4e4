"""Scenario 2, latency: `grun true` / `grun hostname` p50/p90 and where the time of one run goes (from
the job's records: `run_phases`), the baselines a `grun` process cannot beat (an interpreter start, the
imports), and the CLI's import time (`python -X importtime`)."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from bench.clusters import GRUN, start_cluster, teardown
from bench.meter import CpuMeter, timed, wait_idle, xrun
from bench.report import fmt, median, notes, other_load, pct, say

KEY, NAME = "2", "latency"
SCENARIO = f"{KEY} {NAME}"
TARGET = "p50 ≤ 60 ms"


def add_options(ap) -> None:
    ap.add_argument("--latency-runs", type=int, default=50, help="runs per latency series (default 50)")


SMOKE = {"latency_runs": 3}


def run_phases(launched: float, exited: float, job: dict, result: subprocess.CompletedProcess) -> dict:
    """Where the time of one `grun CMD` run went, in seconds, in the order it happens: `launched` and
    `exited` are this machine's clock around the client process, `job` the master's record of its job,
    `result` the finished client process, whose stderr ends with the times its steps ended (GRUN_TIMES=1,
    grun/cli.py). launch_to_submit, until the master has the submission, splits into the interpreter's
    start with site and the .pth files, grun's imports, the config, the connection (the spec, msgpack
    and the TCP connect) and the request's way to the master; then the master's journal (group commit)
    and its answer."""
    m = re.search(r"^grun: times: (.*)$", result.stderr.decode(errors="replace"), re.MULTILINE)
    t = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())} if m else {}
    start = job.get("start_time")
    split = {"start_and_site": t["start"] - launched, "imports": t["imported"] - t["start"],
             "config": t["config"] - t["imported"], "connect": t["connected"] - t["config"],
             "submit": job["submit_time"] - t["connected"]} if "answered" in t else {}
    return {"launch_to_submit": job["submit_time"] - launched, **split,
            **({"journal_wait": t["answered"] - job["submit_time"]} if split else {}),
            "submit_to_dispatch": job["dispatch_time"] - job["submit_time"],
            "dispatch_to_start": start - job["dispatch_time"],
            "start_to_client_exit": exited - start,
            "start_to_master_finish": job["end_time"] - start}


def latency_series(cluster, cmd: list[str], runs: int) -> dict:
    from grun.client import Client
    client = Client("127.0.0.1", cluster.port)
    done, walls = [], []
    meter, w0 = CpuMeter(cluster), time.perf_counter()
    for _ in range(runs):
        t0 = time.time()
        p0 = time.perf_counter()
        r = xrun(GRUN + cmd, env=dict(cluster.env, GRUN_TIMES="1"), cwd="/tmp", capture_output=True, timeout=60)
        walls.append(time.perf_counter() - p0)
        done.append((t0, time.time(), r))
        if r.returncode != 0:
            raise RuntimeError(f"grun {' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-300:]}")
    cpu, wall = meter.stop(), time.perf_counter() - w0
    hist = sorted((j for j in client.history(runs + 50) if j.get("cmd") == cmd), key=lambda j: j["id"])[-runs:]
    steps = [run_phases(t0, t1, job, r) for (t0, t1, r), job in zip(done, hist)]
    breakdown = {k: round(statistics.median([s[k] for s in steps]) * 1000, 2) for k in steps[0]} if steps else {}
    return {"walls_ms": [w * 1000 for w in walls], "p50_ms": pct(walls, 50) * 1000,
            "p90_ms": pct(walls, 90) * 1000, "breakdown_ms": breakdown, "cpu_s": cpu, "wall_s": wall}


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


def baselines(args, res, detail: dict) -> None:
    say("scenario 2: baselines and import time")
    R, nb = args.repeat, max(5, args.latency_runs // 2)
    base = {"python -S -c pass (no site)": [sys.executable, "-S", "-c", "pass"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "grun --version": GRUN + ["--version"],
            # what `grun CMD` imports since the lean client path (no Pyro5, psutil, yaml, grun.daemon)
            "python -c 'import grun.cli, grun.client, grun.stream, msgpack'":
                [sys.executable, "-c", "import grun.cli, grun.client, grun.stream, msgpack"]}
    for label, argv in base.items():
        vals = [statistics.median(timed(argv, runs=nb)) * 1000 for _ in range(R)]
        detail.setdefault("baselines_ms", {})[label] = vals
        res.add(SCENARIO, f"baseline: {label}", vals, "ms", "", "process wall time, no cluster")
    for label, argv in (("-c pass (site and .pth files)", ["-c", "pass"]),
                        ("-m grun.cli --version", ["-m", "grun.cli", "--version"]),
                        ("grun true's imports (cli, client, stream, msgpack)",
                         ["-c", "import grun.cli, grun.client, grun.stream, msgpack"])):
        it = importtime_median(argv, max(3, R))
        detail.setdefault("importtime", {})[label] = it
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(it["by_package_ms"].items())[:6])
        res.add(SCENARIO, f"python -X importtime {label}: total", it["runs_total_ms"], "ms", "",
                f"self ms by package: {top}")


def run(args, res) -> None:
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
            bd = {k: median(s["breakdown_ms"][k] for s in series) for k in series[0]["breakdown_ms"]}
            res.add(SCENARIO, f"`grun {' '.join(cmd)}` p50 ({runs} runs)", [s["p50_ms"] for s in series], "ms",
                    TARGET + "; srun 30 ms",
                    notes("median ms: " + ", ".join(f"{k} {fmt(v)}" for k, v in bd.items()),
                          other_load([s["cpu_s"] for s in series], [s["wall_s"] for s in series])))
            res.add(SCENARIO, f"`grun {' '.join(cmd)}` p90 ({runs} runs)", [s["p90_ms"] for s in series], "ms")
    finally:
        teardown(cluster)
    baselines(args, res, detail)
    res.details["latency"] = detail
