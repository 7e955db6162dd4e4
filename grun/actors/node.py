"""The node actor (`grun.node.<hostname>`): runs jobs on one exec host.

It owns the host's job spool (one directory per job), the reaper process that starts and waits for
jobs (grun.spawner), the side-channel stream server, and the conversation with the master:
registration, heartbeats and completion reports, which it repeats until the master acknowledges them.
Jobs live in their own sessions and write to spool files, so they outlive this daemon; a restarted
node re-adopts them from the spool.

Per job, the node writes only `job.json` (no fsync: the master holds the durable copy, and `start` is
idempotent) and, for a job that reads input, the `stdin` FIFO. Which finished jobs the master has
acknowledged, and which outputs a client has fetched, are lines of one append-only file, `acks.log`.
Jobs are named `grun.job.<id>` as objects of this node's Pyro5 daemon (the client derives the URI from
the node's), not in the name server: that cost a registration and a removal per job.

The node is a child subreaper: if the reaper dies, its jobs become the node's children, and the node
waits for them and records their status (invariant 3) while a new reaper starts the next jobs.
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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import Pyro5.api

from .. import registry, spawner
from ..stream import StreamServer
from .monitor import JobMonitoring
from .supervisor import JobSupervisor

log = logging.getLogger("grun.node")

REPORT_BATCH = 500
ACKS_COMPACT_BYTES = 4 << 20
JANITOR_SECS = 10.0
KILL_GRACE_SECS = 5.0


def _linger(reply: dict) -> float | None:
    """How long the master lets an idle connection stay open (None: for good)."""
    try:
        return None if reply.get("linger") is None else max(0.0, float(reply["linger"]))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass
class LiveJob:
    id: int
    dir: str
    job: dict
    status: dict | None = None
    reported: bool = False
    fetched: bool = False
    stdin_w: int | None = None     # our end of the job's stdin FIFO, until a client takes it
    stdin_r: int | None = None     # held until the job has opened the FIFO, so early writes cannot fail
    finished_at: float = 0.0
    superseded: bool = False       # the master re-ran it elsewhere (or ended it): this copy is killed
    pid: int | None = None         # the job's pid (and process group), once its reaper started it
    reaper: int | None = None      # the pid of our reaper it was sent to


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def supervisor_alive(job_dir: str) -> bool:
    """A job of a grun before the reaper (its own supervisor process, `supervisor.pid`): whether that
    supervisor lives (it keeps `lock` locked while it does)."""
    lock = os.path.join(job_dir, "lock")
    if not os.path.exists(lock):  # a supervisor of an older grun still: by its pid
        return _pid_alive(spawner._read_int(os.path.join(job_dir, "supervisor.pid")))
    return spawner.reaper_alive(lock)  # the same lock protocol


def _rebooted_since(path: str) -> bool:
    """Whether this host booted after the file was written (so whatever it names is gone)."""
    try:
        return os.stat(path).st_mtime < psutil.boot_time()
    except OSError:
        return False


def _kill_orphan_group(job_dir: str) -> None:
    """A job whose supervisor died may still run: end its process group, if it is still the job's."""
    pid = spawner._read_int(os.path.join(job_dir, "pid"))
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        if os.getpgid(pid) != pid or proc.create_time() > os.stat(os.path.join(job_dir, "pid")).st_mtime + 1:
            return  # the pid names some other process now
    except (psutil.Error, OSError):
        return
    spawner._killpg(pid, signal.SIGKILL)


@Pyro5.api.expose
@Pyro5.api.behavior(instance_mode="single")
class Node(JobMonitoring):
    def __init__(self, name: str, spool: str, cpus: float, memory: int, *, master_host: str,
                 master_port: int, bind: str, advertise: str, heartbeat: float = 5.0,
                 output_keep: float = 86400.0, **limits_and_load):
        self.name, self.cpus, self.memory = name, float(cpus), int(memory)
        self._init_monitoring(**limits_and_load)  # resources, labels, hard_factor, ulimit, count_outside_load
        self.master_host, self.master_port = master_host, master_port
        self.advertise, self.heartbeat_secs, self.output_keep = advertise, heartbeat, output_keep
        # Launches are numbered within this process's life (its incarnation), so the master can tell
        # a job list made before a start it saw confirmed from one that really lacks the job.
        self.incarnation = secrets.token_hex(8)
        self.launch_seq = 0
        self._reregister = False
        self.jobs_dir = os.path.join(spool, "jobs")
        self.reapers_dir = os.path.join(spool, "reapers")
        os.makedirs(self.jobs_dir, mode=0o755, exist_ok=True)
        self.lock = threading.RLock()
        self.live: dict[int, LiveJob] = {}
        self._unreported: collections.deque[LiveJob] = collections.deque()  # finished, not yet acknowledged
        self._report_now = threading.Event()
        self._stop = threading.Event()
        self._ns_queue: list[tuple[str, str | None]] = []
        self._acks_path = os.path.join(spool, "acks.log")
        self._acks_lock = threading.RLock()
        # our reapers' pids (a job whose reaper was ours is settled by _watch_reaper), and the jobs
        # of a dead reaper of ours that still run, as our children: job pid -> job
        self._reaper_pids: set[int] = set()
        self._orphans: dict[int, LiveJob] = {}
        self._reaper_died_once = False
        self.subreaper = spawner.set_subreaper()
        self.daemon = registry.start_daemon(bind, advertise)
        self.uri = str(self.daemon.register(self, registry.node_name(name)))
        self.stream = StreamServer(bind)
        # an abstract socket: no path-length limit, and it is gone when we are
        self.notify_addr = "\0grun.notify." + hashlib.sha1(os.path.abspath(spool).encode()).hexdigest()[:20]
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.bind(self.notify_addr)
        self._forkserver_lock = threading.RLock()
        self.forkserver = None
        self._adopt()
        self._threads = [threading.Thread(target=f, name=n, daemon=True) for f, n in (
            (self._notify_loop, "grun-node-notify"), (self._master_loop, "grun-node-master"),
            (self._janitor_loop, "grun-node-janitor"), (self._sampler_loop, "grun-node-sampler"))]
        self.serve_thread = registry.serve_in_thread(self.daemon, "grun-node-pyro")
        for t in self._threads:
            t.start()

    # ---- the reaper ----------------------------------------------------------------------------

    def _spawn(self, live: LiveJob, job_json: str | None = None) -> None:
        line = f"{live.dir}\t{self.notify_addr}\t{job_json or ''}\n".encode()
        with self._forkserver_lock:
            for _ in range(2):
                if self.forkserver is None or self.forkserver.poll() is not None:
                    self._watch_reaper()  # settle the jobs of a reaper that died, first
                    self.forkserver = subprocess.Popen(
                        [sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE,
                        start_new_session=True, close_fds=True)
                    self._reaper_pids.add(self.forkserver.pid)
                try:
                    live.reaper = self.forkserver.pid
                    self.forkserver.stdin.write(line)
                    self.forkserver.stdin.flush()
                    return
                except (BrokenPipeError, OSError):
                    pass
            raise RuntimeError("cannot start the reaper")

    def _watch_reaper(self) -> None:
        """If our reaper died: jobs it never read go to the next reaper, jobs it started are our
        children now (we are a subreaper) and are waited for here."""
        resend = []
        with self._forkserver_lock:
            proc = self.forkserver
            if proc is not None and proc.poll() is not None:
                self.forkserver = None
                self._reaper_died_once = True
                log.warning("the reaper (pid %s) died (%s); its running jobs are now waited for by the node",
                            proc.pid, proc.returncode)
                for live in list(self.live.values()):
                    if live.reaper != proc.pid or self.job_status(live) is not None:
                        continue
                    claimed, pid, _lock = spawner.read_pid_file(live.dir)
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
            pid_file = os.path.join(live.dir, "pid")
            try:
                started = os.stat(pid_file).st_mtime
            except OSError:
                started = time.time()
            status = {"start_time": started, "limits": dict(live.job.get("limits") or {})}
            spawner.exit_status(live.dir, live.job, status, wstatus, rusage, None)
            try:
                spawner.write_durable(os.path.join(live.dir, "status.json"), json.dumps(status).encode())
            except OSError:
                log.exception("job %s: cannot write its status", live.id)
            self._finished(live, status)
        # what orphaned jobs leave behind in the background is ours now too: reap it, never the reaper
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in self._reaper_pids or info.si_pid in self._orphans:
                return
            try:
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                return

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
                    if old is not None and int(old.job.get("attempt") or 1) < int(job.get("attempt") or 1):
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
                with self.lock:
                    if self.live.get(live.id) is live:
                        self.live.pop(live.id, None)
                        self._close_stdin(live)
                self._unregister_job(live.id)
                shutil.rmtree(live.dir, ignore_errors=True)
                started.pop(str(live.id), None)
                rejected[str(live.id)] = f"node {self.name}: {exc}"
        with self.lock:
            seq = self.launch_seq
        return {"started": started, "rejected": rejected, "waiting": waiting, "incarnation": self.incarnation,
                "seq": seq}

    def _launch(self, live: LiveJob) -> None:
        job, job_dir = live.job, live.dir
        try:
            os.mkdir(job_dir)
        except FileExistsError:
            if os.path.exists(os.path.join(job_dir, "job.json")):
                self._adopt_one(job_dir, live)  # we restarted since we started it
                return
        if job.get("uid") and os.geteuid() == 0:
            os.chown(job_dir, job["uid"], job.get("gid", job["uid"]))
        if job.get("stdin"):
            fifo = os.path.join(job_dir, "stdin")
            os.mkfifo(fifo, 0o600)
            if job.get("uid") and os.geteuid() == 0:
                os.chown(fifo, job["uid"], job.get("gid", job["uid"]))
            live.stdin_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            live.stdin_w = os.open(fifo, os.O_WRONLY)
        data = json.dumps(job)
        with open(os.path.join(job_dir, "job.json"), "wb") as f:
            f.write(data.encode())
        self._spawn(live, data)

    def _register_job(self, live: LiveJob) -> None:
        self.live[live.id] = live
        self.daemon.register(JobSupervisor(self, live.id), registry.job_name(live.id))

    def _unregister_job(self, job_id: int) -> None:
        try:
            self.daemon.unregister(registry.job_name(job_id))
        except Exception:
            pass

    def kill(self, job_ids: list, sig: int = 15) -> dict:
        out = {}
        for job_id in job_ids:
            live = self.live.get(int(job_id))
            out[str(job_id)] = live is not None and self.signal_job(live, int(sig), escalate=True)
        return out

    def kill_stale(self, job_ids: list) -> None:
        """Copies the master no longer counts as the job (re-run elsewhere, or ended): kill them;
        their end is marked superseded, so an attached client follows the job to its new place."""
        for job_id in job_ids:
            live = self.live.get(int(job_id))
            if live is not None and live.status is None:
                log.warning("job %s: killing this stale copy (the master re-ran or ended the job)", job_id)
                live.superseded = True
                self.signal_job(live, signal.SIGTERM, escalate=True)

    def reconfigure(self, heartbeat: float | None = None, output_keep: float | None = None,
                    cpus: float | None = None, memory: int | None = None) -> None:
        """Reloaded config: timings apply at once; new cpus or memory are sent by registering again."""
        if heartbeat is not None:
            self.heartbeat_secs = heartbeat
        if output_keep is not None:
            self.output_keep = output_keep
        if (cpus is not None and float(cpus) != self.cpus) or (memory is not None and int(memory) != self.memory):
            self.cpus = float(cpus) if cpus is not None else self.cpus
            self.memory = int(memory) if memory is not None else self.memory
            self._reregister = True
            self._report_now.set()

    # ---- supervisor-facing ---------------------------------------------------------------------

    def job_status(self, live: LiveJob) -> dict | None:
        if live.status is None:
            status = spawner.read_json(os.path.join(live.dir, "status.json"))
            if status is not None:
                self._finished(live, status)
        return live.status

    def offer_stream(self, live: LiveJob, out_offset: int, err_offset: int, want_stdin: bool) -> dict:
        stdin_fd = None
        if want_stdin:
            with self.lock:
                stdin_fd, live.stdin_w = live.stdin_w, None  # one client feeds stdin, once
        token = self.stream.offer(str(live.id), live.dir, out_offset=out_offset, err_offset=err_offset,
                                  stdin_fd=stdin_fd, get_status=lambda: self.job_status(live))
        return {"host": self.advertise, "port": self.stream.address[1], "token": token}

    def signal_job(self, live: LiveJob, sig: int, escalate: bool = False) -> bool:
        if self.job_status(live) is not None:
            return True
        pid = self._job_pid(live)
        if pid is None:
            os.makedirs(live.dir, exist_ok=True)  # start() may not have made it yet; _launch copes
            spawner.write_atomic(os.path.join(live.dir, "killreq"), str(sig).encode())
            # the reaper reads killreq right after it records the pid: look again, in case it just did
            pid = self._job_pid(live)
            if pid is None:
                return True
        spawner._killpg(pid, sig)
        if sig == signal.SIGCONT:
            return True
        spawner._killpg(pid, signal.SIGCONT)  # a stopped job must wake up to die
        if escalate and sig != signal.SIGKILL:
            timer = threading.Timer(KILL_GRACE_SECS, self._kill_hard, (live, pid))
            timer.daemon = True
            timer.start()
        return True

    def _kill_hard(self, live: LiveJob, pid: int) -> None:
        # The group even when its leader has ended: members that ignored the signal (a
        # non-interactive shell's `cmd &` ignores SIGINT) would outlive a killed job. The group id
        # cannot name another group within the grace period unless the pid space wrapped around.
        spawner._killpg(pid, signal.SIGKILL)

    def _job_pid(self, live: LiveJob) -> int | None:
        if live.pid is None:
            live.pid = spawner.read_pid_file(live.dir)[1]
        return live.pid

    def mark_fetched(self, live: LiveJob) -> None:
        if not live.fetched:
            live.fetched = True
            # so a restarted node does not keep fetched output for the whole output_keep
            self._ack("f", [live])

    # ---- acks.log: which finished jobs the master acknowledged, which outputs were fetched ------

    def _ack(self, kind: str, lives: list) -> None:
        data = "".join(f"{kind} {l.id} {int(l.job.get('attempt') or 1)}\n" for l in lives).encode()
        try:
            with self._acks_lock:
                fd = os.open(self._acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        except OSError:
            log.exception("cannot write %s", self._acks_path)

    def _load_acks(self) -> dict[tuple[int, int], set]:
        """(job id, attempt) -> {"r", "f"}, for the jobs whose spool is still here; the log is then
        rewritten with only those, so it never grows with the node's history."""
        acks: dict[tuple[int, int], set] = {}
        try:
            with open(self._acks_path, "rb") as f:
                for line in f:
                    words = line.split()
                    if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
                        acks.setdefault((int(words[1]), int(words[2])), set()).add(words[0].decode())
        except OSError:
            return acks
        acks = {k: v for k, v in acks.items() if os.path.isdir(os.path.join(self.jobs_dir, str(k[0])))}
        self._rewrite_acks(acks)
        return acks

    def _rewrite_acks(self, acks: dict) -> None:
        tmp = self._acks_path + ".tmp"
        with self._acks_lock:
            with open(tmp, "w") as f:
                f.writelines(f"{kind} {i} {a}\n" for (i, a), kinds in acks.items() for kind in sorted(kinds))
            os.rename(tmp, self._acks_path)

    def _compact_acks(self) -> None:
        """Past ACKS_COMPACT_BYTES, acks.log is rewritten with the jobs still held (so it stays
        proportional to the spool, not to every job this node ever ran)."""
        try:
            if os.path.getsize(self._acks_path) < ACKS_COMPACT_BYTES:
                return
        except OSError:
            return
        with self._acks_lock:  # an ack appended meanwhile had set its flag first: it is in the snapshot
            with self.lock:
                acks = {(l.id, int(l.job.get("attempt") or 1)): {k for k, on in (("r", l.reported), ("f", l.fetched)) if on}
                        for l in self.live.values() if l.reported or l.fetched}
            self._rewrite_acks(acks)

    # ---- completion ----------------------------------------------------------------------------

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
        self._report_now.set()

    def _close_stdin(self, live: LiveJob) -> None:
        for attr in ("stdin_r", "stdin_w"):
            fd = getattr(live, attr)
            if fd is not None:
                setattr(live, attr, None)
                os.close(fd)

    def _notify_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.notify_sock.recv(1 << 16).decode(errors="replace")
            except OSError:
                return
            for message in data.split("\n"):  # a reaper sends the ends of several jobs in one datagram
                try:
                    self._notified(message)
                except Exception:  # the loop must outlive one bad message
                    log.exception("notify message %r", message[:200])

    def _notified(self, message: str) -> None:
        what, _, rest = message.partition(" ")
        job_id, _, rest = rest.partition(" ")
        live = self.live.get(int(job_id)) if job_id.isdigit() else None
        if live is None:
            return
        if what == "started":  # "started <id> <pid>"
            with self.lock:
                if rest.isdigit() and live.pid is None:
                    live.pid = int(rest)
                if live.stdin_r is not None:
                    os.close(live.stdin_r)
                    live.stdin_r = None
        elif what == "finished":  # "finished <id> <status json>", as written to status.json
            try:
                status = json.loads(rest) if rest else None
            except ValueError:
                status = None
            if isinstance(status, dict):
                self._finished(live, status)
            else:
                self.job_status(live)

    def _check_jobs(self) -> None:
        """The fallback for lost pings: status files, and reapers that died without writing one."""
        self._watch_reaper()
        for live in list(self.live.values()):
            if live.status is not None or live.pid in self._orphans or self.job_status(live) is not None:
                continue
            if self._reaper_gone(live) and self.job_status(live) is None:  # it may have finished in between
                self._supervisor_vanished(live, "job supervisor vanished")

    def _reaper_gone(self, live: LiveJob) -> bool:
        """Whether the job was started by a reaper that has died, one that was not ours (ours are
        settled by _watch_reaper, which can still wait for their jobs)."""
        if os.path.exists(os.path.join(live.dir, "supervisor.pid")):  # a grun from before the reaper
            return not supervisor_alive(live.dir)
        claimed, _pid, lock = spawner.read_pid_file(live.dir)
        if not claimed or lock is None:
            return False  # not started yet, or being started
        owner = lock.split(".", 1)[0]
        if owner.isdigit() and int(owner) in self._reaper_pids:
            return False
        return not spawner.reaper_alive(os.path.join(self.reapers_dir, lock))

    def _supervisor_vanished(self, live: LiveJob, why: str) -> None:
        """The reaper died without writing the job's status. If the host rebooted since the job
        started, the job died with it: report it lost (the master may run it again). Otherwise the
        job may still run: end it, and report a failure (running it again could run it twice)."""
        marker = os.path.join(live.dir, "supervisor.pid")
        if not os.path.exists(marker):
            marker = os.path.join(live.dir, "pid")
        if _rebooted_since(marker):
            self._finished(live, {"exit_code": 255, "signal": None, "lost": True, "end_time": time.time(),
                                  "error": f"{why}: the host rebooted"})
            return
        _kill_orphan_group(live.dir)
        self._finished(live, {"exit_code": 255, "signal": None, "error": why, "end_time": time.time()})

    # ---- the master conversation ---------------------------------------------------------------

    def _master_loop(self) -> None:
        master = None
        registered = False
        next_beat = 0.0
        linger = None  # None: keep the connection; else close it after this long without a call
        last_call = time.monotonic()
        while not self._stop.is_set():
            try:
                if master is None:
                    master = registry.proxy(registry.master_uri(self.master_host, self.master_port))
                if not registered or self._reregister:
                    self._reregister = False
                    reply = self._register(master)
                    registered, linger, last_call = True, _linger(reply), time.monotonic()
                    next_beat = time.monotonic() + self._beat_interval(reply)
                if self._send_reports(master):
                    last_call = time.monotonic()
                if time.monotonic() >= next_beat:
                    self._check_jobs()
                    reply = master.heartbeat(self.name, self._load())
                    registered, linger, last_call = bool(reply.get("known")), _linger(reply), time.monotonic()
                    self.kill_stale(reply.get("stale", []))
                    next_beat = time.monotonic() + self._beat_interval(reply)
                if linger is not None and time.monotonic() - last_call >= linger:
                    registry.reset(master)  # a big cluster's master has a thread per open connection
                self._register_names()
            except Exception as exc:
                if not registry.is_unreachable(exc):
                    log.exception("talking to the master")
                else:
                    log.debug("master unreachable: %s", exc)
                if master is not None:
                    registry.reset(master)
                master, registered = None, False
                self._stop.wait(1.0)
                continue
            self._report_now.wait(min(1.0, self.heartbeat_secs, linger if linger is not None else 1.0))
            self._report_now.clear()

    def _held(self) -> dict:
        """The jobs we hold, for the master to reconcile with: running ones, and finished ones it has
        not acknowledged yet; with the launch count they were taken at."""
        with self.lock:  # copies we were told are stale do not count as the job's
            running = [l.id for l in self.live.values() if l.status is None and not l.superseded]
            finished = [l.id for l in self.live.values() if l.status is not None and not l.reported
                        and not l.superseded]
            return {"running": running, "finished": finished, "incarnation": self.incarnation,
                    "seq": self.launch_seq}

    def _beat_interval(self, reply: dict) -> float:
        """Our own interval, or the longer one a master with many nodes asks for (it keeps the sum
        of all nodes' heartbeats bounded); a bad value in the reply counts as none."""
        try:
            wanted = float(reply.get("heartbeat") or 0)
        except (TypeError, ValueError):
            wanted = 0.0
        if not math.isfinite(wanted):
            wanted = 0.0
        return max(self.heartbeat_secs, min(wanted, 3600.0))

    def _register(self, master) -> dict:
        reply = master.register_node({"name": self.name, "uri": self.uri, "cpus": self.cpus,
                                      "memory": self.memory, **self._held(), **self._describe()})
        # jobs dispatched to us whose start never arrived (we, or the master, restarted meanwhile)
        missing = [j for j in reply.get("start", []) if int(j["id"]) not in self.live]
        if missing:
            self.start(missing)
        # a kill the master accepted while it had no link to us (we or it restarted) arrives only here
        for job_id, sig in reply.get("kill", {}).items():
            live = self.live.get(int(job_id))
            if live is not None:
                self.signal_job(live, int(sig), escalate=True)
        self.kill_stale(reply.get("stale", []))
        self._ns_queue.append((registry.node_name(self.name), self.uri))  # once per registration, not per job
        log.info("registered with the master at %s:%s", self.master_host, self.master_port)
        return reply

    def _send_reports(self, master) -> bool:
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
            reports = [dict(l.status, id=l.id, attempt=l.job.get("attempt")) for l in todo]
            acked = set(master.finished(self.name, reports))
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
            more = bool(self._unreported) and len(todo) == REPORT_BATCH
        if more:
            self._report_now.set()
        return True

    def _register_names(self) -> None:
        if not self._ns_queue:
            return
        batch, self._ns_queue = self._ns_queue, []
        try:
            with registry.locate_ns(self.master_host, self.master_port) as ns:
                for name, uri in batch:
                    if uri is None:
                        ns.remove(name)
                    else:
                        ns.register(name, uri)
        except Exception as exc:
            log.debug("name server: %s", exc)
            if len(batch) < 100000:
                self._ns_queue[:0] = batch

    def _load(self) -> dict:
        held = self._held()
        return {"running": held["running"], "seq": held["seq"], "incarnation": self.incarnation,
                "load": os.getloadavg()[0], "available_memory": psutil.virtual_memory().available // 2**20,
                **self._load_extra()}

    # ---- the spool -----------------------------------------------------------------------------

    def _adopt(self) -> None:
        self._acks = self._load_acks()
        for entry in os.listdir(self.jobs_dir):
            if entry.isdigit():
                try:
                    self._adopt_one(os.path.join(self.jobs_dir, entry))
                except Exception:
                    log.exception("cannot adopt job spool %s", entry)
        self._acks = {}
        self._sweep_reaper_locks()
        if self.live:
            log.info("re-adopted %d jobs from the spool", len(self.live))

    def _sweep_reaper_locks(self) -> None:
        """Lock files of reapers that have ended (a live reaper holds its own locked)."""
        try:
            names = os.listdir(self.reapers_dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.reapers_dir, name)
            if not name.startswith(".") and not spawner.reaper_alive(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _adopt_one(self, job_dir: str, live: LiveJob | None = None) -> None:
        job = spawner.read_json(os.path.join(job_dir, "job.json"))
        if not isinstance(job, dict):
            shutil.rmtree(job_dir, ignore_errors=True)
            if live is not None:
                raise RuntimeError("its spool was unreadable; removed")
            return
        registered = live is not None  # by start(), for a job whose spool survived our restart
        if live is None:
            live = LiveJob(int(job["id"]), job_dir, job)
        else:
            live.job = job
        acks = getattr(self, "_acks", None)
        if acks is None:
            acks = self._load_acks()
        kinds = acks.get((live.id, int(job.get("attempt") or 1)), set())
        if os.path.exists(os.path.join(job_dir, "reported")) or os.path.exists(os.path.join(job_dir, "fetched")):
            kinds = kinds | {k for k, f in (("r", "reported"), ("f", "fetched"))
                             if os.path.exists(os.path.join(job_dir, f))}  # a grun from before acks.log
        live.reported, live.fetched = "r" in kinds, "f" in kinds
        if not registered:
            with self.lock:
                self._register_job(live)
        if self.job_status(live) is not None:
            return
        if os.path.exists(os.path.join(job_dir, "supervisor.pid")):  # a grun from before the reaper
            if not supervisor_alive(job_dir) and self.job_status(live) is None:
                self._supervisor_vanished(live, "job supervisor vanished while the node was down")
            return
        claimed, pid, _lock = spawner.read_pid_file(job_dir)
        live.pid = pid
        if not claimed:
            # written but never started, or an earlier reaper still has it in its pipe: the O_EXCL
            # claim of `pid` makes a second start a no-op
            if not live.reported:
                self._spawn(live)
        elif self._reaper_gone(live) and self.job_status(live) is None:
            self._supervisor_vanished(live, "job supervisor vanished while the node was down")

    def _janitor_loop(self) -> None:
        while not self._stop.wait(min(JANITOR_SECS, max(0.5, self.output_keep / 4))):
            try:
                self._check_jobs()
                self._sweep()
                self._compact_acks()
            except Exception:
                log.exception("janitor")

    def _sweep(self) -> None:
        now = time.time()
        for live in list(self.live.values()):
            if live.status is None or not live.reported:
                continue
            if live.fetched or now - live.finished_at > self.output_keep:
                self._forget(live)

    def _forget(self, live: LiveJob) -> None:
        with self.lock:
            current = self.live.get(live.id) is live
            if current:
                self.live.pop(live.id, None)
            self._close_stdin(live)
        if current:  # (a newer run of the same job keeps its name and its spool)
            self._unregister_job(live.id)
            shutil.rmtree(live.dir, ignore_errors=True)

    def shutdown(self) -> None:
        self._stop.set()
        self._report_now.set()
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
        if self.forkserver is not None:
            try:
                self.forkserver.stdin.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=3)
