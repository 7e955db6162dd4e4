"""Limits (issue 11, points 1, 3 and 4): no memory limit nobody asked for (a job without -m has a
reservation, and is killed only when the node itself runs short, the job furthest over its reservation
first), the wall-time limit (-t, Slurm's forms; TERM, KILL after kill_grace, the `timeout` state), and
the line the submitter reads when a limit ends its job. Real daemons; the parser and the choice of the
job to kill are pure and tested here too."""
from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from cluster import LocalCluster, account
from test_personal import personal_elsewhere  # noqa: F401  (the fixture: a personal cluster with no config)
from util import job_id_from_verbose, nowait, wait_for

from grun import values
from grun.actors.monitor import node_memory_victim, over_memory_limit
from grun.core import edits as E
from grun.core import jobs as J
from grun.core.master_state import SETTINGS
from grun.limits import describe, job_limits
from grun.options import UsageError, parse
from grun.tables import fmt_secs, fmt_span

PY = "python3"
HOG = "x = bytearray({mb} << 20); x[::4096] = b'y' * len(x[::4096]); import time; time.sleep({secs})"


# ---- pure: the parser, the limits a job gets, the victim, the messages ------------------------

@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("1.5", 90), ("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400), ("1d", 86400),
    ("10:30", 630), ("0:45", 45), ("1:02:03", 3723), ("1-2", 93600), ("1-2:30", 95400), ("1-2:30:15", 95415),
    ("0", 0), ("0:00", 0), ("UNLIMITED", 0)])  # 0: no limit, as Slurm's
def test_time_limits_in_slurms_forms_and_ours(text, seconds):
    assert values.parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "-5", "", "1-", "2y", "400d", "1h 30"])
def test_a_bad_time_limit_is_one_usage_line(text):
    with pytest.raises(ValueError, match="expected a time limit"):
        values.parse_time_limit(text)
    with pytest.raises(UsageError, match="^bad value for -t: expected a time limit") as e:
        parse(["-t", text, "true"], ("time",), "grun")
    assert "\n" not in str(e.value)


def test_a_job_without_m_gets_a_reservation_and_no_memory_limit():
    free = J.validate_spec({"cmd": ["x"]}, default_memory=100)
    asked = J.validate_spec({"cmd": ["x"], "memory": 100, "time": 60})
    assert free["memory"] == 100 and "memory_set" not in free and "time" not in free
    assert job_limits(free, 1.5, {"nofile": 64}) == {"nofile": 64}, "no RLIMIT_DATA, no sampler limit"
    assert job_limits(asked, 1.5, None) == {"memory_mb": 150, "data_mb": 150, "time": 60,
                                          "memory_basis": "-m 100 x hard_factor 1.5"}
    assert "time" not in J.validate_spec({"cmd": ["x"], "time": 0}), "-t 0: no limit, as Slurm's"
    # an edit keeps "not asked" unless memory is what it changes
    assert not E.edited(free, J.parse_edit({"priority": 3}), SETTINGS).get("memory_set")
    assert E.edited(free, J.parse_edit({"m": "1G"}), SETTINGS)["memory_set"]
    assert E.edited(free, J.parse_edit({"t": "2h"}), SETTINGS)["time"] == 7200


def test_the_memory_kills_decide_by_limit_and_by_reservation():
    limits = job_limits({"memory": 100, "memory_set": True}, 1.5, None)
    assert over_memory_limit(160, limits).endswith("limit 150 MB = -m 100 x hard_factor 1.5")
    assert over_memory_limit(140, limits) is None
    assert over_memory_limit(9000, job_limits({"memory": 100}, 1.5, None)) is None, "no -m: no limit"
    jobs = {1: (2150, 100), 2: (900, 1000), 3: (1900, 1000)}  # rss, reservation
    assert node_memory_victim(jobs, available_mb=2000, min_free_mb=1000) is None, "the node has enough"
    victim, why = node_memory_victim(jobs, available_mb=500, min_free_mb=1000)
    assert victim == 1 and "this job used 2.1G, 21.5x its reservation of 100M" in why, why
    assert node_memory_victim({2: (900, 1000)}, 500, 1000) is None, "a job within its reservation is kept"


def test_the_line_a_submitter_reads():
    timeout = {"limit": "time", "signal": 15, "limits": {"time": 1800}, "usage": {"wall": 1800.4}}
    assert describe(timeout, 12) == "job 12 ran out of its time limit of 30m (used 30m); pass -t with more"
    oom = {"limit": "memory", "signal": 9, "limit_detail": "its processes held 160 MB"}
    assert describe(oom, 3) == "job 3 killed: out of memory (its processes held 160 MB); pass -m with what it needs"
    assert (J.exit_code_of(timeout), J.describe_exit(timeout)) == (124, "TIMEOUT")
    assert [fmt_span(s) for s in (45, 90, 5400, 93600, None)] == ["45s", "1m30s", "1h30m", "1d2h", "-"]
    # elapsed times as Slurm shows them: a day and more as D-HH:MM:SS
    assert [fmt_secs(s) for s in (5, 65, 3700, 90000, None)] == ["5.00s", "1:05", "1:01:40", "1-01:00:00", "-"]


# ---- real daemons ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lc():
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000, "kill_grace": 2}}) as c:
        yield c


def _record(c: LocalCluster, job_id: int) -> dict:
    return c.client().job(job_id)


def test_a_300mb_job_without_m_runs_on_a_fresh_personal_cluster(personal_elsewhere):  # noqa: F811
    grun, _state, _seen = personal_elsewhere
    r = grun(PY, "-c", "x = bytearray(300*1024*1024)")
    assert r.returncode == 0, r.stderr
    r = grun("sh", "-c", "ulimit -d")
    assert r.stdout == b"unlimited\n", "no data rlimit for a job that did not ask for memory"


def test_a_job_without_m_has_no_memory_limit_and_with_m_still_has_one(lc):
    r = lc.grun("-v", PY, "-c", HOG.format(mb=400, secs=2))
    assert r.returncode == 0, r.stderr
    record = _record(lc, job_id_from_verbose(r.stderr))
    assert (record["state"], record["memory"]) == ("done", 100) and "memory_mb" not in record["limits"], record
    r = lc.grun("-v", "-m", "100", PY, "-c", "a = b'x' * (300 << 20)")
    job_id = job_id_from_verbose(r.stderr)
    assert r.returncode == 1 and f"grun: job {job_id} failed: out of memory".encode() in r.stderr, r.stderr
    assert b"; pass -m with what it needs\n" in r.stderr
    assert (_record(lc, job_id)["state"], _record(lc, job_id)["limit"]) == ("failed", "memory")


@pytest.mark.parametrize("how", ["--out-err", "-o/--err", "sbatch"])
def test_a_memory_error_is_found_in_stderr_joined_to_stdout(lc, tmp_path, how):
    """(QA: under sbatch, whose -o takes stderr too, a job dying of MemoryError was FAILED, no memory reason: it was
    looked for in the job's stderr spool only.) grun's own forms of one file, and the shim's (its script's exec 2>&1)."""
    oom = [PY, "-c", "print('start', flush=True); a = b'x' * (300 << 20)"]
    if how == "sbatch":
        shim = "import sys; sys.argv[0] = 'sbatch'; from grun.compat import main; sys.exit(main())"
        r = subprocess.run([sys.executable, "-c", shim, "--parsable", "--wait", "--mem=100", "-o", "log", "--wrap",
                            shlex.join(oom)], env=lc.env, cwd=tmp_path, capture_output=True, timeout=60)
        job_id = int(r.stdout.split()[0])
    else:
        files = ["--out-err", "log"] if how == "--out-err" else ["-o", "log", "--err", "log"]
        r = lc.grun("--nowait", "-m", "100", *files, *oom, cwd=tmp_path)
        job_id = int(r.stdout.split()[-1])
    record = lc.client().wait([job_id], 30)[job_id]
    log = (tmp_path / "log").read_text()
    assert (record["state"], record.get("limit")) == ("failed", "memory"), record
    assert "MemoryError" in log and f"grun: job {job_id} failed: out of memory" in log, log  # (said there, as Slurm does)


def test_when_the_node_runs_short_the_job_furthest_over_its_reservation_goes(tmp_path):
    """min_free_memory set just below what is available now: a job holding 1000 MB on a reservation
    of 100 takes the node under it and is killed; one within its reservation runs on."""
    min_free = psutil.virtual_memory().available // 2**20 - 400
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000, "min_free_memory": min_free}}) as c:
        calm = nowait(c, "-m", "200", "sleep", "30")
        r = c.grun("-v", PY, "-c", HOG.format(mb=1000, secs=30), timeout=60)
        job_id = job_id_from_verbose(r.stderr)
        assert r.returncode == 137, r.stderr
        line = r.stderr.decode().splitlines()[-1]
        assert line.startswith(f"grun: job {job_id} killed: out of memory (the node was out of memory (") and \
            "x its reservation of 100M); pass -m with what it needs" in line, line
        record = _record(c, job_id)
        assert (record["state"], record["limit"], record["signal"]) == ("killed", "memory", 9)
        assert _record(c, calm)["state"] == "running"
        c.client().kill([calm], 9)
        assert "OUTOFMEM" in c.grun("-q", "history").stdout.decode()


def test_a_job_at_its_time_limit_gets_term_and_ends_as_timeout(lc):
    started = time.monotonic()
    r = lc.grun("-v", "-t", "2s", "sleep", "30")
    took = time.monotonic() - started
    job_id = job_id_from_verbose(r.stderr)
    assert r.returncode == J.EXIT_TIMEOUT, r.stderr
    line = r.stderr.decode().splitlines()[-1]
    assert re.fullmatch(f"grun: job {job_id} ran out of its time limit of 2s \\(used [23]s\\); pass -t with more", line), line
    assert r.stderr.count(b"ran out") == 1, "the job's stderr says it (its node's line), and grun does not again"
    assert 2 <= took < 10
    record = _record(lc, job_id)
    assert (record["state"], record["exit"], record["limit"], record["signal"]) == ("timeout", 124, "time", 15)
    assert "TERM, then KILL after 2 s" in record["limit_detail"]
    row = next(l.split() for l in lc.grun("-q", "history").stdout.decode().splitlines() if l.split()[0] == str(job_id))
    assert row[2:4] == ["timeout", "TIMEOUT"]
    assert "time limit 2s" in lc.grun("-q", "history", "--long", "-c", "1").stdout.decode()
    err, said, job_id = [], [], nowait(lc, "-t", "1s", "sleep", "30")  # (its stderr stream, as a client reads it)
    lc.client().follow(job_id, stdout_fd=lambda data: None, stderr_fd=err.append, on_limit=said.append)
    assert b"".join(err).startswith(f"grun: job {job_id} ran out of its time limit of 1s".encode()) and not said, said


def test_time_signal_comes_secs_before_the_limit_and_the_kill_is_said_in_the_err_file(lc, tmp_path):
    """--time-signal (sbatch --signal): the job's session gets SIG that long before -t; none without -t. At the kill its
    --err file gets the node's line (it was in `grun -q history --long` only)."""
    trap = "s=$(date +%s); trap 'echo warned after $(($(date +%s) - s)) s' USR1; sleep 30 & wait; sleep 30 & wait"
    r = lc.grun("-v", "-t", "4s", "--time-signal", "USR1@2", "--err", str(tmp_path / "e"), "sh", "-c", trap)
    job_id = job_id_from_verbose(r.stderr)
    assert r.returncode == 124 and re.fullmatch(rb"warned after [123] s\n", r.stdout), (r.stdout, r.stderr)
    told = (tmp_path / "e").read_text()
    assert re.fullmatch(f"grun: job {job_id} ran out of its time limit of 4s \\(used [45]s\\); pass -t with more\n", told)
    assert r.stderr.decode().splitlines()[-1] == told.strip()  # (not in the stream: grun says it too)
    r = lc.grun("--time-signal", "USR1@100", "sh", "-c", trap.replace("sleep 30", "sleep 1"))
    assert (r.returncode, r.stdout) == (0, b""), r.stderr
    r = lc.grun("--time-signal", "B:NOPE@3", "true")
    assert r.returncode == 2 and r.stderr == b"grun: bad value for --time-signal: unknown signal 'NOPE'\n", r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user")
def test_the_limit_line_is_written_as_the_jobs_user(lc):
    """The reaper (root) opens the job's stderr file as its user: a link the job put where its fd 2 was (deleted)
    to a file it may not write is not written through."""
    name = f"grunl{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    try:
        with tempfile.TemporaryDirectory(prefix="grun-test-") as work:  # (pytest's tmp_path: under a 0700 dir)
            os.chmod(work, 0o777)
            target, user = os.path.join(work, "roots"), pwd.getpwnam(name)
            with open(target, "w") as f:
                f.write("root's\n")
            job_id = lc.client().submit_spec({"cmd": [f"rm e; ln -s {target} 'e (deleted)'; sleep 30"], "shell": True,
                                              "cwd": work, "uid": user.pw_uid, "gid": user.pw_gid, "user": name,
                                              "time": 1, "stderr_file": "e"})
            done = lc.client().wait([job_id], 30)[job_id]
            assert done["state"] == "timeout", (done.get("error"), done.get("exit"))
            assert open(target).read() == "root's\n" and os.path.islink(os.path.join(work, "e (deleted)"))
    finally:
        account("userdel", name, check=False)


def test_a_job_that_ignores_term_is_killed_after_kill_grace(lc):
    r = lc.grun("-v", "-t", "1s", "sh", "-c", "trap '' TERM; sleep 30")
    job_id = job_id_from_verbose(r.stderr)
    record = _record(lc, job_id)
    assert (r.returncode, record["state"], record["signal"]) == (124, "timeout", 9), r.stderr
    assert 2.5 < record["usage"]["wall"] < 8, record["usage"]  # 1 s, then kill_grace: 2 s


def test_the_time_limit_holds_with_the_master_and_the_client_gone_and_the_node_restarted():
    with LocalCluster({"n1": {"cpus": 1, "memory": 2000, "kill_grace": 1}}) as c:
        job_id = nowait(c, "-t", "3s", "sleep", "60")
        wait_for(lambda: c.client().job(job_id)["state"] == "running", 20, what="the job to run")
        c.kill("master")
        c.kill("n1")  # (its reaper and the job run on)
        time.sleep(1)
        c.start_node("n1", wait=False)  # it re-adopts the job, and its clock
        status = os.path.join(c.root, "n1", "node", "jobs", str(job_id), "status.json")
        wait_for(lambda: os.path.exists(status), 20, what="the job's end on its node")
        c.start_master()
        done = c.client().wait([job_id], 30)[job_id]
        assert (done["state"], done["exit"], done["limit"]) == ("timeout", 124, "time"), done
        assert done["usage"]["wall"] < 10, done["usage"]


def test_a_queued_jobs_time_limit_shows_and_can_be_edited(lc):
    job_id = nowait(lc, "--force", "-c", "64", "-t", "1:00:00", "sleep", "30")  # (queued: no node has 64 cpus)

    def time_shown():
        header, *rows = lc.grun("-q", "jobs").stdout.decode().splitlines()
        return next(r.split() for r in rows if r.split()[0] == str(job_id))[header.split().index("TIME")]
    assert time_shown() == "1h"
    r = lc.grun("-e", "time=nonsense", str(job_id))
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and b"time limit" in r.stderr, r.stderr
    assert lc.grun("-e", "t=2s,c=1", str(job_id)).returncode == 0
    assert time_shown() == "2s"
    done = lc.client().wait([job_id], 30)[job_id]
    assert (done["state"], done["exit"]) == ("timeout", 124), done


def test_bad_time_values_queue_nothing(lc):
    before = json.dumps(lc.client().jobs())
    r = lc.grun("-t", "soon", "true")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and b"-t" in r.stderr, r.stderr
    assert json.dumps(lc.client().jobs()) == before
