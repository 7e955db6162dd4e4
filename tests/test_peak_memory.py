"""A job's recorded peak memory (usage `maxrss_kb`: sacct's MaxRSS, history's `max rss`, what learning is fed)
counts its processes together, as the node's memory limit does and as Slurm's MaxRSS does: the larger of
wait4's ru_maxrss (the largest single process) and the highest sum the node's sampler saw (every
monitor.SAMPLE_SECS, 1 s). Real daemons."""
from __future__ import annotations

import shlex
import sys

import pytest
from cluster import LocalCluster
from util import job_id_from_verbose

from grun.actors.monitor import SAMPLE_SECS

HOG = "x = bytearray({mb} << 20); x[::4096] = b'y' * len(x[::4096]); import time; time.sleep({secs})"


def two_hogs(mb: int, secs: float) -> list[str]:
    hog = f"{sys.executable} -c {shlex.quote(HOG.format(mb=mb, secs=secs))}"
    return ["sh", "-c", f"{hog} & {hog} & wait"]


@pytest.fixture(scope="module")
def lc():
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000, "kill_grace": 2}}) as c:
        yield c


def test_two_processes_of_60_mb_record_a_peak_of_their_sum(lc):
    secs = 4 * SAMPLE_SECS  # several samples while both hold their memory
    r = lc.grun("-v", *two_hogs(60, secs))
    assert r.returncode == 0, r.stderr
    usage = lc.client().job(job_id_from_verbose(r.stderr))["usage"]
    assert usage["maxrss_kb"] >= 110 << 10 and "maxrss_at_most" not in usage, usage
    assert "max rss 1" in lc.grun("-q", "history", "--long", "-c", "1").stdout.decode()


def test_a_job_killed_at_its_memory_limit_records_what_its_processes_held(lc):
    """-m 100 (limit 150 MB): two processes of 120 MB are killed; the record says ~240 MB, not one's 120."""
    r = lc.grun("-v", "-m", "100", *two_hogs(120, 30))
    record = lc.client().job(job_id_from_verbose(r.stderr))
    assert (record["state"], record["limit"]) == ("killed", "memory"), record
    assert record["usage"]["maxrss_kb"] > 150 << 10 and "maxrss_at_most" not in record["usage"], record["usage"]
