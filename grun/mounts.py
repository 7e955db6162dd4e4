"""Network filesystems: which ones this host mounts (/proc/self/mountinfo), which one a path lies on, whether a
node has the one a job's cwd lies on, and `sync`, the original grun's nfs_sync (refreshing their attribute caches,
so that a job sees the files a job on another host has just written). A filesystem is named as the kernel shows
it: {"type": "nfs4", "source": "server:/export", "root": its mount point, "sub": the path inside it mounted there,
"/" for all}. A node reports its network mounts and autofs points (where one may appear on demand); a job carries
its cwd's (`cwd_fs`), none when that is local."""
import _thread
import os
import time

MOUNTINFO = "/proc/self/mountinfo"
NETWORK = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "fuse.ceph", "fuse.ceph-fuse",
                     "glusterfs", "fuse.glusterfs", "fuse.sshfs", "beegfs", "gpfs", "afs", "fuse.s3fs"})
AUTOFS = "autofs"
SYNC_SECS = 2.0  # a sync stuck on a hung server is given up after this long; the job starts anyway
_idle = _thread.allocate_lock()  # held while a sync runs: one stuck on a hung server stops the next ones
_table: tuple | None = None  # (when, table()), for fresh=False


def _unescape(field: str) -> str:
    """The kernel writes a space, tab, newline or backslash as \\ and 3 octal digits. (Not with re: importing it costs
    a `grun` call 4 ms.)"""
    head, *rest = field.split("\\")
    return head + "".join(chr(int(p[:3], 8)) + p[3:] if len(p) >= 3 and not p[:3].strip("01234567") else "\\" + p
                          for p in rest)


def parse(text: str) -> list[dict]:
    """The mounts of a mountinfo text in order (a later one over the same point hides the earlier): `ID PARENT MAJ:MIN
    ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS`; other lines skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 6 and len(tail) >= 2:
            if "\\" in line:
                fields, tail = [_unescape(f) for f in fields], [_unescape(f) for f in tail]
            mounts.append({"type": tail[0], "source": tail[1], "root": fields[4], "sub": fields[3]})
    return mounts


def table(fresh: bool = True) -> list[dict] | None:
    """This host's mounts (None: not known here, no /proc); `fresh=False`: a reading of the last 5 s will do."""
    global _table
    if fresh or _table is None or time.monotonic() - _table[0] > 5.0:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
                _table = time.monotonic(), parse(f.read())
        except OSError:
            return None
    return _table[1]


def network(mounts: list[dict] | None) -> list[dict] | None:
    """What a node reports: its network mounts and autofs points (None: unknown)."""
    return None if mounts is None else [m for m in mounts if m["type"] in NETWORK | {AUTOFS}]


def reported(value) -> list[dict] | None:
    """A node's report (`network`'s) as `shared` reads it; None (not known) when it is not one."""
    keys = ("type", "source", "root", "sub")
    ok = isinstance(value, list) and all(isinstance(m, dict) and all(type(m.get(k)) is str for k in keys) for m in value)
    return [{k: m[k] for k in keys} for m in value] if ok else None


def lies_on(path: str, mounts: list[dict]) -> dict | None:
    """The mount a path lies on: the last one of the longest mount point that holds it."""
    over = [(len(m["root"]), i) for i, m in enumerate(mounts) if inside(path, m["root"])]
    return mounts[max(over)[1]] if over else None


def identity(path: str, mounts: list[dict] | None = None) -> dict | None:
    """The network filesystem an existing path lies on (after its symlinks), or None when it is local."""
    mounts = table(fresh=False) if mounts is None else mounts
    fs = lies_on(os.path.realpath(path), mounts or [])
    return dict(fs) if fs and fs["type"] in NETWORK else None


def shared(cwd_fs: dict | None, node_mounts: list[dict] | None) -> bool | None:
    """Whether a node with these mounts (`network`'s) has the filesystem `cwd_fs`: True when it mounts that export (or
    one holding it); None when that cannot be told (no cwd_fs, mounts unknown, an autofs point over its mount point,
    another source at that mount point: the same server by another name?); else False."""
    if not cwd_fs or node_mounts is None:
        return None
    want = _export(cwd_fs)  # (once: the master asks this per job and node)
    if any(m["type"] != AUTOFS and inside(want, _export(m)) for m in node_mounts):
        return True
    return None if any(m["root"] == cwd_fs["root"] or m["type"] == AUTOFS and inside(cwd_fs["root"], m["root"])
                       for m in node_mounts) else False


def may_stage(job: dict, mode: str) -> bool:
    """Whether a node in stage: `mode` (the job's --stage first) may run the job where its cwd is not: always, or auto
    for a job with files to stage (grun.stage.wanted decides on the node)."""
    mode = job.get("stage") or mode
    return mode == "always" or mode == "auto" and any(job.get(k) for k in ("inputs", "outputs", "stage_in", "stage_out"))


def unmounted(job: dict, node) -> str | None:
    """Where the job's cwd lies (`where`), when the node (a core NodeView: its mounts and `stage:` mode) is
    known not to have it and would not stage the job's files there (grun.stage.wanted); else None."""
    fs = job.get("cwd_fs")
    return where(fs) if fs and shared(fs, node.mounts) is False and not may_stage(job, node.stage) else None


def _export(fs: dict) -> str:
    return fs["source"].rstrip("/") + (fs["sub"] if fs.get("sub", "/") != "/" else "")


def inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def where(fs: dict) -> str:
    return f"{fs['root']} ({fs['type']} {fs['source']}{'' if fs.get('sub', '/') == '/' else ' ' + fs['sub']})"


def job_paths(job: dict, mounts: list[dict] | None, ended: bool = False) -> list[str]:
    """What of a job lies on a network filesystem of `mounts` (and its cwd, when it has a cwd_fs): before it starts,
    its cwd, the directories of its command's paths and its -M inputs; once `ended`, its -M outputs and cwd."""
    cwd, words = job["cwd"], job["cmd"][0].split() if job.get("shell") else job["cmd"]
    paths = [*job.get("outputs", ()), cwd] if ended else [cwd, *job.get("inputs", ()), *(
        os.path.dirname(os.path.normpath(os.path.join(cwd, w))) for w in words if "/" in w and w[0] != "-")]
    return [p for p in dict.fromkeys(paths) if p == cwd and job.get("cwd_fs") or mounts and (
        m := lies_on(p, mounts)) and m["type"] in NETWORK]


def after(job: dict) -> None:
    """The waiting client's sync once the job has ended."""
    if job.get("cwd_fs") or job.get("outputs"):
        sync(job_paths(job, network(table()), ended=True))


def sync(paths, timeout: float = SYNC_SECS) -> None:
    """Refresh the attribute cache of these paths (`walk`), never raising, within `timeout` even when a server hangs (a
    sync still stuck on one skips the next: one thread at most)."""
    if not paths or not _idle.acquire(blocking=False):
        return
    done = _thread.allocate_lock()
    done.acquire()

    def run():
        try:
            walk(paths)
        finally:
            done.release()
            _idle.release()
    _thread.start_new_thread(run, ())
    done.acquire(timeout=timeout)


def walk(paths) -> None:
    """sync's refresh, in this thread (a hung server may hold it): opendir/closedir each directory, stat each file."""
    import contextlib  # (not at the top: every `grun` call imports this module)
    for path in paths:
        for name in (os.path.dirname(path), path):  # opendir/closedir: NFS asks the server again
            with contextlib.suppress(OSError):
                os.scandir(name).close() if os.path.isdir(name) else os.stat(name)
