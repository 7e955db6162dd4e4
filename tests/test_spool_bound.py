"""Terabyte streams in bounded space (issue 14): a node keeps at most spool_max of a job's unread output;
past it the job waits in its write for a reader, as with a pipe; bytes delivered are punched out when
room is needed and a re-attach says so; a node daemon restart leaves a job waiting on output alive;
-o files bypass the spool; stdin streams byte-exact. Real daemons, real jobs, real files."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from cluster import LocalCluster
from util import group_alive, job_pid, nowait, wait_for, wait_state

MAX_MB = 2                                     # spool_max of the node under test
LINES = 1_500_000                              # `seq 1 LINES`: 10.9 MB, 5 times spool_max
EXPECTED = b"".join(b"%d\n" % i for i in range(1, LINES + 1))


@pytest.fixture
def c():
    with LocalCluster(nodes={"n1": {"cpus": 4, "memory": 4000, "heartbeat": 0.5, "spool_max": MAX_MB}}) as cluster:
        yield cluster


def _stdout(c, job_id: int) -> str:
    return os.path.join(c.root, "n1", "node", "jobs", str(job_id), "stdout")


def _held(path: str) -> int:
    """Bytes of the spool file on disk (a punched range takes none)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _settled_size(path: str) -> int:
    """The spool file's size once it has stopped growing (the job waits for a reader)."""
    sizes = []

    def settled():
        sizes.append(os.path.getsize(path) if os.path.exists(path) else -1)
        return len(sizes) > 5 and sizes[-1] > 0 and sizes[-1] == sizes[-6]
    wait_for(settled, 30, interval=0.1, what=f"{path} to stop growing")
    return sizes[-1]


def test_with_no_reader_the_job_waits_at_spool_max_then_a_reader_gets_every_byte(c):
    job_id = nowait(c, "seq", "1", str(LINES))
    size = _settled_size(_stdout(c, job_id))
    assert 0 < size <= MAX_MB << 20
    assert c.client().job(job_id)["state"] == "running"  # waiting in its write, not dead
    said = f"its output waits for a reader: 2 MB unread, spool_max reached: attach (grun --attach {job_id}) or use -o"
    wait_for(lambda: said in c.grun("why", str(job_id)).stdout.decode(), 10, what="grun why to say so")
    assert said[4:] in c.grun("-q", "jobs", "--long").stdout.decode()
    r = c.grun("--attach", str(job_id), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED  # nothing was punched: nobody had read it
    assert b"already delivered" not in r.stderr


def test_a_slow_reader_sets_the_pace_and_the_spool_stays_bounded(c):
    """The reader takes ~4 s; the spool file never holds more than spool_max on disk meanwhile, and a
    re-attach afterwards says what was already delivered and replays only what is still held."""
    job_id = nowait(c, "seq", "1", str(LINES))
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _held(_stdout(c, job_id)))
            time.sleep(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    slow = "import sys,time\nwhile sys.stdin.buffer.read(65536):\n    time.sleep(0.025)\n"  # ~2.6 MB/s
    got = bytearray()
    reader = c.client()
    consumer = subprocess.Popen([os.sys.executable, "-c", slow], stdin=subprocess.PIPE)
    try:
        def out(data: bytes):
            got.extend(data)
            consumer.stdin.write(data)
        assert reader.follow(job_id, stdout_fd=out, release=False) == 0
    finally:
        consumer.stdin.close()
        consumer.wait()
        done.set()
        sampler.join()
    assert bytes(got) == EXPECTED
    assert 0 < peak[0] <= (MAX_MB << 20) + (1 << 20), peak  # spool_max, and the pipe the reaper drains at the end
    r = c.grun("--attach", str(job_id), timeout=60)
    m = re.search(rb"output before byte (\d+) was already delivered", r.stderr)
    assert m and r.returncode == 0, r.stderr
    start = int(m.group(1))
    assert start > len(EXPECTED) - (MAX_MB << 20) - (2 << 20) and r.stdout == EXPECTED[start:]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_node_daemon_restart_does_not_kill_a_job_waiting_on_output(c, sig):
    """Killed, or stopped gracefully (which must leave the job's pipes for the next daemon)."""
    job_id = nowait(c, "seq", "1", str(LINES))
    _settled_size(_stdout(c, job_id))
    pgid = job_pid(c, job_id)
    c.kill("n1", sig)  # the job's pipes lose their reader in the node daemon
    time.sleep(0.5)
    assert group_alive(pgid)
    c.start_node("n1")
    r = c.grun("--attach", str(job_id), timeout=120)
    assert (r.returncode, r.stdout == EXPECTED) == (0, True), r.stderr


def test_output_files_bypass_the_spool(c, tmp_path):
    out = tmp_path / "out.txt"
    job_id = nowait(c, "-o", str(out), "seq", "1", str(LINES))
    wait_state(c, job_id, "done", timeout=60)  # no reader needed
    assert out.read_bytes() == EXPECTED
    assert not os.path.exists(_stdout(c, job_id)) or os.path.getsize(_stdout(c, job_id)) == 0


def test_stdin_streams_byte_exact(c, tmp_path):
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(3 << 20) * 8)  # 24 MB, 12 times spool_max
    with open(data, "rb") as f:
        r = c.grun("md5sum", stdin=f, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(data.read_bytes()).hexdigest()


# ---- a node's spool nearly full: no new jobs there (issue 14), warned before (issue 11) -----------

def test_disk_low_decides_refusal_and_warning():
    from grun.core.explain import disk_low
    settings = {"min_free_disk": 64, "disk_warn": "10%"}
    assert disk_low("node n1", {"spool_free": 5000, "spool_size": 10000}, settings) is None
    assert disk_low("node n1", {}, settings) is None  # not heard yet: nothing to say
    assert disk_low("node n1", {"spool_free": 900, "spool_size": 10000}, settings) == (
        False, "node n1's spool is getting full: 900 MB free of 10000 MB")
    refusing, text = disk_low("node n1", {"spool_free": 60, "spool_size": 10000}, settings)
    assert refusing and text == "node n1 takes no new jobs: its spool has 60 MB free (min_free_disk 64 MB)"
    assert disk_low("x", {"spool_free": 1500, "spool_size": 10**6}, dict(settings, disk_warn=2048))[0] is False


def test_a_node_whose_spool_is_nearly_full_takes_no_new_jobs_and_says_why(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the node's spool")
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, "heartbeat": 0.3}}, root=str(tmp_path / "c"),
                     master_extra={"min_free_disk": 12, "disk_warn": "80%"})
    spool = os.path.join(c.root, "n1")
    os.makedirs(spool)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=755", "tmpfs", spool], check=True)
    try:
        c.start()
        gate = tmp_path / "gate"
        running = nowait(c, "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
        wait_state(c, running, "running")
        ballast = os.path.join(spool, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (12 << 20))  # ~20 MB free of 32: below 80 %, above min_free_disk
        wait_for(lambda: "node n1's spool is getting full" in c.grun("-q", "status").stdout.decode(), 10,
                 what="the warning in -q status")
        with open(ballast, "ab") as f:
            f.write(b"\0" * (12 << 20))  # ~8 MB free: below min_free_disk
        status = wait_for(lambda: (out := c.grun("-q", "status").stdout.decode()) and "takes no new jobs" in out and out,
                          10, what="the refusal in -q status")
        assert re.search(r"n1 +up .* \d+\n", status) and "master spool:" in status, status
        queued = nowait(c, "true")
        time.sleep(1.0)
        assert c.client().job(queued)["state"] == "queued"
        why = c.grun("why", str(queued)).stdout.decode()
        assert "taking no new jobs, their spool nearly full: n1 (its spool has" in why, why
        gate.touch()  # the job already running goes on, and ends well
        assert wait_state(c, running, "done")["exit"] == 0
        os.unlink(ballast)
        assert wait_state(c, queued, "done", timeout=20)["exit"] == 0
    finally:
        c.stop()
        subprocess.run(["umount", "-l", spool])


def test_a_cwd_missing_on_the_node_fails_at_once_with_exit_2_and_says_so(c):
    """(issue 14, NFS and the working directory) not a traceback, not a hang."""
    job_id = c.client().submit_spec({"cmd": ["true"], "cwd": "/nonexistent/x/y", "uid": os.getuid(), "gid": os.getgid()})
    r = c.grun("--attach", str(job_id), timeout=30)
    assert (r.returncode, r.stdout) == (2, b""), r.stderr
    assert r.stderr == b"grun: cwd /nonexistent/x/y does not exist on node n1\n"


def test_wrap_per_job_and_per_node_with_a_real_wrapper_script(tmp_path):
    """(issue 14, nodes without the shared file system) `--wrap PREFIX` and the node's `wrap:`, {cmd}
    substituted: the job's own prefix runs inside the node's."""
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text('#!/bin/sh\ntag=$1; shift\necho "$tag: $*" >&2\nexec "$@"\n')
    wrapper.chmod(0o755)
    with LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, "wrap": f"{wrapper} node {{cmd}}"}}) as c:
        r = c.grun("sh", "-c", "echo out; echo $X")
        assert (r.returncode, r.stdout) == (0, b"out\n\n"), r.stderr
        assert r.stderr == b"node: sh -c echo out; echo $X\n"
        r = c.grun("--wrap", f"env X=1 {wrapper} job", "sh", "-c", "echo out; echo $X; exit 3")
        assert (r.returncode, r.stdout) == (3, b"out\n1\n"), r.stderr
        assert r.stderr.splitlines() == [  # the node's wrapper gets the job's wrapped command as one
            f"node: /bin/sh -c env X=1 {wrapper} job sh -c 'echo out; echo $X; exit 3'".encode(),
            b"job: sh -c echo out; echo $X; exit 3"]


def test_a_writer_left_behind_holds_neither_the_reaper_nor_the_disk(c, tmp_path):
    """`dd if=/dev/zero &` outlives its job: the job's end is recorded at once, the next job starts, and the
    writer gets EPIPE once the node lets go of the job's pipes (it used to fill the spool)."""
    pid_file = tmp_path / "pid"
    r = c.grun("sh", "-c", f"dd if=/dev/zero bs=1M 2>/dev/null & echo $! > {pid_file}; sleep 0.3", timeout=30,
               capture_output=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert c.grun("echo", "next", timeout=30).stdout == b"next\n"
    pid = int(pid_file.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             10, what="the writer left behind to end")
