"""Scenario 10, staging (issue 14): a 2 GiB input staged onto a node that does not share the submitter's files
(`stage: always`; `grun --stage-in big true`), next to the side channel's plain output stream of the same size
(`grun head -c 2G /dev/zero | cat > /dev/null`), alternated in the same run. Staging MB/s: the size over the
time from the job's dispatch to its start, less that of a job with nothing to stage (the base); streaming
MB/s: the size over the time from the job's start to the client's exit, as scenario 5 measures it. The
target: staging at least half the stream's speed."""

from __future__ import annotations

import os
import re
import subprocess
import time

from bench.clusters import GRUN, start_cluster, teardown
from bench.meter import wait_idle, xrun
from bench.report import median, say
from bench.scenarios.streaming import GiB, parse_size

KEY, NAME = "10", "staging"
SCENARIO = f"{KEY} {NAME}"


def add_options(ap) -> None:
    ap.add_argument("--stage-size", type=parse_size, default=2 * GiB, help="bytes of the staged input (default 2G)")


SMOKE = {"stage_size": 4 << 20}


def _job(cluster, cwd: str, shell: str) -> dict:
    """Run `grun -v ...` through bash; the job's record and the client's exit time."""
    r = xrun(["bash", "-c", "set -o pipefail; " + " ".join(GRUN) + " -v " + shell], env=cluster.env, cwd=cwd,
             capture_output=True, text=True, timeout=600)
    t_end = time.time()
    m = re.search(r"job (\d+) queued", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"job failed ({r.returncode}): {r.stderr[-300:]}")
    return dict(cluster.client().job(int(m.group(1))), client_end=t_end)


def measure(cluster, cwd: str, size: int, repeat: int, idle_wait: float) -> dict:
    """Alternated runs: the base (nothing staged), the staged input, the output stream; MB/s of the last two."""
    stage, stream, bases = [], [], []
    for _ in range(repeat):
        wait_idle(idle_wait)
        base = _job(cluster, cwd, "true")
        bases.append(base["start_time"] - base["dispatch_time"])
        staged = _job(cluster, cwd, "--stage-in big true")
        stage.append(size / max(1e-6, staged["start_time"] - staged["dispatch_time"] - bases[-1]) / 1e6)
        os.sync()
        streamed = _job(cluster, cwd, f"head -c {size} /dev/zero | cat > /dev/null")
        stream.append(size / (streamed["client_end"] - streamed["start_time"]) / 1e6)
    return {"stage_mb_s": stage, "stream_mb_s": stream, "base_dispatch_to_start_s": bases}


def prepare_input(cluster, size: int) -> str:
    cwd = os.path.join(cluster.root, "submit")
    os.makedirs(cwd)
    subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=open(os.path.join(cwd, "big"), "wb"), check=True)
    return cwd


def run(args, res) -> None:
    size = args.stage_size
    label = f"{size / GiB:g} GiB" if size >= GiB // 4 else f"{size / 2**20:g} MiB"
    say(f"scenario 10: staging {label} in, next to the output stream, x{args.repeat}")
    cluster = start_cluster(args, nodes=1, prepare=lambda c: c.node_specs["n1"].update(stage="always"))
    try:
        runs = measure(cluster, prepare_input(cluster, size), size, args.repeat, args.idle_wait)
    finally:
        teardown(cluster, discard=True)
    ratio = median(runs["stage_mb_s"]) / median(runs["stream_mb_s"])
    res.add(SCENARIO, f"{label} staged in (`--stage-in`, node stage: always)", runs["stage_mb_s"], "MB/s",
            "≥ 0.5 x the stream", f"{ratio:.2f} x the output stream in the same run")
    res.add(SCENARIO, f"{label} output stream `grun head | cat >/dev/null`, from job start", runs["stream_mb_s"], "MB/s")
    res.details[SCENARIO] = runs
