"""A job's input that nobody feeds (QA finding of 2026-12-08): a run of a job reading `< FILE` re-queued after its node
was lost, its grun killed, waited for its input for ever, holding its cpus. Its node now ends that input (EOF) input_wait
after the run starts, as a Slurm batch step's /dev/null, and `grun --attach` says so; a grun feeding its job is never cut."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from cluster import LocalCluster
from util import job_id_from_verbose, read_line, wait_state

NODE = {"cpus": 2, "memory": 2000, "heartbeat": 0.5, "input_wait": 2}


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(nodes={"n1": NODE, "n2": NODE}, master_extra={"node_timeout": 3}).start()
    yield c
    c.stop()


def test_a_grun_feeding_its_job_slowly_is_never_cut(cluster):
    r, w = os.pipe()
    client = cluster.popen("wc", "-c", stdin=r)
    os.close(r)

    def feed():  # 4 s of input, twice input_wait
        with open(w, "wb", buffering=0) as pipe:
            for _ in range(8):
                pipe.write(b"x" * 1000)
                time.sleep(0.5)
    threading.Thread(target=feed, daemon=True).start()
    out, err = client.communicate(timeout=60)
    assert (client.returncode, out.split()) == (0, [b"8000"]), err
    assert b"input had already been ended" not in err


def test_a_rerun_nobody_feeds_gets_the_end_of_its_input_and_attach_says_so(cluster, tmp_path):
    (given := tmp_path / "in").write_text("data\n")
    with open(given, "rb") as f:
        client = cluster.popen("-v", "-H", "n1,n2", "sh", "-c", "sleep 3; cat; echo END", stdin=f)
    assert read_line(client.stderr, 20).endswith(b" queued\n")
    jid = job_id_from_verbose(read_line(client.stderr, 20))
    node = wait_state(cluster, jid, "running")["node"]
    cluster.procs[node].send_signal(signal.SIGSTOP)  # silent: lost after node_timeout, its job re-queued
    client.kill()  # nobody follows the next run
    client.communicate()
    try:
        record = wait_state(cluster, jid, "done", timeout=40)  # (without the end of its input: running for ever)
    finally:
        cluster.procs[node].send_signal(signal.SIGCONT)
    assert record["node"] != node, record
    r = cluster.grun("--attach", str(jid))
    assert (r.returncode, r.stdout) == (0, b"END\n"), r.stderr
    assert b"its input had already been ended: no grun fed it within 2 s of its start" in r.stderr, r.stderr
