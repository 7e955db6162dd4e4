"""`grun shell` (issue 6, "grun shell") on real daemons: through a pipe (scripted, no terminal) and
through a pty (pexpect): the verbs of the one table, completion, the history file, Ctrl-C and Ctrl-D,
`watch`, and a master that goes away and comes back."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pexpect
from util import job_id_from_verbose, wait_state

PY = sys.executable


def shell(cluster, script: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "grun.cli", "shell"], input=script.encode(), env=cluster.env,
                          capture_output=True, timeout=timeout, **kwargs)


# ---- through a pipe --------------------------------------------------------------------------

def test_echo_jobs_into_the_shell_prints_and_exits(cluster):
    r = subprocess.run(f"echo status | {PY} -m grun.cli shell", shell=True, env=cluster.env,
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    assert re.search(rb"^big +up +4/4", r.stdout, re.MULTILINE) and re.search(rb"^small +up", r.stdout, re.MULTILINE)


def test_a_script_of_verbs(cluster, tmp_path):
    r = shell(cluster, "# a comment\n\nsubmit -c 0.5 sh -c 'echo queued; exit 4'\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = int(re.fullmatch(rb"Job_ID: (\d+)\n", r.stdout).group(1))
    r = shell(cluster, f"wait {job_id}\n")
    assert r.returncode == 4
    r = shell(cluster, f"run echo one; echo two >&2\nrun -v sh -c 'exit 3'\nhistory -c 5\nattach {job_id}\n"
                       f"jobs\n")
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "one"
    assert any(re.match(rf"{job_id} +\S+ +failed +4 ", line) for line in lines), lines  # history: exit 4
    assert "queued" in lines, "attach replays the output"
    assert lines[-1].startswith("ID ") and lines[-1].endswith(" COMMAND"), "jobs: nothing is left running"
    assert r.stderr.decode().startswith("two\ngrun: job ")
    assert r.returncode == 0, "the status of the last verb"


def test_bad_input_is_one_line_and_the_shell_goes_on(cluster):
    r = shell(cluster, "bogus\nkill\nkill 12x\nwait 999999\nrun\nrun 'unclosed\nstatus extra\nstatus\n")
    err = r.stderr.decode().splitlines()
    assert "Traceback" not in r.stderr.decode()
    assert all(line.startswith("grun: ") for line in err), err
    assert len(err) == 7, err
    assert "bogus" in err[0] and "help" in err[0]
    assert "999999" in err[3]
    assert b"NODE" in r.stdout, "the shell went on after the errors"
    assert r.returncode == 0
    r = shell(cluster, "status\nbogus\n")
    assert r.returncode == 2, "the status of the last verb"
    r = shell(cluster, "exit 5\nstatus\n")
    assert (r.returncode, r.stdout) == (5, b"")
    assert shell(cluster, "bogus\nexit\n").returncode == 2, "exit alone: the last line's status, as sh's"


def test_help(cluster):
    r = shell(cluster, "help\nhelp kill\nhelp nope\n")
    out = r.stdout.decode()
    for verb in ("run", "submit", "jobs", "status", "history", "kill", "hold", "resume", "edit", "wait",
                 "attach", "why", "watch", "help", "exit"):
        assert re.search(rf"^  {verb} ", out, re.MULTILINE), verb
    assert re.search(r"^kill \[-n SIG\].* ID\|NAME\.\.\.\n    kill jobs", out, re.MULTILINE), out
    assert r.stderr.decode().startswith("grun: no verb or topic 'nope'")
    assert "Ctrl-D leaves" in out


def test_grun_help_spells_each_verb_as_the_command_line_takes_it(cluster):
    out = cluster.grun("help").stdout.decode()
    for verb, spelled in (("run", "grun CMD"), ("jobs", "grun jobs"), ("hold", "grun hold"), ("kill", "grun -k ID..."),
                          ("watch", "in grun shell"), ("exit", "in grun shell")):
        assert re.search(rf"^  {verb} +{re.escape(spelled)} ", out, re.MULTILINE), (verb, out)
    assert "Ctrl-D leaves" not in out, "no shell keys outside the shell"
    run = cluster.grun("help", "run").stdout.decode()
    assert "  -c, --cpus CPUS " in run and "  -t, --time TIME " in run and "--nowait" in run, run
    assert "pure code" not in (make := cluster.grun("help", "make").stdout.decode()) and "FILE.failed" in make


def test_job_control_verbs(cluster):
    """hold/resume/edit/why, as the shell runs them."""
    r = shell(cluster, "submit -H small sleep 30\nsubmit -H small sleep 30\n")
    running, queued = map(int, re.findall(rb"Job_ID: (\d+)", r.stdout))
    try:
        wait_state(cluster, running, "running")
        r = shell(cluster, f"hold {queued}\n")
        assert (r.returncode, r.stderr) == (0, b"")
        assert cluster.client().job(queued)["state"] == "held"
        r = shell(cluster, f"why {queued}\nedit priority=50 {queued}\nresume {queued}\nedit cpus=1 {running}\n")
        assert str(queued).encode() in r.stdout
        assert cluster.client().job(queued)["priority"] == 50
        assert cluster.client().job(queued)["state"] in ("queued", "dispatched", "running")
        assert r.stderr.decode().count("\n") == 1 and r.stderr.startswith(b"grun: "), "a running job cannot be edited"
        assert r.returncode == 1
    finally:
        cluster.client().kill([running, queued], 9)
        cluster.client().wait([running, queued])


def test_watch_without_a_terminal_prints_once(cluster):
    r = shell(cluster, "watch\n")
    assert r.returncode == 0
    assert b"NODE" in r.stdout and b"COMMAND" in r.stdout


# ---- through a pty ---------------------------------------------------------------------------

def _spawn(cluster, state_dir) -> pexpect.spawn:
    env = dict(cluster.env, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", XDG_STATE_HOME=str(state_dir))
    child = pexpect.spawn(PY, ["-m", "grun.cli", "shell"], env=env, timeout=20, dimensions=(50, 200))
    child.logfile_read = open(os.environ.get("SHELL_LOG", os.devnull), "ab")
    child.expect("grun>")
    return child


def test_interactive_shell(fresh_cluster, tmp_path):
    cluster = fresh_cluster
    child = _spawn(cluster, tmp_path)
    try:
        # a verb, through completion of its name
        child.send("stat\t")
        child.expect("status")
        child.sendline("")
        child.expect(r"small +up")
        child.expect("grun>")

        # Ctrl-C interrupts `run` (its job is killed), not the shell
        child.sendline("run -v sleep 60")
        child.expect(r"grun: job \d+ running")
        job_id = job_id_from_verbose(child.after)
        child.sendintr()
        child.expect(f"grun: job {job_id} killed")
        child.expect("grun>")
        wait_state(cluster, job_id, "killed")

        # job ids complete from the master's list
        child.sendline("submit sleep 60")
        child.expect(r"Job_ID: (\d+)")
        queued = int(child.match.group(1))
        time.sleep(1.5)  # the monitor refreshes its lists every second
        child.send(f"why {str(queued)[:-1]}\t")
        child.expect(f"why {queued}")
        child.sendcontrol("u")

        # Ctrl-C interrupts a `wait` too
        child.sendline(f"wait {queued}")
        time.sleep(0.5)
        child.sendintr()
        child.expect("grun: interrupted")
        child.expect("grun>")

        # and `attach`, which detaches: the job keeps running
        child.sendline(f"attach {queued}")
        time.sleep(0.5)
        child.sendintr()
        child.expect(f"detached from job {queued}")
        child.expect("grun>")
        assert cluster.client().job(queued)["state"] == "running"

        # watch: a live table until a key is pressed
        child.sendline("watch -n 0.2")
        child.expect("press any key")
        child.expect("press any key")  # redrawn
        child.send("q")
        child.expect("grun>")
        child.sendline(f"kill {queued}")
        wait_state(cluster, queued, "killed")

        # the master goes away: the prompt says so; it comes back: the shell carries on
        cluster.kill("master")
        child.expect("lost the master", timeout=10)
        child.expect("unreachable", timeout=10)
        cluster.start_master()
        child.expect("is back", timeout=20)
        cluster.wait_nodes(["big", "small"])
        child.sendline("status")
        child.expect(r"big +up")
        child.expect("grun>")

        # Ctrl-D leaves
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    history = (tmp_path / "grun" / "shell_history").read_text()
    assert "+status\n" in history and "+run -v sleep 60\n" in history

    # the history persists into the next session: Up recalls the last line
    child = _spawn(cluster, tmp_path)
    try:
        child.send("\x1b[A")
        child.expect("status")
        child.sendline("")
        child.expect(r"big +up")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
