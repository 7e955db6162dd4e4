"""The master actor (`grun.master`): the lock, the journal and the node calls around the pure core
(`grun.core.master_state`), which owns the job and node tables and every decision.

Every request takes one path, `_do`: under the lock the core turns the event into records (applied) and instructions,
the records are journaled and ended jobs go to history (written once the journal has their end); then, unlocked, the
caller waits for the group commit when its answer needs the records on disk (invariant 1), the waiters of the jobs
touched are woken, and `_execute` makes the node calls, each with a timeout (invariant 4). On a full journal disk
(grun.journal.DiskFull) the master stays up: changes to jobs are refused, the rest waits in memory for room.
Its read-only answers (job, jobs, nodes, history, status, the waits) are grun.actors.master_queries'.
"""

import collections
import contextlib
import grp
import logging
import os
import pwd
import stat
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import Pyro5.api

from .. import auth, registry
from ..background import Loop
from ..core import edits as E
from ..core import jobs as J
from ..core.master_state import START_RETRY_SECS, MasterState, Rival, Step
from ..core.rules import SCRIPT_BYTES
from ..journal import DiskFull
from ..plugins import Plugins
from ..store import Store, StoreError
from ..values import task_ref
from .master_queries import Queries
from .monitor import this_process

log = logging.getLogger("grun.master")

SNAPSHOT_EVERY_RECORDS = 20000
SNAPSHOT_EVERY_SECS = 60.0
PASS_GAP_SECS = 0.01       # at most one scheduling pass per this long
PROBE_SECS = 5.0  # hearing no node, each silent node's daemon port is tried this often (_probe)

# Raised to callers while the master shuts down: a builtin, which Pyro5 clients rebuild and retry.
Restarting = ConnectionRefusedError
FROM_NODES = frozenset({"register", "heartbeat", "finished", "started"})  # told to try again on a full disk, as by a restart


def _group_names(user: str, gid: int, primary: bool = False) -> list[str]:
    """A submitter's groups by name (`primary`: that one): their passwd's, not `sg`'s gid's, as the account database
    says now (`usermod -g`: no restart); of a user or group unknown here, the gid given's name (or number)."""
    try:
        gids = [pwd.getpwnam(user).pw_gid] if primary else auth.account(user, gid)[1]
        return [grp.getgrgid(g).gr_name for g in gids]
    except (KeyError, ValueError, OverflowError):  # (ValueError: a NUL in the name)
        with contextlib.suppress(KeyError, OverflowError):
            return [grp.getgrgid(gid).gr_name]
        return [str(gid)]


class RuleFacts:
    """What policy rules read outside a request (grun.core.rules.Job), once per submission: a file's first bytes and
    size when the job's user could read it (never a FIFO or a device), a user's groups; else None."""

    def __init__(self):
        self._seen: dict = {}

    def _once(self, compute, *args):
        if (key := (compute, *args)) not in self._seen:
            try:
                self._seen[key] = compute(*args)
            except (OSError, KeyError):  # (anything else raises each time: the rules reading it are skipped)
                self._seen[key] = None
        return self._seen[key]

    @staticmethod
    def _stat(path: str, uid: int, gid: int):
        st = os.stat(path)
        bits = 0o400 if st.st_uid == uid else 0o040 if st.st_gid == gid else 0o004
        return st if stat.S_ISREG(st.st_mode) and (uid == 0 or st.st_mode & bits) else None

    @staticmethod
    def _head(path: str, uid: int, gid: int) -> bytes | None:
        if RuleFacts._stat(path, uid, gid) is not None:
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                return f.read(SCRIPT_BYTES)

    head = lambda self, *args: self._once(RuleFacts._head, *args)
    size = lambda self, *args: getattr(self._once(RuleFacts._stat, *args), "st_size", None)
    groups = lambda self, *args: self._once(_group_names, *args)


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Master(Queries):
    def __init__(self, state_dir: str, plugins: Plugins | None = None, **settings):
        """`settings`: grun.core.master_state.SETTINGS' keys (the config's queue keys)."""
        self.core, self.plugins, self.node_plugins = MasterState(**settings), plugins or Plugins(), {}
        self.core.group_of = lambda user, gid: _group_names(user, gid, primary=True)[0]
        self.lock, self.failed, self._closing = threading.Lock(), threading.Event(), False  # (failed: the journal broke)
        self.store, self.links = Store(state_dir), {}  # links: node -> a proxy to its address now, and the lock of that
        self.watchers: dict[int, set[threading.Event]] = {}  # job id -> events of its waiters
        # 16: with 64, start calls in a 10,000-node dispatch took the GIL from registrations (52 s for all, not 17)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="grun-node-call")
        self._outbox_lock, self._outbox = threading.Lock(), {}  # node -> jobs for its next start call (one on the way)
        self._kept: collections.deque[tuple[int, Step]] = collections.deque()  # (last seq, step) met a full disk
        self._scheduler = Loop("grun-scheduler", self._schedule, START_RETRY_SECS, log, gap=PASS_GAP_SECS)
        self._prober = Loop("grun-probe", self._probe, None, log, gap=PROBE_SECS)  # (only when housekeeping wakes it)
        self._loops = (self._scheduler, Loop("grun-housekeeping", self._housekeeping, 1.0, log), self._prober)
        snapshot, records = self.store.load()
        recovered = self.core.recover(snapshot, records, time.time())
        self._to_history(recovered)
        self._execute(recovered)
        log.info("recovered %d live jobs (%d journal records replayed)", len(self.core.table.jobs), len(records))
        self.records_since_snapshot, self.last_snapshot, self._looked = len(records), time.monotonic(), time.time()
        self._rivals: set = set()  # the (name, uri) of the rival daemons refused (logged once)
        for loop in self._loops:
            loop.start()

    def _do(self, event: str, *args, **kwargs):
        step, now, woken = Step(), time.time(), []  # (when it arrived: a heartbeat that waits for the lock counts from then)
        try:
            with self.lock:
                if self.failed.is_set() or self._closing:  # memory may hold what the disk does not
                    raise Restarting("the grun master is restarting")
                try:
                    self.core.handle(event, *args, now, step=step, **kwargs)
                finally:  # what was applied is journaled, even when the event then failed (no records: the last seq)
                    seq = self._journal(self.store.journal.append, step.records) if step.records or step.durable else 0
                    self._to_history(step)  # under the lock: a job that leaves the live table is never missing from both
                    self.records_since_snapshot += len(step.records)
                    woken = [e for r in step.records if self.watchers
                             for e in self.watchers.pop(r["job"]["id"] if r["op"] == "submit" else r.get("id"), ())]
            if seq and step.durable:
                try:
                    self._journal(self.store.journal.wait, seq)
                except DiskFull as exc:
                    raise self._not_written(event, step, seq, exc) from None
                if self.failed.is_set():
                    raise Restarting("the grun master's journal failed; it is restarting")
            self._execute(step)  # first: plugins hear of an end before its waiters
        except BaseException:
            if woken and seq:  # an event that failed midway: its waiters read its records once they are on disk
                with contextlib.suppress(StoreError, DiskFull):
                    self.store.journal.wait(seq)
            raise
        finally:  # every waiter popped is woken, even when the event failed (it looks again, and waits again)
            for waiter in woken:
                waiter.set()
        return step.reply

    def _not_written(self, event: str, step: Step, seq: int, exc: DiskFull) -> Exception:
        """The error for a request whose records the disk had no room for. They stay applied and are written once there
        is room: so a submission's jobs are killed now (never to run); any other step's instructions run then."""
        if new := [r["job"]["id"] for r in step.records if r["op"] == "submit"]:  # (not a retried submission's)
            with contextlib.suppress(ValueError):  # (the kill's own records wait for room too)
                self._do("kill", new, 15, True)
            log.error("job %s not accepted, and killed: the disk had no room for it", ", ".join(map(str, new)))
            return ValueError(f"master's disk is full: {exc}: not accepting new jobs")
        if step.records:  # (a retry makes no second one: the records are applied; one without records is remade)
            # its offers go (one may be stale by then): the core offers them again until confirmed (unconfirmed)
            step.do = [i for i in step.do if i[0] not in ("offer", "reoffer")]
            self._kept.append((seq, step))
        if event in FROM_NODES:  # a node tries again, as when the master restarts
            return Restarting(f"the grun master's disk is full: {exc}")
        return ValueError(f"master's disk is full: {exc}: done in memory, on disk once there is room")

    def _journal(self, call, *args):
        """A call to the journal; when it fails (records applied but maybe not on disk), only a restart is safe."""
        try:
            return call(*args)
        except StoreError as exc:
            if not self.failed.is_set():
                log.critical("journal failed (%s): the master stops and must be restarted", exc)
                self.failed.set()
            raise Restarting(f"the grun master's journal failed: {exc}") from None

    def _to_history(self, step: Step) -> None:
        for kind in ("finished", "history"):  # ("history": a record there taken anew, a lost job's late end)
            if jobs := [args[0] for done, *args in step.do if done == kind]:
                self.store.add_history(jobs, replace=kind == "history")

    def _execute(self, step: Step) -> None:
        failed = []
        for kind, *args in step.do:
            if kind in ("offer", "reoffer"):
                self._offer(*args, again=kind == "reoffer")
            elif kind == "kill":  # not waited for: heartbeat replies repeat it until the job ends
                self._pool.submit(self._call_node, args[0], "kill", args[1], args[2])
            elif kind == "signal":
                failed += [(args[1], i) for i in self._signal(*args)]
            elif kind == "forget":
                self.links.pop(args[0], None)
            elif kind == "log":
                getattr(log, args[0])(args[1])
        self.plugins.finished([args[0] for kind, *args in step.do if kind == "finished"])
        if step.kick:
            self._scheduler.wake()
        if failed:
            raise ValueError(f"could not {'suspend' if failed[0][0] == 'suspend' else 'continue'} job "
                             f"{', '.join(str(i) for _, i in failed)}: its node did not answer")

    def _call_node(self, name: str, method: str, *args):
        """The node's reply, or None (the call failed: logged). Its proxy, to its address now, serves one caller at a time."""
        if (uri := getattr(self.core.table.nodes.get(name), "uri", None)) is None:
            return None
        if getattr(link := self.links.get(name), "uri", None) != uri:  # (new, or its daemon came back elsewhere)
            link = self.links[name] = types.SimpleNamespace(uri=uri, lock=threading.Lock(), proxy=registry.proxy(uri))
        with link.lock:
            try:
                return getattr(link.proxy, method)(*args)
            except Exception as exc:
                log.warning("node %s: %s failed: %s", name, method, exc)
                return None

    def _signal(self, node: str, method: str, ids: list[int], by=None) -> list[int]:
        """SIGSTOP/SIGCONT on the node, then record what was done (`by`: the admin who did). Returns the ids of a node
        that did not answer (one that says a job is not running there: it has just ended, its end is on the way)."""
        if (reply := self._call_node(node, method, ids)) is None:
            return ids
        if done := [i for i in ids if reply.get(str(i)) is not False]:
            self._do("signalled", method, node, done, by=by)
        return []

    def _offer(self, name: str, jobs: list[dict], again: bool = False) -> None:
        """Queue jobs for their node's `start`, one call in flight per node (what piles up meanwhile goes in its next
        call); an offer made again is dropped while a call to the node is queued or in flight: its reply decides."""
        with self._outbox_lock:
            if name not in self._outbox:
                self._pool.submit(self._drain_outbox, name)
            elif again:
                return
            self._outbox.setdefault(name, {}).update((job["id"], job) for job in jobs)

    def _drain_outbox(self, name: str) -> None:
        while True:
            with self._outbox_lock:
                batch, self._outbox[name] = self._outbox[name], {}
                if not batch or self._closing:
                    del self._outbox[name]
                    return
            for job in batch.values() if self.plugins.hooks["on_dispatch"] else ():
                self.plugins.notify("on_dispatch", job, {"name": name})
            admins = sorted(self.core.settings["admins"])  # (the node's for the job, and its view of the master's now)
            reply = self._call_node(name, "start", [dict(job, admins=admins) for job in batch.values()])
            try:
                if reply is not None:  # else the jobs stay dispatched and are offered again later
                    self._do("started", name, reply)
            except Restarting:
                pass  # (the node's registration with the next master reconciles these starts)
            except Exception:
                log.exception("starting jobs on %s failed; they are offered again later", name)

    def _schedule(self) -> None:
        if not (self._closing or self.store.journal.full):  # (no dispatch is made durable while the disk is full)
            self._do("schedule")

    def _housekeeping(self) -> None:
        if self._closing:
            return
        self._run_kept()
        stood, self._looked = time.time() - self._looked, time.time()  # (a long gap: it stood still, nodes.Hearing)
        if self.store.journal.full:
            return
        self._do("sweep", stood=stood)
        if self.core.hearing.said:  # (it hears no node)
            self._prober.wake()
        # a snapshot costs O(live jobs): one per max(20,000, live jobs) records, flat per record (every 20,000 with
        # 100,000 queued was 16 % of the master's CPU while 10,000 nodes drained the queue)
        if self.records_since_snapshot >= max(SNAPSHOT_EVERY_RECORDS, len(self.core.table.jobs)) or (
                self.records_since_snapshot and time.monotonic() - self.last_snapshot > SNAPSHOT_EVERY_SECS):
            self._snapshot()

    def _probe(self) -> None:
        """Hearing no node (core.nodes.Hearing), one whose daemon's port is refused is lost as usual (QA: all daemons killed,
        none was); a silent host may be the master's own cut-off. Unlocked; once the master stops, the rest is skipped."""
        with self.lock:
            uris = {n.name: n.uri for n in self.core.table.nodes.values() if n.up and n.uri} if self.core.hearing.said else {}
        refused = lambda uri: not self._prober.stopping.is_set() and registry.refused(uri)
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="grun-probe") as pool:  # (not the node calls')
            gone = {name for name, no in zip(uris, pool.map(refused, uris.values())) if no}
        with self.lock:
            self.core.hearing.gone = gone if self.core.hearing.said else set()

    def _run_kept(self) -> None:
        """The instructions of the steps kept while the disk was full, in order, each once its records are on disk."""
        while self._kept:
            seq, step = self._kept[0]
            try:
                self._journal(self.store.journal.wait, seq)
            except (DiskFull, Restarting):  # still no room (next round), or the journal failed: the master stops
                return
            self._kept.popleft()  # (only this thread takes them)
            try:
                self._execute(step)
            except Exception as exc:  # (a suspend or continue whose node did not answer: its caller is gone)
                log.warning("%s", exc)

    def _snapshot(self) -> None:
        with self.lock:
            ticket, state = self.store.journal.rotate(), self.core.table.snapshot()
            self.records_since_snapshot, self.last_snapshot = 0, time.monotonic()
        self.store.write_snapshot(ticket, state)

    def ping(self) -> str:
        return "grun.master"

    def submit(self, spec: dict) -> int:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list) -> list[int]:
        """Queue jobs; returns their ids only once they are on disk (invariant 1)."""
        return self.submit_jobs(specs)["ids"]

    def submit_jobs(self, specs: list) -> dict:
        """submit_many, with "warnings": [[id, text], ...] (a rule's warn:, ...) if any. A user's credential (grun.auth)
        says who they run as; a full disk refuses it (store.refusal), but not a retried one queued."""
        if isinstance(who := auth.caller(), dict) and isinstance(specs, (list, tuple)):  # (Pyro5 keeps tuples)
            specs = [J.as_submitter(spec, who) for spec in specs]
        requests = self._policy(self.core.requests, specs, trusted=who is auth.CLUSTER)
        for req in requests if isinstance(who, dict) else ():
            J.lent_only_inside(req, who)
        self.plugins.submit(requests)  # (outside the lock; a plugin's Reject is a ValueError)
        ids = self._do("submit", requests, self.store.refusal(self.core.settings["min_free_disk"]),
                       history=self._finished(requests))
        warned = [[i, text] for i, req in zip(ids, requests) for text in req.get("warnings", ())]
        if warned:  # (one line however many jobs)
            log.info("warned %s about job %s%s: %s", requests[0]["user"], warned[0][0], f" and {len(warned) - 1} more"
                     if len(warned) > 1 else "", "; ".join(dict.fromkeys(text for _, text in warned)))
        return {"ids": ids, **({"warnings": warned} if warned else {})}

    @staticmethod
    def _policy(judge, *args, **kwargs):
        """judge(*args, facts, notes, **kwargs): what policy rules read (RuleFacts); their lines logged."""
        notes: list[tuple[str, str, list]] = []
        try:
            return judge(*args, RuleFacts(), notes, **kwargs)
        finally:
            cmds = collections.defaultdict(list)  # (a line once per submission, however many jobs it holds: which
            for level, text, cmd in notes:        # job, by the first one's command, and how many more)
                cmds[level, text].append(" ".join(cmd)[:80])
            for (level, text), named in cmds.items():
                getattr(log, level)(f"{text} (command {named[0]!r}{f', and {len(named) - 1} more' * (len(named) > 1)})")

    def _finished(self, requests: list[dict]) -> dict:
        """The finished jobs the requests' dependencies name that are neither live nor recent, from history."""
        found, live, recent = {}, self.core.table.jobs, self.core.recent
        for req in requests:
            for ref in (ref for kind in J.DEP_KINDS for ref in req.get(kind) or ()):
                if isinstance(ref, int) and ref not in live and ref not in recent:
                    found[ref] = self.store.find_history(ref)
                elif isinstance(ref, str) and task_ref(ref):
                    with contextlib.suppress(LookupError):
                        task = self.job(ref)
                        found[(req["user"], ref)] = task if "task" in task and task["state"] in J.FINAL_STATES else None
                elif isinstance(ref, str):  # (a live job of that name may be another user's)
                    found[(req["user"], ref)] = self.store.find_name(req["user"], ref)
        return {key: job for key, job in found.items() if job is not None}

    def kill(self, job_ids: list, signal: int = 15, force: bool = False) -> dict:
        """Kill queued or running jobs; returns {id: found (another user's: why not)}. With force a running job is marked
        killed at once, even if its node cannot be reached (it is still signalled if it can)."""
        return self._may_change(job_ids, "kill", lambda ids: self._do("kill", ids, signal, force, by=self._by()[0]))

    def hold(self, job_ids: list, pending_only: bool = False) -> dict:
        """Hold queued jobs; suspend running ones (SIGSTOP to their sessions, cpus released) unless `pending_only`."""
        return self._may_change(job_ids, "hold", lambda ids: self._do("control", "hold", ids,
                                                                     pending_only=bool(pending_only), by=self._by()))

    def resume(self, job_ids: list) -> dict:
        """Release held jobs; continue suspended ones (SIGCONT, cpus taken back); those an admin held: an admin's only."""
        return self._may_change(job_ids, "resume", lambda ids: self._do("control", "resume", ids, by=self._by()))

    def _by(self) -> tuple:
        """Who calls: (user, whether root or an admin); a holder of the secret: root's; without auth (its claim, True)."""
        who = auth.caller()
        return (who["user"] if isinstance(who, dict) else "root" if who else auth.claimed(),
                not auth.confined(self.core.settings["admins"]))

    def edit(self, job_ids: list, changes: dict) -> dict:
        def act(ids):
            refs = {k: J.job_refs(v) for k, v in (changes.items() if isinstance(changes, dict) else ()) if k in J.DEP_KINDS}
            users = {job["user"] for i in ids if (job := self.core.table.jobs.get(J.job_number(i)))}
            found = self._do("edit", ids, changes, history=self._finished([{"user": u, **refs} for u in users]),
                             judged=(judged := self._judged(ids, changes)))
            return {**found, **({"warnings": said} if (said := E.told(judged)) else {})}  # (a rule's warn:, ...)
        return self._may_change(job_ids, "edit", act)

    def _judged(self, job_ids, changes) -> dict:
        """An edit judged as a submission is, outside the lock (grun.core.edits, the plugins' on_submit): {job id (a
        task not begun: its array's): (its fields then, its request)}; the core refuses a job edited meanwhile."""
        parsed = {k: v for k, v in J.parse_edit(changes).items() if k not in ("force", *J.DEP_KINDS)}
        jobs, judged = {}, {}
        with self.lock:  # (copies: the rules and plugins run without it)
            for raw in job_ids if parsed and isinstance(job_ids, (list, tuple)) else ():
                _, job_id, new = self.core.table.named(raw)  # (a task not begun: its array)
                job = self.core.table.jobs.get(new[0] if new else job_id)
                if job and job["state"] in (J.QUEUED, J.HELD, J.WAITING):
                    jobs[job["id"]] = E.fields(job), dict(job)
        who = who if isinstance(who := auth.caller(), dict) else None  # (a user; the cluster's, or no auth: trusted)
        for i, (was, job) in jobs.items():
            try:
                judged[i] = was, self._policy(E.edited, job, parsed, self.core.settings, who=who)
            except ValueError as exc:
                raise ValueError(f"job {i}: {exc}") from None
        self.plugins.submit([req for _, req in judged.values()])
        return judged

    def renew(self, job_ids: list) -> dict:
        """Renew the leases of these jobs (grun.core.leases), on a full disk too: {id: renewed (live, with a lease)}."""
        return self._may_change(job_ids, "renew the lease of", lambda ids: self._do("renew", ids), writes=False)

    def _may_change(self, job_ids, what: str, act, writes: bool = True) -> dict:
        """act(the ids a user may act on): their own; root, admins and daemons: all; nobody on a full disk if it
        `writes`. With the others' answers: {id: False} for those private_queries hides (as an unknown id), {id: why}
        for another user's (refused each on its own, as Slurm's and SGE's: the rest are acted on)."""
        if writes and (full := self.store.full()):
            raise ValueError(full)
        if not isinstance(auth.caller(), dict):
            return act(job_ids)
        if not isinstance(job_ids, (list, tuple)):  # (the core would take a dict's keys or a string's digits unchecked)
            raise ValueError("job ids: a list")
        with self.lock:
            jobs = [self.core.table.jobs.get(i) or self.core.recent.get(i) for i in map(J.job_number, job_ids)]
        mine, hidden, only = [], {}, self._only()
        for i, job in zip(job_ids, jobs):
            if job is None or only is not None and job["uid"] != only:
                hidden[str(i)] = False  # (unknown now, it is not acted on: a job that takes its id meanwhile is not theirs)
                continue
            try:
                auth.require(f"{what} job {job['id']}, which is {job['user']}'s", job["uid"], self.core.settings["admins"])
                mine.append(i)
            except ValueError as exc:
                hidden[str(i)] = str(exc)
        return {**act(mine), **hidden}

    def register_node(self, info: dict) -> dict:
        """A node (re)joins; a daemon taking a live node's name from elsewhere is refused (Rival), unless that one's gone."""
        auth.require("register a node")
        plugins, dead = [str(p) for p in info.pop("plugins", None) or ()], None
        while True:
            try:
                reply = self._do("register", info, dead=dead)  # (its node record is on disk before the reply)
                self.node_plugins[str(info["name"])] = plugins
                return {**reply, "master": this_process()}  # (on the node's host, the master's cpu is grun's)
            except Rival as exc:
                if registry.refused(dead := exc.uri):  # (probed unlocked; then the core judges again, knowing it)
                    continue
                if (key := (str(info["name"]), str(info["uri"]))) not in self._rivals:  # (said once; bounded)
                    self._rivals = {*self._rivals, key} if len(self._rivals) < 1000 else {key}
                    log.error("%s", exc)
                raise ValueError(f"not authorized: {exc}") from None  # (its node says it once, as of a wrong secret)

    def heartbeat(self, name: str, info: dict) -> dict:
        auth.require("speak for a node")
        return self._do("heartbeat", str(name), info)

    def node_leaving(self, name: str, incarnation: str) -> bool:
        """A node's daemon stops cleanly: it takes no new jobs until it registers again; its jobs stay its own."""
        auth.require("speak for a node")
        return self._do("leave", str(name), str(incarnation))

    def finished(self, name: str, reports: list) -> list:
        auth.require("report job ends")
        return self._do("finished", str(name), reports)

    def reconfigure(self, **changes) -> dict:
        auth.require("reconfigure the master")
        with self.lock:
            changed, table = self.core.configure(**changes), self.core.table
            for warning in table.quotas.unoffered(table.nodes.values()) if "limits" in changed else ():
                log.warning("reload: %s", warning)  # (and in `grun -q status` until it is fixed)
            return changed

    def begin_shutdown(self) -> None:
        """From now on nothing changes state; callers get Restarting, which clients retry."""
        auth.require("stop the master")
        with self.lock:
            self._closing = True
        for loop in self._loops:
            loop.stop()

    def shutdown(self) -> None:
        auth.require("stop the master")
        self.begin_shutdown()
        for loop in self._loops:
            loop.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            if not (self.failed.is_set() or self.store.journal.full):
                self._snapshot()
        except (StoreError, OSError, DiskFull) as exc:
            log.error("no snapshot at shutdown (%s); the journal has everything", exc)
        finally:  # (whatever a snapshot raised: the journal's last commit and the history flush)
            try:
                self.store.close()
            except (StoreError, OSError) as exc:  # e.g. history not flushed to a full disk: in the journal
                log.error("closing the store: %s", exc)
