"""The client's side of Pyro5's wire protocol (version 502, msgpack), and the one error model of a remote call.

`grun`, `grun.Client` and the daemons call the actors through `WireProxy`, not `Pyro5.api.Proxy`: importing Pyro5
costs each `grun true` 25-90 ms. tests/test_wire.py holds it to real Pyro5 daemons of every version allowed. A call
fails with an OSError when the peer is not there, with one of the classes below, or with the builtin exception the
remote method raised, rebuilt; grun.client maps these to grun's own exceptions."""

import _socket  # (socket.py, with selectors, would cost every `grun` call ~3 ms of imports)
import errno
import struct
import time

CONNECT_TIMEOUT = 5.0
# Failures of ours, not of a peer, which waiting for the peer does not heal: raised as they are, at once
LOCAL_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class CallBroken(ConnectionError):
    """The connection failed after the request went out (or no answer came in time): the peer may have acted on it."""


class CallTimeout(CallBroken, TimeoutError):
    """No answer in time (the request may have arrived)."""


class CallRejected(ConnectionError):
    """The peer's daemon has no object of that name (e.g. the actor of a job that is gone)."""


class NotAuthorized(Exception):
    """The peer's daemon refused our handshake: we hold no valid proof of its cluster secret (grun.auth)."""


class Garbled(Exception):
    """Not a reply we can read: retrying gets the same."""


class NoSuchMethod(AttributeError):
    """The object has no such method (Pyro5's own lookup failed, not the method)."""


class RemoteError(Exception):
    """The remote method raised an exception that is not a builtin."""


def is_unreachable(exc: BaseException) -> bool:
    """Whether a call failed for want of its peer (it may succeed later)."""
    return isinstance(exc, OSError) and exc.errno not in LOCAL_ERRNOS  # (ConnectionError, CallBroken: OSErrors)


def refused_tls(exc: BaseException, where: str = "") -> "NotAuthorized | None":
    """A TLS peer's refusal of us at `where` (a certificate, the protocol: no retry heals it) as an error, or None."""
    if type(exc).__name__ in ("SSLError", "SSLCertVerificationError") and type(exc).__module__ == "ssl":
        return NotAuthorized(f"{where} does not speak TLS (config key tls is set here): {exc}"
                             if "WRONG_VERSION_NUMBER" in str(exc) else f"TLS with {where} failed: {exc}")


# Pyro5/protocol.py: a 40-byte header, then annotation chunks, then the payload.
_HEADER = struct.Struct("!4sHBBHHII16sHH")
_VERSION, _MAGIC, _MSGPACK = 502, 0x4DC5, 4
_CONNECT, _CONNECTOK, _CONNECTFAIL, _INVOKE, _RESULT = 1, 2, 3, 4, 5
_EXCEPTION, _COMPRESSED, _ONEWAY, _ITEMSTREAM = 1, 2, 4, 16
_MAX_MESSAGE = 256 * 1024 * 1024


def _message(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _HEADER.pack(b"PYRO", _VERSION, kind, _MSGPACK, flags, seq, len(payload), 0, bytes(16), 0, _MAGIC) + payload


def parse_uri(uri: str) -> tuple[str, str, int]:
    """"PYRO:object@host:port" (host may be "[v6]") -> (object, host, port)."""
    obj, at, location = uri[5:].rpartition("@") if uri.startswith("PYRO:") else ("", "", "")
    host, _, port = location.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not at or not obj or not host or not port.isdigit():
        raise ValueError(f"not a PYRO: uri: {uri!r}")
    return obj, host, int(port)


class WireProxy:
    """A proxy of one Pyro5 object: `proxy.method(*args)` calls, each under `_pyroTimeout`; one per thread, as Pyro5's.
    A failure mid-call closes the connection: a late answer is never taken for the next call's (which reconnects)."""

    def __init__(self, uri: str, timeout: float = 10.0):
        self._pyroTimeout, self._sock = timeout, None
        self._object, self._host, self._port = parse_uri(uri)

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
            sock.close()

    def _pyroOneway(self, method: str, *args) -> None:
        """Send a call and do not wait for its answer (Pyro5 runs it in a thread of its own)."""
        self._call(method, args, {}, oneway=True)

    def _call(self, method: str, args, kwargs, oneway: bool = False):
        import msgpack
        where = f"{method} to {self._host}:{self._port}"
        request = msgpack.packb((self._object, method, list(args), kwargs), default=_plain)
        hello, sent, greeted = b"", False, True  # greeted: the peer answered a hello of ours (now, or at connect)
        try:
            if self._sock is None:
                from .auth import greeting, tls_client  # (the proof first: one failing leaves no socket sans hello)
                hello = _message(_CONNECT, 0, 0, msgpack.packb({"handshake": greeting(), "object": self._object}))
                # bytes: a str host goes through the "idna" codec, whose import costs ~1.3 ms of a `grun` call; a
                # connect slower than CONNECT_TIMEOUT is a peer not there: the caller decides, not a 90 s timeout
                self._sock = connect(self._host.encode("ascii") if self._host.isascii() else self._host, self._port,
                                     min(self._pyroTimeout, CONNECT_TIMEOUT))
                self._sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # (with TLS: 3 ms a connect, not 45)
                self._seq, self._pyroConnected = 0, time.time()
                if (tls := tls_client()) is not None:
                    self._sock = tls.wrap_socket(self._sock, server_hostname=self._host)
            self._seq, greeted = (self._seq + 1) & 0xFFFF, not hello
            sock = self._sock
            sock.settimeout(self._pyroTimeout)
            sock.sendall(hello + _message(_INVOKE, _ONEWAY if oneway else 0, self._seq, request))
            sent = True
            if hello:
                kind, _, _, data = _receive(sock)
                if kind == _CONNECTFAIL:
                    why = str(_loads(data))
                    raise NotAuthorized(why) if why.startswith("not authorized") else CallRejected(
                        f"connection to {self._host}:{self._port} rejected: {why}")
                if kind != _CONNECTOK:
                    raise Garbled(f"unexpected message type {kind} in the handshake")
                greeted = True
            if oneway:
                return None
            kind, flags, seq, data = _receive(sock)
            if kind != _RESULT or seq != self._seq or flags & _ITEMSTREAM:
                raise Garbled(f"unexpected reply (type {kind}, sequence {seq}, flags {flags}) to {method}")
        except BaseException as exc:
            self._pyroRelease()
            if refusal := refused_tls(exc, f"{self._host}:{self._port}"):  # (TLS 1.3: after our handshake)
                raise refusal from None
            if isinstance(exc, TimeoutError) and sent:
                broken = CallTimeout(f"no answer to {where} within {self._pyroTimeout:g} s")
            elif (is_unreachable(exc) or sent and isinstance(exc, OSError)) and not isinstance(exc, CallRejected):
                # As with a Pyro5 proxy, a peer that took the connection and went away (or stalled) without
                # a word may have had our request: a submission waits for it to come back (our ENOMEM too, once sent).
                if not sent:
                    raise ConnectionError(f"cannot reach {self._host}:{self._port}: {exc}") from None
                broken = CallBroken(f"{where}: {exc}")
            else:
                raise
            broken.reached = greeted  # (a port that takes connections and drops them is no master come and gone)
            raise broken from None
        result = _loads(data)
        if flags & _EXCEPTION:
            raise _exception(result)
        return result


def connect(host, port: int, timeout: float):
    """A TCP connection to the first of the host's addresses that takes it (socket.create_connection, on _socket)."""
    error: OSError = OSError(f"no address for {host!r}")
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def recv_exact(sock, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first (grun.stream's too: importing it costs `grun --nowait` 1.2-1.8 ms)."""
    buf, got = bytearray(n), 0
    while got < n:
        if not (k := sock.recv_into(memoryview(buf)[got:])):
            return None
        got += k
    return bytes(buf)


def _receive(sock) -> tuple[int, int, int, bytes]:
    if (head := recv_exact(sock, _HEADER.size)) is None:
        raise ConnectionResetError("connection closed by the peer")
    tag, version, kind, serializer, flags, seq, size, ann_size, _, _, magic = _HEADER.unpack(head)
    if tag != b"PYRO" or version != _VERSION or magic != _MAGIC:
        raise Garbled("not a Pyro5 (protocol 502) peer")
    if size + ann_size > _MAX_MESSAGE or serializer != _MSGPACK:
        raise Garbled(f"a reply of {size + ann_size} bytes in serializer {serializer}")
    if flags & _COMPRESSED:
        raise Garbled("a compressed reply (grun's daemons never set Pyro5's COMPRESSION)")
    if (data := recv_exact(sock, ann_size + size)) is None:
        raise ConnectionResetError("connection closed by the peer")
    return kind, flags, seq, data[ann_size:]  # annotations: none that we use


def _plain(obj):
    """What msgpack cannot pack by itself, as Pyro5's msgpack serializer sends it."""
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} to a grun daemon")


def _ext(code: int, data: bytes):
    """Pyro5's msgpack extension for an int too big for msgpack (its others are in nothing grun's actors send)."""
    if code == 0x31:
        return int(data)
    raise Garbled(f"msgpack extension type {code}, which grun's actors never send")


def _loads(data: bytes):
    import msgpack
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext)
    except Exception as exc:
        raise exc if isinstance(exc, Garbled) else Garbled(f"cannot decode the reply: {exc}") from None


def _exception(data) -> BaseException:
    """The remote exception Pyro5 sent ({"__class__": "builtins.KeyError", "args": [...], "attributes":
    {"_pyroTraceback": [...]}}); Pyro5's own errors become those of a connection, as with a Pyro5 proxy."""
    import builtins
    if not isinstance(data, dict):
        return RemoteError(str(data))
    module, _, name = str(data.get("__class__", "")).rpartition(".")
    args = data.get("args") or []
    text = " ".join(str(a) for a in args) or name
    cls = getattr(builtins, name, None) if module == "builtins" else None
    trace = (data.get("attributes") or {}).get("_pyroTraceback") or []
    last = next((part for part in reversed(trace) if isinstance(part, str) and part.lstrip().startswith("File ")), "")
    if cls is AttributeError and "Pyro5" in last and "in _get_attribute\n" in last:
        return NoSuchMethod(text)  # Pyro5's server._get_attribute: no such method (or not exposed)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(*args)
        except Exception:
            return RemoteError(f"{name}: {text}")
    return (_PYRO5_ERRORS.get(name, RemoteError) if module == "Pyro5.errors" else RemoteError)(text)


# Pyro5's own errors, as a Pyro5 proxy would see them (DaemonError: e.g. "unknown object")
_PYRO5_ERRORS = {"SerializeError": Garbled, "DaemonError": CallRejected, **dict.fromkeys(
    ("CommunicationError", "ConnectionClosedError", "TimeoutError", "ProtocolError"), ConnectionError)}
