"""The node's job spool: the one module that reads and writes it, for the node daemon, its reaper and
its sampler alike. Light on purpose (os, json, fcntl): the reaper imports it.

    <spool>/jobs/<id>/  one directory per job:
        job.json     the job as the node got it; no fsync (the master holds the durable copy, and a
                     start is idempotent)
        stdin        a FIFO, for a job that reads input; the node holds its write end
        stdout, stderr   the job's output, written by the job itself
        pid          `<job pid> <reaper lock>`, or `-          <reaper lock>` while claimed but not
                     started. Created O_EXCL: exactly one reaper ever starts the job. The pid is
                     written over the padding in place.
        killreq      a signal asked for before the job had a pid; its reaper sends it at the start
        limit.json   why the node's sampler killed the job (memory)
        status.json  the job's end, written once, in one write, with one fdatasync, by whoever waited
                     for it (its reaper, or the node when the reaper died)
    <spool>/reapers/<pid>.<random>   a reaper's lock file, flock'ed for as long as the reaper lives
    <spool>/acks.log   `r <id> <attempt>`: the master has the job's end; `f ...`: a client fetched its
                       output. Appended; rewritten with only the jobs still here at each node start
                       and past ACKS_COMPACT_BYTES.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading

from .files import read_int, read_json, write_atomic

ACKS_COMPACT_BYTES = 4 << 20
_PID_PAD = 10


def path(job_dir: str, name: str) -> str:
    return os.path.join(job_dir, name)


# ---- written by the node ----------------------------------------------------------------------

def create(job_dir: str, job: dict, job_json: str) -> tuple[int, int] | None:
    """The job's directory, its stdin FIFO if it reads input, and job.json (`job` as JSON). Returns the FIFO's
    (read, write) ends, both held by the node: the read end until the job has opened its own (so early
    writes cannot fail), the write end until a client takes it. FileExistsError: the directory holds
    a job already (the node restarted since it started this one)."""
    try:
        os.mkdir(job_dir)
    except FileExistsError:  # a kill request that came first made it, or the job is there already
        if os.path.exists(path(job_dir, "job.json")):
            raise
    owner = (job["uid"], job.get("gid", job["uid"])) if job.get("uid") and os.geteuid() == 0 else None
    if owner:
        os.chown(job_dir, *owner)
    fifo = None
    if job.get("stdin"):
        os.mkfifo(path(job_dir, "stdin"), 0o600)
        if owner:
            os.chown(path(job_dir, "stdin"), *owner)
        read_end = os.open(path(job_dir, "stdin"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        fifo = read_end, os.open(path(job_dir, "stdin"), os.O_WRONLY | os.O_CLOEXEC)
    with open(path(job_dir, "job.json"), "w") as f:
        f.write(job_json)
    return fifo


def request_kill(job_dir: str, sig: int) -> None:
    """For a job not started yet. Not durable: the master repeats a kill until the job has ended."""
    os.makedirs(job_dir, exist_ok=True)
    write_atomic(path(job_dir, "killreq"), str(sig).encode(), durable=False)


def record_limit(job_dir: str, limit: str, detail: str) -> None:
    write_atomic(path(job_dir, "limit.json"), json.dumps({"limit": limit, "limit_detail": detail}).encode(),
                 durable=False)


def remove(job_dir: str) -> None:
    import shutil  # not at import: the reaper never removes anything
    shutil.rmtree(job_dir, ignore_errors=True)


# ---- written by the reaper --------------------------------------------------------------------

def claim(job_dir: str, lock: str) -> int | None:
    """Claim the start of the job for the reaper holding `lock`: the open `pid` file, or None when it
    was claimed before (by us or an earlier reaper) or the job is gone."""
    try:
        fd = os.open(path(job_dir, "pid"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    os.write(fd, f"{'-':<{_PID_PAD}} {lock}\n".encode())
    return fd


def set_pid(claimed: int, pid: int) -> None:
    os.pwrite(claimed, f"{pid:<{_PID_PAD}}".encode(), 0)


def write_statuses(ends: list[tuple[str, str]]) -> list[int]:
    """Write each (job dir, status as JSON) to status.json, then fdatasync them all: a burst of ends
    waits for the disk once, not once per job. Returns the indexes written (a spool gone is skipped).
    No temp file: a reader that catches one half-written sees invalid JSON and looks again later."""
    written = []
    for i, (job_dir, data) in enumerate(ends):
        try:
            fd = os.open(path(job_dir, "status.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            os.write(fd, data.encode())
            written.append((i, fd))
        except OSError:
            os.close(fd)
    for _, fd in written:
        try:
            os.fdatasync(fd)  # invariant 3: the end outlives us, whoever dies next
        finally:
            os.close(fd)
    return [i for i, _ in written]


def take_reaper_lock(job_dir: str) -> tuple[int, str]:
    """A lock file under <spool>/reapers, locked before it gets its name, so nobody ever sees it
    unlocked while its reaper lives: (fd, name)."""
    locks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(job_dir))), "reapers")
    os.makedirs(locks, exist_ok=True)
    name = f"{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(os.path.join(locks, f".{name}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(os.path.join(locks, f".{name}"), os.path.join(locks, name))
    return fd, name


# ---- read by anyone ---------------------------------------------------------------------------

def read_job(job_dir: str) -> dict | None:
    job = read_json(path(job_dir, "job.json"))
    return job if isinstance(job, dict) else None


def read_status(job_dir: str) -> dict | None:
    status = read_json(path(job_dir, "status.json"))
    return status if isinstance(status, dict) else None


def read_limit(job_dir: str) -> dict | None:
    found = read_json(path(job_dir, "limit.json"))
    return found if isinstance(found, dict) and found.get("limit") else None


def requested_kill(job_dir: str) -> int | None:
    return read_int(path(job_dir, "killreq"))


def read_pid(job_dir: str) -> tuple[bool, int | None, str | None]:
    """(claimed, the job's pid or None, its reaper's lock name or None)."""
    try:
        with open(path(job_dir, "pid"), "rb") as f:
            words = f.read().split()
    except OSError:
        return False, None, None
    pid = int(words[0]) if words and words[0].isdigit() else None
    return True, pid, words[1].decode() if len(words) > 1 else None


def started_at(job_dir: str) -> float | None:
    """When the job was claimed (the pid file's mtime), or None."""
    try:
        return os.stat(path(job_dir, "pid")).st_mtime
    except OSError:
        return None


def reaper_alive(spool: str, lock: str) -> bool:
    """Whether the reaper owning this lock still lives (it holds the lock while it does)."""
    try:
        fd = os.open(os.path.join(spool, "reapers", lock), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def sweep_reaper_locks(spool: str) -> None:
    """The lock files of reapers that have ended."""
    locks = os.path.join(spool, "reapers")
    for name in os.listdir(locks) if os.path.isdir(locks) else ():
        if not name.startswith(".") and not reaper_alive(spool, name):
            try:
                os.unlink(os.path.join(locks, name))
            except OSError:
                pass


class Acks:
    """acks.log: one line per acknowledgement, so that a restarted node neither reports a job again
    nor keeps an output that was fetched for the whole output_keep."""

    def __init__(self, spool: str):
        self.path = os.path.join(spool, "acks.log")
        self.lock = threading.Lock()

    def add(self, kind: str, jobs: list[tuple[int, int]]) -> None:
        """kind "r" (reported) or "f" (fetched), for (job id, attempt) pairs."""
        data = "".join(f"{kind} {job_id} {attempt}\n" for job_id, attempt in jobs).encode()
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def load(self, jobs_dir: str) -> dict[tuple[int, int], set[str]]:
        """(job id, attempt) -> {"r", "f"} for the jobs whose directory is still here; the log is then
        rewritten with those alone, so it never grows with the node's history."""
        acks: dict[tuple[int, int], set[str]] = {}
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    words = line.split()
                    if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
                        acks.setdefault((int(words[1]), int(words[2])), set()).add(words[0].decode())
        except OSError:
            return acks
        acks = {k: v for k, v in acks.items() if os.path.isdir(os.path.join(jobs_dir, str(k[0])))}
        self.rewrite(lambda: acks)
        return acks

    def rewrite(self, current) -> None:
        """Replace the log with `current()` (taken under the log's lock, so an ack appended meanwhile,
        whose flag was set first, is in it)."""
        with self.lock:
            write_atomic(self.path, "".join(f"{kind} {i} {a}\n" for (i, a), kinds in current().items()
                                            for kind in sorted(kinds)).encode(), durable=False)

    def too_big(self) -> bool:
        try:
            return os.path.getsize(self.path) >= ACKS_COMPACT_BYTES
        except OSError:
            return False
