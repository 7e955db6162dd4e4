"""Side-channel byte streams between a job's node and a client.

This module owns the bulk bytes of a job (DESIGN invariant 5): the job's stdout and stderr, which the
job writes straight into spool files on its node, flow to the client, and the client's stdin flows to
the job through a FIFO the node holds.  Pyro5 only carries the control message: a call elsewhere
gives the client (host, port, token) from `StreamServer.offer`, and the client opens a raw TCP
socket to it with `attach`.  Since the spool files are the source of truth, a client can detach and
re-attach at any offset while the job keeps running (invariant 3).

Wire format, both directions: 1 byte type + 4-byte big-endian length + payload.  The client first
sends the 32 hex characters of its one-time token; the server answers with frames or closes.
"""
from __future__ import annotations

import errno
import json
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names for annotations only: the client path must not import these
    import logging

# No logging, secrets or dataclasses at import: the `grun` client imports this module, and pays for
# every import on each call (tests/test_cli_fast.py).

HEADER = struct.Struct(">cI")
OUT, ERR, EXIT = b"O", b"E", b"X"      # server -> client
STDIN, STDIN_EOF = b"I", b"C"          # client -> server
MAX_FRAME = 16 << 20                   # anything longer is garbage, not data
TOKEN_LEN = 32
TOKEN_TTL = 60.0                       # seconds an offered token stays usable
HANDSHAKE_TIMEOUT = 10.0
EXIT_LINGER = 5.0                      # how long we wait for the client to hang up after EXIT
CHUNK = 4 << 20                        # largest data frame the server sends
BATCH = 256 << 10                      # sending less than this, let the job write more first
SMALL = 64 << 10                       # below this, pread + one send is cheaper than sendfile
DROP_AFTER = 1 << 30                   # past this many bytes of one spool, drop what was sent ...
DROP_BEHIND = 64 << 20                 # ... in windows of this size (_Spool._drop_behind)
MIN_WAIT, MAX_WAIT = 0.001, 0.025      # idle backoff while tailing the spool files
STDIN_READ = 64 << 10
PIPE_SIZE = 1 << 20                    # a client's stdout pipe while it carries bulk output

# A peer that vanished (host down, network cut) is noticed within about KEEPIDLE + KEEPINTVL * KEEPCNT
# seconds even while the job prints nothing, so the client can go back to the master and the node
# can drop the connection.
KEEPIDLE, KEEPINTVL, KEEPCNT = 10, 5, 3

# MSG_MORE lets the 5-byte header ride in the same segment as the sendfile payload (Linux only).
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
# A CLI may restore SIGPIPE's default to die quietly under `| head`; a dead socket must not kill it.
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_SPLICE = getattr(os, "splice", None)
_FADVISE = hasattr(os, "posix_fadvise")


class StreamBroken(Exception):
    """The connection dropped before EXIT; re-attach with a new token at these offsets."""

    def __init__(self, message: str, out_offset: int, err_offset: int):
        super().__init__(f"{message} (stdout at {out_offset}, stderr at {err_offset})")
        self.out_offset = out_offset
        self.err_offset = err_offset


class _Dropped(Exception):
    """Socket-side failure inside attach(); turned into StreamBroken with the offsets reached."""


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])  # someone handed us a non-blocking fd


# ---------------------------------------------------------------------------------------- node side

class _Offer:
    """What a token opens. It owns `stdin_fd` (the write end of the job's stdin FIFO) from the offer
    on: the connection that claims it closes it when the client's input ends, however it ends (end of
    input, a hang-up, the job's exit), and an offer nobody claims closes it when it expires, so a job
    never waits for input that can no longer come."""
    __slots__ = ("deadline", "err_offset", "get_status", "job_dir", "job_key", "out_offset", "stdin_fd")

    def __init__(self, job_key: str, job_dir: str, out_offset: int, err_offset: int, stdin_fd: int | None,
                 get_status: Callable[[], dict | None], deadline: float):
        self.job_key, self.job_dir, self.out_offset, self.err_offset = job_key, job_dir, out_offset, err_offset
        self.stdin_fd, self.get_status, self.deadline = stdin_fd, get_status, deadline

    def close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            os.close(fd)


class _Conn:
    """One attached client: a pump thread (files -> socket) and a reader thread (socket -> stdin);
    the reader closes the socket, once the pump is done with it."""

    def __init__(self, sock: socket.socket, offer: _Offer, peer):
        self.sock, self.offer, self.peer = sock, offer, peer
        self.wake = threading.Event()
        self.closed = False          # the client hung up or misbehaved: the pump stops
        self.exited = False          # EXIT went out: stdin is no longer forwarded
        self.reader_done = threading.Event()
        self.pump = threading.current_thread()

    def hang_up(self) -> None:
        self.closed = True
        self.wake.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or sendfile
        except OSError:
            pass


class _Spool:
    """One spool file being tailed from an offset into frames of one type."""

    def __init__(self, path: str, offset: int, kind: bytes):
        self.path, self.offset, self.kind, self.fd = path, offset, kind, None
        self.behind = self.advised = offset + DROP_AFTER  # drop-behind marks, see _drop_behind()

    def _drop_behind(self) -> None:
        """Past DROP_AFTER bytes sent, tell the kernel, a window at a time, that we are done with them.

        A job streaming gigabytes fills the page cache with dirty spool pages, and past the background
        writeback threshold (dirty_background_ratio: ~2.3 GB on this 23 GB machine) its own writes got
        three times dearer (`head -c 1G > file`: 0.9 s of CPU, then 2.8-3.3 s once 2 GiB were dirty;
        4 GiB streamed to `| cat`: 626-735 MB/s, with this 791-1,036 MB/s).  DONTNEED starts writeback
        of the range (WB_SYNC_NONE, no wait) and drops the pages already clean, so each window is advised
        twice: first to write it, one window later to drop it.  The first DROP_AFTER bytes are left to the
        kernel: the writeback submitted here costs the node ~0.3 s of CPU per GiB, in the pump's thread,
        while the kernel writes a smaller output back later at no cost to the stream (1 GiB to `| cat`:
        ~830 MB/s with drop-behind from the start, ~1,080 without).  The file stays whole: a re-attach from any offset
        reads it back from disk (invariant 3); pages still in use (in flight on a socket, dirty, under
        writeback) are not dropped."""
        if self.offset - self.advised >= DROP_BEHIND:
            try:
                os.posix_fadvise(self.fd, self.behind, self.offset - self.behind, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # advice only
            self.behind, self.advised = self.advised, self.offset

    def pump(self, sock: socket.socket) -> int:
        """Send up to CHUNK new bytes as one frame; return how many."""
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return 0
        n = min(os.fstat(self.fd).st_size - self.offset, CHUNK)
        if n <= 0:
            return 0
        if n <= SMALL:
            data = os.pread(self.fd, n, self.offset)
            sock.sendall(HEADER.pack(self.kind, len(data)) + data)
            self.offset += len(data)
            return len(data)
        # The header promises n bytes, and the file only grows, so sendfile can always deliver them.
        sock.sendall(HEADER.pack(self.kind, n), _MSG_MORE)
        out, done = sock.fileno(), 0
        while done < n:
            k = os.sendfile(out, self.fd, self.offset + done, n - done)
            if k == 0:
                raise OSError(f"{self.path} shrank below offset {self.offset + done}")
            done += k
        self.offset += n
        if _FADVISE:
            self._drop_behind()
        return n


class StreamServer:
    """Serves offered jobs' spool files (and stdin FIFOs) to clients presenting one-time tokens."""

    def __init__(self, bind_host: str, port: int = 0, log: logging.Logger | None = None):
        import logging
        self._log = log or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._offers: dict[str, _Offer] = {}
        self._conns: dict[str, set[_Conn]] = {}
        self._closed = False
        family = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM)[0][0]
        self._lsock = socket.create_server((bind_host, port), family=family, backlog=128)
        self._address: tuple[str, int] = self._lsock.getsockname()[:2]
        threading.Thread(target=self._accept_loop, name="grun-stream-accept", daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def offer(self, job_key: str, job_dir: str, *, out_offset: int = 0, err_offset: int = 0,
              stdin_fd: int | None = None, get_status: Callable[[], dict | None]) -> str:
        token = os.urandom(TOKEN_LEN // 2).hex()
        self.expire()  # here, so unused tokens cost nothing per job over the node's lifetime
        with self._lock:
            self._offers[token] = _Offer(job_key, job_dir, out_offset, err_offset, stdin_fd,
                                         get_status, time.monotonic() + TOKEN_TTL)
        return token

    def expire(self) -> None:
        """Drop the offers nobody claimed in time (and the job input they held)."""
        now = time.monotonic()
        with self._lock:
            gone = [self._offers.pop(t) for t, o in list(self._offers.items()) if o.deadline < now]
        for offer in gone:
            offer.close_stdin()

    def wake(self, job_key: str) -> None:
        with self._lock:
            conns = list(self._conns.get(job_key, ()))
        for conn in conns:
            conn.wake.set()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            offers, self._offers = list(self._offers.values()), {}
            conns = [c for cs in self._conns.values() for c in cs]
        for offer in offers:
            offer.close_stdin()
        try:
            self._lsock.shutdown(socket.SHUT_RDWR)  # close() alone does not wake accept() on Linux
        except OSError:
            pass
        self._lsock.close()
        for conn in conns:
            conn.hang_up()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._lsock.accept()
            except OSError as e:
                if self._closed:
                    return
                self._log.warning("stream: accept failed: %s", e)  # e.g. EMFILE: retry, never die
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(sock, peer), name=f"grun-stream-{peer}",
                             daemon=True).start()

    def _claim(self, raw: bytes | None) -> _Offer | None:
        with self._lock:  # pop: a token is good for one connection
            offer = self._offers.pop(raw.decode("latin-1"), None) if raw else None
        if offer and offer.deadline < time.monotonic():
            offer.close_stdin()
            return None
        return offer

    def _serve(self, sock: socket.socket, peer) -> None:
        conn = None
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            offer = self._claim(recv_exact(sock, TOKEN_LEN))
            if offer is None:
                self._log.warning("stream %s: bad, expired or used token; closing", peer)
                return
            # Blocking mode: os.sendfile on the raw fd must not see EAGAIN.
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keepalive(sock)
            with self._lock:
                if self._closed:
                    offer.close_stdin()
                    return
                conn = _Conn(sock, offer, peer)
                self._conns.setdefault(offer.job_key, set()).add(conn)
            threading.Thread(target=self._read_client, args=(conn,), daemon=True,
                             name=f"grun-stream-in-{peer}").start()
            self._pump(conn)
        except OSError as e:
            self._log.info("stream %s: connection ended: %s", peer, e)
        except Exception:
            self._log.exception("stream %s: serving failed", peer)
        finally:
            if conn is None:
                sock.close()
            else:  # the reader closes the socket
                with self._lock:
                    group = self._conns.get(conn.offer.job_key, set())
                    group.discard(conn)
                    if not group:
                        self._conns.pop(conn.offer.job_key, None)
                conn.hang_up()

    def _pump(self, conn: _Conn) -> None:
        offer, sock = conn.offer, conn.sock
        spools = [_Spool(os.path.join(offer.job_dir, "stdout"), offer.out_offset, OUT),
                  _Spool(os.path.join(offer.job_dir, "stderr"), offer.err_offset, ERR)]
        wait = MIN_WAIT
        try:
            while not conn.closed:
                conn.wake.clear()
                # Status before sizes: whatever the job wrote before it ended is in the sizes we see.
                status = offer.get_status()
                sent = sum(spool.pump(sock) for spool in spools)
                if sent:
                    wait = MIN_WAIT
                    if sent < BATCH:
                        # A job writing fast would otherwise be chased in tiny frames, and on a
                        # small machine the chase steals the CPU the job needs.  An idle stream
                        # still sends its first new line at once; only the follow-up waits.
                        conn.wake.wait(MIN_WAIT)
                    continue
                if status is not None:
                    payload = json.dumps(status).encode()
                    sock.sendall(HEADER.pack(EXIT, len(payload)) + payload)
                    conn.exited = True
                    # Half-close and let the client hang up first: closing with its stdin frames
                    # still unread would send a RST that can destroy the EXIT frame in flight.
                    sock.shutdown(socket.SHUT_WR)
                    conn.reader_done.wait(EXIT_LINGER)
                    return
                conn.wake.wait(wait)
                wait = min(wait * 2, MAX_WAIT)
        finally:
            for fd in (spool.fd for spool in spools if spool.fd is not None):
                os.close(fd)

    def _read_client(self, conn: _Conn) -> None:
        offer = conn.offer
        try:
            while True:
                head = recv_exact(conn.sock, HEADER.size)
                if head is None:
                    break
                kind, n = HEADER.unpack(head)
                if kind not in (STDIN, STDIN_EOF) or n > MAX_FRAME:
                    self._log.warning("stream %s: garbage frame (type %r, length %d); closing",
                                      conn.peer, kind, n)
                    break
                data = recv_exact(conn.sock, n)
                if data is None:
                    break
                if offer.stdin_fd is None or conn.exited:
                    continue
                if kind == STDIN_EOF:
                    offer.close_stdin()
                    continue
                try:
                    _write_all(offer.stdin_fd, data)
                except BrokenPipeError:
                    offer.close_stdin()  # the job closed its stdin; the rest goes nowhere
        except OSError as e:
            self._log.info("stream %s: input ended: %s", conn.peer, e)
        finally:
            offer.close_stdin()  # whatever ended the input, the job sees its end (issue 10, bug 1)
            conn.reader_done.set()
            conn.hang_up()
            conn.pump.join()
            conn.sock.close()


# -------------------------------------------------------------------------------------- client side

class _StdinPump(threading.Thread):
    """Copies the client's stdin into STDIN frames, then STDIN_EOF; stops for good once EXIT arrived."""

    def __init__(self, sock: socket.socket, fd: int | bytes):
        super().__init__(name="grun-stream-stdin", daemon=True)  # may stay blocked reading a tty
        self.sock, self.fd = sock, fd
        self.done = threading.Event()
        self.send_lock = threading.Lock()
        self._pos = 0

    def _read(self) -> bytes:
        if isinstance(self.fd, (bytes, bytearray, memoryview)):  # the whole input, given up front
            data = bytes(self.fd[self._pos:self._pos + STDIN_READ])
            self._pos += len(data)
            return data
        return os.read(self.fd, STDIN_READ)

    def run(self) -> None:
        try:
            while True:
                try:
                    data = self._read()
                except BlockingIOError:
                    select.select([self.fd], [], [])
                    continue
                with self.send_lock:
                    if self.done.is_set():
                        return
                    if not data:
                        self.sock.sendall(HEADER.pack(STDIN_EOF, 0), _NOSIGNAL)
                        return
                    self.sock.sendall(HEADER.pack(STDIN, len(data)) + data, _NOSIGNAL)
        except OSError:
            pass  # the connection went away; the receiving side reports it

    def stop(self) -> None:
        self.done.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # breaks a sendall blocked on back-pressure
        except OSError:
            pass
        with self.send_lock:  # after this, nothing of ours touches the socket
            pass


def _recv_into(sock: socket.socket, view) -> int:
    try:
        k = sock.recv_into(view)
    except OSError as e:
        raise _Dropped(str(e)) from e
    if not k:
        raise _Dropped("connection closed before the exit status")
    return k


class _NoSplice(Exception):
    """The kernel refused splice between these two fds: copy through user space instead."""


def _is_pipe(fd) -> bool:
    """A sink we may splice the socket's bytes into (os.splice: Python >= 3.10, Linux)."""
    if _SPLICE is None or callable(fd):
        return False
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _grow_pipe(fd: int) -> None:
    """Give a pipe carrying bulk output 1 MiB instead of 64 KiB: each splice then moves 16 times more
    per wakeup of us and of the reader (`grun job | cat`: client CPU 0.38 -> 0.19 s per GiB).  Only for
    bulk, because the kernel charges pipe buffers to the user: many idle clients holding big pipes would
    push that user's new pipes down to one page each (fs.pipe-user-pages-soft)."""
    import fcntl  # here, not at import: a `grun true` never needs it
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over fs.pipe-max-size or the user's quota: the default size still works


def _splice(sock: socket.socket, fd: int, n: int) -> int:
    """Move up to n bytes from the socket into the pipe fd; the bytes never enter user space."""
    while True:
        try:
            k = _SPLICE(sock.fileno(), fd, n)
        except BlockingIOError:
            select.select([], [fd], [])  # someone handed us a non-blocking pipe
            continue
        except BrokenPipeError:
            raise  # our reader went away, as with os.write
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise _NoSplice() from e
            raise _Dropped(str(e)) from e
        if not k:
            raise _Dropped("connection closed before the exit status")
        return k


def _recv_frame_bytes(sock: socket.socket, n: int) -> bytes:
    try:
        data = recv_exact(sock, n)
    except OSError as e:
        raise _Dropped(str(e)) from e
    if data is None:
        raise _Dropped("connection closed before the exit status")
    return data


def attach(host: str, port: int, token: str, *, stdout_fd: int = 1, stderr_fd: int = 2,
           stdin_fd: int | bytes | None = None, connect_timeout: float = 10.0, out_offset: int = 0,
           err_offset: int = 0) -> dict:
    """Stream a job's output to our fds (and our stdin to it) until it ends; return its EXIT dict.

    A sink may also be a callable taking each piece of bytes as it arrives, and stdin_fd may be bytes:
    the job's whole input (the Python API uses both).

    Raises StreamBroken if the connection drops first, and BrokenPipeError if our stdout/stderr
    reader went away (e.g. `grun yes | head -1`); the caller decides how to exit quietly.
    """
    offsets = {OUT: out_offset, ERR: err_offset}
    sinks = {OUT: stdout_fd, ERR: stderr_fd}
    try:
        # bytes: getaddrinfo would otherwise import the "idna" codec (~1.3 ms of a `grun CMD`)
        sock = socket.create_connection((host.encode("ascii") if host.isascii() else host, port),
                                        timeout=connect_timeout)
    except OSError as e:
        raise StreamBroken(f"cannot connect to {host}:{port}: {e}", out_offset, err_offset) from e
    stdin_pump = None
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keepalive(sock)
            sock.sendall(token.encode("ascii"))
            sock.settimeout(None)
        except OSError as e:
            raise _Dropped(str(e)) from e
        if stdin_fd is not None:
            stdin_pump = _StdinPump(sock, stdin_fd)
            stdin_pump.start()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        # Pipes get the bytes by splice: no copy into Python and out again (half the client's CPU).
        pipes = {kind for kind, sink in sinks.items() if _is_pipe(sink)}
        grown: set[int] = set()
        while True:
            kind, n = HEADER.unpack(_recv_frame_bytes(sock, HEADER.size))
            if n > MAX_FRAME:
                raise _Dropped(f"absurd frame length {n}")
            if kind == EXIT:
                payload = _recv_frame_bytes(sock, n)
                if stdin_pump is not None:
                    stdin_pump.stop()
                try:
                    return json.loads(payload)
                except ValueError as e:
                    raise _Dropped(f"bad exit payload: {e}") from e
            sink = sinks.get(kind)
            if sink is None:
                raise _Dropped(f"unknown frame type {kind!r}")
            if kind in pipes:
                if n >= BATCH and sink not in grown:
                    grown.add(sink)
                    _grow_pipe(sink)
                try:
                    while n:
                        k = _splice(sock, sink, n)
                        offsets[kind] += k
                        n -= k
                    continue
                except _NoSplice:
                    pipes.discard(kind)
            # Copy straight from the socket to the sink in buffer-sized pieces: no frame buffering.
            while n:
                k = _recv_into(sock, view[:min(n, len(buf))])
                if callable(sink):
                    sink(bytes(view[:k]))
                else:
                    _write_all(sink, view[:k])
                offsets[kind] += k
                n -= k
    except _Dropped as e:
        raise StreamBroken(str(e), offsets[OUT], offsets[ERR]) from None
    finally:
        if stdin_pump is not None:
            stdin_pump.stop()
        sock.close()
