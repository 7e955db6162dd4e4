"""The node actor (`grun.node.<hostname>`): runs the master's jobs on one exec host.

It does two things. It keeps this host's jobs (`live`: one LiveJob from a job's start until the master
has its end and its output was fetched or expired): it hands each to its reaper (grun.spawner) to
start, hears of its end (the reaper pings a unix socket; the status files are the fallback), signals
it, and offers its output (grun.stream). And it holds the conversation with the master: registration,
heartbeats and completion reports, repeated until the master acknowledges them. The job directory is
grun.spool's; sampling, limits and suspend/resume are grun.actors.monitor's.

Jobs live in their own sessions and write to spool files, so they outlive this daemon: a restarted
node re-adopts them from the spool. The node is a child subreaper: if the reaper dies, its jobs become
the node's children, and the node waits for them and records their status (invariant 3) while a new
reaper starts the next jobs. Jobs are objects `grun.job.<id>` of this node's Pyro5 daemon (the client
derives the URI from the node's), not name-server entries: that cost a registration and a removal
per job.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import Pyro5.api

from .. import registry, spawner, spool
from ..background import Loop
from ..stream import StreamServer
from .monitor import SAMPLE_SECS, JobMonitoring
from .supervisor import JobSupervisor

log = logging.getLogger("grun.node")

REPORT_BATCH = 500
JANITOR_SECS = 10.0
KILL_GRACE_SECS = 5.0
# what a reload may change (Node.reconfigure): key -> its type; the keys the master must hear of
RELOADABLE = {"heartbeat": float, "output_keep": float, "cpus": float, "memory": int, "resources": dict,
              "labels": dict, "hard_factor": float, "ulimit": dict, "count_outside_load": bool}
REREGISTER = {"cpus", "memory", "resources", "labels"}


@dataclasses.dataclass(eq=False)
class LiveJob:
    id: int
    dir: str
    job: dict
    status: dict | None = None
    reported: bool = False         # the master has acknowledged its end
    fetched: bool = False          # a client has read its whole output
    stdin_w: int | None = None     # our end of the job's stdin FIFO, until a client takes it
    stdin_r: int | None = None     # held until the job has opened the FIFO, so early writes cannot fail
    finished_at: float = 0.0
    superseded: bool = False       # the master re-ran it elsewhere (or ended it): this copy is killed
    pid: int | None = None         # the job's pid (and process group), once its reaper started it
    reaper: int | None = None      # the pid of our reaper it was sent to
    kills: set = dataclasses.field(default_factory=set)  # signals it was sent as kills

    @property
    def attempt(self) -> int:
        return int(self.job.get("attempt") or 1)


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Node(JobMonitoring):
    def __init__(self, name: str, spool_dir: str, cpus: float, memory: int, *, master_host: str,
                 master_port: int, bind: str, advertise: str, heartbeat: float = 5.0,
                 output_keep: float = 86400.0, **limits_and_load):
        self.name, self.cpus, self.memory = name, float(cpus), int(memory)
        self._init_monitoring(**limits_and_load)  # resources, labels, hard_factor, ulimit, count_outside_load
        self.master_host, self.master_port = master_host, master_port
        self.advertise, self.heartbeat, self.output_keep = advertise, heartbeat, output_keep
        # Launches are numbered within this process's life (its incarnation), so the master can tell
        # a job list made before a start it saw confirmed from one that really lacks the job.
        self.incarnation = secrets.token_hex(8)
        self.launch_seq = 0
        self.spool = spool_dir
        self.jobs_dir = os.path.join(spool_dir, "jobs")
        os.makedirs(self.jobs_dir, mode=0o755, exist_ok=True)
        self.acks = spool.Acks(spool_dir)
        self.lock = threading.RLock()
        self.live: dict[int, LiveJob] = {}
        self._unreported: collections.deque[LiveJob] = collections.deque()  # finished, not yet acknowledged
        self._stop = threading.Event()
        # the master conversation, kept by its loop's thread alone
        self._master = None
        self._registered = self._reregister = False
        self._name_pending = False
        self._next_beat = self._last_call = self._retry_at = 0.0
        self._linger: float | None = None  # None: keep the connection; else close it after this long idle
        # our reapers' pids (a job whose reaper was ours is settled by _watch_reaper), and the jobs
        # of a dead reaper of ours that still run, as our children: job pid -> job
        self.reaper: subprocess.Popen | None = None
        self._reaper_lock = threading.RLock()
        self._reaper_pids: set[int] = set()
        self._orphans: dict[int, LiveJob] = {}
        self._reaper_died_once = False
        spawner.set_subreaper()
        self.daemon = registry.start_daemon(bind, advertise)
        self.uri = str(self.daemon.register(self, registry.node_name(name)))
        self.stream = StreamServer(bind)
        # an abstract socket: no path-length limit, and it is gone when we are
        self.notify_addr = "\0grun.notify." + hashlib.sha1(os.path.abspath(spool_dir).encode()).hexdigest()[:20]
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.bind(self.notify_addr)
        self._loops = [Loop("grun-node-notify", self._on_ping, 0.0, log, self._stop),
                       Loop("grun-node-master", self._talk_to_master, self._master_pause, log, self._stop),
                       Loop("grun-node-janitor", self._tidy, lambda: min(JANITOR_SECS, max(0.5, self.output_keep / 4)),
                            log, self._stop),
                       Loop("grun-node-sampler", self._sample, SAMPLE_SECS, log, self._stop)]
        self._report_now = self._loops[1]
        self._report_now.wake()  # register at once
        self._adopt()
        self.serve_thread = registry.serve_in_thread(self.daemon, "grun-node-pyro")
        for loop in self._loops:
            loop.start()

    # ---- master-facing -------------------------------------------------------------------------

    def ping(self) -> str:
        return self.name

    def start(self, jobs: list) -> dict:
        """Start jobs; idempotent, so the master may offer the same job again. The node lock covers
        only the decision; the files and the hand-over to the reaper are done outside it."""
        started, rejected, waiting, launch = {}, {}, [], []
        for job in jobs:
            job_id = int(job["id"])
            try:
                with self.lock:
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
                                       dict(job, node=self.name, limits=self._job_limits(job)))
                        self._register_job(live)
                        launch.append(live)
                started[str(job_id)] = None
            except Exception as exc:
                log.exception("job %s: cannot start", job_id)
                rejected[str(job_id)] = f"node {self.name}: {exc}"
        for live in launch:
            try:
                self._launch(live)
            except Exception as exc:
                log.exception("job %s: cannot start", live.id)
                self._forget(live)
                started.pop(str(live.id), None)
                rejected[str(live.id)] = f"node {self.name}: {exc}"
        with self.lock:
            seq = self.launch_seq
        return {"started": started, "rejected": rejected, "waiting": waiting, "incarnation": self.incarnation,
                "seq": seq}

    def kill(self, job_ids: list, sig: int = 15) -> dict:
        return {str(i): (live := self.live.get(i)) is not None and self._kill(live, int(sig)) for i in map(int, job_ids)}

    def kill_stale(self, job_ids: list) -> None:
        """Copies the master no longer counts as the job (re-run elsewhere, or ended): kill them, once;
        their end is marked superseded, so an attached client follows the job to its new place."""
        for job_id in job_ids:
            live = self.live.get(int(job_id))
            if live is not None and live.status is None and not live.superseded:
                log.warning("job %s: killing this stale copy (the master re-ran or ended the job)", job_id)
                live.superseded = True
                self._kill(live, signal.SIGTERM)

    def reconfigure(self, **changes) -> dict:
        """A reloaded config: applies the RELOADABLE keys (limits to jobs started from now on; what
        the master places by, by registering again) and returns {key: new value} for those that
        changed; other keys are not the node's and are ignored."""
        changed = {}
        for key, value in changes.items():
            if key not in RELOADABLE or (value is None and RELOADABLE[key] is not dict):
                continue
            value = RELOADABLE[key](value or {}) if RELOADABLE[key] is dict else RELOADABLE[key](value)
            owner = self.monitor if key == "count_outside_load" else self
            if getattr(owner, key) != value:
                setattr(owner, key, value)
                changed[key] = value
        if REREGISTER & changed.keys():
            self._reregister = True
        self._report_now.wake()
        return changed

    # ---- supervisor-facing ---------------------------------------------------------------------

    def job_status(self, live: LiveJob) -> dict | None:
        if live.status is None:
            status = spool.read_status(live.dir)
            if status is not None:
                self._finished(live, status)
        return live.status

    def offer_stream(self, live: LiveJob, out_offset: int, err_offset: int, want_stdin: bool) -> dict:
        stdin_fd = None
        if want_stdin:
            with self.lock:
                stdin_fd, live.stdin_w = live.stdin_w, None  # one client feeds stdin, once: it is the stream's now
        token = self.stream.offer(str(live.id), live.dir, out_offset=out_offset, err_offset=err_offset,
                                  stdin_fd=stdin_fd, get_status=lambda: self.job_status(live))
        return {"host": self.advertise, "port": self.stream.address[1], "token": token}

    def mark_fetched(self, live: LiveJob) -> None:
        if not live.fetched:
            live.fetched = True
            self._ack("f", [live])  # so a restarted node does not keep fetched output for output_keep

    # ---- the jobs ------------------------------------------------------------------------------

    def _register_job(self, live: LiveJob) -> None:
        self.live[live.id] = live
        self.daemon.register(JobSupervisor(self, live.id), registry.job_name(live.id))

    def _launch(self, live: LiveJob) -> None:
        data = json.dumps(live.job)
        try:
            fifo = spool.create(live.dir, live.job, data)
        except FileExistsError:
            self._adopt_one(live.dir, live)  # we restarted since we started it
            return
        if fifo:
            live.stdin_r, live.stdin_w = fifo
        self._spawn(live, data)

    def _kill(self, live: LiveJob, sig: int, once: bool = False) -> bool:
        """Signal the job's process group, then SIGKILL it after KILL_GRACE_SECS. `once`: unless this
        signal was sent to this job before (the master repeats the kills it holds in every reply until
        the job has ended: a repeat must neither signal again nor restart the escalation)."""
        with self.lock:
            if once and sig in live.kills:
                return True
            live.kills.add(sig)
        if self.job_status(live) is not None:
            return True
        pid = self._job_pid(live)
        if pid is None:
            spool.request_kill(live.dir, sig)
            # the reaper reads killreq right after it records the pid: look again, in case it just did
            pid = self._job_pid(live)
            if pid is None:
                return True
        spawner.killpg(pid, sig)
        if sig == signal.SIGCONT:
            return True
        spawner.killpg(pid, signal.SIGCONT)  # a stopped job must wake up to die
        if sig != signal.SIGKILL:
            # The group even when its leader has ended: members that ignored the signal (a
            # non-interactive shell's `cmd &` ignores SIGINT) would outlive a killed job. The group id
            # cannot name another group within the grace period unless the pid space wrapped around.
            timer = threading.Timer(KILL_GRACE_SECS, spawner.killpg, (pid, signal.SIGKILL))
            timer.daemon = True
            timer.start()
        return True

    def _job_pid(self, live: LiveJob) -> int | None:
        if live.pid is None:
            live.pid = spool.read_pid(live.dir)[1]
        return live.pid

    def _finished(self, live: LiveJob, status: dict) -> None:
        with self.lock:
            if live.status is not None:
                return
            if live.superseded:
                status = dict(status, superseded=True)
            live.status = status
            live.finished_at = status.get("end_time") or time.time()
            self._close_stdin(live)
            if not live.reported:
                self._unreported.append(live)
        self.stream.wake(str(live.id))
        self._report_now.wake()

    def _close_stdin(self, live: LiveJob) -> None:
        for attr in ("stdin_r", "stdin_w"):
            fd = getattr(live, attr)
            if fd is not None:
                setattr(live, attr, None)
                os.close(fd)

    def _forget(self, live: LiveJob) -> None:
        with self.lock:
            current = self.live.get(live.id) is live
            if current:
                self.live.pop(live.id, None)
            self._close_stdin(live)
        if current:  # (a newer run of the same job keeps its name and its spool)
            try:
                self.daemon.unregister(registry.job_name(live.id))
            except Exception:
                pass
            spool.remove(live.dir)

    def _ack(self, kind: str, lives: list) -> None:
        try:
            self.acks.add(kind, [(live.id, live.attempt) for live in lives])
        except OSError:
            log.exception("cannot write %s", self.acks.path)

    def _acked(self) -> dict:
        with self.lock:
            return {(l.id, l.attempt): {k for k, on in (("r", l.reported), ("f", l.fetched)) if on}
                    for l in self.live.values() if l.reported or l.fetched}

    def _on_ping(self) -> None:
        """One datagram from a reaper: `started <id> <pid>`, `finished <id> [<status json>]` lines."""
        try:
            data = self.notify_sock.recv(1 << 16).decode(errors="replace")
        except OSError:
            if not self._stop.is_set():
                raise
            return
        for message in data.split("\n"):
            what, _, rest = message.partition(" ")
            job_id, _, rest = rest.partition(" ")
            live = self.live.get(int(job_id)) if job_id.isdigit() else None
            if live is None:
                continue
            if what == "started":
                with self.lock:
                    if rest.isdigit() and live.pid is None:
                        live.pid = int(rest)
                    if live.stdin_r is not None:
                        os.close(live.stdin_r)
                        live.stdin_r = None
            elif what == "finished":
                try:
                    status = json.loads(rest) if rest else None
                except ValueError:
                    status = None
                if isinstance(status, dict):
                    self._finished(live, status)
                else:
                    self.job_status(live)

    def _tidy(self) -> None:
        """The janitor: missed ends, outputs fetched or kept long enough, acks.log, stale offers."""
        self._check_jobs()
        now = time.time()
        for live in list(self.live.values()):
            if live.status is not None and live.reported and (live.fetched or now - live.finished_at > self.output_keep):
                self._forget(live)
        if self.acks.too_big():  # it stays proportional to the spool, not to every job ever run
            self.acks.rewrite(self._acked)
        self.stream.expire()

    def _check_jobs(self) -> None:
        """The fallback for lost pings: status files, and reapers that died without writing one."""
        self._watch_reaper()
        for live in list(self.live.values()):
            if live.status is not None or live.pid in self._orphans or self.job_status(live) is not None:
                continue
            if self._reaper_gone(live) and self.job_status(live) is None:  # it may have ended in between
                self._supervisor_vanished(live, "job supervisor vanished")

    # ---- the reaper ----------------------------------------------------------------------------

    def _spawn(self, live: LiveJob, job_json: str | None = None) -> None:
        line = f"{live.dir}\t{self.notify_addr}\t{job_json or ''}\n".encode()
        with self._reaper_lock:
            for _ in range(2):
                if self.reaper is None or self.reaper.poll() is not None:
                    self._watch_reaper()  # settle the jobs of a reaper that died, first
                    self.reaper = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE,
                                                   start_new_session=True, close_fds=True)
                    self._reaper_pids.add(self.reaper.pid)
                try:
                    live.reaper = self.reaper.pid
                    self.reaper.stdin.write(line)
                    self.reaper.stdin.flush()
                    return
                except OSError:
                    pass
            raise RuntimeError("cannot start the reaper")

    def _watch_reaper(self) -> None:
        """If our reaper died: jobs it never claimed go to the next reaper, jobs it started are our
        children now (we are a subreaper) and are waited for here."""
        resend = []
        with self._reaper_lock:
            proc = self.reaper
            if proc is not None and proc.poll() is not None:
                self.reaper = None
                self._reaper_died_once = True
                log.warning("the reaper (pid %s) died (%s); its running jobs are now waited for by the node",
                            proc.pid, proc.returncode)
                for live in list(self.live.values()):
                    if live.reaper != proc.pid or self.job_status(live) is not None:
                        continue
                    claimed, pid, _lock = spool.read_pid(live.dir)
                    if not claimed:
                        resend.append(live)
                    elif pid is None:  # it may have started the job: running it again could run it twice
                        self._finished(live, {"exit_code": 255, "signal": None, "end_time": time.time(),
                                              "error": "job supervisor vanished while starting the job"})
                    else:
                        live.pid = pid
                        self._orphans[pid] = live
            if self._orphans or self._reaper_died_once:
                self._reap_orphans()
        for live in resend:
            self._spawn(live)

    def _reap_orphans(self) -> None:
        for pid, live in list(self._orphans.items()):
            try:
                got, wstatus, rusage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                got = None
            if got == 0:
                continue
            del self._orphans[pid]
            if self.job_status(live) is not None:
                continue
            if got is None:  # not our child: it ended with its reaper, or was reaped before
                self._supervisor_vanished(live, "job supervisor vanished")
                continue
            status = {"start_time": spool.started_at(live.dir) or time.time(),
                      "limits": dict(live.job.get("limits") or {})}
            spawner.exit_status(live.dir, live.job, status, wstatus, rusage, None)
            try:
                spool.write_statuses([(live.dir, json.dumps(status))])
            except OSError:
                log.exception("job %s: cannot write its status", live.id)
            self._finished(live, status)
        # what orphaned jobs leave behind in the background is ours now too: reap it, never the reaper
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is None or info.si_pid in self._reaper_pids or info.si_pid in self._orphans:
                    return
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                return

    def _reaper_gone(self, live: LiveJob) -> bool:
        """Whether the job was started by a reaper that has died, one that was not ours (ours are
        settled by _watch_reaper, which can still wait for their jobs)."""
        claimed, _pid, reaper = spool.read_pid(live.dir)
        if not claimed or reaper is None:
            return False  # not started yet, or being started
        owner = reaper.split(".", 1)[0]
        return not (owner.isdigit() and int(owner) in self._reaper_pids) and not spool.reaper_alive(reaper)

    def _supervisor_vanished(self, live: LiveJob, why: str) -> None:
        """The reaper died without writing the job's status. If the host rebooted since the job
        started, the job died with it: report it lost (the master may run it again). Otherwise the
        job may still run: end it, and report a failure (running it again could run it twice)."""
        started = spool.started_at(live.dir)
        if started is not None and started < psutil.boot_time():
            self._finished(live, {"exit_code": 255, "signal": None, "lost": True, "end_time": time.time(),
                                  "error": f"{why}: the host rebooted"})
            return
        pid = spool.read_pid(live.dir)[1]
        try:  # its group, if the pid still names the job's (not a process started after it)
            if pid and os.getpgid(pid) == pid and psutil.Process(pid).create_time() <= (started or 0) + 1:
                spawner.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass
        self._finished(live, {"exit_code": 255, "signal": None, "error": why, "end_time": time.time()})

    def _adopt(self) -> None:
        """At start: the jobs in the spool, as they were left."""
        acks = self.acks.load(self.jobs_dir)
        for entry in os.listdir(self.jobs_dir):
            if entry.isdigit():
                try:
                    self._adopt_one(os.path.join(self.jobs_dir, entry), acks=acks)
                except Exception:
                    log.exception("cannot adopt job spool %s", entry)
        if self.live:
            log.info("re-adopted %d jobs from the spool", len(self.live))

    def _adopt_one(self, job_dir: str, live: LiveJob | None = None, acks: dict | None = None) -> None:
        job = spool.read_job(job_dir)
        if job is None:
            spool.remove(job_dir)
            if live is not None:
                raise RuntimeError("its spool was unreadable; removed")
            return
        if live is None:  # else start() registered it, for a job whose spool survived our restart
            live = LiveJob(int(job["id"]), job_dir, job)
            with self.lock:
                self._register_job(live)
        live.job = job
        kinds = (acks if acks is not None else self.acks.load(self.jobs_dir)).get((live.id, live.attempt), ())
        live.reported, live.fetched = "r" in kinds, "f" in kinds
        if self.job_status(live) is not None:
            return
        claimed, live.pid, _lock = spool.read_pid(job_dir)
        if not claimed:
            # written but never started, or an earlier reaper still has it in its pipe: the claim of
            # `pid` makes a second start a no-op
            if not live.reported:
                self._spawn(live)
        elif self._reaper_gone(live) and self.job_status(live) is None:
            self._supervisor_vanished(live, "job supervisor vanished while the node was down")

    # ---- the master conversation ---------------------------------------------------------------

    def _master_pause(self) -> float:
        return min(1.0, self.heartbeat, self._linger if self._linger is not None else 1.0)

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
            if self._name_pending:
                with registry.locate_ns(self.master_host, self.master_port) as ns:
                    ns.register(registry.node_name(self.name), self.uri)
                self._name_pending = False
        except Exception as exc:
            if not registry.is_unreachable(exc):
                log.exception("talking to the master")
            else:
                log.debug("master unreachable: %s", exc)
            if self._master is not None:
                registry.reset(self._master)
            self._master, self._registered, self._retry_at = None, False, time.monotonic() + 1.0

    def _heard(self, reply: dict) -> None:
        """What a registration or heartbeat reply asks of us: kills the master holds for our jobs (each
        applied once per job), stale copies to end, and its pace: how often to beat (a master with many
        nodes asks them to beat less) and how long to keep an idle connection (None: for good)."""
        self._registered, self._last_call = bool(reply.get("known", True)), time.monotonic()
        try:
            wanted = min(float(reply.get("heartbeat") or 0), 3600.0)
            self._linger = None if reply.get("linger") is None else max(0.0, float(reply["linger"]))
        except (TypeError, ValueError):
            wanted, self._linger = 0.0, None
        self._next_beat = time.monotonic() + max(self.heartbeat, wanted if math.isfinite(wanted) else 0.0)
        for job_id, sig in (reply.get("kill") or {}).items():
            live = self.live.get(int(job_id))
            if live is not None:
                self._kill(live, int(sig), once=True)
        self.kill_stale(reply.get("stale", []))

    def _held(self) -> dict:
        """The jobs we hold, for the master to reconcile with: running ones, and finished ones it has
        not acknowledged yet; with the launch count they were taken at."""
        with self.lock:  # copies we were told are stale do not count as the job's
            running = [l.id for l in self.live.values() if l.status is None and not l.superseded]
            finished = [l.id for l in self.live.values() if l.status is not None and not l.reported
                        and not l.superseded]
            return {"running": running, "finished": finished, "incarnation": self.incarnation,
                    "seq": self.launch_seq}

    def _register(self) -> dict:
        reply = self._master.register_node({"name": self.name, "uri": self.uri, "cpus": self.cpus,
                                            "memory": self.memory, **self._held(), **self._describe()})
        # jobs dispatched to us whose start never arrived (we, or the master, restarted meanwhile)
        missing = [j for j in reply.get("start", []) if int(j["id"]) not in self.live]
        if missing:
            self.start(missing)
        self._name_pending = True  # once per registration, not per job
        log.info("registered with the master at %s:%s", self.master_host, self.master_port)
        return reply

    def _send_reports(self) -> bool:
        """Reports the finished jobs not yet acknowledged, from a queue (not a scan of `live`);
        whether it called the master."""
        todo = []
        with self.lock:
            while self._unreported and len(todo) < REPORT_BATCH:
                live = self._unreported.popleft()
                if not live.reported and self.live.get(live.id) is live:
                    todo.append(live)
        if not todo:
            return False
        try:
            acked = set(self._master.finished(self.name, [dict(l.status, id=l.id, attempt=l.job.get("attempt"))
                                                          for l in todo]))
        except BaseException:
            with self.lock:
                self._unreported.extendleft(reversed(todo))
            raise
        done = [l for l in todo if l.id in acked]
        for live in done:
            live.reported = True
        if done:
            self._ack("r", done)
        with self.lock:  # not acknowledged (yet): sent again next round
            self._unreported.extend(l for l in todo if l.id not in acked)
            if self._unreported and len(todo) == REPORT_BATCH:
                self._report_now.wake()
        return True

    def _load(self) -> dict:
        held = self._held()
        return {"running": held["running"], "seq": held["seq"], "incarnation": self.incarnation,
                "load": os.getloadavg()[0], "available_memory": psutil.virtual_memory().available // 2**20,
                **self._load_extra()}

    def shutdown(self) -> None:
        self._stop.set()
        for loop in self._loops:
            loop.stop()
        try:
            self.daemon.shutdown()
        except Exception:
            pass
        self.stream.close()
        try:
            self.notify_sock.shutdown(socket.SHUT_RDWR)  # close() alone does not wake the blocked recv
        except OSError:
            pass
        self.notify_sock.close()
        if self.reaper is not None:
            try:
                self.reaper.stdin.close()
            except OSError:
                pass
        for loop in self._loops:
            loop.join(timeout=3)
