"""Scenario 4, history: the master's per-job cost with 0 vs H finished jobs in history (written straight
into the master's store with grun.store.Store before the master starts), and the master's restart time
with Q queued jobs (queued through master.submit_many with no node registered)."""

from __future__ import annotations

import os
import signal
import statistics
import time

from bench.clusters import fill_queue, job_spec, master_state_dir, start_cluster, teardown, wait_done
from bench.meter import CpuMeter, rss_mb, wait_idle
from bench.report import fmt, notes, other_load, say

KEY, NAME = "4", "history"
SCENARIO = f"{KEY} {NAME}"
TARGET_HISTORY, TARGET_RESTART = "within 10% of empty", "≤ 3 s"


def add_options(ap) -> None:
    ap.add_argument("--history", type=lambda text: [int(n) for n in text.split(",")], default=[100000, 1000000],
                    help="finished jobs in history, a comma list, each compared with an empty history "
                         "(default 100000,1000000)")
    ap.add_argument("--history-single", type=int, default=100, help="single submits per history round")
    ap.add_argument("--history-batch", type=int, default=1000, help="batch size per history round")
    ap.add_argument("--queue", type=int, default=100000, help="queued jobs for the restart test (default 100000)")


SMOKE = {"history": [300], "history_single": 5, "history_batch": 20, "queue": 300}


def seed_history(state_dir: str, count: int) -> float:
    """Write `count` finished jobs into the master's store (history files + a snapshot with next_id)."""
    from grun.store import Store
    t0 = time.time()
    spec = job_spec()
    base = time.time() - count * 0.002
    store = Store(state_dir)
    store.load()
    batch = []
    for i in range(1, count + 1):
        t = base + i * 0.002
        batch.append(dict(spec, id=i, cpus=1.0, memory=100, stdin=False, priority=20, token=os.urandom(12).hex(),
                          name=None, host=None, state="done", submit_time=t, attempt=1, node="n1",
                          dispatch_time=t + 0.004, start_time=t + 0.008, pid=None, exit_code=0,
                          usage={"wall": 0.001, "utime": 0.0, "stime": 0.001, "maxrss_kb": 1024,
                                 "read_blocks": 0, "write_blocks": 0}, end_time=t + 0.02, exit=0))
        if len(batch) == 10000:
            store.add_history(batch)
            store.flush()  # keeps a million-job history from sitting in memory first
            batch = []
    store.add_history(batch)
    ticket = store.journal.rotate()
    store.write_snapshot(ticket, {"next_id": count + 1, "jobs": []})
    store.close()
    return time.time() - t0


def history_round(args, cluster, m_single: int, m_batch: int) -> dict:
    client = cluster.client()
    note = wait_idle(args.idle_wait)
    spec = job_spec()
    lat = []
    ids = []
    for _ in range(m_single):
        t0 = time.perf_counter()
        ids.append(client.submit(spec))
        lat.append(time.perf_counter() - t0)
    wait_done(client, ids, timeout=120)
    specs = [job_spec() for _ in range(m_batch)]
    meter = CpuMeter(cluster)
    t0 = time.time()
    ids = client.call("submit_many", specs)
    records = wait_done(client, ids, timeout=max(60.0, m_batch / 10))
    cpu = meter.stop()
    t_last = max(r["end_time"] for r in records.values())
    t1 = time.perf_counter()
    client.job(1)
    lookup = time.perf_counter() - t1
    return {"submit_p50_ms": statistics.median(lat) * 1000, "done_per_s": m_batch / (t_last - t0),
            "wall_s": t_last - t0,
            "master_cpu_ms_per_job": cpu["master"] * 1000 / m_batch, "lookup_job1_ms": lookup * 1000,
            "master_rss_mb": rss_mb(cluster, "master"), "cpu_s": cpu, "note": note}


def ping_until_up(port: int, timeout: float = 120.0) -> float:
    from grun.client import Client, MasterUnreachable
    client = Client("127.0.0.1", port, connect_wait=0)
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        try:
            client.call("ping", wait=0)
            return time.perf_counter() - t0
        except MasterUnreachable:
            time.sleep(0.01)
    raise TimeoutError("master did not come back")


def restart_master(cluster, sig: int) -> dict:
    t0 = time.perf_counter()
    cluster.kill("master", sig)
    stop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster._spawn("master", cluster.configs["master"])
    up = ping_until_up(cluster.port)
    return {"stop_s": stop_s, "start_s": up, "spawn_overhead_s": time.perf_counter() - t0 - up}


def _cluster_with_history(args, h: int, detail: dict):
    def seed(cluster) -> None:
        if h:
            secs = seed_history(master_state_dir(cluster), h)
            detail[f"seed_{h}_s"] = secs
            say(f"  seeded {h:,} history records in {secs:.1f} s")
    return start_cluster(args, prepare=seed)


def growth(args, res, detail: dict) -> None:
    """The same rounds with an empty history and with each level of --history."""
    R, levels = args.repeat, detail["history"]
    m_single, m_batch = args.history_single, args.history_batch
    per = {}
    for h in levels:
        say(f"scenario 4: {h} finished jobs in history: {m_single} single submits + batch of {m_batch}, x{R}")
        cluster = None
        try:
            cluster = _cluster_with_history(args, h, detail)
            per[h] = [history_round(args, cluster, m_single, m_batch) for _ in range(R)]
        finally:
            if cluster is not None:
                teardown(cluster)
        detail["rounds"][str(h)] = per[h]
    empty_cpu = statistics.median([r["master_cpu_ms_per_job"] for r in per[0]])
    for h in levels:
        rounds = per[h]
        tag = f"{h:,} in history"
        cpu = [r["master_cpu_ms_per_job"] for r in rounds]
        ratio = f"x{statistics.median(cpu) / empty_cpu:.2f} of empty" if h and empty_cpu else ""
        res.add(SCENARIO, f"{tag}: master CPU per job (batch of {m_batch}, submit..finish)", cpu, "ms",
                TARGET_HISTORY if h else "",
                notes(ratio, other_load([r["cpu_s"] for r in rounds], [r["wall_s"] for r in rounds])))
        res.add(SCENARIO, f"{tag}: batch submit->last done", [r["done_per_s"] for r in rounds], "jobs/s")
        res.add(SCENARIO, f"{tag}: single submit round trip p50", [r["submit_p50_ms"] for r in rounds], "ms",
                "", f"{m_single} sequential Client.submit calls")
        res.add(SCENARIO, f"{tag}: master.job(oldest id) lookup", [r["lookup_job1_ms"] for r in rounds], "ms",
                "", "not a per-job path; shows the history scan")


def restart(args, res, detail: dict) -> None:
    """Master start with an empty state, then restarts with --queue jobs queued (no node registered)."""
    R, Q = args.repeat, args.queue
    say(f"scenario 4: master restart with {Q:,} queued jobs")
    cluster = start_cluster(args, master_only=True)
    try:
        empty = [restart_master(cluster, signal.SIGTERM)["start_s"] for _ in range(R)]
        client, spec = cluster.client(), job_spec()
        t0 = time.perf_counter()
        batch_times = fill_queue(client, Q, spec)
        fill_s = time.perf_counter() - t0
        rss_q = rss_mb(cluster, "master")
        kill9, clean, stops = [], [], []
        for _ in range(R):
            kill9.append(restart_master(cluster, signal.SIGKILL)["start_s"])
            r = restart_master(cluster, signal.SIGTERM)
            clean.append(r["start_s"])
            stops.append(r["stop_s"])
        count = len(cluster.client().jobs())
        detail["restart"] = {"empty_s": empty, "kill9_s": kill9, "clean_s": clean, "stop_s": stops,
                             "fill_s": fill_s, "submit_many_ms": [t * 1000 for t in batch_times],
                             "queued_after": count, "master_rss_mb": rss_q}
    finally:
        teardown(cluster)
    check = "" if count == Q else f"ONLY {count} of {Q} jobs came back"
    res.add(SCENARIO, "master start, empty state", empty, "s", "", "process start to first ping")
    res.add(SCENARIO, f"master restart with {Q:,} queued, after SIGTERM (snapshot)", clean, "s",
            TARGET_RESTART, check or f"stop (writes snapshot) {fmt(statistics.median(stops))} s")
    res.add(SCENARIO, f"master restart with {Q:,} queued, after kill -9 (snapshot + journal)", kill9, "s",
            TARGET_RESTART, check)
    tenth = max(1, len(batch_times) // 10)
    first, last = statistics.median(batch_times[:tenth]), statistics.median(batch_times[-tenth:])
    res.add(SCENARIO, f"filling the queue to {Q:,} (submit_many x2000)", Q / fill_s, "jobs/s", "",
            f"a 2000-job call: {fmt(first * 1000)} ms in the first tenth, {fmt(last * 1000)} ms in the last "
            f"(medians); master RSS {fmt(rss_q)} MB = {fmt(rss_q * 1e6 / Q / 1024)} KiB per queued job")


def run(args, res) -> None:
    detail: dict = {"history": [0] + [h for h in args.history if h], "queue": args.queue, "how_history": "written with grun.store.Store (add_history + "
                    "a snapshot with next_id) before the master starts",
                    "how_queue": "master.submit_many in batches of 2000, no node registered", "rounds": {}}
    growth(args, res, detail)
    restart(args, res, detail)
    res.details["history"] = detail
