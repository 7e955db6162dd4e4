"""The node actor (`grun.node.<hostname>`) and its conversation with the master: registration (with the jobs it
holds, for the master to reconcile), heartbeats, completion reports until acknowledged, the master's orders, a
reloaded config. Its mixin grun.actors.node_jobs keeps its jobs, each an object `grun.job.<id>` of its Pyro5 daemon
(not a name-server entry: that cost a registration and a removal per job)."""

import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time

import psutil
import Pyro5.api

from .. import auth, limits, mounts, registry, spawner, spool, stage
from ..background import Loop
from ..config import KEYS
from ..core.jobs import ENDING_SIGNALS
from ..plugins import Plugins
from ..spool import make_dir, spool_space, sweep
from ..stream_server import StreamServer
from .monitor import SAMPLE_SECS, Monitor
from .node_jobs import LiveJob, NodeJobs

log = logging.getLogger("grun.node")

REPORT_BATCH = 500
JANITOR_SECS = 10.0
LEAVE_SECS = 2.0  # how long a stopping node waits to tell the master (grun -d -k waits 15 s before KILL)
UNREACHABLE_LOG_SECS = 60.0  # how often a node that cannot reach its master says so
REREGISTER = {"cpus", "memory", "resources", "labels", "stage", "heartbeat"}  # the reloaded keys the master places by


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Node(NodeJobs):
    def __init__(self, name: str, spool: str, *, master_host: str, master_port: int, bind: str, advertise: str,
                 plugins: Plugins | None = None, **settings):
        """`settings`: the other exec keys of grun.config.KEYS, parsed (the daemon passes them all), as attributes of
        their names (cpus, memory, heartbeat, hard_factor, ulimit, kill_grace, stage, ...)."""
        vars(self).update(settings)
        self.plugins = plugins or Plugins()
        self.found = self.plugins.node_resources()  # what plugins offer besides resources and labels
        self.name, self.master_host, self.master_port, self.advertise = name, master_host, master_port, advertise
        self.mounts = mounts.network(mounts.table())  # (told the master when they change)
        self.monitor = Monitor()
        # Launches are numbered within this process's life (its incarnation), so the master can tell a job list
        # made before a start it saw confirmed from one that really lacks the job.
        self.incarnation, self.launch_seq = secrets.token_hex(8), 0
        self._stop = threading.Event()
        make_dir(spool, 0o755)  # (whatever our umask: the jobs reach their TMPDIR through it)
        self._init_jobs(spool)
        # the master conversation, kept by its loop's thread alone
        self._master = None
        self._registered = self._reregister = self._name_pending = self._told_refused = False
        self._next_beat = self._last_call = self._retry_at = 0.0
        self._unreachable_told = -math.inf  # when we last logged that the master cannot be reached
        self._linger: float | None = None  # None: keep the connection; else close it after this long idle
        self.admins: frozenset | None = None  # the master's, as its last reply said (None: not heard yet)
        self.daemon = registry.start_daemon(bind, advertise)
        self.uri = str(self.daemon.register(self, registry.node_name(name)))
        self.stream = StreamServer(bind)
        self._credentials = auth.serve_credentials(log, lambda: {  # (a root node with a secret: users' `grun`)
            pid: live.id for live in list(self.live.values()) if live.status is None and (pid := self._job_pid(live))})
        self._loops = [Loop("grun-node-notify", self._on_ping, 0.0, log, self._stop),
                       Loop("grun-node-master", self._talk_to_master,
                            lambda: min(1.0, self.heartbeat, 1.0 if self._linger is None else self._linger), log, self._stop),
                       Loop("grun-node-janitor", self._tidy, lambda: min(JANITOR_SECS, max(0.5, self.output_keep / 4)),
                            log, self._stop),
                       Loop("grun-node-sampler", self._sample, SAMPLE_SECS, log, self._stop),
                       Loop("grun-node-sweeper", lambda: sweep(self.jobs_dir), JANITOR_SECS, log, self._stop)]
        self._report_now = self._loops[1]
        for loop in self._loops[1], self._loops[4]:  # register, and sweep what our last life left (spool.remove), at once
            loop.wake()
        self._adopt()
        self.serve_thread = registry.serve_in_thread(self.daemon, "grun-node-pyro")
        for loop in self._loops:
            loop.start()
        threading.Thread(target=self._adopt_later, name="grun-node-adopt", daemon=True).start()

    def _adopt(self) -> None:
        """At start: the jobs in the spool, as they were left; but the ended ones the master has (their output kept
        for output_keep: --nowait's, an array's), read once we serve (_adopt_later): 11,443 of them took 17 s."""
        acks = self.acks.load(self.jobs_dir)
        for entry in filter(str.isdigit, os.listdir(self.jobs_dir)):
            job_dir = os.path.join(self.jobs_dir, entry)
            try:  # (job.json, for the attempt its acks are of: the master may not have a later run's end)
                attempt = int((spool.read(job_dir, spool.JOB) or {}).get("attempt") or 1)
                if "r" in acks.get((int(entry), attempt), ()) and os.path.exists(os.path.join(job_dir, spool.STATUS)):
                    self._later[int(entry)] = job_dir
                else:
                    self._adopt_one(job_dir, acks=acks)
            except Exception:
                log.exception("cannot adopt job spool %s", entry)
        self._later_acks = acks
        if self.live or self._later:
            log.info("re-adopted jobs from the spool: %d running, %d ended (their output or status not yet taken)",
                     sum(live.status is None for live in self.live.values()),
                     len(self._later) + sum(live.status is not None for live in self.live.values()))

    def _adopt_later(self, only: int | None = None) -> None:
        """The ended jobs _adopt left for later (or the one `only`: start() got a job of its id)."""
        todo = [only] if only is not None else list(self._later)
        for job_id in todo:
            with self.lock:
                if (job_dir := self._later.pop(job_id, None)) is None or job_id in self.live or self._stop.is_set():
                    continue
                try:
                    self._adopt_one(job_dir, acks=self._later_acks)
                except Exception:
                    log.exception("cannot adopt job spool %s", job_dir)
        if only is None and todo:
            log.info("read the %d ended jobs the master has from the spool, once serving", len(todo))

    def start(self, jobs: list) -> dict:
        """Start jobs; idempotent, so the master may offer a job again. The node lock covers only the decision, not
        the files and the hand-over to the reaper."""
        auth.require("start jobs on a node")
        started, rejected, waiting = {}, {}, []
        for job in jobs:
            job_id, live = int(job["id"]), None
            if "admins" in job:  # (the master's now, as its replies say: JobSupervisor._owned)
                self.admins = frozenset(job["admins"])
            try:
                # (outside the lock: it may stat the job's cwd, on a file server that may hang)
                staged = stage.wanted(job, self.stage, self.fetch_path, self.mounts)
                with self.lock:
                    self._adopt_later(job_id)  # (a later run of an ended job not read yet: that one goes first)
                    old = self.live.get(job_id)
                    if old is not None and old.attempt < int(job.get("attempt") or 1):
                        # a copy of an earlier run of this job (the master declared it lost meanwhile)
                        if old.status is None:
                            self.kill_stale([job_id])  # the new run starts once this one has ended
                            waiting.append(job_id)
                            continue
                        self._forget(old)  # its end no longer counts
                    if job_id not in self.live:
                        self.launch_seq += 1
                        live = LiveJob(job_id, os.path.join(self.jobs_dir, str(job_id)),
                                       dict(job, node=self.name, node_wrap=self.wrap,
                                            limits=limits.job_limits(job, self.hard_factor, self.ulimit),
                                            nfs_sync=mounts.job_paths(job, self.mounts) if self.nfs_sync else []))
                        if staged:  # (its cwd: a work dir)
                            live.stage = stage.Staged(self, live)
                        self._register_job(live)
                if live is not None:
                    self.plugins.start(live.job, spawner.SHELL)  # (before job.json is written)
                    if live.stage is None or not live.stage.waiting:  # else once its inputs came (grun.stage)
                        self._launch(live)
                    else:  # an attach until then gets an offer without output: its inputs are still coming
                        live.set_up.set()
                started[str(job_id)] = None
            except Exception as exc:
                log.exception("job %s: cannot start", job_id)
                if live is not None:
                    self._forget(live)
                rejected[str(job_id)] = f"node {self.name}: {exc}"
        return {"started": started, "rejected": rejected, "waiting": waiting, "incarnation": self.incarnation,
                "seq": self.launch_seq}

    def kill(self, job_ids: list, sig: int = 15) -> dict:
        auth.require("signal jobs on a node (ask the master)")
        lives, sig = {str(i): self.live.get(int(i)) for i in job_ids}, int(sig)
        # (a kill once: the master's heartbeat reply repeating it may come before this call, whose TERM would be a second)
        return {i: live is not None and self._kill(live, sig, once=sig in ENDING_SIGNALS) for i, live in lives.items()}

    def kill_stale(self, job_ids: list) -> None:
        """Kill, once, copies the master no longer counts as the job (re-run elsewhere, or ended); their end is
        marked superseded, so an attached client follows the job to its new place."""
        auth.require("kill jobs on a node")
        for job_id in job_ids:
            if (live := self.live.get(int(job_id))) is not None and live.status is None and not live.superseded:
                log.warning("job %s: killing this stale copy (the master re-ran or ended the job)", job_id)
                live.superseded = True
                self._kill(live, signal.SIGTERM)

    def reconfigure(self, **changes) -> dict:
        """Apply the exec keys a reload applies (grun.config.KEYS; limits to jobs started from now on; what the
        master places by, by registering again); returns {key: new value} of those changed. Others are ignored."""
        auth.require("reconfigure a node")
        changed = {key: value for key, value in changes.items()
                   if key in KEYS and KEYS[key].service == "exec" and KEYS[key].reload and getattr(self, key) != value}
        vars(self).update(changed)
        self._reregister |= bool(REREGISTER & changed.keys())
        self._report_now.wake()
        return changed

    def replug(self) -> None:
        """After a reload: what the plugins offer now, and who they are, told the master by registering again."""
        auth.require("reload a node's plugins")
        self.found, self._reregister = self.plugins.node_resources(), True
        self._report_now.wake()

    def _tidy(self) -> None:
        """The janitor: missed ends, outputs fetched or kept long enough, stale offers."""
        self._check_jobs()
        now = time.time()
        for live in list(self.live.values()):
            if live.stage is not None:
                live.stage.check()
            if live.status is not None and live.reported and (  # (a staged job's end is told once its files are back)
                    live.fetched or now - max(live.status.get("end_time", 0), live.reported) > self.output_keep):
                self._forget(live)
        self.stream.expire()

    def _talk_to_master(self) -> None:
        """One round: register if we must, report ends, beat when it is time."""
        if time.monotonic() < self._retry_at:
            return
        try:
            if self._master is None:
                self._master = registry.proxy(registry.master_uri(self.master_host, self.master_port))
            if not self._registered or self._reregister:
                self._reregister = False
                self._heard(self._register())
            if self._send_reports():
                self._last_call = time.monotonic()
            if time.monotonic() >= self._next_beat:
                self._check_jobs()
                self._heard(self._master.heartbeat(self.name, self._load()))
            if self._linger is not None and time.monotonic() - self._last_call >= self._linger:
                registry.reset(self._master)  # a big cluster's master has a thread per open connection
            if self._name_pending:  # for plain Pyro5 users; a failure here is not the master's
                try:
                    with registry.locate_ns(self.master_host, self.master_port) as ns:
                        ns.register(registry.node_name(self.name), self.uri)
                    self._name_pending = False
                except Exception as exc:
                    log.debug("name server: %s", exc)
        except Exception as exc:
            if isinstance(exc, registry.NotAuthorized) or isinstance(exc, ValueError) and str(exc).startswith(
                    "not authorized"):  # a wrong secret, or TLS on one, or a node daemon that is not root under munge
                why = f"the master at {self.master_host}:{self.master_port} refused this node: " + str(exc).replace(
                    auth.PERSONAL, ": is this host's secret_file (or auth:) the master's?")  # (`grun -d` says it too)
                if not self._told_refused:  # side only (config key tls), will not heal by retrying: say it once, loudly
                    log.error("%s", why)
                self._told_refused = why
            elif not isinstance(exc, OSError):  # (a master away, or our EMFILE: a warning, not a traceback a second)
                log.exception("talking to the master")
            elif time.monotonic() - self._unreachable_told >= UNREACHABLE_LOG_SECS:  # as slurmd: not per retry
                log.warning("cannot reach the master at %s:%s (retrying): %s", self.master_host, self.master_port, exc)
                self._unreachable_told = time.monotonic()
            registry.reset(self._master)
            self._master, self._registered, self._retry_at = None, False, time.monotonic() + 1.0

    def first_word(self) -> str | None:
        """The master's answer to our registration, for `grun -d`'s exit: None (none yet), "" (known), or its refusal."""
        return self._told_refused or ("" if self._registered else None)

    def _heard(self, reply: dict) -> None:
        """What a registration or heartbeat reply asks: the master's kills for our jobs (each applied once), stale
        copies to end, and its pace: how often to beat (a master with many nodes asks them to beat less) and how
        long to keep an idle connection (None: for good)."""
        self._registered, self._last_call = bool(reply.get("known", True)), time.monotonic()
        self._linger = reply.get("linger")  # (the master's pace(): finite numbers or None)
        if "admins" in reply:  # (trusted to revoke only: JobSupervisor._owned)
            self.admins = frozenset(reply["admins"])
        self._next_beat = self._last_call + max(self.heartbeat, reply.get("heartbeat") or 0)
        for job_id, sig in (reply.get("kill") or {}).items():
            if (live := self.live.get(int(job_id))) is not None:
                self._kill(live, int(sig), once=True)
        self.kill_stale(reply.get("stale", []))

    def _held(self) -> dict:
        """The jobs we hold, for the master to reconcile with: running ones, and finished ones it has not
        acknowledged yet; with the launch count they were taken at."""
        with self.lock:  # copies we were told are stale do not count as the job's
            mine = [l for l in self.live.values() if not l.superseded]
            return {"running": [l.id for l in mine if l.status is None], "incarnation": self.incarnation,
                    "finished": [l.id for l in mine if l.status is not None and not l.reported],
                    "seq": self.launch_seq}

    def _register(self) -> dict:
        self.mounts = mounts.network(mounts.table())
        reply = self._master.register_node({
            "name": self.name, "uri": self.uri, "cpus": self.cpus, "memory": self.memory, "mounts": self.mounts,
            "stage": self.stage, "heartbeat": self.heartbeat, "plugins": self.plugins.names, **self._held(),
            **{k: {**self.found[k], **getattr(self, k)} for k in self.found}})
        # jobs dispatched to us whose start never arrived (we, or the master, restarted meanwhile)
        self.start([j for j in reply.get("start", []) if int(j["id"]) not in self.live])
        self.monitor.master = reply.get("master")  # (on our host, its cpu and memory are grun's, not outside load)
        self._name_pending = True  # once per registration, not per job
        log.info("registered with the master at %s:%s%s", self.master_host, self.master_port,
                 " after failures" if self._unreachable_told > -math.inf else "")
        self._unreachable_told = -math.inf
        return reply

    def _send_reports(self) -> bool:
        """Report the finished jobs not yet acknowledged, from a queue (not a scan of `live`); whether it called."""
        todo, held = [], []
        with self.lock:
            while self._unreported and len(todo) < REPORT_BATCH:
                live = self._unreported.popleft()
                if not live.reported and self.live.get(live.id) is live:
                    (held if live.stage and live.stage.holds() else todo).append(live)
            self._unreported.extend(held)  # (its outputs not fetched yet: grun.stage's holds)
        if not todo:
            return False
        acked = set()
        try:
            acked = set(self._master.finished(self.name, [dict(l.status, id=l.id, attempt=l.job.get("attempt"))
                                                          for l in todo]))
        finally:  # what was not acknowledged (yet), or not sent (the call failed), goes again next round
            for live in todo:
                live.reported = time.time() if live.id in acked else False  # (when: its output is kept from then)
            self._ack("r", [l for l in todo if l.reported])
            with self.lock:
                self._unreported.extendleft(reversed([l for l in todo if not l.reported]))
                if self._unreported and len(todo) == REPORT_BATCH:
                    self._report_now.wake()
        return True

    def _load(self) -> dict:
        held, now = self._held(), mounts.network(mounts.table())
        cores, memory = self.monitor.outside(self.cpus, self.memory) if self.count_outside_load else (0.0, 0)
        changed, self.mounts, unread = now != self.mounts, now, self.drain.unread()
        return {"running": held["running"], "seq": held["seq"], "incarnation": self.incarnation,
                "load": os.getloadavg()[0], "available_memory": psutil.virtual_memory().available // 2**20,
                "outside_cpus": cores, "outside_memory": memory, "grun_cpus": self.monitor.grun_cores,
                "usage": {str(k): dict(v, unread=unread.get(str(k))) for k, v in self.monitor.usage.items()},
                **spool_space(self.jobs_dir), **({"mounts": now} if changed else {})}

    def _leave(self) -> None:
        """Tell the master we stop, as slurmd does (one short call, best effort): it offers us no job until we register
        again, instead of trying until node_timeout. Our jobs run on under the reaper either way."""
        self._report_now.join(LEAVE_SECS)  # its last heartbeat first (the master loop owns self._master)
        try:
            with registry.proxy(registry.master_uri(self.master_host, self.master_port), timeout=LEAVE_SECS) as master:
                if master.node_leaving(self.name, self.incarnation):
                    log.info("told the master this node stops")
        except Exception as exc:
            log.info("could not tell the master this node stops: %s", exc)

    def shutdown(self) -> None:
        auth.require("stop a node")
        self._stop.set()
        for loop in self._loops:
            loop.stop()
        self._leave()
        with contextlib.suppress(Exception):
            self.daemon.shutdown()
        self.stream.close()
        self.drain.close()
        for sock in filter(None, (self.notify_sock, self._credentials)):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # close() alone does not wake a blocked recv or accept
            sock.close()
        auth.unserve()
        if self.reaper is not None:  # at the end of its input, the reaper waits for its jobs and exits
            with contextlib.suppress(OSError):
                self.reaper.stdin.close()
        for loop in self._loops:
            loop.join(timeout=3)
