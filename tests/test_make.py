"""`grun -M`, end to end on a real cluster: a make job runs only when its outputs are missing, empty or
older than an input; `--noexec` says why and queues nothing; a failed make job leaves FILE.failed, never a
half-written FILE; bad markers are one line and nothing queued. (The parsing rules: test_make_core.py.)"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import time

import pytest

from grun.core import jobs as J
from grun.spawner import HIDE_SECS


def _newest(cluster) -> int:
    """The newest job id the master knows (queued, running or in history): it must not move when
    a make command has nothing to run."""
    client = cluster.client()
    return max([j["id"] for j in client.jobs()] + [j["id"] for j in client.history(5)], default=0)


def _older(path, secs: float = 10) -> None:
    """Date a file back, so that what is written next is newer without sleeping."""
    t = time.time() - secs
    os.utime(path, (t, t))


def test_shell_line_runs_then_is_up_to_date_then_runs_when_the_input_is_newer(cluster, tmp_path):
    (tmp_path / "data.txt").write_text("b\na\nc\n")
    r = cluster.grun("-M", "sort %i:data.txt > sorted.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, (tmp_path / "sorted.txt").read_text()) == (b"", "a\nb\nc\n")
    newest = _newest(cluster)
    job = cluster.client().history(1)[0]
    assert job["id"] == newest and job["make"] is True
    assert (job["inputs"], job["outputs"]) == ([str(tmp_path / "data.txt")], [str(tmp_path / "sorted.txt")])
    assert job["cmd"] == ["sort data.txt > sorted.txt"]

    _older(tmp_path / "data.txt")
    r = cluster.grun("-M", "sort %i:data.txt > sorted.txt", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"grun: up to date: sorted.txt\n")
    assert _newest(cluster) == newest  # nothing queued

    (tmp_path / "data.txt").write_text("z\ny\n")  # newer than sorted.txt now
    _older(tmp_path / "sorted.txt", 20)
    r = cluster.grun("-M", "sort %i:data.txt > sorted.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sorted.txt").read_text() == "y\nz\n" and _newest(cluster) > newest


def test_missing_or_empty_output_runs(cluster, tmp_path):
    (tmp_path / "in").write_text("x\n")
    _older(tmp_path / "in")
    (tmp_path / "out").write_text("")  # empty: a run that wrote nothing is not up to date
    r = cluster.grun("-M", "--noexec", "cat %i:in > out", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"# need out: it is empty\ncat in > out\n"), r.stderr
    assert cluster.grun("-M", "cat %i:in > out", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out").read_text() == "x\n"
    assert cluster.grun("-M", "cat %i:in > out", cwd=tmp_path).stderr == b"grun: up to date: out\n"
    (tmp_path / "out").unlink()
    assert cluster.grun("-M", "cat %i:in > out", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out").read_text() == "x\n"


def test_noexec_prints_what_would_run_and_why_and_queues_nothing(cluster, tmp_path):
    (tmp_path / "data.txt").write_text("1\n")
    (tmp_path / "sorted.txt").write_text("1\n")
    _older(tmp_path / "sorted.txt")
    newest = _newest(cluster)
    for flags in (["-M", "--noexec"], ["-M", "-n"], ["-Mn"]):
        r = cluster.grun(*flags, "sort %i:data.txt > sorted.txt", cwd=tmp_path)
        assert (r.returncode, r.stderr) == (0, b""), (flags, r.stderr)
        assert r.stdout == b"# need sorted.txt: data.txt is newer\nsort data.txt > sorted.txt\n", flags
    _older(tmp_path / "data.txt", 20)
    r = cluster.grun("-M", "-n", "sort %i:data.txt > sorted.txt", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"# up to date: sorted.txt\n")
    assert (tmp_path / "sorted.txt").read_text() == "1\n" and _newest(cluster) == newest


def test_argv_with_hash_markers_as_in_the_issue(cluster, tmp_path):
    """`grun -M bwa mem ref.fa %i:r1.fq "#o:out.sam"`: the #o: word is not passed to the program."""
    (tmp_path / "ref.fa").write_text(">r\n")
    (tmp_path / "r1.fq").write_text("@q\n")
    argv = ["sh", "-c", 'echo "$@" > out.sam', "bwa", "mem", "ref.fa", "%i:r1.fq", "#o:out.sam"]
    r = cluster.grun("-M", *argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.sam").read_text() == "mem ref.fa r1.fq\n"
    job = cluster.client().history(1)[0]
    assert job["outputs"] == [str(tmp_path / "out.sam")] and job["inputs"] == [str(tmp_path / "r1.fq")]
    long = cluster.grun("-q", "history", "--long", "-c", "1").stdout.decode()
    assert f"  inputs    {tmp_path}/r1.fq" in long and f"  outputs   {tmp_path}/out.sam  (make)" in long, long
    _older(tmp_path / "r1.fq")
    r = cluster.grun("-M", *argv, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"grun: up to date: out.sam\n")


def test_an_output_the_job_did_not_write_is_said(cluster, tmp_path):
    r = cluster.grun("-M", "echo", "hi", "#o:out.txt", cwd=tmp_path)  # (#o: is removed: echo writes to stdout)
    assert (r.returncode, r.stdout) == (0, b"hi\n")
    assert r.stderr == b"grun: -M: the job did not write out.txt, an output it declares\n"
    r = cluster.grun("-M", "echo hi > %o:out.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr, (tmp_path / "out.txt").read_text()) == (0, b"", "hi\n")


def test_failed_make_job_leaves_file_failed_and_no_file(cluster, tmp_path):
    (tmp_path / "in").write_text("x\n")
    r = cluster.grun("-M", "cat %i:in > out; echo half > %o:log; exit 3", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "log").exists()
    assert (tmp_path / "out.failed").read_text() == "x\n" and (tmp_path / "log.failed").read_text() == "half\n"
    # the same command without -M keeps what it wrote
    assert cluster.grun("cat in > out; exit 3", cwd=tmp_path).returncode == 3
    assert (tmp_path / "out").read_text() == "x\n"


def test_a_failed_make_job_ends_within_hide_secs_while_its_outputs_cannot_be_renamed(cluster, tmp_path):
    """(Review: the reaper waited for the rename's child with no bound: a hung file server stalled every start and
    end on its node.) A lease on the output holds the rename's compare of it, as a hung NFS server would, for the
    kernel's lease-break-time (45 s): the job still ends, failed, within HIDE_SECS."""
    for name, text in (("out", "a\n"), ("out.failed", "b\n"), ("in", "x\n")):  # (as big: compared, so read)
        (tmp_path / name).write_text(text)
        if name != "in":
            _older(tmp_path / name)
    ignored = signal.signal(signal.SIGIO, signal.SIG_IGN)  # (a lease's holder is told of a break by SIGIO)
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        t0 = time.monotonic()
        r = cluster.grun("-M", "cat %i:in; : %o:out; exit 3", cwd=tmp_path, timeout=90)
        assert r.returncode == 3 and time.monotonic() - t0 < HIDE_SECS + 10, (r.stderr, time.monotonic() - t0)
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, ignored)


def test_a_log_the_job_appends_to_is_never_renamed(cluster, tmp_path):
    """(QA: `>> pipeline.log` was an output: each failure renamed it, the next one's .failed replaced the first.)"""
    (tmp_path / "data.txt").write_text("b\na\n")
    (tmp_path / "pipeline.log").write_text("step1\nstep2\n")
    for step, out in (("step3", "res.txt"), ("step4", "res2.txt")):
        r = cluster.grun("-M", f"echo {step} >> pipeline.log; sort %i:data.txt > %o:{out}; exit 2", cwd=tmp_path)
        assert r.returncode == 2 and (tmp_path / f"{out}.failed").read_text() == "a\nb\n", r.stderr
    assert (tmp_path / "pipeline.log").read_text() == "step1\nstep2\nstep3\nstep4\n"


def test_killed_make_job_is_renamed_and_jobs_long_shows_its_files(cluster, tmp_path):
    (tmp_path / "in").write_text("x\n")
    r = cluster.grun("-M", "--nowait", "cat %i:in > out; sleep 60", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[1])
    deadline = time.monotonic() + 20
    while not (tmp_path / "out").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    long = cluster.grun("-q", "jobs", "--long").stdout.decode()
    assert f"job {job_id}: running" in long, long
    assert f"  inputs    {tmp_path}/in" in long and f"  outputs   {tmp_path}/out  (make)" in long, long
    cluster.client().kill([job_id])
    assert cluster.client().wait([job_id])[job_id]["exit"] == 128 + 15
    assert (tmp_path / "out.failed").read_text() == "x\n" and not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as another user")
def test_failed_outputs_are_renamed_as_the_jobs_user_never_as_root(cluster):
    where = tempfile.mkdtemp(prefix="grun-make-")  # pytest's own temp root is private to root
    try:
        out = os.path.join(where, "out")
        spec = {"cmd": ["false"], "cwd": where, "uid": 65534, "gid": 65534, "outputs": [out], "make": True}
        client = cluster.client()
        for mode, renamed in ((0o755, False), (0o777, True)):  # nobody may rename in root's dir only when 777
            os.chmod(where, mode)
            with open(out, "w") as f:
                f.write("old\n")
            job = client.submit_spec(spec)
            assert client.wait([job])[job]["exit"] == 1
            assert (os.path.exists(out + ".failed"), os.path.exists(out)) == (renamed, not renamed), oct(mode)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_missing_input_with_no_producer_is_refused(cluster, tmp_path):
    newest = _newest(cluster)
    r = cluster.grun("-M", "sort %i:nothere.txt > sorted.txt", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, f"grun: no input {tmp_path}/nothere.txt\n".encode())
    assert _newest(cluster) == newest


@pytest.mark.skipif(not hasattr(J, "WAITING"), reason="needs job dependencies (the master's `waiting` state)")
def test_missing_input_produced_by_a_queued_job_waits_for_it(cluster, tmp_path):
    first = cluster.grun("-M", "--nowait", "sleep 1; echo made > %o:mid", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    r = cluster.grun("-M", "tr a-z A-Z < mid > final", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "final").read_text() == "MADE\n"


def test_a_job_making_what_a_live_job_makes_waits_for_it_then_finds_it_up_to_date(cluster, tmp_path):
    """(QA: two identical `grun --nowait -M` ran at once, both writing dup.txt.)"""
    (tmp_path / "data.txt").write_text("b\na\n")
    runs = [cluster.grun("--nowait", "-M", "sleep 1; echo ran >> runs; sort %i:data.txt > %o:dup.txt", cwd=tmp_path)
            for _ in range(2)]
    ids = [int(r.stdout.split()[1]) for r in runs]
    assert [end["exit"] for end in cluster.client().wait(ids).values()] == [0, 0]
    assert (tmp_path / "runs").read_text() == "ran\n" and (tmp_path / "dup.txt").read_text() == "a\nb\n"
    r = cluster.grun("--attach", str(ids[1]), cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"grun: up to date: dup.txt\n")


def test_a_job_whose_old_input_a_live_job_rewrites_waits_for_it_then_runs_on_the_new_one(cluster, tmp_path):
    """(As make's DAG: step 2, newer than the OLD step1, neither says "up to date" nor runs on it while step 1 is held.)"""
    for name, text, age in (("step1", "x\n", 30), ("a", "y\nx\n", 20), ("step2", "1\n", 10)):
        (tmp_path / name).write_text(text)  # a changed since step 1 made step1; step2 is newer than the old step1
        _older(tmp_path / name, age)
    first = cluster.grun("--nowait", "--hold", "-M", "sort %i:a > %o:step1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    step1 = int(first.stdout.split()[1])
    second = cluster.grun("--nowait", "-M", "wc -l < %i:step1 > %o:step2", cwd=tmp_path)
    assert (second.returncode, second.stderr) == (0, b""), "not up to date: step 1 rewrites its input"
    step2 = int(second.stdout.split()[1])
    try:
        assert cluster.client().job(step2)["state"] == "waiting" and (tmp_path / "step2").read_text() == "1\n"
        assert cluster.grun("-e", "resume", str(step1)).returncode == 0
        assert [cluster.client().wait([i], 30)[i]["exit"] for i in (step1, step2)] == [0, 0]
        assert (tmp_path / "step2").read_text() == "2\n"
    finally:
        cluster.client().kill([step1, step2])


@pytest.mark.parametrize("args,needle", [
    (["-M", "true"], "-M: the command names no input or output"),
    (["-M", "sort %i:data.txt 'x > out"], "-M: unbalanced quotes"),
    (["-M", "cat %i:"], "-M: %i: names no file"),
    (["-M", "echo > %o:adir"], "-M: output {}/adir is a directory"),
    (["-M", "#o:x"], "-M: nothing is left to run"),
    (["-M", "cat", "%!>x"], "-M: %!>FILE is a redirection"),
    (["--noexec", "true"], "--noexec goes with -M"),
    (["-M", "--array", "1-2", "echo > %o:x"], "-M does not go with --array or --cmds"),
])
def test_bad_make_commands_are_one_line_and_queue_nothing(cluster, tmp_path, args, needle):
    (tmp_path / "adir").mkdir()
    newest = _newest(cluster)
    r = cluster.grun(*args, cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and err.startswith("grun: "), err
    assert needle.format(tmp_path) in err, err
    assert _newest(cluster) == newest


def test_spec_keys_are_checked_by_the_master_core():
    spec = {"cmd": ["x"], "inputs": ["/a"], "outputs": ["/b", "/c"], "make": True}
    assert {k: J.validate_spec(spec)[k] for k in ("inputs", "outputs", "make")} == {
        "inputs": ["/a"], "outputs": ["/b", "/c"], "make": True}
    assert "make" not in J.validate_spec({"cmd": ["x"]})
    for bad in ({"inputs": "/a"}, {"outputs": ["rel"]}, {"outputs": [3]}, {"inputs": ["/a"] * (J.MAX_FILES + 1)},
                {"outputs": ["/" + "x" * J.MAX_PATH]}):
        with pytest.raises(ValueError, match="must be a list of at most"):
            J.validate_spec({"cmd": ["x"], **bad})
    if not hasattr(J, "WAITING"):  # until dependencies land, a missing input has no producer to wait for
        with pytest.raises(ValueError, match="^no input /in$"):
            J.validate_spec({"cmd": ["x"], "needs": ["/in"]})


def test_markers_in_a_sh_c_script_end_with_their_word(cluster, tmp_path):
    """`sh -c SCRIPT` is read as a shell line: `%o:s2.txt;` names s2.txt, and a failed run's output is renamed."""
    (tmp_path / "data.txt").write_text("b\na\n")
    r = cluster.grun("-M", "sh", "-c", "sort %i:data.txt > %o:s2.txt; echo done", cwd=tmp_path)
    assert (r.returncode, r.stdout, (tmp_path / "s2.txt").read_text()) == (0, b"done\n", "a\nb\n"), r.stderr
    r = cluster.grun("-M", "sh", "-c", "sort %i:data.txt > %o:s2.txt; echo done", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, b"grun: up to date: s2.txt\n")
    r = cluster.grun("-M", "-n", "sh", "-c", "echo x > %o:res4.txt; exit 3", cwd=tmp_path)
    assert r.stdout.decode().splitlines()[0] == "# need res4.txt: it does not exist", r.stdout
    assert cluster.grun("-M", "sh", "-c", "echo x > %o:res4.txt; exit 3", cwd=tmp_path).returncode == 3
    assert (tmp_path / "res4.txt.failed").read_text() == "x\n" and not (tmp_path / "res4.txt").exists()
