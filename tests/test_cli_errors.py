"""Errors a user can cause (issue 2, "Errors"; DESIGN invariant 7): each is one line on stderr that
starts with "grun:", a non-zero exit and no traceback; the daemons keep serving."""
from __future__ import annotations

import os
import sys
import time

import pytest
from cluster import free_port
from util import assert_one_error_line, nowait

from grun.client import Client, GrunError

PY = sys.executable


@pytest.mark.parametrize("args,needle", [
    (["--bogus", "true"], "--bogus"),
    (["-Z", "true"], "-Z"),
    (["--nowait=yes", "true"], "--nowait"),
    (["-c", "abc", "true"], "-c"),
    (["-m", "12Q", "true"], "-m"),
    (["-c", "-1", "true"], "-c"),
    (["-m", "1e30", "true"], "-m"),
    (["-m", "-5", "true"], "-m"),
    (["-c", "1e400", "true"], "-c"),
    (["-c"], "-c"),
    (["-r", "high", "true"], "-r"),
    (["-n", "NOSUCHSIG", "-k", "1"], "NOSUCHSIG"),
    (["-c", "2"], "no command given to grun (see grun --help)"),  # (a bare `grun`: its usage, test_verbs)
    (["--cpu", "2", "true"], "--cpu (see grun --help); did you mean '--cpus'?"),  # typos, and Slurm's spellings
    (["--nowiat", "true"], "did you mean '--nowait'?"),
    (["--cpus-per-task", "2", "true"], "did you mean '--cpus'?"),
    (["--job-name", "x", "true"], "did you mean '--name'?"),
    (["-q", "jobs", "--lon"], "did you mean '--long'?"),
    (["-e", "hld", "5"], "-e needs hold ID..., resume ID... or KEY=VALUE[,KEY=VALUE] ID...; did you mean 'hold'?"),
    (["-q"], "-q"),
    (["-q", "bogus"], "bogus"),
    (["-q", "wait"], "wait"),
    (["-q", "wait", "0"], "0"),
    (["-k"], "-k"),
])
def test_usage_errors(cluster, args, needle):
    r = cluster.grun(*args)
    assert_one_error_line(r, needle)
    assert r.returncode == 2
    assert r.stdout == b""


@pytest.mark.parametrize("args", [["-q", "wait", "abc"], ["-k", "12x"]])
def test_a_word_that_is_no_id_is_a_name_that_must_exist(cluster, args):
    assert_one_error_line(r := cluster.grun(*args), f"no job named '{args[-1]}'")
    assert (r.returncode, r.stdout) == (1, b"")


@pytest.mark.parametrize("args", [["-q", "wait", "999999"], ["-q", "wait", "1", "999999"]])
def test_unknown_job_id_for_wait(cluster, args):
    assert cluster.grun("true").returncode == 0  # so job 1 exists
    r = cluster.grun(*args)
    assert_one_error_line(r, "999999")


def test_unknown_job_id_for_kill(cluster):
    r = cluster.grun("-k", "999999")
    assert r.returncode == 1
    assert_one_error_line(r, "999999")


@pytest.mark.parametrize("text,line,key", [
    ("master: 127.0.0.1:5184\ncpus: lots\n", 2, "cpus"),
    ("services: exec\nmaster: 127.0.0.1:5184\nmemory: 12Q\n", 3, "memory"),
    ("master: 127.0.0.1:99999\n", 1, "master"),
    ("master: 127.0.0.1:5184\nservices: [queue\nhostname: x\n", None, None),
    ("master: 127.0.0.1:5184\nmaster: 127.0.0.1:5185\n", 2, "master"),
    ("- just\n- a list\n", 1, None),
])
def test_malformed_config_names_file_line_and_key(tmp_path, text, line, key):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    for how in (["-C", str(conf)], []):
        run_env = dict(env) if how else dict(env, GRUN_CONF=str(conf))
        r = _grun(*how, "true", env=run_env)
        message = assert_one_error_line(r, str(conf))
        if line is not None:
            assert f"{conf}:{line}:" in message
        else:
            assert f"{conf}:" in message
        if key is not None:
            assert repr(key) in message


def test_missing_or_unreadable_config_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    missing = str(tmp_path / "nope.conf")
    assert_one_error_line(_grun("-C", missing, "true", env=env), missing)
    assert_one_error_line(_grun("true", env=dict(env, GRUN_CONF=missing)), missing)
    assert_one_error_line(_grun("-C", str(tmp_path), "true", env=env), str(tmp_path))


def test_master_unreachable_is_a_bounded_wait_that_names_the_address(tmp_path):
    """Each a bounded wait (the client's, 10 s), all at once: `grun -q wait` (-C) too, within 13 s of its start."""
    port = free_port()
    conf = tmp_path / "client.conf"
    conf.write_text(f"master: 127.0.0.1:{port}\nservices: exec\nspool: {tmp_path}/spool\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    start = time.monotonic()
    import subprocess
    procs = [subprocess.Popen([PY, "-m", "grun.cli", *args], env=dict(env, GRUN_CONF=str(conf)) if args[0] != "-C" else env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for args in (["-C", str(conf), "-q", "wait", "1"], ["true"], ["--nowait", "true"], ["-q", "status"],
                          ["-q", "jobs"], ["-k", "1"])]
    results = []
    for proc in procs:  # (the wait first: its end is timed)
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        if not results[1:]:
            assert time.monotonic() - start < 13, "grun -q wait still waiting after 13 s (the client's bound is 10 s)"
    elapsed = time.monotonic() - start
    for r in results:
        assert r.stdout == b""
        assert_one_error_line(r, f"127.0.0.1:{port}")
    assert elapsed < 30, f"took {elapsed:.0f} s"


def test_bad_requests_are_refused_and_the_master_keeps_serving(cluster):
    client = cluster.client()
    for spec in ({"cmd": "not a list"}, {"cmd": []}, {"cmd": ["true"], "cpus": -1},
                 {"cmd": ["true"], "cwd": "relative"}, {"cmd": ["true"], "bogus_key": 1},
                 {"cmd": ["true"], "memory": float("nan")}):
        with pytest.raises(GrunError):
            client.submit(spec)
    with pytest.raises(GrunError):
        client.call("submit", "not a dict")
    with pytest.raises(GrunError):
        client.call("kill", [1], 999)
    with pytest.raises(GrunError):
        client.call("wait", ["x"], 1)
    assert client.call("ping") == "grun.master"
    assert cluster.grun("true").returncode == 0


def _grun(*args, env, timeout=60):
    import subprocess
    return subprocess.run([PY, "-m", "grun.cli", *args], env=env, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_client_connect_wait_is_bounded():
    """The client's own bound, without a CLI around it: a short wait gives up quickly."""
    start = time.monotonic()
    with pytest.raises(GrunError) as err:
        Client("127.0.0.1", free_port(), connect_wait=0.5).call("ping")
    assert time.monotonic() - start < 5
    assert "cannot reach the grun master at 127.0.0.1:" in str(err.value)


def test_a_port_that_takes_connections_and_drops_them_is_no_master_come_and_gone():
    """A long poll (a wait rides through a master away up to long_wait, an hour) against a wrong port whose listener
    accepts and closes (a dead `ssh -L` tunnel) gives up within connect_wait: the peer never answered our hello."""
    import socket
    import threading
    server = socket.create_server(("127.0.0.1", 0))

    def drop():
        while True:
            try:
                server.accept()[0].close()
            except OSError:
                return
    threading.Thread(target=drop, daemon=True).start()
    try:
        start = time.monotonic()
        client = Client("127.0.0.1", server.getsockname()[1], connect_wait=1)
        with pytest.raises(GrunError, match="cannot reach the grun master"):
            client.call("wait", [1], 30.0, wait=client.long_wait)
        assert time.monotonic() - start < 5
    finally:
        server.close()


def test_refused_submission_is_reported_at_once(cluster):
    words = ["x" * (110 << 10)] * 10  # a 1.1 MB command line: over the master's limit, under the kernel's
    start = time.monotonic()
    r = cluster.grun("true", *words)
    assert_one_error_line(r, "command line too long")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("args", [["--help"], ["-q", "jobs"], ["-q", "history"], ["shell"]])
def test_a_reader_that_went_away_is_no_error(cluster, args):
    """`grun -q history | head -1`: a closed pipe ends grun quietly (exit 141, as SIGPIPE would), without
    a "Broken pipe" line on stderr; so does `grun shell` whose output nobody reads any more."""
    import subprocess
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before grun writes a byte
    try:
        r = subprocess.run([PY, "-m", "grun.cli", *args], env=cluster.env, stdout=write_end, stderr=subprocess.PIPE,
                           input=b"jobs\nstatus\n", timeout=60)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, b"")


def test_an_exported_bash_function_passes_by_its_name_and_a_bad_name_is_still_refused(cluster):
    """(QA: `grun -E 'BASH_FUNC_myalign%%'`, the variable bash's `export -f myalign` makes, was refused as a bad value,
    so a function passed with -E '*' only.)"""
    env = {**cluster.env, "BASH_FUNC_hi%%": "() {  echo hi-$1\n}"}
    r = cluster.grun("-E", "BASH_FUNC_hi%%", "bash", "-c", "hi there", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi-there\n", b""), r.stderr
    for bad in ("BASH_FUNC_%%", "BASH_FUNC_a b%%", "BASH_FUNC_a%", "A%%"):
        assert_one_error_line(cluster.grun("-E", bad, "true"), "-E")


def test_history_shows_an_arrays_own_line_after_its_tasks_not_among_them(cluster, tmp_path):
    """(QA: `grun -q history`, sorted by end time, showed `88.1, 88, 88.2`: the array's line between its tasks.)"""
    array = nowait(cluster, "--array", "1-3", "-o", "/dev/null", "sh", "-c", "sleep $((GRUN_TASK_ID / 3))")
    assert cluster.grun("-q", "wait", str(array)).returncode == 0
    ids = [line.split()[0] for line in cluster.grun("-q", "history").stdout.decode().splitlines()[1:]]
    ours = [i for i in ids if i.partition(".")[0] == str(array)]
    assert sorted(ours[:-1]) == [f"{array}.1", f"{array}.2", f"{array}.3"] and ours[-1] == str(array), ids
