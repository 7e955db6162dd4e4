"""The job table: the live jobs and nodes, changed only by journal records (dicts with an "op"). Pure code, no I/O.

The master's decisions (`grun.core.master_state`) make records and apply them here before it journals them; after
a crash the journal is replayed through the same `apply`, so live operation and recovery cannot disagree."""

import collections
import sys

from ..values import task_ref
from . import arrays as A
from . import deps as D
from . import jobs as J
from .learn import Learned, filed
from .nodes import EPS, NodeIndex, NodeView, consumables
from .placement import PendingQueue
from .quotas import Quotas

# Finished jobs' tokens are kept this long (at most this many): a submit retried after its job ended gets the same id.
TOKEN_KEEP_SECS, TOKEN_KEEP_MAX = 3600.0, 100_000
# Queued jobs share one copy of an environment or command they have in common (100k jobs each with its own
# 5-variable environment took ~0.9 KB a job more); the cache is dropped past this many distinct values.
SHARED_VALUES_MAX = 10_000
LOST_EXIT = 255  # what a lost job exits with, as ssh does when the remote end went away


class JobTable:
    def __init__(self):
        self.jobs: dict[int, dict] = {}          # live jobs only; finished ones leave
        self.pending = PendingQueue()
        self.nodes = NodeIndex()                 # NodeViews by name, filed by free capacity
        self.tokens: dict[str, int] = {}         # client submit token -> job id, for retried submits
        self.done_tokens: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # (id, end)
        self.next_id = 1
        self.names: dict[tuple, int] = {}        # (user, job name) -> id, live jobs only: names are per user
        self.counted: dict[int, tuple] = {}      # job id -> (node, what of it that node's usage counts)
        self.reserved: dict[int, dict] = {}      # queued jobs holding a node reservation, by id
        self.tasks: dict[int, dict[int, int]] = {}  # array id -> {task id: job id} of its live tasks
        self.dependants: dict[int, set[int]] = {}  # job id -> the waiting jobs that depend on it (grun.core.deps)
        self.makers: dict[str, set[int]] = {}    # path -> the live jobs that declare it an output (make's needs)
        self.delayed: dict[int, float] = {}      # waiting job id -> when its retry is due
        self.quotas = Quotas()                   # what each user and group runs now (config limits:)
        self._shared: dict[tuple, object] = {}   # see SHARED_VALUES_MAX; values are never mutated
        self._last_shared: dict[str, object] = {}
        self.learned = Learned()                 # what finished runs used, for learned requests (grun.core.learn)
        self.learnt: dict[tuple, set[int]] = {}  # learn.filed(job) -> the live jobs holding learned values

    def apply(self, rec: dict):
        """Apply one record; returns the job it touched, the node's view for "node", or None (a job that has left)."""
        op = rec["op"]
        if op == "submit":
            job = self._share(dict(rec["job"]) if rec.get("restored") else  # (a snapshot's: named already)
                              J.out_names(dict(rec["job"]), self.jobs.get(rec["job"].get("array"))))
            self.jobs[job["id"]] = job
            self.next_id = max(self.next_id, job["id"] + 1)
            if job.get("token"):
                self.tokens[job["token"]] = job["id"]
            if job.get("name"):
                self.names[job.get("user"), job["name"]] = job["id"]
            if "task" in job:
                self.tasks.setdefault(job["array"], {})[job["task"]] = job["id"]
            if job["state"] in (J.QUEUED, J.WAITING):
                self._settle(job, job.get("submit_time", 0.0))
            self._index(job, True, outputs=True)
            self._sync(job)
            return job
        if op == "node":
            return self._describe_node(rec)
        if op == "forget":  # a node down for long and holding no job: it leaves the tables
            if rec["name"] in self.nodes and not self.nodes[rec["name"]].jobs:
                del self.nodes[rec["name"]]
            return None
        if (job := self.jobs.get(rec.get("id"))) is None:
            return None
        if op in ("task", "stop"):
            return self._array(job, rec)
        state = job["state"]
        if op == "dispatch":
            self.pending.remove(job)
            job.update(state=J.DISPATCHED, node=rec["node"], dispatch_time=rec["time"],
                       attempt=job.get("attempt", 0) + 1)
            job.pop("devices", None)  # (kept past a re-queue: a lost node may come back with the job)
            if rec.get("devices"):
                job["devices"] = rec["devices"]
        elif op == "start" and state == J.DISPATCHED:
            job.update(state=J.RUNNING, start_time=rec["time"], pid=rec.get("pid"))
        elif op == "kill" and not J.asked_to_end(job):  # (a later USR1 keeps an earlier TERM)
            job.update({"killed_by": rec["killed_by"]} if "killed_by" in rec else {}, kill_requested=rec.get("signal", 15))
        elif op == "requeue":  # its node was lost: back in the queue, remembering where the old copy may live
            job.update(state=J.QUEUED, node=None, requeue_reason=rec.get("reason"), lost_from=rec.get("node"))
            job["requeues"], job["requeue_time"] = job.get("requeues", 0) + 1, rec["time"]
            self.pending.add(job)
        elif op == "reclaim" and state == J.QUEUED and job.get("lost_from") == rec["node"]:  # its lost node is back
            self.pending.remove(job)
            job.update(state=J.RUNNING, node=rec["node"], lost_from=None, reclaimed=rec["time"])
            job.pop("requeue_time", None)  # (its run is the one before: its wait, from its submission)
        elif op == "finish":
            self._finish(job, rec)
        elif op == "hold" and state in (J.QUEUED, J.WAITING):
            self.pending.remove(job)
            self.delayed.pop(job["id"], None)
            job["state"] = J.HELD
        elif op == "release" and state == J.HELD:
            self._settle(job, rec["time"])  # queued, or waiting again for what it still waits for
        elif op == "suspend" and state == J.RUNNING:
            job.update(state=J.SUSPENDED, suspend_time=rec["time"])
        elif op == "resume" and state == J.SUSPENDED:
            job["state"] = J.RUNNING
            job.pop("suspend_time", None)
        elif op in ("edit", "dep") and state in (J.QUEUED, J.HELD, J.WAITING):  # "dep": one dependency met
            changes = rec["changes"] if op == "edit" else {"deps": [d for d in job["deps"] if d[1] != rec["dep"]]}
            self.pending.remove(job)
            self._index(job, False)
            job.update(changes)
            job.pop("reserved_node", None)
            self._index(job, True)
            if state != J.HELD:
                self._settle(job, rec["time"])
        elif op == "ready" and state == J.WAITING:  # its retry is due
            self._settle(job, rec["time"])
        elif op == "retry":  # it failed with retries left: waiting for its retry_delay, else queued
            self.pending.remove(job)
            job.update(node=None, lost_from=None, retry_reason=rec["reason"], retry_at=rec["at"],
                       retried=job.get("retried", 0) + 1)
            if rec.get("exclude"):  # not there again: its cwd does not exist there (elsewhere_record)
                job["exclude"] = [*job.get("exclude", ()), rec["exclude"]]
            self._settle(job, rec["time"])
        elif op in ("lend", "unlend"):  # (nested grun: the children it lent what it holds to)
            lent, child = set(job.pop("lent_to", ())), {rec["child"]}
            if lent := (lent | child if op == "lend" else lent - child):
                job["lent_to"] = sorted(lent)
        elif op == "reserve" and state == J.QUEUED:
            job.update(reserved_node=rec["node"], reserved_time=rec["time"])
        if op in ("hold", "suspend") and job["state"] != state and rec.get("by"):  # (by: the admin who held it)
            job["held_by"] = rec["by"]
        if job["state"] not in (J.HELD, J.SUSPENDED):  # (released, killed, re-queued, ended: no admin's hold holds it;
            # an ended one kept it, and history --long said "only an admin can release it")
            job.pop("held_by", None)
        self._sync(job)
        return job

    def _array(self, array: dict, rec: dict) -> dict:
        """"task": one task of the array becomes a job (returned); "stop": its tasks not started end (killed)."""
        if rec["op"] == "task":  # in its array's state: one of a held array made a job (to edit) stays held
            task = dict(A.task_job(array, rec["new"], rec["task"]), attempt=0, node=None)
            A.take(array, rec["task"])
        else:
            array["counts"] = {**array["counts"], J.KILLED: array["counts"].get(J.KILLED, 0) + A.left(array)}
            array["stopped"] = rec.get("signal", 15)
        if not A.left(array):  # every task started (or none will): the array's own record waits for them
            self.pending.remove(array)
            array["state"] = J.RUNNING
            self._sync(array)
        return self.apply({"op": "submit", "job": task}) if rec["op"] == "task" else array

    def named(self, raw) -> tuple[str, int | None, tuple | None]:
        """(its key in a reply, its job's id, and for a task `12.7` not begun, (array id, task)); a ValueError."""
        if (ref := task_ref(raw) if isinstance(raw, str) else None) is None:
            return str(job_id := J.parse_job_id(raw)), job_id, None
        job_id, array = self.tasks.get(ref[0], {}).get(ref[1]), self.jobs.get(ref[0])
        return f"{ref[0]}.{ref[1]}", job_id, ref if job_id is None and array and A.has_task(array, ref[1]) else None

    def room(self, job: dict) -> int:
        """How many copies of the job may start now: 1, or an array's tasks (its %N), which a task alone counts too."""
        if A.is_array(job):
            return A.room(job, job["limit"] and len(self.busy_tasks(job["id"])))  # (no %N: no count)
        limit = self.jobs[job["array"]]["limit"] if "task" in job and job["array"] in self.jobs else None
        return int(limit is None or sum(self.jobs[i]["state"] in J.ON_NODE_STATES
                                        for i in self.tasks[job["array"]].values()) < limit)

    def busy_tasks(self, array_id: int) -> list[dict]:
        """The array's tasks that take one of its %N: those made jobs and not held (as in Slurm)."""
        return [job for i in self.tasks.get(array_id, {}).values() if (job := self.jobs[i])["state"] != J.HELD]

    def _share(self, job: dict) -> dict:
        """One copy of each env dict, cmd list and short string that many jobs hold alike."""
        for key, kind in (("env", dict), ("cmd", list)):
            value = job.get(key)
            if type(value) is not kind or not value or key == "env" and "task" in job:  # (a task's is its own)
                continue
            if (last := self._last_shared.get(key)) is value or last == value:  # a run of jobs alike: no hashing of it
                job[key] = last
                continue
            if len(self._shared) >= SHARED_VALUES_MAX:
                self._shared.clear()
            fingerprint = (key, *(value.items() if kind is dict else value))
            job[key] = self._last_shared[key] = self._shared.setdefault(fingerprint, value)
        for key in ("cwd", "user"):
            if type(job.get(key)) is str:
                job[key] = sys.intern(job[key])
        return job

    def _settle(self, job: dict, now: float) -> None:
        """A job not held nor pending: waiting while it has dependencies unmet or a retry delay left, else queued."""
        self.delayed.pop(job["id"], None)
        if job.get("deps") or job.get("retry_at", 0.0) > now:
            job["state"] = J.WAITING
            if job.get("retry_at", 0.0) > now:
                self.delayed[job["id"]] = job["retry_at"]
            return
        if job["state"] != J.QUEUED:
            job.update(state=J.QUEUED, queued_time=now)
        job.pop("retry_at", None)
        self.pending.add(job)

    def _index(self, job: dict, add: bool, outputs: bool = False) -> None:
        """File the job under each job it waits for, its learn.filed key (`outputs`: each of its outputs), or take it out."""
        for index, keys in ((self.dependants, [d[1] for d in job.get("deps") or ()]),
                            (self.learnt, [key] if (key := filed(job)) else ()),
                            (self.makers, job.get("outputs") or () if outputs else ())):
            for key in keys:
                if add:
                    index.setdefault(key, set()).add(job["id"])
                elif (ids := index.get(key)) is not None:
                    ids.discard(job["id"])
                    if not ids:
                        del index[key]

    def _finish(self, job: dict, rec: dict) -> None:
        self.pending.remove(job)
        self._index(job, False, outputs=True)
        self.delayed.pop(job["id"], None)
        del self.jobs[job["id"]]
        if job.get("name") and self.names.get(key := (job.get("user"), job["name"])) == job["id"]:
            del self.names[key]
        if job.get("token"):  # kept a while after the job ended, for a submission retried late
            self.tokens.pop(job["token"], None)
            kept, now = self.done_tokens, rec["time"]
            kept[job["token"]] = (job["id"], now)
            kept.move_to_end(job["token"])  # (so the loop stops at it at the latest)
            while len(kept) > TOKEN_KEEP_MAX or next(iter(kept.values()))[1] < now - TOKEN_KEEP_SECS:
                kept.popitem(last=False)
        if rec.get("node") and not job.get("node"):
            job["node"] = rec["node"]  # finished by the copy on the node it was lost from
        job.pop("lost_from", None)
        result = rec.get("result", {})
        job.update(result)
        job["end_time"] = rec["time"]
        if result.get("status") == J.KILLED and "usage" not in result and job.get("start_time"):  # not the node's:
            job["usage"] = {"wall": round(rec["time"] - job["start_time"], 6)}  # (a lease, --force) from our records
        started = job.get("start_time") or job.get("dispatch_time")  # its last run's: re-queued, from then (as sacct's)
        if started and job.get("submit_time") and started >= job.get("requeue_time", 0):  # (killed before its re-run: none)
            job["queue_wait"] = round(started - job.get("requeue_time", job["submit_time"]), 6)
        job["exit"] = J.exit_code_of(result)
        killed = J.asked_to_end(job) or result.get("signal") and (  # (a reader gone: failed, not cancelled)
            "kill_requested" in job and not J.reader_gone(job) or result.get("limit"))
        failed = result.get("limit") or job["exit"]  # (a limit met without a signal: the job failed)
        job["state"] = result.get("status") or (J.TIMEOUT if result.get("limit") == "time" else
                                                J.KILLED if killed else J.FAILED if failed else J.DONE)
        if "task" in job:  # counted in its array's record
            live = self.tasks.get(job["array"], {})
            live.pop(job["task"], None)
            if not live:
                self.tasks.pop(job["array"], None)
            if job["array"] in self.jobs:
                A.ended(self.jobs[job["array"]], job)

    def token_id(self, token: str | None) -> int | None:
        """The job a client token already named (live, or finished not long ago)."""
        return self.tokens.get(token) or self.done_tokens.get(token, (None,))[0]

    def _sync(self, job: dict) -> None:
        """Make the node views count exactly what the job holds now (and a node's `jobs` its live jobs), and index its
        reservation (only a queued job holds one; reserved_time stays, for the record)."""
        if job["state"] == J.QUEUED and job.get("reserved_node"):
            self.reserved[job["id"]] = job
        else:
            self.reserved.pop(job["id"], None)
            job.pop("reserved_node", None)
        claim = None  # what it holds on its node: its request; no cpus suspended (its devices kept); nothing lent
        if job["state"] in J.ON_NODE_STATES and job.get("node") in self.nodes:
            claim = {"cpus": 0.0, "memory": 0, "params": {}} if job.get("lent_to") else {  # (to a nested grun's child)
                "cpus": 0.0 if job["state"] == J.SUSPENDED else job["cpus"], "memory": job["memory"],
                "params": job.get("params") or {}, "devices": job.get("devices")}
        if self.counted.get(job["id"]) == (job.get("node"), claim):
            return
        self._uncount(job)
        if claim is not None:
            node = self.nodes[job["node"]]
            node.take(claim)
            node.jobs.add(job["id"])
            self.counted[job["id"]] = (node.name, claim)
            self.quotas.count(job, claim)

    def _uncount(self, job: dict) -> None:
        if (entry := self.counted.pop(job["id"], None)) is None:
            return
        self.quotas.count(job, entry[1], -1)
        node = self.nodes[entry[0]]  # (a node holding a job is not forgotten)
        node.take(entry[1], -1)
        node.jobs.discard(job["id"])
        node.used_cpus, node.used_memory = max(0.0, node.used_cpus), max(0, node.used_memory)

    def claims(self, now: float) -> dict:
        """Node name -> a copy of the queued job that reserved it, with its `window`: how long until the jobs there, by
        their -t or learned estimates, leave it room (0 when one has no estimate, or is past it: no backfill)."""
        return {j["reserved_node"]: dict(j, window=self._window(self.nodes[j["reserved_node"]], j, now))
                for j in self.reserved.values() if j.get("reserved_node") in self.nodes}

    def _window(self, node: NodeView, owner: dict, now: float) -> float:
        need = {"cpus": owner["cpus"], "memory": owner["memory"], **consumables(owner, node)}
        room = {k: node.free_cpus if k == "cpus" else node.free_memory if k == "memory" else node.free(k) for k in need}
        ends = []
        for job in map(self.jobs.get, node.jobs):
            run, began = job.get("time") or job.get("expected_time"), job.get("start_time", job.get("dispatch_time"))
            if not run or began is None or began + run <= now:
                return 0.0  # no estimate, or past it: it may end any moment, or never
            ends.append((began + run, job["id"], self.counted[job["id"]][1]))  # what it holds: lent cpus are free now
        for end, _, held in sorted(ends):  # (in id order at equal ends: a dict is never compared)
            frees = {"cpus": held["cpus"], "memory": held["memory"], **consumables(held, node)}
            room = {k: v + frees.get(k, 0) for k, v in room.items()}
            if all(room[k] + EPS >= v for k, v in need.items()):
                return end - now
        return 0.0

    def finish_record(self, job_id: int, result: dict, now: float, node: str, attempt: int | None = None) -> dict | None:
        """The end of a job that `node` reported, or its retry (deps.retry_or_finish); None for a job unknown or ended
        (a repeated report), a report of an earlier run, or from a node not the job's (a stale copy)."""
        if (job := self.jobs.get(job_id)) is None or node != (job.get("node") or job.get("lost_from")) or (
                attempt is not None and job.get("attempt") and int(attempt) != job["attempt"]):
            return None
        return D.retry_or_finish(job, {"op": "finish", "id": job_id, "result": result, "time": now, "node": node})

    def lost_record(self, job: dict, now: float, reason: str, requeue: bool = True) -> dict:
        """A job whose node was lost: re-queued if it may be (config and job `requeue`), else lost; killed if asked (its
        kill_signal: no signal is known to have reached it; late_end may tell its end)."""
        if J.asked_to_end(job):
            return {"op": "finish", "id": job["id"], "time": now, "result": {
                "status": J.KILLED, "kill_signal": int(job["kill_requested"]), "exit_code": None, "error": reason}}
        if requeue and job.get("requeue", True):
            return {"op": "requeue", "id": job["id"], "node": job.get("node"), "reason": reason, "time": now}
        return {"op": "finish", "id": job["id"], "time": now,
                "result": {"status": J.LOST, "exit_code": LOST_EXIT, "error": reason}}

    def elsewhere_record(self, job: dict, node: str, why: str, now: float) -> dict | None:
        """A job whose cwd does not exist on `node`: run it again, never there, when a node up could run it."""
        others = {**job, "exclude": [*job.get("exclude", ()), node]}
        if not J.asked_to_end(job) and any(n.up and n.could_ever_fit(others) for n in self.nodes.values()):
            return {"op": "retry", "id": job["id"], "time": now, "at": now, "reason": why, "exclude": node}

    def reconcile(self, name: str, running, finished=None, now: float = 0.0,
                  in_flight=(), requeue: bool = True) -> tuple[list[dict], list[dict], list[int]]:
        """What a node holds (`running`; `finished` not yet reported, None for a heartbeat: then nothing is lost or
        offered; `in_flight`: starts too recent for its list) against the table: (records, jobs to start, stale ids)."""
        running = {int(i) for i in running}
        held = running | {int(i) for i in finished or ()}
        records, start, stale = [], [], []
        for job in self.jobs_on(name) if finished is not None else ():
            if job["id"] in held:
                continue
            if job["state"] == J.DISPATCHED:
                start.append(job)  # the start never reached the node: offer it again
            elif job["id"] not in in_flight:
                records.append(self.lost_record(job, now, f"node {name} came back without it", requeue))
        for job_id in sorted(held):  # (a run that ended there is reclaimed too: its end is reported next, and a
            job = self.jobs.get(job_id)  # new run dispatched there meanwhile would run the job twice)
            if job is not None and job.get("node") == name:
                if job["state"] == J.DISPATCHED and job_id in running:
                    records.append({"op": "start", "id": job_id, "node": name, "pid": None, "time": now})
            elif job is not None and job["state"] == J.QUEUED and job.get("lost_from") == name:
                records.append({"op": "reclaim", "id": job_id, "node": name, "time": now})
            elif job_id in running:
                stale.append(job_id)  # finished, or re-queued and placed elsewhere: the copy here must go
        return records, start, stale

    def node_record(self, name: str, cpus: float, memory: int, resources: dict | None = None,
                    labels: dict | None = None, heartbeat: float | None = None) -> dict | None:
        """A "node" record when a node's description is new or changed, else None (`heartbeat`: its own interval)."""
        rec = {"op": "node", "name": name, "cpus": float(cpus), "memory": int(memory),  # (a list: device ids)
               "resources": {str(k): list(dict.fromkeys(map(str, v))) if isinstance(v, (list, tuple)) else float(v)
                             for k, v in (resources or {}).items()},
               "labels": {str(k): str(v) for k, v in (labels or {}).items()}, "heartbeat": float(heartbeat or 0)}
        return None if name in self.nodes and _described(self.nodes[name]) == rec else rec

    def _describe_node(self, rec: dict) -> NodeView:
        if (node := self.nodes.get(rec["name"])) is None:  # being up is not journaled: down until it registers again
            node = self.nodes[rec["name"]] = NodeView(rec["name"], rec["cpus"], rec["memory"], up=False)
        node.cpus, node.memory = float(rec["cpus"]), int(rec["memory"])
        node.heartbeat = float(rec.get("heartbeat") or 0)
        node.labels, given = dict(rec.get("labels") or {}), rec.get("resources") or {}
        node.devices = {k: list(v) for k, v in given.items() if isinstance(v, list)}
        node.resources = {k: float(len(v)) if isinstance(v, list) else v for k, v in given.items()}
        on_node = self.jobs_on(node.name)
        for job in on_node:
            self._uncount(job)
        node.used_cpus, node.used_memory, node.used_resources, node.held = 0.0, 0, {}, {}
        for job in on_node:
            self._sync(job)
        return node

    def jobs_on(self, name: str) -> list[dict]:
        return [self.jobs[i] for i in sorted(self.nodes[name].jobs)] if name in self.nodes else []

    def snapshot(self) -> dict:
        """The live state as plain data; a shared environment once, under "envs" (60 % of a snapshot's bytes)."""
        envs: dict[int, tuple[int, dict]] = {}  # id() of a shared env dict -> (its index, the dict)
        index = lambda env: envs.setdefault(id(env), (len(envs), env))[0]
        jobs = [dict(job, env=index(job["env"])) if job.get("env") else dict(job) for job in self.jobs.values()]
        return {"next_id": self.next_id, "jobs": jobs, "envs": [env for _, env in envs.values()],
                "nodes": [_described(node) for node in self.nodes.values()],
                "done_tokens": [[t, i, at] for t, (i, at) in self.done_tokens.items()], "learned": self.learned.dump()}

    def restore(self, state: dict) -> None:
        self.next_id = state.get("next_id", 1)
        self.done_tokens.update((token, (job_id, at)) for token, job_id, at in state.get("done_tokens", []))
        self.learned.load(state.get("learned"))
        for rec in state.get("nodes", []):
            self.apply(rec)
        envs = state.get("envs", [])
        for job in state.get("jobs", []):
            if type(job.get("env")) is int:
                if not 0 <= job["env"] < len(envs):
                    raise ValueError(f"snapshot: job {job.get('id')} names environment {job['env']} of {len(envs)}")
                job["env"] = envs[job["env"]]
            self.apply({"op": "submit", "job": job, "restored": True})


def fate(rec: dict) -> str:
    """What a lost_record made of a job its node lost."""
    return "re-queued" if rec["op"] == "requeue" else f"finished as {rec['result']['status']}"


def _described(node: NodeView) -> dict:
    """The "node" record that describes the node as it is (a snapshot holds one per node)."""
    return {"op": "node", "name": node.name, "cpus": node.cpus, "memory": node.memory,
            "resources": {**node.resources, **{k: list(v) for k, v in node.devices.items()}},
            "labels": dict(node.labels), "heartbeat": node.heartbeat}


def late_end(job: dict | None, node: str, report: dict, result: dict, now: float) -> dict | None:
    """A job declared lost (or killed while lost: lost_record), not run again, with the end of that run its node reports
    when it is back: still lost or killed (its dependants went by that), with the run's exit and usage. None for any
    other report, a copy the master killed when the node came back (superseded), or a run its node lost too."""
    if not job or job["state"] != J.LOST and "kill_signal" not in job or "late_end" in job or report.get("superseded") \
            or report.get("lost") or job.get("node") != node \
            or int(report.get("attempt") or job["attempt"]) != job["attempt"]:
        return None
    code = J.exit_code_of(result)
    return {**job, **{k: v for k, v in result.items() if k != "error"}, "exit": code, "late_end": now,
            "error": f"{job.get('error')}; its run ended there later: exit {code}"}
