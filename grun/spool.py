"""The node's job spool, and the one module that reads and writes it (the node daemon, its reaper and its sampler
alike). Light on purpose (os, json): the reaper imports it.

<spool>/jobs/<id>/ (mode 0711: the job reaches its TMPDIR and work dir through it) and all in it are the node's (root's),
but what the job itself writes: `tmp/` (a Slurm or SGE job's TMPDIR) and `work/` (grun.stage), made by the node, then
given to the job's user. So the user can rename, replace or link nothing in it. Per job:
- `job.json`: the job as the node got it; no fsync (the master holds the durable copy; a start is idempotent).
- `stdin`: a FIFO, for a job that reads input. `stdout`, `stderr`: its output, moved there by the node's drain from
  the FIFOs `stdout.pipe`, `stderr.pipe` the job writes (grun.drain; none for a stream sent to a file by -o/--err);
  the first bytes may be punched out once delivered.
- `pid`: `<job pid> <reaper>` (the reaper as process_name gives it), with a padded `-` for the pid while
  claimed but not started; created O_EXCL, so exactly one reaper ever starts the job (empty, or without its
  reaper, when the disk was full: its claimant's flock of job.json then says whether it lives). What a full disk
  kept out of it goes in a name, `pid.<job pid>.<reaper>`: an empty file (mark_pid), which needs no data block.
- `killreq`: `{"signal": N}` asked for before the job had a pid, sent by its reaper once it has started it.
- `limit.json`: why the node's sampler killed the job (memory or time).
- `status.json`: the job's end, written once, with one fdatasync, by whoever waited for it (its reaper, or the node).
<spool>/notify: the socket the node's reapers ping (a file, which only the node's user can make: see NodeJobs).
<spool>/acks.log (Acks), so that a restarted node neither reports a job again nor keeps fetched output: `r <id>
<attempt>` (the master has the job's end) and `f <id> <attempt>` (a client fetched it), appended; rewritten with only
the jobs still here at each node start and past ACKS_COMPACT_BYTES (proportional to the spool, not to its history)."""

import contextlib
import errno
import json
import os
import threading
import time

from .files import locked, read_json, write_atomic

ACKS_COMPACT_BYTES = 4 << 20
JOB, STATUS, KILL, LIMIT = "job.json", "status.json", "killreq", "limit.json"
STREAMS = ("stdout", "stderr")
DISK_RETRY_SECS = 2.0  # how often what a full spool disk refused (a job's output, an ended job's status) is tried again
_PAD = 10  # the pid file's first word, so the pid can be written over it in place
_dirs: dict[str, int] = {}  # a directory -> a descriptor of it, kept open (socket_addr)


def create(job_dir: str, job: dict, job_json: str) -> tuple[int, int] | None:
    """The job's directory, its stdin FIFO if it reads input (returned: its read and write ends, the node's
    to hold, see grun.actors.node_jobs.LiveJob), and job.json (`job_json`). FileExistsError: it is there."""
    if os.path.exists(os.path.join(job_dir, JOB)):
        raise FileExistsError(errno.EEXIST, "the job is there already", job_dir)
    make_dir(job_dir)  # (made already by a kill request that came first, perhaps)
    fifo, ends = os.path.join(job_dir, "stdin"), None
    if job.get("stdin"):
        os.mkfifo(fifo, 0o600)
        ends = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
    for name in STREAMS:
        if not job.get(f"{name}_file"):
            os.mkfifo(pipe_path(job_dir, name), 0o600)  # opened by the reaper and the node, as root or as us
    with open(open_in(job_dir, JOB, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        f.write(job_json.encode())
    return ends


def socket_addr(path: str) -> str:
    """`path` as a unix socket's address; past sun_path's 108 bytes, through a descriptor of its directory, kept."""
    if len(os.fsencode(path)) < 108:
        return path
    head, name = os.path.split(path)
    if head not in _dirs:
        _dirs[head] = os.open(head, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{_dirs[head]}/{name}"


def make_dir(path: str, mode: int = 0o711) -> None:
    """A job's directory (or the jobs' own), `mode` whatever our umask (UMask=077 kept jobs out of TMPDIR and work/)."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)


def pipe_path(job_dir: str, name: str) -> str:
    return os.path.join(job_dir, name + ".pipe")


def open_pipe(job_dir: str, name: str) -> tuple[int, int]:
    """For the reaper: a read end of the job's stdout or stderr pipe, which it holds until the job has
    ended (so the job's writes never fail while the node daemon is away), and the job's write end."""
    keep = open_in(job_dir, name + ".pipe", os.O_RDONLY | os.O_NONBLOCK)
    return keep, open_in(job_dir, name + ".pipe", os.O_WRONLY)  # (ours has a reader; one put since: ENXIO)


def append_from_pipe(pipe: int, fd: int, most: int) -> int:
    """Up to `most` bytes the pipe holds (0: none, and no writer left), spliced to the end of the spool file `fd`,
    under its flock: the node's drain and the reaper both do this, and splice cannot append (the end is read
    first): each move's read from the pipe and write must not interleave."""
    import fcntl  # (light: C)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        return os.splice(pipe, fd, most, offset_dst=os.fstat(fd).st_size, flags=os.SPLICE_F_NONBLOCK)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def disk_full(exc: OSError) -> bool:
    """Whether a write failed for lack of space (or of the user's quota) on the spool's file system."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def drain_pipe(pipe: int, job_dir: str, name: str) -> bool:
    """What the pipe holds, appended to its spool file (for an ended job, before its status is written). At most a
    full pipe (1 MiB): a process the job left behind may write on (`yes &`), and must not hold us. False: the
    spool disk is full, and the rest is still in the pipe (for drop_pipe, once waiting for space is over)."""
    with contextlib.suppress(OSError):
        fd = open_in(job_dir, name, os.O_WRONLY | os.O_CREAT)
        left = 1 << 20
        try:
            while left > 0 and (n := append_from_pipe(pipe, fd, left)):
                left -= n
        except OSError as exc:  # (EAGAIN: empty, but a process the job left behind still has it open)
            return not disk_full(exc)
        finally:
            os.close(fd)
    return True


def pipe_level(pipe: int) -> int:
    """How many bytes the pipe holds."""
    import fcntl
    import struct
    import termios  # (light: C)
    return struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, bytes(4)))[0]


def drop_pipe(pipe: int) -> int:
    """Read what the pipe holds (at most 1 MiB, as drain_pipe) and drop it: how many bytes."""
    lost = 0
    with contextlib.suppress(BlockingIOError):
        while lost < 1 << 20 and (n := len(os.read(pipe, 1 << 16))):
            lost += n
    return lost


def first_held(job_dir: str, name: str) -> int:
    """The first byte of a spool file still held (those before were delivered and punched out)."""
    with contextlib.suppress(OSError):
        fd = open_in(job_dir, name, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_DATA)
        except OSError:  # ENXIO: holes only, or empty
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    return 0


def spool_space(path: str) -> dict:
    """The free and total MB of the file system at `path` (for the master: a full spool takes no new jobs)."""
    st = os.statvfs(path)
    return {"spool_free": st.f_bavail * st.f_frsize >> 20, "spool_size": st.f_blocks * st.f_frsize >> 20}


def write(job_dir: str, name: str, value: dict) -> bool:
    """KILL or LIMIT, not durable: the master repeats a kill until the job has ended, and the sampler a limit's.
    False: the spool disk is full (the kill is sent all the same; a KILL for later, again when repeated)."""
    try:
        make_dir(job_dir)  # (a kill may come before the job)
        write_atomic(os.path.join(job_dir, name), json.dumps(value).encode(), durable=False)
    except OSError as exc:
        if not disk_full(exc):
            raise
        return False
    return True


def read(job_dir: str, name: str) -> dict | None:
    """JOB, STATUS, KILL or LIMIT: a dict, or None when it is missing or torn."""
    return found if isinstance(found := read_json(os.path.join(job_dir, name)), dict) else None


def write_statuses(ends: list[tuple[str, str]]) -> list[int]:
    """Write each (job dir, status as JSON) to status.json, then fdatasync them all: a burst of ends waits for the
    disk once. Returns the indexes written; one not written (its spool gone, or its disk full) leaves no
    status.json (its writer tries again). No temp file: a reader of a torn one sees bad JSON, and looks again."""
    opened: dict[int, int] = {}
    for i, (job_dir, data) in enumerate(ends):
        try:
            opened[i] = open_in(job_dir, STATUS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            if os.write(opened[i], data.encode()) < len(data.encode()):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            _unwritten(job_dir, opened.pop(i, None))
    written = []
    for i, fd in opened.items():  # invariant 3: the end outlives us, whoever dies next
        try:
            os.fdatasync(fd)  # (a file system that allocates late says ENOSPC only here)
            written.append(i)
        except OSError:
            _unwritten(ends[i][0], None)
        finally:
            os.close(fd)
    return written


def _unwritten(job_dir: str, fd: int | None) -> None:
    """A status.json we could not write whole: none at all, rather than a torn one for good."""
    with contextlib.suppress(OSError):
        if fd is not None:
            os.close(fd)
        os.unlink(os.path.join(job_dir, STATUS))


def remove(job_dir: str, into: str = "") -> None:
    """A job's directory (or one in it, `into` the jobs dir), out of the way at once: renamed `.gone-<id>-<ns>` beside
    it, for sweep() (which may wait on its user: the node's janitor and its start, that call this, must not)."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(job_dir, f"{into or os.path.dirname(job_dir)}/.gone-{os.path.basename(job_dir)}-{time.time_ns()}")


def sweep(jobs_dir: str) -> None:
    """Remove the directories remove() renamed (the node's sweeper, each round; what is left, at the next). What another
    user owns in them (its user's tmp/, work/) is emptied by one `rm -rf` as that user (by the thousand: argv's limit),
    given 10 s (they may stop it), then taken out: root walks no tree of theirs (rmtree hangs on a subdirectory swapped
    for a FIFO). Their rm gets nothing of ours (the user may read its /proc): no fd, no environment."""
    import subprocess  # (not at import: the reaper starts light)
    gone, theirs = [entry.path for entry in os.scandir(jobs_dir) if entry.name.startswith(".gone-")], {}
    for path in gone:
        empty(path, theirs)
    for (uid, gid), paths in theirs.items():
        user = {} if uid == os.geteuid() else {"user": uid, "group": gid, "extra_groups": []}
        for i in range(0, len(paths), 1000):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                # (made writable first: rm -rf empties no directory its user made read-only, as Go's module cache is)
                subprocess.run(["sh", "-c", 'chmod -R u+rwx -- "$@" 2>/dev/null; exec rm -rf -- "$@"', "rm",
                                *paths[i:i + 1000]], **user, cwd="/",
                               env={"PATH": os.defpath}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
    for path in [p for paths in theirs.values() for p in paths] + gone:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def empty(path: str, theirs: dict) -> None:
    """Remove what we own in the directory `path`, then `path` if it is empty; what another user owns there is left,
    and added to `theirs`: (uid, gid) -> [paths]."""
    import shutil
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if (st := entry.stat(follow_symlinks=False)).st_uid != os.geteuid():
                theirs.setdefault((st.st_uid, st.st_gid), []).append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                if os.geteuid() and os.path.lexists(entry.path):  # (a node not root: a tree its job made read-only, for sweep's rm)
                    theirs.setdefault((st.st_uid, st.st_gid), []).append(entry.path)
            else:
                os.unlink(entry.path)
        os.rmdir(path)


def open_in(job_dir: str, name: str, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """A file of the job's directory (by default, to add to; blocking unless `flags` say), made readable by us alone
    (job.json holds its environment); a FIFO opened without waiting for its other end."""
    fd = os.open(os.path.join(job_dir, name), flags | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    os.set_blocking(fd, not flags & os.O_NONBLOCK)
    return fd


def claim(job_dir: str, reaper: str) -> tuple[int, int] | None:
    """Claim the job's start for this reaper: its pid file, open, and job.json, open and flock'ed; None when it was
    claimed before (by any reaper) or the job is gone. The lock, taken first and needing no disk, is held until the
    job's end is written: when a full disk left the pid file empty (still ours: O_EXCL), claim_held asks it."""
    import fcntl  # (light: C)
    try:
        lock = open_in(job_dir, JOB, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (held: another reaper is claiming it)
        fd = os.open(os.path.join(job_dir, "pid"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        os.close(lock)
        return None
    with contextlib.suppress(OSError):
        os.write(fd, f"{'-':<{_PAD}} {reaper}\n".encode())
    return fd, lock


def set_pid(claimed: int, pid: int) -> bool:
    """Whether the pid file now names the job's pid and its reaper; False: a full disk kept either out (the
    reaper tells the node the pid in a ping instead, and keeps its claim's lock)."""
    try:
        os.pwrite(claimed, f"{pid:<{_PAD}}".encode(), 0)
    except OSError as exc:
        if not disk_full(exc):
            raise
        return False
    return os.fstat(claimed).st_size > _PAD


def mark_pid(job_dir: str, pid: int, reaper: str) -> bool:
    """Name the job's pid and reaper in an empty file's name, for a pid file a full disk kept them out of (set_pid);
    False: not even that (the reaper then kills the job: a job nobody can find must not run on)."""
    try:
        os.close(os.open(os.path.join(job_dir, f"pid.{pid}.{reaper}"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError:
        return False
    return True


def claim_held(job_dir: str) -> bool:
    """Whether a live reaper holds the job's claim (see claim): for a pid file a full disk left without its
    reaper's name. Asked only once the pid file exists, so it never makes a reaper's claim fail."""
    return locked(os.path.join(job_dir, JOB))


def read_pid(job_dir: str) -> tuple[bool, int | None, str | None]:
    """(claimed, the job's pid or None, its reaper's name or None)."""
    try:
        with open(os.path.join(job_dir, "pid"), "rb") as f:
            words = f.read().split()
    except OSError:
        return False, None, None
    pid, reaper = int(words[0]) if words and words[0].isdigit() else None, words[1].decode() if len(words) > 1 else None
    if pid is None or reaper is None:  # (not started yet, or a full disk: mark_pid's name then)
        with contextlib.suppress(OSError, StopIteration, ValueError):
            marked, reaper = next(n for n in os.listdir(job_dir) if n.startswith("pid."))[4:].split(".", 1)
            pid = int(marked)
    return True, pid, reaper


def started_at(job_dir: str) -> float | None:
    """When the job was claimed (the pid file's mtime)."""
    with contextlib.suppress(OSError):
        return os.stat(os.path.join(job_dir, "pid")).st_mtime
    return None


def process_name(pid: int) -> str | None:
    """`<pid>.<start time>` of a live process (clock ticks since boot, from /proc): a name no later process shares;
    None once it has ended (a zombie has). A reaper's name in its jobs' pid files: whether a job still has it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else f"{pid}.{fields[19].decode()}"


def reaper_alive(name: str) -> bool:
    pid = name.split(".", 1)[0]
    return pid.isdigit() and process_name(int(pid)) == name


class Acks:
    def __init__(self, spool: str, current):
        """`current()`: the acks of the jobs still here, what the log is rewritten with past ACKS_COMPACT_BYTES."""
        self.path, self.current, self.lock = os.path.join(spool, "acks.log"), current, threading.RLock()

    def add(self, kind: str, jobs: list[tuple[int, int]]) -> None:
        with self.lock, open(self.path, "a") as f:
            f.write("".join(f"{kind} {job_id} {attempt}\n" for job_id, attempt in jobs))
            if f.tell() >= ACKS_COMPACT_BYTES:
                self.rewrite(self.current)

    def load(self, jobs_dir: str) -> dict[tuple[int, int], set[str]]:
        """(job id, attempt) -> {"r", "f"} for the jobs still in `jobs_dir`, the log's new content."""
        acks: dict[tuple[int, int], set[str]] = {}
        try:
            with open(self.path, "rb") as f:
                for words in map(bytes.split, f):
                    if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
                        acks.setdefault((int(words[1]), int(words[2])), set()).add(words[0].decode())
        except OSError:  # (none yet; or unreadable: rewriting it with what was read would lose the rest for good)
            return acks
        acks = {k: v for k, v in acks.items() if os.path.isdir(os.path.join(jobs_dir, str(k[0])))}
        with contextlib.suppress(OSError):  # (a full disk: the log stays as it was, longer than needed)
            self.rewrite(lambda: acks)
        return acks

    def rewrite(self, current) -> None:
        """Replace the log with `current()`, read under its lock: an ack added meanwhile set its job's flag first."""
        with self.lock:
            write_atomic(self.path, "".join(f"{kind} {i} {a}\n" for (i, a), kinds in current().items()
                                            for kind in sorted(kinds)).encode(), durable=False)
