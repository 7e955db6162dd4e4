"""Placement and the queue on a real cluster (issue 2, points 3 and 5): a job goes to a node with
enough free cpus and memory; when none has room it waits, in order, silently unless -v."""
from __future__ import annotations

import itertools

from util import (
    job,
    job_id_from_verbose,
    nothing_to_read,
    nowait,
    read_line,
    wait_for,
    wait_state,
)


def _states(cluster, ids):
    client = cluster.client()
    return [client.job(i)["state"] for i in ids]


def test_second_job_on_the_one_cpu_node_waits_for_the_first(cluster):
    first = nowait(cluster, "-c", "1", "-H", "small", "sleep", "1")
    second = nowait(cluster, "-c", "1", "-H", "small", "true")
    wait_state(cluster, first, "running")
    assert job(cluster, second)["state"] == "queued"
    rows = {line.split()[0]: line.split() for line in cluster.grun("-q", "jobs").stdout.decode().splitlines()}
    assert rows[str(first)][2:4] == ["running", "small"]
    assert rows[str(second)][2:4] == ["queued", "-"]
    assert cluster.grun("-q", "wait", str(second)).returncode == 0
    a, b = job(cluster, first), job(cluster, second)
    assert (a["node"], b["node"]) == ("small", "small")
    assert b["dispatch_time"] >= a["end_time"], "the second job started before the first had ended"


def test_a_job_needing_4_cpus_or_3_gb_only_goes_to_big(cluster):
    for args in (["-c", "4"], ["-c", "2"], ["-m", "3000"], ["-c", "1", "-m", "3G"]) * 2:
        r = cluster.grun("-v", *args, "printenv", "GRUN_NODE")
        assert (r.returncode, r.stdout) == (0, b"big\n"), (args, r.stderr)


def test_hosts_pattern(cluster):
    for pattern, node in (("small", "small"), ("b*", "big"), ("nope,big", "big")):
        r = cluster.grun("-H", pattern, "printenv", "GRUN_NODE")
        assert (r.returncode, r.stdout) == (0, f"{node}\n".encode()), pattern


def test_full_cluster_queues_fifo_silently_and_runs_jobs_as_room_frees(cluster):
    client = cluster.client()
    big = nowait(cluster, "-c", "4", "-H", "big", "sleep", "60")
    small = nowait(cluster, "-c", "1", "-H", "small", "sleep", "60")
    procs = []
    try:
        wait_state(cluster, big, "running")
        wait_state(cluster, small, "running")
        status = {l.split()[0]: l.split() for l in cluster.grun("-q", "status").stdout.decode().splitlines()}
        assert status["big"][2] == "0/4" and status["small"][2] == "0/1"
        queued = [nowait(cluster, "-c", "1", "sleep", "0.2") for _ in range(3)]
        quiet = cluster.popen("echo", "quiet")
        procs.append(quiet)
        wait_for(lambda: len(client.jobs()) == 6, 20, what="the quiet client's job to be queued")
        verbose = cluster.popen("-v", "echo", "verbose")
        procs.append(verbose)
        wait_for(lambda: len(client.jobs()) == 7, 20, what="the verbose client's job to be queued")
        assert read_line(verbose.stderr, 10).endswith(b" queued\n")
        ids = sorted(j["id"] for j in client.jobs() if j["state"] == "queued")
        assert len(ids) == 5 and ids[:3] == queued[:3]
        # while they wait: the quiet client prints nothing at all, the verbose one only its "queued" line
        assert nothing_to_read(quiet.stdout, 0.5) and nothing_to_read(quiet.stderr, 0)
        assert nothing_to_read(verbose.stdout, 0) and nothing_to_read(verbose.stderr, 0)
        assert _states(cluster, ids) == ["queued"] * 5

        assert cluster.grun("-k", str(small)).returncode == 0  # room for one job, on small
        out, err = quiet.communicate(timeout=30)
        assert (quiet.returncode, out, err) == (0, b"quiet\n", b"")
        out, err = verbose.communicate(timeout=30)
        assert (verbose.returncode, out) == (0, b"verbose\n")
        assert err.endswith(b" running on small\n") and job_id_from_verbose(err) == ids[4]
        records = [job(cluster, i) for i in ids]
        assert [r["state"] for r in records] == ["done"] * 5
        assert [r["node"] for r in records] == ["small"] * 5, "a job ran on the full node"
        for before, after in itertools.pairwise(records):
            assert after["dispatch_time"] >= before["end_time"], f"job {after['id']} overtook {before['id']}"
        assert job(cluster, big)["state"] == "running"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        client.kill([big, small], 9)
    wait_state(cluster, big, "killed")
