"""A node daemon restarted over a spool of many ended jobs whose ends the master has (--nowait's and arrays' output,
kept for output_keep) serves at once: it reads them once serving, not before (11,443 took 17 s)."""

import json
import os
import shutil

from cluster import LocalCluster
from util import wait_for


def _log(c: LocalCluster) -> str:
    with open(os.path.join(c.root, "n1", "grun.log")) as f:
        return f.read()


def test_a_restarted_node_serves_before_reading_the_ended_jobs_the_master_has(tmp_path):
    with LocalCluster({"n1": {"cpus": 2, "memory": 2000, "output_keep": 3600}}, root=str(tmp_path)) as c:
        job_id = int(c.grun("--nowait", "echo", "kept").stdout.split()[-1])
        jobs = os.path.join(c.root, "n1", "node", "jobs")
        acked = os.path.join(jobs, "..", "acks.log")
        wait_for(lambda: os.path.exists(acked) and f"r {job_id} 1" in open(acked).read(), 20, what="its end acknowledged")
        c.kill("n1")
        src, acks = os.path.join(jobs, str(job_id)), []
        for i in range(100000, 102000):  # (copies of its directory: what a restart reads of an ended job)
            shutil.copytree(src, d := os.path.join(jobs, str(i)))
            with open(os.path.join(d, "job.json"), "r+") as f:
                job = dict(json.load(f), id=i)
                f.seek(0), f.truncate(), f.write(json.dumps(job))
            acks.append(f"r {i} 1\n")
        with open(acked, "a") as f:
            f.write("".join(acks))
        before = len(_log(c))
        c.start_node("n1", wait=False)
        wait_for(lambda: "ended jobs the master has from the spool, once serving" in _log(c)[before:], 60,
                 what="the ended jobs read")
        log = _log(c)[before:]
        assert "re-adopted jobs from the spool: 0 running, 2001 ended" in log, log
        assert log.index("registered with the master") < log.index("read the 2001 ended jobs"), log
        r = c.grun("--attach", str(job_id))  # (read later, its output is there as before)
        assert (r.returncode, r.stdout) == (0, b"kept\n"), r
        assert c.grun("echo", "served").stdout == b"served\n"
