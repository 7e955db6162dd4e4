"""Scenario 5, streaming: a job writing 1 GiB (10 GiB more with --big) to stdout, received by `grun` and
piped to `cat > /dev/null`, next to a raw pipe `head -c 1G /dev/zero | cat > /dev/null` and the job's
spool write alone (`head -c 1G /dev/zero > file`)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

from bench.clusters import GRUN, start_cluster, teardown
from bench.meter import CpuMeter, wait_idle, xrun
from bench.report import fmt, median, notes, other_load, say

KEY, NAME = "5", "streaming"
SCENARIO = f"{KEY} {NAME}"
TARGET = "≥ 1000 MB/s"
GiB = 1 << 30


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.upper().rstrip("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def add_options(ap) -> None:
    ap.add_argument("--big", action="store_true", help="also stream 10 GiB")
    ap.add_argument("--stream-size", type=parse_size, default=GiB, help="bytes to stream (default 1G)")


SMOKE = {"big": False, "stream_size": 4 << 20}


def _dirty_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


def stream_runs(args, cluster, client, size: int, label: str) -> dict:
    """MB/s of the raw pipe, of the spool write alone and of `grun` (end to end and from the job's start)."""
    R = 1 if size > GiB else args.repeat
    say(f"scenario 5: streaming {label}, x{R}")
    raw, spool, e2e, stream, cpus, walls, dirty = [], [], [], [], [], [], []
    for _ in range(R):
        wait_idle(args.idle_wait)
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", f"head -c {size} /dev/zero | cat > /dev/null"], check=True)
        raw.append(size / (time.perf_counter() - t0) / 1e6)
        # The job's spool write slows ~3x while the kernel writes back (past ~2.3 GB dirty here): each
        # timed write starts with nothing waiting to be written back, neither the previous runs' spools
        # nor the earlier scenarios' files (sync, untimed), and the row says how much was dirty all the same.
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
    return {"raw_pipe": raw, "spool_write": spool, "grun_end_to_end": e2e, "grun_from_job_start": stream,
            "cpu_s": cpus, "dirty_bytes_before": dirty, "walls_s": walls}


def add_rows(res, label: str, runs: dict) -> None:
    cpus = runs["cpu_s"]

    def med(key):
        m = median(c.get(key) for c in cpus)
        return "?" if m is None else fmt(m)
    note = notes(f"whole command incl. CLI start {fmt(median(runs['grun_end_to_end']))} MB/s",
                 f"CPU s: node daemon {med('node_daemons')}, job+supervisor {med('supervisors_and_jobs')}, "
                 f"client+cat {med('clients')}",
                 "dirty before each run " + "/".join(f"{d / 1e9:.1f}" for d in runs["dirty_bytes_before"]) + " GB",
                 other_load(cpus, runs["walls_s"]))
    res.add(SCENARIO, f"{label}: `grun head -c {label} /dev/zero | cat >/dev/null`, from job start",
            runs["grun_from_job_start"], "MB/s", TARGET, note)
    res.add(SCENARIO, f"{label}: reference raw pipe `head | cat >/dev/null`", runs["raw_pipe"], "MB/s",
            "DESIGN: raw TCP 1,860 MB/s")
    res.add(SCENARIO, f"{label}: reference `head > file` (the job's spool write alone)", runs["spool_write"], "MB/s")


def run(args, res) -> None:
    detail: dict = {}
    cluster = start_cluster(args, nodes=1)
    try:
        from grun.client import Client
        client = Client("127.0.0.1", cluster.port)
        for size in [args.stream_size] + ([10 * GiB] if args.big else []):
            label = f"{size / GiB:g} GiB" if size >= GiB // 4 else f"{size / 2**20:g} MiB"
            detail[label] = stream_runs(args, cluster, client, size, label)
            add_rows(res, label, detail[label])
    finally:
        teardown(cluster, discard=True)
    res.details["streaming"] = detail
