"""Helpers for the integration tests: polling with deadlines, reading pipes without blocking forever,
and finding a job's process on its node."""
from __future__ import annotations

import os
import re
import select
import time

from cluster import LocalCluster

from grun.files import read_int


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def read_line(pipe, timeout: float) -> bytes:
    """One line from a pipe, or AssertionError if none arrives in time (never blocks longer)."""
    fd = pipe.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no complete line within {timeout} s (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"EOF before a complete line (got {buf!r})")
        buf += chunk
    return buf


def nothing_to_read(pipe, within: float) -> bool:
    return not select.select([pipe.fileno()], [], [], within)[0]


def job_id_from_verbose(stderr_line: bytes) -> int:
    m = re.search(rb"job (\d+)", stderr_line)
    assert m, f"no job id in {stderr_line!r}"
    return int(m.group(1))


def nowait(cluster: LocalCluster, *args: str) -> int:
    """Queue a job with `grun --nowait` and return its id."""
    r = cluster.grun("--nowait", *args)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(rb"Job_ID: (\d+)\n", r.stdout)
    assert m, r.stdout
    return int(m.group(1))


def job(cluster: LocalCluster, job_id: int) -> dict:
    return cluster.client().job(job_id)


def wait_state(cluster: LocalCluster, job_id: int, *states: str, timeout: float = 20.0) -> dict:
    client = cluster.client()
    def in_state() -> dict | None:
        j = client.job(job_id)
        return j if j["state"] in states else None
    return wait_for(in_state, timeout, what=f"job {job_id} to be {'/'.join(states)}")


def job_pid(cluster: LocalCluster, job_id: int, timeout: float = 10.0) -> int:
    """The job's pid (also its process group id), from its node's spool."""
    def find():
        for name in cluster.node_specs:  # the pid file: "<job pid> <reaper>" (see grun.spool)
            pid = read_int(os.path.join(cluster.root, name, "node", "jobs", str(job_id), "pid"))
            if pid:
                return pid
        return None
    return wait_for(find, timeout, what=f"the pid file of job {job_id}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def assert_one_error_line(result, *needles: str) -> str:
    """The CLI's error contract: non-zero exit, one line on stderr starting with 'grun:', no traceback."""
    err = result.stderr.decode()
    assert result.returncode != 0, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("grun:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]
