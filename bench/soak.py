"""Soak test (issue 3): 1,000 jobs on a real local cluster while the master is killed (kill -9) 5 times
and a node daemon 5 times, at random moments. Not part of the test suite; run it by hand:

    python bench/soak.py [--jobs 1000] [--master-kills 5] [--node-kills 5] [--seed N] [--json]

Each job appends its id to its own run file (so a job that ran twice shows), prints a line and exits
with a known code. Most jobs are submitted through the Python client (retrying with the same token
while the master is away); some through blocking `grun CMD` processes whose output and exit codes
are checked too. At the end it prints: submitted, completed, lost, duplicated (in history more than
once, or run more than once), wrong exit codes, and the blocking clients that got a wrong answer.
A watchdog dumps the master's threads with py-spy if it stops answering while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from cluster import LocalCluster

from grun.client import GrunError, MasterUnreachable

AS_US = {"cwd": "/", "uid": os.getuid(), "gid": os.getgid()}


def script(runs: str, k: int, rng: random.Random) -> str:
    return f"echo $GRUN_JOB_ID >> {runs}/{k}; echo out-{k}; sleep {rng.choice((0, 0, 0.05, 0.2, 0.5, 1))}; exit {k % 7}"


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.root = tempfile.mkdtemp(prefix="grun-soak-")
        self.runs = os.path.join(self.root, "runs")
        os.makedirs(self.runs)
        nodes = {f"n{i}": {"cpus": 4, "memory": 8000, "heartbeat": 0.5} for i in range(args.nodes)}
        self.c = LocalCluster(nodes=nodes, root=os.path.join(self.root, "cluster"),
                              master_extra={"node_timeout": args.node_timeout, "log_level": "info"})
        self.ids: dict[int, int] = {}          # k -> job id, as acknowledged
        self.cli: dict[int, tuple] = {}        # k -> (exit code, stdout) of a blocking grun client
        self.events: list[str] = []
        self.hangs: list[str] = []
        self.lock = threading.Lock()
        self.done_submitting = threading.Event()
        self.master_down = threading.Event()
        self.t0 = time.monotonic()

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {text}"
        with self.lock:
            self.events.append(line)
        if self.args.verbose:
            print(line, flush=True)

    # ---- load --------------------------------------------------------------------------------

    def submitter(self, ks: list[int], rate: float) -> None:
        client = self.c.client(connect_wait=60)
        rng = random.Random(self.rng.random())
        for k in ks:
            spec = {"cmd": [script(self.runs, k, rng)], "shell": True, "token": f"soak-{k}", **AS_US}
            while True:
                try:
                    job_id = client.submit_spec(spec)
                    break
                except (MasterUnreachable, GrunError) as exc:  # same token: never queued twice
                    if "unreachable" not in str(exc) and "cannot reach" not in str(exc) and "restarting" not in str(exc):
                        self.note(f"submit {k}: {exc}")
                    time.sleep(0.2)
            with self.lock:
                self.ids[k] = job_id
            time.sleep(rng.expovariate(rate))

    def blocking_client(self, k: int) -> None:
        rng = random.Random(k)
        proc = self.c.popen("-v", "sh", "-c", script(self.runs, k, rng))
        out, err = proc.communicate(timeout=1800)
        job_id = None
        for line in err.decode(errors="replace").splitlines():
            if line.startswith("grun: job ") and line.endswith(" queued"):
                job_id = int(line.split()[2])
        with self.lock:
            self.cli[k] = (proc.returncode, out, err)
            if job_id is not None:
                self.ids[k] = job_id

    # ---- chaos -------------------------------------------------------------------------------

    def chaos(self, span: float) -> None:
        plan = [(self.rng.uniform(1.0, span), "master") for _ in range(self.args.master_kills)]
        plan += [(self.rng.uniform(1.0, span), self.rng.choice(list(self.c.node_specs)))
                 for _ in range(self.args.node_kills)]
        plan.sort()
        for at, target in plan:
            time.sleep(max(0.0, at - (time.monotonic() - self.t0)))
            down_for = self.rng.uniform(0.1, 2.0)
            self.note(f"kill -9 {target}; back in {down_for:.1f} s")
            if target == "master":
                self.master_down.set()
            self.c.kill(target, signal.SIGKILL)
            time.sleep(down_for)
            if target == "master":
                self.c.start_master()
                self.master_down.clear()
            else:
                self.c.start_node(target, wait=False)
            self.note(f"{target} restarted")

    def watchdog(self) -> None:
        """A master that is up but does not answer for 20 s is hung: dump its threads."""
        client = self.c.client(connect_wait=1)
        silent_since = None
        while not self.finished.is_set():
            time.sleep(1)
            if self.master_down.is_set():
                silent_since = None
                continue
            try:
                client.call("ping", wait=2)
                silent_since = None
            except Exception:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > 20:
                    proc = self.c.procs["master"]
                    dump = subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], capture_output=True, text=True)
                    self.hangs.append(dump.stdout + dump.stderr)
                    self.note(f"master pid {proc.pid} does not answer: py-spy dump taken")
                    silent_since = None

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> dict:
        n = self.args.jobs
        self.c.start()
        self.finished = threading.Event()
        cli_ks = set(self.rng.sample(range(n), min(self.args.cli, n)))
        api_ks = [k for k in range(n) if k not in cli_ks]
        span = max(10.0, n / self.args.rate)
        threads = []
        per = (len(api_ks) + self.args.submitters - 1) // self.args.submitters
        for i in range(self.args.submitters):
            part = api_ks[i * per:(i + 1) * per]
            threads.append(threading.Thread(target=self.submitter, args=(part, self.args.rate / self.args.submitters)))
        cli_threads = []
        for j, k in enumerate(sorted(cli_ks)):
            t = threading.Timer(span * j / max(1, len(cli_ks)), self.blocking_client, (k,))
            cli_threads.append(t)
        chaos = threading.Thread(target=self.chaos, args=(span,))
        dog = threading.Thread(target=self.watchdog, daemon=True)
        for t in threads + cli_threads + [chaos, dog]:
            t.start()
        for t in threads:
            t.join()
        self.note(f"all {len(api_ks)} API submissions acknowledged")
        chaos.join()
        for t in cli_threads:
            t.join()
        self.note("blocking clients done")
        client = self.c.client(connect_wait=60)
        ids = sorted(self.ids.values())
        deadline = time.monotonic() + self.args.timeout
        final: dict[int, dict] = {}
        while len(final) < len(ids) and time.monotonic() < deadline:
            left = [i for i in ids if i not in final]
            got = client.call("wait", left[:2000], 10.0, wait=60)
            final.update({int(k): v for k, v in got.items()})
        self.finished.set()
        elapsed = time.monotonic() - self.t0
        time.sleep(1.5)  # history is written a moment after a job's end is durable
        history = client.history(10 * n + 100)
        return self.report(final, history, elapsed)

    def report(self, final: dict, history: list[dict], elapsed: float) -> dict:
        n = self.args.jobs
        by_id: dict[int, list] = {}
        for rec in history:
            by_id.setdefault(rec["id"], []).append(rec)
        k_of = {job_id: k for k, job_id in self.ids.items()}
        submitted = len(set(self.ids.values()))
        completed = [i for i in self.ids.values() if i in by_id and by_id[i][0]["state"] in ("done", "failed")]
        lost = [k for k, i in self.ids.items() if i not in by_id or by_id[i][0]["state"] in ("lost", "killed")]
        dup_history = [i for i, recs in by_id.items() if len(recs) > 1]
        ran = {}
        for k in range(n):
            try:
                with open(os.path.join(self.runs, str(k))) as f:
                    ran[k] = f.read().split()
            except FileNotFoundError:
                ran[k] = []
        # a job may run again only when its node was declared lost, and its record then says so
        # (attempt); more runs than attempts is a job run twice
        attempts = {k: by_id[i][0].get("attempt", 1) if i in by_id else 1 for k, i in self.ids.items()}
        ran_twice = [k for k, lines in ran.items() if len(lines) > attempts.get(k, 1)]
        wrong_exit = [k_of[i] for i in completed if by_id[i][0].get("exit") != k_of[i] % 7]
        def cli_right(k, code, out, err):
            """Its exit code, and its output: once, or (re-queued: the client said so) once per run."""
            line = f"out-{k}".encode()
            rerun = b"was re-queued" in err and out.splitlines() and set(out.splitlines()) == {line}
            return code == k % 7 and (out == line + b"\n" or bool(rerun))
        cli_wrong = [k for k, (code, out, err) in self.cli.items() if not cli_right(k, code, out, err)]
        unsubmitted = n - submitted
        requeued = [i for i in completed if by_id[i][0].get("attempt", 1) > 1]
        result = {
            "jobs": n, "submitted": submitted, "unsubmitted": unsubmitted, "completed": len(completed),
            "lost": len(lost), "duplicated": len(set(dup_history) | {self.ids[k] for k in ran_twice if k in self.ids}),
            "duplicated_in_history": len(dup_history), "ran_more_than_once": len(ran_twice),
            "wrong_exit_codes": len(wrong_exit), "blocking_clients": len(self.cli),
            "blocking_clients_wrong": len(cli_wrong), "requeued": len(requeued),
            "master_kills": self.args.master_kills, "node_kills": self.args.node_kills,
            "hangs": len(self.hangs), "elapsed_s": round(elapsed, 1),
            "examples": {"lost": lost[:10], "ran_twice": ran_twice[:10], "wrong_exit": wrong_exit[:10],
                         "cli_wrong": [(k, self.cli[k][0], self.cli[k][1][-60:], self.cli[k][2][-300:])
                                       for k in cli_wrong[:5]]},
        }
        return result

    def close(self) -> None:
        self.c.stop()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--master-kills", type=int, default=5)
    ap.add_argument("--node-kills", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cli", type=int, default=40, help="jobs run by blocking `grun CMD` clients")
    ap.add_argument("--rate", type=float, default=25.0, help="API submissions per second")
    ap.add_argument("--submitters", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the queue to drain")
    ap.add_argument("--node-timeout", type=float, default=30.0,
                    help="below the node restart time (about 2 s), node kills make jobs lost and re-queued")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's files")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    soak = Soak(args)
    try:
        result = soak.run()
    finally:
        soak.close()
    result["seed"] = args.seed
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key in ("jobs", "submitted", "completed", "lost", "duplicated", "wrong_exit_codes",
                    "blocking_clients", "blocking_clients_wrong", "requeued", "master_kills", "node_kills",
                    "hangs", "elapsed_s", "seed"):
            print(f"{key:24} {result[key]}")
        if any(result["examples"].values()):
            print("examples:", json.dumps(result["examples"], default=str))
        for line in soak.events:
            print("  " + line)
    for dump in soak.hangs:
        print(dump)
    bad = result["lost"] or result["duplicated"] or result["wrong_exit_codes"] or result["blocking_clients_wrong"] \
        or result["hangs"] or result["submitted"] != args.jobs
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
