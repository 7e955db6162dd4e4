"""`grun --pty CMD` (grun.pty_job) on real daemons, from a real terminal (pexpect's): the job's own tty, its window
size and its changes, Ctrl-C and Ctrl-\\ reaching the job, the job's exit code, and our terminal as it was after every
end (the job's, Ctrl-\\, grun killed with TERM); the program and all it starts in the job's session, where hold, kill
and the job's end reach them; srun --pty; and the command lines refused."""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time

import pexpect
import psutil
import pytest
from cluster import LocalCluster
from util import assert_one_error_line, wait_for, wait_state

GRUN, PROMPT = f"{shlex.quote(sys.executable)} -m grun.cli", "@pty@ "


def session(cluster, tmp_path, command: str) -> pexpect.spawn:
    """`command` run by sh on a terminal of 24x80, between two saves of that terminal's settings (`stty -g`), its exit
    code said after it ("rc=N")."""
    line = f"stty -g > before; {command}; echo rc=$?; stty -g > after"
    child = pexpect.spawn("/bin/sh", ["-c", line], env=dict(cluster.env, PS1=PROMPT, TERM="xterm"), cwd=str(tmp_path),
                          timeout=30, dimensions=(24, 80))
    child.logfile_read = open(tmp_path / "session.log", "ab")
    return child


def ended(child: pexpect.spawn, tmp_path, code: int) -> None:
    """The session's grun has exited `code`, and left the terminal's settings as they were before it."""
    child.expect(f"rc={code}\r\n")
    child.expect(pexpect.EOF)
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()


def test_a_shell_on_a_terminal_of_its_own(cluster, tmp_path):
    child = session(cluster, tmp_path, f"{GRUN} --pty -E PS1 sh")
    try:
        child.expect(PROMPT)
        child.sendline("tty; stty size")
        child.expect(r"/dev/pts/\d+\r\n24 80\r\n")
        child.setwinsize(30, 100)  # followed: SIGWINCH, a frame on the job's stdin
        child.sendline("stty size")
        child.expect("30 100\r\n")
        child.sendline("sh -c 'echo $((6 * 7)); exec sleep 100'")
        child.expect("42\r\n")  # (sleep is starting: its echoed line alone would be no proof)
        child.sendintr()  # Ctrl-C: a key for the job's terminal, which interrupts sleep, not grun
        child.expect(PROMPT)
        child.sendline("echo alive")
        child.expect("alive\r\n")
        child.sendline("exit 3")
        ended(child, tmp_path, 3)
    finally:
        child.close(force=True)


@pytest.mark.parametrize("how", ["quit", "term"])
def test_the_terminal_is_restored_however_grun_ends(cluster, tmp_path, how):
    child = session(cluster, tmp_path, f"{GRUN} --pty sh -c 'echo started; exec sleep 100'")
    try:
        child.expect("started\r\n")
        if how == "quit":  # Ctrl-\: SIGQUIT for sleep, on its node
            child.sendcontrol("\\")
            return ended(child, tmp_path, 128 + signal.SIGQUIT)
        grun = wait_for(lambda: subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True).stdout.split(),
                        what="grun's pid")
        subprocess.run(["kill", "-TERM", grun[0]], check=True)  # the job is killed with it
        child.expect(r"job \d+ killed")
        ended(child, tmp_path, 128 + signal.SIGTERM)
    finally:
        child.close(force=True)


def test_signals_to_the_job_reach_its_program(cluster, tmp_path):
    """`grun -k -n USR1`: to the program on the pty (in a process group of its own, outside the job's), once (the
    wrapper passed on what the node's killpg had sent it already: twice, a review)."""
    loop = ('n=0; got() { n=$((n+1)); echo "got USR1 $n"; }; trap got USR1; trap "exit 7" TERM; echo started; '
            'while :; do sleep 0.1; done')
    child = session(cluster, tmp_path, f"{GRUN} --pty -v sh -c '{loop}'")
    try:
        job_id = _started(child)
        assert cluster.grun("-k", "-n", "USR1", job_id).returncode == 0
        child.expect("got USR1 1\r\n")
        assert child.expect(["got USR1 2", pexpect.TIMEOUT], timeout=1.5) == 1, "delivered twice"
        assert cluster.grun("-k", job_id).returncode == 0
        ended(child, tmp_path, 7)
    finally:
        child.close(force=True)


def _running(path) -> int | None:
    """The pid written in `path`, if that process runs (a zombie has ended); None once it does not."""
    with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError, ValueError):
        pid = int(path.read_text())
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return pid
    return None


def _killed(path) -> None:
    """(When a test failed: what it left running.)"""
    with contextlib.suppress(OSError, TypeError):
        os.kill(_running(path), signal.SIGKILL)


def _started(child) -> str:
    """The id of the job `grun --pty -v` runs, once its program said "started"."""
    child.expect(r"grun: job (\d+) running")
    job_id = child.match.group(1).decode()
    child.expect("started\r\n")
    return job_id


def test_grun_k_kills_a_program_on_the_terminal_that_ignores_term_and_hup(cluster, tmp_path):
    """The program's process group is not the job's, but it is in the job's session: TERM, then KILL reach it."""
    loop = f'trap "" TERM HUP; echo $$ > {tmp_path}/pid; echo started; while :; do sleep 0.1; done'
    child = session(cluster, tmp_path, f"{GRUN} --pty -v sh -c '{loop}'")
    try:
        job_id = _started(child)
        assert cluster.grun("-k", job_id).returncode == 0
        child.expect(pexpect.EOF, timeout=30)
        wait_for(lambda: _running(tmp_path / "pid") is None, 10, what="the program to be killed")
    finally:
        child.close(force=True)
        _killed(tmp_path / "pid")


def test_hold_suspends_the_program_on_the_terminal_and_resume_continues_it(cluster, tmp_path):
    ticks = tmp_path / "ticks"
    loop = f"echo $$ > {tmp_path}/pid; echo started; i=0; while :; do i=$((i+1)); echo $i > {ticks}; sleep 0.2; done"
    child = session(cluster, tmp_path, f"{GRUN} --pty -v sh -c '{loop}'")
    try:
        job_id = _started(child)
        assert cluster.grun("-e", "hold", job_id).returncode == 0
        wait_state(cluster, int(job_id), "suspended")
        time.sleep(0.5)
        count = ticks.read_text()
        time.sleep(1)
        assert ticks.read_text() == count, "the suspended job's program ran on"
        assert cluster.grun("-e", "resume", job_id).returncode == 0
        wait_for(lambda: ticks.read_text() != count, 10, what="the resumed program to tick again")
        assert cluster.grun("-k", job_id).returncode == 0
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
        _killed(tmp_path / "pid")


@pytest.mark.parametrize("shell", ["sh", "bash --norc"])
def test_what_a_shell_on_the_terminal_left_running_ends_with_the_job(cluster, tmp_path, shell):
    """`sleep 777 &` in an interactive shell: a process group of its own (job control), in the job's session."""
    child = session(cluster, tmp_path, f"{GRUN} --pty -E PS1 {shell}")
    try:
        child.expect(PROMPT)
        child.sendline(f"sleep 777 & echo $! > {tmp_path}/pid")
        child.expect(PROMPT)
        wait_for(lambda: _running(tmp_path / "pid"), 10, what="the background sleep")
        child.sendline("exit")
        ended(child, tmp_path, 0)
        wait_for(lambda: _running(tmp_path / "pid") is None, 10, what="the background sleep to be killed")
    finally:
        child.close(force=True)
        _killed(tmp_path / "pid")


def test_a_signal_after_the_terminal_lost_its_session_reaches_the_program_alone():
    """(The pty's foreground group is 0 then, and os.killpg(0, sig) would signal the job's side itself, over and over:
    as the node's SIGCONT did after each kill once the program had ended.) The job's side alone, in a session of its
    own, as its node starts it, signalled as the node does (grun.spawner.killpg: each group of its session, once)."""
    from grun.spawner import killpg
    code = ("import fcntl, signal, termios, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "fcntl.ioctl(0, termios.TIOCNOTTY); print('detached', flush=True); time.sleep(30)")
    job = subprocess.Popen([sys.executable, "-m", "grun.pty_job", "24x80", sys.executable, "-c", code],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert job.stdout.readline() == b"detached\r\n"
        assert killpg(job.pid, signal.SIGTERM)
        assert (job.wait(timeout=20), job.stderr.read()) == (128 + signal.SIGTERM, b"")
    finally:
        job.kill()
        job.wait()


def test_the_node_lost(tmp_path):
    """Its node gone, the job is not run again elsewhere (lost), grun says so on lines of their own (\\r\\n on the raw
    terminal) and ends with our terminal restored."""
    with LocalCluster({"lone": {"cpus": 1, "memory": 1000}}, master_extra={"node_timeout": 2}) as cluster:
        child = session(cluster, tmp_path, f"{GRUN} --pty sh -c 'echo started; exec sleep 100'")
        try:
            child.expect("started\r\n")
            cluster.kill("lone")
            child.expect(r"grun: job \d+ lost: node lone lost \(silent for \d+ s\); if its node comes back with its "
                         r"end, grun -q wait \d+ gives its exit code\r\n")
            ended(child, tmp_path, 255)
        finally:
            child.close(force=True)


def test_srun_pty(cluster, tmp_path):
    bin_dir = tmp_path / "bin"
    install = "import sys; from grun.integrate import install_shims; sys.exit(install_shims(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", install, "install", str(bin_dir)], check=True,
                   env=dict(cluster.env, PATH=f"{bin_dir}:/nonexistent"),  # (not shadowing this machine's Slurm)
                   capture_output=True)
    child = session(cluster, tmp_path, f"{bin_dir}/srun --pty sh -c 'tty; exit 4'")
    try:
        child.expect(r"/dev/pts/\d+\r\n")
        ended(child, tmp_path, 4)
    finally:
        child.close(force=True)


def test_refused(cluster, tmp_path):
    for args, words in ((["--pty", "sh"], "--pty needs a terminal on stdin"),
                        (["--pty", "--nowait", "sh"], "--pty does not go with --nowait"),
                        (["--pty", "--array", "1-2", "sh"], "--pty does not go with --array"),
                        (["--pty", "-o", "out", "sh"], "--pty does not go with --out"),
                        (["submit", "--pty", "sh"], "--pty does not go with --nowait")):
        r = cluster.grun(*args, stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert_one_error_line(r, words)
        assert r.returncode == 2


def test_jobs_and_history_show_what_runs_on_the_terminal_not_its_wrapper():
    from grun.tables import command_text
    wrapper = [sys.executable, "-m", "grun.pty_job", "24x80"]
    assert command_text({"cmd": [*wrapper, "vim", "a b"]}) == "vim 'a b'"
    assert command_text({"cmd": [*wrapper, "/bin/sh", "-c", "ls | wc -l"]}) == "ls | wc -l"
