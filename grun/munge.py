"""Talking to MUNGE (`auth: munge`, as Slurm uses it): this process's credential from its host's munged, and the check
of a peer's, yielding the uid and gid of its maker as munged saw them (from the kernel), never as the peer says. Through
libmunge (ctypes): measured here, importing ctypes costs a `grun` call 1.2 ms and a credential 0.05 ms, where `munge -n`
in a subprocess costs 2.3 ms plus 2.4 ms of importing subprocess. grun.auth decides what a credential is worth."""

import functools

socket: str | None = None  # munge_socket while `auth: munge` (grun.auth.configure); None: MUNGE is not used
_OPT_SOCKET, _REPLAYED = 8, 17  # munge.h: MUNGE_OPT_SOCKET, EMUNGE_CRED_REPLAYED


class MungeError(ValueError):
    """No credential to be had (no libmunge, munged not running): a one-line error for the client."""


@functools.cache
def _libmunge():
    import ctypes
    try:
        lib = ctypes.CDLL("libmunge.so.2")
    except OSError as exc:
        raise MungeError(f"auth: munge, but no libmunge here ({exc}): install MUNGE (Debian: munge)") from None
    lib.munge_ctx_create.restype = ctypes.c_void_p
    lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
    lib.munge_ctx_strerror.argtypes, lib.munge_ctx_strerror.restype = [ctypes.c_void_p], ctypes.c_char_p
    ptr, out = ctypes.c_void_p, ctypes.POINTER
    lib.munge_encode.argtypes = [out(ptr), ptr, ctypes.c_char_p, ctypes.c_int]
    lib.munge_decode.argtypes = [ctypes.c_char_p, ptr, out(ptr), out(ctypes.c_int), out(ctypes.c_uint32),
                                 out(ctypes.c_uint32)]
    free = ctypes.CDLL(None).free  # (libmunge allocates what it returns with malloc)
    free.argtypes = [ptr]
    return lib, ctypes, free


def _run(call) -> tuple[int, str]:
    """call(ctx) in a libmunge context of its own (theirs are not for sharing between threads), set to our socket: its
    error code, with libmunge's text for it. (Not a context manager: contextlib would cost every `grun` call ~1 ms.)"""
    lib, ctypes, _ = _libmunge()
    path = socket.encode()  # (first: a ctx once made must be destroyed)
    ctx = lib.munge_ctx_create()
    try:
        lib.munge_ctx_set(ctypes.c_void_p(ctx), _OPT_SOCKET, path)
        err = call(ctx)
        return err, (lib.munge_ctx_strerror(ctx) or b"").decode() if err else ""
    finally:
        lib.munge_ctx_destroy(ctx)


def encode(payload: str) -> str:
    """A credential of this process, carrying `payload` (signed and encrypted with it); MungeError without one."""
    lib, ctypes, free = _libmunge()
    cred, data = ctypes.c_void_p(), payload.encode()
    err, why = _run(lambda ctx: lib.munge_encode(ctypes.byref(cred), ctx, data, len(data)))
    if err:
        raise MungeError(f"cannot get a MUNGE credential: {why} (error {err})")
    try:
        return ctypes.string_at(cred).decode("ascii")
    finally:
        free(cred)


def decode(cred) -> tuple[int, int, str] | None:
    """(uid, gid, payload) of a valid credential seen here for the first time; None for anything else (an
    invalid, expired or replayed credential, which munged refuses: logged with its reason)."""
    if not isinstance(cred, str) or not cred.startswith("MUNGE:") or len(cred) > 8192 or not cred.isascii():
        return None
    lib, ctypes, free = _libmunge()
    buf, size, uid, gid = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_uint32(), ctypes.c_uint32()
    err, why = _run(lambda ctx: lib.munge_decode(cred.encode(), ctx, *map(ctypes.byref, (buf, size, uid, gid))))
    try:
        payload = ctypes.string_at(buf, size.value) if buf.value else b""
    finally:
        free(buf)
    if err:  # a replayed credential (_REPLAYED) comes with its uid and payload: refused all the same
        import logging  # (daemons only)
        logging.getLogger("grun.auth").warning("MUNGE refused a credential: %s (error %d%s)", why, err,
                                               ", a replay" if err == _REPLAYED else "")
        return None
    return uid.value, gid.value, payload.decode("utf-8", "replace")
