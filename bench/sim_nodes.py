#!/usr/bin/env python3
"""Simulated grun nodes for scenario 3 of the benchmark (bench/run.py): one process hosts many node
actors, each a `grun.node.<name>` object on the process's one Pyro5 daemon, that talk to the master
the way grun/actors/node.py does and "run" each job by a timer.

What a simulated node does, as a real one (grun/actors/node.py) does it:
- `register_node(info)` with its name, URI, cpus, memory, held jobs, incarnation and launch seq; it
  starts what the reply offers, signals the kills and kills the stale copies;
- registers its name in the master's name server (`grun.node.<name>`), once;
- `heartbeat(name, load)` every `--heartbeat` seconds (or less often when the master's reply asks
  so: {"heartbeat": secs}) with its running jobs, its launch seq and a load report; registers again
  when the master answers {"known": False};
- `finished(name, reports)` as soon as jobs end (one call per node carries all its ended jobs, up
  to 500), repeated until the master acknowledges each;
- serves `start` (idempotent, replies started/rejected/waiting/incarnation/seq), `kill`, `kill_stale`,
  `suspend`, `resume`, `ping`.
What it does not do: processes, spools, supervisors, streams, per-job name-server entries (the
node rework drops them: bench/README.md, item 3). A job "runs" for `--duration` seconds (0: it ends
at once) and exits 0.

Why the shape: N node actors share one multiplexed daemon (a thread-pool daemon refuses connection
1025), so the master still opens one connection per node, as it would to N hosts. Calls to the master
go through a few "link" threads, each with its own proxy: the master sees a handful of inbound
connections instead of one per node (this machine's 20,000-descriptor limit could not hold both
sides at 10,000 nodes); the cost of its inbound connections is measured apart (bench/run.py).

    python bench/sim_nodes.py --master 127.0.0.1:PORT --nodes 5000 --prefix s0 [--cpus 4] [--duration 0]

Prints one JSON line "ready" once every node is registered, and a JSON line of counters for each
`stats` line read on stdin; exits on `quit`, end of input, SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import resource
import secrets
import signal
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# grun from the tree bench/run.py measures: its --commit export (GRUN_BENCH_SOURCE), else this checkout
sys.path[:0] = [p for p in (os.environ.get("GRUN_BENCH_SOURCE"), REPO) if p]

import Pyro5.api
from Pyro5 import config as pyro_config

from grun import registry

REPORT_BATCH = 500  # as grun/actors/node.py


class Sim:
    """The process: its daemon, its nodes, the timer that ends jobs and the links to the master."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counts = collections.Counter()
        self.timers: list[tuple[float, int, str]] = []   # (end time, job id, node name), a heap
        self.timer_wake = threading.Condition(self.lock)
        registry.configure()
        pyro_config.SERVERTYPE = "multiplex"  # thousands of inbound connections, handlers never block
        self.daemon = registry.start_daemon(args.bind, args.bind)
        self.nodes: dict[str, SimNode] = {}
        self.links = [Link(self, i) for i in range(args.links)]
        for i in range(args.nodes):
            name = f"{args.prefix}-{i:05d}"
            node = SimNode(self, name, self.links[i % len(self.links)])
            node.uri = str(self.daemon.register(node, registry.node_name(name)))
            self.nodes[name] = node
            node.link.todo_register.append(node)
        self.t0 = time.monotonic()

    def run(self) -> None:
        threads = [threading.Thread(target=self.daemon.requestLoop, args=(lambda: not self.stop.is_set(),),
                                    name="sim-pyro", daemon=True),
                   threading.Thread(target=self._timer_loop, name="sim-timer", daemon=True)]
        threads += [threading.Thread(target=link.loop, name=f"sim-link-{link.i}", daemon=True) for link in self.links]
        for t in threads:
            t.start()
        threading.Thread(target=self._ready_when_registered, daemon=True).start()
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                self.say(self.stats())
            elif cmd == "quit":
                break
        self.shutdown()

    def shutdown(self) -> None:
        self.stop.set()
        with self.lock:
            self.timer_wake.notify_all()
        for link in self.links:
            link.wake.set()
        try:
            self.daemon.shutdown()
        except Exception:
            pass

    def say(self, obj: dict) -> None:
        with self.lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def stats(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        with self.lock:
            counts = dict(self.counts)
            running = sum(len(n.running) for n in self.nodes.values())
        return {"stats": counts, "running": running, "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                "rss_mb": round(ru.ru_maxrss / 1024, 1), "fds": len(os.listdir("/proc/self/fd")),
                "threads": threading.active_count(), "pid": os.getpid()}

    def _ready_when_registered(self) -> None:
        while not self.stop.wait(0.05):
            if all(n.registered for n in self.nodes.values()):
                self.say({"ready": len(self.nodes), "register_s": round(time.monotonic() - self.t0, 3),
                          "pid": os.getpid()})
                return

    # ---- jobs end by a timer ---------------------------------------------------------------------

    def add_timer(self, end: float, job_id: int, name: str) -> None:
        """Call with the lock held."""
        heapq.heappush(self.timers, (end, job_id, name))
        if self.timers[0][1] == job_id:
            self.timer_wake.notify()

    def _timer_loop(self) -> None:
        with self.lock:
            while not self.stop.is_set():
                now = time.time()
                ended = set()
                while self.timers and self.timers[0][0] <= now:
                    end, job_id, name = heapq.heappop(self.timers)
                    node = self.nodes[name]
                    if node.end(job_id, end, exit_code=0):
                        ended.add(node)
                for node in ended:
                    node.link.report(node)
                self.timer_wake.wait(min(1.0, self.timers[0][0] - now) if self.timers else 1.0)


class SimJob:
    __slots__ = ("attempt", "id", "start", "status", "superseded")

    def __init__(self, job_id: int, attempt, start: float):
        self.id, self.attempt, self.start = job_id, attempt, start
        self.status: dict | None = None
        self.superseded = False


@Pyro5.api.expose
class SimNode:
    """One simulated exec host: the methods the master calls on grun.actors.node.Node."""

    def __init__(self, sim: Sim, name: str, link):
        self.sim, self.name, self.link = sim, name, link
        self.uri = ""
        self.incarnation = secrets.token_hex(8)
        self.launch_seq = 0
        self.running: dict[int, SimJob] = {}
        self.unreported: dict[int, SimJob] = {}
        self.registered = False

    # ---- master-facing (run in the daemon's one thread: never block) -----------------------------

    def ping(self) -> str:
        return self.name

    def start(self, jobs: list) -> dict:
        sim = self.sim
        started, waiting = {}, []
        now = time.time()
        with sim.lock:
            sim.counts["start_calls"] += 1
            for job in jobs:
                job_id = int(job["id"])
                attempt = int(job.get("attempt") or 1)
                old = self.running.get(job_id) or self.unreported.get(job_id)
                if old is not None and int(old.attempt or 1) < attempt:
                    if old.status is None:  # an earlier run still going: it is killed, the new one waits
                        self._end_locked(old, now, exit_code=None, signal=15, superseded=True)
                        waiting.append(job_id)
                        continue
                    self.unreported.pop(job_id, None)
                if job_id not in self.running and job_id not in self.unreported:
                    self.launch_seq += 1
                    self.running[job_id] = SimJob(job_id, job.get("attempt"), now)
                    sim.add_timer(now + sim.args.duration, job_id, self.name)
                    sim.counts["started"] += 1
                started[str(job_id)] = None
            seq = self.launch_seq
        return {"started": started, "rejected": {}, "waiting": waiting, "incarnation": self.incarnation,
                "seq": seq}

    def kill(self, job_ids: list, sig: int = 15) -> dict:
        out = {}
        now = time.time()
        with self.sim.lock:
            self.sim.counts["kill_calls"] += 1
            for job_id in job_ids:
                job = self.running.get(int(job_id))
                out[str(job_id)] = job is not None or int(job_id) in self.unreported
                if job is not None:
                    self._end_locked(job, now, exit_code=None, signal=int(sig))
        self.link.report(self)
        return out

    def kill_stale(self, job_ids: list) -> None:
        now = time.time()
        with self.sim.lock:
            for job_id in job_ids:
                job = self.running.get(int(job_id))
                if job is not None:
                    self._end_locked(job, now, exit_code=None, signal=15, superseded=True)

    def suspend(self, job_ids: list) -> dict:
        return {str(i): int(i) in self.running for i in job_ids}

    def resume(self, job_ids: list) -> dict:
        return {str(i): int(i) in self.running for i in job_ids}

    # ---- completion --------------------------------------------------------------------------------

    def end(self, job_id: int, when: float, exit_code) -> bool:
        """A job's timer fired (lock held); True when there is something new to report."""
        job = self.running.get(job_id)
        if job is None:
            return False
        return self._end_locked(job, when, exit_code=exit_code)

    def _end_locked(self, job: SimJob, when: float, exit_code, signal=None, superseded=False) -> bool:
        if job.status is not None:
            return False
        self.running.pop(job.id, None)
        job.superseded = superseded or job.superseded
        job.status = {"exit_code": exit_code, "signal": signal, "start_time": job.start, "end_time": when,
                      "usage": {"wall": round(when - job.start, 6), "utime": 0.0, "stime": 0.0, "maxrss_kb": 0}}
        if job.superseded:
            job.status["superseded"] = True
        else:
            self.unreported[job.id] = job
        self.sim.counts["ended"] += 1
        return not job.superseded

    def held(self) -> dict:
        with self.sim.lock:
            return {"running": list(self.running), "finished": list(self.unreported),
                    "incarnation": self.incarnation, "seq": self.launch_seq}

    def load(self) -> dict:
        with self.sim.lock:
            running = list(self.running)
            seq = self.launch_seq
        return {"running": running, "seq": seq, "incarnation": self.incarnation, "load": 0.0,
                "available_memory": self.sim.args.memory, "outside_cpus": 0.0, "outside_memory": 0,
                "grun_cpus": 0.0, "usage": {}}


class Link:
    """One connection to the master, shared by a slice of the nodes, driven by one thread: first
    registrations, then completion reports as soon as jobs end, and heartbeats when due."""

    def __init__(self, sim: Sim, i: int):
        self.sim, self.i = sim, i
        self.wake = threading.Event()
        self.todo_register: collections.deque[SimNode] = collections.deque()
        self.todo_report: dict[str, SimNode] = {}      # insertion order: first ended, first reported
        self.beats: list[tuple[float, str]] = []       # (due, node name), a heap
        self.names: list[str] = []                     # name-server entries to add
        self.master = None
        self.interval = sim.args.heartbeat  # the longer of --heartbeat and what the master asks

    def report(self, node: SimNode) -> None:
        self.todo_report[node.name] = node
        self.wake.set()

    def loop(self) -> None:
        sim, args = self.sim, self.sim.args
        while not sim.stop.is_set():
            try:
                if self.master is None:
                    self.master = registry.proxy(registry.master_uri(args.master_host, args.master_port))
                self._step()
            except Exception as exc:
                sim.counts["errors"] += 1
                if sim.counts["errors"] <= 5:
                    print(f"sim link {self.i}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                if self.master is not None:
                    registry.reset(self.master)
                self.master = None
                sim.stop.wait(0.5)
                continue
            if not (self.todo_register or self.todo_report or self._beat_due()):
                self.wake.wait(self._next_beat_in())
                self.wake.clear()

    def _beat_due(self) -> bool:
        return bool(self.beats) and self.beats[0][0] <= time.monotonic()

    def _next_beat_in(self) -> float:
        return max(0.001, min(1.0, self.beats[0][0] - time.monotonic())) if self.beats else 1.0

    def _step(self) -> None:
        """One round: reports first (they free cpus), then a slice of registrations and due heartbeats."""
        sim, master = self.sim, self.master
        for _ in range(64):
            if not self.todo_report:
                break
            name = next(iter(self.todo_report))
            node = self.todo_report.pop(name)
            self._send_reports(node)
        for _ in range(16):
            if not self.todo_register:
                break
            node = self.todo_register[0]
            self._register(node)
            self.todo_register.popleft()
        if self.names and not self.todo_register:
            self._register_names()
        now = time.monotonic()
        for _ in range(64):
            if not self.beats or self.beats[0][0] > now:
                break
            _, name = heapq.heappop(self.beats)
            node = sim.nodes[name]
            if not node.registered:
                continue
            reply = master.heartbeat(name, node.load())
            sim.counts["heartbeats"] += 1
            node.kill_stale(reply.get("stale", []))
            if not reply.get("known"):
                node.registered = False
                self.todo_register.append(node)
            else:
                self.interval = max(sim.args.heartbeat, float(reply.get("heartbeat") or 0))
                heapq.heappush(self.beats, (time.monotonic() + self.interval, name))

    def _register(self, node: SimNode) -> None:
        sim = self.sim
        info = {"name": node.name, "uri": node.uri, "cpus": float(sim.args.cpus), "memory": int(sim.args.memory),
                **node.held(), "resources": {}, "labels": {}}
        reply = self.master.register_node(info)
        sim.counts["registrations"] += 1
        missing = [j for j in reply.get("start", []) if int(j["id"]) not in node.running]
        if missing:
            node.start(missing)
        for job_id, sig in reply.get("kill", {}).items():
            node.kill([job_id], int(sig))
        node.kill_stale(reply.get("stale", []))
        if not node.registered:
            self.names.append(node.name)
        node.registered = True
        # the first beat of each node spread over one interval, as nodes started at random times
        self.interval = max(sim.args.heartbeat, float(reply.get("heartbeat") or 0))
        first = time.monotonic() + self.interval * (0.5 + (hash(node.name) % 1000) / 2000)
        heapq.heappush(self.beats, (first, node.name))

    def _send_reports(self, node: SimNode) -> None:
        sim = self.sim
        with sim.lock:
            todo = list(node.unreported.values())[:REPORT_BATCH]
            reports = [dict(j.status, id=j.id, attempt=j.attempt) for j in todo]
        if not reports:
            return
        acked = set(self.master.finished(node.name, reports))
        sim.counts["finished_calls"] += 1
        with sim.lock:
            for job in todo:
                if job.id in acked:
                    node.unreported.pop(job.id, None)
                    sim.counts["acked"] += 1
            if node.unreported:
                self.todo_report[node.name] = node

    def _register_names(self) -> None:
        batch, self.names = self.names, []
        args = self.sim.args
        with registry.locate_ns(args.master_host, args.master_port) as ns:
            for name in batch:
                node = self.sim.nodes[name]
                ns.register(registry.node_name(name), node.uri)
        self.sim.counts["ns_registered"] += len(batch)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/sim_nodes.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--master", required=True, help="HOST:PORT of the master")
    ap.add_argument("--nodes", type=int, default=1000, help="node actors in this process (default 1000)")
    ap.add_argument("--prefix", default="sim", help="node names are PREFIX-00000, ... (default sim)")
    ap.add_argument("--cpus", type=float, default=4, help="cpus each node offers (default 4)")
    ap.add_argument("--memory", type=int, default=16000, help="MB each node offers (default 16000)")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds a job runs (default 0)")
    ap.add_argument("--heartbeat", type=float, default=5.0, help="seconds between a node's heartbeats (default 5, "
                    "grun's default)")
    ap.add_argument("--links", type=int, default=0, help="connections (threads) to the master (default: one per "
                    "100 nodes, 2-32): each carries its nodes' calls one after the other, as one node would")
    ap.add_argument("--bind", default="127.0.0.1")
    args = ap.parse_args(argv)
    host, _, port = args.master.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"--master must be HOST:PORT, got {args.master!r}")
    if args.nodes < 1 or args.links < 0 or args.cpus <= 0 or args.duration < 0 or args.heartbeat <= 0:
        ap.error("--nodes, --links, --cpus and --heartbeat must be > 0, --duration >= 0")
    args.master_host, args.master_port = host.strip("[]"), int(port)
    args.links = args.links or max(2, min(32, args.nodes // 100))
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one inbound connection per node from the master
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.nodes + 100 > hard:
        print(f"sim_nodes: {args.nodes} nodes need more than the {hard} file descriptors allowed", file=sys.stderr)
        return 2
    sim = Sim(args)
    signal.signal(signal.SIGTERM, lambda *_: sim.shutdown() or os._exit(0))
    try:
        sim.run()
    except KeyboardInterrupt:
        sim.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
