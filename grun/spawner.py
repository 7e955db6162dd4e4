"""Starting jobs so that they depend on nobody: the node's fork server and the per-job supervisor process.

The node daemon starts one fork server (`python -m grun.spawner`) in a session of its own. For every
job, the node writes the job's spool directory and sends its path on the fork server's stdin; the fork
server forks a small supervisor process, which starts the job in its own session and process group
with stdout and stderr going straight to spool files, waits for it (wait4, so cpu and memory usage are
exact), writes `status.json` atomically and pings the node. Killing the node daemon, or the fork server,
leaves the job and its supervisor running; a restarted node finds the status file in the spool.

The fork server is single-threaded and small, so fork is cheap and safe; it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time

from . import limits as L

SHELL = "/bin/sh"


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def job_argv(job: dict) -> list[str]:
    return [SHELL, "-c", job["cmd"][0]] if job.get("shell") else list(job["cmd"])


def _identity(job: dict) -> dict:
    """Popen arguments that make the job run as its submitter when the node runs as root."""
    uid = job.get("uid")
    if os.geteuid() != 0 or uid is None or uid == 0:
        return {}
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = os.getgrouplist(name, job.get("gid", uid))
    except KeyError:
        groups = []
    return {"user": uid, "group": job.get("gid", uid), "extra_groups": groups}


def _exec_error(exc: OSError, argv: list[str], cwd: str) -> tuple[int, str]:
    """The exit code and message a shell would give for a command it cannot run."""
    if exc.filename == cwd or (exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(cwd)):
        return 1, f"grun: cannot change directory to {cwd}: {exc.strerror}"
    if exc.errno == errno.ENOENT:
        return 127, f"grun: {argv[0]}: command not found"
    return 126, f"grun: {argv[0]}: {exc.strerror}"


def _usage(rusage, wall: float) -> dict:
    """From wait4: the job and every descendant it waited for. Linux counts ru_inblock/ru_oublock
    from the same per-task I/O accounting as /proc/PID/io read_bytes/write_bytes, in 512-byte units:
    bytes the job caused to be read from or written to storage (page-cache hits are not reads)."""
    return {"wall": round(wall, 6), "utime": rusage.ru_utime, "stime": rusage.ru_stime,
            "maxrss_kb": rusage.ru_maxrss, "read_blocks": rusage.ru_inblock, "write_blocks": rusage.ru_oublock,
            "read_bytes": rusage.ru_inblock * 512, "write_bytes": rusage.ru_oublock * 512}


@contextlib.contextmanager
def _as_user(job: dict):
    """Act as the job's user (the supervisor is single-threaded, so switching ids is safe here)."""
    ident = _identity(job)
    if not ident:
        yield
        return
    groups = os.getgroups()
    os.setgroups(ident["extra_groups"] or [ident["group"]])
    os.setegid(ident["group"])
    os.seteuid(ident["user"])
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def _open_outputs(job: dict, job_dir: str) -> tuple:
    """The job's stdout and stderr: its spool files, or the files named by -o/--err/--out-err,
    opened in its directory as its user (so it can only write where it could itself)."""
    files = {s: open(os.path.join(job_dir, s), "ab") for s in ("stdout", "stderr")}
    if not (job.get("stdout_file") or job.get("stderr_file")):
        return files["stdout"], files["stderr"], None
    opened: dict[str, object] = {}
    with _as_user(job):
        for stream in ("stdout", "stderr"):
            name = job.get(f"{stream}_file")
            if not name:
                continue
            path = os.path.normpath(os.path.join(job["cwd"], name))
            if path not in opened:
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
                flags |= os.O_APPEND if job.get(f"{stream}_append") else os.O_TRUNC
                opened[path] = os.fdopen(os.open(path, flags, 0o666), "ab")
            files[stream].close()
            files[stream] = opened[path]
    stderr_path = next((p for p, f in opened.items() if f is files["stderr"]), None)
    return files["stdout"], files["stderr"], stderr_path


def _died_of_limit(job_dir: str, job: dict, status: dict, stderr_path: str) -> dict:
    """The node's sampler leaves `limit.json` when it killed the job for memory; otherwise the
    signal or the job's last stderr lines may tell that an rlimit stopped it."""
    found = read_json(os.path.join(job_dir, "limit.json"))
    if isinstance(found, dict) and found.get("limit"):
        return {"limit": found["limit"], "limit_detail": found.get("limit_detail")}
    return L.limit_hit(status, job.get("limits") or {}, stderr_path)


def _claim(job_dir: str) -> bool:
    """Become the job's one supervisor, for good: hold `lock` for our whole life (the node tests it
    to see that we live), and start only a job no supervisor ever started (`supervisor.pid`). A
    restarted node may ask for a job its previous fork server was still about to start."""
    fd = os.open(os.path.join(job_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for _ in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:  # another supervisor, or the node looking (briefly)
            time.sleep(0.02)
    else:
        os.close(fd)
        return False
    if os.path.exists(os.path.join(job_dir, "supervisor.pid")):
        os.close(fd)
        return False
    return True  # fd stays open (and locked) until this process exits


def supervise(job_dir: str, notify_path: str | None) -> None:
    """Run one job to completion and leave its status in the spool. Runs in the forked supervisor."""
    if not _claim(job_dir):
        return
    job = read_json(os.path.join(job_dir, "job.json"))
    write_atomic(os.path.join(job_dir, "supervisor.pid"), str(os.getpid()).encode())
    argv = job_argv(job)
    env = dict(job.get("env") or {})
    env["GRUN_JOB_ID"] = str(job["id"])
    env["GRUN_NODE"] = job.get("node") or socket.gethostname()
    env.setdefault("PATH", os.defpath)
    try:
        out, err, stderr_path = _open_outputs(job, job_dir)
        redirect_error = None
    except OSError as exc:
        out, err, stderr_path = open(os.devnull, "ab"), open(os.path.join(job_dir, "stderr"), "ab"), None
        redirect_error = f"grun: cannot open {exc.filename}: {exc.strerror}"
    stderr_path = stderr_path or os.path.join(job_dir, "stderr")
    if job.get("stdin"):
        # the node holds the write end already, so this open neither blocks nor sees an early EOF
        fd = os.open(os.path.join(job_dir, "stdin"), os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        stdin = os.fdopen(fd, "rb")
    else:
        stdin = open(os.devnull, "rb")
    start = time.time()
    status: dict = {"start_time": start}
    try:
        if redirect_error:
            raise OSError(errno.EIO, redirect_error)
        wanted = job.get("limits") or {}
        status["limits"] = L.apply_rlimits(wanted)  # inherited by the job; see grun.limits
        if wanted.get("memory_mb"):
            status["limits"]["memory_mb"] = wanted["memory_mb"]  # what the node's sampler enforces
        proc = subprocess.Popen(argv, cwd=job["cwd"], env=env, stdin=stdin, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True, **_identity(job))
    except OSError as exc:
        code, message = (1, redirect_error) if redirect_error else _exec_error(exc, argv, job["cwd"])
        err.write(message.encode() + b"\n")
        err.flush()
        status.update(exit_code=code, signal=None, error=message, end_time=time.time(),
                      usage=_usage(_zero_rusage, 0.0))
    else:
        for f in (stdin, out, err):
            f.close()
        write_atomic(os.path.join(job_dir, "pid"), str(proc.pid).encode())
        _ping(notify_path, f"started {job['id']}")
        pending_kill = _read_int(os.path.join(job_dir, "killreq"))
        if pending_kill:
            _killpg(proc.pid, pending_kill)
        while True:
            try:
                _, wstatus, rusage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
        end = time.time()
        sig = os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None
        code = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None
        status.update(exit_code=code, signal=sig, end_time=end, usage=_usage(rusage, end - start))
        status.update(_died_of_limit(job_dir, job, status, stderr_path))
        proc.returncode = code if sig is None else -sig  # already reaped; keep Popen from waiting again
    write_atomic(os.path.join(job_dir, "status.json"), json.dumps(status).encode())
    _ping(notify_path, f"finished {job['id']}")


class _zero_rusage:
    ru_utime = ru_stime = 0.0
    ru_maxrss = ru_inblock = ru_oublock = 0


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _ping(path: str | None, message: str) -> None:
    if not path:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)
    except OSError:
        pass  # the node is down; it reads status.json when it comes back


def serve(control=sys.stdin.buffer) -> None:
    """The fork server loop: one line per job, `<job_dir>\\t<notify socket path>`; ends at EOF."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    for line in control:
        job_dir, _, notify = line.decode().rstrip("\n").partition("\t")
        if not job_dir:
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                supervise(job_dir, notify or None)
            except BaseException as exc:  # never let a child return into the fork server loop
                try:
                    with open(os.path.join(job_dir, "stderr"), "ab") as f:
                        f.write(f"grun: supervisor failed: {exc}\n".encode())
                    write_atomic(os.path.join(job_dir, "status.json"), json.dumps(
                        {"exit_code": 255, "signal": None, "error": f"supervisor failed: {exc}",
                         "start_time": time.time(), "end_time": time.time()}).encode())
                    _ping(notify or None, "finished ?")
                except BaseException:
                    pass
                code = 1
            os._exit(code)


if __name__ == "__main__":
    serve()
