"""The master's decisions: an event in, records to journal and instructions to carry out. Pure code.

`MasterState.handle(event, *args)` calls `on_<event>` and returns a `Step`: the records it applied to
the job table (the master journals them), the instructions the master carries out once they are
committed, and the reply. As in dask distributed's worker_state_machine (events in, instructions out),
no socket, clock or file is touched here, and the tests assert on the instructions:

    ("offer", node, jobs)          start these jobs there (node.start); the reply is event "started"
    ("reoffer", node, jobs)        the same for offers never confirmed, unless a call is in flight
    ("kill", node, ids, signal)    signal jobs there; heartbeat replies repeat it until the job ends
    ("signal", node, method, ids, by)  suspend or resume jobs there (by: an admin); the outcome: event "signalled"
    ("finished", job)              the job ended: history (written to disk after its record)
    ("history", job)               a lost job's run ended later (queue.late_end): its history record anew
    ("forget", node)               the node left the tables: drop its connection
    ("log", level, message)        for the admin

Decision data that is not journaled lives here too (`launched`, `unconfirmed`, `recent`, `usage`, and
on each NodeView when its node was last heard from and whether it was declared lost).
"""

import collections
import functools
import itertools
import random
from dataclasses import dataclass, field
from types import SimpleNamespace as Namespace

from ..config import KEYS
from ..mounts import reported
from ..values import task_ref
from . import arrays as A
from . import deps as D
from . import edits as E
from . import jobs as J
from . import learn as L
from .explain import disk_low, refusal
from .leases import Leases
from .nodes import Hearing, pace
from .placement import place
from .queue import JobTable, fate, late_end
from .rule_checks import set_by

SETTINGS = {name: key.default(Namespace(personal=False)) if callable(key.default) else key.default  # the config's queue
            for name, key in KEYS.items() if key.service == "queue"}  # keys (a default of the config: a configured one's)
# Finished jobs kept whole for decisions (deps, late ends, repeated reports); older ones are the store's. 20,000 held
# 40-120 MB a restart dropped (QA: 3-4x the master's RSS after one); ended lost ones stay as many more (late_end).
RECENT_FINISHED = 2000
START_RETRY_SECS = 2.0
NODE_FORGET_SECS = 86400.0  # a node down this long and holding no job leaves the node tables
# records after which a scheduling pass may place more than before
KICKS = frozenset({"submit", "finish", "requeue", "release", "edit", "suspend", "unlend", "node", "dep", "retry", "ready"})
RESULT_KEYS = ("exit_code", "signal", "usage", "error", "start_time", "limit", "limit_detail", "limits")
USAGE_FIELDS = ("cpu", "rss_mb", "cputime", "read_bytes", "write_bytes", "procs", "time", "unread")


@dataclass
class Step:
    records: list = field(default_factory=list)   # applied, in order, to journal
    do: list = field(default_factory=list)        # instructions
    reply: object = None
    durable: bool = True   # the reply and the instructions wait until all records so far are on disk
    kick: bool = False     # a scheduling pass may place more now

    def log(self, level: str, message: str) -> None:
        self.do.append(("log", level, message))


class Rival(ValueError):
    """A daemon registering a live node's name from elsewhere (NodeView.rival); `uri`: that node's, to probe."""
    def __init__(self, why: str, uri: str):
        super().__init__(why)
        self.uri = uri


class MasterState:
    def __init__(self, rng: random.Random | None = None, **settings):
        self.settings, self.table, self.rng = dict(SETTINGS), JobTable(), rng or random.Random()
        self.configure(**settings)
        self.launched: dict[int, tuple[str, int]] = {}  # job id -> (node incarnation, launch seq)
        # dispatched job id -> when last offered, oldest first (a pass looks only at offers due again, not at 40,000)
        self.unconfirmed: dict[int, float] = {}
        self.recent, self.usage = collections.OrderedDict(), {}  # the last finished jobs; job id -> its node's last sample
        self.lost_ended = collections.OrderedDict()  # ended lost jobs gone from recent (for late_end)
        self.leases, self.hearing = Leases(), Hearing()  # (not journaled: leases run from a restart; whether it hears nodes)
        self.group_of = lambda user, gid: str(gid)  # -> a name; the master's: user's primary group (its passwd's)

    def configure(self, **changes) -> dict:
        """Apply settings (SETTINGS' keys; others are ignored); returns those that changed."""
        changed = {k: v for k, v in changes.items() if k in SETTINGS and self.settings[k] != v}
        self.settings.update(changed)
        if "limits" in changed:
            self.table.quotas.configure(changed["limits"])
        self.table.pending.fair = self.table.quotas if self.settings["fair_share"] else None
        return changed

    def handle(self, event: str, *args, step: Step | None = None, **kwargs) -> Step:
        step = Step() if step is None else step
        getattr(self, "on_" + event)(step, *args, **kwargs)
        return step

    def _commit(self, step: Step, records: list[dict], replay: bool = False) -> None:
        """Apply records, and those that must follow them, and keep the decision data in step with each job."""
        todo = list(records)
        for rec in todo:  # (todo grows while it is walked)
            job = self.table.apply(rec)
            step.kick = step.kick or rec["op"] in KICKS
            if rec["op"] == "late":  # a lost job's run ended later (queue.late_end): journaled, history takes it anew
                self.recent[rec["id"]] = rec["job"]
                step.do.append(("history", rec["job"]))
            if rec["op"] in ("node", "forget") or job is None:  # (a "late" one's job has left)
                continue
            if job["state"] != J.DISPATCHED:
                self.unconfirmed.pop(job["id"], None)
            if job["state"] not in J.ON_NODE_STATES:
                self.launched.pop(job["id"], None)
                self.usage.pop(job["id"], None)
            if rec["op"] == "finish":
                self.recent[job["id"]] = job
                old = self.recent.popitem(last=False)[1] if len(self.recent) > RECENT_FINISHED else {}
                if old.get("node") and (old["state"] == J.LOST or "kill_signal" in old):  # (its run may end later)
                    self.lost_ended[old["id"]] = old
                    if len(self.lost_ended) > RECENT_FINISHED:
                        self.lost_ended.popitem(last=False)
                step.do.append(("finished", job))
                if (warning := self.table.learned.observe(job, int(self.settings["learn_runs"]))) and not replay:
                    step.log("warning", f"job {job['id']}: {warning}")
            if not replay:  # (journaled: a replay finds them)
                todo += self._followups(rec, job)
        step.records += todo

    def _followups(self, rec: dict, job: dict) -> list[dict]:
        """The records that follow this one: a nested grun's parent lends its reservation to the child until it
        ends; an array's "finish" once no task is left to start or running; its dependants' (grun.core.deps)."""
        out, parent = [], self.table.jobs.get(job.get("parent"))
        if parent and rec["op"] == "submit" and parent["state"] in J.ON_NODE_STATES and parent["uid"] == job["uid"]:
            out.append({"op": "lend", "id": parent["id"], "child": job["id"], "time": job["submit_time"]})
        if rec["op"] in ("finish", "stop"):
            array = self.table.jobs.get(job["array"] if "task" in job else job["id"])
            if array and A.is_array(array) and not A.left(array) and not self.table.tasks.get(array["id"]):
                out.append({"op": "finish", "id": array["id"], "time": rec["time"], "result": A.outcome(array)})
        if rec["op"] == "finish" and parent and job["id"] in parent.get("lent_to", []):
            out.append({"op": "unlend", "id": parent["id"], "child": job["id"], "time": rec["time"]})
        if rec["op"] == "finish" and job["id"] in self.table.dependants:
            out += D.followups(self.table, job, rec["time"])
        return out

    def recover(self, snapshot: dict | None, records: list[dict], now: float) -> Step:
        """The state on disk, replayed through the same apply(); the step names the finished jobs."""
        step = Step()
        if snapshot:
            self.table.restore(snapshot)
        self._commit(step, records, replay=True)
        self.unconfirmed = {i: 0.0 for i, job in self.table.jobs.items() if job["state"] == J.DISPATCHED}
        for node in self.table.nodes.values():  # a node that never comes back must still time out
            node.seen = now
        self.hearing = Hearing(now)
        self.leases.start(self.table.jobs.values(), now)
        return step

    def requests(self, specs, facts=None, log: list | None = None, trusted=True) -> list[dict]:
        """Validated submissions (a ValueError for the first bad one), through the policy rules (`facts`, `log`)."""
        J.require(isinstance(specs, (list, tuple)), "submit_many takes a list of job specs")
        s = self.settings
        requests = [J.validate_spec(spec, s["default_cpus"], s["default_memory"], s["default_priority"]) for spec in specs]
        group_of = functools.cache(self.group_of)  # (once a submission per user: a submit_many of 10,000 on LDAP)
        for req, spec in zip(requests, specs):  # the priority it asks (of a user: `trusted` not), the rules in order
            req["group"] = group_of(req["user"], req["gid"])  # (the master's name service: none claims a group)
            E.may_raise(None if trusted or spec.get("priority") is None else req["priority"], req, s)
            E.run_rules(s["rules"], req, spec, facts, log)
        self.table.learned.fill(requests, s)  # what the user did not give, from the runs of their program
        J.require(s["allow_root"] or all(req["uid"] for req in requests),
                  "jobs as root (uid 0) are refused on this cluster (allow_root: true in its config)")
        for req in requests if s["default_retries"] else ():
            req.setdefault("retries", s["default_retries"])
        return requests

    def on_submit(self, step: Step, requests: list[dict], refusal: str | None, now: float, history=None) -> None:
        """`history`: the finished jobs dependencies name, found by the master (grun.core.deps.resolve)."""
        J.require(not refusal or all(self.table.token_id(req["token"]) is not None for req in requests), refusal)
        for req in requests:  # a task `12.7`: the job it is (made one now if not started: before the ids below)
            for kind in (k for k in J.DEP_KINDS if k in req):
                req[kind] = [(self._lookup([ref], step, now)[1] or [{"id": ref}])[0]["id"] if task_ref(ref) else ref
                             for ref in req[kind]]
        ids, records, names, next_id = [], [], set(), self.table.next_id
        for req in requests:
            if (known := self.table.token_id(req["token"])) is not None:
                ids.append(known)  # a retried submission: the same job, not a second one
                continue
            self._admit(req, names)
            deps, never = D.resolve(req, self.table, self.recent, history or {}, self.settings)
            job = dict(req, id=next_id, state=J.WAITING if deps else J.QUEUED, submit_time=now, attempt=0, node=None,
                       **(A.parse(req["array"]) if req.get("array") else {}), **({"deps": deps} if deps else {}))
            held = job.pop("hold", None)
            records.append({"op": "submit", "job": job})
            if held:
                records.append({"op": "hold", "id": job["id"], "time": now})
            if never is not None:  # decided from history: it can never run
                records.append(D.cancel(job["id"], never, now))
            ids.append(job["id"])
            next_id += 1
        self._commit(step, records)
        self.leases.start((rec["job"] for rec in records if rec["op"] == "submit"), now)
        step.reply = ids

    def _admit(self, request: dict, batch_names: set) -> None:
        """Refuse (ValueError, one line) a name the user's jobs already hold, or a request no node or limit lets run."""
        name, why = request.get("name"), None if request.get("force") else refusal(request, self.table)
        if why and self.table.learned.unlearn(request, self.settings, why):  # no node has what its program used
            why = refusal(request, self.table)
        key = (request["user"], name)  # names are per user, as Slurm's (squeue -n, --dependency=singleton)
        if name and (key in self.table.names or key in batch_names):
            other = self.table.names.get(key)
            raise ValueError(f"a job named {name!r} already exists" + (f" (job {other})" if other else ""))
        if why:
            raise ValueError(f"{why}{set_by(request, why)} (--force queues it anyway)")
        batch_names.add(key)

    def _lookup(self, job_ids: list, step: Step, now: float, live=True) -> tuple[dict, list[dict]]:
        """{id: whether it is live} for the reply, and the live jobs (each once). A task `12.7` not started yet is made
        a job to act on (as Slurm splits it out), and (`live`) an array brings its live tasks."""
        found, jobs = {}, {}
        for raw in job_ids:
            key, job_id, new = self.table.named(raw)
            job = self._split(step, *new, now) if new is not None else self.table.jobs.get(job_id)
            found[key] = job is not None
            if job is not None:
                jobs[job["id"]] = job
                if live and A.is_array(job):
                    jobs.update((i, self.table.jobs[i]) for i in self.table.tasks.get(job["id"], {}).values())
        return found, list(jobs.values())

    def _split(self, step: Step, array_id: int, task: int, now: float) -> dict:
        """One task of an array made a job (its record committed), to dispatch or act on."""
        job_id = self.table.next_id
        self._commit(step, [{"op": "task", "id": array_id, "new": job_id, "task": task, "time": now}])
        return self.table.jobs[job_id]

    def on_kill(self, step: Step, job_ids: list, signal: int, force: bool, now: float, by: str | None = None) -> None:
        """Queued jobs end at once; running ones are signalled, and with force marked killed at once; `by`: who asked."""
        J.require(1 <= (signal := int(signal)) <= 64, f"bad signal number {signal}")
        found, jobs = self._lookup(job_ids, step, now)
        on_nodes, records, who = collections.defaultdict(list), [], {"killed_by": by} if by else {}
        for job in jobs:
            if A.is_array(job):  # its tasks not started end now; those started are in `jobs` too
                records.append({"op": "stop", "id": job["id"], "signal": signal, "time": now})
            elif job["state"] in (J.QUEUED, J.HELD, J.WAITING):  # it never ran: no exit status
                result = {**J.never_started(J.KILLED, signal, f"killed while {job['state']} (signal {signal})"), **who}
                records.append({"op": "finish", "id": job["id"], "time": now, "result": result})
            else:
                records.append({"op": "kill", "id": job["id"], "signal": signal, "time": now, **who})
                if force:
                    result = {"status": J.KILLED, "signal": signal, "exit_code": None, "error": "killed with --force", **who}
                    records.append({"op": "finish", "id": job["id"], "time": now, "result": result})
                on_nodes[job["node"]].append(job["id"])
        self._commit(step, records)
        step.do += [("kill", node, ids, signal) for node, ids in on_nodes.items()]
        if ids := [A.label(job) for job in jobs]:  # (QA: an admin's kill of others' jobs was said nowhere)
            step.log("info", f"job {', '.join(ids[:10])}{f' and {len(ids) - 10} more' * (len(ids) > 10)} killed"
                             f"{f' by {by}' * bool(by)} (signal {signal})")
        step.reply = found

    def on_control(self, step: Step, what: str, job_ids: list, now: float, pending_only: bool = False,
                   by: tuple = (None, True)) -> None:
        """hold: queued jobs are held, running ones suspended; resume: the other way round. `pending_only` (Slurm's and
        SGE's hold): running jobs run on, and an array's running tasks too (its tasks pending are held, split out or not).
        `by`: (who, whether root or an admin); an admin's hold is an admin's to release (as Slurm's and SGE's)."""
        here, op, there, method = {"hold": (J.QUEUED, "hold", J.RUNNING, "suspend"),
                                   "resume": (J.HELD, "release", J.SUSPENDED, "resume")}[what]
        found, jobs = self._lookup(job_ids, step, now)
        on_nodes, records, admin = collections.defaultdict(list), [], by[0] if by[1] and what == "hold" else None
        for job in jobs:
            if what == "resume" and job.get("held_by") and not by[1]:
                found[A.label(job)] = f"job {A.label(job)} was held by an admin ({job['held_by']}): only an admin can release it"
            elif job["state"] == here or (what, job["state"]) == ("hold", J.WAITING):
                records.append({"op": op, "id": job["id"], "time": now, **({"by": admin} if admin else {})})
            elif job["state"] == there and not A.is_array(job) and not pending_only:
                on_nodes[job["node"]].append(job["id"])
        self._commit(step, records)
        step.do += [("signal", node, method, ids, admin) for node, ids in on_nodes.items()]
        step.reply = found

    def on_signalled(self, step: Step, method: str, node: str, job_ids: list, now: float, by: str | None = None) -> None:
        """The node stopped (suspend) or continued (resume) these jobs (`by`: the admin who suspended them)."""
        self._commit(step, [{"op": method, "id": i, "time": now, **({"by": by} if by else {})} for i in job_ids
                            if self.table.jobs.get(i, {}).get("node") == node])

    def on_edit(self, step: Step, job_ids: list, changes: dict, now: float, history=None, judged=None) -> None:
        """Change queued, waiting or held jobs' requests, judged as at submit (grun.core.edits; `judged`: as the master
        judged them outside its lock), and what they wait for (`history` as for on_submit)."""
        found, jobs = self._lookup(job_ids, step, now, live=False)  # (an array: its tasks not started yet)
        parsed, records = J.parse_edit(changes), []
        kinds, force = {kind: parsed.pop(kind) for kind in J.DEP_KINDS if kind in parsed}, parsed.pop("force", False)
        for job in jobs:
            J.require(job["state"] in (J.QUEUED, J.HELD, J.WAITING),
                      f"job {A.label(job)} is {job['state']}: only queued, waiting or held jobs can be edited")
            try:
                new = self.table.learned.kept(job, E.written(job, parsed, self.settings, judged))
                why = None if force or not new else refusal(E.to_place(job, new, parsed), self.table)
                J.require(not why, why and f"{why}{set_by(new, why)} (add force=yes to edit it anyway)")
                if force and new:  # as a job forced at submit: later edits are judged by what they ask
                    new = {**new, "force": True}
                if kinds:
                    new = {**new, "deps": D.edited(job, kinds, self.table, self.recent, history or {}, self.settings)}
            except ValueError as exc:
                raise ValueError(f"job {A.label(job)}: {exc}") from None
            records.append({"op": "edit", "id": job["id"], "changes": new, "time": now})
        self._commit(step, records)
        step.reply = found

    def on_register(self, step: Step, info: dict, now: float, dead: str | None = None) -> None:
        """A node (re)joins with its jobs (those it lost: lost, see _reconcile); a Rival for its name is refused unless
        that node's address is `dead` (the master probed it: its daemon is gone)."""
        name, cpus, memory = str(info["name"]), float(info["cpus"]), int(info["memory"])
        running, finished = ([int(i) for i in info.get(key, [])] for key in ("running", "finished"))
        incarnation, seq = str(info.get("incarnation", "")), int(info.get("seq", 0))
        if (node := self.table.nodes.get(name)) and node.uri != dead and (why := node.rival(
                str(info["uri"]), incarnation, now, self.settings["node_timeout"])):
            raise Rival(why, node.uri)
        self.hearing.hear(now, step.log)
        rec = self.table.node_record(name, cpus, memory, info.get("resources"), info.get("labels"), info.get("heartbeat"))
        self._commit(step, [rec] if rec else [])
        node = self.table.nodes[name]  # (described by that record, or by an earlier one)
        if (timeout := node.timeout(self.settings["node_timeout"])) > self.settings["node_timeout"]:
            step.log("warning", f"node {name}: heartbeat {node.heartbeat:g} s, so down after {timeout:g} s unheard, "
                                f"not node_timeout")
        node.uri, node.incarnation, node.seen, node.up = str(info["uri"]), incarnation, now, True
        node.lost = node.stopped = False
        node.mounts, node.stage = reported(info.get("mounts")), str(info.get("stage", "auto"))
        in_flight = {i for i in node.jobs if (at := self.launched.get(i)) and at[0] == incarnation and at[1] > seq}
        step.reply = self._reconcile(step, node, now, running, finished, in_flight)
        step.log("info", f"node {name} registered ({cpus:g} cpus, {memory} MB, {len(running)} running, "
                         f"{len(finished)} finished)")
        step.kick = True
        step.durable = bool(step.records or step.reply["start"])  # (its node record, and the dispatches it offers)

    def on_heartbeat(self, step: Step, name: str, info: dict, now: float) -> None:
        """A node is alive. A node we declared down must register again (so its jobs are reconciled)."""
        node, step.durable = self.table.nodes.get(name), False
        self.hearing.hear(now, step.log)
        if node is None or not node.up:
            step.reply = {"known": False}
            return
        node.seen, node.grun_cpus = now, float(info.get("grun_cpus") or 0.0)
        node.outside_cpus = max(0.0, float(info.get("outside_cpus") or 0.0))
        node.outside_memory = max(0, int(info.get("outside_memory") or 0))
        node.spool_free, node.disk = info.get("spool_free"), disk_low(f"node {name}", info, self.settings)
        if "mounts" in info:  # sent when they changed
            node.mounts = reported(info["mounts"])
        for raw, usage in (info.get("usage") or {}).items():
            if self.table.jobs.get(int(raw), {}).get("node") == name:
                self.usage[int(raw)] = {k: usage[k] for k in USAGE_FIELDS if usage.get(k) is not None}
        step.reply = {"known": True, **self._reconcile(step, node, now, info.get("running", ()))}
        step.durable = bool(step.records)

    def _reconcile(self, step: Step, node, now: float, running, finished=None, in_flight=()) -> dict:
        """JobTable.reconcile, its records committed and logged; the reply's part: stale copies, the kills asked for
        its jobs (repeated until they end) and, registering (`finished`), the jobs it never got, offered again."""
        records, start, stale = self.table.reconcile(node.name, running, finished, now, in_flight, self.settings["requeue"])
        self._commit(step, records)
        still = {int(i) for i in running} if records else set()
        for rec in records:
            if rec["op"] == "reclaim":
                how = "still running" if rec["id"] in still else "ended there (its end comes next)"
                step.log("info", f"job {rec['id']}: node {node.name} came back with it {how}; it stays there")
            elif rec["op"] != "start":
                step.log("warning", f"job {rec['id']}: node {node.name} came back without it; {fate(rec)}")
        if stale:
            step.log("warning", f"node {node.name} holds stale copies of jobs {stale}: killing them")
        jobs, reply = self.table.jobs, {} if finished is None else {"start": [dict(j) for j in start]}
        kills = {str(i): int(jobs[i]["kill_requested"]) for i in node.jobs if J.asked_to_end(jobs[i])}
        return {**reply, "stale": stale, "kill": kills, **pace(len(self.table.nodes), self.settings)}

    def on_leave(self, step: Step, name: str, incarnation: str, now: float) -> None:
        """A node's daemon says it stops (NodeView.leave); the reply: whether that marked it down."""
        node, step.durable = self.table.nodes.get(name), False
        step.reply = node is not None and node.leave(str(incarnation))
        if step.reply:
            step.log("info", f"node {name} stopped: down, no new jobs go there until it registers again" + (
                f"; its jobs {sorted(node.jobs)} are {'re-queued' if self.settings['requeue'] else 'lost'} if it is "
                f"not back within {node.timeout(self.settings['node_timeout']):g} s (node_timeout)" if node.jobs else ""))

    def on_finished(self, step: Step, name: str, reports: list, now: float) -> None:
        """Completions from a node, each applied once; the reply acknowledges them all."""
        J.require(isinstance(reports, list) and all(isinstance(r, dict) for r in reports), "finished takes a list of reports")
        acked = [J.parse_job_id(rep.get("id")) for rep in reports]
        for job_id, rep in zip(acked, reports):
            result = {k: rep[k] for k in RESULT_KEYS if rep.get(k) is not None}
            rec = self.table.finish_record(job_id, result, now, node=name, attempt=rep.get("attempt"))
            job = self.table.jobs.get(job_id)
            if rec and rep.get("cwd_missing") and (again := self.table.elsewhere_record(job, name, rep["error"], now)):
                rec = again
                step.log("warning", f"job {job_id}: {rep['error']}; it runs again elsewhere")
            if rec is not None and rep.get("lost"):  # its host rebooted under the job: as a lost node, for this job
                rec = self._lose(step, job, now, f"node {name}: {rep.get('error') or 'job lost'}")
            if rec is not None:
                self._commit(step, [rec])
            elif late := late_end(self.recent.get(job_id) or self.lost_ended.get(job_id), name, rep, result, now):
                self._commit(step, [{"op": "late", "id": job_id, "job": late, "time": now}])
                step.log("warning", f"job {job_id}: {late['error']}")
            elif (cur := job or self.recent.get(job_id)) and (name, rep.get("attempt", cur["attempt"])) != (
                    cur["node"], cur["attempt"]):  # superseded (a repeated report is not)
                by = f"run {cur['attempt']} on {cur['node']}" if cur["node"] else f"a re-queue (now {cur['state']})"
                step.log("warning", f"job {job_id}: node {name} ended run {rep.get('attempt')} ({J.describe_exit(result)})"
                         f", superseded by {by}: not counted")  # (not in history)
        step.reply = acked

    def _lose(self, step: Step, job: dict, now: float, why: str) -> dict:
        rec = self.table.lost_record(job, now, why, self.settings["requeue"])
        step.log("warning", f"job {job['id']}: {why}; {fate(rec)}")
        return rec

    def on_started(self, step: Step, name: str, reply: dict, now: float) -> None:
        """A node's reply to an offer: the starts it confirms are recorded, the jobs it refused end."""
        launch, records = (str(reply.get("incarnation", "")), int(reply.get("seq", 0))), []
        for raw, pid in reply.get("started", {}).items():
            job = self.table.jobs.get(int(raw))
            if job is None or job.get("node") != name or job["state"] != J.DISPATCHED:
                continue  # confirmed before, or finished or moved meanwhile (then stale at its next beat)
            self.launched[job["id"]] = launch  # (and _commit drops it from unconfirmed: it runs)
            records.append({"op": "start", "id": job["id"], "node": name, "pid": pid, "time": now})
        for raw, error in reply.get("rejected", {}).items():
            records.append(self.table.finish_record(int(raw), {"exit_code": 127, "error": str(error)}, now, node=name))
        self._commit(step, [r for r in records if r is not None])
        step.durable = any(i[0] == "finished" for i in step.do)  # a start need not wait for the disk

    def on_schedule(self, step: Step, now: float) -> None:
        """Dispatch every queued job that fits now, reserve nodes for those past reserve_after, and offer again
        the jobs whose start was never confirmed (node.start is idempotent: a second offer runs nothing twice)."""
        offers = collections.defaultdict(list)  # (offer or reoffer, node) -> jobs
        # after a node is described anew or the limits change (NodeIndex.remembered; a new caps), once: learn.unlearned
        self.table.nodes.remembered(("unlearn", self.table.quotas.caps), lambda: self._commit(
            step, L.unlearned(self.table, self.settings, now)))
        if len(self.table.pending):
            plan = place(iter(self.table.pending), self.table.nodes, self.rng, now=now,
                         reserve_after=self.settings["reserve_after"], claims=self.table.claims(now),
                         room=self.table.room, quotas=self.table.quotas if self.settings["limits"] else None)
            records, dispatched = [], []
            for (job, node), devices in zip(plan.placed, plan.devices):
                node.take(job, -1, devices)  # place() counted the job on the view; apply() must not count it twice
                if A.is_array(job):  # one of its tasks becomes a job, and that one is dispatched
                    job = self._split(step, job["id"], A.next_task(job), now)
                dispatched.append(job)
                records.append({"op": "dispatch", "id": job["id"], "node": node.name, "time": now,
                                **({"devices": devices} if devices else {})})
            placed = {job["id"] for job, _ in plan.placed}
            records += [{"op": "reserve", "id": job["id"], "node": node.name, "time": now}
                        for job, node in plan.reserve if job["id"] not in placed]
            self._commit(step, records)
            step.kick = plan.more
            for job in dispatched:  # (no longer in unconfirmed since it was last queued)
                self.unconfirmed[job["id"]] = now
                offers["offer", job["node"]].append(dict(job))
        due = itertools.takewhile(lambda i: self.unconfirmed[i] < now - START_RETRY_SECS, self.unconfirmed)
        for job_id in list(due):
            del self.unconfirmed[job_id]
            if (job := self.table.jobs.get(job_id)) is not None and job["state"] == J.DISPATCHED:
                self.unconfirmed[job_id] = now  # to the end: offered last
                if getattr(self.table.nodes.get(job["node"]), "up", False):  # (a stopped node: when it registers)
                    offers["reoffer", job["node"]].append(dict(job))
        step.do += [(kind, node, jobs) for (kind, node), jobs in offers.items()]
        step.durable = bool(step.do)  # a job is on disk as dispatched before any node can run it

    def on_sweep(self, step: Step, now: float, stood: float = 0.0) -> None:
        """Due retries queued; a node silent past its timeout down, its jobs lost; one down long and idle forgotten; the
        jobs whose lease ran out ended (grun.core.leases)."""
        records = [{"op": "ready", "id": i, "time": now} for i, at in self.table.delayed.items() if at <= now]
        deaf = self.hearing.deaf(self.table.nodes, now, self.settings["node_timeout"], step.log, stood)
        for node in list(self.table.nodes.values()):
            silent = self.hearing.silent(node, now)
            if not node.lost and (not deaf or node.name in self.hearing.gone) and silent > node.timeout(
                    self.settings["node_timeout"]):
                if node.up:
                    step.log("warning", f"node {node.name} silent for {silent:.0f} s: marked down, no new jobs go there")
                node.up, node.lost = False, True  # (its jobs are dealt with once, here)
                reason = f"node {node.name} lost (silent for {silent:.0f} s)"
                records += [self._lose(step, job, now, reason) for job in self.table.jobs_on(node.name)]
            elif node.lost and silent > NODE_FORGET_SECS and not node.jobs:
                records.append({"op": "forget", "name": node.name})
                step.do.append(("forget", node.name))
                step.log("info", f"node {node.name} down for {silent / 3600:.0f} h and holding no job: forgotten")
        expired, kills = self.leases.expire(self.table, now)
        step.do += kills
        self._commit(step, records + expired)
        step.durable = bool(step.records)

    def on_renew(self, step: Step, job_ids: list, now: float) -> None:
        step.durable, step.reply = False, self.leases.renew(self.table, job_ids, now)

    def view(self, job: dict) -> dict:
        """A job as queries show it: no environment; what it waits for as people name it; its node's last sample and URI."""
        out = J.public_view(job)
        if job.get("deps"):
            out["deps"] = D.named(job["deps"], lambda i: self.table.jobs.get(i) or self.recent.get(i))
        if (usage := self.usage.get(job["id"])) is not None:
            out["usage_now"] = usage
        if (node := self.table.nodes.get(job.get("node") or "")) is not None:
            out["node_uri"] = node.uri
        return out
