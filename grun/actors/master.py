"""The master actor (`grun.master`): owns the job table, the node table and the scheduler.

Every request follows one shape: under the state lock, decide through the pure core
(`grun.core.queue.JobTable`), apply the records and append them to the journal; release the lock;
wait for the journal's group commit when the caller must not be answered before the disk has it;
only then talk to nodes, each call with a timeout (invariant 4).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import Pyro5.api

from .. import registry
from ..core import jobs as J
from ..core.queue import JobTable
from ..store import Store

log = logging.getLogger("grun.master")

SNAPSHOT_EVERY_RECORDS = 20000
SNAPSHOT_EVERY_SECS = 60.0
RECENT_FINISHED = 20000
START_RETRY_SECS = 2.0
MAX_WAIT_SECS = 60.0


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
class Master:
    def __init__(self, state_dir: str, *, default_cpus: float = 1.0, default_memory: int = 100,
                 node_timeout: float = 60.0):
        self.state_dir = state_dir
        self.default_cpus, self.default_memory = default_cpus, default_memory
        self.node_timeout = node_timeout
        self.lock = threading.Lock()
        self.table = JobTable()
        self.store = Store(state_dir, log=logging.getLogger("grun.store"))
        self.links: dict[str, NodeLink] = {}
        self.node_info: dict[str, dict] = {}
        self.recent: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.watchers: dict[int, list[threading.Event]] = {}
        self.unconfirmed: dict[int, float] = {}   # dispatched job id -> when last offered to its node
        self.records_since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="grun-node-call")
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
        for job in self.table.jobs.values():
            if job["state"] == J.DISPATCHED:
                self.unconfirmed[job["id"]] = 0.0
        log.info("recovered %d live jobs (%d journal records replayed)", len(self.table.jobs), len(records))
        self.records_since_snapshot = len(records)

    def _record(self, records: list[dict]) -> list:
        """Apply and journal records; call with the lock held. Returns what apply() returned."""
        out = [self.table.apply(r) for r in records]
        if records:
            self.store.log_nowait(records)
            self.records_since_snapshot += len(records)
            for r in records:
                self._notify(r.get("id") if r["op"] != "submit" else r["job"]["id"])
        return out

    def _durable(self) -> None:
        """Block (without the lock) until everything journaled so far is fsync'd."""
        self.store.log([])

    def _remember(self, job: dict) -> None:
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
        due = self.records_since_snapshot >= SNAPSHOT_EVERY_RECORDS or (
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
            requests = [J.validate_spec(s, self.default_cpus, self.default_memory) for s in specs]
        except J.SpecError as exc:
            raise ValueError(str(exc)) from None  # Pyro5 clients rebuild builtin exceptions, not ours
        now = time.time()
        ids = []
        with self.lock:
            records = []
            for req in requests:
                if req["token"] and req["token"] in self.table.tokens:
                    ids.append(self.table.tokens[req["token"]])
                    continue
                rec = self.table.submit_record(req, now)
                records.append(rec)
                ids.append(rec["job"]["id"])
            self._record(records)
        self._durable()
        self._kick.set()
        return ids

    def job(self, job_id: int) -> dict:
        job_id = _job_id(job_id)
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
        if job.get("node"):
            view["node_uri"] = self.node_info.get(job["node"], {}).get("uri")
        return view

    def wait_started(self, job_id: int, timeout: float = 30.0) -> dict:
        """Returns the job once it runs (or has finished), or as it is when the timeout passes."""
        job_id = _job_id(job_id)
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
        ids = [_job_id(i) for i in job_ids]
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
                            "running": len(view.jobs), "uri": info.get("uri"),
                            "last_seen": now - info.get("last_seen", now)})
            return out

    def history(self, limit: int = 50, user: str | None = None) -> list[dict]:
        predicate = (lambda j: j.get("user") == user) if user else None
        return [J.public_view(j) for j in self.store.history(int(limit), predicate)]

    def kill(self, job_ids: list, signal: int = 15) -> dict:
        """Kill queued or running jobs. Returns {id: found}."""
        signal = int(signal)
        if not 1 <= signal <= 64:
            raise ValueError(f"bad signal number {signal}")
        now = time.time()
        found, on_nodes = {}, collections.defaultdict(list)
        with self.lock:
            records = []
            for raw in job_ids:
                job_id = _job_id(raw)
                job = self.table.jobs.get(job_id)
                found[str(job_id)] = job is not None
                if job is None:
                    continue
                if job["state"] in (J.QUEUED, J.HELD):
                    records.append({"op": "finish", "id": job_id, "time": now,
                                    "result": {"status": J.KILLED, "signal": signal, "exit_code": None}})
                else:
                    records.append({"op": "kill", "id": job_id, "signal": signal, "time": now})
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
        """A node (re)joins. Returns the jobs it should have, so it can start any it missed."""
        name = str(info["name"])
        with self.lock:
            self.table.node_up(name, float(info["cpus"]), int(info["memory"]))
            self.node_info[name] = {"uri": str(info["uri"]), "last_seen": time.time()}
            link = self.links.get(name)
            if link is None or link.uri != info["uri"]:
                self.links[name] = NodeLink(name, str(info["uri"]))
            expected = [self._view(j) | {"env": j["env"]} for j in self.table.jobs_on(name)]
        log.info("node %s registered (%s cpus, %s MB)", name, info["cpus"], info["memory"])
        self._kick.set()
        return {"jobs": expected}

    def heartbeat(self, name: str, info: dict) -> dict:
        with self.lock:
            node = self.table.nodes.get(name)
            if node is None or name not in self.node_info:
                return {"known": False}
            self.node_info[name]["last_seen"] = time.time()
            if not node.up:
                node.up = True
                self._kick.set()
        return {"known": True}

    def finished(self, name: str, reports: list) -> list:
        """Completions from a node; applied once each, acknowledged after they are durable."""
        now = time.time()
        acked, done = [], []
        with self.lock:
            for rep in reports:
                job_id = _job_id(rep["id"])
                acked.append(job_id)
                result = {k: rep.get(k) for k in ("exit_code", "signal", "usage", "error", "start_time")
                          if rep.get(k) is not None}
                rec = self.table.finish_record(job_id, result, now, node=name)
                if rec is not None:
                    job = self._record([rec])[0]
                    self._remember(job)
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
        while not self._stop.is_set():
            self._kick.wait(START_RETRY_SECS)
            self._kick.clear()
            try:
                self._dispatch_pass()
            except Exception:
                log.exception("scheduler pass failed")

    def _dispatch_pass(self) -> None:
        now = time.time()
        with self.lock:
            dispatched = [j for j in self._record(self.table.schedule(now)) if j is not None]
            for job in dispatched:
                self.unconfirmed[job["id"]] = now
            # jobs whose start was never confirmed (node slow or unreachable) are offered again;
            # node.start is idempotent, so a second offer cannot run a job twice
            for job_id, offered in list(self.unconfirmed.items()):
                job = self.table.jobs.get(job_id)
                if job is None or job["state"] != J.DISPATCHED:
                    del self.unconfirmed[job_id]
                elif offered < now - START_RETRY_SECS:
                    self.unconfirmed[job_id] = now
                    dispatched.append(job)
            batches = collections.defaultdict(list)
            for job in dispatched:
                batches[job["node"]].append(dict(job))
        if not batches:
            return
        self._durable()  # a job is on disk as dispatched before any node can run it (invariant 2)
        futures = [self._pool.submit(self._start_on, name, batch) for name, batch in batches.items()]
        for future in futures:
            future.result()

    def _start_on(self, name: str, batch: list[dict]) -> None:
        reply = self._call_node(name, "start", batch)
        if reply is None:
            return  # unreachable: the jobs stay dispatched and are offered again on the next pass
        now = time.time()
        with self.lock:
            records = []
            for job_id, pid in reply.get("started", {}).items():
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
        now = time.time()
        with self.lock:
            for name, info in self.node_info.items():
                node = self.table.nodes.get(name)
                if node is not None and node.up and now - info["last_seen"] > self.node_timeout:
                    node.up = False
                    log.warning("node %s silent for %.0f s: no new jobs go there", name, now - info["last_seen"])

    def shutdown(self) -> None:
        self._stop.set()
        self._kick.set()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            ticket = self.store.begin_snapshot()
            state = self.table.snapshot()
        self.store.write_snapshot(ticket, state)
        self.store.close()


def _job_id(raw) -> int:
    try:
        job_id = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"bad job id {raw!r}") from None
    if job_id <= 0:
        raise ValueError(f"bad job id {raw!r}")
    return job_id
