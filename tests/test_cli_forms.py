"""The command line as a Slurm or coreutils user expects it (QA of 2026-12-07): `grun why ...` always reaches the
verb, a stdout that is closed or full is a "write error" (rc 1) and never a traceback or lost output, the note
when a job's output cannot be had says why, `-E VAR=VALUE` sets a variable, and bad values are usage errors (2)."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

import pytest
from util import assert_one_error_line, wait_for

from grun import cli
from grun.client import job_spec
from grun.values import MAX_PRIORITY


def _commands(cluster) -> list:
    client = cluster.client()
    return [j["cmd"] for j in client.jobs() + client.history(1000)]


@pytest.mark.parametrize("args,needle", [
    (["why", "no-such-name"], "no job named 'no-such-name'"),
    (["why", "999999", "--json"], "999999"),
    (["--json", "why", "999999"], "999999"),
    (["why", "5", "6"], "why takes one job id or name"),
    (["why"], "why needs job ids"),
    (["-c1", "why", "3"], "option --cpus does not go with why"),
    (["-v", "shell"], "option --verbose does not go with shell"),
])
def test_the_short_form_of_a_verb_never_submits_its_name(cluster, args, needle):
    before = _commands(cluster)
    r = cluster.grun(*args)
    err = r.stderr.decode()
    assert r.returncode in (1, 2) and needle in err and "command not found" not in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _commands(cluster) == before, "a job was submitted"


def test_why_in_its_short_forms_answers_and_double_dash_runs_the_program(cluster):
    client = cluster.client()
    job = client.submit_spec(job_spec(["sleep", "30"], force=True, hosts="nosuchnode", name="why-forms"))
    try:
        for args in (["why", str(job)], ["why", "why-forms"], ["why", str(job), "--json"], ["--json", "why", str(job)]):
            r = cluster.grun(*args)
            assert r.returncode == 0 and b"nosuchnode" in r.stdout, (args, r.stderr)
    finally:
        client.kill([job])
    r = cluster.grun("--", "why", "3")  # `--`: the words are a command, whatever they are
    assert r.returncode == 127 and ["why", "3"] in _commands(cluster)


def test_a_verbs_name_runs_the_verb_and_kill_or_watch_is_refused_never_run(cluster):
    before = _commands(cluster)
    for args, head in ((["jobs"], b"ID "), (["status"], b"NODE "), (["history", "-c", "1"], b"ID "),
                       (["conf"], b"# grun config from ")):
        r = cluster.grun(*args)
        assert r.returncode == 0 and r.stdout.startswith(head) and r.stderr == b"", (args, r.stderr)
    assert_one_error_line(cluster.grun("hold", "999999"), "no such job 999999")
    r = cluster.grun("kill", "60")  # /bin/kill 60 on some node: whatever process has that pid there
    assert_one_error_line(r, "`grun kill 60` would run the kill program on a node; grun's kill: grun -k 60 "
                             "(the program: grun -- kill 60)")
    assert_one_error_line(cluster.grun("watch"), "grun's watch: in grun shell (the program: grun -- watch)")
    assert r.returncode == 2 and _commands(cluster) == before, "a job was submitted"
    assert cli._form({}, ["make", "all"]) == (["run", "--", "make", "all"], "grun")  # a program, not a verb
    from grun import shell, verbs  # noqa: F401  (its verbs: exit is one, whether grun.shell was imported or not)
    assert "exit" in verbs.VERBS and cli._form({}, ["exit", "3"])[0] == ["run", "--", "exit", "3"]
    assert cli._form({}, ["jobs"], escaped=True)[0] == ["run", "--", "jobs"]  # `grun -- jobs`


def test_an_array_says_where_its_output_goes_and_attach_to_it_names_a_task(cluster, tmp_path):
    r = cluster.grun("--array", "3-4", "echo", "hi", cwd=tmp_path)
    note = "grun: tasks' output is not shown here; give -o out.%a (and --err err.%a) to keep it\n"
    assert (r.returncode, r.stdout, r.stderr.decode()) == (0, b"", note)
    r = cluster.grun("--nowait", "--array", "3-4", "-o", "out.%a", "echo", "hi", cwd=tmp_path)
    array = int(r.stdout.split()[1])
    assert r.stderr == b"" and cluster.client().wait([array])
    assert (tmp_path / "out.4").read_text() == "hi\n"
    assert_one_error_line(cluster.grun("--attach", str(array)),
                          f"job {array} is an array: attach to one of its tasks, e.g. grun --attach {array}.3")
    assert cluster.grun("--attach", f"{array}.3").returncode == 0


def test_stopping_a_nodes_daemon_says_its_jobs_run_on(fresh_cluster):
    r = fresh_cluster.grun("-C", fresh_cluster.configs["small"], "-d", "-k")
    assert (r.returncode, r.stderr) == (0, b"grun: stopped; jobs running here run on: the next start adopts them\n")
    r = fresh_cluster.grun("-C", fresh_cluster.configs["master"], "-d", "-k")
    assert (r.returncode, r.stderr) == (0, b"grun: stopped\n")


def _closed_stdout(cluster, *args, stdout=None):
    """grun with its stdout closed (`>&-`), or sent to `stdout`."""
    return subprocess.run([sys.executable, "-m", "grun.cli", *args], env=cluster.env, stdout=stdout, stderr=subprocess.PIPE,
                          preexec_fn=None if stdout else lambda: os.close(1), timeout=60)


@pytest.mark.parametrize("args", [["-q", "jobs"], ["-q", "status"], ["--nowait", "true"], ["echo", "hi"], ["-V"],
                                  ["-q", "conf"]])
def test_a_closed_stdout_is_a_write_error_as_for_echo(cluster, args):
    r = _closed_stdout(cluster, *args)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("grun: write error: Bad file descriptor") and err.count("\n") == 1, err


def test_a_closed_stdout_with_nothing_to_write_is_no_error(cluster):
    r = _closed_stdout(cluster, "true")
    assert (r.returncode, r.stderr) == (0, b"")


@pytest.mark.parametrize("args", [["-q", "jobs"], ["--help"], ["seq", "1", "100000"]])
def test_a_full_stdout_is_a_write_error_as_for_seq(cluster, args):
    with open("/dev/full", "wb") as full:
        r = _closed_stdout(cluster, *args, stdout=full)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("grun: write error: No space left on device"), err
    assert "no longer kept" not in err and err.count("\n") == 1


def test_a_job_whose_output_cannot_be_written_is_killed_as_when_its_reader_goes_away(cluster):
    with open("/dev/full", "wb") as full:
        r = _closed_stdout(cluster, "-j", "full-writer", "sh", "-c", "seq 1 100000; sleep 60", stdout=full)
    assert r.returncode == 1 and r.stderr.decode().endswith("killed\n"), r.stderr
    client = cluster.client()
    job_id = next(j["id"] for j in client.jobs() + client.history(20) if j.get("name") == "full-writer")
    end = client.wait([job_id], 20)[job_id]  # (it failed of it, as of the pipe here: not cancelled, by no one)
    assert (end["state"], end["signal"]) == ("failed", 13), end


def test_a_job_whose_reader_went_away_failed_of_sigpipe_as_it_would_have_here(cluster):
    """QA: `grun seq 1 1000000 | head -1`: the job, killed with SIGPIPE by its grun for its reader gone, was recorded
    `killed, signal 13`; Slurm keeps CANCELLED for scancel. It failed, of signal 13, as it would have here."""
    subprocess.run(f"{sys.executable} -m grun.cli -j reader-gone sh -c 'echo 1; sleep 1; seq 1 100000; sleep 60' "
                   "| head -1",  # (its output after head has gone: grun writes into a pipe nobody reads)
                   shell=True, env=cluster.env, capture_output=True, timeout=60, check=True)
    client = cluster.client()
    job_id = next(j["id"] for j in client.jobs() + client.history(20) if j.get("name") == "reader-gone")
    end = client.wait([job_id], 20)[job_id]
    assert (end["state"], end["signal"]) == ("failed", 13), end


def test_one_word_naming_a_file_runs_that_file_even_with_a_space_in_its_name(cluster, tmp_path):
    """QA: `grun "./my script.sh"` ran through sh -c (`/bin/sh: 1: ./my: not found`): one word with a blank is a
    shell line, unless it names a file: the program then."""
    script = tmp_path / "my script.sh"
    script.write_text('#!/bin/sh\necho ran "$0"\n')
    script.chmod(0o755)
    r = cluster.grun("./my script.sh", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"ran ./my script.sh\n"), r.stderr
    assert cluster.grun("echo two words", cwd=tmp_path).stdout == b"two words\n"  # (no such file: a shell line)


def test_attaching_to_output_already_read_says_so(cluster):
    r = cluster.grun("--nowait", "echo", "once")
    job_id = int(r.stdout.split()[1])
    assert cluster.grun("--attach", str(job_id)).stdout == b"once\n"
    def gone():  # (the node drops it once read, when the master has the job's end too)
        r = cluster.grun("--attach", str(job_id))
        return r if r.stdout == b"" else None
    r = wait_for(gone, what="the output to be dropped")
    assert r.returncode == 0 and r.stderr.decode() == (
        f"grun: job {job_id} has ended and its output is no longer kept on {cluster.client().job(job_id)['node']} "
        "(read already, or expired)\n")


def test_env_sets_variables_and_passes_names(cluster):
    env = dict(cluster.env, PASSED="from-here")
    r = cluster.grun("-E", "X=1", "-E", "PASSED, Y=a=b,", "sh", "-c", 'echo "$X $PASSED $Y"', env=env)
    assert (r.returncode, r.stdout) == (0, b"1 from-here a=b\n"), r.stderr
    r = cluster.grun("-E", "*,X=2", "sh", "-c", 'echo "$X $PASSED"', env=env)
    assert r.stdout == b"2 from-here\n"


@pytest.mark.parametrize("args,needle", [
    (["-E", "=1", "true"], "-E"), (["-E", "1X=2", "true"], "-E"), (["-E", "A-B", "true"], "-E"),
    (["-c", "0", "true"], "-c"), (["-m", "0", "true"], "-m"), (["-p", "gpu=-1", "true"], "gpu"),
    (["-e", "cpus=0", "1"], "--cpus"),
    (["-r", str(MAX_PRIORITY + 1), "true"], f"from -{MAX_PRIORITY} to {MAX_PRIORITY}"),
])
def test_bad_option_values_are_usage_errors(cluster, args, needle):
    r = cluster.grun(*args)
    err = r.stderr.decode()
    assert r.returncode == 2 and needle in err and err.count("\n") == 1, err
    assert MAX_PRIORITY == 2 ** 31 - 1, "a 32-bit int"


def test_time_zero_is_no_limit_as_slurms(cluster):
    r = cluster.grun("--nowait", "--json", "-t", "0", "true")
    assert r.returncode == 0, r.stderr
    job = cluster.client().job(int(r.stdout.decode().split(":")[1].strip(" }\n")))
    assert not job.get("time")


def test_an_unknown_user_is_an_error_not_an_empty_table(cluster):
    for query in ("jobs", "history"):
        r = cluster.grun("-q", query, "--user", "nosuchuser")
        assert (r.returncode, r.stderr) == (1, b"grun: no such user 'nosuchuser'\n")


def test_user_takes_a_uid_as_squeue_u_does(cluster):
    job = cluster.client().submit_spec(job_spec(["sleep", "30"], name="by-uid"))
    try:
        r = cluster.grun("-q", "jobs", "--user", str(os.getuid()), "-F", "name")
        assert r.returncode == 0 and b"\nby-uid\n" in r.stdout, r.stderr
        r = cluster.grun("-q", "jobs", "--user", str(os.getuid()), "-F", "name", str(job))  # (a filter, kill's --user not)
        assert r.returncode == 0 and b"\nby-uid\n" in r.stdout, r.stderr
        r = cluster.grun("-q", "history", "--user", str(os.getuid()))
        assert r.returncode == 0, r.stderr
    finally:
        cluster.client().kill([job])
    r = cluster.grun("-q", "history", "--user", "3999999")
    assert (r.returncode, r.stderr) == (1, b"grun: no such user '3999999'\n")


def test_a_closed_stdin_gives_the_job_no_input(cluster):
    """`grun CMD <&-`: the job is submitted without input (as from a terminal), not fed an empty pipe."""
    r = subprocess.run([sys.executable, "-m", "grun.cli", "-j", "closed-stdin", "cat"], env=cluster.env,
                       capture_output=True, preexec_fn=lambda: os.close(0), timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    client = cluster.client()
    job = next(j for j in client.history(20) if j.get("name") == "closed-stdin")
    assert not job.get("stdin"), job


def _submitted(r: subprocess.CompletedProcess) -> int:
    assert r.returncode == 0 and r.stdout.startswith(b"Job_ID: "), r
    return int(r.stdout.split()[1])


def test_kill_user_kills_all_that_users_live_jobs_as_scancel_u(cluster):
    """QA: no native way to kill all one's jobs (scancel -u, qdel -u): `grun -k --user ME` kills each live one, held,
    queued, running, an array and its tasks, saying nothing of those it killed; never with ids (not a filter of them)."""
    me, client = pwd.getpwuid(os.getuid()).pw_name, cluster.client()
    named = _submitted(cluster.grun("--nowait", "-j", "kill-me-by-name", "sleep", "60"))
    assert cluster.grun("-k", "-j", "kill-me-by-name").returncode == 0  # (-k -j NAME, as before)
    wait_for(lambda: client.job(named)["state"] == "killed")
    ids = [_submitted(cluster.grun("--nowait", *args, "sleep", "60")) for args in
           ([], ["--hold"], ["--array", "1-9"], ["-c", "4"])]
    wait_for(lambda: client.job(ids[0])["state"] == "running")
    assert_one_error_line(r := cluster.grun("-k", "--user", me, str(ids[0])), "give no job ids or names with it")
    assert r.returncode == 2 and client.job(ids[0])["state"] == "running"
    assert_one_error_line(cluster.grun("-k", "--user", "nosuchuser"), "no such user 'nosuchuser'")
    assert (r := cluster.grun("-k", "--user", me)).returncode == 0 and r.stderr == b"", r
    wait_for(lambda: not client.jobs(), what="every job killed")
    assert {client.job(i)["state"] for i in ids} == {"killed"}
    assert (r := cluster.grun("-k", "--user", str(os.getuid()))).returncode == 0 and r.stderr == b"", "none: no word"
    # another's, none seen (with private_queries, whatever they have): said, not a silent success (QA); ours run on
    survivor = _submitted(cluster.grun("--nowait", "sleep", "60"))
    assert_one_error_line(r := cluster.grun("-k", "--user", "nobody"), "no live jobs of nobody that you may see")
    assert client.job(survivor)["state"] in ("queued", "dispatched", "running")
    cluster.grun("-k", str(survivor))


def test_hold_queues_a_job_held_and_a_waiting_grun_runs_it_once_released(cluster):
    """QA: sbatch -H and qsub -h had no native form: `--hold` queues the job held; `grun --hold CMD` waits (-v: says
    why) until `grun -e resume ID`, then runs it and streams its output, as srun -H."""
    client = cluster.client()
    queued = _submitted(cluster.grun("--nowait", "--hold", "true"))
    waiting = cluster.popen("-v", "--hold", "echo", "released")
    try:
        assert client.job(queued)["state"] == "held"
        job = wait_for(lambda: next((j["id"] for j in client.jobs() if j["id"] != queued), None))
        time.sleep(4)  # (the waiting grun says why after 3 s)
        assert client.job(job)["state"] == "held" and waiting.poll() is None
        assert cluster.grun("-e", "resume", str(job)).returncode == 0
        out, err = waiting.communicate(timeout=30)
        assert (waiting.returncode, out) == (0, b"released\n"), err
        assert f"grun: job {job} is held: it will not run until released with `grun -e resume {job}`." in err.decode()
    finally:
        waiting.kill()
        client.kill([queued])


def test_history_of_an_array_lists_its_tasks_as_jobs_does_its_live_ones(cluster):
    """QA: `grun -q history ARRAY` showed the array's one line: its ended tasks are listed (as sacct -j), then its own
    line once it has ended; a live array's ended tasks too, and one with none ended is said not to have finished."""
    array = _submitted(cluster.grun("--nowait", "--array", "1-3", "test $GRUN_TASK_ID != 2"))
    cluster.client().wait([array])
    r = cluster.grun("-q", "history", "-F", "id,state,exit", str(array))
    rows = [line.split() for line in r.stdout.decode().splitlines()]
    assert r.returncode == 0 and rows[0] == ["ID", "STATE", "EXIT"] and rows[-1] == [str(array), "failed", "1"], r
    assert sorted(rows[1:-1]) == [[f"{array}.1", "done", "0"], [f"{array}.2", "failed", "1"],
                                  [f"{array}.3", "done", "0"]], rows
    live = _submitted(cluster.grun("--nowait", "--array", "1-2%1", "test $GRUN_TASK_ID = 1 || sleep 60"))
    try:
        wait_for(lambda: any(j.get("task") == 2 for j in cluster.client().jobs()))
        r = cluster.grun("-q", "history", "-F", "id,state", str(live), "-c", "5")
        assert (r.returncode, r.stdout.decode().split()) == (0, ["ID", "STATE", f"{live}.1", "done"]), r
    finally:
        cluster.client().kill([live])
    held = _submitted(cluster.grun("--nowait", "--hold", "--array", "1-2", "true"))
    assert_one_error_line(cluster.grun("-q", "history", str(held)), f"job {held} has not finished (held)")
    cluster.client().kill([held])


@pytest.mark.parametrize("args", [["why"], ["-q", "wait"], ["--attach"], ["-k"], ["-e", "hold"], ["-e", "priority=3"],
                                  ["-q", "jobs"], ["-q", "history"]])
def test_every_verb_says_an_unknown_job_id_in_the_same_words(cluster, args):
    """QA: `why`, `wait` and `--attach` said "unknown job id N" where the others say "no such job N"."""
    r = cluster.grun(*args, "999999")
    assert (r.returncode, r.stdout, r.stderr) == (1, b"", b"grun: no such job 999999\n")
