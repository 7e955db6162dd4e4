"""squeue's reason for a job queued with --force that no node up can run, alone in the queue: Slurm's
(ReqNodeNotAvail) for a host, resource or mount none has, (Resources) for more cpus or memory than any has;
never (Priority), which says that other jobs go first. Real daemons."""
from __future__ import annotations

import subprocess
import sys

import pytest
from cluster import LocalCluster
from util import nowait

SQUEUE = "import sys; sys.argv[0] = 'squeue'; from grun.compat import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def lc():
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000}}) as c:
        yield c


@pytest.mark.parametrize("request_, reason", [(["-H", "nosuch"], "ReqNodeNotAvail"), (["-p", "gpu=1"], "ReqNodeNotAvail"),
                                              (["-c", "64"], "Resources")])
def test_a_forced_job_no_node_can_run_is_not_said_to_wait_for_priority(lc, request_, reason):
    job_id = nowait(lc, "--force", *request_, "true")
    try:
        r = subprocess.run([sys.executable, "-c", SQUEUE, "-h", "-o", "%i %R"], env=lc.env, capture_output=True,
                           text=True, timeout=60)
        assert r.stdout == f"{job_id} ({reason})\n", r
    finally:
        lc.client().kill([job_id], 9)
