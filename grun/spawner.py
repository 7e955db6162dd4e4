"""The node's reaper (`python -m grun.spawner`): it starts the node's jobs so that they depend on nobody.

The node daemon starts one reaper in a session of its own and sends it, on its stdin, one line per job:
`<job_dir>\\t<notify socket>[\\t<job.json's content>]`. The reaper, single-threaded and long-lived, claims
the job's `pid` file (grun.spool: exactly one reaper ever starts a job), starts it with Popen (vfork + exec)
in its own session, waits for it with SIGCHLD + wait4 (exact usage), writes its `status.json` and pings the
node. It outlives the node daemon, and exits once its input and its last job have ended, their ends written or
forgotten (one that dies: grun.actors.node_jobs). Imports nothing heavy: it starts at node start and after a crash."""

import collections
import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import pwd
import select
import shlex
import signal
import socket
import subprocess
import time

from . import limits as L
from . import make, mounts, spool
from .auth import account
from .gpu import device_env

SHELL = "/bin/sh"
PR_SET_CHILD_SUBREAPER = 36
PING_TIMEOUT = 0.5
PING_BYTES = 60000  # per datagram (the node reads up to 64 KiB)
HIDE_SECS = 5.0  # how long a failed -M job's end waits for its outputs to be renamed (hide_failed_outputs)
OUTPUT_GRACE_SECS = 5.0  # how long a full disk may hold an ended job's last output back without progress

# What Slurm and SGE tell a job that grun knows only when it starts (id; node; array: an array task's array id, else its
# own; cpus, memory, time: as edited since, if set at submit). Their shims set the rest (grun/compat.py); a TMPDIR too.
COMPAT_ENV = {"slurm": {"SLURM_JOB_ID": "id", "SLURM_JOBID": "id", "SLURM_JOB_NODELIST": "node", "SLURMD_NODENAME": "node",
                        "SLURM_CPUS_ON_NODE": "cpus", "SLURM_JOB_CPUS_PER_NODE": "cpus", "SLURM_MEM_PER_NODE": "memory",
                        "SLURM_CPUS_PER_TASK": "task_cpus"}, "sge": {"JOB_ID": "array", "HOSTNAME": "node", "NSLOTS": "cpus",
                                                                       "GRUN_TIME": "time"}}  # (qsub -notify's: h_rt)

# A job this reaper started and waits for (job is None for a job that never started).
# `lock`: its claim's lock (grun.spool.claim), held until its end is written when its pid file is not whole.
_Run = collections.namedtuple("_Run", "id dir job status notify pipes lock", defaults=({}, None))


@dataclasses.dataclass(eq=False)
class _Ending:
    """An ended run whose output still goes to its spool files: wait4's results, its end, and while a full
    disk holds it back, the bytes its pipes held (`level`) and since when."""
    run: _Run
    wstatus: int
    rusage: object
    end: float
    level: float = float("inf")
    since: float = dataclasses.field(default_factory=time.monotonic)
    lost: int = 0
    moved: str = ""  # where the job moved its stderr (Reaper.watched)


def set_subreaper() -> None:
    """Become a child subreaper: orphaned descendants are re-parented to us, not to init."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def killpg(sid: int, sig: int) -> bool:
    """Signal job `sid` (its reaper's setsid made it a session leader) in every process group of its session, those
    a process moved to (setpgid: an interactive shell's jobs, --pty's CMD) too, until a scan of /proc (2-3 ms with
    2,000 processes) finds no new one; what called setsid escapes. Whether any was signalled."""
    done, sent, groups = set(), False, _session_groups(sid)
    while groups:
        for group in groups:
            with contextlib.suppress(OSError):  # (gone, or only processes we may not signal)
                os.killpg(group, sig)
                sent = True
        done |= groups  # (scanned again only where a process moved groups: a scan a job end halved the reaper's jobs/s)
        groups = _session_groups(sid) - done if len(done) > 1 else set()
    return sent


def _session_groups(sid: int) -> set[int]:
    groups = {sid}
    for name in os.listdir("/proc"):
        with contextlib.suppress(ValueError, OSError):
            if os.getsid(pid := int(name)) == sid:
                groups.add(os.getpgid(pid))
    return groups


def end_job(pid: int) -> tuple:
    """A job's main process `pid` has ended, unreaped: SIGKILL what is left of its session (`cmd &`), as Slurm and SGE
    do (a job is over when its main process is: nothing of it runs on unseen). KILL, not TERM and a grace: the end is
    the job's own doing, and the session id is safe only while its leader's zombie holds the pid, until we reap it
    here. Returns its (wait status, rusage), for the reaper and the node (a job of a dead reaper)."""
    killpg(pid, signal.SIGKILL)
    return os.wait4(pid, 0)[1:]


def _identity(job: dict) -> dict:
    """Popen arguments that make the job run as its submitter when the node runs as root."""
    if os.geteuid() != 0 or not (uid := job.get("uid")):  # (None, or root's)
        return {}
    if "groups" in job:  # verified at submit (grun.auth): the user known here by name, the groups and umask proved
        try:
            uid = pwd.getpwnam(job["user"]).pw_uid
        except KeyError:
            raise ValueError(f"user {job['user']} does not exist on node {job.get('node')}") from None
        return {"user": uid, "group": job["gid"], "extra_groups": job["groups"], "umask": job.get("umask", 0o022)}
    gid = job.get("gid", uid)  # (with `sg OTHER`, sg's gid and the passwd's groups, as sg leaves them)
    return {"user": uid, "group": gid, "extra_groups": account(uid, gid)[1], "umask": job.get("umask", 0o022)}  # (claimed)


def wrapped(argv: list[str], job: dict) -> list[str]:
    """The command inside the job's --wrap prefix, inside its node's `wrap:`, at {cmd} (or at the end), quoted
    as one command (a shell line as `sh -c '<line>'`), so `env X=1 {cmd}` takes all of `a; b`."""
    for prefix in filter(None, (job.get("wrap"), job.get("node_wrap"))):
        inner = shlex.join(argv)
        argv = [SHELL, "-c", prefix.replace("{cmd}", inner) if "{cmd}" in prefix else f"{prefix} {inner}"]
    return argv


def _exec_error(exc: OSError, argv: list[str], cwd: str, env: dict) -> tuple[str, int]:
    """The message and exit code a shell would give for a command it cannot run (a missing cwd: 2, usage), saying what
    is wrong: no such file, a missing #! interpreter (DOS line breaks?), no #! line, a command in the cwd without ./."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(cwd):
        return f"cwd {cwd} does not exist on node {env['GRUN_NODE']}", 2
    if exc.filename == cwd:
        return f"cannot change directory to {cwd}: {exc.strerror}", 1
    name, head = argv[0], ""
    dirs = [""] if "/" in name else env.get("PATH", os.defpath).split(":")
    with contextlib.suppress(OSError, StopIteration), open(next(
            p for d in dirs if os.path.isfile(p := os.path.join(cwd, d, name))), "rb") as f:
        head = f.readline(256).decode(errors="replace")
    if exc.errno == errno.ENOENT and head.startswith("#!"):
        dos = ": the script has DOS line breaks (\\r\\n): dos2unix it" if head.endswith("\r\n") else ""
        return f"{name}: its interpreter {head[2:].strip().partition(' ')[0]} not found{dos}", 127
    if exc.errno == errno.ENOENT and not head:
        guess = f" (did you mean ./{name}?)" if "/" not in name and os.path.isfile(os.path.join(cwd, name)) else ""
        return f"{name}: " + ("no such file" if "/" in name else "command not found" + guess), 127
    if exc.errno == errno.ENOEXEC and not head.startswith("\x7fELF"):  # (not a program for another machine)
        return f"{name}: {exc.strerror} (no #! line: add #!/bin/bash, or run it as: grun bash {name})", 126
    return f"{name}: {exc.strerror}", 126


def _own_peak_kb() -> int:
    """Our peak resident memory (VmHWM). Linux counts a child's pre-exec memory (ours, vfork) in its ru_maxrss
    (fs/exec.c, exec_mmap): a job's maxrss at or below this is only an upper bound (usage `maxrss_at_most`).
    Not getrusage: by that same rule our ru_maxrss holds the node daemon's memory when it started us."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _as_user(ident: dict):
    """Act as the job's user, `_identity`'s (the reaper is single-threaded, so switching ids is safe here)."""
    if not ident:
        yield
        return
    groups, mask = os.getgroups(), os.umask(ident.get("umask", 0o022))  # (files it makes: -o/-e, with its umask)
    os.setgroups(ident["extra_groups"] or [ident["group"]])
    os.setegid(ident["group"])
    os.seteuid(ident["user"])
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)
        os.umask(mask)


def hide_failed_outputs(job: dict, status: dict):
    """A failed -M job's outputs become FILE.failed (grun.make.rename_failed), once: by its reaper or, when that died,
    the node (node_jobs._end_orphan: jobs without a status.json). As its user (never root), in a child (glibc switches
    every thread's ids), waited for at most HIDE_SECS (a hung NFS server must not stall the job's end): returns
    _in_child_as's (pid, pipe), the caller's to collect, or None."""
    if not job.get("make") or not (outputs := job.get("outputs")) or not (status.get("exit_code") or status.get("signal")):
        return None
    return _in_child_as(_identity(job), make.rename_failed, outputs, HIDE_SECS)


def _in_child_as(ident: dict, work, args, secs: float) -> tuple[int, int]:
    """Run work(args) in a child as the job's user (`_identity`'s), waiting at most `secs` for it. Returns the
    child's pid and a pipe readable once it has ended (it is then the caller's to collect)."""
    ended, w = os.pipe2(os.O_CLOEXEC)
    if (pid := os.fork()) == 0:
        try:  # nothing of ours stays open in a child a hung server may keep: sockets, pid-file and claim locks
            os.closerange(3, w)
            os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))
            with _as_user(ident):
                work(args)
        finally:
            os._exit(0)
    os.close(w)
    select.select([ended], [], [], secs)
    return pid, ended


_sync_pipe: int | None = None  # the pipe of the last sync child: readable (its end closed) once the child has ended


def _sync_as(ident: dict, paths: list) -> None:
    """mounts.sync in a child as the job's user (a stuck thread would block every later seteuid: glibc waits
    for each thread), within SYNC_SECS; while one is stuck, later syncs are skipped. `reap` collects it."""
    global _sync_pipe
    if _sync_pipe is not None:
        if not select.select([_sync_pipe], [], [], 0)[0]:
            return  # (the last one is still stuck)
        os.close(_sync_pipe)
    _sync_pipe = _in_child_as(ident, mounts.walk, paths, mounts.SYNC_SECS)[1]


def _open_streams(job: dict, job_dir: str, ident: dict, keep: dict) -> tuple:
    """The job's stdin (its FIFO, or /dev/null), stdout and stderr: the write ends of its spool pipes (their read
    ends go into `keep`: see grun.drain), or the files of -o/--err/--out-err, opened as its user in its cwd."""
    files, opened = {"stdin": subprocess.DEVNULL}, {}
    try:
        if job.get("stdin"):  # (its FIFO: the node holds the write end, so this neither blocks nor sees EOF)
            files["stdin"] = os.fdopen(spool.open_in(job_dir, "stdin", os.O_RDONLY), "rb")
        for stream in spool.STREAMS:
            if not (name := job.get(f"{stream}_file")):
                keep[stream], write = spool.open_pipe(job_dir, stream)
                files[stream] = os.fdopen(write, "wb")
            elif (path := os.path.normpath(os.path.join(job["cwd"], name))) in opened:
                files[stream] = opened[path]
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if job.get(f"{stream}_append") else os.O_TRUNC)
                with _as_user(ident):
                    files[stream] = opened[path] = os.fdopen(os.open(path, flags, 0o666), "ab")
    except OSError:
        _close(*files.values(), *keep.values())
        keep.clear()
        raise
    return files["stdin"], files["stdout"], files["stderr"]


def _tell(job_dir: str, job: dict, text: str, told: str) -> bool:
    """`grun: text` on the job's stderr: `told`, the file its fd 2 was at a limit's kill, or its --err file (as its
    user: never a user's path as root), or its spool stream; whether it went to the stream (a client shows it once)."""
    path = told if told.startswith("/") and not told.startswith(os.path.realpath(job_dir) + "/") else job.get(
        "stderr_file")
    with contextlib.suppress(OSError, ValueError), _as_user(_identity(job) if path else {}):
        with open(os.open(os.path.join(job["cwd"], path), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
                  if path else spool.open_in(job_dir, "stderr"), "ab") as f:
            f.write(f"grun: {text}\n".encode())
        return not path
    return False


def _close(*files) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.close() if hasattr(f, "close") else os.close(f)  # (DEVNULL, -3: EBADF)


class Reaper:
    """Starts jobs and waits for them; one per node (plus, for a while, one per earlier node life)."""

    def __init__(self):
        self.runs: dict[int, _Run] = {}   # job pid -> its run
        self.name = spool.process_name(os.getpid())
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A unix datagram queue holds only a few messages: a burst of pings waits for the node to read them; a
        # node that does not read for this long gets no more of the burst (it finds the status files: _check_jobs).
        self._sock.settimeout(PING_TIMEOUT)
        self._ping_stalled_until = self._retry_at = 0.0
        self.unwritten: dict[str, _Run] = {}  # job dir -> an ended run whose status.json is not written yet
        self.ending: list[_Ending] = []       # ended runs whose output a full disk holds back (_output_out)
        # A job with a memory rlimit that moves its stderr off its pipe (sbatch's script: exec >"$o" 2>&1): where to,
        # read from /proc once the pipe has no writer left, for a MemoryError its last lines may say (limits.limit_hit)
        self.poll, self.watched, self.moved = select.poll(), {}, {}  # (its stderr pipe -> job pid; job pid -> path)

    def start(self, job_dir: str, notify: str | None, job_json: str) -> None:
        """Start the job of `job_dir`: `job_json` (read from its job.json when empty) says what it runs."""
        if (claim := spool.claim(job_dir, self.name)) is None:  # started already (by us or an earlier reaper), or gone
            return
        (claimed, lock), kept = claim, False
        try:
            kept = self._start(job_dir, notify, claim, json.loads(job_json) if job_json else spool.read(job_dir, spool.JOB))
        except BaseException as exc:  # never let one job stop the reaper
            self._fail(job_dir, notify, f"supervisor failed: {exc}")
        finally:
            os.close(claimed)
            if not kept:
                os.close(lock)

    def _start(self, job_dir: str, notify: str | None, claim: tuple[int, int], job: dict | None) -> bool:
        """Start the job; True when its run keeps the claim's lock (see _Run)."""
        if not isinstance(job, dict):
            raise ValueError("job.json is missing, unreadable or not the node's (never run)")
        argv = wrapped([SHELL, "-c", job["cmd"][0]] if job.get("shell") else list(job["cmd"]), job)
        env = dict({"PATH": os.defpath, **(job.get("env") or {})}, GRUN_JOB_ID=str(job["id"]), GRUN_CPUS=f"{job.get('cpus', 1):g}",
                   GRUN_NODE=job.get("node") or socket.gethostname(), GRUN_MEMORY=str(job.get("memory", 0)),  # (MB)
                   **device_env(job.get("devices")))
        try:
            ident = _identity(job)
        except ValueError as exc:  # its user is unknown here
            return self._fail(job_dir, notify, str(exc), 1)
        if family := COMPAT_ENV.get(env.get("GRUN_COMPAT", "")):  # sent by Slurm's or SGE's shim (grun/compat.py)
            known = {"id": job["id"], "node": env["GRUN_NODE"], "array": job.get("array") or job["id"],
                     "cpus": (cpus := -int(-job.get("cpus", 1) // 1)), "memory": job.get("memory", 0),  # (0.5 cpus: 1)
                     "time": round(job.get("time") or 0),
                     "task_cpus": max(1, cpus // int(env.get("SLURM_NTASKS", 1)))}  # (grun -e, qalter, scontrol update)
            env.update({name: str(known[key]) for name, key in family.items() if key in ("id", "node", "array") or name in env},
                       TMPDIR=os.path.join(job_dir, "tmp"))
            os.makedirs(env["TMPDIR"], 0o700, exist_ok=True)  # (in the job's directory, root's, then given: no race)
            if ident:
                os.chown(env["TMPDIR"], ident["user"], ident["group"])
        if job.get("nfs_sync"):  # (node config nfs_sync: what of the job lies on a network filesystem)
            _sync_as(ident, job["nfs_sync"])
        if job.get("recheck"):  # it waited for its files' makers (grun.core.deps): made meanwhile, it is done
            with _as_user(ident):
                made = make.decide(make.Make(job["cmd"], job.get("inputs") or [], job.get("outputs") or [], job["cwd"]))
            if not made.run:
                return self._fail(job_dir, notify, made.reasons[0].removeprefix("# "), 0)  # `grun: up to date: OUT`
        keep: dict[str, int] = {}
        try:
            stdin, out, err = _open_streams(job, job_dir, ident, keep)
        except OSError as exc:
            return self._fail(job_dir, notify, f"cannot open {exc.filename}: {exc.strerror}", 1)
        status = {"start_time": time.time(), "reaper_peak_kb": _own_peak_kb()}
        try:  # (its submitter's umask whoever runs it: root's job, a node not root's; -1: the node's)
            proc, status["limits"] = L.spawn(job.get("limits") or {}, argv, cwd=job["cwd"], env=env, stdin=stdin,
                                             stdout=out, stderr=err, **{"umask": job.get("umask", -1), **ident})
        except OSError as exc:
            _close(*keep.values())  # (its message goes to the spool file itself, not through the pipe)
            with _as_user(ident):  # (its #! line is read as its user: root's read would show one they cannot)
                why, code = _exec_error(exc, argv, job["cwd"], env)
            return self._fail(job_dir, notify, why, code, None if "stderr" in keep else err, cwd_missing=code == 2)
        finally:
            _close(stdin, out, err)
        if not (in_file := spool.set_pid(claim[0], proc.pid)) and not spool.mark_pid(job_dir, proc.pid, self.name):
            killpg(proc.pid, signal.SIGKILL)  # (a node restarted later could neither signal nor find it)
            status["error"] = "the spool disk is full: its pid could not be recorded, so it was killed at its start"
        # then the node closes its FIFO's read end, or learns the pid a full disk kept from the pid file (to signal it)
        if job.get("stdin") or not in_file:
            self._ping(notify, f"started {job['id']} {proc.pid}")
        if pending_kill := (spool.read(job_dir, spool.KILL) or {}).get("signal"):
            killpg(proc.pid, pending_kill)
        # (last: once the run holds the claim's lock, nothing here may raise, or start would close it too)
        self.runs[proc.pid] = _Run(int(job["id"]), job_dir, job, status, notify, keep, None if in_file else claim[1])
        if status["limits"].get("data_mb") and "stderr" in keep:
            self.poll.register(keep["stderr"], 0)  # (POLLHUP only, always reported)
            self.watched[keep["stderr"]] = proc.pid
        return not in_file

    def _fail(self, job_dir: str, notify: str | None, why: str, code: int = 255, err=None, **more) -> None:
        """End a job that could not start, or whose end could not be read: `grun: why` on its stderr (`err` when
        open) and its status (`more`: cwd_missing, to run it elsewhere). Never raises: one job must not stop us."""
        with contextlib.suppress(BaseException):
            with contextlib.suppress(OSError), err or open(spool.open_in(job_dir, "stderr"), "ab") as f:
                f.write(f"grun: {why}\n".encode())  # (a full disk may refuse it: the status matters more)
            now = time.time()
            self._record(_Run(os.path.basename(job_dir), job_dir, None, {
                "exit_code": code, "signal": None, "error": why, "start_time": now, "end_time": now, **more}, notify))

    def reap(self) -> None:
        """Collect every job that has ended, then record them together: the status files are written first and
        fsync'd after, so one journal commit carries them all, and the waits for the disk do not add up."""
        with contextlib.suppress(ChildProcessError):  # (no child left)
            while info := os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                if (run := self.runs.pop(info.si_pid, None)) is None:  # something a job left: we are its subreaper
                    os.wait4(info.si_pid, 0)  # (it has ended: no wait)
                    continue
                if self.watched.pop(run.pipes.get("stderr"), None):  # (before _output_out closes it)
                    self.poll.unregister(run.pipes["stderr"])
                moved = self.moved.pop(info.si_pid, "")  # (where its stderr went, if it moved it)
                self.ending.append(_Ending(run, *end_job(info.si_pid), time.time(), moved=moved))
        done = []
        for ending in list(self.ending):
            if not self._output_out(ending):
                continue
            self.ending.remove(ending)
            run = ending.run
            try:
                limit = spool.read(run.dir, spool.LIMIT) or {}  # (the sampler's kill)
                L.exit_status(run.dir, run.job, run.status, ending.wstatus, ending.rusage, ending.end, ending.lost,
                              limit, ending.moved)
                if run.status.get("limit"):  # why, on its stderr too (as slurmstepd's "CANCELLED ... DUE TO TIME LIMIT")
                    said = L.describe(run.status, run.id, (run.job.get("env") or {}).get("GRUN_COMPAT"))
                    run.status["limit_told"] = _tell(run.dir, run.job, said, limit.get("stderr") or ending.moved) or None
                if hiding := hide_failed_outputs(run.job, run.status):  # its child, maybe stuck on a hung server,
                    os.close(hiding[1])  # is reaped as it ends, as what a job leaves (above): never waited for here
                done.append(run)
            except Exception as exc:  # one job's bad spool must not stop the reaper
                self._fail(run.dir, run.notify, f"supervisor failed: {exc}")
                if run.lock is not None:  # (_fail's run holds no lock: its end is told as any failure's)
                    os.close(run.lock)
        self._record(*done)
        for run in done:  # a Slurm or SGE job's TMPDIR (_start) goes at its end, as theirs do: as its user, in a child
            with contextlib.suppress(ValueError):  # not waited for (100k files take 1 s); its user gone: with its spool
                if os.path.isdir(path := os.path.join(run.dir, "tmp")):
                    os.close(_in_child_as(_identity(run.job), lambda p: spool.empty(p, {}), path, 0)[1])  # (reaped above)

    def _output_out(self, ending: _Ending) -> bool:
        """Whether what the ended job left in its pipes is in its spool files (before its status: grun.drain), or
        dropped: on a full spool disk, after OUTPUT_GRACE_SECS without the node's drain punching any bytes out."""
        pipes = ending.run.pipes
        held = [name for name, pipe in pipes.items() if not spool.drain_pipe(pipe, ending.run.dir, name)]
        if held and (level := sum(spool.pipe_level(pipes[name]) for name in held)) < ending.level:
            ending.level, ending.since = level, time.monotonic()
        if held and time.monotonic() - ending.since < OUTPUT_GRACE_SECS:
            return False
        ending.lost = sum(spool.drop_pipe(pipes[name]) for name in held)
        for pipe in pipes.values():
            os.close(pipe)
        return True

    def _record(self, *runs: _Run) -> None:
        """Write the runs' status files and tell the node. One a full spool disk refuses is told as `unwritten` (the
        node reports it all the same) and tried again every spool.DISK_RETRY_SECS until written (then told as
        `finished`) or its spool is gone (the node forgot it), told again each time: never given up while the node
        is down, else a restarted node would find it reaperless, and lost, and the master would run it twice."""
        ends = [json.dumps(run.status) for run in runs]
        pings: dict[str, list[str]] = {}
        written = set(spool.write_statuses([(run.dir, end) for run, end in zip(runs, ends)]))
        for i, run in enumerate(runs):
            if i in written or not os.path.isdir(run.dir):  # (gone: the node forgot the job)
                self.unwritten.pop(run.dir, None)
                if run.lock is not None:  # (its end is known: the claim's lock has done its work)
                    os.close(run.lock)
            else:
                self.unwritten[run.dir] = run
            if i in written or run.dir in self.unwritten:
                pings.setdefault(run.notify, []).append(f"{'finished' if i in written else 'unwritten'} {run.id} {ends[i]}")
        # one datagram for many jobs: the queue holds only a few (net.unix.max_dgram_qlen); each wakes the node
        for notify, lines in pings.items():
            batch = ""
            for line in lines:
                if batch and len(batch) + len(line) >= PING_BYTES:
                    self._ping(notify, batch)
                    batch = ""
                batch += ("\n" if batch else "") + line
            self._ping(notify, batch)

    def _ping(self, path: str | None, message: str) -> None:
        if not path or time.monotonic() < self._ping_stalled_until:
            return
        try:
            self._sock.sendto(message.encode(), spool.socket_addr(path))
        except TimeoutError:
            self._ping_stalled_until = time.monotonic() + PING_TIMEOUT
        except OSError:
            pass  # the node is down: it reads status.json when it comes back

    def serve(self, control: int) -> None:
        """Starts the jobs of each line read from `control`; at its end, waits for its jobs and returns."""
        set_subreaper()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)   # a Python handler, so SIGCHLD writes wake_w
        signal.signal(signal.SIGXCPU, lambda *_: None)   # see grun.limits; reset to default at exec
        buf, eof = b"", False
        for fd in (wake_r, control):
            self.poll.register(fd, select.POLLIN)
        while not eof or self.runs or self.unwritten or self.ending:
            pause = 0.2 if self.ending else spool.DISK_RETRY_SECS if self.unwritten else 5.0
            ready = {fd for fd, _ in self.poll.poll(pause * 1000)}
            if wake_r in ready:  # (one read empties it: a pipe holds 64 KiB)
                os.read(wake_r, 1 << 16)
            for fd in ready & self.watched.keys():
                self.poll.unregister(fd)
                pid = self.watched.pop(fd)
                with contextlib.suppress(OSError):  # (ended already: no path, as before; a pipe's or socket's: none)
                    if (path := os.readlink(f"/proc/{pid}/fd/2")).startswith("/"):
                        self.moved[pid] = path
            if control in ready:
                data = os.read(control, 1 << 16)
                if eof := not data:
                    self.poll.unregister(control)
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    job_dir, _, rest = line.decode(errors="replace").partition("\t")
                    notify, _, job_json = rest.partition("\t")
                    if job_dir:
                        self.start(job_dir, notify or None, job_json)
            self.reap()
            if self.unwritten and time.monotonic() >= self._retry_at:
                self._retry_at = time.monotonic() + spool.DISK_RETRY_SECS
                self._record(*self.unwritten.values())


if __name__ == "__main__":  # job lines on stdin; jobs get /dev/null there, never our control pipe
    control = os.dup(0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    Reaper().serve(control)
