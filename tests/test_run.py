"""`grun CMD` end to end on a real cluster (issue 2, points 3, 4 and 6): output, exit codes,
environment, sessions, stdin, signals on the client, queries and kills. Every test leaves the shared
cluster idle: the jobs it starts have finished when it returns.
"""
from __future__ import annotations

import getpass
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys

import Pyro5.api
import pytest
from util import (
    group_alive,
    job,
    job_id_from_verbose,
    job_pid,
    nowait,
    read_line,
    wait_for,
    wait_state,
)

from grun import __version__, registry

PY = sys.executable


# ---- output -----------------------------------------------------------------------------------

def test_hostname(cluster):
    r = cluster.grun("hostname")
    assert (r.returncode, r.stdout, r.stderr) == (0, subprocess.check_output(["hostname"]), b"")


def test_output_arrives_while_the_job_runs(cluster, tmp_path):
    done = tmp_path / "done"
    proc = cluster.popen("sh", "-c", f"echo first; sleep 2; echo second; touch {done}")
    try:
        assert read_line(proc.stdout, 10) == b"first\n"
        assert not done.exists(), "the first line only arrived after the job had ended"
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (0, b"second\n", b"")


def test_stderr_is_separate_from_stdout(cluster):
    r = cluster.grun("sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out1\nout2\n", b"err1\nerr2\n")


def test_binary_output_is_byte_exact(cluster, tmp_path):
    data = bytes(range(256)) * 16 + random.Random(2).randbytes(3 << 20) + bytes(range(255, -1, -1))
    path = tmp_path / "blob"
    path.write_bytes(data)
    r = cluster.grun("cat", str(path))
    assert r.returncode == 0
    assert r.stdout == data
    r = cluster.grun("sh", "-c", f"cat {path} >&2")
    assert (r.returncode, r.stdout) == (0, b"")
    assert r.stderr == data


def test_shell_syntax_in_a_single_string(cluster):
    r = subprocess.run(f"{PY} -m grun.cli 'yes | head -1000' | wc -l", shell=True, env=cluster.env,
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, b"1000", b"")


# ---- exit codes -------------------------------------------------------------------------------

@pytest.mark.parametrize("script,code", [
    ("exit 0", 0), ("exit 3", 3), ("exit 255", 255),
    ("kill -9 $$", 137), ("kill -TERM $$", 143), ("kill -HUP $$", 129), ("kill -USR1 $$", 138),
])
def test_exit_code_is_the_shells(cluster, script, code):
    r = cluster.grun("sh", "-c", script)
    assert r.returncode == code, r.stderr


def test_a_reader_that_goes_away_ends_grun_and_its_job(cluster, tmp_path):
    """`grun yes | head -1`: once our stdout's reader is gone, grun kills the job and exits 141 at once
    (it took the broken pipe for a lost node and re-attached, again and again)."""
    err = tmp_path / "err"
    proc = subprocess.Popen(["bash", "-c", f"{PY} -m grun.cli -v yes 2>{err} | head -1; echo ${{PIPESTATUS[0]}}"],
                            env=cluster.env, stdout=subprocess.PIPE, start_new_session=True, cwd=tmp_path)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert out == b"y\n141\n", err.read_text()
    job_id = job_id_from_verbose(err.read_bytes())
    end = cluster.client().wait([job_id], 20)[job_id]  # (failed of SIGPIPE, as it would have here: QA, test_cli_forms)
    assert (end["state"], end["signal"]) == ("failed", 13), end


def test_killed_by_signal_shows_in_history(cluster):
    job_id = nowait(cluster, "sh", "-c", "kill -9 $$")
    assert cluster.grun("-q", "wait", str(job_id)).returncode == 137
    record = job(cluster, job_id)
    assert (record["signal"], record["exit"]) == (9, 137)
    rows = [line.split() for line in cluster.grun("-q", "history").stdout.decode().splitlines()]
    assert [str(job_id), getpass.getuser(), "failed", "signal", "9"] in [row[:5] for row in rows]


def test_missing_command_exits_127_with_the_shells_message(cluster):
    r = cluster.grun("no-such-command-xyz", "arg")
    assert r.returncode == 127
    assert r.stdout == b""
    assert r.stderr.decode().strip().endswith("no-such-command-xyz: command not found")
    r = cluster.grun("no-such-command-xyz | cat")  # through /bin/sh: its own message and code
    assert r.returncode == 0  # the pipeline's status is cat's, as in a local shell
    assert b"no-such-command-xyz" in r.stderr and b"not found" in r.stderr


def test_a_program_that_cannot_start_says_why(cluster, tmp_path):
    scripts = {"dos.sh": b"#!/bin/sh\r\necho hi\r\n", "gone.sh": b"#!/no/such/sh\necho hi\n", "bare.sh": b"echo hi\n"}
    for name, text in scripts.items():
        (tmp_path / name).write_bytes(text)
        (tmp_path / name).chmod(0o755)
    expected = {"./missing.sh": (127, "no such file"),
                "./dos.sh": (127, r"its interpreter /bin/sh not found: the script has DOS line breaks (\r\n): dos2unix it"),
                "./gone.sh": (127, "its interpreter /no/such/sh not found"),
                "./bare.sh": (126, "Exec format error (no #! line: add #!/bin/bash, or run it as: grun bash ./bare.sh)"),
                "bare.sh": (127, "command not found (did you mean ./bare.sh?)")}
    said = {cmd: cluster.grun(cmd, cwd=tmp_path) for cmd in expected}
    assert {cmd: (r.returncode, r.stderr.decode().strip()) for cmd, r in said.items()} == {
        cmd: (code, f"grun: {cmd}: {text}") for cmd, (code, text) in expected.items()}


def test_command_that_is_not_executable_exits_126(cluster, tmp_path):
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    r = cluster.grun(str(script))
    assert r.returncode == 126
    assert b"noexec.sh" in r.stderr


# ---- where and how the job runs -----------------------------------------------------------------

def test_job_runs_in_the_submitters_directory(cluster, tmp_path):
    r = cluster.grun(PY, "-c", "import os; print(os.getcwd())", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(r.stdout.decode().strip()) == os.path.realpath(tmp_path)


def test_environment(cluster):
    env = dict(cluster.env, FOO="foo value", BAR_ONLY_WITH_STAR="bar", PATH=cluster.env["PATH"] + ":/grun-test")
    r = cluster.grun("printenv", "PATH", env=env)
    assert (r.returncode, r.stdout.decode().strip()) == (0, env["PATH"])
    r = cluster.grun("printenv", "FOO", env=env)
    assert (r.returncode, r.stdout) == (1, b""), "FOO passed without -E"
    r = cluster.grun("-E", "FOO", "printenv", "FOO", env=env)
    assert (r.returncode, r.stdout) == (0, b"foo value\n")
    r = cluster.grun("-E", "NOPE,FOO", "printenv", "FOO", env=env)
    assert (r.returncode, r.stdout) == (0, b"foo value\n")
    r = cluster.grun("-E", "FOO", "printenv", "BAR_ONLY_WITH_STAR", env=env)
    assert r.returncode == 1
    r = cluster.grun("-E", "*", "printenv", "BAR_ONLY_WITH_STAR", env=env)
    assert (r.returncode, r.stdout) == (0, b"bar\n")
    toolchain = {"LD_LIBRARY_PATH": "/opt/x/lib", "CONDA_PREFIX": "/opt/conda", "OMP_NUM_THREADS": "4", "LC_ALL": "C"}
    r = cluster.grun("printenv", *toolchain, env={**env, **toolchain})  # (`module load`, conda: without -E)
    assert (r.returncode, r.stdout.decode().split()) == (0, list(toolchain.values()))


def test_job_id_and_node_in_the_environment_and_verbose(cluster):
    r = cluster.grun("-v", "sh", "-c", 'echo "$GRUN_JOB_ID $GRUN_NODE"')
    assert r.returncode == 0
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("grun: job ") for line in lines), lines
    job_id = job_id_from_verbose(r.stderr)
    node = lines[-1].split()[-1]
    assert node in cluster.node_specs
    assert r.stdout.decode().split() == [str(job_id), node]
    assert job(cluster, job_id)["node"] == node


def test_not_verbose_prints_nothing_on_stderr(cluster):
    r = cluster.grun("true")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_job_runs_in_its_own_session_and_process_group(cluster):
    r = cluster.grun("-v", PY, "-c", "import os; print(os.getpid(), os.getsid(0), os.getpgid(0))")
    assert r.returncode == 0, r.stderr
    pid, sid, pgid = map(int, r.stdout.split())
    assert sid == pid and pgid == pid, "the job is not the leader of its own session and group"
    node = r.stderr.decode().splitlines()[-1].split()[-1]
    node_pid = cluster.procs[node].pid
    assert sid not in (os.getsid(node_pid), os.getsid(0))


# ---- stdin ------------------------------------------------------------------------------------

def test_stdin_is_forwarded(cluster):
    r = cluster.grun("wc", "-l", input=b"a\nb\nc\n")
    assert (r.returncode, r.stdout.strip()) == (0, b"3")


def test_megabytes_of_stdin_stream_through_gzip(cluster):
    rng = random.Random(7)
    data = b"".join(rng.randbytes(1000) + b"text " * 200 for _ in range(3000))  # 6 MB, half compressible
    r = cluster.grun("gzip", "-c", input=data, timeout=90)
    assert r.returncode == 0, r.stderr
    assert gzip.decompress(r.stdout) == data


def test_job_reads_eof_when_grun_stdin_is_dev_null(cluster):
    r = cluster.grun("wc", "-c", stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout.strip()) == (0, b"0")


def test_job_reads_dev_null_when_grun_stdin_is_a_terminal(cluster):
    no_terminal = b"grun: jobs get no terminal: run a script, pipe input to it, or give --pty\n"  # (an interpreter with nothing to run)
    for cmd, out, err in ((["sh", "-c", "readlink /proc/self/fd/0; cat; echo end"], b"/dev/null\nend\n", b""),
                          (["bash"], b"", no_terminal), (["python3", "-u"], b"", no_terminal)):
        master, slave = os.openpty()
        try:
            r = cluster.grun(*cmd, stdin=slave, timeout=30)
        finally:
            os.close(slave)
            os.close(master)
        assert (r.returncode, r.stdout, r.stderr) == (0, out, err)


# ---- signals on the client --------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGTERM)])
def test_signal_on_grun_kills_the_remote_job(cluster, sig, code):
    proc = cluster.popen("-v", "sh", "-c", "sleep 60 & sleep 60; wait")
    try:
        read_line(proc.stderr, 20)                       # queued
        job_id = job_id_from_verbose(read_line(proc.stderr, 20))  # running on ...
        pgid = job_pid(cluster, job_id)
        assert group_alive(pgid)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    assert b"Traceback" not in err
    wait_for(lambda: not group_alive(pgid), 15, what=f"job {job_id}'s process group to be gone")
    record = wait_state(cluster, job_id, "killed")
    assert record["signal"] == sig
    assert f"{job_id}" in cluster.grun("-q", "history").stdout.decode()


def test_job_survives_its_clients_kill_9(cluster, tmp_path):
    marker = tmp_path / "end"
    proc = cluster.popen("-v", "sh", "-c", f"echo start; sleep 1.5; echo end > {marker}; exit 7")
    try:
        read_line(proc.stderr, 20)
        job_id = job_id_from_verbose(read_line(proc.stderr, 20))
        assert read_line(proc.stdout, 20) == b"start\n"
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    r = cluster.grun("-q", "wait", str(job_id))
    assert r.returncode == 7, r.stderr
    assert marker.read_text() == "end\n"
    assert job(cluster, job_id)["state"] == "failed"


# ---- options and queries ----------------------------------------------------------------------

def test_help_and_version(cluster):
    for flag in ("-h", "--help"):
        r = cluster.grun(flag)
        assert r.returncode == 0 and b"usage: grun" in r.stdout
        for letter in (b"-c", b"-m", b"--nowait", b"-v", b"-q", b"-k", b"-C"):
            assert letter in r.stdout
    for flag in ("-V", "--version"):
        r = cluster.grun(flag)
        assert (r.returncode, r.stdout.decode().strip()) == (0, f"grun {__version__}")


def test_nowait_prints_the_job_id_and_wait_returns_its_code(cluster):
    job_id = nowait(cluster, "sh", "-c", "exit 5")
    assert cluster.grun("-q", "wait", str(job_id)).returncode == 5
    other = nowait(cluster, "true")
    assert cluster.grun("-q", "wait", str(other)).returncode == 0
    r = cluster.grun("-q", "wait", str(other), str(job_id))
    assert r.returncode == 5 and r.stderr == b""


def test_a_staged_nowait_job_makes_the_state_dir_as_a_personal_cluster_would(cluster, tmp_path):
    """(QA: os.makedirs made it 0775 under umask 002, a spool a personal cluster then refused to start in.)"""
    (tmp_path / "in.txt").write_text("x")
    env = dict(cluster.env, XDG_STATE_HOME=str(tmp_path / "x" / "state"))
    r = cluster.grun("--nowait", "--stage-in", "in.txt", "true", env=env, cwd=tmp_path, umask=0o002)
    assert r.returncode == 0, r.stderr
    cluster.grun("-q", "wait", r.stdout.decode().split()[-1])
    modes = [os.stat(tmp_path / d).st_mode & 0o777 for d in ("x", "x/state", "x/state/grun")]
    assert modes == [0o755] * 3, [oct(m) for m in modes]


def test_cpus_and_memory_options(cluster):
    r = cluster.grun("-v", "-c", "0.5", "-m", "1G", "true")
    assert r.returncode == 0, r.stderr
    record = job(cluster, job_id_from_verbose(r.stderr))
    assert (record["cpus"], record["memory"]) == (0.5, 1024)
    r = cluster.grun("-v", "-c2", "-m", "500M", "sh", "-c", 'echo "$GRUN_CPUS $GRUN_MEMORY"')
    record = job(cluster, job_id_from_verbose(r.stderr))
    assert (record["cpus"], record["memory"]) == (2.0, 500)
    assert r.stdout == b"2 500\n", "the job learns its request, as from SLURM_CPUS_PER_TASK / SLURM_MEM_PER_NODE"
    r = cluster.grun("-v", "-m", "2Gi", "true")  # (Kubernetes' spelling, as 2GiB)
    assert r.returncode == 0 and job(cluster, job_id_from_verbose(r.stderr))["memory"] == 2048, r.stderr


def test_queries_while_a_job_runs_then_kill_it(cluster, tmp_path):
    job_id = nowait(cluster, "-H", "big", "sleep", "30")
    try:
        wait_state(cluster, job_id, "running")
        r = cluster.grun("-q", "jobs", cwd=tmp_path)
        assert r.returncode == 0
        header, *rows = r.stdout.decode().splitlines()
        assert header.split() == ["ID", "USER", "STATE", "NODE", "CPUS", "MEM", "USING", "TIME", "CWD", "COMMAND"]
        row = next(row.split() for row in rows if row.split()[0] == str(job_id))
        assert row[:4] == [str(job_id), getpass.getuser(), "running", "big"]
        assert row[-2:] == ["sleep", "30"]

        r = cluster.grun("-q", "status")
        header, *rows = r.stdout.decode().splitlines()
        assert header.split()[0] == "NODE"
        status = {row.split()[0]: row.split()[1:] for row in rows}
        assert status["big"][:4] == ["up", "3/4", "7900/8000", "1"]  # (then its spool's free MB)
        assert status["small"][:4] == ["up", "1/1", "2000/2000", "0"]

        pgid = job_pid(cluster, job_id)
        r = cluster.grun("-k", str(job_id))
        assert (r.returncode, r.stderr) == (0, b"")
    finally:
        cluster.client().kill([job_id], 9)
    assert cluster.grun("-q", "wait", str(job_id)).returncode == 143
    assert job(cluster, job_id)["state"] == "killed"
    wait_for(lambda: not group_alive(pgid), 10, what="the killed job's group to be gone")

    r = cluster.grun("-q", "history")
    header, *rows = r.stdout.decode().splitlines()
    assert header.split() == ["ID", "USER", "STATE", "EXIT", "NODE", "WAIT", "WALL", "CPU", "MAXRSS", "COMMAND"]
    row = next(row.split() for row in rows if row.split()[0] == str(job_id))
    assert row[:6] == [str(job_id), getpass.getuser(), "killed", "signal", "15", "big"]
    assert row[-2:] == ["sleep", "30"]
    history = json.loads(cluster.grun("-q", "history", "--json").stdout)
    assert [j["id"] for j in history].count(job_id) == 1


def test_kill_a_queued_job_and_unknown_ids(cluster):
    blocker = nowait(cluster, "-H", "small", "sleep", "30")
    queued = nowait(cluster, "-H", "small", "true")
    try:
        wait_state(cluster, blocker, "running")
        assert job(cluster, queued)["state"] == "queued"
        r = cluster.grun("-k", str(queued), "999999")
        assert r.returncode == 1
        assert r.stderr.decode().splitlines() == ["grun: no such job 999999"]
        assert job(cluster, queued)["state"] == "killed"
        r = cluster.grun("-k", str(blocker))
        assert r.returncode == 0
    finally:
        cluster.client().kill([blocker, queued], 9)
    wait_state(cluster, blocker, "killed")
    r = cluster.grun("-k", "999999")
    assert (r.returncode, r.stderr) == (1, b"grun: no such job 999999\n")


# ---- Python --------------------------------------------------------------------------------------

def test_direct_python_use(cluster, tmp_path):
    registry.configure()  # msgpack
    Pyro5.config.BROADCAST_ADDRS = []  # a name server lookup must never fall back to broadcast
    with Pyro5.api.Proxy(f"PYRONAME:grun.master@127.0.0.1:{cluster.port}") as master:
        job_id = master.submit({"cmd": ["sh", "-c", "pwd > out; exit 4"], "cwd": str(tmp_path),
                                "uid": os.getuid(), "gid": os.getgid()})
        done = master.wait([job_id], 30)
    record = done[str(job_id)]
    assert (record["state"], record["exit"]) == ("failed", 4)
    assert (tmp_path / "out").read_text().strip() == os.path.realpath(tmp_path)


def test_the_readmes_python_example(cluster):
    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "PYRONAME" in b)
    assert len(example.strip().splitlines()) == 3
    assert "PYRONAME:grun.master@127.0.0.1:5184" in example
    code = example.replace("127.0.0.1:5184", f"127.0.0.1:{cluster.port}")
    r = subprocess.run([PY, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "'state': 'done'" in r.stdout.decode() and "'exit': 0" in r.stdout.decode()
