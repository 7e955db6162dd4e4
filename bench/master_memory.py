"""The master's RSS as history grows, after full history listings, and after a kill -9 and restart (QA: 321 MB live,
114 MB restarted in the same state; each `grun -q history -c 1000000` added 50-100 MB). A real master and two nodes
(2 cpus each, auth: secret) on 127.0.0.1: QUEUED held jobs, then an array of FINISHED `-c 0.1 true` tasks.

    python bench/master_memory.py [--queued 5000] [--finished 20000] [--commit REF]

`--commit REF` runs that commit's grun (exported to a temp dir) for an A/B on the same machine. ~5 min at 20,000."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=5000)
    ap.add_argument("--finished", type=int, default=20000)
    ap.add_argument("--listings", type=int, default=2, help="full history listings, live and after the restart")
    ap.add_argument("--commit", help="measure this commit's grun instead of the working tree")
    ap.add_argument("--port", type=int, default=0, help="the master's port (default: one the OS gives)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="grun-memory-")
    code = REPO
    if args.commit:  # (the daemons import grun from PYTHONPATH: the export's)
        code = os.path.join(root, "code")
        os.makedirs(code)
        tar = subprocess.run(["git", "-C", REPO, "archive", args.commit, "grun"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", code], input=tar.stdout, check=True)
    os.environ["PYTHONPATH"] = code
    sys.path[:0] = [os.path.join(REPO, "tests"), code, REPO]
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args, root: str) -> None:
    import psutil
    from cluster import LocalCluster

    from bench.clusters import job_spec
    from grun import auth
    keys = {"auth": "secret", "secret_file": os.path.join(root, "secret")}
    with open(os.open(keys["secret_file"], os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    auth.use(keys["secret_file"], None, None)
    quiet = {"log_level": "info", **keys}
    cluster = LocalCluster({n: {"cpus": 2, "memory": 64000, **quiet} for n in ("n1", "n2")}, os.path.join(root, "c"),
                           master_extra=quiet)
    cluster.port = args.port or cluster.port
    say = lambda what: print(f"{time.strftime('%H:%M:%S')} master RSS {rss():6.1f} MB  {what}", flush=True)
    rss = lambda: psutil.Process(cluster.procs["master"].pid).memory_info().rss / 1e6
    try:
        cluster.start()
        client, spec = cluster.client(), job_spec()
        time.sleep(2)
        say("empty")
        for done in range(0, args.queued, 2000):
            client.call("submit_many", [dict(spec, hold=True)] * min(2000, args.queued - done))
        say(f"{args.queued:,} queued (held)")
        array = client.submit_many([dict(spec, cpus=0.1, array=f"1-{args.finished}")])[0]
        step, shown = max(args.finished // 4, 1), 0
        while (done := client.job(array).get("counts", {}).get("done", 0)) < args.finished:
            if done >= shown + step:
                say(f"+ {done:,} finished")
                shown = done
            time.sleep(2)
        time.sleep(2)
        say(f"+ {args.finished:,} finished")

        def listings(when: str) -> None:
            for i in range(args.listings):
                t0 = time.perf_counter()
                rows = len(client.history(10**6))
                took = time.perf_counter() - t0
                t0 = time.perf_counter()
                client.history(50, user="nobody")
                say(f"{when}, after full listing {i + 1} ({rows:,} rows in {took:.1f} s; a 0-row --user query "
                    f"{time.perf_counter() - t0:.1f} s)")
        listings("live")
        cluster.kill("master")
        cluster._spawn("master", cluster.configs["master"])
        client = cluster.client(connect_wait=60)
        client.call("ping")
        time.sleep(3)
        say("after kill -9 and restart")
        listings("restarted")
    finally:
        for name in list(cluster.procs):
            cluster.kill(name)


if __name__ == "__main__":
    main()
