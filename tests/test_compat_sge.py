"""SGE's commands (grun/compat_sge.py) as an SGE user runs them, against a real cluster: whole-word options,
-b y through the shell, qstat -j and qacct -j on ended jobs and arrays, -hold_jid's ids and names, qdel's
words, the array variables. (The first SGE tests are in tests/test_compat.py, whose `shims` this module uses.)"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from test_compat import counted, shims, wait_end  # noqa: F401 (shims: a fixture)
from util import wait_for

from grun import compat
from grun.client import current_user, job_spec
from grun.compat_sge import QSUB


def test_qsub_options_are_whole_words():
    # getopt's -XV and -nP are not SGE's: -verify was read as -v erify, -hold_jid_ad as -h -o ld_jid_ad
    assert compat.parse(["-hold_jid_ad", "3", "-t", "1-2", "x.sh"], QSUB, glued=False) == (
        {"hold_jid_ad": ["3"], "array": ["1-2"]}, ["x.sh"])
    for word in ("-verify", "-binding", "-jc", "-jsv", "-cwdx", "-Nname"):
        with pytest.raises(compat.Refused, match=f"unsupported option {word}$"):
            compat.parse([word, "v", "x.sh"], QSUB, glued=False)
    with pytest.raises(compat.Refused, match="line 2: unsupported option -verify"):
        compat.directives("#!/bin/sh\n#$ -verify\n", "#$", QSUB, {}, glued=False)


def test_qsub_refuses_options_it_does_not_know_and_submits_nothing(cluster, shims, tmp_path):  # noqa: F811
    (tmp_path / "t.sh").write_text("#!/bin/sh\ntouch ran\n")
    before = len(cluster.client().history(1000))
    for args, option in ((["-verify", "-cwd"], "-verify"), (["-binding", "linear:1"], "-binding"),
                         (["-jc", "short"], "-jc"), (["-jsv", "x"], "-jsv")):
        r = shims("qsub", *args, "t.sh", cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"qsub: error: unsupported option {option}\n"), args
    (tmp_path / "d.sh").write_text("#!/bin/sh\n#$ -cwd\n#$ -verify\ntouch ran\n")
    r = shims("qsub", "d.sh", cwd=tmp_path)
    assert r.returncode == 1 and "line 3: unsupported option -verify" in r.stderr and not r.stdout
    for args, words in ((["-t", "1-3%2"], "-t 1-3%2: expected n[-m[:s]]"), (["-t", "0-3"], "-t 0-3"),
                        (["-t", "1-200000"], "-t 1-200000: at most 100,000 tasks"),
                        (["-hold_jid_ad", "1"], "-hold_jid_ad: this job and the jobs it names must be arrays"),
                        (["-b", "x"], "-b takes y or n, got 'x'"), (["-j", "maybe"], "-j takes y or n")):
        r = shims("qsub", *args, "t.sh", cwd=tmp_path)
        assert r.returncode == 1 and words in r.stderr and not r.stdout, (args, r.stderr)
    assert len(cluster.client().history(1000)) == before and not cluster.client().jobs()
    assert not (tmp_path / "ran").exists()


def test_qsub_binary_command_lines_go_through_the_shell_with_the_array_variables(cluster, shims, tmp_path):  # noqa: F811
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "py.txt", "-b", "y", "python3 -c 'print(42)'",
              cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "py.txt").read_text() == "42\n", r.stderr
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "t$TASK_ID.txt", "-t", "2-7:2", "-b", "y",
              "echo $SGE_TASK_ID $SGE_TASK_FIRST $SGE_TASK_LAST $SGE_TASK_STEPSIZE", "$JOB_NAME", "a  b", cwd=tmp_path)
    array = int(r.stdout.split()[2].split(".")[0])
    assert r.stdout.startswith(f'Your job-array {array}.2-6:2 ("echo") has been submitted'), r.stdout  # (SGE: 7 -> 6)
    assert [(tmp_path / f"t{t}.txt").read_text() for t in (2, 4, 6)] == [f"{t} 2 6 2 echo a  b\n" for t in (2, 4, 6)]
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "n.txt", "-shell", "n", "-b", "y",
              "echo", "$SGE_TASK_FIRST", cwd=tmp_path)  # exec'd: no shell, no expansion
    assert r.returncode == 0 and (tmp_path / "n.txt").read_text() == "$SGE_TASK_FIRST\n"
    (tmp_path / "s.sh").write_text("#!/bin/sh\necho $SGE_TASK_ID $SGE_TASK_FIRST $SGE_TASK_LAST $SGE_TASK_STEPSIZE\n")
    r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", "s.txt", "s.sh", cwd=tmp_path)
    assert (tmp_path / "s.txt").read_text() == "undefined undefined undefined undefined\n"


def test_qstat_j_knows_only_live_jobs_and_qacct_j_an_array_by_task(cluster, shims, tmp_path):  # noqa: F811
    r = shims("qsub", "-terse", "-cwd", "-h", "-t", "1-3", "-b", "y", "exit $((SGE_TASK_ID - 1))", cwd=tmp_path)
    array = int(r.stdout.split(".")[0])
    assert "job_number:" in shims("qstat", "-j", str(array)).stdout  # (held: under load a running one ended first)
    assert shims("qrls", str(array)).returncode == 0
    wait_end(cluster, array)
    r = shims("qstat", "-j", str(array))  # ended: as SGE, gone (`qstat -j $id || echo done`)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"Following jobs do not exist: {array}\n")
    r = shims("qacct", "-j", str(array))
    blocks = [dict(line.split(None, 1) for line in block.strip().splitlines()) for block in r.stdout.split("=" * 62)[1:]]
    assert r.returncode == 0 and [(b["jobnumber"], b["taskid"], b["failed"], b["exit_status"]) for b in blocks] == [
        (str(array), str(t), "0", str(t - 1)) for t in (1, 2, 3)], r.stdout
    # several ids at once (one look at the history for them all): each its blocks, in the order named
    plain = int(shims("qsub", "-terse", "-cwd", "-b", "y", "true", cwd=tmp_path).stdout)
    wait_end(cluster, plain)
    r = shims("qacct", "-j", f"{plain},99999,{array}")
    blocks = [dict(line.split(None, 1) for line in block.strip().splitlines()) for block in r.stdout.split("=" * 62)[1:]]
    assert [(b["jobnumber"], b["taskid"]) for b in blocks] == [(str(plain), "undefined")] + [
        (str(array), str(t)) for t in (1, 2, 3)], r.stdout
    assert (r.returncode, r.stderr) == (1, "error: job id not found: 99999\n"), r.stderr


def test_hold_jid_of_no_job_is_no_hold_and_hold_jid_ad_waits_for_the_array(cluster, shims, tmp_path):  # noqa: F811
    # SGE: a -hold_jid naming no job (an id long gone, a name no job has) holds nothing; neither is an error
    r = shims("qsub", "-terse", "-cwd", "-hold_jid", "99999,nosuchname", "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr, r.stderr
    job = wait_end(cluster, int(r.stdout))
    assert job["state"] == "done" and not job.get("deps")
    first = shims("qsub", "-terse", "-cwd", "-t", "1-2", "-b", "y", "sleep 1; echo $SGE_TASK_ID >> order", cwd=tmp_path)
    first = int(first.stdout.split(".")[0])
    r = shims("qsub", "-terse", "-cwd", "-t", "1-2", "-hold_jid_ad", str(first), "-b", "y", "echo b >> order",
              cwd=tmp_path)
    assert r.returncode == 0 and f"each task waits for all the tasks of {first}" in r.stderr, r.stderr
    second = int(r.stdout.split(".")[0])
    r = shims("qsub", "-terse", "-t", "1-3", "-hold_jid_ad", str(first), "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 1 and "same -t range" in r.stderr and not r.stdout
    wait_end(cluster, second)
    assert sorted((tmp_path / "order").read_text().split()[:2]) == ["1", "2"]  # both of the first, then ours
    r = shims("qsub", "-l", "arch=x", "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 1 and "--" not in r.stderr and "arch" in r.stderr, r.stderr  # (no grun option named)


def test_qdel_names_jobs_and_array_tasks_as_sge_does(cluster, shims, tmp_path):  # noqa: F811
    me, client = current_user(), cluster.client()
    array = int(shims("qsub", "-terse", "-t", "1-3", "-tc", "2", "-b", "y", "sleep 30", cwd=tmp_path).stdout.split(".")[0])
    held = int(shims("qsub", "-terse", "-h", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len([j for j in client.jobs() if j.get("array") == array
                                               and j["state"] == "running"]) < 2:
        time.sleep(0.1)
    r = shims("qdel", f"{array}.2")
    assert r.stdout == f"{me} has registered the job-array task {array}.2 for deletion\n", r.stdout
    deadline = time.monotonic() + 20  # its place goes to task 3
    while time.monotonic() < deadline and not [j for j in client.jobs() if j.get("array") == array
                                               and j.get("task") == 3 and j["state"] == "running"]:
        time.sleep(0.1)
    r = shims("qdel", "-u", me, "-u", "nobody")  # (every -u, as SGE's)
    assert sorted(r.stdout.splitlines()) == sorted([f"{me} has registered the job-array task {array}.{t} for deletion"
                                                   for t in (1, 3)] + [f"{me} has deleted job {held}"]), r.stdout
    assert [wait_end(cluster, i)["state"] for i in (array, held)] == ["killed", "killed"]


def test_qsub_v_sets_variables_and_v_passes_ours(cluster, shims, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OURS", "ours")  # (not one grun passes by default: -V's)
    for args, seen in (([], "1 x=y \n"), (["-V"], "1 x=y ours\n")):
        r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", f"v{len(args)}.txt", "-v", "A=1,B=x=y", *args,
                  "-b", "y", 'echo "$A $B $OURS"', cwd=tmp_path)
        assert r.returncode == 0 and (tmp_path / f"v{len(args)}.txt").read_text() == seen, (args, r.stderr)


def test_array_tasks_and_reruns_add_to_one_output_file_as_sges_do(cluster, shims, tmp_path):  # noqa: F811
    # SGE opens -o files O_APPEND without O_TRUNC: each task (and each rerun) adds its lines; they overwrote each other
    command = "echo task $SGE_TASK_ID; sleep 1; echo task $SGE_TASK_ID done"
    for runs in (1, 2):
        r = shims("qsub", "-sync", "y", "-cwd", "-t", "1-6", "-o", "shared.log", "-j", "y", "-b", "y", command,
                  cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        lines = (tmp_path / "shared.log").read_text().splitlines()
        assert sorted(lines) == sorted([f"task {t}{done}" for t in range(1, 7) for done in ("", " done")] * runs)


def test_qsub_takes_what_nextflow_and_labs_write_and_refuses_what_it_cannot_do(cluster, shims, tmp_path):  # noqa: F811
    (tmp_path / "nf.sh").write_text(
        "#!/bin/bash\n#$ -N nf-task\n#$ -cwd\n#$ -j y\n#$ -notify\n#$ -l h_rss=300M,mem_free=300M\n#$ -l slots=2\n"
        "#$ -m bea -M me@lab.org\n#$ -p -5\n#$ -R y\n#$ -w e\n#$ -now n\n#$ -js 3\n#$ -ckpt none\n"
        "#$ -l h_cpu=1:00:00,h_fsize=1M,h_stack=16M\nulimit -t; ulimit -f; ulimit -s\n"
        "trap '' XFSZ; head -c 2000000 /dev/zero 2>/dev/null > big || echo fsize\n")
    r = shims("qsub", "-terse", "-sync", "y", "-o", "nf.log", "nf.sh", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split(" ignored")[0] for line in r.stderr.splitlines()] == [
        f"qsub: note: {flag}" for flag in ("-m", "-M", "-js", "-ckpt")], r.stderr
    job = wait_end(cluster, int(r.stdout.split()[0]))  # (memory per slot; priority: grun's default, 20, less 5)
    assert job["time_signal"] == [signal.SIGKILL, 0]  # SGE's KILL at h_rt (-notify's USR2 before it: the job's own)
    assert (job["cpus"], job["memory"], job.get("memory_set"), job["priority"]) == (2, 600, True, 15)
    assert (tmp_path / "nf.log").read_text().splitlines() == ["3600", "1024", "16384", "fsize"]  # (bash's: KB)
    assert os.path.getsize(tmp_path / "big") == 1 << 20
    # mem_free alone: a request (reserved), not a limit, and learning (after 3 runs) leaves it; a slot range: its
    # lowest (grun gives a job a fixed number)
    for run in range(4):
        r = shims("qsub", "-terse", "-sync", "y", "-cwd", "-j", "y", "-o", f"free{run}", "-l", "mem_free=1G", "-pe",
                  "smp", "2-4", "-b", "y", "ulimit -d", cwd=tmp_path)
        job = wait_end(cluster, int(r.stdout.split()[0]))
        assert (r.returncode, job["cpus"], job["memory"], job.get("memory_limit")) == (0, 2, 2048, None), r.stderr
        assert (tmp_path / f"free{run}").read_text() == "unlimited\n"
    held = int(shims("qsub", "-terse", "-h", "-cwd", "-l", "mem_free=1G", "-b", "y", "true", cwd=tmp_path).stdout)
    assert cluster.grun("-e", "priority=5", str(held)).returncode == 0  # an edit keeps its memory (and no limit)
    job = cluster.client().job(held)
    assert (job["memory"], job.get("reserve_only"), job["priority"]) == (1024, True, 5)
    assert cluster.grun("-k", str(held)).returncode == 0
    before = len(cluster.client().history(1000))
    for args, words in ((["-a", "202612011200"], "-a: grun cannot delay a job's start"),
                        (["-l", "exclusive=true"], "-l exclusive: grun has no whole-node request"),
                        (["-now", "y"], "-now y: grun queues"), (["-w", "v"], "-w v: grun does not verify"),
                        (["-w", "x"], "-w takes e, w, n or v"), (["-N", "a/b"], "-N 'a/b': a job name has no"),
                        (["-N", "my job"], "-N 'my job'"), (["-q", "all.q@@group"], "no node matches hosts '@group'"),
                        (["-pe", "smp", "4-2"], "-pe smp 4-2: expected"), (["-p", "x"], "-p x: expected a number"),
                        (["-pe", "smp", ""], "-pe smp : expected"), (["-t", "1-2", "-tc", "x"], "-tc x: expected a number"),
                        (["-b", "y", " "], "-b y needs a command")):
        r = shims("qsub", *args, "-b", "y", "true", cwd=tmp_path)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1 and not r.stdout, (args, r.stderr)
    assert len(cluster.client().history(1000)) == before


def test_qsub_pins_jobs_to_the_hosts_its_queue_and_resources_name(cluster, shims, tmp_path):  # noqa: F811
    # -q all.q@small was dropped ("-q ignored") and the job ran on big
    for args, node in ((["-q", "all.q@small"], "small"), (["-q", "*@big"], "big"), (["-l", "h=sm*"], "small"),
                       (["-l", "hostname=nope|big"], "big"), (["-q", "all.q@small,all.q@big", "-pe", "smp", "2"], "big")):
        r = shims("qsub", "-terse", "-sync", "y", *args, "-b", "y", "true", cwd=tmp_path)
        assert r.returncode == 0 and not r.stderr, (args, r.stderr)
        assert wait_end(cluster, int(r.stdout.split()[0]))["node"] == node, args


def test_ctrl_c_on_qsub_sync_kills_its_job_and_a_jobs_tmpdir_goes_at_its_end(cluster, shims, tmp_path):  # noqa: F811
    qsub = subprocess.Popen([str(shims.bin / "qsub"), "-terse", "-sync", "y", "-b", "y", "sleep 30"], env=cluster.env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = int(qsub.stdout.readline())
    cluster.client().wait_started(job_id)
    qsub.send_signal(signal.SIGINT)
    assert qsub.wait(timeout=30) == 130
    assert wait_end(cluster, job_id)["state"] == "killed"
    # SGE (and Slurm's tmpfs plugins) remove a job's TMPDIR at its end: 50 MB stayed in the node's spool for a day
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "tmp.txt", "-b", "y",
              'head -c 1000000 /dev/zero > "$TMPDIR/scratch" && echo "$TMPDIR"', cwd=tmp_path)
    tmpdir = (tmp_path / "tmp.txt").read_text().strip()
    assert r.returncode == 0 and tmpdir.startswith(cluster.root), (r.stderr, tmpdir)
    wait_for(lambda: not os.path.exists(tmpdir), 10, what="its TMPDIR to go (a child of the reaper's empties it)")
    assert os.path.isdir(os.path.dirname(tmpdir))  # (its spool stays, for its output)


def test_qsub_o_names_a_directory_of_the_job_s_cwd_not_qsub_s(cluster, shims, tmp_path):  # noqa: F811
    home = tmp_path / "home"  # (without -cwd, the job runs in $HOME)
    (home / "logs").mkdir(parents=True)
    r = subprocess.run([str(shims.bin / "qsub"), "-terse", "-sync", "y", "-j", "y", "-o", "logs", "-N", "inhome", "-b", "y",
                        "echo hi"], env=dict(cluster.env, HOME=str(home)), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and (home / "logs" / f"inhome.o{r.stdout.split()[0]}").read_text() == "hi\n", r.stderr


def _until(test, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not test():
        time.sleep(0.1)
    return test()


def test_qstat_switches_scripts_use_and_an_arrays_tasks_left(cluster, shims, tmp_path):  # noqa: F811
    array = int(shims("qsub", "-terse", "-N", "arr", "-t", "1-8", "-tc", "2", "-b", "y", "sleep 30",
                      cwd=tmp_path).stdout.split(".")[0])
    assert _until(lambda: len([j for j in cluster.client().jobs() if j.get("array") == array
                               and j["state"] == "running"]) == 2)
    assert shims("qdel", f"{array}.5").returncode == 0
    lines = shims("qstat").stdout.splitlines()
    assert [line.split()[-1] for line in lines[2:]] == ["1", "2", "3,4,6-8:1"], lines  # (what is left, as SGE writes it,
    # after the running tasks: SGE lists the running jobs first)
    assert [line.split()[4] for line in shims("qstat", "-s", "r").stdout.splitlines()[2:]] == ["r", "r"]
    assert [line.split()[4] for line in shims("qstat", "-s", "p").stdout.splitlines()[2:]] == ["qw"]
    assert shims("qstat", "-q", "long.q").stdout.splitlines() == lines  # (one queue: Nextflow polls its own)
    r = shims("qstat", "-r")
    assert r.stdout.count("Full jobname:     arr") == 3 and "Master Queue:     all.q@" in r.stdout, r.stdout
    r = shims("qstat", "-ext")
    assert r.stdout.split()[:3] == ["job-ID", "prior", "ntckt"] and len(r.stdout.splitlines()) == 5, r.stdout
    r = shims("qstat", "-g", "c")
    row = r.stdout.splitlines()[2].split()  # (big has 4 cores and small 1: 2 used, 3 available, 5 in all)
    assert row[0] == "all.q" and float(row[1]) >= 0 and row[2:] == ["2", "0", "3", "5", "0", "0"], r.stdout
    r = shims("qstat", "-f")
    queues = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("all.q@")]
    assert sorted(queues) == ["all.q@big", "all.q@small"] and "- PENDING JOBS -" in r.stdout, r.stdout
    assert r.stdout.split("PENDING JOBS")[-1].split()[-1] == "3,4,6-8:1" and r.stdout.count(" r ") == 2, r.stdout
    for args, words in ((["1"], 'invalid option argument "1"'), (["-s", "x"], "-s 'x': expected"), (["-s", ""], "-s '': expected"), (["-g", "d"], "-g")):
        r = shims("qstat", *args)
        assert r.returncode == 1 and words in r.stderr and not r.stdout, (args, r.stderr)
    shims("qdel", str(array))
    wait_end(cluster, array)
    assert f"{array} " in shims("qstat", "-s", "z").stdout and not shims("qstat").stdout


def test_qdel_takes_names_globs_and_task_ranges(cluster, shims, tmp_path):  # noqa: F811
    me = current_user()
    ids = [int(shims("qsub", "-terse", "-h", "-N", name, "-b", "y", "true", cwd=tmp_path).stdout)
           for name in ("dname1", "dname2")]
    r = shims("qdel", "dname*")
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, [f"{me} has deleted job {i}" for i in ids]), r.stderr
    r = shims("qdel", "nosuchname")
    assert (r.returncode, r.stdout) == (1, 'denied: job "nosuchname" does not exist\n')
    array = int(shims("qsub", "-terse", "-h", "-t", "1-6", "-b", "y", "true", cwd=tmp_path).stdout.split(".")[0])
    r = shims("qdel", str(array), "-t", "3-4")
    assert r.stdout.splitlines() == [f"{me} has deleted job-array task {array}.{t}" for t in (3, 4)], r.stdout
    assert shims("qstat").stdout.split()[-1] == "1,2,5,6"
    assert shims("qdel", str(array)).returncode == 0


def test_qacct_names_owners_days_summary_and_why_a_job_failed(cluster, shims, tmp_path):  # noqa: F811
    def blocks(*args):
        r = shims("qacct", *args)
        return [dict(line.split(None, 1) for line in b.strip().splitlines()) for b in r.stdout.split("=" * 62)[1:]]
    ok = int(shims("qsub", "-terse", "-N", "acctok", "-b", "y", "true", cwd=tmp_path).stdout)
    rt = int(shims("qsub", "-terse", "-l", "h_rt=1", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    gone = int(shims("qsub", "-terse", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    array = int(shims("qsub", "-terse", "-t", "1-3", "-tc", "1", "-b", "y", "sleep 30", cwd=tmp_path).stdout.split(".")[0])
    bad, two = (int(shims("qsub", "-terse", "-cwd", *args, "-b", "y", "exit 2", cwd=tmp_path).stdout)
                for args in (["-o", "nodir/x.out", "-N", "unopened"], []))
    assert _until(lambda: all(cluster.client().job(i)["state"] == "running" for i in (gone, f"{array}.1")))
    shims("qdel", f"{array}.2")
    shims("qdel", str(gone), str(array))
    for i in (ok, rt, gone, array, bad, two):
        wait_end(cluster, i)
    assert [(b["jobnumber"], b["failed"]) for b in blocks("-j", "acctok")] == [(str(ok), "0")]
    assert [(b["failed"], b["exit_status"]) for b in blocks("-j", str(rt))] == [("100 : assumedly after job", "137")]
    assert [b["failed"] for b in blocks("-j", str(gone))] == ["100 : assumedly after job"]
    assert [b["failed"] for b in blocks("-j", f"{bad},{two}")] == [  # (the shell's words; a script's own exit 2: none)
        "26  : opening input/output file: cannot create nodir/x.out: Directory nonexistent", "0"]
    assert [b["failed"] for b in blocks("-j", "unopened")] == [  # (by name too: it said 0)
        "26  : opening input/output file: cannot create nodir/x.out: Directory nonexistent"]
    assert [b["taskid"] for b in blocks("-j", str(array))] == ["1"]  # (2 and 3 never ran: no record, as SGE's)
    me = current_user()
    r = shims("qacct", "-o", me, "-d", "1")
    assert r.stdout.split()[:2] == ["OWNER", "WALLCLOCK"] and r.stdout.splitlines()[2].split()[0] == me, r.stdout
    assert shims("qacct").stdout.startswith("Total System Usage\n    WALLCLOCK")
    r = shims("qacct", "-x")
    assert (r.returncode, r.stderr) == (1, "qacct: error: unsupported option -x\n")


def test_qhold_qrls_qalter_and_qdel_act_on_many_jobs_in_a_few_calls(cluster):
    """QA: `qhold 'bulk*'` of 10,000 jobs took 44 s, a call or two to the master a job: now a read or two of the live
    jobs and one hold, release, edit or kill of them all; each job still has SGE's line, printed at once."""
    ids = cluster.client().submit_many([job_spec(["sleep", "30"], hold=True, name=f"lots{i}") for i in range(40)])
    me, words = current_user(), ",".join(map(str, ids))
    assert counted(cluster, "qhold", "lots*") == (0, "".join(f"modified hold of job {i}\n" for i in ids), "", 3)
    assert counted(cluster, "qalter", "-p", "-1", "lots*") == (0, "".join(
        f"{me}@{os.uname().nodename} sets scheduling priority of job {i} to -1\n" for i in ids), "", 3)
    assert len({cluster.client().job(i)["priority"] for i in ids}) == 1
    assert counted(cluster, "qrls", words) == (0, "".join(f"modified hold of job {i}\n" for i in ids), "", 2)
    assert not any(cluster.client().job(i)["state"] == "held" for i in ids)
    code, out, err, calls = counted(cluster, "qdel", "lots*")
    assert (code, err, calls, len(out.splitlines())) == (0, "", 3, 40) and all(re.fullmatch(
        rf"{me} has (registered the job {i} for deletion|deleted job {i})", line) for i, line in zip(ids, out.splitlines()))
    assert all(wait_end(cluster, i)["state"] in ("killed", "cancelled") for i in ids)


def test_qhold_qrls_and_qalter_change_a_pending_job_with_sges_words(cluster, shims, tmp_path):  # noqa: F811
    blocker = shims("qsub", "-terse", "-h", "-b", "y", "true").stdout.strip()
    job = shims("qsub", "-terse", "-cwd", "-hold_jid", blocker, "-pe", "smp", "2", "-l", "h_vmem=100M", "-b", "y",
                "echo ran $NSLOTS > ran.txt", cwd=tmp_path).stdout.strip()  # (waiting for blocker)
    r = shims("qhold", job)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"modified hold of job {job}\n", "")
    before = cluster.client().job(int(job))
    assert before["state"] == "held" and (before["cpus"], before["memory"]) == (2, 200)
    r = shims("qalter", "-l", "h_vmem=300M,h_rt=600", "-pe", "smp", "3", "-p", "-5", job)
    assert (r.returncode, r.stderr) == (0, "") and r.stdout == (
        f"modified hard resource list of job {job}\nmodified slot range of job {job}\n"
        f"{current_user()}@{os.uname().nodename} sets scheduling priority of job {job} to -5\n")
    edited = cluster.client().job(int(job))
    assert (edited["cpus"], edited["memory"], edited["time"], edited["priority"]) == (3, 900, 600, before["priority"] - 5)
    assert shims("qalter", "-l", "h_rt=300:00:00", job).returncode == 0 and cluster.client().job(int(job))["time"] == 1080000
    assert shims("qalter", "-pe", "smp", "1", job).stdout == f"modified slot range of job {job}\n"
    assert (cluster.client().job(int(job))["cpus"], cluster.client().job(int(job))["memory"]) == (1, 300)  # (per slot)
    assert shims("qrls", job).stdout == f"modified hold of job {job}\n" and cluster.client().job(int(job))["state"] == "waiting"
    assert shims("qrls", blocker).stdout == f"modified hold of job {blocker}\n"
    assert wait_end(cluster, int(job))["state"] == "done" and (tmp_path / "ran.txt").read_text() == "ran 1\n"
    running = int(shims("qsub", "-terse", "-b", "y", "sleep 30").stdout)
    deadline = time.monotonic() + 20
    while cluster.client().job(running)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = shims("qhold", str(running))  # (as SGE's: it runs on, its hold said)
    assert (r.returncode, r.stdout, cluster.client().job(running)["state"]) == (0, f"modified hold of job {running}\n",
                                                                                "running")
    for command, args, code, out, err in (
            ("qalter", ["-p", "-1", str(running)], 1, f"job {running} can't modify running jobs\n", ""),
            ("qhold", [job], 1, f'denied: job "{job}" does not exist\n', ""),  # (ended)
            ("qrls", ["99999"], 1, 'denied: job "99999" does not exist\n', ""),
            ("qalter", ["-N", "x", str(running)], 1, "", "qalter: error: -N: grun cannot rename a job\n"),
            ("qhold", ["-h", "s", str(running)], 1, "", "qhold: error: usage: qhold [-h u] JOB_ID|NAME,"),
            ("qalter", ["-l", "arch=x86_64", blocker], 1, "", "qalter: error: -l arch: qalter changes memory (h_vmem")):
        r = shims(command, *args)  # (one line)
        assert (r.returncode, r.stdout, r.stderr.count("\n")) == (code, out, bool(err)) and r.stderr.startswith(err), args
    shims("qdel", str(running))


def test_sge_job_variables_pe_hostfile_and_qalter_hold_jid(cluster, shims, tmp_path):  # noqa: F811
    job = shims("qsub", "-terse", "-cwd", "-pe", "mpi", "2", "-o", "v.out", "-e", "v.err", "-b", "y",
                'echo $PE $SGE_CWD_PATH $SGE_STDOUT_PATH $SGE_STDERR_PATH; [ "$TMP" = "$TMPDIR" ] && cat $PE_HOSTFILE',
                cwd=tmp_path).stdout.strip()
    assert wait_end(cluster, int(job))["state"] == "done"
    node = cluster.client().job(int(job))["node"]
    assert (tmp_path / "v.out").read_text() == f"mpi {tmp_path} {tmp_path}/v.out {tmp_path}/v.err\n" \
        f"{node} 2 all.q@{node} UNDEFINED\n"
    blocker, other = (shims("qsub", "-terse", "-h", "-N", n, "-b", "y", "true").stdout.strip() for n in ("blk", "oth"))
    waiting = shims("qsub", "-terse", "-hold_jid", blocker, "-b", "y", "true").stdout.strip()
    r = shims("qalter", "-hold_jid", "oth", waiting)  # (a name, as qsub's: replacing what it waited for)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"modified job id hold list of job {waiting}\n", "")
    assert cluster.client().job(int(waiting))["deps"] == [["after", int(other)]]
    assert shims("qalter", "-hold_jid", "no-such-job", waiting).returncode == 0  # (no job: no hold, as qsub's)
    assert wait_end(cluster, int(waiting))["state"] == "done"
    shims("qdel", blocker, other)
