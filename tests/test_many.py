"""Many jobs from one `grun`: `--array IDS` (one array job, a task per task id, $GRUN_TASK_ID: more in
test_arrays.py) and `--cmds FILE` (one job per line, submitted with submit_many in batches), for scripts
that would otherwise loop over `grun --nowait` (a Python process per job). Real cluster, real files."""
from __future__ import annotations

import os

import pytest

from grun import many, verbs
from grun.core import jobs as J


def _ids(stdout: bytes) -> list[int]:
    lines = stdout.decode().splitlines()
    assert all(line.startswith("Job_ID: ") for line in lines), lines
    return [int(line.split()[1]) for line in lines]


def test_array_nowait_prints_the_array_id_and_each_task_gets_its_id(cluster, tmp_path):
    r = cluster.grun("--nowait", "--array", "1-3,7", "-o", str(tmp_path / "out.%a"),
                     "sh", "-c", "echo task $GRUN_TASK_ID", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = _ids(r.stdout)
    assert len(ids) == 1
    done = cluster.client().wait(ids)[ids[0]]
    assert done["exit"] == 0 and done["counts"] == {"done": 4}
    assert [(tmp_path / f"out.{t}").read_text() for t in (1, 2, 3, 7)] == [f"task {t}\n" for t in (1, 2, 3, 7)]


def test_array_waits_for_all_and_exits_with_the_first_failure(cluster, tmp_path):
    r = cluster.grun("--array", "1-6", "sh", "-c", "exit $((GRUN_TASK_ID == 4 ? 5 : GRUN_TASK_ID == 6 ? 9 : 0))",
                     cwd=tmp_path)
    assert r.returncode == 5
    assert r.stdout == b""
    note, err = r.stderr.decode().strip().split("\n")
    assert note == "grun: tasks' output is not shown here; give -o out.%a (and --err err.%a) to keep it"
    assert err.startswith("grun: 2 of 6 tasks failed: ") and ".4 (exit 5)" in err and ".6 (exit 9)" in err, err


def test_cmds_file_one_job_a_line_run_by_the_shell(cluster, tmp_path):
    cmds = tmp_path / "jobs.txt"
    cmds.write_text(f"# a comment\necho $GRUN_TASK_ID > {tmp_path}/a\n\n  echo two | tr a-z A-Z > {tmp_path}/b\n")
    r = cluster.grun("--cmds", str(cmds), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a").read_text() == "2\n" and (tmp_path / "b").read_text() == "TWO\n"
    r = cluster.grun("--nowait", "--cmds", "-", input=b"true\nexit 3\n", cwd=tmp_path)
    ids = _ids(r.stdout)
    assert [cluster.client().wait([i])[i]["exit"] for i in ids] == [0, 3]


@pytest.mark.parametrize("args,needle", [
    (["--array", "3-1", "true"], "bad value for --array"),
    (["--array", "1-2:0", "true"], "bad value for --array"),
    (["--array", "1,1", "true"], "given twice"),
    (["--array", "1-200000", "true"], "at most 100,000 tasks"),
    (["--array", "1-2"], "no command given"),
    (["--array", "1-2", "-j", "x", "-W", "true"], "nor -W with --array"),  # (-j alone names the array job)
    (["--cmds", os.devnull, "-j", "x"], "do not go with --cmds"),
    (["--array", "1-2", "--cmds", "f"], "give --array or --cmds, not both"),
    (["--cmds", "/nonexistent/jobs.txt"], "No such file"),
    (["--cmds", os.devnull], "no commands in"),
])
def test_bad_batch_requests_are_one_line(cluster, args, needle):
    r = cluster.grun(*args)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_an_array_is_one_spec_and_cmds_one_spec_a_line(tmp_path):
    args = verbs.parse(verbs.NAMES.get("run"), ["--array", "1-2500", "-o", "log.%a", "echo", "x"])
    spec = many.array_spec(args)
    assert spec["array"] == "1-2500" and spec["stdout_file"] == "log.%a" and spec["cmd"] == ["echo", "x"]
    (tmp_path / "cmds").write_text("".join(f"echo {i}\n" for i in range(2500)))
    specs = many.task_specs(verbs.Context(None), verbs.parse(verbs.NAMES.get("run"), ["--cmds", str(tmp_path / "cmds"),
                                                                                 "-o", "log.%a"]))
    assert len(specs) == 2500 and specs[-1]["env"]["GRUN_TASK_ID"] == "2500" and specs[-1]["stdout_file"] == "log.%a"
    assert J.out_names(dict(specs[-1], id=7))["stdout_file"] == "log.2500", "as the master's job table takes it in"
    assert specs[0]["cmd"] == ["echo 0"] and "token" not in specs[0]  # the client adds one per job


def test_a_big_cmds_file_is_submitted_in_batches(cluster, tmp_path):
    n = many.SUBMIT_BATCH + 5
    (tmp_path / "cmds").write_text("true\n" * n)
    r = cluster.grun("--nowait", "--hold", "--cmds", str(tmp_path / "cmds"), cwd=tmp_path)  # (held: 1,005 runs cost 10 s)
    assert r.returncode == 0, r.stderr
    ids = _ids(r.stdout)
    assert len(ids) == n == len(set(ids))
    firsts = [ids[0], ids[many.SUBMIT_BATCH], ids[-1]]  # of each batch: they run
    assert cluster.grun("-e", "resume", *map(str, firsts)).returncode == 0
    assert [job["exit"] for job in cluster.client().wait(firsts).values()] == [0, 0, 0]
    cluster.client().kill(ids, 9)
    cluster.client().wait(ids)
