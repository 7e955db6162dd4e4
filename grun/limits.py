"""Per-job limits: what they are (-m x the node's `hard_factor:`, -t, `ulimit:`), starting a job under them, and
telling afterwards (and the user) whether a job died of one. A job without -m has a reservation, not a limit: the
node kills it only when it runs short of memory. The node's sampler (grun.actors.monitor) enforces -t, and -m on
resident memory. Light: imported by the reaper, and by the client for `describe`.

The rlimits: around each spawn the single-threaded reaper lowers its own *soft* limits to the job's (its hard
ones untouched: no privilege needed), so the job inherits them at vfork and never runs unlimited, and raises them
back; right after, prlimit lowers the job's soft and hard limits, so it cannot raise them back (unless within
those microseconds). `preexec_fn` is unsafe in a threaded parent and slow in a big one; prlimit alone would let
the job run unlimited a moment and miss what it forked. The reaper catches SIGXCPU meanwhile (its own cpu time
may be over the job's limit).

Memory is RLIMIT_DATA (what a program allocates), not RLIMIT_AS, which counts address space that libraries, thread
arenas and runtimes (Java, Go, OpenBLAS) reserve but never touch, failing ordinary threaded programs far below
their real use. A refused allocation leaves no kernel record (a sampler's kill does): its last stderr lines tell."""

import contextlib
import errno
import os
import re
import resource
import signal
import stat
import subprocess

MIN_DATA_MB = 32  # the reaper must still be able to spawn under the data limit it takes on for a moment

_RLIMITS = {  # limits key (that of `ulimit:`, with _mb for a size) -> (rlimit, unit in bytes or 1)
    "data_mb": (resource.RLIMIT_DATA, 1 << 20), "cpu": (resource.RLIMIT_CPU, 1),
    "fsize_mb": (resource.RLIMIT_FSIZE, 1 << 20), "nofile": (resource.RLIMIT_NOFILE, 1),
    "nproc": (resource.RLIMIT_NPROC, 1), "core_mb": (resource.RLIMIT_CORE, 1 << 20),
    "stack_mb": (resource.RLIMIT_STACK, 1 << 20)}
OOM_PATTERNS = re.compile(
    rb"MemoryError|Cannot allocate memory|std::bad_alloc|memory exhausted|[Oo]ut of memory|"
    rb"OutOfMemoryError|failed to allocate|cannot allocate|allocation failed|ENOMEM|malloc\(\): ")


def job_limits(job: dict, hard_factor: float, ulimit: dict | None) -> dict:
    """The limits a job gets on this node: for a job that asked for memory, memory_mb (the sampler's, on resident
    memory: -m x hard_factor, as memory_basis says) and the rlimit data_mb (the same, at least MIN_DATA_MB); for a
    learned memory, memory_mb alone; time (seconds) when it asked. A reserve_only memory (qsub -l mem_free) is no limit."""
    out = {"time": job["time"]} if job.get("time") else {}
    if job.get("memory_set") and not job.get("reserve_only"):
        memory_limit = max(1, int(job["memory"] * hard_factor))
        out.update(memory_mb=memory_limit, data_mb=max(memory_limit, MIN_DATA_MB),
                   memory_basis=f"-m {job['memory']} x hard_factor {hard_factor:g}")
    elif job.get("memory_limit"):  # a learned estimate x learn_memory_factor (grun.core.learn): the sampler's only
        out.update(memory_mb=job["memory_limit"], memory_basis=f"learned {job['memory']} MB x learn_memory_factor")
    out.update({name if name in _RLIMITS else f"{name}_mb": int(value)  # (grun.config checked the names)
                for name, value in (ulimit or {}).items() if value is not None})
    return out


def spawn(limits: dict, argv: list[str], **popen) -> tuple[subprocess.Popen, dict]:
    """Popen in a session of its own, under the job's limits from its first instruction (see above; only in a
    single-threaded process). Returns the process and the limits set (with the sampler's memory_mb and time).
    If our own fds or memory do not fit under them, it spawns unlimited and sets them right after."""
    plan, saved = [], []  # (key, rlimit, soft, hard, unit) of each limit to set; what we lowered of ours
    for key, (which, unit) in _RLIMITS.items():
        if limits.get(key) is None:
            continue
        old = resource.getrlimit(which)  # ours bound the job's: raising a hard limit needs privilege
        top = float("inf") if old[1] == resource.RLIM_INFINITY else old[1]
        soft = min(int(limits[key]) * unit, top)
        # SIGXCPU at the soft cpu limit, SIGKILL at the hard one (which wins if equal): a grace lets the job see SIGXCPU
        plan.append((key, which, soft, min(soft + max(5, soft // 10), top) if key == "cpu" else soft, unit))
        if old[0] == resource.RLIM_INFINITY or old[0] > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(which, (soft, old[1]))
                saved.append((which, old))
    try:
        try:
            proc = subprocess.Popen(argv, start_new_session=True, close_fds=True, **popen)
        finally:
            for which, old in reversed(saved):
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(which, old)
    except OSError as exc:
        if not saved or exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise
        proc = subprocess.Popen(argv, start_new_session=True, close_fds=True, **popen)
    proc.returncode = 0  # we reap it ourselves (wait4); keeps Popen from polling it again
    applied = {key: limits[key] for key in ("memory_mb", "time") if limits.get(key)}  # (the sampler's)
    for key, which, soft, hard, unit in plan:  # the hard limits too: the job cannot raise them back
        try:
            resource.prlimit(proc.pid, which, (soft, hard))
        except ProcessLookupError:
            pass  # it has ended already, under the soft limit it inherited
        except (ValueError, OSError):
            continue
        applied[key] = soft // unit
    return proc, applied


def _tail(path: str | None, size: int = 8192, owner: int | None = None) -> bytes:
    """The last `size` bytes of path, a regular file (of `owner`'s), else b"": read as root (the reaper, the node's orphan
    path), so no FIFO the job left there may block it (non-blocking), nor a link to another's file (/etc/shadow) leak."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, TypeError, ValueError):
        return b""
    try:
        found = os.fstat(fd)
        mine = stat.S_ISREG(found.st_mode) and owner in (None, found.st_uid)
        return os.pread(fd, size, max(0, found.st_size - size)) if mine else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def limit_hit(status: dict, limits: dict, stderr_path: str | None, owner: int) -> dict:
    """{"limit": ..., "limit_detail": ...} when the job died of one of its limits, else {} (its stderr: owner's file)."""
    sig, code, usage = status.get("signal"), status.get("exit_code"), status.get("usage") or {}
    cpu = (usage.get("utime") or 0) + (usage.get("stime") or 0)
    if limits.get("cpu") and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu"])):
        return {"limit": "cpu", "limit_detail": f"used its cpu time limit of {limits['cpu']} s"}
    if sig == signal.SIGXFSZ and limits.get("fsize_mb"):
        return {"limit": "fsize", "limit_detail": f"wrote past its file size limit of {limits['fsize_mb']} MB"}
    if not limits.get("data_mb") or (code == 0 and not sig):
        return {}
    crashed_full = (sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
                    and usage.get("maxrss_kb", 0) / 1024 >= 0.9 * limits["data_mb"])
    if crashed_full or OOM_PATTERNS.search(_tail(stderr_path, owner=owner)):
        return {"limit": "memory",
                "limit_detail": f"a memory allocation failed at its limit of {limits.get('memory_mb', limits['data_mb'])} MB"}
    return {}


def exit_status(job_dir: str, job: dict, status: dict, wstatus: int, rusage, end: float, lost: int, found: dict,
                moved: str = ""):
    """Fill `status` (start_time, limits) from wait4's results (the job's and its waited-for descendants' usage).
    ru_inblock/ru_oublock are /proc/PID/io's read_bytes/write_bytes in 512-byte units: storage I/O the job caused
    (page-cache hits are not reads). A limit is the sampler's (`found`: limit.json), or else told by the signal or the
    job's last stderr lines: its --err file's, or `moved`'s, the file the job itself sent its stderr to (sbatch's -o:
    its script's exec 2>&1), else its spool's. `lost`: output bytes a full spool disk dropped."""
    status.update(exit_code=os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
                  signal=os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None, end_time=end,
                  usage={"wall": round(end - status.get("start_time", end), 6), "utime": rusage.ru_utime,
                         "stime": rusage.ru_stime, "maxrss_kb": rusage.ru_maxrss, "read_blocks": rusage.ru_inblock,
                         "write_blocks": rusage.ru_oublock, "read_bytes": rusage.ru_inblock * 512,
                         "write_bytes": rusage.ru_oublock * 512})
    if rusage.ru_maxrss <= status.pop("reaper_peak_kb", 0):  # ours, not the job's: see spawner._own_peak_kb
        status["usage"]["maxrss_at_most"] = True
    err = os.path.join(job["cwd"], job["stderr_file"]) if job.get("stderr_file") else moved
    owner = (job.get("uid") or 0) if err and os.geteuid() == 0 else os.geteuid()  # (its user's file, or unread)
    status.update({"limit": found["limit"], "limit_detail": found.get("limit_detail")} if found else limit_hit(status,
        job.get("limits") or {}, err or os.path.join(job_dir, "stderr"), owner))
    if lost:
        status["error"] = f"{lost} bytes of output lost: spool disk full"


def describe(result: dict, job_id, family: str | None = None) -> str | None:
    """The line a client prints on stderr when its job died of a limit: what it used, and what to pass (an SGE job's,
    `family` from grun/compat.py's GRUN_COMPAT: qsub's options, sbatch's: its -m is --distribution)."""
    from .tables import fmt_span
    kind, detail = result.get("limit"), result.get("limit_detail")
    more = {"sge": ("-l h_rt=", "-l h_vmem="), "slurm": ("-t", "--mem=")}.get(family, ("-t", "-m"))
    if kind == "time":
        limit, used = (result.get("limits") or {}).get("time"), (result.get("usage") or {}).get("wall")
        return (f"job {job_id} ran out of its time limit" + (f" of {fmt_span(limit)}" if limit else "")
                + (f" (used {fmt_span(used)})" if used else "") + f"; pass {more[0]} with more")
    if not kind:
        return None
    what = {"memory": "out of memory", "cpu": "out of cpu time", "fsize": "file size limit"}.get(kind, kind)
    return (f"job {job_id} {'killed' if result.get('signal') else 'failed'}: {what}" + (f" ({detail})" if detail else "")
            + (f"; pass {more[1]} with what it needs" if kind == "memory" else ""))
