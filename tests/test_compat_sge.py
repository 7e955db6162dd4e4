"""SGE's commands (grun/compat_sge.py) as an SGE user runs them, against a real cluster: whole-word options,
-b y through the shell, qstat -j and qacct -j on ended jobs and arrays, -hold_jid's ids and names, qdel's
words, the array variables. (The first SGE tests are in tests/test_compat.py, whose `shims` this module uses.)"""
from __future__ import annotations

import time

import pytest
from test_compat import shims, wait_end  # noqa: F401 (shims: a fixture)

from grun import compat
from grun.client import current_user
from grun.compat_sge import QSUB


def test_qsub_options_are_whole_words():
    # getopt's -XV and -nP are not SGE's: -verify was read as -v erify, -hold_jid_ad as -h -o ld_jid_ad
    assert compat.parse(["-hold_jid_ad", "3", "-t", "1-2", "x.sh"], QSUB, glued=False) == (
        {"hold_jid_ad": ["3"], "array": ["1-2"]}, ["x.sh"])
    for word in ("-verify", "-binding", "-jc", "-js", "-cwdx", "-Nname"):
        with pytest.raises(compat.Refused, match=f"unsupported option {word}$"):
            compat.parse([word, "v", "x.sh"], QSUB, glued=False)
    with pytest.raises(compat.Refused, match="line 2: unsupported option -verify"):
        compat.directives("#!/bin/sh\n#$ -verify\n", "#$", QSUB, {}, glued=False)


def test_qsub_refuses_options_it_does_not_know_and_submits_nothing(cluster, shims, tmp_path):  # noqa: F811
    (tmp_path / "t.sh").write_text("#!/bin/sh\ntouch ran\n")
    before = len(cluster.client().history(1000))
    for args, option in ((["-verify", "-cwd"], "-verify"), (["-binding", "linear:1"], "-binding"),
                         (["-jc", "short"], "-jc"), (["-js", "10"], "-js")):
        r = shims("qsub", *args, "t.sh", cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"qsub: error: unsupported option {option}\n"), args
    (tmp_path / "d.sh").write_text("#!/bin/sh\n#$ -cwd\n#$ -verify\ntouch ran\n")
    r = shims("qsub", "d.sh", cwd=tmp_path)
    assert r.returncode == 1 and "line 3: unsupported option -verify" in r.stderr and not r.stdout
    for args, words in ((["-t", "1-3%2"], "-t 1-3%2: expected n[-m[:s]]"), (["-t", "0-3"], "-t 0-3"),
                        (["-hold_jid_ad", "1"], "-hold_jid_ad: this job and the jobs it names must be arrays"),
                        (["-b", "x"], "-b takes y or n, got 'x'"), (["-j", "maybe"], "-j takes y or n")):
        r = shims("qsub", *args, "t.sh", cwd=tmp_path)
        assert r.returncode == 1 and words in r.stderr and not r.stdout, (args, r.stderr)
    assert len(cluster.client().history(1000)) == before and not cluster.client().jobs()
    assert not (tmp_path / "ran").exists()


def test_qsub_binary_command_lines_go_through_the_shell_with_the_array_variables(cluster, shims, tmp_path):  # noqa: F811
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "py.txt", "-b", "y", "python3 -c 'print(42)'",
              cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "py.txt").read_text() == "42\n", r.stderr
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "t$TASK_ID.txt", "-t", "2-7:2", "-b", "y",
              "echo $SGE_TASK_ID $SGE_TASK_FIRST $SGE_TASK_LAST $SGE_TASK_STEPSIZE", "$JOB_NAME", "a  b", cwd=tmp_path)
    array = int(r.stdout.split()[2].split(".")[0])
    assert r.stdout.startswith(f'Your job-array {array}.2-6:2 ("echo") has been submitted'), r.stdout  # (SGE: 7 -> 6)
    assert [(tmp_path / f"t{t}.txt").read_text() for t in (2, 4, 6)] == [f"{t} 2 6 2 echo a  b\n" for t in (2, 4, 6)]
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "n.txt", "-shell", "n", "-b", "y",
              "echo", "$SGE_TASK_FIRST", cwd=tmp_path)  # exec'd: no shell, no expansion
    assert r.returncode == 0 and (tmp_path / "n.txt").read_text() == "$SGE_TASK_FIRST\n"
    (tmp_path / "s.sh").write_text("#!/bin/sh\necho $SGE_TASK_ID $SGE_TASK_FIRST $SGE_TASK_LAST $SGE_TASK_STEPSIZE\n")
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "s.txt", "s.sh", cwd=tmp_path)
    assert (tmp_path / "s.txt").read_text() == "undefined undefined undefined undefined\n"


def test_qstat_j_knows_only_live_jobs_and_qacct_j_an_array_by_task(cluster, shims, tmp_path):  # noqa: F811
    r = shims("qsub", "-terse", "-cwd", "-t", "1-3", "-b", "y", "sleep 1; exit $((SGE_TASK_ID - 1))", cwd=tmp_path)
    array = int(r.stdout.split(".")[0])
    assert "job_number:" in shims("qstat", "-j", str(array)).stdout  # (queued or running)
    wait_end(cluster, array)
    r = shims("qstat", "-j", str(array))  # ended: as SGE, gone (`qstat -j $id || echo done`)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"Following jobs do not exist: {array}\n")
    r = shims("qacct", "-j", str(array))
    blocks = [dict(line.split(None, 1) for line in block.strip().splitlines()) for block in r.stdout.split("=" * 62)[1:]]
    assert r.returncode == 0 and [(b["jobnumber"], b["taskid"], b["failed"], b["exit_status"]) for b in blocks] == [
        (str(array), str(t), "0", str(t - 1)) for t in (1, 2, 3)], r.stdout
    # several ids at once (one look at the history for them all): each its blocks, in the order named
    plain = int(shims("qsub", "-terse", "-cwd", "-b", "y", "true", cwd=tmp_path).stdout)
    wait_end(cluster, plain)
    r = shims("qacct", "-j", f"{plain},99999,{array}")
    blocks = [dict(line.split(None, 1) for line in block.strip().splitlines()) for block in r.stdout.split("=" * 62)[1:]]
    assert [(b["jobnumber"], b["taskid"]) for b in blocks] == [(str(plain), "undefined")] + [
        (str(array), str(t)) for t in (1, 2, 3)], r.stdout
    assert (r.returncode, r.stderr) == (1, "error: job id not found: 99999\n"), r.stderr


def test_hold_jid_of_no_job_is_no_hold_and_hold_jid_ad_waits_for_the_array(cluster, shims, tmp_path):  # noqa: F811
    # SGE: a -hold_jid naming no job (an id long gone, a name no job has) holds nothing; neither is an error
    r = shims("qsub", "-terse", "-cwd", "-hold_jid", "99999,nosuchname", "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr, r.stderr
    job = wait_end(cluster, int(r.stdout))
    assert job["state"] == "done" and not job.get("deps")
    first = shims("qsub", "-terse", "-cwd", "-t", "1-2", "-b", "y", "sleep 1; echo $SGE_TASK_ID >> order", cwd=tmp_path)
    first = int(first.stdout.split(".")[0])
    r = shims("qsub", "-terse", "-cwd", "-t", "1-2", "-hold_jid_ad", str(first), "-b", "y", "echo b >> order",
              cwd=tmp_path)
    assert r.returncode == 0 and f"each task waits for all the tasks of {first}" in r.stderr, r.stderr
    second = int(r.stdout.split(".")[0])
    r = shims("qsub", "-terse", "-t", "1-3", "-hold_jid_ad", str(first), "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 1 and "same -t range" in r.stderr and not r.stdout
    wait_end(cluster, second)
    assert sorted((tmp_path / "order").read_text().split()[:2]) == ["1", "2"]  # both of the first, then ours
    r = shims("qsub", "-l", "arch=x", "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 1 and "--" not in r.stderr and "arch" in r.stderr, r.stderr  # (no grun option named)


def test_qdel_names_jobs_and_array_tasks_as_sge_does(cluster, shims, tmp_path):  # noqa: F811
    me, client = current_user(), cluster.client()
    array = int(shims("qsub", "-terse", "-t", "1-3", "-tc", "2", "-b", "y", "sleep 30", cwd=tmp_path).stdout.split(".")[0])
    held = int(shims("qsub", "-terse", "-h", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len([j for j in client.jobs() if j.get("array") == array
                                               and j["state"] == "running"]) < 2:
        time.sleep(0.1)
    r = shims("qdel", f"{array}.2")
    assert r.stdout == f"{me} has registered the job-array task {array}.2 for deletion\n", r.stdout
    deadline = time.monotonic() + 20  # its place goes to task 3
    while time.monotonic() < deadline and not [j for j in client.jobs() if j.get("array") == array
                                               and j.get("task") == 3 and j["state"] == "running"]:
        time.sleep(0.1)
    r = shims("qdel", "-u", me)
    assert sorted(r.stdout.splitlines()) == sorted([f"{me} has registered the job-array task {array}.{t} for deletion"
                                                   for t in (1, 3)] + [f"{me} has deleted job {held}"]), r.stdout
    assert [wait_end(cluster, i)["state"] for i in (array, held)] == ["killed", "killed"]


def test_qsub_v_sets_variables_and_v_passes_ours(cluster, shims, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OURS", "ours")  # (not one grun passes by default: -V's)
    for args, seen in (([], "1 x=y \n"), (["-V"], "1 x=y ours\n")):
        r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "v.txt", "-v", "A=1,B=x=y", *args, "-b", "y",
                  'echo "$A $B $OURS"', cwd=tmp_path)
        assert r.returncode == 0 and (tmp_path / "v.txt").read_text() == seen, (args, r.stderr)
