"""What the queries show (QA findings 6, 8, 9, 13 of 2026-12-07): a node's labels and counted resources, and
`unknown` for a node not heard from since the master restarted; a job's dependencies and why it ran again; one
finished job by id (`-q history ID`), and `-q jobs ID` naming where a finished one is; `-F` on every query,
its values formatted as the tables show them, an unknown field refused with those it knows."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from cluster import LocalCluster

LABELLED = {"cpus": 2, "memory": 2000, "labels": {"os": "debian12"}, "resources": {"gpu": [0, 1], "io": 8}}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes={"n1": LABELLED, "n2": {"cpus": 1, "memory": 1000}}) as c:
        yield c


def _run(c: LocalCluster, *args: str, rc: int = 0) -> tuple[str, str]:
    r = c.grun(*args)
    assert r.returncode == rc, (args, r)
    return r.stdout.decode(), r.stderr.decode()


def test_status_shows_labels_and_counted_resources_free_of_total(cluster):
    job = cluster.client().submit(["sleep", "60"], params={"io": 3}).id
    try:
        plain = _run(cluster, "-q", "status")[0]
        assert "debian12" not in plain and "io" not in plain  # (the table stays one short line a node)
        long = _run(cluster, "-q", "status", "--long")[0]
        assert "node n1: labels os=debian12; resources(free/total) io 5/8" in long.splitlines(), long
        assert not [line for line in long.splitlines() if line.startswith("node n2:")], long
        (n1,) = [n for n in json.loads(_run(cluster, "-q", "status", "--json")[0])["nodes"] if n["name"] == "n1"]
        assert n1["labels"] == {"os": "debian12"} and n1["resources"] == {"io": [5, 8]} and n1["state"] == "up"
        rows = [line.split() for line in _run(cluster, "-q", "status", "-F", "node,state,labels,resources,cpus")[0]
                .splitlines()]
        assert rows == [["NODE", "STATE", "LABELS", "RESOURCES", "CPUS"], ["n1", "up", "os=debian12", "io=5/8", "1/2"],
                        ["n2", "up", "-", "-", "1/1"]], rows
    finally:
        cluster.client().kill([job])


def test_dependencies_in_long_and_f_and_f_values_formatted(cluster):
    first = cluster.client().submit(["sleep", "60"]).id
    then = cluster.client().submit(["echo", "a b"], afterok=[first]).id
    try:
        long = _run(cluster, "-q", "jobs", "--long", str(then))[0]
        assert f"  after     job {first} to succeed (afterok)" in long.splitlines(), long
        rows = [line.split("  ") for line in _run(cluster, "-q", "jobs", "-F", "id,after,afterok,afternotok,submit_time,cmd",
                                                  str(then))[0].splitlines()]
        cells = [cell.strip() for cell in rows[1] if cell.strip()]
        assert cells[:4] == [str(then), f"afterok:{first}", str(first), "-"], cells
        assert cells[4].startswith(time.strftime("%Y-")) and cells[5] == "echo 'a b'", cells  # (not 1796616594.5, a list)
        err = _run(cluster, "-q", "jobs", "-F", "id,colour", rc=2)[1]
        assert err.count("\n") == 1 and "no field 'colour'" in err and "submit_time" in err and "after" in err, err
        for query in ("history", "status"):
            assert "no field 'colour'" in _run(cluster, "-q", query, "-F", "colour", rc=2)[1]
    finally:
        cluster.client().kill([first, then])


def test_history_by_id_and_jobs_of_a_finished_one(cluster):
    done = cluster.client().submit(["true"])
    live = cluster.client().submit(["sleep", "60"]).id
    try:
        assert done.wait(30) == 0
        rows = [line.split() for line in _run(cluster, "-q", "history", str(done.id))[0].splitlines()]
        assert rows[0][:4] == ["ID", "USER", "STATE", "EXIT"] and [r[0] for r in rows[1:]] == [str(done.id)], rows
        out, err = _run(cluster, "-q", "history", str(done.id), "999999", str(live), rc=1)
        assert [line.split()[0] for line in out.splitlines()[1:]] == [str(done.id)]
        assert err.splitlines() == ["grun: no such job 999999",
                                    f"grun: job {live} has not finished (running): see grun -q jobs {live}"], err
        out, err = _run(cluster, "-q", "jobs", str(done.id), rc=1)
        assert out.splitlines()[1:] == [] and err == f"grun: job {done.id} has finished (done): see grun -q history {done.id}\n"
        rows = [line.split() for line in _run(cluster, "-q", "history", "-F", "id,exit,node,cmd", str(done.id))[0]
                .splitlines()]
        assert rows == [["ID", "EXIT", "NODE", "CMD"], [str(done.id), "0", rows[1][2], "true"]], rows
        assert json.loads(_run(cluster, "-q", "history", "--json", str(done.id))[0])[0]["id"] == done.id
    finally:
        cluster.client().kill([live])


def test_history_has_the_state_a_job_ended_in_and_f_and_long_agree(cluster):
    """QA 2026-12-07: `-q history` had no STATE (sacct has State): a job killed while queued showed only dashes."""
    done, held = cluster.client().submit(["true"]), cluster.client().submit(["true"], hold=True)
    assert done.wait(30) == 0
    cluster.client().kill([held.id])
    cluster.client().wait([held.id], 20)
    ids, user = [str(done.id), str(held.id)], cluster.client().job(done.id)["user"]
    rows = [line.split()[:5] for line in _run(cluster, "-q", "history", *ids)[0].splitlines()]
    assert rows == [["ID", "USER", "STATE", "EXIT", "NODE"], [ids[0], user, "done", "0", rows[1][4]],
                    [ids[1], user, "killed", "-", "-"]], rows
    rows = [line.split() for line in _run(cluster, "-q", "history", "-F", "id,state", *ids)[0].splitlines()]
    assert rows == [["ID", "STATE"], [ids[0], "done"], [ids[1], "killed"]], rows
    assert f"job {ids[1]}: killed, exit -" in _run(cluster, "-q", "history", "--long", ids[1])[0].splitlines()


def test_an_unknown_field_or_option_name_says_the_one_meant(cluster, tmp_path):
    """QA 2026-12-07: `-F stat`, `-F wal` and an option file's `cpu:` were refused without naming the one meant."""
    for args, meant in ((["jobs", "-F", "id,stat"], "'state'"), (["history", "-F", "wal"], "'wall'")):
        err = _run(cluster, "-q", *args, rc=2)[1]
        assert err.count("\n") == 1 and err.endswith(f"; did you mean {meant}?\n"), err
    (tmp_path / "opts.yaml").write_text("cpu: 2\n")
    err = _run(cluster, "-f", str(tmp_path / "opts.yaml"), "true", rc=2)[1]
    assert err == f"grun: {tmp_path}/opts.yaml: unknown option 'cpu'; did you mean 'cpus'?\n", err


def test_a_retried_job_shows_why_in_its_record(cluster):
    job = cluster.client().submit(["false"], retries=1, retry_delay=0)
    assert job.wait(60) == 1
    long = _run(cluster, "-q", "history", "--long", str(job.id))[0]
    assert "  retried   attempt 1 failed: exit 1" in long.splitlines(), long


def test_requeue_reason_and_nodes_unknown_until_heard_from_after_a_master_restart():
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000}, "n2": {"cpus": 1, "memory": 1000}},
                      master_extra={"node_timeout": 6}) as c:
        job = c.client().submit(["sleep", "3"])
        first = c.client().wait_started(job.id)["node"]
        c.kill(first)  # lost after node_timeout: re-queued, runs on the other node
        assert job.wait(60) == 0
        long = _run(c, "-q", "history", "--long", str(job.id))[0]
        assert f"  requeued  node {first} lost (silent for" in long, long
        other = ({"n1", "n2"} - {first}).pop()
        c.kill("master", signal.SIGTERM)
        c.start_master()
        c.wait_nodes([other])  # (the dead one, known from before the restart, is not down until node_timeout)
        states = dict(line.split()[:2] for line in _run(c, "-q", "status")[0].splitlines()[1:-1])
        assert states == {other: "up", first: "unknown"}, states
        sinfo = subprocess.run([sys.executable, "-c", "import sys; from grun.compat_slurm import sinfo; sys.exit(sinfo(sys.argv[1:]))",
                                "-N", "-h"], env=c.env, capture_output=True, text=True, timeout=30)
        assert f"{first} 1 grun* unk*" in [" ".join(line.split()) for line in sinfo.stdout.splitlines()], sinfo


def test_history_of_tasks_notes_a_missing_one_as_a_missing_id_and_names_each_as_asked(cluster):
    """A task `-q history` could not find (no such task, or one ended too long ago) ended the whole command with an
    error, where a missing id only got a note; and a task not begun was named by its array's id. Now each is a note
    of its own, naming the task as it was asked for and the query that shows it (a task not begun: its array's)."""
    out = _run(cluster, "--nowait", "--array", "1-3%1", "sh", "-c", '[ "$GRUN_TASK_ID" = 1 ] || sleep 60')[0]
    array = int(out.split()[-1])
    try:
        cluster.client().wait([f"{array}.1"], timeout=30)
        cluster.client().wait_started(cluster.client().job_id(f"{array}.2"))
        out, err = _run(cluster, "-q", "history", f"{array}.1", f"{array}.9", "999999", f"{array}.3", f"{array}.2", rc=1)
        assert [line.split()[0] for line in out.splitlines()[1:]] == [f"{array}.1"], out
        assert err.splitlines() == [f"grun: no such job {array}.9", "grun: no such job 999999",
                                    f"grun: job {array}.3 has not finished (queued): see grun -q jobs {array}",
                                    f"grun: job {array}.2 has not finished (running): see grun -q jobs {array}.2"], err
        out, err = _run(cluster, "-q", "jobs", f"{array}.3")  # (its array's pending row, as squeue -j 12_3 shows it)
        assert [line.split()[0] for line in out.splitlines()[1:]] == [str(array)] and not err, (out, err)
        assert _run(cluster, "-q", "jobs", f"{array}.9", rc=1) == ("", f"grun: no such job {array}.9\n")  # (was rc 0)
        plain = cluster.client().job_id(f"{array}.2")  # a running task: a job, not an array
        for form in (["-k", f"{plain}.1"], ["-e", "priority=3", f"{plain}.1"], ["--afterok", f"{plain}.1", "true"]):
            err = _run(cluster, *form, rc=1)[1]
            assert f"{plain}.1" in err and "'at'" not in err, (form, err)  # (was "error: 'at'", a KeyError)
    finally:
        cluster.client().kill([array])


def test_a_missing_id_has_no_header_an_array_id_lists_its_tasks_and_history_takes_mem(cluster):
    """QA 2026-12-07: `-q jobs ID` and `-q history ID` of a missing id printed an empty table's header before the
    error (squeue -j prints the error alone); `-q jobs ARRAY` was the array's one summary line, where squeue -j lists
    its running tasks and its pending line; `-q history -F mem` was refused, though `-q jobs -F mem` works."""
    for query in ("jobs", "history"):
        assert _run(cluster, "-q", query, "999999", rc=1) == ("", "grun: no such job 999999\n")
    array = int(_run(cluster, "--nowait", "--array", "1-3%1", "sleep", "60")[0].split()[-1])
    try:
        cluster.client().wait_started(cluster.client().job_id(f"{array}.1"))
        rows = [line.split() for line in _run(cluster, "-q", "jobs", str(array))[0].splitlines()[1:]]
        assert [row[0] for row in rows] == [str(array), f"{array}.1"], rows
        assert rows[0][2:4] == ["2", "queued"] and rows[1][2] == "running", rows
    finally:
        cluster.client().kill([array])
    done = cluster.client().submit(["true"], memory=300)
    assert done.wait(30) == 0
    out = _run(cluster, "-q", "history", "-F", "id,mem", str(done.id))[0]
    assert [line.split() for line in out.splitlines()] == [["ID", "MEM"], [str(done.id), "300"]], out


def test_status_says_what_other_programs_take_of_a_node():
    from grun.tables import status_text
    node = {"name": "n1", "up": True, "cpus": 2.0, "memory": 2000, "free_cpus": 1.0, "free_memory": 1200, "running": 0,
            "outside_cpus": 1.0, "outside_memory": 800}
    status = {"nodes": [node, {**node, "name": "n2", "free_cpus": 2.0, "outside_cpus": 0.0, "outside_memory": 0}],
              "master_spool": {"spool_free": 10, "spool_size": 20}, "warnings": []}
    lines = status_text(status, False).splitlines()
    assert lines[3:] == ["taken by other programs: n1 1 cpus, 800 MB", "master spool: 10 MB free of 20 MB"], lines
