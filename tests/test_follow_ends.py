"""What the `grun` command line tells a user at a job's end, and the ids and names it takes (QA findings of
2026-12-06): every run of a retried job reaches the user in order; an array's %N is not a limit it died of; a
job that ended without running says why; task ids (12.7) and names wherever ids are taken; values refused
at parse time in one line, saying the range."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from cluster import LocalCluster
from util import assert_one_error_line, job, job_id_from_verbose, nowait, read_line, wait_for, wait_state

from grun.client import Timeout
from grun.core.jobs import validate_spec
from grun.values import MAX_PRIORITY


def test_every_run_of_a_retried_job_reaches_the_user_in_order(cluster, tmp_path):
    count = tmp_path / "count"
    script = f"echo x >> {count}; n=$(wc -l < {count}); echo run $n; [ $n = 3 ]"
    r = cluster.grun("--retries", "3", "sh", "-c", script, stdin=None)
    assert (r.returncode, r.stdout.decode().split("\n")) == (0, ["run 1", "run 2", "run 3", ""]), r.stderr
    assert r.stderr.decode().count("it is retried: following its next run") == 2, r.stderr
    count.unlink()
    r = cluster.grun("--retries", "2", "--retry-delay", "1", "sh", "-c", script.replace("[ $n = 3 ]", "exit 3"),
                     stdin=None)
    assert (r.returncode, r.stdout.decode().split()) == (3, ["run", "1", "run", "2", "run", "3"]), r.stderr


def test_an_arrays_throttle_is_not_a_limit_it_died_of_and_a_cancelled_job_says_why(cluster):
    array = nowait(cluster, "--array", "1-2%1", "true")
    for args in (("-q", "wait", str(array)), ("--attach", f"{array}.1"), ("--attach", f"{array}.2")):
        r = cluster.grun(*args)
        assert (r.returncode, r.stderr) == (0, b""), (args, r.stderr)
    assert_one_error_line(cluster.grun("--attach", str(array)), f"job {array} is an array: attach to one of its tasks")
    failed = nowait(cluster, "false")
    r = cluster.grun("--afterok", str(failed), "echo", "x")
    assert_one_error_line(r, "cancelled: dependency", f"{failed} failed")
    waiting = nowait(cluster, "--afterok", str(failed), "true")
    for args in (("--attach", str(waiting)), ("-q", "wait", str(waiting))):
        assert_one_error_line(cluster.grun(*args), f"job {waiting} cancelled: dependency {failed} failed")


def test_task_ids_and_names_are_taken_wherever_ids_are(cluster):
    array = nowait(cluster, "--array", "1-3", "sh", "-c", "echo task $GRUN_TASK_ID; exit $GRUN_TASK_ID")
    r = cluster.grun("-q", "wait", f"{array}.2")
    assert r.returncode == 2 and b"Traceback" not in r.stderr, r.stderr
    r = cluster.grun("--attach", f"{array}.3")
    assert (r.returncode, r.stdout) == (3, b"task 3\n"), r.stderr
    assert b"has finished" in cluster.grun("why", f"{array}.1").stdout
    assert_one_error_line(cluster.grun("-q", "wait", f"{array}.9"), f"job {array} has no task 9")
    plain = nowait(cluster, "true")
    assert_one_error_line(cluster.grun("-q", "wait", f"{plain}.5"), f"job {plain} is not an array")
    blocker = nowait(cluster, "sleep", "30")
    waiting = nowait(cluster, "--after", str(blocker), "--array", "1-2", "true")
    try:  # a task not begun: wait's timeout holds (it waited for ever)
        with pytest.raises(Timeout, match=f"task {waiting}.2 has not begun yet"):
            cluster.client().wait([f"{waiting}.2"], timeout=1.5)
    finally:
        cluster.client().kill([waiting, blocker])
    job = nowait(cluster, "-j", "follow-ends-waiter", "sleep", "30")
    wait_for(lambda: cluster.client().job(job)["state"] == "running")
    assert cluster.grun("-e", "hold", "follow-ends-waiter").returncode == 0
    r = cluster.grun("-q", "why", "follow-ends-waiter")
    assert r.returncode == 0 and b"suspended" in r.stdout, r.stderr
    assert cluster.grun("-e", "resume", "follow-ends-waiter").returncode == 0
    assert_one_error_line(cluster.grun("-e", "priority=3", "follow-ends-waiter"), "only queued")
    assert cluster.grun("-k", "follow-ends-waiter").returncode == 0
    cluster.client().wait([job])


@pytest.mark.parametrize("args,env,needle", [
    (["-r", "99999999999999999999", "true"], {}, f"from {-MAX_PRIORITY} to {MAX_PRIORITY}"),
    (["-r", "9223372036854775807", "true"], {}, f"from {-MAX_PRIORITY} to {MAX_PRIORITY}"),
    (["--nowait", "true"], {"GRUN_PRIORITY": "abc"}, "bad $GRUN_PRIORITY: expected a whole number from"),
    (["--nowait", "true"], {"GRUN_PRIORITY": "99999999999999999999"}, "bad $GRUN_PRIORITY"),
    (["-e", "priority=abc", "1"], {}, "expected a whole number from"),
    (["-e", "memory=lots", "1"], {}, "memory size"),
    (["-q", "conf", "-F", "id"], {}, "option -F (--foreground or --format) does not go with -q conf"),
    (["-j", "x" * 300, "true"], {}, "at most 200 characters"),
    (["-q", "history", "-c", "-1"], {}, "expected 1 to 1000000"),
    (["-q", "jobs", "99999"], {}, "no such job 99999"),
])
def test_bad_values_are_refused_in_one_line_saying_why(cluster, args, env, needle):
    r = cluster.grun(*args, env={**cluster.env, **env})
    assert_one_error_line(r, needle)
    assert b"Job_ID" not in r.stdout


def test_the_priority_range_is_the_masters():
    assert validate_spec({"cmd": ["-"], "priority": MAX_PRIORITY})["priority"] == MAX_PRIORITY
    assert validate_spec({"cmd": ["-"], "priority": -MAX_PRIORITY})["priority"] == -MAX_PRIORITY
    for outside in (MAX_PRIORITY + 1, -MAX_PRIORITY - 1):
        with pytest.raises(ValueError):
            validate_spec({"cmd": ["-"], "priority": outside})


def test_a_retry_reads_its_input_file_again_and_input_from_a_pipe_is_refused_retries(cluster, tmp_path):
    data, tried = tmp_path / "data", tmp_path / "tried"
    data.write_bytes(b"x\n" * 100000)
    script = f"echo lines=$(wc -l); [ -e {tried} ] || {{ touch {tried}; exit 1; }}"
    with open(data, "rb") as f:  # (QA: the retry read an empty stdin, printed lines=0 and passed)
        r = cluster.grun("--retries", "1", "sh", "-c", script, stdin=f)
    assert (r.returncode, r.stdout) == (0, b"lines=100000\nlines=100000\n"), r.stderr
    r = cluster.grun("--retries", "1", "sh", "-c", script, input=b"x\n")
    assert_one_error_line(r, "--retries: the job's input is a pipe", "< FILE")


def test_a_job_at_its_own_time_limit_is_not_retried_and_an_array_says_why_its_first_task_failed(cluster, tmp_path):
    runs = tmp_path / "runs"
    r = cluster.grun("--retries", "1", "-t", "1s", "sh", "-c", f"echo run >> {runs}; sleep 5", stdin=None)
    assert r.returncode == 124 and runs.read_text() == "run\n", r.stderr
    assert b"is not retried: it reached its time limit, as a retry would" in r.stderr, r.stderr
    r = cluster.grun("--array", "1-2", "-o", "/nonexist/x.%a", "true")
    assert_one_error_line(r, "2 of 2 tasks failed", ".1: cannot open /nonexist/x.1: No such file or directory")


def _started(cluster, *args: str, **kwargs) -> tuple[subprocess.Popen, int]:
    """A `grun -v ARGS` whose job runs, and the job's id (from its `queued`, then `running on` lines)."""
    proc = cluster.popen("-v", *args, **kwargs)
    read_line(proc.stderr, 20)
    return proc, job_id_from_verbose(read_line(proc.stderr, 20))


def test_ctrl_c_asks_for_the_kill_and_follows_the_job_to_its_real_end(cluster):
    """QA: Ctrl-C on `grun CMD` said "killed" and exited at once: a trap's last words never came, a job that ignores
    INT still ran (until SIGKILL, 5 s later), one that had already ended was said killed. The kill is asked, the job
    followed to its real end, which is said (130 if our kill ended it); a second Ctrl-C stops waiting. grun then dies of
    the SIGINT (not exit 130), as srun and sleep do: a bash script stops only if its child did (QA)."""
    trapper, jid = _started(cluster, "sh", "-c", "trap 'sleep 1; echo got INT >&2; exit 3' INT; echo ready; "
                                                 "while :; do sleep 0.1; done")
    assert read_line(trapper.stdout, 20) == b"ready\n"
    trapper.send_signal(signal.SIGINT)
    out, err = trapper.communicate(timeout=30)
    assert trapper.returncode == -signal.SIGINT and err.endswith(f"got INT\ngrun: job {jid} killed\n".encode()), err
    assert job(cluster, jid)["state"] == "killed"

    deaf, jid = _started(cluster, "sh", "-c", "trap '' INT; echo ready; sleep 60")
    assert read_line(deaf.stdout, 20) == b"ready\n"
    deaf.send_signal(signal.SIGINT)
    assert b"Ctrl-C again: stop waiting" in read_line(deaf.stderr, 20)
    out, err = deaf.communicate(timeout=30)  # (its node's SIGKILL, 5 s after the INT it ignores)
    assert deaf.returncode == -signal.SIGINT and err.endswith(f"grun: job {jid} killed\n".encode()), err
    assert job(cluster, jid)["state"] == "killed"  # (when grun said so: not still running)

    deaf, jid = _started(cluster, "sh", "-c", "trap '' INT; echo ready; sleep 60")
    assert read_line(deaf.stdout, 20) == b"ready\n"
    deaf.send_signal(signal.SIGINT)
    read_line(deaf.stderr, 20)
    deaf.send_signal(signal.SIGINT)
    out, err = deaf.communicate(timeout=30)  # (not waiting for its end: not said killed, as when it waits)
    assert deaf.returncode == -signal.SIGINT and err.endswith(f"grun: job {jid} may still be running: grun -q wait {jid} gives "
                                                   "its end\n".encode()), err
    wait_state(cluster, jid, "killed")

    ended, jid = _started(cluster, "sh", "-c", "sleep 2; echo bye", stdin=subprocess.DEVNULL)
    ended.send_signal(signal.SIGSTOP)  # (its grun hears the Ctrl-C only once the job has ended: a kill too late)
    try:
        wait_state(cluster, jid, "done")
        ended.send_signal(signal.SIGINT)
    finally:
        ended.send_signal(signal.SIGCONT)
    out, err = ended.communicate(timeout=30)
    assert (ended.returncode, out) == (0, b"bye\n"), err
    assert err.endswith(f"grun: job {jid} ended done 0 before the kill\n".encode()), err


def test_a_grun_whose_job_is_re_queued_after_its_output_began_stops_there_and_attach_follows_the_next_run(tmp_path):
    """QA: a job re-queued (its node lost) after part of its output reached `grun CMD > out`: grun followed the next
    run, whose output starts over, into the same stdout (1 2 3 4 5 1 2 3 ... 10), exit 0. It says so and exits 255
    (as srun fails on NODE_FAIL), the next run's input ended; `grun --attach` follows that run. A job re-queued before
    any of its output reached grun is followed to its next run's end, as before."""
    c = LocalCluster(nodes={n: {"cpus": 1, "memory": 1000, "heartbeat": 0.5} for n in ("a", "b")},
                     master_extra={"node_timeout": 3}).start()
    (given := tmp_path / "in").write_text("x\n")
    try:
        for before in ("seq 1 2; ", ""):
            with open(given, "rb") as stdin:  # (a file: re-read by a next run; a pipe's job is not re-run, test_input_cut)
                proc, jid = _started(c, "sh", "-c", f"{before}sleep 6; cat; seq 3 4", stdin=stdin)
            if before:
                assert read_line(proc.stdout, 20) == b"1\n"
            first = job(c, jid)["node"]
            c.procs[first].send_signal(signal.SIGSTOP)
            try:
                wait_for(lambda jid=jid: job(c, jid).get("attempt") == 2, 20, what="the job re-queued and run again")
            finally:
                c.procs[first].send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=60)
            said = f"job {jid} was re-queued (node {first} lost".encode()
            if before:
                assert (proc.returncode, out) == (255, b"2\n"), err  # (after the "1" read above)
                assert said in err and f"grun --attach {jid} does".encode() in err, err
                r = c.grun("--attach", str(jid))
                assert (r.returncode, r.stdout) == (0, b"1\n2\n3\n4\n"), r.stderr
            else:
                assert (proc.returncode, out) == (0, b"x\n3\n4\n"), err  # (its input read again from the start)
                assert said in err and b"its input is not sent again" not in err, err
    finally:
        c.stop()


def test_sighup_on_grun_leaves_its_job_running_as_kill_9_does(cluster):
    """QA: SIGHUP (a dropped ssh session) ends grun, 129, and its job runs on: README says so, by INT and TERM."""
    hup, jid = _started(cluster, "sh", "-c", "echo ready; sleep 2; echo bye")
    assert read_line(hup.stdout, 20) == b"ready\n"
    hup.send_signal(signal.SIGHUP)
    assert hup.wait(10) == -signal.SIGHUP and job(cluster, jid)["state"] == "running"
    assert cluster.grun("--attach", str(jid)).stdout == b"ready\nbye\n"


def test_ctrl_c_stops_the_bash_script_that_runs_grun(cluster, tmp_path):
    """QA: Ctrl-C on a workflow script stopped `grun CMD` (exit 130) but the script went on to its next steps: bash
    stops a script at SIGINT only if its child died of it, as `sleep` or srun do. grun now dies of the SIGINT."""
    script = tmp_path / "wf.sh"
    script.write_text(f"{sys.executable} -m grun.cli sh -c 'echo ready; sleep 60'; echo after $?\n")
    proc = subprocess.Popen(["bash", str(script)], env=cluster.env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert read_line(proc.stdout, 20) == b"ready\n"
        os.killpg(proc.pid, signal.SIGINT)  # (a terminal's Ctrl-C: the script and grun)
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert (proc.returncode, out) == (-signal.SIGINT, b""), err
