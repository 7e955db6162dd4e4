"""The daemons' Pyro5 wiring: process-wide Pyro5 settings (every grun daemon calls `configure()` before touching
Pyro5), the name server co-hosted with the master, and how actors are named and found. The name server never
answers or sends UDP broadcasts: it is always addressed by explicit host and port. Clients import this module only
for the names: Pyro5 is imported by the functions that need it, and every proxy is grun.wire's."""

import functools

from . import auth
from .values import format_hostport, is_any_address, parse_hostport
from .wire import CONNECT_TIMEOUT, NotAuthorized, WireProxy, is_unreachable  # noqa: F401  (one error model)

MASTER_NAME = "grun.master"
NODE_PREFIX = "grun.node."
JOB_PREFIX = "grun.job."

CALL_TIMEOUT = 10.0  # short enough that a dead peer costs seconds, not minutes (invariant 4)


@functools.cache  # grun's Pyro5 settings, applied once per process
def configure() -> None:
    from Pyro5 import config as pyro_config
    pyro_config.SERIALIZER = "msgpack"  # measured 2-30x faster than serpent, and keeps bytes as bytes
    pyro_config.SOCK_NODELAY = True
    pyro_config.COMMTIMEOUT = 0.0  # per-proxy timeouts instead: a server-side timeout would drop idle clients
    pyro_config.THREADPOOL_SIZE = 1024  # waiting clients each hold a server thread
    pyro_config.THREADPOOL_SIZE_MIN = 8
    pyro_config.MAX_MESSAGE_SIZE = 256 * 1024 * 1024
    auth.tls_pyro5()


def node_name(hostname: str) -> str:
    return NODE_PREFIX + hostname


def job_name(job_id: int) -> str:
    return f"{JOB_PREFIX}{job_id}"


def master_uri(host: str, port: int) -> str:
    """The master shares the name server's daemon and port, so clients need no lookup to reach it."""
    return f"PYRO:{MASTER_NAME}@{format_hostport(host, port)}"


# The daemons call each other through grun.wire too: one error model, and faster (measured against a Pyro5
# proxy here: a call 40 µs, not 62; a connect and its first call 207 µs, not 284). One per thread, as Pyro5's.
proxy = functools.partial(WireProxy, timeout=CALL_TIMEOUT)


def refused(uri: str, timeout: float = 0.5) -> bool:
    """Whether the host of a daemon's URI (PYRO:name@host:port) refuses a connection to its port: reachable, and its
    daemon gone. A timeout or an unreachable host says nothing of the daemon."""
    import socket  # (the master's: `grun --nowait` imports this module, not socket: tests/test_cli_fast.py)
    try:
        socket.create_connection(parse_hostport(uri.rpartition("@")[2]), timeout).close()
    except (OSError, ValueError) as exc:
        return isinstance(exc, ConnectionRefusedError)
    return False


def locate_ns(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> WireProxy:
    """The name server at an explicit address; never a broadcast."""
    return WireProxy(f"PYRO:Pyro.NameServer@{format_hostport(host, port)}", timeout)


def start_master_daemon(bind: str, port: int, advertise: str):
    """The name server's daemon on the master port (no broadcasts), which the master shares: one port serves both."""
    import Pyro5.nameserver
    return _ready(Pyro5.nameserver.NameServerDaemon, bind, port, advertise)


def start_daemon(bind: str, advertise: str):
    """A plain Pyro5 daemon on an OS-chosen port, advertising an address others can reach."""
    import Pyro5.api
    return _ready(Pyro5.api.Daemon, bind, 0, advertise)


def _ready(kind, bind: str, port: int, advertise: str):
    """Bound to all interfaces, the daemon hands out URIs with `advertise` and the port it bound (not Pyro5's natport=0:
    before 5.17 it cannot read "[::]:PORT"). With auth it refuses a handshake without a proof (or credential) before
    any request, and the connection remembers who it is (auth.caller); without, who it claims (auth.claimed)."""
    configure()
    daemon = kind(host=bind, port=port)
    if is_any_address(bind):
        daemon.natLocationStr = format_hostport(advertise, daemon.sock.getsockname()[1])
    daemon.validateHandshake = functools.partial(auth.handshake, auth.required())
    return daemon


def serve_in_thread(daemon, name: str):
    import threading
    thread = threading.Thread(target=daemon.requestLoop, name=name, daemon=True)
    thread.start()
    return thread


def reset(p) -> None:
    """Forget a broken connection so the next call reconnects."""
    import contextlib
    with contextlib.suppress(Exception):
        p._pyroRelease()
