"""sacct and qacct -d read the whole history by their time window, not the newest 1,000 or 10,000 jobs: a job asked
as snakemake-executor-plugin-slurm polls (its name, -S, -E now, --clusters all) behind 10,001 newer ones, on a cluster
of this module's own (tests/test_compat.py's `shims`)."""
from __future__ import annotations

import time

from test_compat import shims, wait_end  # noqa: F401 (shims: a fixture)

from grun.client import job_spec


def test_sacct_and_qacct_find_a_job_of_their_window_behind_many_newer(cluster, shims, tmp_path):  # noqa: F811
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    job = int(shims("sbatch", "--parsable", "-J", "target", "--wrap", "true", cwd=tmp_path).stdout)
    ended = wait_end(cluster, job)
    assert ended["state"] == "done"
    client = cluster.client()
    for _ in range(11):  # (held, then cancelled: ended at once)
        client.kill(client.submit_many([job_spec(["true"], hold=True) for _ in range(1000)]))
    assert len(client.history(20_000)) == 11_001
    r = shims("sacct", "-X", "--parsable2", "--noheader", "--format=JobIdRaw,State", "--starttime", start,
              "--endtime", "now", "--name", "target", "--clusters", "all")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{job}|COMPLETED\n", ""), r
    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended["end_time"] + 1))
    assert shims("sacct", "-nP", "-o", "JobID", "-S", after, "--name", "target").stdout == "", "it ended before -S"
    r = shims("qacct", "-d", "1", "-j", "target")
    assert r.returncode == 0 and r.stdout.split("jobnumber")[1].split()[0] == str(job), r
