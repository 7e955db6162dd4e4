"""Pyro5 wiring: process-wide Pyro5 settings, the name server co-hosted with the master, how actors are
named and found, and proxies that always carry a timeout.

Every grun process calls `configure()` before touching Pyro5. The name server never answers UDP
broadcasts and is never searched for by broadcast: it is always addressed by explicit host and port.

Clients (the `grun` command, `grun.client.Client`) call actors through `WireProxy`, a small client of
Pyro5's wire protocol (version 502, msgpack), instead of `Pyro5.api.Proxy`: importing Pyro5 costs
25-40 ms (ssl, logging, sqlite3, serpent, inspect, ...), a third of a `grun true`. Daemons keep
Pyro5, which is imported here only when a function that needs it is called.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names for annotations only: the client path must not import these
    import Pyro5.api

MASTER_NAME = "grun.master"
NODE_PREFIX = "grun.node."
JOB_PREFIX = "grun.job."

# Short enough that a dead peer costs seconds, not minutes (invariant 4).
CALL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

_configured = False


def configure() -> None:
    """Apply grun's Pyro5 settings to this process (idempotent)."""
    global _configured
    if _configured:
        return
    from Pyro5 import config as pyro_config
    pyro_config.SERIALIZER = "msgpack"  # measured 2-30x faster than serpent, and keeps bytes as bytes
    pyro_config.SOCK_NODELAY = True
    pyro_config.SOCK_REUSE = True
    pyro_config.COMMTIMEOUT = 0.0  # per-proxy timeouts instead: a server-side timeout would drop idle clients
    pyro_config.THREADPOOL_SIZE = 1024  # waiting clients each hold a server thread
    pyro_config.THREADPOOL_SIZE_MIN = 8
    pyro_config.MAX_MESSAGE_SIZE = 256 * 1024 * 1024
    pyro_config.DETAILED_TRACEBACK = False
    pyro_config.MAX_RETRIES = 0
    _configured = True


def node_name(hostname: str) -> str:
    return NODE_PREFIX + hostname


def job_name(job_id: int) -> str:
    return f"{JOB_PREFIX}{job_id}"


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def master_uri(host: str, port: int) -> str:
    """The master shares the name server's daemon and port, so clients need no lookup to reach it."""
    return f"PYRO:{MASTER_NAME}@{format_hostport(host, port)}"


def object_uri(object_id: str, host: str, port: int) -> str:
    return f"PYRO:{object_id}@{format_hostport(host, port)}"


def proxy(uri: str, timeout: float = CALL_TIMEOUT) -> Pyro5.api.Proxy:
    import Pyro5.api
    configure()
    p = Pyro5.api.Proxy(uri)
    p._pyroTimeout = timeout
    return p


def locate_ns(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Pyro5.api.Proxy:
    """The name server at an explicit address; never a broadcast."""
    import Pyro5.core
    configure()
    ns = Pyro5.core.locate_ns(host, port, broadcast=False)
    ns._pyroTimeout = timeout
    return ns


def lookup(ns_host: str, ns_port: int, name: str) -> str:
    with locate_ns(ns_host, ns_port) as ns:
        return str(ns.lookup(name))


def start_master_daemon(bind: str, port: int, advertise: str) -> Pyro5.nameserver.NameServerDaemon:
    """A name server daemon on the master port, without the broadcast responder.

    The master object is registered on this same daemon, so one port serves both.
    """
    import Pyro5.nameserver
    configure()
    nat = advertise if bind in ("0.0.0.0", "::", "") else None
    return Pyro5.nameserver.NameServerDaemon(host=bind, port=port, nathost=nat, natport=port if nat else None)


def start_daemon(bind: str, advertise: str, port: int = 0) -> Pyro5.api.Daemon:
    """A plain Pyro5 daemon on an OS-chosen port, advertising an address others can reach."""
    import Pyro5.api
    configure()
    daemon = Pyro5.api.Daemon(host=bind, port=port)
    if bind in ("0.0.0.0", "::", ""):
        real_port = daemon.sock.getsockname()[1]
        daemon.close()
        daemon = Pyro5.api.Daemon(host=bind, port=real_port, nathost=advertise, natport=real_port)
    return daemon


def serve_in_thread(daemon: Pyro5.api.Daemon, name: str) -> threading.Thread:
    thread = threading.Thread(target=daemon.requestLoop, name=name, daemon=True)
    thread.start()
    return thread


class RemoteFailure(Exception):
    """A remote call failed for a reason the caller can report in one line."""


def is_unreachable(exc: BaseException) -> bool:
    pyro_errors = sys.modules.get("Pyro5.errors")  # a Pyro5 error can only come from a loaded Pyro5
    if pyro_errors is not None:
        if isinstance(exc, pyro_errors.SerializeError):
            return False  # the peer answered with something we cannot decode: retrying gets the same answer
        if isinstance(exc, pyro_errors.CommunicationError):
            return True
    if isinstance(exc, WireGarbled):
        return False
    return isinstance(exc, (socket.error, ConnectionError, TimeoutError))


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a call that failed this way may have reached the peer (the connection broke after the
    request was sent, or the answer did not come in time): a submission is then retried with its token."""
    if isinstance(exc, CallBroken):
        return True
    pyro_errors = sys.modules.get("Pyro5.errors")
    return pyro_errors is not None and isinstance(exc, (pyro_errors.ConnectionClosedError, pyro_errors.TimeoutError))


def reset(p) -> None:
    """Forget a broken connection so the next call reconnects."""
    try:
        p._pyroRelease()
    except Exception:
        pass


# ---- WireProxy: calls to Pyro5 actors without importing Pyro5 -------------------------------------

class CallBroken(ConnectionError):
    """The connection failed after the request went out: the peer may have acted on it."""


class CallTimeout(CallBroken, TimeoutError):
    """No answer within the proxy's timeout: the peer may be working on the request, or gone."""


class CallRejected(ConnectionError):
    """The peer's daemon refused the connection (e.g. no object of that name there)."""


class WireGarbled(Exception):
    """The peer sent something that is not a Pyro5 reply we can read; retrying gets the same."""


class RemoteError(Exception):
    """An exception raised by the remote method whose class is not a Python builtin."""


# Pyro5's protocol (Pyro5/protocol.py): a 40-byte header, then annotation chunks, then the payload.
_HEADER = struct.Struct("!4sHBBHHII16sHH")
_PROTOCOL_VERSION, _MAGIC = 502, 0x4DC5
_MSG_CONNECT, _MSG_CONNECTOK, _MSG_CONNECTFAIL, _MSG_INVOKE, _MSG_RESULT = 1, 2, 3, 4, 5
_FLAGS_EXCEPTION, _FLAGS_COMPRESSED, _FLAGS_ONEWAY, _FLAGS_ITEMSTREAM = 1, 2, 4, 16
_MSGPACK_ID = 4
_MAX_MESSAGE = 256 * 1024 * 1024
_NO_CORRELATION = b"\0" * 16


def parse_uri(uri: str) -> tuple[str, str, int]:
    """"PYRO:object@host:port" (host may be "[v6]") -> (object, host, port)."""
    if not uri.startswith("PYRO:") or "@" not in uri:
        raise ValueError(f"not a PYRO: uri: {uri!r}")
    obj, _, location = uri[5:].rpartition("@")
    host, _, port = location.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not obj or not host or not port.isdigit():
        raise ValueError(f"bad PYRO: uri: {uri!r}")
    return obj, host, int(port)


class WireProxy:
    """A proxy for one remote Pyro5 object that speaks the wire protocol itself: connect, handshake,
    then `proxy.method(*args)` calls, one at a time, each under `_pyroTimeout`. Not thread-safe (as
    Pyro5 proxies are not): one per thread. Any failure mid-call closes the connection, so that a late
    answer can never be taken for the next call's; the next call reconnects."""

    def __init__(self, uri: str, timeout: float = CALL_TIMEOUT):
        self._pyroUri = uri
        self._object, self._host, self._port = parse_uri(uri)
        self._pyroTimeout = timeout
        self._sock: socket.socket | None = None
        self._seq = 0

    def __repr__(self) -> str:
        return f"<WireProxy {self._pyroUri}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._pyroRelease()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _pyroRelease(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _pyroClaimOwnership(self) -> None:
        pass  # ownership is per thread by construction: the Client keeps one proxy per thread

    def _pyroOneway(self, method: str, *args) -> None:
        """Send a call and do not wait for its answer (Pyro5 runs it in a thread of its own)."""
        self._call(method, args, {}, oneway=True)

    # -- the protocol --

    def _connect(self) -> socket.socket:
        import msgpack
        # a connect that takes longer than CONNECT_TIMEOUT is a peer that is not there: the caller's
        # retry loop (Client.call, bounded by connect_wait) decides, not a 90 s call timeout
        sock = socket.create_connection((ascii_host(self._host), self._port),
                                        timeout=min(self._pyroTimeout, CONNECT_TIMEOUT))
        try:
            sock.settimeout(self._pyroTimeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._seq = 0
            payload = msgpack.packb({"handshake": "hello", "object": self._object}, use_bin_type=True)
            sock.sendall(_HEADER.pack(b"PYRO", _PROTOCOL_VERSION, _MSG_CONNECT, _MSGPACK_ID, 0, 0, len(payload), 0,
                                      _NO_CORRELATION, 0, _MAGIC) + payload)
            kind, flags, seq, data = self._receive(sock)
            if kind == _MSG_CONNECTFAIL:
                raise CallRejected(f"connection to {self._host}:{self._port} rejected: {_loads(data)}")
            if kind != _MSG_CONNECTOK:
                raise WireGarbled(f"unexpected message type {kind} in the handshake")
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, CallRejected):
                # The peer accepted the connection, then went away (or stalled) without a word: as with a
                # Pyro5 proxy, a master that dies like this counts as one that may have had our request,
                # so a submission waits for it to come back (tests/test_faults.py).
                raise CallBroken(f"connection to {self._host}:{self._port} broke in the handshake: {exc}") from None
            raise
        return sock

    def _call(self, method: str, args, kwargs, oneway: bool = False):
        import msgpack
        if self._sock is None:
            try:
                self._sock = self._connect()
            except OSError as exc:  # the call itself was not sent
                if isinstance(exc, (CallRejected, CallBroken)):
                    raise
                raise ConnectionError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        sock = self._sock
        self._seq = (self._seq + 1) & 0xFFFF
        payload = msgpack.packb((self._object, method, list(args), kwargs), use_bin_type=True, default=_plain)
        flags = _FLAGS_ONEWAY if oneway else 0
        sent = False
        try:
            sock.settimeout(self._pyroTimeout)
            sock.sendall(_HEADER.pack(b"PYRO", _PROTOCOL_VERSION, _MSG_INVOKE, _MSGPACK_ID, flags, self._seq,
                                      len(payload), 0, _NO_CORRELATION, 0, _MAGIC) + payload)
            sent = True
            if oneway:
                return None
            kind, flags, seq, data = self._receive(sock)
        except BaseException as exc:
            self._pyroRelease()
            if isinstance(exc, (WireGarbled, KeyboardInterrupt)) or not isinstance(exc, OSError):
                raise
            if isinstance(exc, TimeoutError):
                raise CallTimeout(f"no answer from {self._host}:{self._port} to {method} "
                                   f"within {self._pyroTimeout:g} s") from None
            raise (CallBroken if sent else ConnectionError)(f"{method} to {self._host}:{self._port}: {exc}") from None
        if kind != _MSG_RESULT or seq != self._seq:
            self._pyroRelease()
            raise WireGarbled(f"unexpected reply (type {kind}, sequence {seq}) to {method}")
        if flags & _FLAGS_ITEMSTREAM:
            self._pyroRelease()
            raise WireGarbled(f"{method} answered with an item stream, which this client does not take")
        result = _loads(data)
        if flags & _FLAGS_EXCEPTION:
            raise _exception(result)
        return result

    @staticmethod
    def _receive(sock: socket.socket) -> tuple[int, int, int, bytes]:
        header = _recv_exact(sock, _HEADER.size)
        tag, version, kind, serializer, flags, seq, size, ann_size, _, _, magic = _HEADER.unpack(header)
        if tag != b"PYRO" or version != _PROTOCOL_VERSION or magic != _MAGIC:
            raise WireGarbled("not a Pyro5 (protocol 502) peer")
        if size + ann_size > _MAX_MESSAGE:
            raise WireGarbled(f"reply too large ({size + ann_size} bytes)")
        body = _recv_exact(sock, ann_size + size)[ann_size:]  # annotations: none that we use
        if serializer != _MSGPACK_ID:
            raise WireGarbled(f"reply in serializer {serializer}, not msgpack")
        if flags & _FLAGS_COMPRESSED:
            import zlib
            body = zlib.decompress(body)
        return kind, flags, seq, body


def ascii_host(host: str) -> str | bytes:
    """A host name as getaddrinfo takes it without the "idna" codec, whose import costs ~1.3 ms (a str
    host always goes through it); non-ASCII names keep their IDNA encoding."""
    return host.encode("ascii") if host.isascii() else host


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionResetError("connection closed by the peer")
        got += k
    return bytes(buf)


def _plain(obj):
    """What msgpack cannot pack by itself, as Pyro5's msgpack serializer sends it."""
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} to a grun daemon")


def _ext(code: int, data: bytes):
    """Pyro5's msgpack extension types (Pyro5/serializers.py MsgpackSerializer.ext_hook)."""
    if code == 0x30:
        real, imag = struct.unpack("dd", data)
        return complex(real, imag)
    if code == 0x31:
        return int(data)
    if code in (0x32, 0x33):
        import datetime
        if code == 0x32:
            return datetime.datetime.fromtimestamp(struct.unpack("d", data)[0])
        return datetime.date.fromordinal(struct.unpack("l", data)[0])
    raise WireGarbled(f"unknown msgpack extension type {code}")


def _loads(data: bytes):
    import msgpack
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext)
    except WireGarbled:
        raise
    except Exception as exc:
        raise WireGarbled(f"cannot decode the reply: {exc}") from None


def _exception(data) -> BaseException:
    """The remote exception as Pyro5 serializes it: {"__class__": "builtins.KeyError", "args": [...], ...}.
    Builtin exception classes come back as themselves (LookupError is 'no such job', ValueError a refused
    request, AttributeError a method the peer lacks); Pyro5's own errors become connection errors as
    they would with a Pyro5 proxy; anything else a RemoteError carrying its message."""
    import builtins
    if not isinstance(data, dict):
        return RemoteError(str(data))
    name = str(data.get("__class__", ""))
    args = data.get("args") or []
    module, _, short = name.rpartition(".")
    cls = getattr(builtins, short, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, (KeyboardInterrupt, SystemExit)):
        try:
            return cls(*args)
        except Exception:
            return RemoteError(f"{short}: {args}")
    text = " ".join(str(a) for a in args) or short
    if module.startswith("Pyro5.errors"):
        if short == "SerializeError":
            return WireGarbled(text)
        if short == "DaemonError":  # e.g. "unknown object": the actor is not (or no longer) there
            return CallRejected(text)
        if short in ("CommunicationError", "ConnectionClosedError", "TimeoutError", "ProtocolError"):
            return ConnectionError(text)
    return RemoteError(text)
