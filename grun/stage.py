"""Staging (issue 14; README: `--stage`): a job's files moved over its node's side channel, for a node without the
submitter's filesystem: the submitting `grun` (Client.follow) pushes them into the job's own work dir on the node
(`<job dir>/work`, its user's, gone with the spool) before the job starts, and pulls them back once it ended.
Frames: HEAD (kind, path length, size, mode), the path's bytes, then the file's bytes (sendfile out, splice in)
or, for MISSING and END (which ends a transfer), a text: why not, or the node's refusal. A file is received under
a temporary name, renamed once whole; the node walks paths with O_NOFOLLOW, never following a symlink out of the
work dir, neither writing inputs as root nor sending outputs back."""
import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import struct
import threading
import time

from . import auth, make, mounts, spool, stream, wire
from .core.jobs import ENDING_SIGNALS, FINAL_STATES

HEAD = struct.Struct(">cIQI")    # kind, path length, size, mode
FILE, MISSING, END = b"F", b"M", b"E"
RESERVE = 64 << 20               # free space a node's spool keeps beyond what is staged onto it
PART = ".grun-part."             # a file being received (+ random hex): never under its final name
CHUNK = stream.PIPE_SIZE         # a splice at most: what the pipe from socket to file holds (stream.grow_pipe)
PULL_WAIT = 600.0                # how long the --nowait stager waits for an ended job's node that is away
_lock = threading.Lock()


class Refused(Exception):
    """A transfer that cannot go on; its message is for the user."""


def under(path: str, home: str) -> str | None:
    rel = os.path.relpath(os.path.normpath(path), home)
    return None if rel in (".", "..") or rel.startswith("../") else rel


def wanted(job: dict, mode: str, fetch_path: list, node_mounts: list | None) -> bool:
    """Stage this job on this node? Its --stage, else the node's `stage:`; auto: a job with files to stage, when the
    node does not mount its cwd's filesystem (grun.mounts), lacks the cwd, or the cwd lies under `fetch_path:`."""
    cwd = job["cwd"]
    return (job.get("stage") or mode) == "always" or mounts.may_stage(job, mode) and (
        mounts.shared(job.get("cwd_fs"), node_mounts) is False or not os.path.isdir(cwd)
        or any(mounts.inside(cwd, p) for p in fetch_path))


class Staged:
    """A staged job on its node (its LiveJob's `stage`): its files, and whether it still waits for its inputs; its cwd
    and -M paths become the work dir's."""

    def __init__(self, node, live):
        job, self.node, self.live, self.work = live.job, node, live, os.path.join(live.dir, "work")
        self.home = job.get("stage_home") or job["cwd"]  # (a job re-adopted from its spool has it)
        rel = lambda p: under(p, self.home) or under(p, self.work)
        pick = lambda *lists: list(dict.fromkeys(r for paths in lists for p in paths or () if (r := rel(p))))
        # its -o/--err files (relative to its cwd) go back as --stage-out's; an appending one (or a `>> F`) goes first
        logs = {k: os.path.join(job["cwd"], job[k]) for k in ("stdout_file", "stderr_file") if job.get(k)}
        appended = [p for k, p in logs.items() if job.get(k.replace("_file", "_append"))] + (job.get("appends") or [])
        self.inputs, self.optional = pick(job.get("inputs"), job.get("stage_in"), appended), pick(appended)
        self.outputs = pick(job.get("outputs"), job.get("stage_out"), logs.values(), appended)
        here = lambda p: os.path.join(self.work, r) if (r := rel(p)) else p
        cmd = _rehome(job["cmd"], self.home, self.work, {*self.inputs, *self.outputs})
        live.job = dict(job, cwd=self.work, stage_home=self.home, cmd=cmd, **{k: here(p) for k, p in logs.items()},
                        **{k: [here(p) for p in job.get(k) or ()] for k in ("inputs", "outputs")})
        uid = job.get("uid")
        self.ids = (uid, job.get("gid", uid)) if os.geteuid() == 0 and uid else None
        self.waiting = bool(self.inputs) and "stage_home" not in job  # (re-adopted: it was started)
        self.failed, self.sock = False, None  # (sock: a push under way)
        self.since = time.monotonic()  # (it waits stage_wait from here: a reload applies to waiting jobs too)
        spool.make_dir(os.path.dirname(self.work))
        os.makedirs(self.work, 0o700, exist_ok=True)  # (then its user's: 0755 let others read its staged copies)
        if self.ids:
            os.chown(self.work, *self.ids)
        for rel in self.outputs:  # their directories, as in its cwd (else `-o logs/x` cannot be opened)
            with contextlib.suppress(OSError):  # (re-adopted: the job may have put a symlink there)
                os.close(_open(self.work, rel, True, self.ids))

    def offer(self, out: bool) -> dict | None:
        """A ticket to push the inputs (while it waits for them), or to pull the outputs (once it ended); or None."""
        if not (self.live.status is not None and self.outputs and not (self.failed or self.live.delivered) if out
                else self.waiting):  # (outputs released: delivered once, never again over the user's later edits)
            return None
        token = self.node.stream.offer_other(lambda sock: self.serve(sock, out), isinstance(auth.caller(), dict))
        failed = out and self.live.status.get("exit_code") != 0 and bool(self.live.job.get("make"))  # (see open)
        return {"host": self.node.advertise, "port": self.node.stream.address[1], "token": token,
                "files": self.outputs if out else self.inputs, "failed": failed}

    def serve(self, sock: socket.socket, out: bool) -> None:
        """An offer's connection: the outputs sent back, or the inputs received and then the job started."""
        if out:
            for rel in self.outputs:
                _send(sock, *self.open(rel, self.live.status or {}))
            return _end(sock)
        try:
            self.sock = sock
            _receive(sock, self.work, set(self.inputs), self.ids, optional=self.optional)
            if not self.settle():  # (before the socket goes: the janitor must not see a push ended and its job waiting)
                raise Refused("the job no longer waits for its inputs")
            self.sock = None
            try:
                self.node._launch(self.live)
            except Exception as exc:
                self.waiting = True
                raise Refused(f"cannot start the job: {exc}") from None
            return _end(sock)
        except Exception as exc:
            why, self.sock = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}", None
            self.fail(why)
            with contextlib.suppress(OSError):
                _end(sock, why)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(30)
                while sock.recv(CHUNK):  # what the client still sends, so that it reads our refusal
                    pass

    def settle(self) -> bool:
        """Whether the job was still waiting for its inputs (it waits no more)."""
        with _lock:
            was, self.waiting = self.waiting, False
        return was

    def fail(self, why: str, sig: int | None = None) -> bool:
        """End the job waiting for its inputs (killed by `sig`, or they did not come whole); False if it was not."""
        if not self.settle():
            return False
        self.failed = True
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(socket.SHUT_RDWR)  # a push under way ends, and its half-written file goes
        with contextlib.suppress(OSError), open(spool.open_in(self.live.dir, "stderr"), "ab") as f:
            f.write(f"grun: staging: {why}\n".encode())  # (as grun.spawner's _fail: every client hears why)
        self.node._end_failed(self.live, f"staging: {why}", signal=sig, exit_code=None if sig else 255)
        return True

    def check(self) -> None:  # by the node's janitor; a push under way is not cut off (a dead client ends it)
        if self.waiting and self.sock is None and time.monotonic() - self.since > self.node.stage_wait:
            self.fail(f"no client sent the inputs within {self.node.stage_wait:g} s")

    def holds(self) -> bool:
        """Whether the node keeps the ended job's end from the master (its dependants would find stale files) until a
        client released its outputs (or failed to fetch them), at most stage_wait from its end (re-adopted: held on)."""
        live = self.live  # (a job killed: its dependants are cancelled, nothing waits for its files)
        done = self.failed or live.delivered or live.tried or live.superseded or live.kills.intersection(ENDING_SIGNALS)
        return bool(self.outputs) and not done and time.time() - live.status.get("end_time", 0) < self.node.stage_wait

    def ended(self, status: dict) -> dict:
        """The job's status, with the outputs that cannot go back named in its error."""
        gone = []
        for rel in [] if self.failed else self.outputs:  # (a job that never ran wrote none)
            fd, _, why = self.open(rel, status)
            gone.append(f"{rel} {why}") if fd is None else os.close(fd)
        error = "; ".join(filter(None, [status.get("error"), gone and "staging: " + "; ".join(gone)]))
        return dict(status, error=error) if error else status

    def open(self, rel: str, status: dict) -> tuple[int | None, str, str | None]:
        """An output, open: (fd, rel, None) or (None, rel, why not); the job user's own only. A failed make job's
        FILE.failed (spawner.hide_failed_outputs) goes back as FILE: the client renames it as in place."""
        for name in (rel + ".failed", rel) if status.get("exit_code") != 0 and self.live.job.get("make") else (rel,):
            try:
                fd = _open(self.work, name)
            except FileNotFoundError:
                continue
            except OSError as e:  # a symlink on the way (ELOOP, ENOTDIR): followed only within the work dir
                real = os.path.realpath(os.path.join(self.work, name))
                if (inner := under(real, self.work)) is None:
                    return None, rel, f"is a symlink to {real}, outside the staged tree: not sent back"
                try:
                    fd = _open(self.work, inner)
                except OSError:
                    return None, rel, f"cannot be read: {e.strerror}"
            if not stat.S_ISREG((st := os.fstat(fd)).st_mode) or self.ids and st.st_uid != self.ids[0]:
                os.close(fd)
                return None, rel, "is not a file of the job user's (a FIFO, a hard link to another's?): not sent back"
            return fd, rel, None
        return None, rel, "was never written by the job"


def _rehome(cmd: list, home: str, work: str, rels: set) -> list:
    """The command with a staged file named by its path under the cwd (`%i:$PWD/in.txt`) naming its copy in the work
    dir instead: the job would read, or write, the submitter's path on its node (not there, or another file)."""
    end, names = make.FILE_END.pattern[1:-1], "|".join(map(re.escape, rels))  # (where a word ends; or --in=PATH)
    path = re.compile(f"(?<![^{end}=:]){re.escape(home.rstrip('/'))}/({names})(?![^{end}])")
    return [path.sub(lambda m: os.path.join(work, m[1]), word) for word in cmd] if rels else cmd


def _head(sock, kind: bytes, path: bytes, size: int, mode: int = 0) -> None:
    sock.sendall(HEAD.pack(kind, len(path), size, mode) + path, socket.MSG_MORE if kind == FILE and size else 0)


def _end(sock, why: str = "", kind: bytes = END, path: bytes = b"") -> None:
    """END (after a push: the node's refusal, if any), or MISSING `path` and why."""
    _head(sock, kind, path, len(data := why.encode()))
    sock.sendall(data)


def _read_head(sock) -> tuple[bytes, str, int, int, str]:  # kind, path, size, mode, the text of a frame not a FILE
    head = stream.recv_exact(sock, HEAD.size)
    kind, n, size, mode = HEAD.unpack(head) if head else (None, 0, 0, 0)
    if kind not in (FILE, MISSING, END) or n > 4096 or kind != FILE and size > stream.MAX_FRAME:
        raise Refused("the connection closed" if head is None else f"garbage frame (kind {kind!r})")
    path, text = stream.recv_exact(sock, n), stream.recv_exact(sock, size) if kind != FILE else b""
    if path is None or text is None:
        raise Refused("the connection closed")
    return kind, os.fsdecode(path), size, mode, text.decode(errors="replace")


def _send(sock, fd: int | None, name: str, why: str | None) -> None:  # a file's frame (closes fd), or why not
    if fd is None:
        return _end(sock, why, MISSING, os.fsencode(name))
    try:
        if not stat.S_ISREG((st := os.fstat(fd)).st_mode):
            return _send(sock, None, name, "is not a regular file")
        _head(sock, FILE, os.fsencode(name), st.st_size, st.st_mode & 0o777)
        done = 0
        while done < st.st_size:
            if not (k := os.sendfile(sock.fileno(), fd, done, min(st.st_size - done, 1 << 30))):
                raise OSError(f"{name} shrank while it was sent")  # (the other side sees the connection break)
            done += k
    finally:
        os.close(fd)


def _open(root: str, rel: str, create: bool = False, ids=None, follow: bool = False) -> int:
    """`rel` under `root` read-only, or (`create`) its directory, made as needed (owned by `ids`); not following a
    symlink on the way, unless `follow` (the client, as its user)."""
    fd, parts = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW * (not follow) | os.O_CLOEXEC), rel.split("/")
    try:
        for i, part in enumerate(parts[:-1] if create else parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777 if follow else 0o700, dir_fd=fd)  # (the client's: as its umask says)
                    if ids:
                        os.chown(part, *ids, dir_fd=fd, follow_symlinks=False)
            last = i == len(parts) - 1  # (not blocking: a FIFO the job put there for an output hung the node, its lock held)
            flags = os.O_RDONLY | os.O_NOFOLLOW * (not follow) | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            fd, old = os.open(part, flags, dir_fd=fd), fd
            os.close(old)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _store(sock, root: str, rel: str, size: int, mode: int, ids=None, swept: set | None = None) -> None:
    """`size` bytes from the socket into root/rel: socket -> pipe -> a temporary file, renamed once whole; `swept`: the
    client's directories this pull swept."""
    follow = swept is not None
    if follow and os.path.islink(link := os.path.join(root, rel)):  # (the client: through its user's link, as in place)
        root, rel = "/", os.path.realpath(link).lstrip("/")
    dir_fd, part = _open(root, rel, True, ids, follow), PART + os.urandom(6).hex()
    fds = [dir_fd]
    try:
        if follow and (at := ((st := os.fstat(dir_fd)).st_dev, st.st_ino)) not in swept:  # (once a pull)
            swept.add(at)  # before our part: on NFS, flock is a POSIX lock, which the close of any fd of ours lets go
            _sweep(dir_fd)
        fds += (pipe := os.pipe2(os.O_CLOEXEC))
        stream.grow_pipe(w := pipe[1])
        fds.append(fd := os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                 dir_fd=dir_fd))
        if follow:  # the client: its part locked before its first byte, until renamed (a dup: it outlives the close)
            with contextlib.suppress(OSError):  # (a file system without locks: _sweep cannot lock, and removes none)
                fcntl.flock(fd, fcntl.LOCK_EX)
            fds.insert(0, os.dup(fd))
        if ids:
            os.fchown(fd, *ids)
        left = size
        while left:
            try:
                k = os.splice(sock.fileno(), w, min(left, CHUNK))
            except OSError:  # (reset: as good as closed)
                k = 0
            if not k:
                raise Refused(f"the other side went away while {rel} was sent ({size - left} of {size} bytes)")
            left -= k
            while k:
                try:
                    k -= os.splice(pipe[0], fd, k)
                except OSError as e:
                    raise Refused(f"cannot store {rel}: {e.strerror or e}") from None
        os.fchmod(fd, mode & 0o777 or 0o644)
        os.close(fds.pop())  # before the rename: NFS tells a failed write-back (EDQUOT, EIO) at close
        os.rename(part, rel.rsplit("/", 1)[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=dir_fd)
        raise
    finally:
        for f in fds:
            os.close(f)


def _sweep(dir_fd: int) -> None:
    """Remove the part files that pulls killed mid-file left here: unlocked and not empty (a live one's is locked first)."""
    for name in (n for n in os.listdir(dir_fd) if n.startswith(PART)):
        opener = lambda path, _: os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        with contextlib.suppress(OSError), open(name, "rb", opener=opener) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(f.fileno()).st_size:
                os.unlink(name, dir_fd=dir_fd)


def _receive(sock, root: str, expected: set, ids=None, node: bool = True, optional=()) -> list[str]:
    """Frames until END, each file stored under root. On the node (a push) every expected file (an `optional` one unless
    the client has none) must come, and fit; on the client (a pull), returns the notes of MISSING frames."""
    notes, swept = [], set()
    while (head := _read_head(sock))[0] != END:
        kind, rel, size, mode, text = head
        if rel not in expected:
            raise Refused(f"{rel!r} was not asked for")
        expected.discard(rel)
        if kind == MISSING:
            notes.append(f"{rel} {text}")
            if node and not (rel in optional and text.endswith(os.strerror(errno.ENOENT))):  # (not one unread)
                raise Refused(notes[-1])
            continue
        st = os.statvfs(root)
        if node and size + RESERVE > (free := st.f_bavail * st.f_frsize):
            raise Refused(f"{rel} ({size >> 20} MB) does not fit: the node's spool has {free >> 20} MB free")
        _store(sock, root, rel, size, mode, ids, None if node else swept)
    if node and expected:
        raise Refused(f"not sent: {', '.join(sorted(expected))}")
    return notes


def transfer(ticket: dict | None, job: dict, note, out: bool) -> bool:
    """The client, with a node's ticket (None: nothing to move): a job's inputs before it starts, or its outputs once it
    ended (`out`), into its cwd; what failed is noted. False when it broke (a pull's outputs stay on the node)."""
    if not ticket:
        return True
    whole = True
    with stream.connect(ticket["host"], ticket["port"], ticket["token"]) as sock:
        try:
            if out:
                notes = _receive(sock, job["cwd"], set(ticket["files"]), node=False)
            else:
                with contextlib.suppress(OSError):  # (the node refused: its reason follows)
                    for rel in ticket["files"]:
                        try:
                            fd, why = os.open(os.path.join(job["cwd"], rel), os.O_RDONLY | os.O_CLOEXEC), None
                        except OSError as e:
                            fd, why = None, f"cannot be read: {e.strerror}"
                        _send(sock, fd, rel, why)
                    _end(sock)
                _read_head(sock)  # (the node's refusal, if any: the job's stderr and record say it, Staged.fail)
                notes = []
        except (Refused, OSError) as e:
            whole, notes = False, [f"outputs not all received: {e}; `grun --attach {job['id']}` fetches them again"
                                     if out else f"staging failed: the node did not confirm the inputs: {e}"]
    if ticket.get("failed"):  # as in place: FILE.failed, an older one of other content kept; no FILE left
        make.rename_failed([p for p in job.get("outputs") or () if os.path.relpath(p, job["cwd"]) in ticket["files"]])
    for text in notes:
        note(f"job {job['id']}: {text}")
    return whole


def pull(sup, job: dict, note, release: bool = False, ticket=None) -> str:
    """A follower's pull of a staged job's outputs, and the release it then tells the node (which then tells the
    master of the job's end): "all" (`release`) or "outputs" once we have them, else "tried" (kept for --attach);
    "tried" too for another's job in another's cwd (root's attach: we would write there as root, through its links)."""
    with contextlib.suppress(OSError):
        if job.get("uid", os.getuid()) != os.getuid() and os.stat(job["cwd"]).st_uid != os.getuid():
            note(f"job {job['id']}: its outputs stay on its node for its user: `grun --attach {job['id']}`")
            return "tried"
    return ("all" if release else "outputs") if transfer(ticket or sup.stage(True), job, note, True) else "tried"


def follow_detached(client, job_id: int, log_path: str) -> None:
    """`grun --nowait`: a detached process of the submitter's does for a staged job what a following `grun` does
    (pushes its inputs at each run, pulls its outputs once it ended), then exits; its notes go to `log_path`."""
    if child := os.fork():
        os.waitpid(child, 0)  # (it forks the stager and exits at once: init adopts the stager)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        log, null = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), os.open(os.devnull, os.O_RDWR)
        for fd, to in ((null, 0), (log, 1), (log, 2)):
            os.dup2(fd, to)
        client.reset()  # (the connection is the parent's: ours is made anew)
        note = lambda text: os.write(2, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode(errors="replace"))
        served, pulled, job = None, None, client.wait_started(job_id)
        while job["state"] not in FINAL_STATES:  # (each run's outputs once it ended: its node holds its end until then)
            if (run := (job.get("node"), job.get("attempt"))) != pulled and (sup := client.supervisor(job_id, job)):
                # (an OSError: its node is away, a daemon restarting; pushed once the master has it again)
                with contextlib.suppress(OSError), sup:
                    if run != served:
                        transfer(sup.stage(False), job, note, False)
                        served = run
                    if ticket := sup.stage(True):  # (its work dir goes, as a following grun's; its end told, either way)
                        sup.release(pull(sup, job, note, ticket=ticket))
                        pulled = run  # (once told: a refused connection is tried again)
            try:
                job = client.wait([job_id], 5)[job_id]
            except TimeoutError:
                job = client.wait_started(job_id)
        deadline = time.monotonic() + PULL_WAIT
        while (job.get("node"), job.get("attempt")) != pulled and (sup := client.supervisor(job_id, job)):
            try:  # (its node reported it unfetched: away past stage_wait)
                with sup:
                    return sup.release(pull(sup, job, note))
            except wire.CallRejected as exc:  # its node no longer has the job (forgotten, its spool lost): no wait
                return note(f"job {job_id}: outputs not received, its node no longer has the job ({exc})")
            except OSError as exc:  # its node is away (a daemon restarting), and keeps the outputs meanwhile
                if time.monotonic() > deadline:
                    return note(f"job {job_id}: outputs not received, its node is away ({exc}); "
                                f"`grun --attach {job_id}` fetches them")
            time.sleep(2)
            job = client.job(job_id)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            note(f"job {job_id}: staging stopped: {exc}")
    finally:
        os._exit(0)
