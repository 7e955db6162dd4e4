"""The jobs of one node, from their start until the node forgets them: a mixin of the node actor (grun.actors.node.Node
provides the settings, `advertise`, `daemon`, `stream`, `monitor`, `_stop` and `_report_now`). The node's reaper
(grun.spawner) starts and waits for each job; its end comes back as a ping on the node's unix socket, or else in its
status file (grun.spool). A job outlives its reaper (_reaperless, invariant 3) and the node (Node._adopt)."""

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import Pyro5.api

from .. import auth, limits, registry, spawner, spool, stage
from ..core.jobs import ENDING_SIGNALS
from ..drain import Drain
from ..tables import fmt_span
from .monitor import node_memory_victim, over_memory_limit
from .supervisor import JobSupervisor

log = logging.getLogger("grun.node")

KILL_GRACE_SECS = 5.0
START_POLL_SECS = 0.5  # how often a kill sent before its job started looks for the job's pid (its grace starts there)
SET_UP_WAIT_SECS = 5.0  # how long an attach waits for a job taken a moment ago to have its spool directory


@dataclasses.dataclass(eq=False)
class LiveJob:
    """One job on this node, from its start until the node forgets it."""
    id: int
    dir: str
    job: dict
    status: dict | None = None
    reported: bool | float = False  # the master has acknowledged its end (when, unless re-adopted so)
    fetched: bool = False          # a client has read its whole output
    delivered: bool = False        # a client has its staged outputs (fetched: too)
    tried: bool = False            # a client failed to fetch its staged outputs: its end is reported all the same
    stdin_w: int | None = None     # our end of the job's stdin FIFO, until a client takes it
    stdin_r: int | None = None     # held until the job has opened the FIFO, so early writes cannot fail
    unfed: float | None = None     # when its input ends if no client has taken stdin_w (input_wait); 0: it did
    superseded: bool = False       # the master re-ran it elsewhere (or ended it): this copy is killed
    pid: int | None = None         # the job's pid (and session), once its reaper started it
    reaper: str | None = None      # the name (grun.spool.process_name) of the reaper it was sent to, or claimed by
    unsure: bool = False           # adopted unclaimed: an earlier reaper may claim it, its pid file names who did
    settling: bool = False         # its reaper died, its end is being recorded (_end_orphan)
    kills: set = dataclasses.field(default_factory=set)  # signals it was sent as kills
    limit: dict | None = None      # what the sampler is killing it for, as limit.json ({limit, limit_detail})
    deadline: float | None = None  # when its time limit runs out
    warned: bool = False           # it got its --time-signal (not known after a restart of ours: it may get it again)
    peak_rss_mb: int = 0           # the largest sum of its processes' memory the sampler saw (see _finished)
    stage: object = None           # its grun.stage.Staged, when its files are staged
    set_up: threading.Event = dataclasses.field(default_factory=threading.Event)  # its directory, stdin and drain exist

    @property
    def attempt(self) -> int:
        return int(self.job.get("attempt") or 1)


@Pyro5.api.expose
class NodeJobs:
    def _init_jobs(self, spool_dir: str) -> None:
        self.jobs_dir, self.acks = os.path.join(spool_dir, "jobs"), spool.Acks(spool_dir, self._acked)
        spool.make_dir(self.jobs_dir, 0o755)
        self.lock = threading.RLock()
        self.live: dict[int, LiveJob] = {}
        self._later, self._later_acks = {}, {}  # ended jobs the master has, read once we serve (Node._adopt_later)
        self._unreported: collections.deque[LiveJob] = collections.deque()  # ended, not yet acknowledged
        # our reaper (a Popen) and its name, and whether one died (see _watch_reapers)
        self.reaper, self._reaper_name, self._reaper_died, self._reaper_lock = None, "", False, threading.RLock()
        spawner.set_subreaper()
        # where the reapers ping: a file in our spool, which only we can make (any user could take an abstract name)
        self.notify_addr = os.path.join(os.path.abspath(spool_dir), "notify")
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # who sent each ping: the kernel says
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:  # (not ours: connecting binds one with SO_PASSCRED)
            if probe.connect_ex(spool.socket_addr(self.notify_addr)) == 0:  # (a dead node's refuses)
                raise OSError(f"another node daemon uses the spool {spool_dir}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_addr)  # a node's that was killed
        self.notify_sock.bind(spool.socket_addr(self.notify_addr))
        self.drain = Drain(lambda: self.spool_max << 20, lambda key: self.stream.wake(key), self._stop)

    def job_status(self, live: LiveJob) -> dict | None:
        if live.status is None and (status := spool.read(live.dir, spool.STATUS)) is not None:
            self._finished(live, status)
        return live.status

    def offer_stream(self, live: LiveJob, out_offset: int, err_offset: int, want_stdin: bool) -> dict:
        """A ticket to the job's output, from the offsets asked or the first bytes still held (the ticket says
        where: the client tells its user what was delivered before). Not before _launch made its stdin and drain:
        the master may count the job as running (our heartbeat lists it) before, and the input would go nowhere."""
        if not live.set_up.wait(SET_UP_WAIT_SECS):
            raise ConnectionError(f"job {live.id} is not set up on this node yet")  # (the client asks again)
        with self.lock:  # one client feeds stdin, once: the FIFO's write end is the stream's now
            stdin_fd, live.stdin_w = (live.stdin_w, None) if want_stdin else (None, live.stdin_w)
        output = self.drain.outputs.get(str(live.id))  # (None: not started, its inputs still coming)
        ended = f"its input had already been ended: no grun fed it within {self.input_wait:g} s of its start"
        token = self.stream.offer(str(live.id), live.dir, out_offset=out_offset, err_offset=err_offset,
                                  stdin_fd=stdin_fd, get_status=lambda: self.job_status(live), output=output,
                                  by_user=isinstance(auth.caller(), dict), note=ended if live.unfed == 0 else None)
        if output is not None:
            out_offset, err_offset = output.held_from(out_offset, err_offset)  # (the offer started there)
        return {"host": self.advertise, "port": self.stream.address[1], "token": token,
                "out_offset": out_offset, "err_offset": err_offset}

    def mark_fetched(self, live: LiveJob, what: str = "all") -> None:
        """A client has the job's whole output ("all"), its staged outputs ("outputs": its work dir goes now, copies of
        private files too; its output stays), or failed to fetch them ("tried"); its end is held no more (Staged.holds)."""
        live.tried |= what == "tried"
        if what == "outputs" and live.stage and live.status is not None and not live.delivered:  # (not under it)
            live.delivered = True
            self._ack("s", [live])
            spool.remove(live.stage.work, self.jobs_dir)
        elif what == "all" and not live.fetched:
            live.fetched = live.delivered = True
            self._ack("f", [live])  # so a restarted node does not keep fetched output for output_keep
        self._report_now.wake()  # (a staged job's end, held until now: Staged.holds)

    def _sample(self) -> None:
        """Every SAMPLE_SECS: take over the jobs whose reaper died, measure the running ones, enforce their limits;
        short of memory, kill the job furthest over its reservation, unless one killed for memory is on its way out."""
        self._watch_reapers()
        running = {l.id: l for l in list(self.live.values()) if l.status is None and not l.settling and self._job_pid(l)}
        usage = self.monitor.sample({job_id: live.pid for job_id, live in running.items()})
        rss, now = {job_id: usage.get(job_id, {}).get("rss_mb", 0) for job_id in running}, time.time()
        for job_id, live in running.items():
            live.peak_rss_mb = max(live.peak_rss_mb, rss[job_id])
            self._enforce(live, rss[job_id], now)
            if live.stdin_w is not None:
                self._end_unfed(live, now)
        dying = any((l.limit or {}).get("limit") == "memory" and l.status is None for l in running.values())
        victim = None if dying else node_memory_victim(
            {i: (rss[i], int(l.job.get("memory") or 0)) for i, l in running.items() if l.status is None},
            self.monitor.available_mb, self.min_free_memory)
        if victim:
            self._limit_kill(running[victim[0]], "memory", victim[1])

    def _limit_kill(self, live: LiveJob, limit: str, why: str, sig: int = signal.SIGTERM) -> None:
        """Kill the job for a limit (a memory limit with KILL), and record why (its reaper reads it into its status)."""
        live.limit = {"limit": limit, "limit_detail": why}
        with contextlib.suppress(OSError):  # where its stderr goes (sbatch's -o: its shell's own), for its reaper's
            live.limit["stderr"] = os.readlink(f"/proc/{live.pid}/fd/2")  # line saying why (spawner._tell)
        spool.write(live.dir, spool.LIMIT, live.limit)  # (a full disk may refuse it: then _finished adds it)
        log.warning("job %s: killed for %s: %s", live.id, limit, why)
        self._kill(live, signal.SIGKILL if limit == "memory" else sig, grace=self.kill_grace)

    def _enforce(self, live: LiveJob, rss_mb: int, now: float) -> None:
        """Kill the job over its memory limit (-m x hard_factor) at once; past its time limit (-t), TERM then KILL
        after kill_grace (again after a restart of ours: `limit` comes from limit.json); its --time-signal before."""
        limits = live.job.get("limits") or {}
        why = over_memory_limit(rss_mb, limits)
        if why and live.status is None and live.limit is None:
            self._limit_kill(live, "memory", why)
        if not limits.get("time") or live.status is not None:
            return
        if live.deadline is None:
            live.deadline = (spool.started_at(live.dir) or now) + limits["time"]
        sig, secs = live.job.get("time_signal") or (0, 0)
        at_limit = sig == signal.SIGKILL and not secs  # (qsub's h_rt) the limit kill sends it, once it has read fd 2's
        if sig and not at_limit and not live.warned and live.limit is None and now >= live.deadline - secs:  # path
            live.warned = spawner.killpg(live.pid, sig)  # (for the reaper's line saying why: a KILL before lost it)
        if now >= live.deadline and live.limit is None:
            how = "KILL" if at_limit else f"TERM, then KILL after {self.kill_grace:g} s"
            self._limit_kill(live, "time", f"ran past its time limit of {fmt_span(limits['time'])}: {how}",
                             signal.SIGKILL if at_limit else signal.SIGTERM)
        elif (live.limit or {}).get("limit") == "time" and now >= live.deadline + self.kill_grace + 1:
            spawner.killpg(live.pid, signal.SIGKILL)  # its TERM was sent before we restarted

    def _end_unfed(self, live: LiveJob, now: float) -> None:
        """A run nobody feeds (its grun killed, or gone at a re-queue) sees its input end (EOF, as a Slurm batch step's
        /dev/null) input_wait after its start, instead of waiting for ever on its cpus; a client that took it is never
        cut. 60 s by default: a grun attaches within seconds of the start, and an unclaimed offer lives as long."""
        live.unfed = live.unfed or (spool.started_at(live.dir) or now) + self.input_wait
        with self.lock:
            if now >= live.unfed and live.stdin_w is not None:  # (not taken meanwhile)
                self._close_stdin(live, ("stdin_w",))
                live.unfed = 0
                log.info("job %s: no client fed its input within %g s of its start: ended", live.id, self.input_wait)

    def suspend(self, job_ids: list) -> dict:
        """SIGSTOP each running job (all its session: spawner.killpg); {id: done}."""
        return self._signal_groups(job_ids, signal.SIGSTOP, "suspend")

    def resume(self, job_ids: list) -> dict:
        """SIGCONT each suspended job; {id: done}."""
        return self._signal_groups(job_ids, signal.SIGCONT, "resume")

    def _signal_groups(self, job_ids: list, sig: int, what: str) -> dict:
        auth.require(f"{what} jobs on a node (ask the master)")
        out = dict.fromkeys(map(str, job_ids), False)
        for job_id in out:
            if (live := self.live.get(int(job_id))) and self.job_status(live) is None and (pid := self._job_pid(live)):
                out[job_id] = spawner.killpg(pid, sig)
        return out

    def _register_job(self, live: LiveJob) -> None:
        self.live[live.id] = live
        self.daemon.register(JobSupervisor(self, live.id), registry.job_name(live.id))

    def _launch(self, live: LiveJob) -> None:
        data = json.dumps(live.job)
        try:
            fifo = spool.create(live.dir, live.job, data)
        except FileExistsError:
            return self._adopt_one(live.dir, live)  # we restarted since we started it
        live.stdin_r, live.stdin_w = fifo or (None, None)
        self.drain.add(str(live.id), live.dir)
        live.set_up.set()
        self._spawn(live, data)

    def _kill(self, live: LiveJob, sig: int, once: bool = False, grace: float = KILL_GRACE_SECS) -> bool:
        """Signal the job (spawner.killpg), then SIGKILL it after `grace` seconds. `once`: unless sent before (the
        master repeats its kills until the job ends: a repeat neither signals again nor restarts the escalation)."""
        with self.lock:
            if once and sig in live.kills:
                return True
            live.kills.add(sig)
        if live.settling or self.job_status(live) is not None or live.stage and live.stage.fail(
                f"killed (signal {sig}) while staging", sig):
            return True
        asked = self._job_pid(live) is not None or spool.write(live.dir, spool.KILL, {"signal": sig})
        if (pid := self._job_pid(live)) is not None:  # (looked again, in case it just did)
            spawner.killpg(pid, sig)
        elif not asked:  # a full spool disk: neither sent nor asked for; the master's next repeat does it all
            with self.lock:
                live.kills.discard(sig)
            return True
        if sig == signal.SIGKILL or sig not in ENDING_SIGNALS:  # (KILL ends a stopped job too; USR1 ends nothing:
            return True  # it was followed by a KILL a grace later, and woke a suspended job)
        if pid is not None:
            spawner.killpg(pid, signal.SIGCONT)  # a stopped job must wake up to die

        def escalate(started: bool) -> None:
            # Once a job's leader has ended, its reaper killed what was left of the group (spawner.end_job) before
            # freeing the group id: only a job still running (not forgotten, not being settled: its pid is reaped)
            # is killed here. One not started at the kill gets `sig` from its reaper when it is (killreq), and
            # the master's repeats are not sent: its KILL comes a whole grace after its pid was first seen.
            while True:
                time.sleep(grace if started else START_POLL_SECS)
                if self.live.get(live.id) is not live or live.settling or self.job_status(live) is not None:
                    return
                if started:
                    return spawner.killpg(live.pid, signal.SIGKILL)
                started = self._job_pid(live) is not None
        threading.Thread(target=escalate, args=(pid is not None,), name=f"grun-kill-{live.id}", daemon=True).start()
        return True

    def _job_pid(self, live: LiveJob) -> int | None:
        if live.pid is None:
            live.pid = spool.read_pid(live.dir)[1]
        return live.pid

    def _finished(self, live: LiveJob, status: dict) -> None:
        with self.lock:
            if live.status is not None:
                return
            if live.limit is not None and not status.get("limit"):  # (not its "stderr": the reaper's, not the job's)
                status = {**status, "limit": live.limit["limit"], "limit_detail": live.limit.get("limit_detail")}
            if live.stage is not None:
                status = live.stage.ended(status)
            if (usage := status.get("usage")) and live.peak_rss_mb << 10 > usage.get("maxrss_kb", 0):
                # wait4's maxrss is the largest single process; the memory limit and Slurm's MaxRSS count the
                # job's processes together. A sampled sum is a lower bound of the true peak: no "at most".
                usage = {k: v for k, v in usage.items() if k != "maxrss_at_most"}
                status = {**status, "usage": {**usage, "maxrss_kb": live.peak_rss_mb << 10}}
            live.status = dict(status, superseded=True) if live.superseded else status
            live.set_up.set()  # (ended unlaunched: a failed start or staging; its end is what an attach gets)
            self._close_stdin(live)
            self.drain.finish(str(live.id))
            if not live.reported:
                self._unreported.append(live)
        self.stream.wake(str(live.id))
        self._report_now.wake()

    def _close_stdin(self, live: LiveJob, ends: tuple = ("stdin_r", "stdin_w")) -> None:  # under the lock
        for end in ends:
            if (fd := getattr(live, end)) is not None:
                os.close(fd)
            setattr(live, end, None)

    def _forget(self, live: LiveJob) -> None:
        with self.lock:
            current = self.live.get(live.id) is live
            if current:
                del self.live[live.id]
            self._close_stdin(live)
        if current:  # (a newer run of the same job keeps its name and its spool)
            self.drain.forget(str(live.id))
            with contextlib.suppress(Exception):
                self.daemon.unregister(registry.job_name(live.id))
            spool.remove(live.dir)

    def _ack(self, kind: str, lives: list) -> None:
        try:
            self.acks.add(kind, [(live.id, live.attempt) for live in lives])
        except OSError as exc:  # (a full disk: the master is told of an end again after a restart of ours)
            log.warning("cannot write %s: %s", self.acks.path, exc)

    def _acked(self) -> dict:
        with self.lock:  # (and those of the ended jobs not read yet: Node._adopt_later)
            return {**{k: v for k, v in self._later_acks.items() if k[0] in self._later},
                    **{(l.id, l.attempt): {k for k, on in (("r", l.reported), ("f", l.fetched), ("s", l.delivered))
                                           if on} for l in self.live.values() if l.reported or l.delivered}}

    def _on_ping(self) -> None:
        """One datagram from a reaper: `started <id> <pid>`, `finished <id> [<status json>]` lines, and
        `unwritten <id> <status json>` for an end its status.json could not be written for (yet)."""
        try:
            data, extra, _, _ = self.notify_sock.recvmsg(1 << 16, socket.CMSG_SPACE(12))
        except OSError:
            if not self._stop.is_set():
                raise
            return
        if not data and self._stop.is_set():  # shutdown() wakes recvmsg with an empty read, from no sender
            return
        sender = next((auth.peer_ids(d) for lvl, kind, d in extra if kind == socket.SCM_CREDENTIALS), (0, -1, -1))
        if sender[1] != os.geteuid():  # only our reapers may say that a job started or ended
            log.warning("ignored a ping from pid %s, uid %s: not a reaper of this node", *sender[:2])
            return
        for message in data.decode(errors="replace").split("\n"):
            what, _, rest = message.partition(" ")
            job_id, _, rest = rest.partition(" ")
            if not job_id.isdigit() or (live := self.live.get(int(job_id))) is None:
                continue
            if what == "started":
                with self.lock:
                    if rest.isdigit() and live.pid is None:
                        live.pid = int(rest)
                    self._close_stdin(live, ("stdin_r",))  # (the job has it open: its FIFO's writes cannot fail)
            elif what in ("finished", "unwritten"):
                if what == "unwritten" and live.status is None:  # (its reaper tries again, and tells us each time)
                    log.warning("job %s: ended, but the spool disk is full: its status.json is not written yet", job_id)
                try:
                    self._finished(live, json.loads(rest))
                except ValueError:
                    self.job_status(live)  # its status.json then

    def _check_jobs(self) -> None:
        """The fallback for lost pings: status files; and who claimed an `unsure` job (its pid file: 12 us)."""
        for live in list(self.live.values()):
            if self.job_status(live) is None and live.unsure and (reaper := spool.read_pid(live.dir)[2]):
                live.reaper, live.unsure = reaper, False

    def _end_failed(self, live: LiveJob, why: str, **more) -> None:
        self._finished(live, {"exit_code": 255, "signal": None, "error": why, "end_time": time.time(), **more})

    def _spawn(self, live: LiveJob, job_json: str | None = None) -> None:
        line = f"{live.dir}\t{self.notify_addr}\t{job_json or ''}\n".encode()
        with self._reaper_lock:
            for _ in range(2):
                if self._no_reaper():
                    self.reaper = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE,
                                                   start_new_session=True, close_fds=True)
                    self._reaper_name = spool.process_name(self.reaper.pid) or "?"  # ("?": it died at once)
                with contextlib.suppress(OSError):  # (it died: start another)
                    live.reaper = self._reaper_name
                    self.reaper.stdin.write(line)
                    self.reaper.stdin.flush()
                    return
            raise RuntimeError("cannot start the reaper")

    def _no_reaper(self) -> bool:
        """Whether we have no reaper: none yet, or it died (its jobs are then settled by _watch_reapers)."""
        with self._reaper_lock:
            if self.reaper is not None and self.reaper.poll() is not None:
                log.warning("the reaper (pid %s) died (%s); its running jobs are now waited for by the node",
                            self.reaper.pid, self.reaper.returncode)
                self.reaper, self._reaper_died = None, True
            return self.reaper is None

    def _watch_reapers(self) -> None:
        """The jobs whose reaper died, ours or an earlier node life's (_reaperless)."""
        with self._reaper_lock:
            ours = None if self._no_reaper() else self._reaper_name
            alive = functools.cache(spool.reaper_alive)  # (a look at /proc per other reaper, not per job)
            for live in list(self.live.values()):
                if live.status is None and not live.settling and live.reaper not in (None, ours) and not alive(live.reaper):
                    self._reaperless(live)
            if self._reaper_died:  # what orphaned jobs leave behind in the background is ours now too: reap it,
                # never our reaper (an earlier one was reaped by its poll) nor a job (_reaperless waits for those)
                keep = {self.reaper and self.reaper.pid, *(l.pid for l in self.live.values())}
                with contextlib.suppress(ChildProcessError):
                    while (info := os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)) and (
                            info.si_pid not in keep):
                        os.waitpid(info.si_pid, os.WNOHANG)

    def _reaperless(self, live: LiveJob, why: str = "job supervisor vanished") -> None:
        """The job's reaper died. Unclaimed, the job goes to the next reaper; claimed by another, that one is watched;
        started, it is waited for here if it is our child now (its reaper was ours; we are a subreaper). Else its
        status was never written: if the host rebooted since it started, or the job is gone too (an OOM kill of their
        cgroup), it died unrecorded: reported lost (the master may run it again); else it may still run: it is ended
        and reported failed (else it might run twice)."""
        claimed, pid, reaper = spool.read_pid(live.dir)
        if not claimed:
            return self._spawn(live)
        unnamed = reaper is None  # (a full disk kept its reaper's name from its pid file, and from spool.mark_pid's)
        if unnamed and spool.claim_held(live.dir):  # (its claimant lives, maybe not the one we sent it to)
            return
        if self.job_status(live) is not None:  # (it ended, and said so; read after the claim's lock, which its
            return  # holder lets go of once it has written the end)
        if reaper not in (None, live.reaper):
            live.reaper = reaper
            return
        pid = pid or live.pid  # (its reaper's `started` ping, when a full disk kept the pid from its pid file)
        if pid is not None:
            try:
                ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # not our child: its reaper was not ours, or had waited for it
                ended = False
            if ended is None:  # it runs on, as our child
                live.pid = pid
                return
            if ended:  # as its reaper would have: its output, then its status
                wstatus, rusage = spawner.end_job(pid)
                status = {"start_time": spool.started_at(live.dir) or time.time(),
                          "limits": dict(live.job.get("limits") or {})}
                lost = self.drain.finish(str(live.id), flush=True)
                limits.exit_status(live.dir, live.job, status, wstatus, rusage, time.time(), lost, live.limit)
                return self._end_orphan(live, status)
        started, more = spool.started_at(live.dir), {"lost": True}
        if started is not None and started < psutil.boot_time():
            why += ": the host rebooted"
        elif pid is None or unnamed:  # (unknown to us: below; or its start is: the pid file's mtime is the claim's)
            more = {}
        else:
            try:  # its session, if the pid still names the job's: it may run on (else it died with its reaper)
                if os.getsid(pid) == pid and (job := psutil.Process(pid)).create_time() <= (started or 0) + 1:
                    more = more if job.status() == psutil.STATUS_ZOMBIE else {}  # (a zombie: it ended, unseen)
                    spawner.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, psutil.NoSuchProcess):  # what it left in its session goes, as at any end
                spawner.killpg(pid, signal.SIGKILL)  # (no later process gets its pid while any of its session lives)
            except (psutil.Error, OSError):
                more = {}
            why += ", and its job with it, its end unrecorded" if more else ""
        if pid is None:  # never ran (no output to hide), or its reaper died on a full disk before naming its pid
            why += "; a full spool disk kept its pid from us: it may have run" if unnamed else " while starting the job"
            return self._end_failed(live, why, **more)
        self._end_orphan(live, {"exit_code": 255, "signal": None, "error": why, "end_time": time.time(), **more})

    def _end_orphan(self, live: LiveJob, status: dict) -> None:
        """End a job of a dead reaper as its reaper would have: a failed -M job's outputs hidden, then its status; in a
        thread: the rename may wait for a hung file server (HIDE_SECS), holding up neither the reaper lock (every
        job's start) nor the sampler (memory limits)."""
        def settle() -> None:
            hiding = None
            try:
                hiding = spawner.hide_failed_outputs(live.job, status)
            except (OSError, ValueError) as exc:  # (its user unknown here, or no process to spare)
                log.warning("job %s: cannot rename its failed outputs: %s", live.id, exc)
            if not spool.write_statuses([(live.dir, json.dumps(status))]):  # (reported all the same)
                log.warning("job %s: cannot write its status.json (spool disk full?)", live.id)
            self._finished(live, status)
            if hiding is not None:  # (the rename's child, still stuck on a hung server, perhaps)
                os.close(hiding[1])
                with contextlib.suppress(ChildProcessError):  # (the reaping of what a dead reaper left, maybe: above)
                    os.waitpid(hiding[0], 0)
        live.settling = True
        threading.Thread(target=settle, name=f"grun-settle-{live.id}", daemon=True).start()

    def _adopt_one(self, job_dir: str, live: LiveJob | None = None, acks: dict | None = None) -> None:
        if (job := spool.read(job_dir, spool.JOB)) is None:
            spool.remove(job_dir)
            if live is not None:
                raise RuntimeError("its spool was unreadable; removed")
            return
        if live is None:  # else start() registered it, for a job whose spool survived our restart
            live = LiveJob(int(job["id"]), job_dir, job)
            with self.lock:
                self._register_job(live)
        live.job, live.limit = job, spool.read(job_dir, spool.LIMIT)
        if job.get("stage_home"):  # staged: its inputs came, its outputs may still go back (grun.stage)
            live.stage = stage.Staged(self, live)
        kinds = (acks if acks is not None else self.acks.load(self.jobs_dir)).get((live.id, live.attempt), ())
        live.reported, live.fetched, live.delivered = "r" in kinds, "f" in kinds, bool({"f", "s"} & set(kinds))
        self.drain.add(str(live.id), job_dir)  # (for an ended job too: where its output starts)
        live.set_up.set()
        if self.job_status(live) is not None:
            return
        claimed, _, reaper = spool.read_pid(job_dir)
        if claimed:
            live.reaper = reaper or "?"  # ("?": never alive, so _reaperless names it once its pid file does)
            if not spool.reaper_alive(live.reaper):
                self._reaperless(live, "job supervisor vanished while the node was down")
        elif not live.reported:  # never started, or an earlier reaper has it in its pipe and may claim it first
            live.unsure = True  # (the claim of `pid` makes a second start a no-op)
            self._spawn(live)

