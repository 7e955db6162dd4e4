"""The node's side of the output side channel (grun.stream holds the wire format and the client's side):
it serves a job's spool files, from any offset and while the job still writes them, to a client that
presents a one-time token, and feeds the client's input into the job's stdin FIFO.

Per connection, a pump thread tails the spool files into frames (sendfile past SMALL bytes, so the
bytes never enter Python) and ends with the job's EXIT frame; a reader thread forwards STDIN frames.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from . import stream as wire

TOKEN_TTL = 60.0                       # seconds an offered token stays usable
HANDSHAKE_TIMEOUT = 10.0
EXIT_LINGER = 5.0                      # how long we wait for the client to hang up after EXIT
CHUNK = 4 << 20                        # largest data frame the server sends
SMALL = 64 << 10                       # below this, pread + one send is cheaper than sendfile
DROP_AFTER = 1 << 30                   # past this many bytes of one spool, drop what was sent ...
DROP_BEHIND = 64 << 20                 # ... in windows of this size (_Spool._drop_behind)
MIN_WAIT, MAX_WAIT = 0.001, 0.025      # idle backoff while tailing the spool files

# MSG_MORE lets the 5-byte header ride in the same segment as the sendfile payload (Linux only).
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_FADVISE = hasattr(os, "posix_fadvise")


class _Attach:
    """One offer, then the connection that claims it: a pump thread (files -> socket) and a reader
    thread (socket -> the job's stdin); the reader closes the socket once the pump is done with it.
    It owns `stdin_fd`, the write end of the job's stdin FIFO, from the offer on, and closes it when the
    client's input ends, however it ends (end of input, a hang-up, the job's exit, an offer nobody
    claimed in time), so a job never waits for input that can no longer come (issue 10, bug 1)."""

    def __init__(self, job_key: str, job_dir: str, out_offset: int, err_offset: int, stdin_fd: int | None,
                 get_status: Callable[[], dict | None]):
        self.job_key, self.job_dir, self.out_offset, self.err_offset = job_key, job_dir, out_offset, err_offset
        self.stdin_fd, self.get_status, self.deadline = stdin_fd, get_status, time.monotonic() + TOKEN_TTL
        self.sock = self.peer = self.pump = None
        self.wake, self.reader_done = threading.Event(), threading.Event()
        self.closed = False          # the client hung up or misbehaved: the pump stops
        self.exited = False          # EXIT went out: stdin is no longer forwarded

    def close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            os.close(fd)

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
        """Past DROP_AFTER bytes sent, tell the kernel, a window at a time, that we are done with them:
        past the writeback threshold, a job's own writes got three times dearer (4 GiB to `| cat`:
        626-735 MB/s, with this 791-1,036). DONTNEED starts writeback (no wait) and drops what is clean,
        so a window is advised twice: to write it, then one window later to drop it. A smaller output is
        left to the kernel (1 GiB: ~830 MB/s with this, ~1,080 without). The file stays whole: a
        re-attach from any offset reads it back from disk (invariant 3)."""
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
            sock.sendall(wire.HEADER.pack(self.kind, len(data)) + data)
            self.offset += len(data)
            return len(data)
        # The header promises n bytes, and the file only grows, so sendfile can always deliver them.
        sock.sendall(wire.HEADER.pack(self.kind, n), _MSG_MORE)
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

    def __init__(self, bind_host: str, port: int = 0):
        self._log, self._lock, self._closed = logging.getLogger("grun.stream"), threading.Lock(), False
        self._offers: dict[str, _Attach] = {}        # token -> offer
        self._conns: dict[str, set[_Attach]] = {}    # job key -> its attached clients
        family = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM)[0][0]
        self._lsock = socket.create_server((bind_host, port), family=family, backlog=128)
        self.address: tuple[str, int] = self._lsock.getsockname()[:2]
        threading.Thread(target=self._accept_loop, name="grun-stream-accept", daemon=True).start()

    def offer(self, job_key: str, job_dir: str, *, out_offset: int = 0, err_offset: int = 0,
              stdin_fd: int | None = None, get_status: Callable[[], dict | None]) -> str:
        """A one-time token for the job's output from these offsets; with stdin_fd (which is ours
        from here on), the attached client feeds the job's input."""
        token = os.urandom(wire.TOKEN_LEN // 2).hex()
        self.expire()  # here, so unused tokens cost nothing per job over the node's lifetime
        with self._lock:
            self._offers[token] = _Attach(job_key, job_dir, out_offset, err_offset, stdin_fd, get_status)
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
            for conn in self._conns.get(job_key, ()):
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

    def _serve(self, sock: socket.socket, peer) -> None:
        conn = None
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            token = wire.recv_exact(sock, wire.TOKEN_LEN)
            with self._lock:  # pop: a token is good for one connection
                conn = self._offers.pop(token.decode("latin-1"), None) if token and not self._closed else None
                if conn is not None and conn.deadline >= time.monotonic():
                    conn.sock, conn.peer, conn.pump = sock, peer, threading.current_thread()
                    self._conns.setdefault(conn.job_key, set()).add(conn)
            if conn is None or conn.sock is None:
                self._log.warning("stream %s: bad, expired or used token; closing", peer)
                return
            # Blocking mode: os.sendfile on the raw fd must not see EAGAIN.
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wire.keepalive(sock)
            threading.Thread(target=self._read_client, args=(conn,), daemon=True,
                             name=f"grun-stream-in-{peer}").start()
            self._pump(conn)
        except OSError as e:
            self._log.info("stream %s: connection ended: %s", peer, e)
        except Exception:
            self._log.exception("stream %s: serving failed", peer)
        finally:
            if conn is None or conn.sock is None:
                sock.close()
                if conn is not None:
                    conn.close_stdin()
            else:  # the reader closes the socket
                with self._lock:
                    group = self._conns.get(conn.job_key, set())
                    group.discard(conn)
                    if not group:
                        self._conns.pop(conn.job_key, None)
                conn.hang_up()

    def _pump(self, conn: _Attach) -> None:
        sock = conn.sock
        spools = [_Spool(os.path.join(conn.job_dir, "stdout"), conn.out_offset, wire.OUT),
                  _Spool(os.path.join(conn.job_dir, "stderr"), conn.err_offset, wire.ERR)]
        wait = MIN_WAIT
        try:
            while not conn.closed:
                conn.wake.clear()
                # Status before sizes: whatever the job wrote before it ended is in the sizes we see.
                status = conn.get_status()
                sent = sum(spool.pump(sock) for spool in spools)
                if sent:
                    wait = MIN_WAIT
                    if sent < wire.BATCH:
                        # A job writing fast would otherwise be chased in tiny frames, and on a
                        # small machine the chase steals the CPU the job needs.  An idle stream
                        # still sends its first new line at once; only the follow-up waits.
                        conn.wake.wait(MIN_WAIT)
                    continue
                if status is not None:
                    payload = json.dumps(status).encode()
                    sock.sendall(wire.HEADER.pack(wire.EXIT, len(payload)) + payload)
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

    def _read_client(self, conn: _Attach) -> None:
        try:
            while True:
                head = wire.recv_exact(conn.sock, wire.HEADER.size)
                if head is None:
                    break
                kind, n = wire.HEADER.unpack(head)
                if kind not in (wire.STDIN, wire.STDIN_EOF) or n > wire.MAX_FRAME:
                    self._log.warning("stream %s: garbage frame (type %r, length %d); closing", conn.peer, kind, n)
                    break
                data = wire.recv_exact(conn.sock, n)
                if data is None:
                    break
                if kind == wire.STDIN_EOF:
                    conn.close_stdin()
                elif conn.stdin_fd is not None and not conn.exited:
                    try:
                        wire.write_all(conn.stdin_fd, data)
                    except BrokenPipeError:
                        conn.close_stdin()  # the job closed its stdin; the rest goes nowhere
        except OSError as e:
            self._log.info("stream %s: input ended: %s", conn.peer, e)
        finally:
            conn.close_stdin()  # whatever ended the input, the job sees its end
            conn.reader_done.set()
            conn.hang_up()
            conn.pump.join()
            conn.sock.close()
