"""Throughput of grun.stream: a real job writes N bytes into its spool file while a client in another
process streams them to /dev/null with attach().  Compared with a raw pipe measured in the same run.

    python bench/stream_bench.py [--size 1G] [--repeat 3]
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="bytes to stream, e.g. 1G, 256M (default 1G)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case; the best is shown")
    args = ap.parse_args()
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
