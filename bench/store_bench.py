"""Rough figures for grun.store on this machine: python bench/store_bench.py [dir]."""

import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from grun.store import Store


def job(i: int) -> dict:
    return {"id": i, "state": "queued", "cmd": ["sh", "-c", f"echo job {i}"], "user": "alice",
            "cwd": "/home/alice/work", "cpus": 1, "mem": 1 << 30, "node": None, "submit_time": 1.7e9 + i,
            "attempt": 0, "env": {"PATH": "/usr/bin:/bin", "HOME": "/home/alice"}}


def fresh(root: str, name: str, **kw) -> Store:
    store = Store(os.path.join(root, name), **kw)
    store.load()
    return store


def log_latency(root: str) -> str:
    store = fresh(root, "latency")
    samples = []
    for i in range(2000):
        t = time.perf_counter()
        store.log([{"op": "submit", "id": i}])
        samples.append(time.perf_counter() - t)
    store.close()
    samples.sort()
    return f"median {statistics.median(samples) * 1e6:.0f} µs, p99 {samples[int(len(samples) * .99)] * 1e6:.0f} µs"


def log_throughput(root: str, threads: int = 32, per_thread: int = 1000) -> str:
    store = fresh(root, "throughput")

    def work(t: int) -> None:
        for n in range(per_thread):
            store.log([{"op": "submit", "t": t, "n": n}])

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - start
    commits = store.journal.commits
    store.close()
    total = threads * per_thread
    return f"{total / elapsed:,.0f} records/s ({total / commits:.1f} records per fsync)"


def snapshot(root: str, n: int) -> str:
    store = fresh(root, f"snap{n}")
    state = {"next_id": n + 1, "jobs": [job(i) for i in range(n)]}
    start = time.perf_counter()
    store.write_snapshot(store.journal.rotate(), state)
    written = time.perf_counter() - start
    store.close()
    size = sum(os.path.getsize(os.path.join(store.dir, f)) for f in os.listdir(store.dir) if f.startswith("snapshot"))
    store = Store(store.dir)
    start = time.perf_counter()
    loaded, _ = store.load()
    read = time.perf_counter() - start
    store.close()
    assert loaded == state
    return f"write {written:.2f} s, load {read:.2f} s ({size / 1e6:.1f} MB)"


def history_cost(root: str, existing: int) -> str:
    store = fresh(root, f"hist{existing}")
    for start in range(0, existing, 5000):
        store.add_history([dict(job(i), state="done", end_time=1.8e9 + i) for i in range(start, start + 5000)])
        store.flush()
    adds, flushes = [], []
    for k in range(20):
        batch = [dict(job(i), state="done", end_time=1.8e9 + i) for i in range(existing + 100 * k, existing + 100 * (k + 1))]
        t = time.perf_counter()
        store.add_history(batch)
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.flush()
        flushes.append(time.perf_counter() - t)
    t = time.perf_counter()
    store.history(50)
    query = time.perf_counter() - t
    store.close()
    return (f"add_history {statistics.median(adds) / 100 * 1e6:.1f} µs/job, "
            f"flush of 100 {statistics.median(flushes) * 1e3:.1f} ms, history(50) {query * 1e3:.1f} ms")


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="grun-store-bench-")
    rows = [("log() latency, 1 thread", log_latency(root)),
            ("log() with 32 threads", log_throughput(root)),
            ("snapshot 10k jobs", snapshot(root, 10_000)),
            ("snapshot 100k jobs", snapshot(root, 100_000)),
            ("history, 0 existing", history_cost(root, 0)),
            ("history, 50k existing", history_cost(root, 50_000))]
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")


if __name__ == "__main__":
    main()
