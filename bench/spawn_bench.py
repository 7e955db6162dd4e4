#!/usr/bin/env python3
"""CPU per job of the node's start path: grun's fork server + per-job supervisor, against alternatives.

    python bench/spawn_bench.py [N] [--root DIR]      (root: for the cpuacct cgroup that counts the CPU)

For each variant: N job directories are prepared (as Node._launch writes them). A fork server process
gets their paths on stdin, and the time runs until every supervisor has pinged "finished". CPU is the
cpuacct-cgroup total of the fork server and everything it forked (supervisors and jobs); the
supervisors are reaped by the kernel, so no rusage sees them. The variants:
  - baseline: `python -m grun.spawner`, one forked Python supervisor per job (what nodes run).
  - gc off: the same, with gc.disable() + gc.freeze() in the fork server before it forks.
  - inline: supervise() called in the fork server itself, one job after the other. There is no per-job
    fork, and all the file and Popen work is still done.
  - floor: a Python loop of subprocess.run(["/bin/true"]).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.run import CpuGroup, job_spec

INLINE = ("import sys\nfor line in sys.stdin.buffer:\n    d, _, n = line.decode().rstrip('\\n').partition('\\t')\n"
          "    s.supervise(d, n or None)\nraise SystemExit")
VARIANTS = {
    "baseline: python -m grun.spawner (a forked supervisor per job)": None,
    "gc.disable() + gc.freeze() in the fork server": "import gc; gc.disable(); gc.freeze()",
    "inline: supervise() in one process, no per-job fork": INLINE,
}


def prepare(root: str, n: int) -> str:
    jobs = os.path.join(root, "jobs")
    os.makedirs(jobs)
    spec = dict(job_spec(), id=0, cpus=1.0, memory=100, node="bench", stdin=False)
    for i in range(1, n + 1):
        d = os.path.join(jobs, str(i))
        os.mkdir(d)
        for stream in ("stdout", "stderr"):
            open(os.path.join(d, stream), "wb").close()
        with open(os.path.join(d, "job.json"), "w") as f:
            json.dump(dict(spec, id=i), f)
    return jobs


def run_variant(code: str | None, n: int, root: str) -> tuple[float, float]:
    jobs = prepare(root, n)
    sock_path = os.path.join(root, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    argv = [sys.executable, "-m", "grun.spawner"] if code is None else \
        [sys.executable, "-c", f"import os, grun.spawner as s\n{code}\ns.serve()"]
    group = CpuGroup.create()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    try:
        group.add(proc.pid)
        time.sleep(0.5)  # let it import
        used0, t0 = group.usage(), time.perf_counter()

        def feed():  # from a thread: a full pipe must not stop us reading the pings
            for i in range(1, n + 1):
                proc.stdin.write(f"{jobs}/{i}\t{sock_path}\n".encode())
            proc.stdin.flush()

        threading.Thread(target=feed, daemon=True).start()
        done = 0
        while done < n:
            if sock.recv(256).startswith(b"finished"):
                done += 1
        wall, cpu = time.perf_counter() - t0, group.usage() - used0
    finally:
        proc.stdin.close()
        proc.wait()
        sock.close()
        time.sleep(0.2)
        group.remove()
    return n / wall, cpu * 1000 / n


def floor(n: int) -> tuple[float, float]:
    group = CpuGroup.create()
    code = f"import subprocess, sys\nsys.stdin.readline()\nfor _ in range({n}): subprocess.run(['/bin/true'])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    group.add(proc.pid)
    time.sleep(0.3)
    used0, t0 = group.usage(), time.perf_counter()
    proc.communicate(b"go\n")
    wall, cpu = time.perf_counter() - t0, group.usage() - used0
    time.sleep(0.1)
    group.remove()
    return n / wall, cpu * 1000 / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", default="/var/tmp/grun-bench", help="where job directories go (not /tmp: README)")
    args = ap.parse_args()
    if not os.access(os.path.join(CpuGroup.ROOT, "cgroup.procs"), os.W_OK):
        print("needs a writable cpuacct cgroup (root)", file=sys.stderr)
        return 2
    os.makedirs(args.root, exist_ok=True)
    print(f"{args.n} jobs per run, median of {args.repeat}; CPU of the fork server + supervisors + jobs")
    runs = [floor(args.n) for _ in range(args.repeat)]
    print(f"{'floor: subprocess.run(/bin/true) loop':62s} {statistics.median(r[1] for r in runs):6.2f} ms CPU/job")
    for name, code in VARIANTS.items():
        runs = []
        for _ in range(args.repeat):
            root = tempfile.mkdtemp(prefix="spawn-bench-", dir=args.root)
            try:
                runs.append(run_variant(code, args.n, root))
            finally:
                shutil.rmtree(root, ignore_errors=True)
        cpu = [r[1] for r in runs]
        print(f"{name:62s} {statistics.median(cpu):6.2f} ms CPU/job  runs {[round(c, 2) for c in cpu]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
