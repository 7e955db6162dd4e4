"""Job records: the states a job moves through, validation of what a client submits, and how an
exit status is told to a user. Plain dicts travel on the wire and in the journal; this module is the
one place that says what keys they hold.
"""

from __future__ import annotations

import math
import os

QUEUED, HELD, DISPATCHED, RUNNING, SUSPENDED = "queued", "held", "dispatched", "running", "suspended"
DONE, FAILED, KILLED, LOST = "done", "failed", "killed", "lost"
LIVE_STATES = (QUEUED, HELD, DISPATCHED, RUNNING, SUSPENDED)
FINAL_STATES = (DONE, FAILED, KILLED, LOST)
ON_NODE_STATES = (DISPATCHED, RUNNING, SUSPENDED)

NOBODY = 65534
MAX_CMD_BYTES = 1 << 20
MAX_ENV_BYTES = 4 << 20
MAX_CPUS = 1_000_000
MAX_MEMORY_MB = 1 << 40

# Keys a client may set; anything else in a submission is refused, so typos do not pass silently.
SPEC_KEYS = {
    "cmd", "shell", "cwd", "env", "cpus", "memory", "user", "uid", "gid", "stdin",
    "token", "priority", "name", "host", "requeue",
}


class SpecError(ValueError):
    """A submission that cannot be accepted; the message is one line for the user."""


def _number(spec: dict, key: str, default: float, limit: float) -> float:
    value = spec.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{key} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise SpecError(f"{key} must be a finite number >= 0, got {value!r}")
    if value > limit:
        raise SpecError(f"{key} {value} is absurdly large (limit {limit})")
    return value


def _default_id(own: int) -> int:
    """A submission that does not say who it is runs as us, unless we are root: then as nobody."""
    return NOBODY if own == 0 else own


def validate_spec(spec: object, default_cpus: float = 1.0, default_memory: int = 100) -> dict:
    """Check a submission and return a normalised copy (the job's immutable request)."""
    if not isinstance(spec, dict):
        raise SpecError("a job spec must be a mapping")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown job spec keys: {', '.join(sorted(map(str, unknown)))}")
    cmd = spec.get("cmd")
    if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise SpecError("cmd must be a non-empty list of strings")
    if sum(len(a) for a in cmd) > MAX_CMD_BYTES:
        raise SpecError("command line too long")
    if any("\0" in a for a in cmd):
        raise SpecError("command contains a NUL byte")
    cwd = spec.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise SpecError("cwd must be an absolute path")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError("env must map strings to strings")
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise SpecError("environment too large")
    user = spec.get("user") or "nobody"
    if not isinstance(user, str):
        raise SpecError("user must be a string")
    out = {
        "cmd": list(cmd),
        "shell": bool(spec.get("shell", False)),
        "cwd": cwd,
        "env": dict(env),
        "cpus": float(_number(spec, "cpus", default_cpus, MAX_CPUS)),
        "memory": int(math.ceil(_number(spec, "memory", default_memory, MAX_MEMORY_MB))),
        "user": user,
        "uid": int(_number(spec, "uid", _default_id(os.getuid()), 1 << 32)),
        "gid": int(_number(spec, "gid", _default_id(os.getgid()), 1 << 32)),
        "stdin": bool(spec.get("stdin", False)),
        "priority": int(_number(spec, "priority", 20, 1 << 31)),
        "token": spec.get("token") if isinstance(spec.get("token"), str) else None,
        "name": spec.get("name") if isinstance(spec.get("name"), str) else None,
        "host": spec.get("host") if isinstance(spec.get("host"), str) else None,
        "requeue": bool(spec.get("requeue", True)),  # run again if its node is lost (--norequeue: no)
    }
    return out


def exit_code_of(result: dict) -> int:
    """The code a local shell would give: the exit status, or 128+N for death by signal N."""
    if result.get("signal"):
        return 128 + int(result["signal"])
    return int(result.get("exit_code", 1)) & 0xFF


def describe_exit(result: dict) -> str:
    if result.get("signal"):
        return f"signal {result['signal']}"
    return str(result.get("exit_code", "?"))


def public_view(job: dict) -> dict:
    """What queries return: everything but the environment, which can be large and private."""
    return {k: v for k, v in job.items() if k != "env"}
