"""The master actor (`grun.master`): owns the job table, the node table and the scheduler.

Every request follows one shape: under the state lock, decide through the pure core
(`grun.core.queue.JobTable`), apply the records and append them to the journal; release the lock;
wait for the journal's group commit when the caller must not be answered before the disk has it;
only then talk to nodes, each call with a timeout (invariant 4).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import Pyro5.api

from .. import registry
from ..core import jobs as J
from ..core.placement import MAX_PLACED_PER_PASS
from ..core.queue import JobTable
from ..store import Store, StoreError
from .control import JobControl

log = logging.getLogger("grun.master")

SNAPSHOT_EVERY_RECORDS = 20000
SNAPSHOT_EVERY_SECS = 60.0
RECENT_FINISHED = 20000
START_RETRY_SECS = 2.0
PASS_GAP_SECS = 0.01       # at most one scheduling pass per this long
MAX_WAIT_SECS = 60.0
DISK_CHECK_SECS = 1.0      # how stale the free-space figure a submission is checked against may be
DISK_LOG_SECS = 60.0       # how often the admin log repeats that submissions are being refused
MIN_FREE_INODES = 1000
# The most heartbeats a second the master asks of all its nodes together: each costs it ~130-180 us
# (almost all Pyro5), so 10,000 nodes beating every 5 s took 25-37 % of a core. Past 2,500 nodes
# the master asks them to beat less often (the interval in its replies), never so seldom that three
# beats do not fit in node_timeout.
HEARTBEATS_PER_SEC = 500
# Each connection to the master holds one of its daemon's threads (Pyro5's thread pool: 1,024), so past
# this many nodes a node closes its connection when it has had nothing to say for IDLE_LINGER_SECS, and
# opens a new one for its next heartbeat or report: with heartbeats capped at HEARTBEATS_PER_SEC, about
# HEARTBEATS_PER_SEC x 0.5-1 s connections are open at a time, whatever the number of nodes.
HOLD_CONNECTIONS_MAX = 500
IDLE_LINGER_SECS = 0.5


# Raised to callers while the master shuts down: a builtin, so that Pyro5 clients rebuild it and see
# an unreachable master (and retry), where a class of ours would arrive as an unknown-class error.
Restarting = ConnectionRefusedError


class NodeLink:
    """One node's proxy, used by one caller at a time (Pyro5 proxies are not shared between threads)."""

    def __init__(self, name: str, uri: str):
        self.name, self.uri = name, uri
        self._lock = threading.Lock()
        self._proxy = None

    def call(self, method: str, *args, timeout: float = registry.CALL_TIMEOUT):
        with self._lock:
            if self._proxy is None:
                self._proxy = registry.proxy(self.uri, timeout)
            self._proxy._pyroClaimOwnership()
            self._proxy._pyroTimeout = timeout
            try:
                return getattr(self._proxy, method)(*args)
            except Exception as exc:
                if registry.is_unreachable(exc):
                    registry.reset(self._proxy)
                    self._proxy = None
                raise


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Master(JobControl):
    def __init__(self, state_dir: str, *, default_cpus: float = 1.0, default_memory: int = 100,
                 node_timeout: float = 60.0, requeue: bool = True, min_free_disk: int = 64,
                 default_priority: int = 20, reserve_after: float = 300.0):
        self.state_dir = state_dir
        self.default_cpus, self.default_memory = default_cpus, default_memory
        self.default_priority = default_priority
        self.live_usage: dict[int, dict] = {}     # job id -> usage its node last sampled
        self.node_timeout = node_timeout
        self.requeue = requeue
        self.min_free_disk = min_free_disk  # MB
        self._disk_checked = 0.0
        self._disk_refusal: str | None = None
        self._disk_logged = 0.0
        self._closing = False
        self._seq = 0                             # last journal seq handed out
        self.failed = threading.Event()           # the journal broke: the daemon must exit
        # job id -> (node incarnation, launch seq) of its confirmed start, to tell a node's list that
        # predates a start from a job the node really lost
        self.launched: dict[int, tuple[str, int]] = {}
        self.lock = threading.Lock()
        self.table = JobTable(reserve_after=reserve_after)
        self.store = Store(state_dir, log=logging.getLogger("grun.store"))
        self.links: dict[str, NodeLink] = {}
        self.node_info: dict[str, dict] = {}
        self.recent: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.watchers: dict[int, list[threading.Event]] = {}
        # dispatched job id -> when last offered to its node, oldest offer first (a pass looks only
        # at offers old enough to repeat, not at every job in flight: 40,000 at 10,000 nodes)
        self.unconfirmed: dict[int, float] = {}
        self.records_since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self._kick = threading.Event()
        self._stop = threading.Event()
        # 16, not more: with 64, start calls during a 10,000-node dispatch took the GIL from the
        # nodes' registrations (all registered in 52 s instead of 17). A host that is down holds a
        # thread for up to the call timeout, a refused connection for no time at all.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="grun-node-call")
        self._outbox_lock = threading.Lock()
        self._outbox: dict[str, dict[int, dict]] = {}  # node -> jobs to offer in its next start call
        self._sending: set[str] = set()                 # nodes with a start call in flight
        self._recover()
        self._threads = [threading.Thread(target=self._scheduler_loop, name="grun-scheduler", daemon=True),
                         threading.Thread(target=self._housekeeping_loop, name="grun-housekeeping", daemon=True)]
        for t in self._threads:
            t.start()

    # ---- recovery and persistence --------------------------------------------------------------

    def _recover(self) -> None:
        snapshot, records = self.store.load()
        if snapshot:
            self.table.restore(snapshot)
        finished = []
        for rec in records:
            job = self.table.apply(rec)
            if rec["op"] == "finish" and job is not None:
                finished.append(job)
        for job in finished:
            self._remember(job)
        if finished:
            self.store.add_history(finished)
        now = time.time()
        for job in self.table.jobs.values():
            if job["state"] == J.DISPATCHED:
                self.unconfirmed[job["id"]] = 0.0
            if job.get("node") and job["state"] in J.ON_NODE_STATES:
                # a node that never comes back must still time out, and its jobs be declared lost
                self.node_info.setdefault(job["node"], {"uri": None, "last_seen": now})
        log.info("recovered %d live jobs (%d journal records replayed)", len(self.table.jobs), len(records))
        self.records_since_snapshot = len(records)

    def _record(self, records: list[dict]) -> list:
        """Apply and journal records; call with the lock held. Returns what apply() returned."""
        if self.failed.is_set():  # memory may hold what the disk does not: answer nothing from it
            raise Restarting("the grun master's journal failed; it is restarting")
        if records and self._closing:
            raise Restarting("the grun master is restarting")
        out, records = self._apply_all(records)  # with the lend/unlend records that must follow
        if records:
            try:
                self._seq = self.store.log_nowait(records)
            except StoreError as exc:
                self._journal_failed(exc)
            self.records_since_snapshot += len(records)
            for r in records:
                self._notify(r.get("id") if r["op"] != "submit" else r["job"]["id"])
        return out

    def _durable(self) -> None:
        """Block (without the lock) until everything journaled so far is fsync'd."""
        try:
            self.store.wait_durable(self._seq)
        except StoreError as exc:
            self._journal_failed(exc)
        if self.failed.is_set():
            raise Restarting("the grun master's journal failed; it is restarting")

    def _journal_failed(self, exc: Exception) -> None:
        """Records are applied in memory but not on disk: the only safe way on is a restart that
        reads the disk again. Nobody is told "done" for what the disk may not have."""
        if not self.failed.is_set():
            log.critical("journal failed (%s): the master stops and must be restarted", exc)
            self.failed.set()
        raise Restarting(f"the grun master's journal failed: {exc}") from None

    def _remember(self, job: dict) -> None:
        self.live_usage.pop(job["id"], None)  # (not pruned by a scan per heartbeat: O(running jobs))
        self.recent[job["id"]] = job
        while len(self.recent) > RECENT_FINISHED:
            self.recent.popitem(last=False)

    def _notify(self, job_id) -> None:
        for event in self.watchers.pop(job_id, ()):
            event.set()

    def _watch(self, job_id: int) -> threading.Event:
        event = threading.Event()
        self.watchers.setdefault(job_id, []).append(event)
        return event

    def _snapshot_if_due(self) -> None:
        # A snapshot costs O(live jobs): one every max(20,000, live jobs) records keeps its cost per
        # record flat (every 20,000 records with 100,000 queued was 16 % of the master's CPU while
        # 10,000 nodes drained the queue), and the journal replayed at a restart at most that long.
        every = max(SNAPSHOT_EVERY_RECORDS, len(self.table.jobs))
        due = self.records_since_snapshot >= every or (
            self.records_since_snapshot and time.monotonic() - self.last_snapshot > SNAPSHOT_EVERY_SECS)
        if not due:
            return
        with self.lock:
            ticket = self.store.begin_snapshot()
            state = self.table.snapshot()
            self.records_since_snapshot = 0
            self.last_snapshot = time.monotonic()
        self.store.write_snapshot(ticket, state)

    # ---- clients -------------------------------------------------------------------------------

    def ping(self) -> str:
        return "grun.master"

    def submit(self, spec: dict) -> int:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list) -> list[int]:
        """Queue jobs; returns their ids only once they are on disk (invariant 1)."""
        if not isinstance(specs, (list, tuple)):
            raise ValueError("submit_many takes a list of job specs")
        try:
            requests = [J.validate_spec(s, self.default_cpus, self.default_memory, self.default_priority)
                        for s in specs]
        except J.SpecError as exc:
            raise ValueError(str(exc)) from None  # Pyro5 clients rebuild builtin exceptions, not ours
        refusal = self._disk_refusal_now()
        now = time.time()
        ids = []
        with self.lock:
            records, names = [], set()
            for req in requests:
                known = self.table.token_id(req["token"])
                if known is not None:
                    ids.append(known)  # a retried submission: the same job, not a second one
                    continue
                if refusal:
                    raise ValueError(refusal)
                self._admit(req, names)
                rec = self.table.submit_record(req, now)
                records.append(rec)
                ids.append(rec["job"]["id"])
            self._record(records)
        self._durable()
        self._kick.set()
        return ids

    def _disk_refusal_now(self) -> str | None:
        """Why submissions are refused now (the spool file system is nearly full), or None."""
        now = time.monotonic()
        if now - self._disk_checked < DISK_CHECK_SECS:
            return self._disk_refusal
        self._disk_checked = now
        try:
            st = os.statvfs(self.state_dir)
        except OSError as exc:
            refusal = f"the grun master cannot check its disk ({exc}): not accepting new jobs"
        else:
            free_mb = st.f_bavail * st.f_frsize // 2**20
            low_inodes = st.f_files and st.f_favail < MIN_FREE_INODES
            refusal = None
            if free_mb < self.min_free_disk or low_inodes:
                what = f"{st.f_favail} free inodes" if low_inodes else f"{free_mb} MB free"
                refusal = (f"the grun master's disk is nearly full ({what} in {self.state_dir}, "
                           f"min_free_disk is {self.min_free_disk} MB): not accepting new jobs")
        if refusal and (self._disk_refusal is None or now - self._disk_logged > DISK_LOG_SECS):
            log.error("refusing submissions: %s", refusal.split(": not accepting")[0])
            self._disk_logged = now
        elif refusal is None and self._disk_refusal is not None:
            log.warning("disk space is back above min_free_disk (%s MB): accepting submissions", self.min_free_disk)
        self._disk_refusal = refusal
        return refusal

    def job(self, job_id: int) -> dict:
        job_id = J.parse_job_id(job_id)
        with self.lock:
            job = self.table.jobs.get(job_id) or self.recent.get(job_id)
            if job is not None:
                return self._view(job)
        found = self.store.find_history(job_id)
        if found is None:
            raise LookupError(f"unknown job id {job_id}")
        return J.public_view(found)

    def _view(self, job: dict) -> dict:
        view = J.public_view(job)
        if job["id"] in self.live_usage and job["state"] in J.ON_NODE_STATES:
            view["usage_now"] = self.live_usage[job["id"]]
        if job.get("node"):
            view["node_uri"] = self.node_info.get(job["node"], {}).get("uri")
        return view

    def wait_started(self, job_id: int, timeout: float = 30.0) -> dict:
        """Returns the job once it runs (or has finished), or as it is when the timeout passes."""
        job_id = J.parse_job_id(job_id)
        deadline = time.monotonic() + min(float(timeout), MAX_WAIT_SECS)
        while True:
            with self.lock:
                job = self.table.jobs.get(job_id)
                if job is None or job["state"] in (J.RUNNING, J.SUSPENDED):
                    event = None
                else:
                    event = self._watch(job_id)
            if event is None:
                return self.job(job_id)
            left = deadline - time.monotonic()
            if left <= 0 or not event.wait(left):
                return self.job(job_id)

    def wait(self, job_ids: list, timeout: float = 30.0) -> dict:
        """Finished records of the given jobs, returned when all have finished or the timeout passed."""
        ids = [J.parse_job_id(i) for i in job_ids]
        deadline = time.monotonic() + min(float(timeout), MAX_WAIT_SECS)
        while True:
            done, pending, event = {}, [], threading.Event()
            with self.lock:
                for i in ids:
                    if i in self.table.jobs:
                        pending.append(i)
                        self.watchers.setdefault(i, []).append(event)
                    elif i in self.recent:
                        done[i] = J.public_view(self.recent[i])
                    else:
                        pending.append(-i)
            for i in [p for p in pending if p < 0]:
                found = self.store.find_history(-i)
                if found is None:
                    raise LookupError(f"unknown job id {-i}")
                done[-i] = J.public_view(found)
            pending = [p for p in pending if p > 0]
            if not pending:
                return {str(k): v for k, v in done.items()}
            left = deadline - time.monotonic()
            if left <= 0:
                return {str(k): v for k, v in done.items()}
            event.wait(min(left, 5.0))

    def jobs(self) -> list[dict]:
        with self.lock:
            return [self._view(j) for j in sorted(self.table.jobs.values(), key=lambda j: j["id"])]

    def nodes(self) -> list[dict]:
        now = time.time()
        with self.lock:
            out = []
            for name, view in sorted(self.table.nodes.items()):
                info = self.node_info.get(name, {})
                out.append({"name": name, "up": view.up, "cpus": view.cpus, "memory": view.memory,
                            "free_cpus": max(0.0, view.free_cpus), "free_memory": max(0, view.free_memory),
                            "running": len(view.jobs), "uri": info.get("uri"), **info.get("load", {}),
                            "last_seen": now - info.get("last_seen", now)})
            return out

    def history(self, limit: int = 50, user: str | None = None, grep: str | None = None) -> list[dict]:
        predicate = self._history_predicate(user, grep)
        return [J.public_view(j) for j in self.store.history(int(limit), predicate)]

    def kill(self, job_ids: list, signal: int = 15, force: bool = False) -> dict:
        """Kill queued or running jobs. Returns {id: found}. With force, a running job is marked
        killed at once, even if its node cannot be reached (it is still signalled if it can)."""
        signal = int(signal)
        if not 1 <= signal <= 64:
            raise ValueError(f"bad signal number {signal}")
        now = time.time()
        found, on_nodes = {}, collections.defaultdict(list)
        with self.lock:
            records = []
            for raw in job_ids:
                job_id = J.parse_job_id(raw)
                job = self.table.jobs.get(job_id)
                found[str(job_id)] = job is not None
                if job is None:
                    continue
                if job["state"] in (J.QUEUED, J.HELD):
                    records.append({"op": "finish", "id": job_id, "time": now,
                                    "result": {"status": J.KILLED, "signal": signal, "exit_code": None}})
                else:
                    records.append({"op": "kill", "id": job_id, "signal": signal, "time": now})
                    if force:
                        records.append({"op": "finish", "id": job_id, "time": now, "result": {
                            "status": J.KILLED, "signal": signal, "exit_code": None, "error": "killed with --force"}})
                    on_nodes[job["node"]].append(job_id)
            finished = [j for j in self._record(records) if j is not None and j["state"] in J.FINAL_STATES]
            for job in finished:
                self._remember(job)
        self._durable()
        if finished:
            self.store.add_history(finished)
        for node, ids in on_nodes.items():
            self._call_node(node, "kill", ids, signal)
        return found

    # ---- nodes ---------------------------------------------------------------------------------

    def register_node(self, info: dict) -> dict:
        """A node (re)joins with the jobs it holds. We reconcile: jobs it should have but never got
        are offered again, jobs it lost are declared lost, running copies of jobs that finished or
        moved elsewhere meanwhile are to be killed (stale), and kills it missed are repeated."""
        name = str(info["name"])
        now = time.time()
        running = [int(i) for i in info.get("running", [])]
        finished = [int(i) for i in info.get("finished", [])]
        incarnation, seq = str(info.get("incarnation", "")), int(info.get("seq", 0))
        with self.lock:
            if self._closing:
                raise Restarting("the grun master is restarting")
            self._node_up(name, info)
            self.node_info[name] = {"uri": str(info["uri"]), "last_seen": now, "incarnation": incarnation}
            link = self.links.get(name)
            if link is None or link.uri != info["uri"]:
                self.links[name] = NodeLink(name, str(info["uri"]))

            def in_flight(job_id: int) -> bool:  # its start was confirmed after the node made its list
                got = self.launched.get(job_id)
                return got is not None and got[0] == incarnation and got[1] > seq
            records, start, stale = self.table.reconcile(name, running, finished, now, in_flight, self.requeue)
            seq_before = self._seq
            done = self._after_records(self._record(records))
            start_views = [self._view(j) | {"env": j["env"]} for j in start]
            kills = {str(j["id"]): int(j["kill_requested"]) for j in self.table.jobs_on(name)
                     if j.get("kill_requested")}
        if self._seq != seq_before:
            self._durable()
        if done:
            self.store.add_history(done)
        for rec in records:
            if rec["op"] in ("requeue", "finish"):
                log.warning("job %s: %s (node %s came back without it)", rec["id"],
                            "re-queued" if rec["op"] == "requeue" else "lost", name)
            elif rec["op"] == "reclaim":
                log.info("job %s: node %s came back with it still running; it stays there", rec["id"], name)
        if stale:
            log.warning("node %s holds stale copies of jobs %s: killing them", name, stale)
        log.info("node %s registered (%s cpus, %s MB, %d running, %d finished)", name, info["cpus"],
                 info["memory"], len(running), len(finished))
        self._kick.set()
        return {"start": start_views, "kill": kills, "stale": stale, **self._pace()}

    def heartbeat(self, name: str, info: dict) -> dict:
        """A node is alive. A node we declared down must register again (so its jobs are reconciled);
        running copies of jobs that are no longer its own are named for killing."""
        now = time.time()
        info_seen = self.node_info.get(name)
        if info_seen is not None and not info_seen.get("lost_at"):
            # alive as of now, even if the lock is busy for a while: a master slow to answer must
            # not declare its nodes silent
            info_seen["last_seen"] = now
        with self.lock:
            node = self.table.nodes.get(name)
            if node is None or name not in self.node_info or not node.up or self._closing:
                return {"known": False}
            self.node_info[name]["last_seen"] = now
            self._note_load(node, info)
            stale, done, seq_before = [], [], self._seq
            if "running" in info:
                records, _, stale = self.table.reconcile(name, info["running"], None, now)
                done = self._after_records(self._record(records))
        if stale:
            log.warning("node %s runs stale copies of jobs %s: killing them", name, stale)
        if self._seq != seq_before:
            self._durable()
        if done:
            self.store.add_history(done)
        return {"known": True, "stale": stale, **self._pace()}

    def _pace(self) -> dict:
        """How often the master wants to hear from a node and whether it may keep its connection."""
        linger = IDLE_LINGER_SECS if len(self.node_info) > HOLD_CONNECTIONS_MAX else None
        return {"heartbeat": self._heartbeat_secs(), "linger": linger}

    def _heartbeat_secs(self) -> float:
        """The longest interval between heartbeats the master wants now (0: the node's own). A node
        beats at the longer of this and its configured `heartbeat`."""
        return round(min(len(self.node_info) / HEARTBEATS_PER_SEC, self.node_timeout / 3), 3)

    def _after_records(self, applied: list) -> list[dict]:
        """Bookkeeping for records just applied (lock held): finished jobs are remembered (and
        returned, for the history once they are durable); the scheduler is woken for re-queued ones."""
        finished = [j for j in applied if j is not None and j["state"] in J.FINAL_STATES]
        for job in finished:
            self._remember(job)
            self.launched.pop(job["id"], None)
        if any(j is not None and j["state"] == J.QUEUED for j in applied):
            self._kick.set()
        return finished

    def finished(self, name: str, reports: list) -> list:
        """Completions from a node; applied once each, acknowledged after they are durable."""
        now = time.time()
        acked, done = [], []
        with self.lock:
            for rep in reports:
                job_id = J.parse_job_id(rep["id"])
                acked.append(job_id)
                result = {k: rep.get(k) for k in ("exit_code", "signal", "usage", "error", "start_time",
                                                  "limit", "limit_detail", "limits") if rep.get(k) is not None}
                rec = self.table.finish_record(job_id, result, now, node=name, attempt=rep.get("attempt"))
                if rec is not None and rep.get("lost"):
                    # the node lost the job (its host rebooted under it): like a lost node, for this job
                    job = self.table.jobs[job_id]
                    rec = self.table.lost_record(job, now, f"node {name}: {rep.get('error') or 'job lost'}",
                                                 self.requeue)
                    log.warning("job %s lost on node %s (%s): %s", job_id, name, rep.get("error"),
                                "re-queued" if rec["op"] == "requeue" else "not re-queued")
                if rec is not None:
                    job = self._record([rec])[0]
                    if job["state"] in J.FINAL_STATES:
                        self._remember(job)
                        self.launched.pop(job_id, None)
                        done.append(job)
        self._durable()
        if done:
            self.store.add_history(done)
        self._kick.set()
        return acked

    def _call_node(self, name: str, method: str, *args):
        link = self.links.get(name)
        if link is None:
            return None
        try:
            return link.call(method, *args)
        except Exception as exc:
            log.warning("node %s: %s failed: %s", name, method, exc)
            return None

    # ---- scheduling ----------------------------------------------------------------------------

    def _scheduler_loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._kick.wait(START_RETRY_SECS)
            # Completions arrive one report at a time; a short gap lets the ones that come together
            # share a pass, where a pass per report would cost the master more than the jobs do.
            time.sleep(max(0.0, last + PASS_GAP_SECS - time.monotonic()))
            self._kick.clear()
            last = time.monotonic()
            try:
                self._dispatch_pass()
            except Exception:
                log.exception("scheduler pass failed")

    def _dispatch_pass(self) -> None:
        now = time.time()
        with self.lock:
            dispatched = [j for j in self._record(self.table.schedule(now)) if j is not None]
            if len(dispatched) >= MAX_PLACED_PER_PASS:
                self._kick.set()  # the pass was cut short (see placement): more may fit at once
            for job in dispatched:
                self.unconfirmed.pop(job["id"], None)  # (re-dispatched: to the end, in offer order)
                self.unconfirmed[job["id"]] = now
            # jobs whose start was never confirmed (node slow or unreachable) are offered again;
            # node.start is idempotent, so a second offer cannot run a job twice
            again = []
            for job_id, offered in self.unconfirmed.items():
                if offered >= now - START_RETRY_SECS:
                    break  # the rest were offered later still
                again.append(job_id)
            for job_id in again:
                del self.unconfirmed[job_id]
                job = self.table.jobs.get(job_id)
                if job is not None and job["state"] == J.DISPATCHED:
                    self.unconfirmed[job_id] = now  # to the end: offered last
                    if job["node"] in self._sending:
                        # its node's start call is still queued or in flight (a busy node, or a
                        # busy master with 10,000 of them): its reply decides; a second copy of the
                        # offer would only add load where there is already too much
                        continue
                    dispatched.append(job)
            batches = collections.defaultdict(list)
            for job in dispatched:
                batches[job["node"]].append(dict(job))
        if not batches:
            return
        self._durable()  # a job is on disk as dispatched before any node can run it (invariant 2)
        self._offer(batches)

    def _offer(self, batches: dict[str, list[dict]]) -> None:
        """Queue jobs for their nodes' `start`, one call in flight per node: the next pass need not
        wait for a slow node, and what piles up for a node meanwhile goes in its next call."""
        with self._outbox_lock:
            for name, batch in batches.items():
                self._outbox.setdefault(name, {}).update((job["id"], job) for job in batch)
                if name not in self._sending:
                    self._sending.add(name)
                    self._pool.submit(self._drain_outbox, name)

    def _drain_outbox(self, name: str) -> None:
        while True:
            with self._outbox_lock:
                batch = self._outbox.pop(name, None)
                if not batch:
                    self._sending.discard(name)
                    return
            try:
                self._start_on(name, list(batch.values()))
            except Exception:
                log.exception("starting jobs on %s failed; they are offered again later", name)

    def _start_on(self, name: str, batch: list[dict]) -> None:
        reply = self._call_node(name, "start", batch)
        if reply is None:
            return  # unreachable: the jobs stay dispatched and are offered again on the next pass
        now = time.time()
        with self.lock:
            records = []
            launch = (str(reply.get("incarnation", "")), int(reply.get("seq", 0)))
            for job_id, pid in reply.get("started", {}).items():
                job = self.table.jobs.get(int(job_id))
                if job is None or job.get("node") != name:
                    continue  # finished or moved meanwhile; the node learns it is stale on its next beat
                self.launched[int(job_id)] = launch
                self.unconfirmed.pop(int(job_id), None)
                records.append({"op": "start", "id": int(job_id), "node": name, "pid": pid, "time": now})
            for job_id, error in reply.get("rejected", {}).items():
                records.append({"op": "finish", "id": int(job_id), "time": now,
                                "result": {"exit_code": 127, "error": str(error)}})
            applied = self._record(records)
            finished = [j for j in applied if j is not None and j["state"] in J.FINAL_STATES]
            for job in finished:
                self._remember(job)
        if finished:
            self._durable()
            self.store.add_history(finished)

    def _housekeeping_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._mark_silent_nodes()
                self._snapshot_if_due()
            except Exception:
                log.exception("housekeeping failed")

    def _mark_silent_nodes(self) -> None:
        """A node silent for node_timeout is down; the jobs it had are lost (re-queued or finished)."""
        now = time.time()
        records, done = [], []
        with self.lock:
            for name, info in self.node_info.items():
                silent = now - info["last_seen"]
                if silent <= self.node_timeout or info.get("lost_at"):
                    continue  # (a lost node's jobs are dealt with once; it gets none until it registers)
                info["lost_at"] = now
                node = self.table.nodes.get(name)
                if node is not None and node.up:
                    node.up = False
                    log.warning("node %s silent for %.0f s: marked down, no new jobs go there", name, silent)
                reason = f"node {name} lost (silent for {silent:.0f} s)"
                for job in self.table.jobs_on(name):
                    rec = self.table.lost_record(job, now, reason, self.requeue)
                    records.append(rec)
                    log.warning("job %s: %s; %s", job["id"], reason,
                                "re-queued" if rec["op"] == "requeue" else f"finished as {rec['result']['status']}")
            if records and not self._closing:
                done = self._after_records(self._record(records))
        if records and not self._closing:
            self._durable()
            if done:
                self.store.add_history(done)

    def reconfigure(self, **changes) -> dict:
        """Apply reloaded config keys that need no restart; returns those that changed."""
        known = ("default_cpus", "default_memory", "node_timeout", "requeue", "min_free_disk")
        changed = {}
        with self.lock:
            for key, value in changes.items():
                if key in known and getattr(self, key) != value:
                    changed[key] = value
                    setattr(self, key, value)
            if "min_free_disk" in changed:
                self._disk_checked = 0.0
        return changed

    def begin_shutdown(self) -> None:
        """From now on nothing changes state; callers get Restarting, which clients retry."""
        with self.lock:
            self._closing = True
        self._stop.set()
        self._kick.set()

    def shutdown(self) -> None:
        self.begin_shutdown()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            if not self.failed.is_set():
                with self.lock:
                    ticket = self.store.begin_snapshot()
                    state = self.table.snapshot()
                self.store.write_snapshot(ticket, state)
        except (StoreError, OSError) as exc:
            log.error("no snapshot at shutdown (%s); the journal has everything", exc)
        finally:
            try:
                self.store.close()
            except (StoreError, OSError) as exc:  # e.g. history not flushed to a full disk: in the journal
                log.error("closing the store: %s", exc)
