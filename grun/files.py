"""Small files written and read safely: the one atomic write (temp file, fsync, rename, fsync of the directory),
and readers that take a missing or half-written file for None instead of an error. A crash or a full disk leaves
either the old content or the new, never a torn file (TinyDB could not open a snapshot torn by kill -9 in 8 of 60
tries). Temp files are `<name>.tmp<tid>` (the kernel's thread id: no other live thread of any process has it; two
threads shared `.tmp<pid>`, and tore it); remove_temps() clears those a crash left."""
import contextlib
import json
import os
import threading
from collections.abc import Iterable


def make_dirs(path: str) -> None:
    """`path` and each missing directory above it, 0755 (os.makedirs' parents get 0777 & ~umask: 0775 if umask 002)."""
    if path and not os.path.isdir(path):  # ("": a relative path's top)
        make_dirs(os.path.dirname(path))
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def locked(path: str) -> bool:
    """Whether a live process holds a lock (flock) on the file: a daemon's pid file, a reaper's claim. False when
    the file is missing; the lock is taken and dropped at once when free (a shared one: it stops no one)."""
    import fcntl
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return isinstance(exc, BlockingIOError)
    return False


def write_atomic(path: str, data: bytes | Iterable[bytes], *, durable: bool = True, mode: int = 0o644) -> None:
    """Replace `path` with `data` (bytes, or pieces written one after the other, so a large file
    need not be built in memory). `durable`: fsync the file and its directory, so the new content
    survives a power cut, not only a crash of this process."""
    tmp = f"{path}.tmp{threading.get_native_id()}"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode), "wb") as f:
            f.writelines([data] if isinstance(data, (bytes, bytearray, memoryview)) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path))


def remove_temps(directory: str) -> None:
    for name in os.listdir(directory):
        if ".tmp" in name and name.rsplit(".tmp", 1)[1].isdigit():
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def read_json(path: str):
    """The file's JSON value, or None when it is missing, unreadable or not (yet) whole JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def read_int(path: str) -> int | None:
    """The number a pid-like file starts with (its first word), or None."""
    try:
        with open(path, "rb") as f:
            word = f.read(64).split(maxsplit=1)
    except OSError:
        return None
    return int(word[0]) if word and word[0].isdigit() and int(word[0]) > 0 else None
