"""Side-channel byte streams between a job's node and a client.

The bulk bytes of a job (DESIGN invariant 5): the job's stdout and stderr, which the job writes
straight into spool files on its node, flow to the client, and the client's stdin flows to the job
through a FIFO the node holds. Pyro5 only carries the control message: a call elsewhere gives the
client (host, port, token) from the node's `grun.stream_server.StreamServer.offer`, and the client
opens a raw TCP socket to it with `attach`. Since the spool files are the source of truth, a client
can detach and re-attach at any offset while the job keeps running (invariant 3). This module holds
the wire format and the client's side; grun.stream_server the node's.

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

# No logging, secrets or dataclasses at import: the `grun` client imports this module, and pays for
# every import on each call (tests/test_cli_fast.py).

HEADER = struct.Struct(">cI")
OUT, ERR, EXIT = b"O", b"E", b"X"      # server -> client
STDIN, STDIN_EOF = b"I", b"C"          # client -> server
MAX_FRAME = 16 << 20                   # anything longer is garbage, not data
TOKEN_LEN = 32
BATCH = 256 << 10                      # server: sending less, let the job write more first; client: bulk
STDIN_READ = 64 << 10
PIPE_SIZE = 1 << 20                    # a client's stdout pipe while it carries bulk output

# A peer that vanished (host down, network cut) is noticed within about KEEPIDLE + KEEPINTVL * KEEPCNT
# seconds even while the job prints nothing, so the client can go back to the master and the node
# can drop the connection.
KEEPIDLE, KEEPINTVL, KEEPCNT = 10, 5, 3

# A CLI may restore SIGPIPE's default to die quietly under `| head`; a dead socket must not kill it.
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_SPLICE = getattr(os, "splice", None)


class StreamBroken(Exception):
    """The connection dropped before EXIT; re-attach with a new token at these offsets."""

    def __init__(self, message: str, out_offset: int, err_offset: int):
        super().__init__(f"{message} (stdout at {out_offset}, stderr at {err_offset})")
        self.out_offset, self.err_offset = out_offset, err_offset


class _Dropped(Exception):
    """A socket's failure inside attach(), raised as StreamBroken with the offsets reached."""


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


def keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])  # someone handed us a non-blocking fd


class _StdinPump(threading.Thread):
    """Copies the client's stdin into STDIN frames, then STDIN_EOF; stops for good once EXIT arrived."""

    def __init__(self, sock: socket.socket, fd: int | bytes):
        super().__init__(name="grun-stream-stdin", daemon=True)  # may stay blocked reading a tty
        self.sock, self.fd, self._pos = sock, fd, 0
        self.done, self.send_lock = threading.Event(), threading.Lock()

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


def _recv(sock: socket.socket, want):
    """recv_exact(sock, want) for an int, recv_into(want) for a buffer; a failure is _Dropped."""
    try:
        got = recv_exact(sock, want) if isinstance(want, int) else sock.recv_into(want)
    except OSError as e:
        raise _Dropped(str(e)) from e
    if got is None or got == 0:
        raise _Dropped("connection closed before the exit status")
    return got


class _NoSplice(Exception):
    """The kernel refused splice between these two fds: copy through user space instead."""


def _is_pipe(fd) -> bool:
    """A sink we may splice the socket's bytes into (os.splice: Python >= 3.10, Linux)."""
    try:
        return _SPLICE is not None and not callable(fd) and stat.S_ISFIFO(os.fstat(fd).st_mode)
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
            keepalive(sock)
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
            kind, n = HEADER.unpack(_recv(sock, HEADER.size))
            if n > MAX_FRAME:
                raise _Dropped(f"absurd frame length {n}")
            if kind == EXIT:
                payload = _recv(sock, n)
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
                k = _recv(sock, view[:min(n, len(buf))])
                if callable(sink):
                    sink(bytes(view[:k]))
                else:
                    write_all(sink, view[:k])
                offsets[kind] += k
                n -= k
    except _Dropped as e:
        raise StreamBroken(str(e), offsets[OUT], offsets[ERR]) from None
    finally:
        if stdin_pump is not None:
            stdin_pump.stop()
        sock.close()
