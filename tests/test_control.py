"""Job control, output files, accounting and limits on real clusters (issue 4, points 7-10): kill with a
signal, by name and with --force; hold/resume queued jobs and suspend/continue running ones; edits;
unique names and -W; -f option files; -o/--err/--out-err and appends; --noio; history with usage;
live usage in -q jobs; memory limits (rlimit and the node's watchdog) and ulimits from config."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time

import psutil
import pytest
from cluster import LocalCluster
from util import (
    assert_one_error_line,
    group_alive,
    job,
    job_id_from_verbose,
    job_pid,
    nowait,
    wait_for,
    wait_state,
)

from grun.actors.node_jobs import KILL_GRACE_SECS

PY = sys.executable
NODES = {"big": {"cpus": 4, "memory": 8000},
         "mid": {"cpus": 2, "memory": 4000, "ulimit": {"cpu": 2, "fsize": "1M", "nofile": 100}},
         "small": {"cpus": 1, "memory": 2000}}


@pytest.fixture(scope="module")
def three():
    with LocalCluster(NODES) as c:
        yield c


def _free(cluster, name) -> tuple:
    node = next(n for n in cluster.client().nodes() if n["name"] == name)
    return node["free_cpus"], node["free_memory"]


def _history(cluster, *args) -> list[dict]:
    r = cluster.grun("-q", "history", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---- 7. kill, hold/resume, suspend, edit ---------------------------------------------------------

def test_kill_with_a_signal_and_by_name(three):
    a = nowait(three, "sleep", "30")
    b = nowait(three, "-j", "sleeper", "sleep", "30")
    wait_state(three, a, "running")
    wait_state(three, b, "running")
    assert three.grun("-k", "-n", "USR1", str(a)).returncode == 0
    assert three.grun("-q", "wait", str(a)).returncode == 128 + signal.SIGUSR1
    assert (job(three, a)["state"], job(three, a)["signal"]) == ("killed", signal.SIGUSR1)
    c = nowait(three, "sh", "-c", "trap 'echo USR1' USR1; while :; do sleep 0.1; done")  # (a checkpoint signal, say)
    wait_state(three, c, "running")
    assert three.grun("-k", "-n", "USR1", str(c)).returncode == 0
    time.sleep(KILL_GRACE_SECS + 1)
    assert job(three, c)["state"] == "running", "a signal that ends nothing is no kill: no KILL a grace later"
    assert three.grun("-k", str(c)).returncode == 0 and three.grun("-q", "wait", str(c)).returncode == 143
    r = three.grun("-k", "-j", "sleeper", "-n", "9")
    assert (r.returncode, r.stderr) == (0, b"")
    assert three.grun("-q", "wait", str(b)).returncode == 137
    assert_one_error_line(three.grun("-k", "-j", "sleeper"), "no job named 'sleeper'")


def test_kill_hold_and_edit_take_a_glob_of_names_in_one_call(three):
    """QA: `grun -e hold 'bulk*'` and `grun -k -j 'bulk99*'` said "no job named 'bulk*'" where SGE's shims take globs:
    a glob names every live job of ours it matches; one that matches none is an error, as an unknown name is."""
    blocker = nowait(three, "-H", "small", "sleep", "30")
    ids = {name: nowait(three, "-H", "small", "-j", name, "true") for name in ("glob-a1", "glob-a2", "glob-b1")}
    wait_state(three, blocker, "running")
    r = three.grun("-e", "hold", "glob-a*")
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert {n: job(three, i)["state"] for n, i in ids.items()} == {"glob-a1": "held", "glob-a2": "held", "glob-b1": "queued"}
    assert three.grun("-e", "priority=7", "glob-?2").returncode == 0 and job(three, ids["glob-a2"])["priority"] == 7
    assert three.grun("-e", "resume", "glob-a[12]", "glob-b1").returncode == 0
    assert {job(three, i)["state"] for i in ids.values()} == {"queued"}
    r = three.grun("-k", "-j", "glob-a*")
    assert (r.returncode, r.stderr) == (0, b"")
    assert [job(three, i)["state"] for i in ids.values()] == ["killed", "killed", "queued"]
    for args in (["-e", "hold", "nomatch*"], ["-k", "-j", "glob-a*"]):  # (ended ones match no more)
        assert_one_error_line(three.grun(*args), f"no live job's name matches '{args[-1]}'")
    three.client().kill([blocker, ids["glob-b1"]], 9)


def test_force_kill_marks_killed_when_the_node_is_unreachable(fresh_cluster):
    c = fresh_cluster
    job_id = nowait(c, "-H", "small", "sleep", "60")
    wait_state(c, job_id, "running")
    pgid = job_pid(c, job_id)
    c.kill("small")  # the node daemon dies; the job lives on
    r = c.grun("-k", "--force", str(job_id))
    assert (r.returncode, r.stderr) == (0, b"")
    record = job(c, job_id)
    assert (record["state"], record["error"]) == ("killed", "killed with --force")
    assert c.grun("-q", "wait", str(job_id)).returncode == 143
    c.start_node("small")  # back: the copy it still runs is no longer the job's, and is ended
    wait_for(lambda: not group_alive(pgid), 30, what="the stale copy to be killed")


def test_hold_and_resume_a_queued_job(three):
    blocker = nowait(three, "-H", "small", "sleep", "30")
    held = nowait(three, "-H", "small", "true")
    wait_state(three, blocker, "running")
    r = three.grun("-e", "hold", str(held))
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert job(three, held)["state"] == "held"
    assert "is held" in three.grun("why", str(held)).stdout.decode()
    three.client().kill([blocker], 9)
    later = nowait(three, "-H", "small", "true")
    assert three.grun("-q", "wait", str(later)).returncode == 0
    assert job(three, held)["state"] == "held", "a held job ran"
    assert three.grun("-e", "resume", str(held)).returncode == 0
    assert three.grun("-q", "wait", str(held)).returncode == 0
    assert job(three, held)["state"] == "done"
    r = three.grun("-e", "hold", "999999")
    assert (r.returncode, r.stderr) == (1, b"grun: no such job 999999\n")


def test_suspend_releases_cpus_not_memory_and_resume_continues(three, tmp_path):
    ticks = tmp_path / "ticks"
    code = f"import time\nwhile True:\n    open({str(ticks)!r}, 'a').write('x')\n    time.sleep(0.05)"
    job_id = nowait(three, "-H", "mid", "-c", "2", "-m", "1000", PY, "-c", code)
    try:
        wait_state(three, job_id, "running")
        pid = job_pid(three, job_id)
        wait_for(ticks.exists, 20, what="the job to tick")
        assert three.grun("-e", "hold", str(job_id)).returncode == 0
        assert job(three, job_id)["state"] == "suspended"
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        assert _free(three, "mid") == (2, 3000), "suspended: cpus released, memory kept"
        size = ticks.stat().st_size
        other = nowait(three, "-H", "mid", "-c", "2", "true")
        assert three.grun("-q", "wait", str(other)).returncode == 0, "the released cpus were not usable"
        assert ticks.stat().st_size == size, "the suspended job kept running"
        assert "suspended" in three.grun("why", str(job_id)).stdout.decode()
        assert three.grun("-e", "resume", str(job_id)).returncode == 0
        assert job(three, job_id)["state"] == "running"
        assert _free(three, "mid") == (0, 3000)
        wait_for(lambda: ticks.stat().st_size > size, 20, what="the job to tick again")
    finally:
        three.client().kill([job_id], 9)
    assert three.grun("-q", "wait", str(job_id)).returncode == 137


def test_edit_a_queued_job(three):
    blocker = nowait(three, "-H", "small", "sleep", "30")
    queued = nowait(three, "-H", "small", "-c", "1", "sleep", "0.1")
    try:
        wait_state(three, blocker, "running")
        r = three.grun("-e", "priority=50,cpus=0.5,memory=200,p.os=", str(queued))
        assert (r.returncode, r.stderr) == (0, b""), r.stderr
        record = job(three, queued)
        assert (record["priority"], record["cpus"], record["memory"], record["state"]) == (50, 0.5, 200, "queued")
        assert_one_error_line(three.grun("-e", "colour=red", str(queued)), "cannot edit 'colour'")
        assert_one_error_line(three.grun("-e", "cpus=lots", str(queued)), "cpus")
        assert_one_error_line(three.grun("-e", "cpus=64", str(queued)), "of the nodes in hosts 'small', none has 64 cpus; largest is 1")
        assert_one_error_line(three.grun("-e", "priority=1", str(blocker)), f"job {blocker} is running")
        assert three.grun("-e", "hosts=big", str(queued)).returncode == 0
        assert three.grun("-q", "wait", str(queued)).returncode == 0
        assert job(three, queued)["node"] == "big"
    finally:
        three.client().kill([blocker], 9)


# ---- 8. names, option files, output files, --noio -----------------------------------------------

def test_unique_names_and_waiting_for_the_existing_one(three):
    first = nowait(three, "-j", "build", "sh", "-c", "sleep 1.5; exit 7")
    r = three.grun("-j", "build", "true")
    assert_one_error_line(r, f"a job named 'build' already exists (job {first})")
    r = three.grun("-j", "build", "-W", "-v", "echo", "not run")
    assert (r.returncode, r.stdout) == (7, b""), r.stderr
    assert f"job {first} is named build".encode() in r.stderr
    r = three.grun("-j", "build", "-W", "echo", "ran")
    assert (r.returncode, r.stdout) == (0, b"ran\n"), "the name is free once its job has ended"
    assert_one_error_line(three.grun("-W", "true"), "-j")


def test_options_from_a_yaml_file(three, tmp_path):
    opts = tmp_path / "job.yaml"
    opts.write_text("cpus: 0.5\nmemory: 1G\npriority: 33\nname: from-file\nparam: {os: any}\n"
                    "hosts: 'b*'\ncommand: echo from file\n")
    bad = tmp_path / "bad.yaml"
    r = three.grun("-v", "-f", str(opts), "-p", "os=")
    assert_one_error_line(r, "NAME=VALUE")
    opts.write_text(opts.read_text().replace("param: {os: any}\n", ""))
    r = three.grun("-v", "-f", str(opts), "-r", "40")
    assert (r.returncode, r.stdout) == (0, b"from file\n"), r.stderr
    record = job(three, job_id_from_verbose(r.stderr))
    assert (record["cpus"], record["memory"], record["priority"], record["name"], record["node"]) == (
        0.5, 1024, 40, "from-file", "big"), "command-line options win over the file's"
    r = three.grun("-f", str(opts), "printenv", "GRUN_NODE")
    assert r.stdout == b"big\n", "a command on the command line wins over the file's"
    for text, needle in (("colour: red\n", "unknown option 'colour'"), ("cpus: [1\n", "not valid YAML"),
                         ("- a\n", "mapping"), ("cpus: lots\n", "bad value for cpus")):
        bad.write_text(text)
        assert_one_error_line(three.grun("-f", str(bad), "true"), str(bad), needle)
    assert_one_error_line(three.grun("-f", str(tmp_path / "none.yaml"), "true"), "none.yaml")


def test_output_goes_straight_to_files(three, tmp_path):
    script = "echo out; echo err >&2"
    r = three.grun("-o", "o.txt", "sh", "-c", script, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr, (tmp_path / "o.txt").read_text()) == (0, b"", b"err\n", "out\n")
    r = three.grun("--err", "e.txt", "sh", "-c", script, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr, (tmp_path / "e.txt").read_text()) == (0, b"out\n", b"", "err\n")
    r = three.grun("--out-err", str(tmp_path / "both.txt"), "sh", "-c", script)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert (tmp_path / "both.txt").read_text() == "out\nerr\n"
    for _ in range(2):
        assert three.grun("--out-append", "o.txt", "--err-append", "e.txt", "sh", "-c", script,
                          cwd=tmp_path).returncode == 0
        assert three.grun("--out-err-append", "both.txt", "sh", "-c", script, cwd=tmp_path).returncode == 0
    assert (tmp_path / "o.txt").read_text() == "out\n" * 3
    assert (tmp_path / "e.txt").read_text() == "err\n" * 3
    assert (tmp_path / "both.txt").read_text() == "out\nerr\n" * 3
    assert three.grun("-o", "o.txt", "true", cwd=tmp_path).returncode == 0
    assert (tmp_path / "o.txt").read_text() == "", "-o truncates"
    r = three.grun("-o", "/nonexistent/dir/o.txt", "echo", "x")
    assert (r.returncode, r.stderr) == (1, b"grun: cannot open /nonexistent/dir/o.txt: No such file or directory\n")
    assert_one_error_line(three.grun("-o", "a", "--out-err", "b", "true"), "two files")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as another user")
def test_output_files_are_opened_as_the_jobs_user(three):
    where = tempfile.mkdtemp(prefix="grun-out-")  # pytest's own temp root is private to root
    try:
        client = three.client()
        spec = {"cmd": ["echo", "x"], "cwd": where, "uid": 65534, "gid": 65534, "stdout_file": "o.txt"}
        os.chmod(where, 0o755)
        denied = client.submit_spec(spec)
        assert client.wait([denied])[denied]["exit"] == 1, "nobody wrote into root's directory"
        os.chmod(where, 0o777)
        ok = client.submit_spec(spec)
        assert client.wait([ok])[ok]["exit"] == 0
        path = os.path.join(where, "o.txt")
        assert os.stat(path).st_uid == 65534 and open(path).read() == "x\n"
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_noio_waits_without_streaming(three):
    r = three.grun("--noio", "-v", "sh", "-c", "echo hi; echo there >&2; exit 3")
    assert (r.returncode, r.stdout) == (3, b"")
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" queued") and " on " in lines[1], lines


# ---- 9. accounting -----------------------------------------------------------------------------

def test_history_records_usage(three, tmp_path):
    data = tmp_path / "data"
    code = (f"import os, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            f"a = b'x' * (60 << 20)\nf = open({str(data)!r}, 'wb')\nf.write(os.urandom(8 << 20))\n"
            f"f.flush(); os.fsync(f.fileno())\nraise SystemExit(2)")
    r = three.grun("-v", "-H", "big", "-m", "500", PY, "-c", code)
    assert r.returncode == 2, r.stderr
    job_id = job_id_from_verbose(r.stderr)
    record = next(j for j in _history(three, "-c", "5") if j["id"] == job_id)
    u = record["usage"]
    assert (record["node"], record["exit"], record["state"]) == ("big", 2, "failed")
    assert record["queue_wait"] == pytest.approx(record["start_time"] - record["submit_time"], abs=1e-3)
    assert 0 <= record["queue_wait"] < 30 and u["wall"] > 0.3
    assert u["utime"] + u["stime"] >= 0.25 and u["maxrss_kb"] >= 55 << 10, u
    assert u["write_bytes"] >= 8 << 20 and "read_bytes" in u, u
    assert record["limits"]["data_mb"] == 750, "a memory rlimit of -m x hard_factor"
    long = three.grun("-q", "history", "--long", "-c", "1").stdout.decode()
    assert f"job {job_id}: failed, exit 2" in long and "max rss" in long and "written 8." in long, long
    assert [j["id"] for j in _history(three, "-c", "1")] == [job_id]
    assert job_id in [j["id"] for j in _history(three, "--user", record["user"])]
    assert three.grun("-q", "history", "--user", "no-such-user").stderr == b"grun: no such user 'no-such-user'\n"
    assert [j["id"] for j in _history(three, "-g", r"process_time\(\)", "-c", "100")] == [job_id]
    table = three.grun("-q", "history", "-c", "1").stdout.decode().splitlines()
    assert table[0].split()[:9] == ["ID", "USER", "STATE", "EXIT", "NODE", "WAIT", "WALL", "CPU", "MAXRSS"]
    assert_one_error_line(three.grun("-q", "history", "-g", "("), "bad regular expression")


def test_jobs_shows_live_usage(three):
    job_id = nowait(three, "-H", "big", "-m", "500", PY, "-c", "a = b'x' * (80 << 20)\nwhile True: pass")
    try:
        wait_state(three, job_id, "running")

        def using():
            rows = three.grun("-q", "jobs").stdout.decode().splitlines()
            row = next(r.split() for r in rows[1:] if r.split()[0] == str(job_id))
            cpu, mem = row[6].rstrip("M").split("c/") if row[6] != "-" else ("0", "0")
            return row if float(cpu) > 0.05 and int(mem) >= 70 else None
        row = wait_for(using, 20, what="live usage in -q jobs")
        assert row[2:4] == ["running", "big"]
    finally:
        three.client().kill([job_id], 9)
    three.grun("-q", "wait", str(job_id))


# ---- 10. limits --------------------------------------------------------------------------------

def test_a_job_over_its_memory_rlimit_ends_outofmem(three):
    r = three.grun("-v", "-m", "100", PY, "-c", "a = b'x' * (300 << 20)")
    assert r.returncode == 1
    job_id = job_id_from_verbose(r.stderr)
    err = r.stderr.decode()
    assert "MemoryError" in err and f"grun: job {job_id} failed: out of memory" in err, err
    record = job(three, job_id)
    assert (record["state"], record["limit"]) == ("failed", "memory")
    row = next(l.split() for l in three.grun("-q", "history").stdout.decode().splitlines() if l.split()[0] == str(job_id))
    assert row[2:4] == ["failed", "OUTOFMEM"]
    r = three.grun("-m", "100", "sh", "-c", "ulimit -d")
    assert r.stdout == b"153600\n", "the data rlimit is -m 100 x hard_factor 1.5, in KB"


def test_a_job_whose_processes_together_exceed_its_memory_is_killed(three):
    hog = f"{PY} -c \"a = b'x' * (90 << 20); import time; time.sleep(60)\""
    r = three.grun("-v", "-m", "100", "sh", "-c", f"{hog} & {hog} & wait", timeout=90)
    assert r.returncode == 137, r.stderr
    job_id = job_id_from_verbose(r.stderr)
    assert f"grun: job {job_id} killed: out of memory (its processes held".encode() in r.stderr, r.stderr
    record = job(three, job_id)
    assert (record["state"], record["limit"], record["signal"]) == ("killed", "memory", 9)
    assert "limit 150 MB = -m 100 x hard_factor 1.5" in record["limit_detail"]


def test_ulimits_from_the_nodes_config(three, tmp_path):
    r = three.grun("-H", "mid", "sh", "-c", "ulimit -n; ulimit -f; ulimit -t")
    assert r.stdout == b"100\n2048\n2\n"
    r = three.grun("-v", "-H", "mid", "dd", "if=/dev/zero", f"of={tmp_path / 'f'}", "bs=1M", "count=4")
    assert r.returncode == 128 + signal.SIGXFSZ, r.stderr
    assert b"file size limit" in r.stderr
    assert job(three, job_id_from_verbose(r.stderr))["limit"] == "fsize"
    r = three.grun("-v", "-H", "mid", PY, "-c", "while True: pass", timeout=60)
    assert r.returncode == 128 + signal.SIGXCPU and b"out of cpu time" in r.stderr, r.stderr
    job_id = job_id_from_verbose(r.stderr)
    row = next(l.split() for l in three.grun("-q", "history").stdout.decode().splitlines() if l.split()[0] == str(job_id))
    assert row[3] == "CPULIMIT"


def test_hold_suspend_and_edit_survive_a_master_kill_9(fresh_cluster):
    """They are journal records applied through the one state machine, so replay restores them."""
    c = fresh_cluster
    running = nowait(c, "-H", "big", "-c", "3", "-m", "1000", "sleep", "60")
    blocker = nowait(c, "-H", "small", "sleep", "60")
    held = nowait(c, "-H", "small", "true")
    edited = nowait(c, "-H", "small", "true")
    try:
        wait_state(c, running, "running")
        wait_state(c, blocker, "running")
        assert c.grun("-e", "hold", str(running), str(held)).returncode == 0
        assert c.grun("-e", "priority=7,memory=300", str(edited)).returncode == 0
        c.kill("master")
        c.start_master()
        c.wait_nodes(["big", "small"])
        assert [job(c, i)["state"] for i in (running, held)] == ["suspended", "held"]
        assert (job(c, edited)["priority"], job(c, edited)["memory"]) == (7, 300)
        assert _free(c, "big") == (4, 7000), "after replay the suspended job still holds memory, not cpus"
        assert c.grun("-e", "resume", str(running)).returncode == 0
        assert psutil.Process(job_pid(c, running)).status() != psutil.STATUS_STOPPED
    finally:
        c.client().kill([running, blocker, held, edited], 9)


@pytest.mark.parametrize("args,needle", [
    (["-p", "gpu", "true"], "NAME=VALUE"),
    (["-p", "=1", "true"], "bad resource name"),
    (["-p", "bad name=1", "true"], "bad resource name"),
    (["-e"], "-e needs"),
    (["-e", "hold"], "needs job ids"),
    (["-e", "priority=1"], "needs job ids"),
    (["-e", "priority"], "KEY=VALUE"),
    (["-j", "", "true"], "-j"),
    (["-q", "why"], "needs job ids"),
    (["-q", "why", "1", "2"], "one job id"),
    (["-q", "history", "--long", "--bogus"], "--bogus"),
    (["-k", "--force"], "needs job ids"),
])
def test_usage_errors_of_the_new_options(three, args, needle):
    r = three.grun(*args)
    assert_one_error_line(r, needle)
    assert r.returncode == 2 and r.stdout == b""
