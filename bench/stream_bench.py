"""Throughput of grun.stream: a real job writes N bytes into its spool file while a client in another
process streams them to /dev/null with attach().  Compared with a raw pipe measured in the same run.
With --cluster: real daemons (tests/cluster.py), `grun` jobs streaming SIZE through stdout to a fast
reader and to one throttled to --rate, and through stdin; MB/s, the node's peak spool bytes on disk, the
node daemon's and the client's RSS, next to raw pipes (issue 14: the spool stays <= spool_max).

    python bench/stream_bench.py [--size 1G] [--repeat 3]
    python bench/stream_bench.py --cluster [--size 10G] [--rate 50M] [--spool-max 1G]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from grun.stream import attach
from grun.stream_server import StreamServer

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.upper().rstrip("B")
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def client_main(host: str, port: str, token: str) -> None:
    """Runs in its own process, as the grun client would."""
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        status = attach(host, int(port), token, stdout_fd=null.fileno())
        print(f"{time.perf_counter() - t0:.6f} {status['rc']}")


def run_client(server: StreamServer, token: str) -> subprocess.Popen:
    host, port = server.address
    return subprocess.Popen([sys.executable, __file__, "--client", host, str(port), token],
                            stdout=subprocess.PIPE, text=True)


def raw_pipe(size: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"head -c {size} /dev/zero | cat > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def spool_only(size: int, job_dir: str) -> float:
    """The job alone, writing its spool file (an empty one, as in the live case): the ceiling."""
    open(os.path.join(job_dir, "stdout"), "wb").close()
    t0 = time.perf_counter()
    with open(os.path.join(job_dir, "stdout"), "ab") as out:
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=out, check=True)
    return time.perf_counter() - t0


def live(size: int, job_dir: str, server: StreamServer) -> float:
    """Client attached before the job starts; time from job start to EXIT received."""
    for name in ("stdout", "stderr"):
        open(os.path.join(job_dir, name), "wb").close()
    holder: dict = {}
    token = server.offer("bench", job_dir, get_status=lambda: holder.get("status"))
    client = run_client(server, token)
    time.sleep(0.5)  # let the client connect and settle into tailing
    t0 = time.perf_counter()
    with open(os.path.join(job_dir, "stdout"), "ab") as out:
        job = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=out)

    def reap():
        holder["status"] = {"rc": job.wait()}
        server.wake("bench")

    threading.Thread(target=reap, daemon=True).start()
    client.wait()
    elapsed = time.perf_counter() - t0
    assert client.returncode == 0 and os.path.getsize(os.path.join(job_dir, "stdout")) == size
    return elapsed


def replay(job_dir: str, server: StreamServer) -> float:
    """The job has ended; a client re-attaches at offset 0 (time measured inside the client)."""
    token = server.offer("bench", job_dir, get_status=lambda: {"rc": 0})
    client = run_client(server, token)
    out, _ = client.communicate()
    assert client.returncode == 0
    return float(out.split()[0])


THROTTLE = ("import os, sys, time\nrate, t0, n = int(sys.argv[1]), time.monotonic(), 0\n"
            "while b := os.read(0, 1 << 20):\n    n += len(b)\n    time.sleep(max(0, n / rate - (time.monotonic() - t0)))\n")


def spool_bytes(jobs_dir: str) -> int:
    """What the node's job spool holds on disk (st_blocks: a punched range takes none)."""
    total = 0
    for root, _, files in os.walk(jobs_dir):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def measured(cmd: str, env: dict, node_pid: int, jobs_dir: str) -> dict:
    """Run `cmd` in a shell; its wall time, and, sampled every 20 ms meanwhile, the node's peak spool
    bytes and the node daemon's and the grun client's RSS."""
    import psutil
    node, peak = psutil.Process(node_pid), {"spool": 0, "node_rss": 0, "client_rss": 0}
    rss0, cpu0 = node.memory_info().rss, sum(node.cpu_times()[:2])
    before = set(os.listdir(jobs_dir))  # (earlier jobs' spools go a few seconds after they end)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=True, env=env, stdout=subprocess.PIPE)
    shell = psutil.Process(proc.pid)
    while proc.poll() is None:
        peak["spool"] = max(peak["spool"], sum(spool_bytes(os.path.join(jobs_dir, job))
                                               for job in set(os.listdir(jobs_dir)) - before))
        peak["node_rss"] = max(peak["node_rss"], node.memory_info().rss)
        with contextlib.suppress(psutil.Error):
            for child in shell.children(recursive=True):
                if "grun.cli" in " ".join(child.cmdline()):
                    peak["client_rss"] = max(peak["client_rss"], child.memory_info().rss)
        time.sleep(0.02)
    out = proc.stdout.read()
    return dict(peak, seconds=time.perf_counter() - t0, rc=proc.returncode, out=out, node_rss0=rss0,
                node_cpu=sum(node.cpu_times()[:2]) - cpu0)


def cluster_main(args) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from cluster import LocalCluster
    size, rate, spool_max = parse_size(args.size), parse_size(args.rate), parse_size(args.spool_max)
    py, head = sys.executable, f"head -c {size} /dev/zero"
    cases = [("raw pipe: head | cat", f"{head} | cat > /dev/null"),
             ("stdout, fast reader: grun head | cat", f"{py} -m grun.cli {head} | cat > /dev/null"),
             (f"stdout, reader at {args.rate}B/s", f"{py} -m grun.cli {head} | {py} -c '{THROTTLE}' {rate}"),
             ("raw pipe: head | wc -c", f"{head} | wc -c"),
             ("stdin: head | grun wc -c", f"{head} | {py} -m grun.cli wc -c")]
    if args.no_slow:
        cases = [c for c in cases if "reader at" not in c[0]]
    with LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, "spool_max": f"{spool_max >> 20}M"}}) as c:
        jobs_dir = os.path.join(c.root, "n1", "node", "jobs")
        print(f"{size / 2**30:g} GiB each, spool_max {spool_max >> 20} MiB, {os.cpu_count()} cores, "
              f"disk free {shutil.disk_usage(c.root).free / 2**30:.0f} GiB")
        print(f"{'case':<40} {'MB/s':>7} {'peak spool MB':>14} {'node RSS MB (start/peak)':>25} {'client RSS MB':>14} {'node CPU s':>10}")
        for name, cmd in cases:
            m = measured(cmd, c.env, c.procs["n1"].pid, jobs_dir)
            assert m["rc"] == 0 and (b"wc" not in cmd.encode() or int(m["out"].split()[0]) == size), m
            print(f"{name:<40} {size / m['seconds'] / 1e6:>7,.0f} {m['spool'] / 1e6:>14,.1f} "
                  f"{m['node_rss0'] / 1e6:>11,.1f} / {m['node_rss'] / 1e6:>9,.1f} {m['client_rss'] / 1e6:>14,.1f} {m['node_cpu']:>10.2f}",
                  flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="bytes to stream, e.g. 1G, 256M (default 1G)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case; the best is shown")
    ap.add_argument("--cluster", action="store_true", help="real daemons: stdout fast and throttled, stdin")
    ap.add_argument("--rate", default="50M", help="--cluster: the throttled reader's bytes a second")
    ap.add_argument("--spool-max", default="1G", help="--cluster: the node's spool_max")
    ap.add_argument("--no-slow", action="store_true", help="--cluster: skip the throttled reader")
    args = ap.parse_args()
    if args.cluster:
        return cluster_main(args)
    size = parse_size(args.size)
    job_dir = tempfile.mkdtemp(prefix="grun-stream-bench-")
    server = StreamServer("127.0.0.1")
    try:
        cases = {
            "raw pipe: head | cat > /dev/null": lambda: raw_pipe(size),
            "job writes spool file only (no client)": lambda: spool_only(size, job_dir),
            "grun.stream live: job -> spool -> TCP -> client": lambda: live(size, job_dir, server),
            "grun.stream replay of finished spool file": lambda: replay(job_dir, server),
        }
        print(f"{size / 1e6:,.0f} MB, best of {args.repeat}, {os.cpu_count()} cores")
        print(f"{'case':<50} {'seconds':>8} {'MB/s':>8}")
        for name, case in cases.items():
            best = min(case() for _ in range(args.repeat))
            print(f"{name:<50} {best:>8.3f} {size / best / 1e6:>8,.0f}")
    finally:
        server.close()
        shutil.rmtree(job_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
