"""Per-job limits: what they are (the node's `hard_factor:` and `ulimit:`), applying them as rlimits to
a job as it starts, and telling afterwards whether a job died of one.

Where the rlimits are set: the node's reaper (grun.spawner) is one long-lived single-threaded process
that starts every job with Popen (vfork + exec). Around each spawn it lowers its own *soft* limits to
the job's (`lower_soft`), so the job inherits them at vfork and carries them through exec, with no
window in which it runs unlimited, and restores them at once (`restore_soft`: the hard limits were
left alone, so raising the soft ones back needs no privilege). Right after the spawn it lowers the
job's soft and hard limits with prlimit (`set_child_limits`), so the job cannot raise its soft limit
back; only a job that calls setrlimit within those microseconds could. (`preexec_fn` is unsafe in a
threaded parent and slow in a big one; `prlimit` alone after the spawn would let the job run
unlimited for a moment, and miss any process it forked meanwhile.) The reaper's own cpu time may be
over a job's cpu limit: it catches SIGXCPU for that moment (a caught signal is reset at exec).

Memory is limited with RLIMIT_DATA (heap and private writable mappings: what a program allocates),
not RLIMIT_AS: address-space limits also count shared libraries and the address space that glibc's
per-thread arenas and runtimes (Java, Go, OpenBLAS) reserve but never touch, which makes ordinary
threaded programs fail far below their real use. A failed allocation makes malloc return NULL, so
the job usually exits non-zero ("MemoryError", "Cannot allocate memory", "std::bad_alloc") or
aborts; since no kernel counter records the refusal, it is recognised from the job's last stderr
lines. The node's sampler is the second line: a job whose processes together hold more resident
memory than the limit is killed (SIGKILL to its group), and that is recorded for certain.

Pure and light: imported by the reaper, which must stay small.
"""

from __future__ import annotations

import os
import re
import resource
import signal

# The reaper must still be able to spawn under the data limit it lowers itself to for a moment.
MIN_DATA_MB = 32

_RLIMITS = {  # limits key -> (rlimit, unit in bytes or 1)
    "data_mb": (resource.RLIMIT_DATA, 1 << 20),
    "cpu": (resource.RLIMIT_CPU, 1),
    "fsize_mb": (resource.RLIMIT_FSIZE, 1 << 20),
    "nofile": (resource.RLIMIT_NOFILE, 1),
    "nproc": (resource.RLIMIT_NPROC, 1),
    "core_mb": (resource.RLIMIT_CORE, 1 << 20),
    "stack_mb": (resource.RLIMIT_STACK, 1 << 20),
}
_ULIMIT_NAMES = {"cpu": "cpu", "fsize": "fsize_mb", "nofile": "nofile", "nproc": "nproc", "core": "core_mb",
                 "stack": "stack_mb"}

OOM_PATTERNS = re.compile(
    rb"MemoryError|Cannot allocate memory|std::bad_alloc|memory exhausted|[Oo]ut of memory|"
    rb"OutOfMemoryError|failed to allocate|cannot allocate|allocation failed|ENOMEM|malloc\(\): ")


def job_limits(memory_mb: int, hard_factor: float, ulimit: dict | None) -> dict:
    """The limits a job gets on this node: memory_mb is what the sampler enforces on the job's
    resident memory (request x hard_factor); data_mb the rlimit (the same, at least MIN_DATA_MB)."""
    memory_limit = max(1, int(memory_mb * hard_factor))
    out = {"memory_mb": memory_limit, "data_mb": max(memory_limit, MIN_DATA_MB)}
    for name, value in (ulimit or {}).items():
        if name in _ULIMIT_NAMES and value is not None:
            out[_ULIMIT_NAMES[name]] = int(value)
    return out


def plan_rlimits(limits: dict) -> list[tuple[str, int, int, int, int]]:
    """(key, rlimit, soft, hard, unit) for each limit to set, bounded by this process's hard limits
    (raising a hard limit needs privilege)."""
    plan = []
    for key, (which, unit) in _RLIMITS.items():
        if limits.get(key) is None:
            continue
        want = int(limits[key]) * unit
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        # at the soft cpu limit the kernel sends SIGXCPU, at the hard one SIGKILL (which wins when
        # they are equal): a grace period lets the job see SIGXCPU first
        top = want + cpu_grace(want) if key == "cpu" else want
        if hard != resource.RLIM_INFINITY:
            top = min(top, hard)
        plan.append((key, which, want, top, unit))
    return plan


def lower_soft(plan: list) -> list[tuple[int, tuple[int, int]]]:
    """Lower this process's soft limits to the plan's, for the length of one spawn (the hard limits
    stay, so they can be restored). Returns what restore_soft needs."""
    saved = []
    for _key, which, soft, _top, _unit in plan:
        old = resource.getrlimit(which)
        if old[0] != resource.RLIM_INFINITY and old[0] <= soft:
            continue
        try:
            resource.setrlimit(which, (soft, old[1]))
            saved.append((which, old))
        except (ValueError, OSError):
            pass
    return saved


def restore_soft(saved: list) -> None:
    for which, old in reversed(saved):
        try:
            resource.setrlimit(which, old)
        except (ValueError, OSError):
            pass


def set_child_limits(pid: int, plan: list) -> dict:
    """Set a started job's soft and hard limits to the plan's; returns what was set. Lowering the
    hard limit too means the job cannot raise its soft limit back."""
    applied = {}
    for key, which, soft, top, unit in plan:
        try:
            resource.prlimit(pid, which, (soft, top))
            applied[key] = soft // unit
        except ProcessLookupError:
            applied[key] = soft // unit  # it has ended already, under the soft limit it inherited
        except (ValueError, OSError):
            pass
    return applied


def cpu_grace(seconds: int) -> int:
    return max(5, seconds // 10)


def _tail(path: str | None, size: int = 8192) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


def limit_hit(status: dict, limits: dict, stderr_path: str | None) -> dict:
    """{"limit": ..., "limit_detail": ...} when the job died of one of its limits, else {}."""
    sig, code = status.get("signal"), status.get("exit_code")
    usage = status.get("usage") or {}
    cpu = (usage.get("utime") or 0) + (usage.get("stime") or 0)
    if limits.get("cpu") and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu"])):
        return {"limit": "cpu", "limit_detail": f"used its cpu time limit of {limits['cpu']} s"}
    if sig == signal.SIGXFSZ and limits.get("fsize_mb"):
        return {"limit": "fsize", "limit_detail": f"wrote past its file size limit of {limits['fsize_mb']} MB"}
    if not limits.get("data_mb") or (code == 0 and not sig):
        return {}
    maxrss_mb = (status.get("usage") or {}).get("maxrss_kb", 0) / 1024
    crashed_full = sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) and maxrss_mb >= 0.9 * limits["data_mb"]
    if crashed_full or OOM_PATTERNS.search(_tail(stderr_path)):
        return {"limit": "memory",
                "limit_detail": f"a memory allocation failed at its limit of {limits.get('memory_mb', limits['data_mb'])} MB"}
    return {}


def describe(result: dict, job_id) -> str | None:
    """The line a client prints on stderr when its job died of a limit."""
    kind = result.get("limit")
    if not kind:
        return None
    what = {"memory": "out of memory", "cpu": "out of cpu time", "fsize": "file size limit"}.get(kind, kind)
    detail = result.get("limit_detail")
    return f"job {job_id} {'killed' if result.get('signal') else 'failed'}: {what}" + (f" ({detail})" if detail else "")
