"""Scenario 6, slurm (--slurm): the same N jobs through `sbatch --wrap true` (a loop) and `sbatch --array`,
and `srun true` latency, on ../shared/anchors/slurm/setup.sh's Slurm (root only); the submit time and
slurmctld's RSS for one held `sbatch --array=1-100000` (scenario 1's array scale, for Slurm); then the
grun/Slurm ratios, when scenarios 1 and 2 ran in the same invocation."""

from __future__ import annotations

import datetime as _dt
import getpass
import glob
import os
import re
import subprocess
import time
import types

from bench.clusters import REPO
from bench.meter import CpuGroup, CpuMeter, timed, wait_idle, xrun
from bench.report import fmt, median, notes, other_load, pct, say

KEY, NAME = "6", "slurm"
SCENARIO = f"{KEY} {NAME}"
SLURM_DIR = os.path.abspath(os.path.join(REPO, "..", "shared", "anchors", "slurm"))
CTLD_LOG = "/var/log/slurm-anchor/slurmctld.log"


def add_options(ap) -> None:
    ap.add_argument("--slurm", action="store_true", help="Slurm via ../shared/anchors/slurm")
    ap.add_argument("--slurm-nodes", type=int, default=8, help="simulated Slurm nodes (default 8)")
    ap.add_argument("--srun-runs", type=int, default=20, help="srun latency runs (default 20)")
    ap.add_argument("--slurm-array-only", action="store_true", help="only the held sbatch --array=1-ARRAY_N")


SMOKE = {"slurm": False}


def _slurm_active() -> int:
    out = xrun(["squeue", "-h", "-t", "PD,R,CG,CF,S,RQ,RS,RH", "-o", "%i"], capture_output=True, text=True,
               timeout=20)
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
    group = CpuGroup.create()
    if group is not None:
        for pattern in ("/run/slurm-anchor/slurmctld.pid", "/run/slurm-anchor/slurmd-*.pid", "/run/munge/munged.pid"):
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
            xrun(["sbatch", "-Q", "-o", "/dev/null", "--wrap", "true"], check=True, stdout=subprocess.DEVNULL,
                 timeout=30)
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


def start_slurm(args) -> str | None:
    """Start the anchors' Slurm with --slurm-nodes nodes; why not, or None once it runs."""
    setup = os.path.join(SLURM_DIR, "setup.sh")
    if os.geteuid() != 0:
        return "needs root (setup.sh installs and starts Slurm)"
    if not os.access(setup, os.X_OK):
        return f"{setup} not found"
    say(f"scenario 6: starting Slurm with {args.slurm_nodes} simulated nodes ({setup})")
    env = dict(os.environ, NODES=str(args.slurm_nodes), INSTALL="1", CLEAN="1")
    r = subprocess.run(["timeout", "600", setup], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return f"setup.sh failed ({r.returncode}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return None


def measure(args, res, detail: dict, holder) -> float:
    """srun latency, then the sbatch loop and array; srun's p50 in ms."""
    n, R = args.n, args.repeat
    subprocess.run(["srun", "-n1", "true"], capture_output=True, timeout=60)  # warm-up
    walls = timed(["srun", "-n1", "true"], runs=args.srun_runs)
    srun_p50 = pct(walls, 50) * 1000
    detail["srun_ms"] = [w * 1000 for w in walls]
    res.add(SCENARIO, f"`srun -n1 true` p50 ({args.srun_runs} runs)", srun_p50, "ms", "RESULTS.md: 30 ms",
            f"p90 {fmt(pct(walls, 90) * 1000)} ms")
    for mode, label in (("loop", f"`sbatch --wrap true` loop, N={n}"), ("array", f"`sbatch --array=1-{n}`")):
        say(f"scenario 6: {label}, x{R}")
        runs = []
        for _ in range(R):
            wait_idle(args.idle_wait)
            runs.append(slurm_throughput(n, mode, holder))
        detail[mode] = runs
        cl = median(r["cpu_s"]["cluster"] * 1000 / n if r["cpu_s"]["cluster"] is not None else None for r in runs)
        res.add(SCENARIO, f"{label}: submit->last done ({args.slurm_nodes} slurmd)",
                [r["done_per_s"] for r in runs], "jobs/s", "RESULTS.md: 100 / 115 jobs/s (8 nodes)",
                notes(*sorted({r["note"] for r in runs}),
                      f"Slurm CPU {fmt(cl)} ms/job (slurmctld, slurmd, slurmstepd, munged)" if cl is not None else "",
                      other_load([r["cpu_s"] for r in runs], [r["total_s"] for r in runs])))
    return srun_p50


def array_scale(args, res, detail: dict) -> None:
    """One `sbatch -H --array=1-N` (held: nothing runs): its submit time and slurmctld's RSS before and after."""
    import psutil
    n = args.array_n
    ctld = max((p for p in psutil.process_iter(["name"]) if p.info["name"] == "slurmctld"),
               key=lambda p: p.memory_info().rss)  # (not its zombie child)
    _slurm_quiet()
    before, t0 = ctld.memory_info().rss / 1e6, time.perf_counter()
    r = xrun(["sbatch", "-H", "--parsable", "-o", "/dev/null", f"--array=1-{n}", "--wrap", "true"], timeout=300,
             capture_output=True, text=True)
    took, after = time.perf_counter() - t0, ctld.memory_info().rss / 1e6
    say(f"scenario 6: sbatch -H --array=1-{n}: {took * 1000:.0f} ms, slurmctld RSS {before:.1f} -> {after:.1f} MB "
        f"({(r.stdout or r.stderr).strip()[:80]})")
    t1 = time.perf_counter()
    listed = subprocess.run(["squeue", "-h", "-r", "-t", "PD", "-o", "%i"], capture_output=True, text=True,
                            timeout=300).stdout.count("\n")
    listed_s = time.perf_counter() - t1
    subprocess.run(["scancel", r.stdout.strip().split(";")[0]], capture_output=True, timeout=120)
    detail["array_scale"] = {"n": n, "submit_s": took, "rss_before_mb": before, "rss_after_mb": after,
                             "ok": r.returncode == 0, "squeue_rows": listed}
    res.add(SCENARIO, f"`sbatch -H --array=1-{n}`: submit time", [took * 1000] if r.returncode == 0 else [], "ms",
            "grun: scenario 1's array scale", f"slurmctld RSS {before:.1f} -> {after:.1f} MB (+{after - before:.1f}); "
            f"squeue -r lists {listed} tasks ({listed_s:.2f} s)" if r.returncode == 0 else f"FAILED: {r.stderr.strip()}")


def add_ratios(res, srun_p50: float) -> None:
    """grun's figures over Slurm's, for the scenarios that ran in this invocation."""
    pairs = [("API concurrent / sbatch loop", "API, ", "`sbatch --wrap"),
             ("submit_many batch / sbatch --array", "API, one submit_many", "`sbatch --array"),
             ("CLI loop / sbatch loop", "CLI loop", "`sbatch --wrap"),
             ("CLI --array / sbatch --array", "CLI `grun --nowait --array", "`sbatch --array")]
    for label, g, s in pairs:
        grow, srow = res.find("1 throughput", g), res.find(SCENARIO, s)
        if grow and srow and srow["value"]:
            res.add(SCENARIO, f"ratio grun/Slurm: {label}", grow["value"] / srow["value"], "x", "≥ 4x")
    lat = res.find("2 latency", "`grun true` p50")
    if lat:
        res.add(SCENARIO, "ratio `grun true` p50 / `srun true` p50", lat["value"] / srun_p50, "x", "")


def run(args, res) -> None:
    why = start_slurm(args)
    if why is not None:
        say(f"scenario 6 skipped: {why}")
        res.add(SCENARIO, "Slurm comparison", [], "", "", f"SKIPPED: {why}")
        res.details["slurm"] = {"skipped": why}
        return
    detail: dict = {"nodes": args.slurm_nodes}
    holder = slurm_cgroup()
    try:
        array_scale(args, res, detail)
        if not args.slurm_array_only:
            add_ratios(res, measure(args, res, detail, holder))
    finally:
        say("scenario 6: stopping Slurm (stop.sh)")
        subprocess.run(["timeout", "120", os.path.join(SLURM_DIR, "stop.sh")], capture_output=True, text=True)
        if holder.bench_cgroup is not None:
            holder.bench_cgroup.remove()
        res.details["slurm"] = detail
