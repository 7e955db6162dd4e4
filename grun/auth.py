"""Cluster authentication: this process's cluster secret (a personal cluster's own, made at its first start, or
`secret_file:` with `auth: secret`), the proofs of it that every connection presents (the Pyro5 handshake,
grun.registry and grun.wire; the output side channel, grun.stream), users' credentials, and the TLS contexts.

A proof is a keyed BLAKE2b MAC (as good as an HMAC; its module costs a `grun` call 0.2 ms, hmac's 2) of the time
and a fresh nonce, never the secret. Not a challenge-response: Pyro5's handshake is one message each way, which
grun.wire sends with its first call, so a challenge would cost every connection a round trip. Instead a nonce is
taken once only, and a proof older than PROOF_TTL is refused: the hosts' clocks must agree within it, as MUNGE's do.

Users cannot read a real cluster's secret: a user's `grun` asks its host's node daemon (root) for a credential,
signed with "uid, gid, umask, groups, job, user" as the kernel tells them (SO_PEERCRED on a unix socket), not as
the asker does (job: the node's live job it runs in, if any). Daemons then know each call's caller (`caller()`)."""

import _thread
import functools
import os
import struct
import time

from . import munge
from .values import format_hostport

PROOF_TTL = 300  # seconds
PROOF_LEN = 66   # characters: the time (10), the nonce (24), the MAC (32)
NO_PROOF = "-" * PROOF_LEN  # on the side channel, from a user with a credential (grun.stream_server)
PERSONAL = " (a personal cluster serves its owner only)"  # (a node's log says what a node should check instead)
REFUSED = "not authorized: no valid proof of the cluster secret or MUNGE credential" + PERSONAL
TLS_ONLY = "not authorized: the cluster speaks TLS only (config key tls: {cert, key, ca}; README: Trust)"
CLUSTER = "cluster"  # caller(): a holder of the cluster secret
_CRED = "cred:"
_path: str | None = None
_key: bytes | None = None
CRED_DIR = "/run/grun"  # root's: no user can take a credential socket's name there first, as any could an abstract one's
_cred_at: str | None = None  # the socket in CRED_DIR, named by the master, where this host's node daemon signs credentials
_served = False  # whether this process made the socket there (it holds its lock: see serve_credentials)
_lock = [-1]  # that lock's fd
_tls: dict | None = None  # {cert, key, ca} (config key tls); None or {}: no TLS
_seen: dict[int, set[str]] = {}  # minute of a proof -> the nonces taken in it
_seen_lock = _thread.allocate_lock()
REFUSED_LOG_SECS = 60.0  # a refused peer (a node with a wrong secret retries each second) is logged once per this
_refused: dict[str, list] = {}  # a refused peer's host -> [when logged (monotonic), refusals since]


def configure(cfg) -> None:
    """What this process presents and checks, from its config (grun.config calls this on every load)."""
    secret = cfg.auth == "secret"
    use(cfg.secret_file if secret else None, cfg.master if secret and not cfg.personal else None, cfg.tls)
    munge.socket = cfg.munge_socket if cfg.auth == "munge" else None


def use(path: str | None, master: tuple | None = None, tls: dict | None = None) -> None:
    """The secret file this process presents and checks (read when first needed: a personal cluster's daemon may make
    it later), or None; `master` names where this host's node signs credentials."""
    global _path, _key, _cred_at, _tls
    name = f"{master[0]}:{master[1]}" if master and path else None
    if name and len(name.encode()) > 92:  # (a socket's name has 108 bytes; a master's DNS name may have 253)
        from _blake2 import blake2b  # (not hashlib's: it loads OpenSSL, 2.9 ms of a `grun` call against _blake2's 0.3)
        name = blake2b(name.encode(), digest_size=16).hexdigest()
    _path, _key, _cred_at, _tls = path, None, name and f"{CRED_DIR}/cred-{name}", tls
    tls_client.cache_clear()
    tls_server.cache_clear()


def key() -> bytes | None:
    """The secret's key, or None when there is none (or not yet, or not for us to read: then we are refused)."""
    global _key
    if _key is None and _path is not None:
        try:
            with open(_path, "rb") as f:
                data = f.read().strip()
        except OSError:
            return None
        if data:
            from _blake2 import blake2b
            _key = blake2b(data).digest()  # any length of secret -> a key of BLAKE2b's size
    return _key


def create(path: str) -> None:
    """A personal cluster's secret: random, readable by its owner only; kept if it is there."""
    if not os.path.exists(path):
        from .files import write_atomic
        write_atomic(path, os.urandom(32).hex().encode() + b"\n", mode=0o600)


def _mac(secret: bytes, stamp: str, bound: str) -> str:
    from _blake2 import blake2b
    return blake2b(f"{stamp}/{bound}".encode(), key=secret, digest_size=16).hexdigest()


def proof(bound: str = "") -> str | None:
    """A proof of the secret for one connection (`bound`: what for, e.g. a stream token), or for a user who cannot read
    it a credential from this host's node; or None. `auth: munge`: a MUNGE credential of `bound` and our umask."""
    if munge.socket:
        return munge.encode(f"{_status('self', 'Umask', '022')}\n{bound}")
    if (secret := key()) is None:
        return _credential(bound) if _cred_at else None
    stamp = f"{int(time.time()):010d}{os.urandom(12).hex()}"
    return stamp + _mac(secret, stamp, bound)


def verify(given, bound: str = "") -> bool:
    """Whether `given` (anything a peer sent) is a fresh proof of our secret, not seen before."""
    from hmac import compare_digest  # daemons only: hmac costs a `grun` call 2 ms
    secret, now = key(), time.time()
    if (secret is None or not isinstance(given, str) or len(given) != PROOF_LEN or not given.isascii()
            or not given[:10].isdigit() or abs(now - int(given[:10])) > PROOF_TTL
            or not compare_digest(_mac(secret, given[:34], bound), given[34:])):
        return False
    with _seen_lock:
        for old in [m for m in _seen if m < (now - PROOF_TTL) // 60 - 1]:
            del _seen[old]
        if given[10:34] in (nonces := _seen.setdefault(int(given[:10]) // 60, set())):
            return False  # a replay
        nonces.add(given[10:34])
    return True


def side_proof(token: str) -> str:
    """What the side channel gets after a token: a proof of the secret, NO_PROOF from a user (the token came to
    their credential), or nothing on a cluster without a secret."""
    return (proof(token) if key() is not None else NO_PROOF) if _path else ""


@functools.cache
def tls_client():
    """This process's TLS context for its connections, or None without `tls:`: the cluster's CA verifies the peer
    and its name; this host's certificate goes along where it can be read (daemons, root), a user's has none."""
    if _tls:
        import contextlib
        import ssl
        context = ssl.create_default_context(cafile=_tls["ca"])
        with contextlib.suppress(PermissionError):
            context.load_cert_chain(_tls["cert"], _tls["key"])
        return context


@functools.cache
def tls_server():
    """The daemons' TLS context (Pyro5's and the side channel's), or None; a client's certificate is optional."""
    if _tls:
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_tls["ca"])
        context.load_cert_chain(_tls["cert"], _tls["key"])
        context.verify_mode, context.sslsocket_class = ssl.CERT_OPTIONAL, _daemon_side(ssl.SSLSocket)
        return context


def _daemon_side(base):
    import socket

    class DaemonSide(base):
        """A daemon's TLS connection, its handshake made by its first read in its own thread (in Pyro5's accept(), a
        silent peer stalled every other). A plain Pyro5 peer is told in plain Pyro5 (a reset looks like a daemon
        away, retried for minutes); a refused peer is logged with its address."""
        do_handshake_on_connect = property(lambda self: False, lambda self, value: None)

        def recv(self, n, flags=0):
            if self.version() is not None:
                return super().recv(n, flags)
            try:
                if socket.socket.recv(self, 4, socket.MSG_PEEK) == b"PYRO":
                    import msgpack

                    from .wire import _CONNECTFAIL, _message
                    socket.socket.sendall(self, _message(_CONNECTFAIL, 0, 0, msgpack.packb(TLS_ONLY)))
                    raise ConnectionRefusedError("it speaks plain Pyro5, not TLS")
                return super().recv(n, flags)  # the handshake, then the data
            except OSError as exc:
                log_refused(self, f"TLS: {exc}")
                raise
    return DaemonSide


def log_refused(sock, why: str) -> None:
    """Log a connection a daemon refuses, with its peer's address (grun.registry's handshake, TLS's here): a host's
    first for a reason, then at most one each REFUSED_LOG_SECS, with how many more there were."""
    import contextlib
    import logging
    peer = ("?", 0)
    with contextlib.suppress(OSError):
        peer = sock.getpeername()[:2]
    if len(_refused) > 4096:  # (bounded, whoever knocks)
        _refused.clear()
    told = _refused.setdefault((peer[0], why), [float("-inf"), -1])  # (each reason's first: a TLS mismatch, a secret)
    if time.monotonic() - told[0] >= REFUSED_LOG_SECS:
        more = f" ({told[1]} more from {peer[0]} since)" if told[1] > 0 else ""
        logging.getLogger("grun.auth").warning("refused a connection from %s: %s%s", format_hostport(*peer), why, more)
        told[:] = [time.monotonic(), -1]
    told[1] += 1


def tls_pyro5() -> None:
    """With `tls:`, Pyro5's daemons in this process speak TLS (tls_server())."""
    if not _tls:
        return
    from Pyro5 import config, socketutil
    config.SSL, config.SSL_SERVERCERT = True, _tls["cert"]  # (Pyro5 asks its cache for a server's context then)
    socketutil.__ssl_server_context = tls_server()  # Pyro5's cache of it, read before any other SSL_ setting


def who(given, bound: str = ""):
    """Who presents `given`: CLUSTER for a proof of the secret, the identity a node's credential vouches for ({uid, gid,
    umask, groups, user, job: the job it runs in, or None}), or None (neither, or a replay). `auth: munge`: CLUSTER for
    root and the daemons' user, else munged's uid and gid, this host's groups of them (not the client's), its umask."""
    import re  # (here, not at the top: the daemons' only; 4 ms of every `grun` call)
    if munge.socket:
        uid, gid, payload = munge.decode(given) or (None, None, "")
        umask, _, said = payload.partition("\n")
        if uid is None or said != bound or not re.fullmatch(r"[0-7]{1,4}", umask):
            return None
        if uid in (0, os.geteuid()):
            return CLUSTER
        user, groups = account(uid, gid)  # (no job: munged cannot vouch for one, so a nested grun borrows nothing)
        return {"uid": uid, "gid": gid, "umask": int(umask, 8), "user": user, "groups": groups, "job": None}
    body = ""
    if isinstance(given, str) and given.startswith(_CRED):
        given, body = given[len(_CRED):len(_CRED) + PROOF_LEN], given[len(_CRED) + PROOF_LEN:]
        if (fields := re.fullmatch(r"(\d+):(\d+):([0-7]+):([\d,]*):(\d*):(.+)", body, re.ASCII)) is None:  # (one line)
            return None
    if not verify(given, f"{bound}\n{body}" if body else bound):
        return None
    if not body:
        return CLUSTER
    uid, gid, umask, groups, job, user = fields.groups()
    return {"uid": int(uid), "gid": int(gid), "umask": int(umask, 8), "user": user,
            "groups": [int(g) for g in groups.split(",") if g], "job": int(job) if job else None}


def greeting() -> str:
    """What a connection's handshake presents: a proof, or (no auth) the user we are, a claim as a submission's user."""
    return proof() or f"hello {current_user()}"


def current_user() -> str:
    """The user name as getpass.getuser() finds it (the same variables, then the password database; else the uid),
    without importing getpass and termios, nor reading the database, on every `grun` call."""
    return next(filter(None, map(os.environ.get, ("LOGNAME", "USER", "LNAME", "USERNAME"))), None) or _user(os.getuid())


@functools.cache
def _user(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def handshake(checked: bool, conn, data) -> str:
    """A new connection's handshake (Pyro5's validateHandshake): `checked` (auth), who presents `data` (caller()),
    refused if nobody; else the user it claims (claimed())."""
    if not checked:
        conn.grun_claim = data[6:70] if isinstance(data, str) and data.startswith("hello ") and data[6:].isprintable() \
            else None
        return "hello"
    conn.grun_caller = who(data)
    if conn.grun_caller is not None:
        return "hello"
    log_refused(conn.sock, "no valid proof of the secret")
    raise PermissionError(REFUSED)


def caller():
    """The Pyro5 call's caller: None without auth (all trusted, as the original grun), CLUSTER, or a user (who())."""
    from Pyro5.callcontext import current_context
    return getattr(current_context.client, "grun_caller", None) if required() else None


def claimed() -> str | None:
    """The user a call's connection says it is, without auth (greeting()): who a kill names, as a credential's user."""
    from Pyro5.callcontext import current_context
    return getattr(current_context.client, "grun_claim", None)


def umask() -> int:
    """Our umask (os.umask would set it, under other threads' feet)."""
    return int(_status("self", "Umask", "022"), 8)


def required() -> bool:
    """Whether every connection must prove itself: a cluster secret, or `auth: munge`."""
    return key() is not None or bool(munge.socket)


def confined(admins=()) -> dict | None:
    """The caller, if a user who may act on their own jobs only (not root, not in `admins`); else None."""
    who = caller()
    return who if isinstance(who, dict) and who["uid"] != 0 and who["user"] not in admins else None


def require(what: str, owner: int | None = None, admins=()) -> None:
    """Refuse (a ValueError, which Pyro5 clients rebuild) a user's call to do `what` unless the user is `owner`, root or
    in `admins`; holders of the secret may do anything."""
    who = caller()
    if isinstance(who, dict) and (owner is None or who["uid"] not in (owner, 0) and who["user"] not in admins):
        raise ValueError(f"not authorized: {who['user']} may not {what}")


def account(user: int | str, gid: int) -> tuple[str, list[int]]:
    """The name and groups of a user (a uid or a name) by this host's account database, with its passwd primary
    group's (not `sg`'s gid); if it is unknown here, (the user, [gid])."""
    import pwd
    try:
        pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
        return pw.pw_name, os.getgrouplist(pw.pw_name, pw.pw_gid)
    except (KeyError, ValueError):  # (ValueError: a NUL in a name)
        return str(user), [gid]


def _status(pid: int, key: str, default: str = "") -> str:
    """A field of /proc/PID/status (its first word), or `default` if the process is gone (a umask: thread-safe)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split()[1] for line in f if line.startswith(f"{key}:")), default)
    except OSError:
        return default


def job_of(pid: int, uid: int, leaders: dict) -> int | None:
    """The job `pid` runs in, of `leaders` (pid -> id): its nearest ancestor's (setsid keeps ancestry), else its
    session leader's (a daemon's double fork leaves the tree); None if neither, or not `uid`'s (a pid reused)."""
    at = pid
    while at > 1 and at not in leaders:
        at = int(_status(at, "PPid", "0"))
    leader = at if at in leaders else int(_status(pid, "NSsid", "0"))
    return leaders[leader] if leader in leaders and _status(leader, "Uid") == str(uid) else None


def serve_credentials(log, leaders=dict):
    """A thread signing credentials on this host's socket (returned) once it holds its lock (a host's node daemons sign
    in turn), with the job the asker runs in of leaders() (job_of); None if not root, or no secret."""
    import fcntl
    import socket
    if os.geteuid() != 0 or not _cred_at or key() is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def serve():
        global _served
        import errno
        try:
            os.makedirs(CRED_DIR, exist_ok=True)
            os.chmod(CRED_DIR, 0o755)
            while True:  # (the daemon we waited for removed the file we locked, as it stopped: lock the new one)
                _lock[0] = os.open(f"{_cred_at}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # (kept: flock(2))
                try:
                    fcntl.flock(_lock[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("credentials: another node daemon of this host signs them (%s) until it stops", _cred_at)
                    fcntl.flock(_lock[0], fcntl.LOCK_EX)
                if os.fstat(_lock[0]).st_nlink:  # (unserve's unlink, under the lock: 0 links)
                    break
                stale, _lock[0] = _lock[0], -1  # (-1 whenever it is not ours: a close would close another thread's fd)
                os.close(stale)
            if os.path.lexists(_cred_at):
                os.unlink(_cred_at)  # a daemon's that died
            sock.bind(_cred_at)
            os.chmod(_cred_at, 0o666)  # (connecting to it takes write permission)
            sock.listen(128)
            _served = True
        except OSError as exc:
            if _lock[0] >= 0:  # (the next node daemon of this host may do better)
                os.close(_lock[0])
                _lock[0] = -1
            return log.warning("credentials: cannot sign them for this host's users: %s", exc)
        while True:
            try:
                conn, _ = sock.accept()
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # closed: our daemon stops (unserve lets the lock go)
                log.warning("credentials: %s", exc)  # (EMFILE: it heals)
                time.sleep(1.0)
                continue
            with conn:
                try:
                    conn.settimeout(1.0)
                    pid, uid, gid = peer_ids(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                    bound = conn.recv(512).decode("ascii").rstrip("\n")
                    if "\n" in bound:  # (signed as "BOUND\nBODY": a line of the asker's would pass for the body)
                        raise UnicodeError(f"a request from uid {uid} for more than one line")
                    user, groups = account(uid, gid)  # (the kernel's word on who asks, not the asker's)
                    job = job_of(pid, uid, leaders()) or ""
                    body = f"{uid}:{gid}:{_status(pid, 'Umask', '022')}:{','.join(map(str, groups))}:{job}:{user}"
                    conn.sendall((_CRED + proof(f"{bound}\n{body}") + body).encode())
                except (OSError, UnicodeError) as exc:
                    log.warning("credentials: a request failed: %s", exc)
    import threading
    threading.Thread(target=serve, name="grun-credentials", daemon=True).start()
    return sock


def unserve() -> None:
    """Remove the credential socket's and lock's files this process made (it holds the lock: a waiter locks anew)."""
    import contextlib  # (here, not at import: `grun --nowait` imports nothing it does not need, test_cli_fast)
    for path in (_cred_at, f"{_cred_at}.lock") if _served else ():
        with contextlib.suppress(OSError):  # (each its own: a socket file gone must not keep the lock file, nor its fd)
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(_lock[0])  # (the next node daemon of this host signs at once, not once we have exited)


def _credential(bound: str) -> str | None:
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(_cred_at)
            if peer_ids(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1] != 0:
                return None  # only a node daemon running as root signs for users
            sock.sendall(bound.encode("ascii") + b"\n")
            data = b"".join(iter(lambda: sock.recv(4096), b""))
        return data.decode("ascii") if data.startswith(_CRED.encode()) else None
    except (OSError, UnicodeError):
        return None


def peer_ids(ucred: bytes) -> tuple[int, int, int]:
    """The pid, uid and gid in a `struct ucred` the kernel gave (SO_PEERCRED, SCM_CREDENTIALS)."""
    return struct.unpack("3i", ucred[:12])
