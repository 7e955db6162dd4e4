"""The output side channel's wire format, and the client's side of it (grun.stream_server is the node's).

A job's bulk bytes bypass Pyro5 (invariant 5): a client given (host, port, token) by the node's StreamServer.offer
reads the job's spool files with `attach` on a TCP socket (TLS with `tls:`), from any offset while the job runs, so
it can detach and re-attach (invariant 3); its stdin flows the other way into the job's FIFO. Frames, both ways:
1 type byte + 4-byte big-endian length + payload. The client first sends its token, then (with a cluster secret) a
proof of the secret bound to it (grun.auth). No logging here: every `grun CMD` imports this module."""
import contextlib
import errno
import json
import os
import select
import socket
import stat
import struct
import threading
from functools import partial

from . import auth
from .wire import is_unreachable, recv_exact, refused_tls

HEADER = struct.Struct(">cI")
OUT, ERR, EXIT = b"O", b"E", b"X"      # server -> client
NOTE = b"N"                            # server -> client: a word for the user (attach's on_note), not job output
STDIN, STDIN_EOF = b"I", b"C"          # client -> server
MAX_FRAME = 16 << 20                   # anything longer is garbage, not data
TOKEN_LEN = 32
BATCH = 256 << 10                      # server: sending less, let the job write more first; client: bulk
STDIN_READ = 64 << 10
PIPE_SIZE = 1 << 20                    # a client's stdout pipe while it carries bulk output

# A peer that vanished (host down, network cut) is noticed within KEEPIDLE + KEEPINTVL * KEEPCNT seconds
# even while the job prints nothing: the client goes back to the master, the node drops the connection.
KEEPIDLE, KEEPINTVL, KEEPCNT = 10, 5, 3
# A CLI may restore SIGPIPE's default to die quietly under `| head`; a dead socket must not kill it.
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
CLOSED = "connection closed before the exit status"


class StreamBroken(Exception):
    """The connection dropped before EXIT; re-attach with a new token at the offsets reached (attach sets them).
    `input_cut`: our input had not all gone out, and the node ends the job's input with the connection (grun.follow)."""
    out_offset = err_offset = 0
    input_cut = False
    offsets = property(lambda self: (self.out_offset, self.err_offset))

    def __str__(self) -> str:
        return f"{self.args[0]} (stdout at {self.out_offset}, stderr at {self.err_offset})"


class Exit(dict):
    """The job's end as its node sent it; `wrote`: whether this attach wrote any of its bytes (grun.follow)."""
    wrote = False


def tune(sock: socket.socket) -> None:  # no Nagle delay; keepalive probes (KEEPIDLE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in ((socket.TCP_NODELAY, 1), (socket.TCP_KEEPIDLE, KEEPIDLE), (socket.TCP_KEEPINTVL, KEEPINTVL),
                          (socket.TCP_KEEPCNT, KEEPCNT)):
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def connect(host: str, port: int, token: str, timeout: float = 10.0) -> socket.socket:
    """The one way to a node's side channel: a connection, tuned, TLS with `tls:`, that claims `token`'s offer."""
    # bytes: getaddrinfo would otherwise import the "idna" codec (~1.3 ms of a `grun CMD`)
    sock = socket.create_connection((host.encode("ascii") if host.isascii() else host, port), timeout=timeout)
    tune(sock)
    if (tls := auth.tls_client()) is not None:
        try:
            sock = secure(sock, tls, timeout, server_hostname=host)
        except OSError as e:
            raise refused_tls(e, f"{host}:{port}") or e from None
    sock.sendall((token + auth.side_proof(token)).encode("ascii"), _NOSIGNAL)
    sock.settimeout(None)
    return sock


def secure(sock: socket.socket, context, timeout: float, **how) -> socket.socket:
    """`sock` made TLS with `context` behind a local socket pair: the caller gets the plain end, a thread relays the
    other to the TLS socket. An SSL socket must not be read and written by two threads at once (receiver and input
    sender; pump and stdin reader), and callers keep sendfile, splice and shutdown, the same code with TLS or not."""
    sock = context.wrap_socket(sock, do_handshake_on_connect=False, **how)
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        ours, theirs = socket.socketpair()
    except BaseException:
        sock.close()
        raise
    ours.settimeout(timeout)
    threading.Thread(target=_relay, args=(sock, theirs), name="grun-stream-tls", daemon=True).start()
    return ours


def _relay(tls, plain: socket.socket) -> None:
    """Bytes both ways between a TLS socket and the plain one until both ways have ended (an end is passed on as a
    half-close; the plain end's owner hanging up ends the way to it at once), then closes both."""
    import ssl
    down = up = b""  # read from TLS, not yet written to plain; and the other way
    down_open, up_open, hung = True, True, False
    try:
        tls.setblocking(False)
        plain.setblocking(False)
        while down_open or down or up_open or up:
            moved, waits = False, 0
            for step in range(4):  # (each its own try: any may block while the others go)
                try:
                    if step == 0 and down_open and not down:
                        down, moved = tls.recv(BATCH), True  # (one TLS record, 16 KiB at most)
                        if not down:
                            down_open = False
                            plain.shutdown(socket.SHUT_WR)
                    elif step == 1 and down:
                        down, moved = down[plain.send(down, _NOSIGNAL):], True
                    elif step == 2 and up_open and not up:
                        up, moved = plain.recv(BATCH), True
                        if not up:
                            up_open = False
                            socket.socket.shutdown(tls, socket.SHUT_WR)  # (TLS's shutdown would drop the SSL object)
                    elif step == 3 and up:
                        up, moved = up[tls.send(up):], True
                except BlockingIOError:
                    pass
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                    waits |= select.POLLOUT if isinstance(e, ssl.SSLWantWriteError) else select.POLLIN
            if not moved:  # wait for what blocked; the TLS socket only if we wait on it (its HUP is for later)
                poller = select.poll()
                if waits:
                    poller.register(tls, waits)
                if not hung:  # (once hung up, the plain end never blocks a read: data or its end)
                    poller.register(plain, (select.POLLOUT if down else 0) | (select.POLLIN if up_open and not up else 0))
                if any(fd == plain.fileno() and ev & (select.POLLHUP | select.POLLERR) for fd, ev in poller.poll(1000)):
                    # its owner closed it: nobody reads what TLS brings now, but what the owner wrote before
                    # (still in the pair's buffer, or in `up`) goes out whole: a stream's or a transfer's end
                    hung, down_open, down = True, False, b""
    except OSError:
        pass  # a peer went away: closing the plain end tells its owner
    finally:
        plain.close()
        tls.close()


class WriteError(OSError):
    """Our own stdout or stderr refused bytes (`> /dev/full`, `>&-`); said as coreutils say it."""

    def __str__(self) -> str:
        return f"write error: {self.strerror}"


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])  # someone handed us a non-blocking fd


def _send_input(sock: socket.socket, source: int | bytes | tuple, send_lock: threading.Lock, ended: list) -> None:
    """Our input (a fd read to its end, or all of it as bytes or a tuple of bytes) as STDIN frames, then STDIN_EOF
    (`ended` gets True once it went out); a thread of its own (it may stay blocked reading a tty)."""
    chunks = (memoryview(part)[i:i + STDIN_READ] for part in (source if isinstance(source, tuple) else (source,))
              for i in range(0, len(part), STDIN_READ))  # (slices: a map's calls share its function's bytes)
    read = partial(os.read, source) if isinstance(source, int) else lambda n: next(chunks, b"")
    try:
        while True:
            try:
                data = read(STDIN_READ)
            except BlockingIOError:
                select.select([source], [], [])  # someone handed us a non-blocking fd
                continue
            with send_lock:  # once attach() has ended, the socket is shut down or closed: this fails
                sock.sendall(HEADER.pack(STDIN if data else STDIN_EOF, len(data)) + data, _NOSIGNAL)
            if not data:
                return ended.append(True)
    except OSError:
        pass  # the connection went away; the receiving side reports it


def input_again(source: int | bytes | tuple | None):
    """A function giving attach()'s stdin_fd for a job's next run (retry, re-queue): the same bytes; a regular file
    (`< FILE`) from where it stood, opened anew (an earlier run's sender keeps its fd); a pipe: b""."""
    if not isinstance(source, int) or not stat.S_ISREG(os.fstat(source).st_mode):
        return lambda: b"" if isinstance(source, int) else source
    offset = os.lseek(source, 0, os.SEEK_CUR)

    def reopen() -> int:
        os.lseek(fd := os.open(f"/proc/self/fd/{source}", os.O_RDONLY | os.O_CLOEXEC), offset, os.SEEK_SET)
        return fd
    return reopen


def _recv(sock: socket.socket, n: int) -> bytes:
    try:
        if (got := recv_exact(sock, n)) is not None:
            return got
    except OSError as e:
        raise StreamBroken(str(e)) from e
    raise StreamBroken(CLOSED)


def grow_pipe(fd: int) -> None:
    """A pipe carrying bulk output gets 1 MiB, not 64 KiB (`grun job | cat`: client CPU 0.38 -> 0.19 s per GiB). Bulk
    only: pipe buffers are charged to the user, and idle clients' big pipes would shrink that user's new pipes to a
    page each (fs.pipe-user-pages-soft)."""
    import fcntl  # here, not at import: a `grun true` never needs it
    with contextlib.suppress(OSError):  # not a pipe, or over fs.pipe-max-size or the user's quota
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _move(sock: socket.socket, sink, n: int, view: memoryview, splice: bool) -> int | None:
    """Up to n bytes of a frame from the socket to its sink: spliced into a pipe (None: these fds cannot), or copied."""
    while True:
        try:
            k = os.splice(sock.fileno(), sink, n) if splice else sock.recv_into(view[:n])
        except BlockingIOError:
            select.select([], [sink], [])  # someone handed us a non-blocking pipe
            continue
        except OSError as e:
            if splice and e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                return None  # (EBADF: a sink that is no fd at all; copying says so)
            if isinstance(e, BrokenPipeError):
                raise  # our reader went away, as with os.write
            raise StreamBroken(str(e)) from e
        if not k:
            raise StreamBroken(CLOSED)
        if callable(sink):
            sink(bytes(view[:k]))
        elif not splice:
            try:
                write_all(sink, view[:k])
            except OSError as e:  # our stdout is full or closed (a reader gone: as it is): no retry heals it
                raise e if isinstance(e, BrokenPipeError) else WriteError(e.errno, e.strerror) from None
        return k


def attach(host: str, port: int, token: str, *, stdout_fd: int = 1, stderr_fd: int = 2,
           stdin_fd: int | bytes | tuple | None = None, out_offset: int = 0, err_offset: int = 0, on_note=None) -> dict:
    """Stream a job's output to our fds (and our stdin to it) until it ends; return its EXIT (an Exit). A sink may be a
    callable taking bytes, and stdin_fd bytes (or a tuple of them): the job's whole input. `on_note(text)` hears what
    the node tells the user ("output stalled: ..."). Raises StreamBroken if the connection drops first,
    BrokenPipeError if our stdout/stderr reader went away (`grun yes | head -1`), WriteError if they refuse bytes."""
    offsets, sinks = {OUT: out_offset, ERR: err_offset}, {OUT: stdout_fd, ERR: stderr_fd}
    sock, send_lock, sent = None, threading.Lock(), []
    try:
        try:
            sock = connect(host, port, token)
        except OSError as e:
            if not is_unreachable(e):  # (out of fds here: no retry heals it)
                raise
            raise StreamBroken(f"cannot connect to {host}:{port}: {e}") from e
        if stdin_fd is not None:
            threading.Thread(target=_send_input, args=(sock, stdin_fd, send_lock, sent), name="grun-stream-stdin",
                             daemon=True).start()
        view = memoryview(bytearray(1 << 20))
        # Pipes get the bytes by splice: no copy into Python and out (half the client's CPU); other fds get copies.
        pipes = {kind for kind, sink in sinks.items() if not callable(sink)}
        while True:
            kind, n = HEADER.unpack(_recv(sock, HEADER.size))
            if n > MAX_FRAME or (kind not in sinks and kind not in (EXIT, NOTE)):
                raise StreamBroken(f"garbage frame (type {kind!r}, length {n})")
            if kind == NOTE:  # (e.g. its output waits for room on a full spool disk)
                note = _recv(sock, n).decode("utf-8", "replace")
                with contextlib.suppress(OSError):  # (our stderr closed or full: not the connection's fault)
                    if on_note is not None:
                        on_note(note)
                continue
            if kind == EXIT:
                try:
                    status = Exit(json.loads(_recv(sock, n)))
                except ValueError as e:
                    raise StreamBroken(f"bad exit payload: {e}") from e
                status.wrote = offsets != {OUT: out_offset, ERR: err_offset}
                return status
            sink = sinks[kind]
            if kind in pipes and n >= BATCH:
                grow_pipe(sink)
            while n:  # straight from the socket to the sink: no frame buffering
                if (k := _move(sock, sink, n, view, kind in pipes)) is None:
                    pipes.discard(kind)  # and copy through user space instead
                    continue
                offsets[kind] += k
                n -= k
    except StreamBroken as e:
        e.out_offset, e.err_offset = offsets[OUT], offsets[ERR]
        e.input_cut = stdin_fd is not None and not sent  # (an offer not claimed ends it too)
        raise
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # breaks a send of _send_input blocked on back-pressure
            with send_lock:  # none is in flight when the socket is closed
                sock.close()
