"""The node's drain: one thread moves every running job's stdout and stderr from its pipes (FIFOs in its spool
directory, grun.spool) into its spool files by splice, only while the job holds less than `spool_max` there
(invariant 9). Past it the pipe fills and the job waits in its write, as for a slow reader's pipe: an attached reader
sets its pace, and with none it waits for one. Bytes sent to a client are punched out of the file when room is needed
(FALLOC_FL_PUNCH_HOLE: offsets stay, blocks go), never bytes an attached or offered client has not been sent; a
re-attach replays what is held. Why pipes: a write to a file cannot be made to wait, and stopping the job (SIGSTOP)
clashes with suspend. The reaper holds a read end of each pipe until the job has ended, and drains what is left before
it writes the status: a node daemon restart never kills a job waiting on output (invariant 3)."""
import contextlib
import ctypes
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from . import spool
from .background import Loop
from .spool import STREAMS
from .stream import PIPE_SIZE, grow_pipe

log = logging.getLogger("grun.node")

BLOCK = 4096                 # punched ranges are whole blocks
PUNCH = 0x01 | 0x02          # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class Output:
    """One job's output in the spool: per stream its pipe, its file (appended to), the first byte held
    (`start`: before it, punched) and the furthest byte sent to a client that has left (`sent`); the
    tails (grun.tail) of the clients attached or offered; and whether it waits for them (`full`)."""

    def __init__(self, drain: "Drain", key: str, job_dir: str):
        self.drain, self.key, self.dir = drain, key, job_dir
        self.pipes, self.files = {}, {}  # stream name -> its pipe's fd, its spool file's fd
        self.start = {name: spool.first_held(job_dir, name) for name in STREAMS}
        self.sent = dict(self.start)
        self.tails: set = set()
        self.full, self.lock = False, threading.RLock()
        self.free_when_full = 0  # the spool disk's free bytes (_free_bytes) at its last refusal of our write

    def held(self) -> int:
        with self.lock:  # (its files close at its end)
            return sum(os.fstat(fd).st_size - self.start[name] for name, fd in self.files.items())

    def held_from(self, *offsets: int) -> list[int]:
        """Where a client asking for stdout and stderr from these offsets starts: not before what is held."""
        return [max(offset, self.start[name]) for offset, name in zip(offsets, STREAMS)]

    def attach(self, tails: list) -> None:
        """An offer's tails, moved up to the first byte held: from now on nothing they have not sent is punched out."""
        with self.lock:
            for tail in tails:
                if tail.offset < self.start[tail.name]:
                    tail.seek(self.start[tail.name])
            self.tails.update(tails)

    def detach(self, tails: list) -> None:
        with self.lock:
            for tail in tails:
                self.sent[tail.name] = max(self.sent[tail.name], tail.offset)
            self.tails.difference_update(tails)
        self.progress()

    def progress(self) -> None:
        """A client was sent more: a job waiting for room may go on."""
        if self.full:  # (a move that finds no room sets it, then looks again: see move)
            with self.lock:
                if self.full and self.pipes:
                    self.full = False
                    for fd in self.pipes.values():
                        self.drain.poll.register(fd, select.EPOLLIN)

    def _discard(self) -> bool:
        """Punch out what every client attached or offered was sent (none: the furthest one was); whether any went."""
        freed = False
        for name, fd in self.files.items():
            offsets = [t.offset for t in self.tails if t.name == name]
            upto = (min(offsets) if offsets else self.sent[name]) // BLOCK * BLOCK
            if upto > self.start[name] and self._punch(fd, self.start[name], upto):
                self.start[name], freed = upto, True
        return freed

    def _punch(self, fd: int, start: int, end: int) -> bool:
        if _libc.fallocate(fd, PUNCH, start, end - start) == 0:
            return True
        if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):  # no reader could ever make room
            log.error("the spool's file system cannot punch holes: spool_max is not applied")
            self.drain.limit = lambda: float("inf")
        return False

    def move(self, name: str) -> None:
        """What the job's pipe holds into its file, as far as its room allows."""
        with self.lock:
            if (pipe := self.pipes.get(name)) is None:
                return
            room = self.drain.limit() - self.held()
            if room < PIPE_SIZE and self._discard():
                room = self.drain.limit() - self.held()
            if room <= 0:
                return self._wait()
            try:
                n = spool.append_from_pipe(pipe, self.files[name], min(room, PIPE_SIZE))
            except BlockingIOError:
                return
            except OSError as exc:  # (its bytes stay in the pipe)
                if not spool.disk_full(exc):
                    raise
                return self._disk_full(name, exc)
            # A stall ends when the disk has room again, not at a write into a block it held or one punching a
            # client's bytes freed (the notices flapped). Counted from what was free when it refused us: some free
            # blocks are never ours (ext4 keeps up to 16 MiB of them).
            if n and self in self.drain.stalled and self._free_bytes(name) >= self.free_when_full + PIPE_SIZE:
                self.drain.stalled.discard(self)
                log.info("job %s: spool disk space is back: its output flows again", self.key)
            if n == 0:  # every writer has gone
                self._close(name)
            elif n >= 64 << 10:
                grow_pipe(pipe)  # a bulk writer: 1 MiB per wakeup, not 64 KiB
        self.drain.wake(self.key)

    def _wait(self) -> None:
        """Stop watching its pipes until a client is sent more (progress): the job waits in its write."""
        self.full = True
        for fd in self.pipes.values():
            with contextlib.suppress(OSError):
                self.drain.poll.unregister(fd)
        if self._discard():  # a client sent more before `full` was set did not see it
            self.progress()

    def _disk_full(self, name: str, exc: OSError) -> None:
        """The spool's disk is full: as at spool_max, the job waits in its write and what clients were sent is
        punched out to make room; the drain also looks again every spool.DISK_RETRY_SECS, for space freed by
        others. Said once per stall (a full disk fails every job's write: no traceback each)."""
        if self._discard():
            return  # (its pipe is still watched: the move is tried again at once)
        # (a quota's refusal, EDQUOT, leaves the disk's free blocks as they were: its stall ends at a write)
        self.free_when_full = self._free_bytes(name) if exc.errno == errno.ENOSPC else -PIPE_SIZE
        if self not in self.drain.stalled:
            self.drain.stalled.add(self)
            log.warning("job %s: the spool disk is full (%s): its output waits until there is space",
                        self.key, os.path.dirname(self.dir))
        self._wait()

    def _free_bytes(self, name: str) -> int:
        """The spool disk's free space for us: root's writes also fill the blocks reserved for root (5 % on ext4)."""
        st = os.fstatvfs(self.files[name])
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize

    def _close(self, name: str) -> None:
        if (fd := self.pipes.pop(name, None)) is not None:
            self.drain.fds.pop(fd, None)
            with contextlib.suppress(OSError):
                self.drain.poll.unregister(fd)
            os.close(fd)

    def finish(self, flush: bool = False, unlink: bool = True) -> int:
        """The job has ended (its reaper drained its pipes; `flush`: we do, and say what a full disk dropped)."""
        lost = 0
        with self.lock:
            self.drain.stalled.discard(self)
            for name in STREAMS:
                if flush and name in self.pipes and not spool.drain_pipe(self.pipes[name], self.dir, name):
                    lost += spool.drop_pipe(self.pipes[name])
                self._close(name)
                if unlink:
                    with contextlib.suppress(OSError):
                        os.unlink(spool.pipe_path(self.dir, name))
            for fd in self.files.values():
                os.close(fd)
            self.files.clear()
        return lost


class Drain:
    """The drain thread and the outputs of this node's running jobs."""

    def __init__(self, limit: Callable[[], int], wake: Callable[[str], None], stop: threading.Event):
        self.limit, self.wake = limit, wake  # spool_max in bytes; tell a job's attached clients
        self.outputs: dict[str, Output] = {}
        self.fds: dict[int, tuple[Output, str]] = {}  # pipe -> its job's output and stream
        self.stalled: set[Output] = set()  # outputs waiting for space on a full spool disk
        self._retry_at = 0.0
        self.poll, self._waker = select.epoll(), os.eventfd(0)  # (close wakes the poll: no 1 s wait)
        self.poll.register(self._waker, select.EPOLLIN)
        self.loop = Loop("grun-node-drain", self._step, 0.0, log, stop)
        self.loop.start()

    def add(self, key: str, job_dir: str) -> None:
        """Drain the pipes the job has (a stream sent to a file by -o has none): when the node writes its directory
        or adopts it, once (a second Output would orphan the first one's fds)."""
        if key in self.outputs:
            return
        out = self.outputs[key] = Output(self, key, job_dir)
        with out.lock:
            for name in STREAMS:
                try:
                    out.pipes[name] = pipe = spool.open_in(job_dir, name + ".pipe", os.O_RDONLY | os.O_NONBLOCK)
                    out.files[name] = spool.open_in(job_dir, name, os.O_WRONLY | os.O_CREAT)
                except FileNotFoundError:  # no pipe: -o sent it to a file
                    out._close(name)
                    continue
                except OSError:  # (out of fds: undrained, the job would block: said)
                    self.outputs.pop(key, None)
                    out.finish(unlink=False)  # its pipes and files so far
                    raise
                self.fds[pipe] = (out, name)
                self.poll.register(pipe, select.EPOLLIN)

    def unread(self) -> dict[str, int]:
        """Job key -> the bytes held of each job whose output waits at spool_max, no client attached (grun why)."""
        return {k: o.held() for k, o in list(self.outputs.items()) if o.full and not o.tails and o not in self.stalled}

    def finish(self, key: str, flush: bool = False) -> int:
        return 0 if (out := self.outputs.get(key)) is None else out.finish(flush)

    def forget(self, key: str) -> None:
        if (out := self.outputs.pop(key, None)) is not None:
            out.finish()

    def _step(self) -> None:
        for fd, _ in self.poll.poll(1.0):
            if (found := self.fds.get(fd)) is not None:
                found[0].move(found[1])
        if self.stalled and time.monotonic() >= self._retry_at:  # space freed by others, or a disk grown
            self._retry_at = time.monotonic() + spool.DISK_RETRY_SECS
            for out in list(self.stalled):
                out.progress()

    def close(self) -> None:
        """The node daemon stops: its running jobs' pipes stay for the next one."""
        os.eventfd_write(self._waker, 1)
        self.loop.stop(join=2.0)
        for out in self.outputs.values():
            out.finish(unlink=False)
        self.poll.close()
        os.close(self._waker)
