#!/usr/bin/env python3
"""CPU per job of the node's start path: grun's reaper (`python -m grun.spawner`), against a floor.

    python bench/spawn_bench.py [N] [--root DIR] [--commit REF]   (root: for the cpuacct cgroup that counts the CPU)

For each variant: N job directories are prepared (as Node._launch writes them: the directory and
job.json). A reaper process gets their paths on stdin, and the time runs until every job has been
pinged "finished". CPU is the cpuacct-cgroup total of the reaper and everything it started. The
variants:
  - the working tree's `python -m grun.spawner`: one long-lived reaper that starts each job with
    Popen (vfork + exec) and waits for it with wait4; per job it creates stdout, stderr, pid and
    status.json (one fsync).
  - with --commit REF: the same protocol run from `git archive REF` (e.g. a commit from before the
    reaper, when the fork server forked one Python supervisor per job), back to back.
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

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.clusters import job_spec
from bench.meter import CpuGroup


def prepare(root: str, n: int) -> str:
    jobs = os.path.join(root, "jobs")
    os.makedirs(jobs)
    spec = dict(job_spec(), id=0, cpus=1.0, memory=100, node="bench", stdin=False)
    for i in range(1, n + 1):
        d = os.path.join(jobs, str(i))
        os.mkdir(d)
        with open(os.path.join(d, "job.json"), "w") as f:
            json.dump(dict(spec, id=i), f)
    return jobs


def run_variant(pythonpath: str, n: int, root: str) -> tuple[float, float]:
    jobs = prepare(root, n)
    sock_path = os.path.join(root, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    group = CpuGroup.create()
    env = dict(os.environ, PYTHONPATH=pythonpath)
    # cwd too: `python -m` puts the cwd first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE,
                            start_new_session=True, env=env, cwd=pythonpath)
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
            data = sock.recv(1 << 16)  # the reaper sends the ends of several jobs in one datagram
            done += sum(1 for line in data.split(b"\n") if line.startswith(b"finished"))
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


def archive(ref: str, dest: str) -> str:
    """`git archive REF` of the repository, unpacked under dest; returns the directory for PYTHONPATH."""
    out = os.path.join(dest, "src")
    os.makedirs(out)
    data = subprocess.run(["git", "-C", HERE, "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=data, check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", default="/var/tmp/grun-bench", help="where job directories go (not /tmp: README)")
    ap.add_argument("--commit", help="also measure the spawner of this commit (git archive), back to back")
    args = ap.parse_args()
    if not os.access(os.path.join(CpuGroup.ROOT, "cgroup.procs"), os.W_OK):
        print("needs a writable cpuacct cgroup (root)", file=sys.stderr)
        return 2
    os.makedirs(args.root, exist_ok=True)
    src = tempfile.mkdtemp(prefix="spawn-bench-src-", dir=args.root)
    try:
        variants = {"working tree: python -m grun.spawner (the reaper)": HERE}
        if args.commit:
            variants[f"{args.commit}: python -m grun.spawner"] = archive(args.commit, src)
        print(f"{args.n} jobs per run, median of {args.repeat}; CPU of the reaper (fork server) and all it starts")
        runs = [floor(args.n) for _ in range(args.repeat)]
        print(f"{'floor: subprocess.run(/bin/true) loop':62s} {statistics.median(r[1] for r in runs):6.2f} ms CPU/job")
        for name, path in variants.items():
            runs = []
            for _ in range(args.repeat):
                root = tempfile.mkdtemp(prefix="spawn-bench-", dir=args.root)
                try:
                    runs.append(run_variant(path, args.n, root))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
            cpu = [r[1] for r in runs]
            print(f"{name:62s} {statistics.median(cpu):6.2f} ms CPU/job  runs {[round(c, 2) for c in cpu]}"
                  f"  {statistics.median(r[0] for r in runs):,.0f} jobs/s")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
