"""The node's side of the output side channel (grun.stream has the wire format and the client's side):
it serves a job's spool files, from any offset and while the job still writes them, to a client that
presents a one-time token, and feeds the client's input into the job's stdin FIFO."""
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from . import auth, stream
from .tail import Tail
from .wire import refused_tls

log = logging.getLogger("grun.stream")

TOKEN_TTL = 60.0                       # seconds an offered token stays usable
HANDSHAKE_TIMEOUT = 10.0
EXIT_LINGER = 5.0                      # how long we wait for the client to hang up after EXIT
MIN_WAIT, MAX_WAIT = 0.001, 0.025      # idle backoff while tailing the spool files


class _Attach:
    """One offer, then the connection that claims it: a pump (files -> frames, then the job's EXIT) and a reader thread
    (STDIN frames -> the job's FIFO). It owns `stdin_fd`, the FIFO's write end, and closes it however the input ends
    (its end, a hang-up, the job's exit, an offer never claimed): a job never waits for input that cannot come."""

    def __init__(self, job_key: str, job_dir: str, offsets: tuple[int, int], stdin_fd: int | None,
                 get_status: Callable[[], dict | None], output, note: str | None = None):
        self.job_key, self.stdin_fd, self.output, self.get_status = job_key, stdin_fd, output, get_status
        self.note = note  # (said first, before the job's output)
        self.tails = [Tail(os.path.join(job_dir, name), offset, kind)
                      for name, offset, kind in zip(("stdout", "stderr"), offsets, (stream.OUT, stream.ERR))]
        if output is not None:  # (grun.drain) keeps what we have not sent, and starts us where it holds
            output.attach(self.tails)
        self.sock = self.peer = self.reader = None
        self.wake = threading.Event()
        # the client hung up (the pump stops); EXIT went out (no more stdin); the client was told of a full spool disk
        self.closed = self.exited = self.stall = False

    def release(self) -> None:
        """The offer is done with: expired, or its connection over."""
        self.close_stdin()
        for tail in self.tails:
            if tail.fd is not None:
                os.close(tail.fd)
        if self.output is not None:
            self.output.detach(self.tails)
            self.output = None

    def close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            os.close(fd)

    def hang_up(self) -> None:
        self.closed = True
        self.wake.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or sendfile

    def pump(self) -> None:
        tails, wait = self.tails, MIN_WAIT  # (their files are closed by release)
        if self.note:
            self._send(stream.NOTE, self.note.encode())
        while not self.closed:
            self.wake.clear()
            # Status before sizes: whatever the job wrote before it ended is in the sizes we see.
            status = self.get_status()
            sent = sum(tail.pump(self.sock) for tail in tails)
            if sent and self.output is not None:
                self.output.progress()
            # Tell the client's user (attach's on_note) once per change: a silent stream says nothing of why.
            if self.output is not None and (stall := self.output in self.output.drain.stalled) != self.stall:
                self._send(stream.NOTE, b"output flows again" if not stall else
                           b"output stalled: the node's spool disk is full")
                self.stall = stall
            if not sent and status is not None:
                self._send(stream.EXIT, json.dumps(status).encode())
                self.exited = True
                # Half-close and let the client hang up first: closing with its stdin frames
                # still unread would send a RST that can destroy the EXIT frame in flight.
                self.sock.shutdown(socket.SHUT_WR)
                self.reader.join(EXIT_LINGER)
                return
            if sent < stream.BATCH:
                # After a small frame too: a job writing fast would otherwise be chased in tiny frames, stealing
                # the CPU it needs on a small machine. An idle stream still sends its first new line at once.
                self.wake.wait(MIN_WAIT if sent else wait)
            wait = MIN_WAIT if sent else min(wait * 2, MAX_WAIT)

    def _send(self, kind: bytes, data: bytes) -> None:
        self.sock.sendall(stream.HEADER.pack(kind, len(data)) + data)

    def read(self) -> None:
        try:
            while (head := stream.recv_exact(self.sock, stream.HEADER.size)) is not None:
                kind, n = stream.HEADER.unpack(head)
                if kind not in (stream.STDIN, stream.STDIN_EOF) or n > stream.MAX_FRAME:
                    log.warning("stream %s: garbage frame (type %r, length %d); closing", self.peer, kind, n)
                    break
                if (data := stream.recv_exact(self.sock, n)) is None:
                    break
                if kind == stream.STDIN_EOF:
                    self.close_stdin()
                elif self.stdin_fd is not None and not self.exited:
                    try:
                        stream.write_all(self.stdin_fd, data)
                    except BrokenPipeError:
                        self.close_stdin()  # the job closed its stdin; the rest goes nowhere
        except OSError as e:
            log.info("stream %s: input ended: %s", self.peer, e)
        finally:
            self.close_stdin()  # whatever ended the input, the job sees its end
            self.hang_up()


class StreamServer:
    """Serves offered jobs' spool files (and stdin FIFOs) to clients presenting one-time tokens."""

    def __init__(self, bind_host: str, port: int = 0):
        self._lock, self._closed = threading.Lock(), False
        self._offers: dict[str, tuple] = {}          # token -> (deadline, by_user, offer)
        self._conns: dict[str, set[_Attach]] = {}    # job key -> its attached clients (wake: per pipe read)
        family = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM)[0][0]
        self._lsock = socket.create_server((bind_host, port), family=family, backlog=128)
        self.address: tuple[str, int] = self._lsock.getsockname()[:2]
        threading.Thread(target=self._accept_loop, name="grun-stream-accept", daemon=True).start()

    def offer(self, job_key: str, job_dir: str, *, out_offset: int = 0, err_offset: int = 0,
              stdin_fd: int | None = None, get_status: Callable[[], dict | None], by_user: bool = False,
              output=None, note: str | None = None) -> str:
        """A one-time token for the job's output from these offsets (`output`, its grun.drain.Output, keeps what the
        offer has not sent); with stdin_fd (ours from now on), the client feeds the job's input. `by_user`: for a
        user's credential, who has no secret to prove. `note`: said to the client first (attach's on_note)."""
        self.expire()  # here, so unused tokens cost nothing per job over the node's lifetime
        return self.offer_other(_Attach(job_key, job_dir, (out_offset, err_offset), stdin_fd, get_status, output,
                                        note), by_user)

    def offer_other(self, offer, by_user: bool = False) -> str:
        """A one-time token for `offer`: an _Attach, or a function that takes the connection (grun.stage)."""
        token = os.urandom(stream.TOKEN_LEN // 2).hex()
        with self._lock:
            self._offers[token] = time.monotonic() + TOKEN_TTL, by_user, offer
        return token

    def expire(self, before: float | None = None) -> None:
        """Drop the offers nobody claimed in time (and the job input they held): at each offer, and by the node's
        janitor (a job's stdin must end once its client got a ticket and died)."""
        before = time.monotonic() if before is None else before
        with self._lock:
            gone = [self._offers.pop(t)[2] for t, (deadline, *_) in list(self._offers.items()) if deadline < before]
        for offer in gone:
            if isinstance(offer, _Attach):
                offer.release()

    def wake(self, job_key: str) -> None:
        with self._lock:
            for conn in self._conns.get(job_key, ()):
                conn.wake.set()

    def close(self) -> None:
        self._closed = True  # before the offers go: a connection claims one only while we are open
        self.expire(float("inf"))
        with contextlib.suppress(OSError):
            self._lsock.shutdown(socket.SHUT_RDWR)  # close() alone does not wake accept() on Linux
        self._lsock.close()
        with self._lock:  # (hang_up takes no lock)
            for conn in (c for conns in self._conns.values() for c in conns):
                conn.hang_up()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self._lsock.accept()
            except OSError as e:
                if not self._closed:
                    log.warning("stream: accept failed: %s", e)  # e.g. EMFILE: retry, never die
                    time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(sock, peer), name=f"grun-stream-{peer}", daemon=True).start()

    def _serve(self, sock: socket.socket, peer) -> None:
        """One connection: its token, then its pump here and its reader in a thread; closed once both are done."""
        conn = None
        try:
            stream.tune(sock)
            sock.settimeout(HANDSHAKE_TIMEOUT)
            if (tls := auth.tls_server()) is not None:
                sock = stream.secure(sock, tls, HANDSHAKE_TIMEOUT, server_side=True)  # (a refusal: logged below)
            got = (stream.recv_exact(sock, stream.TOKEN_LEN + auth.PROOF_LEN * bool(auth.key())) or b"").decode("latin-1")
            token, proof = got[:stream.TOKEN_LEN], got[stream.TOKEN_LEN:]
            if auth.key() and not auth.verify(proof, token) and not (
                    proof == auth.NO_PROOF and self._offers.get(token, (0, False))[1]):
                log.warning("stream %s: refused: no valid proof of the cluster secret; closing", peer)
                return
            with self._lock:  # pop: a token is good for one connection
                deadline, _, conn = self._offers.pop(token, (0, 0, None)) if token and not self._closed else (0, 0, None)
                if (fresh := deadline >= time.monotonic()) and isinstance(conn, _Attach):
                    conn.sock, conn.peer = sock, peer
                    self._conns.setdefault(conn.job_key, set()).add(conn)
            if not fresh:
                log.warning("stream %s: bad, expired or used token; closing", peer)
                return
            sock.settimeout(None)  # blocking: os.sendfile on the raw fd must not see EAGAIN
            if not isinstance(conn, _Attach):
                return conn(sock)  # a staged job's files
            conn.reader = threading.Thread(target=conn.read, name=f"grun-stream-in-{peer}", daemon=True)
            conn.reader.start()
            conn.pump()
        except OSError as e:
            if refused_tls(e):
                log.warning("stream %s: refused: TLS: %s", peer, e)
            else:
                log.info("stream %s: connection ended: %s", peer, e)
        except Exception:
            log.exception("stream %s: serving failed", peer)
        finally:
            if isinstance(conn, _Attach):
                if conn.sock is not None:
                    with self._lock:
                        self._conns[conn.job_key].discard(conn)
                        if not self._conns[conn.job_key]:
                            del self._conns[conn.job_key]
                    conn.hang_up()
                    if conn.reader is not None:
                        conn.reader.join()
                conn.release()
            sock.close()
