"""Cluster authentication: this process's cluster secret (a personal cluster's own, made at its first start,
or `secret_file:` with `auth: secret`) and the proofs of it that every connection presents, in the Pyro5
handshake to the master and the nodes (grun.registry, grun.wire) and on the output side channel (grun.stream).

A proof is a keyed BLAKE2b MAC (as good as an HMAC, and its module costs a `grun` call 0.2 ms where hmac's
costs 2) of the time and a fresh nonce, never the secret itself. It is not a challenge-response: Pyro5's
handshake is one message from the client and the daemon's answer, and grun.wire sends its first call with
it, so a challenge from the daemon would cost every connection a round trip. Instead a nonce is taken once
only, and a proof older than PROOF_TTL is refused: the hosts' clocks must agree within it, as MUNGE's do."""

import _thread
import os
import time

PROOF_TTL = 300  # seconds
PROOF_LEN = 66   # characters: the time (10), the nonce (24), the MAC (32)
REFUSED = "not authorized: no valid proof of the cluster secret (a personal cluster serves its owner only)"
_path: str | None = None
_key: bytes | None = None
_seen: dict[int, set[str]] = {}  # minute of a proof -> the nonces taken in it
_seen_lock = _thread.allocate_lock()


def use(path: str | None) -> None:
    """The secret this process presents and checks: the file at `path`, read when first needed (a personal
    cluster's is made by its daemon, maybe after its client read the config); None: none."""
    global _path, _key
    _path, _key = path, None


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
    """A proof of the secret for one connection (`bound`: what it is for, e.g. a stream token), or None."""
    secret = key()
    if secret is None:
        return None
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
    minute = int(given[:10]) // 60
    with _seen_lock:
        for old in [m for m in _seen if m < (now - PROOF_TTL) // 60 - 1]:
            del _seen[old]
        nonces = _seen.setdefault(minute, set())
        if given[10:34] in nonces:
            return False  # a replay
        nonces.add(given[10:34])
    return True
