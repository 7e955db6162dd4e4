#!/usr/bin/env python3
"""grun's benchmark harness: real daemons on 127.0.0.1, medians of several runs, the reference next to
each figure, a table on stdout and the details in JSON.

    python bench/run.py                     # scenarios 1-5 with the default sizes (several minutes)
    python -m bench.run --tsp --slurm       # + task-spooler and Slurm (scenario 6) as peers
    python bench/run.py --only 1,2 --repeat 5 --json out.json
    python bench/run.py --smoke             # tiny sizes, one repeat: checks that the harness works

Scenarios (numbers as in issue 5), one module each in bench/scenarios/, which says what it measures:
  1 throughput  N trivial jobs through the API (concurrent submitters, one submit_many batch), a loop of
                `grun --nowait true` and `grun --nowait --array`; references: /bin/true spawns, --tsp
  2 latency     `grun true` / `grun hostname` p50/p90, where the time goes, baselines, import time
  3 scale       1,000 and 10,000 simulated nodes (bench/sim_nodes.py) and 100,000 queued jobs
  4 history     per-job cost with 0 vs H finished jobs in history; master restart with Q queued jobs
  5 streaming   1 GiB (10 GiB with --big) through `grun ... | cat > /dev/null`, next to a raw pipe
  6 slurm       (--slurm) the same jobs through sbatch and srun on ../shared/anchors/slurm; ratios
  9 trace       500 jobs of 12 kinds on 3 nodes: fixed defaults vs over-asking vs learned requests
 10 staging     a 2 GiB input staged onto a node without the shared filesystem, next to the output stream

This module is the runner: the options (each scenario adds its own), --commit, the machine, the loop over
the scenarios, the table and --json. Each scenario starts its own clusters (bench/clusters.py, on
tests/cluster.py's LocalCluster) and stops them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
# bench and tests/cluster.py (the clusters tests use too) from this checkout, and grun from the tree
# measured: this checkout, or the export of --commit, which the processes started from here (the
# submitter helpers run this file) find in GRUN_BENCH_SOURCE.
sys.path[:0] = [p for p in (os.environ.get("GRUN_BENCH_SOURCE"), REPO, os.path.join(REPO, "tests")) if p]

import psutil

from bench.clusters import GRUN, cleanup_session, session_dir
from bench.report import Results, render, say
from bench.scenarios import chain, history, latency, rules, scale, slurm, staging, streaming, throughput, trace

SCENARIOS = (throughput, latency, scale, history, streaming, slurm, chain, rules, trace, staging)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="1,2,3,4,5", help="scenarios to run, e.g. 1,2 (default 1,2,3,4,5; 6 with --slurm; 7: a chain of --afterok jobs; 8: policy rules' cost; 9: a trace, defaults vs over-asking vs learned requests; 10: staging a 2 GiB input vs the output stream)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the table shows the median (default 3)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, no tsp/slurm/big")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    ap.add_argument("--nodes", type=int, default=2, help="grun nodes (default 2)")
    ap.add_argument("--node-cpus", type=int, default=8, help="cpus each grun node offers (default 8)")
    ap.add_argument("--log-level", default="info", help="daemons' log level (default info)")
    ap.add_argument("--commit", metavar="REF",
                    help="measure this commit (git archive) instead of the working tree, e.g. HEAD")
    ap.add_argument("--root", default="/var/tmp/grun-bench",
                    help="where clusters keep their state and spools (default /var/tmp/grun-bench; not /tmp)")
    ap.add_argument("--node-spool", metavar="DIR", help="put the nodes' job spools under DIR (e.g. /dev/shm)")
    ap.add_argument("--auth", action="store_true", help="clusters with auth: secret (every connection proves it)")
    ap.add_argument("--tls", action="store_true", help="clusters with auth: secret and tls: (certificates made here)")
    ap.add_argument("--idle-wait", type=float, default=20.0,
                    help="seconds to wait for a quiet machine before each timed run (default 20)")
    for sc in SCENARIOS:
        sc.add_options(ap.add_argument_group(f"scenario {sc.SCENARIO}"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.repeat, args.idle_wait = 1, 0.0
        for sc in SCENARIOS:
            vars(args).update(sc.SMOKE)
    args.scenarios = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.slurm:
        args.scenarios.add(slurm.KEY)
    return args


def installed_like_pycache(args) -> None:
    """Measure grun as an installed copy runs: with its bytecode cached. This environment sets
    PYTHONDONTWRITEBYTECODE, so a module whose source is newer than its .pyc (the working tree is being
    edited) or an exported commit would be compiled again by every `grun` process (130 ms measured).
    Children write their caches under --root/pycache (PYTHONPYCACHEPREFIX), never into the source tree."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(args.root, "pycache")
    import grun
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(grun.__file__)], cwd="/tmp",
                   capture_output=True, timeout=120)
    subprocess.run(GRUN + ["--version"], cwd="/tmp", capture_output=True, timeout=60)


def use_commit(args) -> None:
    """Measure a committed version (git archive REF) instead of the working tree, which other people
    may be editing: this process and every daemon and CLI it starts import grun from the export."""
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = os.path.join(session_dir(args), f"src-{sha}")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", REPO, "archive", sha, "grun"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    for name in [m for m in sys.modules if m == "grun" or m.startswith("grun.")]:
        del sys.modules[name]
    sys.path.insert(0, dest)
    os.environ["GRUN_BENCH_SOURCE"] = dest
    os.environ["PYTHONPATH"] = dest + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    # `python -m grun.daemon` (and the node's `-m grun.spawner`) put their cwd first on sys.path, ahead
    # of PYTHONPATH: started from the repo, they imported the working tree, not the export.
    os.chdir(dest)
    args.measured = f"git {sha} (exported to {dest})"
    say(f"measuring {args.measured}")


def machine_info(args) -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    import grun
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "hostname": socket.gethostname(), "cores": os.cpu_count(), "cpu_model": model,
            "memory_gib": psutil.virtual_memory().total / (1 << 30), "python": platform.python_version(),
            "kernel": f"{platform.system()} {platform.release()}", "platform": platform.platform(),
            "grun_version": grun.__version__,
            "git_commit": getattr(args, "measured", None) or f"working tree at {commit}",
            "grun_cli": " ".join(GRUN), "repeat": args.repeat, "smoke": args.smoke}


def run_scenarios(args, res: Results) -> list[str]:
    """Each scenario asked for, in order; a failure is a row and does not stop the others."""
    failed = []
    for sc in SCENARIOS:
        if sc.KEY not in args.scenarios:
            continue
        t0 = time.time()
        try:
            sc.run(args, res)
        except Exception as exc:
            say(f"scenario {sc.KEY} ({sc.NAME}) failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            res.add(sc.SCENARIO, "scenario failed", [], "", "", f"ERROR: {exc}")
            failed.append(sc.KEY)
        say(f"scenario {sc.KEY} ({sc.NAME}) took {time.time() - t0:.0f} s")
    return failed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in throughput.HELPERS:
        throughput.HELPERS[argv[0]](*argv[1:])
        return 0
    args = parse_args(argv)
    if args.commit:
        use_commit(args)
    else:
        # the daemons, simulators and CLIs started from here import this tree, wherever their cwd is and
        # whatever an editable install points at (here it named a checkout that is gone)
        os.environ["PYTHONPATH"] = REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    installed_like_pycache(args)
    # a SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every cluster's finally: stops it
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    machine = machine_info(args)
    res = Results()
    t_start = time.time()
    try:
        failed = run_scenarios(args, res)
    finally:
        cleanup_session(args)
    res.rows.sort(key=lambda r: int(r["scenario"].split()[0]))  # stable: keeps each scenario's order
    machine["elapsed_s"] = round(time.time() - t_start, 1)
    print(render(res, machine))
    print(f"\n(total {machine['elapsed_s']:.0f} s; details in --json)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": {k: (sorted(v) if isinstance(v, set) else v)
                                                    for k, v in vars(args).items()},
                       "rows": res.rows, "details": res.details}, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
