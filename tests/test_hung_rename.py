"""A failed -M job whose reaper died, its outputs on a hung file server (a stopped sshfs): the node renames them
in a child, waited for at most HIDE_SECS, in a thread of its own: the next job's start does not wait for it, the
job's end is reported after HIDE_SECS, and the child is collected once the server answers (no zombie)."""
from __future__ import annotations

import signal
import time

import psutil
from test_mounts import sshfs  # noqa: F401  (the fixture: a private sshd, an sshfs mount, nodes a and b)
from util import wait_for

from grun import spawner


def test_a_hung_rename_of_a_dead_reaper_s_job_holds_up_no_job_start(sshfs, tmp_path):  # noqa: F811
    cluster, client = sshfs.cluster, sshfs.cluster.client()
    there, here = sshfs.mnt / "proj" / "hung", sshfs.export / "proj" / "hung"
    here.mkdir()
    gate = tmp_path / "gate"
    assert cluster.grun("-H", "a", "true").returncode == 0
    job_id = client.submit_spec({"cmd": [f"echo half > '{there}/out'; while [ ! -e {gate} ]; do sleep 0.05; done; exit 3"],
                                 "shell": True, "cwd": str(tmp_path), "make": True, "outputs": [f"{there}/out"],
                                 "host": "a", "uid": 0, "gid": 0})
    wait_for(lambda: (here / "out").exists(), 10, what="the job's output")
    node = psutil.Process(cluster.procs["a"].pid)
    (reaper,) = [p for p in node.children() if "grun.spawner" in " ".join(p.cmdline())]
    reaper.kill()
    sshfs.sshfs.send_signal(signal.SIGSTOP)
    try:
        gate.touch()
        time.sleep(2)  # its end seen (the sampler, each second): the rename is stuck
        t0 = time.monotonic()
        assert cluster.grun("-H", "a", "true").returncode == 0
        assert time.monotonic() - t0 < 2.5  # (it waited for the rename's HIDE_SECS)
        done = client.wait([job_id], spawner.HIDE_SECS + 10)[job_id]
        assert (done["state"], done["exit"]) == ("failed", 3), done
    finally:
        sshfs.sshfs.send_signal(signal.SIGCONT)
    wait_for(lambda: (here / "out.failed").exists(), 10, what="the rename, once the server answers")
    wait_for(lambda: not [p for p in node.children() if p.status() == psutil.STATUS_ZOMBIE], 10,
             what="the rename's child to be collected")
