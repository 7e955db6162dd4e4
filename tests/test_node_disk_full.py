"""A node whose spool disk is full (QA): like spool_max, the job waits in its write and goes on once there is
space (a reader's punched bytes, or a grown disk), with one line in the node's log, never a traceback; and a
job that ends meanwhile still ends, as what it was (killed), its lost output said, its status.json written
once space returns. Real daemons, the node's spool on a real 3 MB tmpfs (root only)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from cluster import LocalCluster
from util import nowait, wait_for, wait_state

from grun import registry
from grun.spool import DISK_RETRY_SECS, STATUS, create, read_pid
from grun.spool import read as read_spool

LINES = 1_000_000                              # `seq 1 LINES`: 6.9 MB, twice the disk
EXPECTED = b"".join(b"%d\n" % i for i in range(1, LINES + 1))


@pytest.fixture
def c():
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs: root only")
    root = tempfile.mkdtemp(prefix="grun-disk-")
    spool = os.path.join(root, "n4", "node")  # the node's spool (its log stays outside, in n4/)
    os.makedirs(spool)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", spool], capture_output=True).returncode:
        shutil.rmtree(root)
        pytest.skip("cannot mount a tmpfs here")
    cluster = LocalCluster(nodes={"n4": {"cpus": 2, "memory": 2000, "heartbeat": 0.5}}, root=root,
                           master_extra={"min_free_disk": 0})  # (else the master places nothing on 3 MB)
    cluster.spool = spool
    try:
        with cluster:
            yield cluster
    finally:  # room for a reaper still retrying a status, then the mount goes, whatever happened
        subprocess.run(["mount", "-o", "remount,size=64m", spool], capture_output=True)
        subprocess.run(["umount", "-l", spool], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _log(c) -> str:
    with open(os.path.join(c.root, "n4", "grun.log")) as f:
        return f.read()


def _wait_disk_full(c) -> None:
    def full():
        st = os.statvfs(c.spool)
        return st.f_bavail * st.f_frsize < 64 << 10
    wait_for(full, 30, what="the job to fill the spool disk")
    wait_for(lambda: "the spool disk is full" in _log(c), 10, what="the node to say its spool disk is full")


def _grow(c) -> None:
    subprocess.run(["mount", "-o", "remount,size=20m", c.spool], check=True)


def test_an_attached_reader_gets_every_byte_through_a_full_spool_disk(c):
    job_id = nowait(c, "-H", "n4", "seq", "1", str(LINES))
    _wait_disk_full(c)
    assert wait_state(c, job_id, "running")  # waiting in its write
    r = c.grun("--attach", str(job_id), timeout=60)  # what it was sent is punched out: room for the rest
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED
    log = _log(c)
    stalls, resumes = log.count("the spool disk is full"), log.count("its output flows again")
    assert 1 <= stalls <= resumes + 1 and "Traceback" not in log, log  # one line a stall, not one a 2 s retry


def test_a_stalled_job_goes_on_when_space_returns_and_nothing_is_lost(c):
    job_id = nowait(c, "-H", "n4", "seq", "1", str(LINES))
    _wait_disk_full(c)
    _grow(c)
    wait_state(c, job_id, "done", timeout=30)
    r = c.grun("--attach", str(job_id), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED  # the bytes a full disk refused stayed in the pipe
    assert "output flows again" in _log(c) and "Traceback" not in _log(c)


def test_a_job_killed_on_a_full_disk_ends_killed_and_its_status_is_written_when_space_returns(c):
    job_id = nowait(c, "-H", "n4", "head -c 6000000 /dev/urandom | base64")
    _wait_disk_full(c)
    assert c.grun("-k", str(job_id)).returncode == 0
    job = wait_state(c, job_id, "killed", "failed", timeout=20)  # reported with no status.json on disk
    assert job["state"] == "killed", job
    assert "bytes of output lost: spool disk full" in (job.get("error") or ""), job
    status = os.path.join(c.spool, "jobs", str(job_id), "status.json")
    assert not os.path.exists(status)  # not a torn (empty) one
    log = _log(c)
    assert log.count("its status.json is not written yet") == 1 and "Traceback" not in log, log
    c.kill("n4", signal.SIGTERM)  # a node daemon restarted on the full disk serves, and keeps the job's end
    c.start_node("n4")
    # the node's side: the restarted daemon adopted the job from the full disk, still without its status.json
    wait_for(lambda: "re-adopted jobs from the spool: " in _log(c), 20, what="the restarted node to adopt the job")
    assert os.path.isdir(os.path.dirname(status)) and not os.path.exists(status)
    assert c.client().job(job_id)["state"] == "killed"
    _grow(c)  # its reaper tries again: the end is on the node's disk at last
    written = wait_for(lambda: read_spool(os.path.dirname(status), STATUS), 10, what="status.json")
    assert written["signal"] == 15 and "bytes of output lost" in written["error"], written
    assert "Traceback" not in _log(c)


def test_a_job_killed_at_its_time_limit_on_a_full_disk_ends_as_timeout(c):
    # its limit.json cannot be written: the node keeps the reason, and the job's end still says it
    job_id = nowait(c, "-H", "n4", "-t", "4s", "head -c 6000000 /dev/urandom | base64")
    _wait_disk_full(c)
    job = wait_state(c, job_id, "timeout", "killed", "failed", timeout=30)
    assert (job["state"], job.get("limit")) == ("timeout", "time"), job
    assert "ran past its time limit" in job.get("limit_detail", ""), job
    assert not os.path.exists(os.path.join(c.spool, "jobs", str(job_id), "limit.json"))
    with registry.proxy(f"PYRO:{registry.job_name(job_id)}@{job['node_uri'].split('@', 1)[1]}") as sup:
        assert "stderr" not in sup.info()["status"]  # (the sampler's look at where its stderr goes: not its end)
    assert "Traceback" not in _log(c)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_job_that_ended_while_its_node_was_down_on_a_full_disk_runs_once(c, monkeypatch):
    """(Review: its reaper gave up the unwritten end some time after the node went; the restarted node found job
    and reaper gone, reported it lost, and the master ran the finished job again.) Its reaper keeps telling the
    end while the spool lives: the restarted node reports it, done, once; the status is written once space returns."""
    monkeypatch.setenv("GRUN_REAPER_ORPHAN_RETRY_SECS", "3")  # (the bound it gave up at: it must outlive it)
    c.kill("n4", signal.SIGTERM)
    c.start_node("n4")
    runs = os.path.join(c.root, "runs")
    job_id = nowait(c, "-H", "n4", f"echo x >> {runs}; sleep 4; exit 0")
    job_dir = os.path.join(c.spool, "jobs", str(job_id))
    wait_for(lambda: os.path.exists(runs) and read_pid(job_dir)[2], 10, what="the job to start")
    reaper = int(read_pid(job_dir)[2].split(".")[0])
    filler = _fill(c.spool)
    c.kill("n4", signal.SIGTERM)  # stopped as by an upgrade (KillMode=process): its reaper and job run on
    time.sleep(4 + 3 + 2 * DISK_RETRY_SECS)  # the job's end, then past that bound
    assert _alive(reaper) and not os.path.exists(os.path.join(job_dir, STATUS))
    c.start_node("n4")  # on the still-full disk: its reaper tells it the end
    job = wait_state(c, job_id, "done", "lost", timeout=30)
    assert (job["state"], job["attempt"]) == ("done", 1), job
    r = c.grun("--attach", str(job_id), timeout=30)
    assert r.returncode == 0, r.stderr
    os.remove(filler)
    wait_for(lambda: not _alive(reaper), 15, what="the reaper to write the end and exit")
    with open(runs) as f:
        assert f.read() == "x\n"
    assert "Traceback" not in _log(c)


def _fill(spool: str) -> str:
    """Fill the spool disk to its last byte, from outside (root ignores no tmpfs limit)."""
    path = os.path.join(spool, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 4096)
    os.close(fd)
    return path


def _reaper(c) -> int:
    node = psutil.Process(c.procs["n4"].pid)
    (reaper,) = [p.pid for p in node.children() if "grun.spawner" in " ".join(p.cmdline())]
    return reaper


@pytest.mark.parametrize("started", [True, False])
def test_a_kill_on_a_full_disk_is_escalated_to_kill_after_the_grace(c, started):
    """The job ignores TERM; the spool disk is full to its last byte, so no kill request can be written:
    the job still gets TERM, then KILL after the grace, and the master hears of it. `started`: the job runs;
    else it still waits in its (stopped) reaper's pipe when the kill comes."""
    assert c.grun("-H", "n4", "true").returncode == 0
    reaper = _reaper(c)
    if not started:
        os.kill(reaper, signal.SIGSTOP)
    try:
        job_id = nowait(c, "-H", "n4", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
        job_dir = os.path.join(c.spool, "jobs", str(job_id))
        wait_for(lambda: os.path.exists(os.path.join(job_dir, "pid" if started else "job.json")), 10,
                 what="the job on its node")
        _fill(c.spool)
        t0 = time.monotonic()
        assert c.grun("-k", str(job_id)).returncode == 0
        if not started:
            time.sleep(1)
            os.kill(reaper, signal.SIGCONT)
        job = wait_state(c, job_id, "killed", "failed", timeout=30)
        assert (job["state"], job.get("signal")) == ("killed", signal.SIGKILL), job
        assert time.monotonic() - t0 < 15
        assert "Traceback" not in _log(c)
    finally:
        with contextlib.suppress(OSError):
            os.kill(reaper, signal.SIGCONT)


@pytest.mark.parametrize("death", ["reaper", "node and reaper", "node"])
def test_a_job_whose_pid_file_a_full_disk_left_empty_is_settled_when_its_reaper_dies(c, death, tmp_path):
    """The reaper claims and starts the job on a disk full to its last byte: its pid file stays empty (the node
    learns the pid from its ping, a restarted node from the name of an empty file, spool.mark_pid). Its reaper then
    dies: the node waits for the job as its child and records its exit; killed with its node, a restarted node kills
    it and ends it (failed, saying why); a restarted node whose old reaper lives leaves it to that reaper, and can
    signal it. The job used to be shown running forever ("being claimed"); then, with a restarted node, to run on
    untracked (reported failed, "it may have run", or running with no pid the node could signal)."""
    os.chmod(tmp_path, 0o777)
    gate = tmp_path / "gate"
    assert c.grun("-H", "n4", "true").returncode == 0
    reaper = _reaper(c)
    os.kill(reaper, signal.SIGSTOP)
    client = c.client()
    try:
        job_id = client.submit_spec({"cmd": [f"touch {tmp_path}/ran; while [ ! -e {gate} ]; do sleep 0.05; done; touch {tmp_path}/on; exit 3"],
                                     "shell": True, "cwd": str(tmp_path), "uid": 0, "gid": 0})
        job_dir = os.path.join(c.spool, "jobs", str(job_id))
        wait_for(lambda: os.path.exists(os.path.join(job_dir, "job.json")), 10, what="the job on its node")
        filler = _fill(c.spool)
    finally:
        os.kill(reaper, signal.SIGCONT)
    try:
        wait_for(lambda: (tmp_path / "ran").exists(), 10, what="the job to start")
        os.unlink(filler)
        assert os.path.getsize(os.path.join(job_dir, "pid")) == 0
        if death != "reaper":
            c.kill("n4", signal.SIGKILL)
        if death != "node":
            os.kill(reaper, signal.SIGKILL)
        if death != "reaper":
            c.start_node("n4")
        if death == "node and reaper":  # killed by the restarted node: reported failed, not run again
            done = client.wait([job_id], 20)[job_id]
            assert (done["state"], done["exit"]) == ("failed", 255), done
            assert "job supervisor vanished while the node was down" in done["error"], done
            gate.touch()
            time.sleep(1)
            assert not (tmp_path / "on").exists(), "the job ran on, untracked"
        else:  # its exit code, from the node (its child now) or from the old reaper
            time.sleep(2)
            assert client.job(job_id)["state"] == "running"
            client.hold([job_id])  # (the node signals its session: it knows the pid)
            assert wait_state(c, job_id, "suspended")["state"] == "suspended"
            client.resume([job_id])
            wait_state(c, job_id, "running")
            gate.touch()
            done = client.wait([job_id], 20)[job_id]
            assert (done["state"], done["exit"]) == ("failed", 3), done
        assert "Traceback" not in _log(c)
    finally:
        gate.touch()


def test_a_job_whose_pid_the_reaper_cannot_name_on_a_full_disk_is_killed_at_its_start(tmp_path):
    """Neither its pid file nor an empty file's name (spool.mark_pid: no inode left) can say its pid: nobody could find
    the job after a restart, so its reaper kills it at once, and says why. Its own reaper and tmpfs, no daemons."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs: root only")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", jobs], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    reaper = None
    try:
        job = {"id": 7, "cmd": ["sleep", "30"], "cwd": "/", "stdout_file": "/dev/null", "stderr_file": "/dev/null"}
        create(job_dir := str(jobs / "7"), job, json.dumps(job))
        _fill(str(jobs))
        empties = []
        with contextlib.suppress(OSError):  # every inode but one, for the pid file's claim
            while True:
                os.close(os.open(jobs / f"e{len(empties)}", os.O_CREAT | os.O_WRONLY))
                empties.append(jobs / f"e{len(empties)}")
        os.remove(empties.pop())
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        reaper = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE)
        reaper.stdin.write(f"{job_dir}\t{tmp_path / 'notify'}\n".encode())
        reaper.stdin.close()
        while not (ping := notify.recv(1 << 16).decode()).startswith("unwritten 7 "):  # (its end, once it is over)
            assert ping.startswith("started 7 "), ping
        end = json.loads(ping.split(" ", 2)[2])
        said = "the spool disk is full: its pid could not be recorded, so it was killed at its start"
        assert (end["signal"], end["error"]) == (signal.SIGKILL, said), end
        assert os.path.getsize(os.path.join(job_dir, "pid")) == 0 and not any(jobs.glob("7/pid.*"))
    finally:
        subprocess.run(["mount", "-o", "remount,size=8m,nr_inodes=4096", jobs], capture_output=True)
        if reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(15)  # (its end written, once there is room)
            reaper.kill()
        subprocess.run(["umount", "-l", jobs], capture_output=True)
