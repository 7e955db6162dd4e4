"""Scenario 1, throughput: N trivial jobs (`true`) through (a) the Pyro5 API with several concurrent
submitter processes, one connection each, (b) one master.submit_many batch, (c) a loop of
`grun --nowait true`, (d) one `grun --nowait --array 1-N true`; jobs/s from the first submit to the last
completion, submit-only jobs/s and the CPU per job. With the array mode, the array's scale: the time to
submit `--array 1-100000` and the master's RSS before and after, next to the same tasks as 100,000 job
specs in submit_many batches (what the client did before arrays were one record). References: spawning
/bin/true from Python (sequential, 2-way) and, with --tsp, Debian's task-spooler."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from bench.clusters import GRUN, job_phases, job_spec, start_cluster, teardown, wait_done
from bench.meter import CpuMeter, rss_mb, wait_idle, xrun
from bench.report import cpu_note, fmt, median, notes, other_load, say

KEY, NAME = "1", "throughput"
SCENARIO = f"{KEY} {NAME}"
TARGET = "≥ 500 jobs/s, ≥ 4x Slurm"
RUN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py")
MODES = ("api", "batch", "cli", "array")


def add_options(ap) -> None:
    ap.add_argument("--tsp", action="store_true", help="also run Debian's task-spooler")
    ap.add_argument("--modes", default="api,batch,cli,array",
                    type=lambda text: [m.strip() for m in text.split(",") if m.strip() in MODES],
                    help="submission modes (default api,batch,cli,array)")
    ap.add_argument("-n", "--n", type=int, default=1000, help="jobs per throughput run (default 1000)")
    ap.add_argument("--n-cli", type=int, default=100, help="`grun --nowait` calls per CLI run (default 100)")
    ap.add_argument("--n-raw", type=int, default=2000, help="/bin/true spawns per reference run (default 2000)")
    ap.add_argument("--submitters", type=int, default=4, help="concurrent submitter processes (default 4)")
    ap.add_argument("--array-n", type=int, default=100_000, help="tasks in the array-scale run (default 100000)")


SMOKE = {"tsp": False, "n": 20, "n_cli": 3, "n_raw": 50, "submitters": 2, "array_n": 2000}


# ---- helper processes: get ready, wait for "go" on stdin, work, print one JSON line ----------------

def spawn_children(mode: str, counts: list[int], extra: list[str]) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, RUN_PY, mode, str(c), *extra], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for c in counts]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            for q in procs:
                q.kill()
            raise RuntimeError(f"{mode} helper did not start: {line!r}")
    return procs


def go_and_collect(procs: list[subprocess.Popen]) -> tuple[float, list[dict]]:
    t0 = time.time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"helper failed with code {p.returncode}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return t0, outs


def _submitter(count: str, host: str, port: str) -> None:
    import grun
    from grun import auth
    from grun.client import Client
    keys = json.loads(os.environ.get("GRUN_BENCH_KEYS") or "{}")  # (--auth, --tls: the cluster's secret, TLS)
    auth.use(keys.get("secret_file"), None, keys.get("tls"))
    client = Client(host, int(port))
    client.call("ping")
    spec = job_spec()
    print("ready", flush=True)
    sys.stdin.readline()
    ids = [client.submit(spec) for _ in range(int(count))]
    print(json.dumps({"ids": ids, "end": time.time(), "grun": grun.__file__}), flush=True)


def _spawner(count: str) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(count)):
        subprocess.run(["/bin/true"])
    print(json.dumps({"end": time.time()}), flush=True)


HELPERS = {"_submitter": _submitter, "_spawner": _spawner}  # `python bench/run.py _submitter ...`


# ---- the four ways to submit: each returns (meter, first submit, last submit, ids) -------------------

def submit_api(args, cluster, client, n):
    k = max(1, min(args.submitters, n))
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    procs = spawn_children("_submitter", counts, ["127.0.0.1", str(cluster.port)])
    meter = CpuMeter(cluster)
    t0, outs = go_and_collect(procs)
    import grun
    if {o["grun"] for o in outs} != {grun.__file__}:  # --commit: the helpers must measure the export too
        raise RuntimeError(f"the submitters imported {sorted({o['grun'] for o in outs})}, not {grun.__file__}")
    return meter, t0, max(o["end"] for o in outs), [i for o in outs for i in o["ids"]]


def submit_batch(args, cluster, client, n):
    specs = [job_spec() for _ in range(n)]
    meter = CpuMeter(cluster)
    t0 = time.time()
    ids = client.call("submit_many", specs)
    return meter, t0, time.time(), ids


def submit_cli(args, cluster, client, n):
    meter = CpuMeter(cluster)
    t0, ids = time.time(), []
    for _ in range(n):
        r = xrun(GRUN + ["--nowait", "true"], env=cluster.env, cwd="/tmp", capture_output=True, text=True, timeout=60)
        m = re.search(r"Job_ID: (\d+)", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"grun --nowait failed ({r.returncode}): {r.stderr.strip()[-300:]}")
        ids.append(int(m.group(1)))
    return meter, t0, time.time(), ids


def submit_array(args, cluster, client, n):
    meter = CpuMeter(cluster)
    t0 = time.time()
    r = xrun(GRUN + ["--nowait", "--array", f"1-{n}", "true"], env=cluster.env, cwd="/tmp",
             capture_output=True, text=True, timeout=120)
    t_sub = time.time()
    ids = [int(i) for i in re.findall(r"Job_ID: (\d+)", r.stdout)]
    if r.returncode != 0 or len(ids) != 1:  # one array job; its end is its last task's
        raise RuntimeError(f"grun --array failed ({r.returncode}, {len(ids)} ids): {r.stderr.strip()[-300:]}")
    return meter, t0, t_sub, ids


SUBMIT = {"api": submit_api, "batch": submit_batch, "cli": submit_cli, "array": submit_array}


def throughput_run(args, mode: str, n: int) -> dict:
    cluster = start_cluster(args)
    try:
        client = cluster.client()
        note = wait_idle(args.idle_wait)
        meter, t0, t_sub, ids = SUBMIT[mode](args, cluster, client, n)
        records = wait_done(client, ids, timeout=max(60.0, n / 10))
        t_seen = time.time()
        cpu = meter.stop()
        ends = [r["end_time"] for r in records.values() if r.get("end_time")]
        t_last = max(ends) if ends else t_seen
        bad = sum(1 for r in records.values() if r.get("state") != "done")
        out = {"mode": mode, "n": n, "submit_s": round(t_sub - t0, 4), "total_s": round(t_last - t0, 4),
               "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_last - t0), "not_done": bad,
               "cpu_s": cpu, "master_cpu_ms_per_job": 1000 * cpu["master"] / n,
               "cluster_cpu_ms_per_job": 1000 * cpu["cluster"] / n if cpu["cluster"] is not None else None,
               "machine_cpu_ms_per_job": 1000 * cpu["machine"] / n, "master_rss_mb": rss_mb(cluster, "master"),
               "phases": job_phases(list(records.values())), "note": note}
        say(f"  {mode} n={n}: submit {out['submit_per_s']:.0f}/s, done {out['done_per_s']:.0f}/s, "
            f"cpu-s: master {cpu['master']:.2f}, cluster {cpu['cluster']}, clients {cpu['clients']:.2f}, "
            f"foreign {cpu['foreign']} {note}")
        return out
    finally:
        teardown(cluster)


def array_scale(args, res, detail: dict) -> None:
    """Submit time and master RSS for one `--array 1-N` (API and CLI), then for N specs in submit_many
    batches of 1,000; a master with no node, so nothing runs meanwhile."""
    n, out = args.array_n, {}
    say(f"scenario 1: array scale, N={n} tasks, a master with no node")
    cluster = start_cluster(args, master_only=True)
    try:
        client = cluster.client()
        client.call("submit_many", [job_spec()])  # (its first submit behind it)
        wait_idle(args.idle_wait)
        for how in ("api", "cli", "specs"):
            before, t0 = rss_mb(cluster, "master"), time.perf_counter()
            if how == "api":
                client.call("submit_many", [dict(job_spec(), array=f"1-{n}")])
            elif how == "cli":
                xrun(GRUN + ["--nowait", "--array", f"1-{n}", "true"], env=cluster.env, cwd="/tmp",
                     capture_output=True, check=True, timeout=120)
            else:
                for start in range(0, n, 1000):
                    client.call("submit_many", [job_spec() for _ in range(min(1000, n - start))])
            took = time.perf_counter() - t0
            out[how] = {"submit_s": round(took, 4), "rss_before_mb": before, "rss_after_mb": rss_mb(cluster, "master")}
            say(f"  {how}: submit {took * 1000:.1f} ms, master RSS {before:.1f} -> {out[how]['rss_after_mb']:.1f} MB")
    finally:
        teardown(cluster)
    detail["array_scale"] = out
    for how, label in (("api", f"API submit of one `array: 1-{n}`"), ("cli", f"`grun --nowait --array 1-{n} true`"),
                       ("specs", f"reference: {n} job specs in submit_many batches of 1,000")):
        r = out[how]
        res.add(SCENARIO, f"{label}: submit time", [r["submit_s"] * 1000], "ms", "< 1,000 ms" if how != "specs" else "",
                f"master RSS {r['rss_before_mb']:.1f} -> {r['rss_after_mb']:.1f} MB")
    res.add(SCENARIO, f"master RSS growth, one array of {n} tasks vs {n} job specs",
            [out["api"]["rss_after_mb"] - out["api"]["rss_before_mb"]], "MB", "kilobytes",
            f"{n} specs: +{out['specs']['rss_after_mb'] - out['specs']['rss_before_mb']:.1f} MB; "
            "sbatch --array not run (Slurm: see scenario 6)")


# ---- references ------------------------------------------------------------------------------------

def raw_spawn(n: int, workers: int) -> float:
    if workers == 1:
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(["/bin/true"])
        return n / (time.perf_counter() - t0)
    procs = spawn_children("_spawner", [n // workers] * workers, [])
    t0, outs = go_and_collect(procs)
    return (n // workers * workers) / (max(o["end"] for o in outs) - t0)


def tsp_run(n: int, slots: int = 2) -> dict:
    tmp = tempfile.mkdtemp(prefix="grun-bench-tsp-")
    env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "socket"), TS_MAXFINISHED=str(2 * n + 10),
               TS_MAXCONN=str(2 * n + 100), TMPDIR=tmp)
    try:
        subprocess.run(["tsp", "-S", str(slots)], env=env, capture_output=True, timeout=10)
        t0 = time.time()
        for _ in range(n):
            xrun(["tsp", "-n", "true"], env=env, stdout=subprocess.DEVNULL, timeout=30, check=True)
        t_sub = time.time()
        deadline = time.monotonic() + max(60.0, n / 10)
        while time.monotonic() < deadline:
            listing = xrun(["tsp", "-l"], env=env, capture_output=True, text=True, timeout=20).stdout
            if not re.search(r" (queued|running|allocating) ", listing):
                break
            time.sleep(0.05)
        t_end = time.time()
        return {"n": n, "slots": slots, "submit_per_s": n / (t_sub - t0), "done_per_s": n / (t_end - t0)}
    finally:
        subprocess.run(["tsp", "-K"], env=env, capture_output=True, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def references(args, res, detail: dict) -> None:
    say("scenario 1: references (spawning /bin/true from Python)")
    nraw, n, R = args.n_raw, args.n, args.repeat
    seq = [raw_spawn(nraw, 1) for _ in range(R)]
    par = [raw_spawn(nraw, 2) for _ in range(R)]
    res.add(SCENARIO, f"reference: Python spawns /bin/true, sequential, N={nraw}", seq, "jobs/s", "DESIGN: 1,530/s")
    res.add(SCENARIO, f"reference: Python spawns /bin/true, 2 processes, N={nraw}", par, "jobs/s", "DESIGN: 2,970/s")
    detail["raw"] = {"sequential": seq, "two_way": par}
    if not args.tsp:
        return
    if shutil.which("tsp") is None:
        msg = "task-spooler not installed: apt-get install -y task-spooler"
        say(f"scenario 1: --tsp skipped: {msg}")
        res.add(SCENARIO, "reference: task-spooler (tsp -n true loop)", [], "jobs/s", "", msg)
        return
    say(f"scenario 1: task-spooler, 2 slots, N={n}")
    runs = [tsp_run(n) for _ in range(R)]
    detail["tsp"] = runs
    res.add(SCENARIO, f"reference: task-spooler `tsp -n true` loop, 2 slots, N={n}",
            [r["done_per_s"] for r in runs], "jobs/s", "DESIGN: 490/s",
            f"submit only {fmt(median(r['submit_per_s'] for r in runs))}/s")


def run(args, res) -> None:
    shape = f"{args.nodes} nodes x {args.node_cpus} cpus"
    detail: dict = {"n": args.n, "n_cli": args.n_cli, "nodes": args.nodes, "node_cpus": args.node_cpus,
                    "submitters": args.submitters, "runs": {}}
    labels = {"api": f"API, {args.submitters} submitter processes",
              "batch": "API, one submit_many batch",
              "cli": "CLI loop `grun --nowait true`",
              "array": "CLI `grun --nowait --array 1-N true`"}
    for mode in args.modes:
        count = args.n_cli if mode == "cli" else args.n
        say(f"scenario 1: {labels[mode]}, N={count}, {shape}")
        runs = []
        for _ in range(args.repeat):
            try:
                runs.append(throughput_run(args, mode, count))
            except Exception as exc:
                say(f"  {mode} run failed: {exc}")
                traceback.print_exc(file=sys.stderr)
                runs.append({"mode": mode, "error": str(exc)})
        detail["runs"][mode] = runs
        ok = [r for r in runs if "error" not in r]
        flags = sorted({r["note"] for r in ok if r.get("note")} | {f"{r['not_done']} not done" for r in ok if r["not_done"]}
                       | ({"failed runs"} if len(ok) < len(runs) else set()))
        res.add(SCENARIO, f"{labels[mode]}, N={count}: submit->last done", [r["done_per_s"] for r in ok],
                "jobs/s", TARGET, notes(*flags, other_load([r["cpu_s"] for r in ok], [r["total_s"] for r in ok])))
        res.add(SCENARIO, f"{labels[mode]}: submit only", [r["submit_per_s"] for r in ok], "jobs/s")
        if ok:
            phases = {k: median((r["phases"][k] for r in ok), 0) for k in ok[0]["phases"]}
            res.add(SCENARIO, f"{labels[mode]}: cluster CPU per job (master+nodes+supervisors+jobs)",
                    [r["cluster_cpu_ms_per_job"] for r in ok], "ms", "", cpu_note([r["cpu_s"] for r in ok], count))
            res.add(SCENARIO, f"{labels[mode]}: master CPU per job", [r["master_cpu_ms_per_job"] for r in ok], "ms",
                    "", "job phases, median ms: " + ", ".join(f"{k.replace('_ms', '')} {fmt(v)}"
                                                              for k, v in phases.items()))
    if "array" in args.modes:
        array_scale(args, res, detail)
    references(args, res, detail)
    res.details["throughput"] = detail
