"""A job's input from grun's stdin (QA findings of 2026-12-08): cut off by its node daemon's death (said, the job
killed, non-zero); a pipe's not re-read by a re-queue (the job ends lost); --noinput for a `while read` loop; and
--nowait says it does not send a piped input. Each test gets its own cluster where it kills or stops daemons."""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from cluster import LocalCluster
from util import job, job_id_from_verbose, nowait, read_line, wait_state


def _piped(c: LocalCluster, *args: str, chunks: int = 1, size: int = 1000, pause: float = 0.0) -> subprocess.Popen:
    """`grun -v ARGS` fed through a pipe by a thread: chunks, a pause after each, then the pipe's end."""
    r, w = os.pipe()
    client = c.popen("-v", *args, stdin=r)
    os.close(r)

    def feed():
        with open(w, "wb", buffering=0) as pipe, contextlib.suppress(OSError):
            for _ in range(chunks):
                pipe.write(b"x" * size)
                time.sleep(pause)
    threading.Thread(target=feed, daemon=True).start()
    return client


def test_input_cut_off_by_a_node_daemon_restart_is_said_and_kills_the_job(fresh_cluster):
    c = fresh_cluster
    client = _piped(c, "-H", "small", "sh", "-c", "wc -c; sleep 30", chunks=20, size=100_000, pause=0.3)
    assert read_line(client.stderr, 20).endswith(b" queued\n")
    jid = job_id_from_verbose(read_line(client.stderr, 20))
    after = nowait(c, "--afterok", str(jid), "true")
    time.sleep(1.5)  # part of the input sent
    c.kill("small", signal.SIGKILL)
    c.start_node("small")
    out, err = client.communicate(timeout=60)
    assert client.returncode == 1, (out, err)
    assert f"job {jid}'s input was cut off when its node daemon restarted".encode() in err, err
    assert int(out.split()[0]) < 2_000_000  # what it read: not all of it
    assert job(c, jid)["state"] == "killed"
    assert wait_state(c, after, "cancelled")["state"] == "cancelled"


def test_a_whole_input_then_a_node_daemon_restart_is_no_cut(fresh_cluster):
    c = fresh_cluster
    client = _piped(c, "-H", "small", "sh", "-c", "wc -c; sleep 3")
    assert read_line(client.stderr, 20).endswith(b" queued\n")
    jid = job_id_from_verbose(read_line(client.stderr, 20))
    time.sleep(1)
    c.kill("small", signal.SIGKILL)
    c.start_node("small")
    out, err = client.communicate(timeout=60)
    assert (client.returncode, out.split()) == (0, [b"1000"]), err
    assert b"cut off" not in err and job(c, jid)["state"] == "done"


def test_a_job_fed_by_a_pipe_is_not_rerun_when_its_node_is_lost(tmp_path):
    fast = {"cpus": 4, "memory": 4000, "heartbeat": 0.5}
    c = LocalCluster(nodes={"n1": fast, "n2": fast}, master_extra={"node_timeout": 3}).start()
    try:
        client = _piped(c, "-H", "n1,n2", "sh", "-c", "head -c 500; sleep 20; cat; echo END")
        assert read_line(client.stderr, 20).endswith(b" queued\n")
        jid = job_id_from_verbose(read_line(client.stderr, 20))
        node = job(c, jid)["node"]
        c.procs[node].send_signal(signal.SIGSTOP)  # silent: lost after node_timeout
        try:
            wait_state(c, jid, "lost", "queued", "running", timeout=20)
            time.sleep(6)
            record = job(c, jid)
        finally:
            c.procs[node].send_signal(signal.SIGCONT)
        out, err = client.communicate(timeout=60)
        assert (record["state"], record.get("attempt")) == ("lost", 1), record
        assert client.returncode == 255 and b"END" not in out, (out, err)
        assert f"job {jid} was not run again: its input is a pipe".encode() in err, err
    finally:
        c.stop()


def test_noinput_leaves_a_while_read_loop_its_lines(fresh_cluster, tmp_path):
    c = fresh_cluster
    (listing := tmp_path / "list").write_text("a\nb\nc\n")
    loop = f'while read f; do {shlex.join([sys.executable, "-m", "grun.cli"])} --noinput sh -c "echo $f; cat"; done < {listing}'
    r = subprocess.run(["sh", "-c", loop], capture_output=True, env=c.env, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"a\nb\nc\n"), r.stderr


def test_nowait_says_it_does_not_send_a_piped_input(fresh_cluster, tmp_path):
    c = fresh_cluster
    r = c.grun("--nowait", "wc", "-l", input=b"1\n2\n")
    assert r.returncode == 0 and b"--nowait does not send the job our input" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    (given := tmp_path / "in").write_text("1\n")
    for stdin in (subprocess.DEVNULL, open(given, "rb")):
        r = c.grun("--nowait", "true", stdin=stdin)
        assert (r.returncode, r.stderr) == (0, b""), r.stderr
    r = c.grun("--nowait", "--noinput", "true", input=b"x")
    assert (r.returncode, r.stderr) == (0, b""), r.stderr


def test_a_graceful_node_restart_mid_input_is_a_cut_said_not_a_silent_one(fresh_cluster):
    """`grun -d -R` keeps the job's FIFO but not the bytes on their way (the old daemon's stream connection): at the
    session's start the job ended 0 on 800,000 of 1,000,000 bytes, in silence. Known gap: -R should hand the stream
    over; until then grun says the input was cut and the job is killed."""
    c = fresh_cluster
    client = _piped(c, "-H", "small", "wc", "-c", chunks=10, size=100_000, pause=0.3)
    assert read_line(client.stderr, 20).endswith(b" queued\n")
    jid = job_id_from_verbose(read_line(client.stderr, 20))
    time.sleep(1)
    assert c.grun("-d", "-R", "-C", c.configs["small"]).returncode == 0
    out, err = client.communicate(timeout=60)
    whole = (client.returncode, out.split()) == (0, [b"1000000"]) and b"cut off" not in err  # (no byte on its way)
    assert whole or client.returncode != 0 and b"input was cut off" in err, (client.returncode, out, err)
    assert job(c, jid)["state"] in (("done",) if whole else ("killed", "done"))  # (wc may end at the cut first)
