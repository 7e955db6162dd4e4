"""What an SGE lab's PI found in grun/compat_sge.py, against a real cluster: `#$` lines on a script's first line,
soft limits (s_rt, s_vmem), what qsub -sync y says of a job killed at h_rt, job names in qhold/qrls/qalter/qstat -j,
qstat -xml's times, and qstat -j's, qhold's and qacct's rough edges. (qacct -j NAME's failed 26:
tests/test_compat_sge.py; another user's qhold and qrls: tests/test_auth.py, which makes one.)"""
from __future__ import annotations

import re
import signal
import time

from test_compat import shims, wait_end  # noqa: F401 (shims: a fixture)
from util import wait_for

from grun import compat
from grun.client import current_user
from grun.compat_sge import QSUB


def test_directives_on_a_scripts_first_line_count_unless_it_is_the_shebang(cluster, shims, tmp_path):  # noqa: F811
    # line 1 was always skipped: a script on stdin, or one without #!, lost its first #$ line (here its -o)
    assert compat.directives("#$ -N first\necho\n", "#$", QSUB, {}, glued=False) == {"name": ["first"]}
    assert compat.directives("#!/bin/sh -N\n#$ -cwd\n", "#$", QSUB, {}, glued=False) == {"cwd": [True]}
    r = shims("qsub", "-sync", "y", input="#$ -o first.out\n#$ -cwd\n#$ -j y\necho ran\n", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "first.out").read_text() == "ran\n", (r.stdout, r.stderr)


def test_s_rt_warns_with_usr1_and_qsub_sync_tells_of_the_kill_at_h_rt_as_sge(cluster, shims, tmp_path):  # noqa: F811
    # s_rt was a hard limit (the last of h_rt, s_rt won: h_rt=1:00,s_rt=0:02 killed at 2 s); at h_rt, -sync y said
    # "exited with exit code 124" (exit 124) where qacct says exit_status 137, SGE's KILL
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "rt.out", "-l", "h_rt=0:04,s_rt=0:01", "-b", "y",
              "s=$(date +%s); trap 'echo usr1 after $(($(date +%s) - s)) s' USR1; sleep 30 & wait; sleep 30 & wait",
              cwd=tmp_path)
    job_id = int(r.stdout.split()[2])
    assert (r.returncode, r.stdout.splitlines()[-1]) == (1, f"Job {job_id} exited because of signal SIGKILL"), r.stdout
    job = cluster.client().job(job_id)
    assert (job["state"], job["time"], job["time_signal"]) == ("timeout", 4, [signal.SIGKILL, 0])
    # (grun's line "job N ran out of its time limit ...; pass -l h_rt= with more" was lost with the TERM: the node
    # sent its time_signal's KILL, then read where the job's fd 2 had been, gone with it; its limit kill KILLs now)
    first, *_, told = (tmp_path / "rt.out").read_text().splitlines()
    assert told.endswith("; pass -l h_rt= with more"), told
    assert re.fullmatch("usr1 after [012] s", first), first  # (timed from the wrapper's start, before the script's s=)
    acct = dict(line.split(None, 1) for line in shims("qacct", "-j", str(job_id)).stdout.splitlines()[1:])
    assert acct["exit_status"] == "137" and acct["maxvmem"].endswith("M")  # (labs grep maxvmem: the peak RSS)
    for limits, time_limit, warned in (("s_rt=10", 70, "sleep 10; kill -USR1 0"), ("s_rt=0:30,h_rt=0:10", 10, None),
                                       ("h_rt=0:10,s_rt=0:08", 10, "sleep 8; kill -USR1 0")):  # (SGE's notify: 60 s)
        r = shims("qsub", "-terse", "-h", "-l", limits, "-b", "y", "true", cwd=tmp_path)
        job = cluster.client().job(int(r.stdout))  # (the warning: the job's own, grun's --time-signal is the KILL)
        assert (job["time"], re.search(r"sleep \d+; kill -USR1 0", job["cmd"][2]) and warned) == (time_limit, warned), limits
        cluster.client().kill([job["id"]])
    before = len(cluster.client().history(1000))
    r = shims("qsub", "-l", "s_vmem=1G", "-b", "y", "true", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "") and r.stderr == ("qsub: error: -l s_vmem: grun has no soft memory "
                                                                "limit (-l h_vmem= limits, mem_free= reserves)\n")
    assert len(cluster.client().history(1000)) == before


def test_qhold_qrls_qalter_and_qstat_j_take_job_names(cluster, shims, tmp_path):  # noqa: F811
    # "job h2 does not exist": only qdel (and -hold_jid) took names
    blocker = shims("qsub", "-terse", "-h", "-b", "y", "true", cwd=tmp_path).stdout.strip()
    job = shims("qsub", "-terse", "-hold_jid", blocker, "-N", "h2", "-pe", "smp", "2", "-l", "h_vmem=100M,h_rt=600",
                "-b", "y", "true", cwd=tmp_path).stdout.strip()  # (waiting for blocker)
    r = shims("qhold", "h2")
    assert (r.returncode, r.stdout, cluster.client().job(int(job))["state"]) == (0, f"modified hold of job {job}\n",
                                                                                "held"), (r.stdout, r.stderr)
    assert shims("qalter", "-p", "-1", "h*").stdout.endswith(f"sets scheduling priority of job {job} to -1\n")
    r = shims("qstat", "-j", "h2")  # (its h_vmem per slot, as asked, not the 200M of its 2 slots; and its h_rt)
    assert r.returncode == 0 and re.search(r"hard resource_list:\s+h_vmem=100M,h_rt=600\n", r.stdout), r.stdout
    assert shims("qrls", "h2").stdout == f"modified hold of job {job}\n"
    assert cluster.client().job(int(job))["state"] == "waiting"
    for command in ("qhold", "qrls", "qalter -p 1"):
        r = shims(*command.split(), "no-such-name")
        assert (r.returncode, r.stdout) == (1, 'denied: job "no-such-name" does not exist\n'), command
    r = shims("qstat", "-j", "no-such-name")
    assert (r.returncode, r.stderr) == (1, "Following jobs do not exist: no-such-name\n")
    plain = shims("qsub", "-terse", "-h", "-b", "y", "true", cwd=tmp_path).stdout.strip()  # (no memory asked: none said)
    assert re.search(r"hard resource_list:\s*\n", shims("qstat", "-j", plain).stdout)
    cluster.client().kill([int(job), int(plain), int(blocker)])


def test_qhold_of_a_running_job_says_so_as_sges_and_it_runs_on(cluster, shims, tmp_path):  # noqa: F811
    running = int(shims("qsub", "-terse", "-N", "runs", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    wait_for(lambda: cluster.client().job(running)["state"] == "running", timeout=20)
    for command in ("qhold", "qrls"):  # (printed nothing, exit 0)
        r = shims(command, "runs")
        assert (r.returncode, r.stdout, r.stderr) == (0, f"modified hold of job {running}\n", ""), command
    assert cluster.client().job(running)["state"] == "running"
    cluster.client().kill([running])


def test_qstat_xml_times_are_sges(cluster, shims, tmp_path):  # noqa: F811
    # a pending job's was a JAT_start_time, and written 12/07/2026 20:03:29; a pending one that ran (re-queued,
    # retried): its last start
    pending = int(shims("qsub", "-terse", "-h", "-b", "y", "true", cwd=tmp_path).stdout)
    running = int(shims("qsub", "-terse", "-b", "y", "sleep 30", cwd=tmp_path).stdout)
    ran = cluster.client().submit("exit 3", retries=1, retry_delay=600, hold=True).id
    time.sleep(1.1)  # (its start another second than its submission)
    shims("qrls", str(ran))
    wait_for(lambda: cluster.client().job(running)["state"] == "running", timeout=20)
    wait_for(lambda: cluster.client().job(ran).get("retried"), timeout=20)
    xml, iso = shims("qstat", "-xml").stdout, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    for job_id, tag, when in ((pending, "JB_submission_time", "submit_time"), (running, "JAT_start_time", "start_time"),
                              (ran, "JB_submission_time", "submit_time")):
        block = next(b for b in xml.split("<job_list")[1:] if f"<JB_job_number>{job_id}<" in b)
        assert re.search(f"<{tag}>({iso})</{tag}>", block)[1] == time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(cluster.client().job(job_id)[when])), block
    line = next(line for line in shims("qstat").stdout.splitlines() if line.split()[0] == str(ran))  # (as plain qstat's)
    assert time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(cluster.client().job(ran)["submit_time"])) in line, line
    cluster.client().kill([pending, running, ran])


def test_h_rt_kills_with_sigkill_as_sge_and_qacct_says_failed_100_of_any_job_a_signal_ended(cluster, shims, tmp_path):  # noqa: F811
    # h_rt sent TERM, then KILL kill_grace (30 s) later: a job trapping TERM ran on past it; SGE's execd KILLs at h_rt
    # (queue_conf(5)). qacct said failed 37 (qmaster enforced) at h_rt and 0 of a job a signal ended: SGE's execd says
    # 100, assumedly after job, of every job that died through a signal
    start = time.monotonic()
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "kill.out", "-l", "h_rt=0:02", "-b", "y",
              "trap 'echo term' TERM; sleep 30 & wait; sleep 30 & wait; echo ran on", cwd=tmp_path)
    job_id = int(r.stdout.split()[2])
    assert r.stdout.splitlines()[-1] == f"Job {job_id} exited because of signal SIGKILL", r.stdout
    assert time.monotonic() - start < 15 and "term" not in (tmp_path / "kill.out").read_text()
    segv = int(shims("qsub", "-terse", "-cwd", "-b", "y", "kill -SEGV $$", cwd=tmp_path).stdout)
    wait_end(cluster, segv)
    for job, exit_status in ((job_id, "137"), (segv, "139")):
        acct = dict(line.split(None, 1) for line in shims("qacct", "-j", str(job)).stdout.splitlines()[1:])
        assert (acct["failed"], acct["exit_status"]) == ("100 : assumedly after job", exit_status), acct
    r = shims("qsub", "-terse", "-h", "-notify", "-l", "h_rt=0:01:05,s_rt=3", "-b", "y", "true", cwd=tmp_path)
    job = cluster.client().job(int(r.stdout))  # (-notify: SGE's USR2, notify (60 s) before the KILL; it was refused
    assert job["time_signal"] == [signal.SIGKILL, 0] and job["time"] == 63  # with s_rt, the one warning grun had)
    assert "sleep 3; kill -USR1 0" in job["cmd"][2] and "kill -USR2 0" in job["cmd"][2]  # (USR2's time: at its start)
    cluster.client().kill([job["id"]])


def test_qdel_kills_a_running_job_with_sigkill_as_sge(cluster, shims, tmp_path):  # noqa: F811
    # qdel sent TERM (KILL kill_grace later): a job trapping it ran its trap ("got TERM", exit 5); SGE's is a KILL
    job = int(shims("qsub", "-terse", "-cwd", "-j", "y", "-o", "del.out", "-b", "y",
                    "trap 'echo got TERM; exit 5' TERM; echo up; sleep 100 & wait", cwd=tmp_path).stdout)
    assert wait_for(lambda: (tmp_path / "del.out").exists() and (tmp_path / "del.out").read_text(), timeout=20)
    assert shims("qdel", str(job)).stdout == f"{current_user()} has registered the job {job} for deletion\n"
    assert (wait_end(cluster, job)["state"], (tmp_path / "del.out").read_text()) == ("killed", "up\n")
    acct = dict(line.split(None, 1) for line in shims("qacct", "-j", str(job)).stdout.splitlines()[1:])
    assert (acct["failed"], acct["exit_status"]) == ("100 : assumedly after job", "137"), acct


def test_a_script_exiting_99_runs_again_as_sges_rerun_and_its_signals_reach_grun(cluster, shims, tmp_path):  # noqa: F811
    # SGE re-runs a job whose script exits 99; grun ended it (exit 99). grun re-queues for no exit code: the wrapper
    # runs the script again in place, and dies of the signal the script died of (grun's record, qacct's 100 and 139)
    (tmp_path / "rerun.sh").write_text("#!/bin/sh\nn=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) >count\n"
                                       'echo "run $n of $JOB_ID"; [ "$n" -ge 2 ] || exit 99; exit 3\n')
    r = shims("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "rerun.out", "rerun.sh", cwd=tmp_path)
    job_id = int(r.stdout.split()[2])
    assert (r.returncode, r.stdout.splitlines()[-1]) == (3, f"Job {job_id} exited with exit code 3."), r.stdout
    assert (tmp_path / "rerun.out").read_text() == "".join(f"run {n} of {job_id}\n" for n in range(3))
    r = shims("qsub", "-sync", "y", "-cwd", "-b", "y", "exit 200", cwd=tmp_path)  # (not a signal: no kill -72)
    said = f"Job {r.stdout.split()[2]} exited with exit code 200."
    assert (r.returncode, r.stdout.splitlines()[-1], r.stderr) == (200, said, ""), r.stdout
    assert cluster.client().job(job_id)["exit"] == 3 and not next(tmp_path.glob("exit.e*")).read_text()


def test_qstat_lists_running_jobs_first_as_sge(cluster, shims, tmp_path):  # noqa: F811
    # an array's line of tasks left came before its running tasks' (and any pending job before a running one)
    array = int(shims("qsub", "-terse", "-cwd", "-t", "1-3", "-tc", "1", "-b", "y", "sleep 30", cwd=tmp_path)
                .stdout.split(".")[0])
    wait_for(lambda: cluster.client().job(f"{array}.1")["state"] == "running", timeout=20)
    rows = [line.split() for line in shims("qstat").stdout.splitlines()[2:]]
    assert [(r[0], r[4], r[-1]) for r in rows] == [(str(array), "r", "1"), (str(array), "qw", "2,3")], rows
    cluster.client().kill([array])


TRAPS = "trap 'echo usr2 >> got' USR2; echo up > up; while :; do sleep 0.2; done"  # (a -notify job's: it runs on)


def test_qdel_of_a_notify_job_sends_usr2_before_the_kill_as_sge(cluster, shims, tmp_path):  # noqa: F811
    # SGE's qdel of a qsub -notify job: USR2 (notify_kill), the KILL the queue's notify later; grun's KILLed at once
    job = int(shims("qsub", "-terse", "-notify", "-cwd", "-b", "y", TRAPS, cwd=tmp_path).stdout)
    wait_for(lambda: (tmp_path / "up").exists(), timeout=20)
    start = time.monotonic()
    r = shims("qdel", str(job))
    assert (r.returncode, r.stdout) == (0, f"{current_user()} has registered the job {job} for deletion\n"), r.stdout
    assert time.monotonic() - start >= 2.5 and wait_end(cluster, job)["state"] == "killed"  # (its 3 s to end)
    assert (tmp_path / "got").read_text() == "usr2\n"


def test_qalter_h_rt_moves_the_notify_usr2_with_the_kill(cluster, shims, tmp_path):  # noqa: F811
    # -notify's USR2 came at the h_rt of qsub (here 540 s), not the h_rt qalter set (62: the KILL at 62 s, USR2 at 2 s)
    job = shims("qsub", "-terse", "-h", "-notify", "-cwd", "-l", "h_rt=600", "-b", "y", TRAPS, cwd=tmp_path).stdout.strip()
    assert shims("qalter", "-l", "h_rt=62", job).returncode == 0 and shims("qrls", job).returncode == 0
    wait_for(lambda: (tmp_path / "got").exists(), timeout=30)
    assert cluster.client().job(int(job))["state"] == "running" and cluster.client().job(int(job))["time"] == 62
    cluster.client().kill([int(job)], signal.SIGKILL)
