"""Slurm's and SGE's commands (grun/compat.py, grun/compat_sge.py), installed by `grun-compat install` and
run as a tool written for Slurm or SGE runs them, against a real cluster; their output parsed as those tools
parse it. The dask-jobqueue proof at the end skips when dask-jobqueue cannot be imported (not in CI)."""
from __future__ import annotations

import contextlib
import glob
import grp
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from grun import compat, compat_slurm, tables
from grun.client import current_user, job_spec
from grun.core import jobs as J
from grun.limits import describe

SCRIPT = "import sys\nfrom grun.compat import main\nsys.exit(main())\n"


# ---- pure: how options, scripts and records are read (no daemons) ----------------------------------

def test_options_read_as_getopt_does():
    opts, rest = compat.parse(["-Jx", "--mem=4G", "-c", "2", "-QW", "--", "-J", "y"], compat_slurm.SUBMIT)
    assert opts == {"name": ["x"], "mem": ["4G"], "cpus": ["2"], "quiet": [True], "wait": [True]} and rest == ["-J", "y"]
    assert compat.parse(["-pe", "smp", "4", "job.sh", "-N", "a"], {"-pe": ("pe", 2)})[0] == {"pe": [["smp", "4"]]}
    assert compat.parse(["--nice", "--nice=5", "x"], compat_slurm.SUBMIT) == ({"nice": [True, "5"]}, ["x"])  # (getopt's
    # optional value: only after =)
    for argv in (["-h", "x"], ["--", "x"]):  # (squeue, sacct, sinfo, qstat take no other word)
        with pytest.raises(compat.Refused, match="unexpected argument x"):
            compat.parse(argv, compat.table("noheader:-h"), None)
    for argv, words in ((["--gpus=1"], "unsupported option --gpus"), (["-J"], "-J needs a value"),
                        (["--wait=1"], "--wait takes no value"), (["-Wz"], "unsupported option -Wz")):
        with pytest.raises(compat.Refused, match=words):
            compat.parse(argv, compat_slurm.SUBMIT)


def test_directives_until_the_first_command_under_the_command_line():
    script = "#!/bin/sh\n\n#SBATCH -J a --mem 2G\n#SBATCH  -c 2   # two\n#SBATCHX -J no\necho\n#SBATCH -J late\n"
    assert compat.directives(script, "#SBATCH", compat_slurm.SUBMIT, {"cpus": ["3"]}) == {
        "name": ["a"], "mem": ["2G"], "cpus": ["3"]}
    for line, words in (("#SBATCH -J 'open", "line 2: No closing quotation"), ("#SBATCH x", "line 2: not an option"),
                        ("#SBATCH", "line 2: not an option"), ("#SBATCH --gpus-per-node=1", "unsupported option --gpus-per")):
        with pytest.raises(compat.Refused, match=words):
            compat.directives(f"#!/bin/sh\n{line}\n", "#SBATCH", compat_slurm.SUBMIT, {})


def test_slurm_requests_map_onto_grun_and_refuse_what_does_not(monkeypatch):
    monkeypatch.setenv("OURS", "1")
    request = compat_slurm.slurm_request(compat.parse(["-c", "2", "--mem-per-cpu=1G", "-d", "afterok:3:4_2,afterany:5",
                                                 "--export=NONE,A=b", "-D", "sub"], compat_slurm.SUBMIT)[0], "nm", "sbatch")
    assert (request["cpus"], request["memory"], request["afterok"], request["after"]) == (2, 2048, [3, "4.2"], [5])
    assert request["pass_env"] == ["A=b"] and request["cwd"] == os.path.join(os.getcwd(), "sub")
    assert request["env"]["SLURM_CPUS_PER_TASK"] == "2"
    env = job_spec(["true"], env=request["env"], pass_env=request["pass_env"])["env"]  # (-E's reading of NAME=VALUE)
    assert env["A"] == "b" and "OURS" not in env
    for export in ("ALL,A=c", "A=c,ALL"):  # our variables, A set so
        request = compat_slurm.slurm_request(compat.parse([f"--export={export}"], compat_slurm.SUBMIT)[0], "nm", "sbatch")
        env = job_spec(["true"], env=request["env"], pass_env=request["pass_env"])["env"]
        assert env["A"] == "c" and env["OURS"] == "1", export
    request = compat_slurm.slurm_request(compat.parse(["--gres=gpu:a100:2,scratch:1", "--gres", "io"], compat_slurm.SUBMIT)[0], "nm",
                                   "sbatch")
    assert request["params"] == {"gpu": 2, "scratch": 1, "io": 1}  # (a type, a100, is not placed by)
    request = compat_slurm.slurm_request(compat.parse(["-n", "4", "-c", "2", "-w", "n[08-10,3],m", "--ntasks-per-node=1",
                                                       "--kill-on-invalid-dep=yes", "--comment=x"], compat_slurm.SUBMIT)[0],
                                         "nm", "sbatch", "#!/bin/sh\n# srun (a comment)\nbwa -t $SLURM_NTASKS\n")
    assert (request["cpus"], request["hosts"], request["env"]["SLURM_NTASKS"]) == (8, "n08,n09,n10,n3,m", "4")
    assert request["env"]["SLURM_CPUS_PER_TASK"] == "2" and request["env"]["SLURM_JOB_PARTITION"] == "grun"
    monkeypatch.setenv("GRUN_PRIORITY", "30")  # (grun's priority: higher first, default 20)
    for nice, priority in (("--nice", -70), ("--nice=5", 25), ("--nice=-5", 35)):
        assert compat_slurm.slurm_request(compat.parse([nice], compat_slurm.SUBMIT)[0], "nm", "sbatch")["priority"] == priority
    for argv, words in ((["-n", "2"], "srun: one task on one node"), (["--gres=gpu:x"], "bad --gres"), (["-d", "after:3"], "unsupported dependency"),
                        (["-d", "afterok:3?afterok:4"], "unsupported dependency"), (["-c", "0.5"], "cpus-per-task"),
                        (["--mem", "-1"], "bad memory size"), (["--ntasks-per-node=2"], "one task on one node"),
                        (["--kill-on-invalid-dep=no"], "grun cancels"), (["-x", "n1"], "--exclude: grun cannot"),
                        (["--exclusive"], "--exclusive: grun has no whole-node"), (["--begin=now+1hour"], "cannot delay"),
                        (["--nice=x"], "--nice x: expected a number")):
        with pytest.raises(compat.Refused, match=words.removeprefix("srun: ")):
            compat_slurm.slurm_request(compat.parse(argv, compat_slurm.SUBMIT)[0], "nm", "srun" if "srun:" in words else "sbatch")


def test_slurm_dependencies_grun_has_not_are_refused():
    for dep in ("afterok:3,", "afterok:x", "afterok:3+10", "aftercorr:3", "afterany:3?afterok:4", ""):
        with pytest.raises(compat.Refused, match="unsupported dependency"):
            compat_slurm.slurm_request({"dependency": [dep]}, "nm", "sbatch")


def test_output_names_expand_in_the_job_and_quote_the_rest():
    names = {"%j": '"$SLURM_JOB_ID"', "%%": "%"}
    word = compat.out_path("my dir/$(x) `y` o-%j.100%%;rm *", names)
    assert subprocess.run(["sh", "-c", f"printf %s {word}"], env={"SLURM_JOB_ID": "7"}, capture_output=True,
                          text=True).stdout == "my dir/$(x) `y` o-7.100%;rm *"


def test_a_limit_names_the_option_of_the_jobs_own_submitter():
    """A Slurm job out of memory was told "pass -m" (sbatch's -m is --distribution)."""
    oom, late = {"limit": "memory", "signal": 9}, {"limit": "time", "signal": 15}
    told = [describe(r, 3, family).rsplit("; pass ", 1)[1] for family in ("slurm", "sge", None) for r in (oom, late)]
    assert told == ["--mem= with what it needs", "-t with more", "-l h_vmem= with what it needs", "-l h_rt= with more",
                    "-m with what it needs", "-t with more"], told


def test_records_as_slurm_shows_them():
    job = {"id": 5, "state": "running", "cmd": ["/bin/sh", "-c", compat.MARK + "\nexec", "nm", "s"], "start_time": 1,
           "usage": {"wall": 3725}, "cpus": 2.0, "node": "n1"}
    row = [get(job) if get else text for text, get, _, _ in compat_slurm.fmt_fields("%i|%j|%T|%t|%M|%C|%R|%K")]
    assert "".join(row) == "5|nm|RUNNING|R|1:02:05|2|n1|N/A"
    queued = {"id": 7, "state": "waiting", "cmd": ["sleep", "9"], "task": 3, "array": 6}
    assert [tables.FIELDS[k][3](queued) for k in "ijTtRK"] == ["6_3", "sleep", "PENDING", "PD", "(Dependency)", "3"]
    ended = dict(job, state="failed", exit=137, signal=9, limit="memory", usage={"wall": 90000, "maxrss_kb": 10})
    fields = [tables.BY_NAME[name.lower()] for name in ("State", "ExitCode", "Elapsed", "MaxRSS")]
    assert [tables.FIELDS[letter][3](ended) for _, letter in fields] == ["OUT_OF_MEMORY", "0:9", "1-01:00:00", "10K"]
    with pytest.raises(compat.Refused, match="%X"):
        compat_slurm.fmt_fields("%i %X")


def test_array_tasks_not_started_as_slurm_writes_them():
    array = {"id": 2, "array": "1-9%2", "ranges": [[1, 10, 1]], "limit": 2, "at": [0, 5], "taken": [7], "tasks": 9,
             "started": 5, "stopped": False, "counts": {"done": 3}, "state": "queued"}
    assert tables.unstarted(array) == [5, 6, 8, 9] and tables.id_of(array) == "2_[5-6,8-9%2]"
    assert tables.FIELDS["r"][3](array) == "JobArrayTaskLimit"  # two of its tasks run: its limit
    assert tables.FIELDS["r"][3](dict(array, counts={"done": 4})) == "Priority"
    assert [tables.spans(ids) for ids in ([3, 4], [1, 3, 5, 7], [1, 5], [1, 2, 3, 7], [4])] == [
        "3-4", "1-7:2", "1,5", "1-3,7", "4"]
    assert tables.id_of(dict(array, at=[1, -1], taken=[], started=9)) == "2_[1-9%2]"  # all started: as submitted
    cancelled = dict(array, stopped=9)  # those that never started: one line, as Slurm's
    assert (tables.id_of(cancelled), tables.state_of(cancelled)) == ("2_[5-6,8-9%2]", "CANCELLED")


def test_hostlists_and_sacct_dates_as_slurm_writes_and_reads_them():
    assert [tables.host_ranges(names) for names in (["n2", "n1", "n3", "n7", "x"], [f"n{i:02d}" for i in range(1, 13)],
                                                 ["n9", "n10"], ["big", "small"], ["n1", "n3", "n5"], ["n4"])] == [
        "n[1-3,7],x", "n[01-12]", "n[9-10]", "big,small", "n[1,3,5]", "n4"]
    year = time.localtime().tm_year
    for text, when in (("12/31/25", (2025, 12, 31, 0, 0)), ("01.02-10:30", (year, 1, 2, 10, 30)), ("010225", (2025, 1, 2, 0, 0)),
                       ("0102", (year, 1, 2, 0, 0)), ("fika", time.localtime()[:3] + (15, 0))):
        assert compat.when(text) == time.mktime(when + (0, 0, 0, -1)), text
    for text in ("13/01", "12/07/2025", "1/2", "99:99", "12:60"):
        with pytest.raises(compat.Refused, match=f"invalid time specification: {text}"):
            compat.when(text)
    with pytest.raises(compat.Refused, match=r"invalid node name specified: n\[3-1\]"):
        compat_slurm.hostlist("big,n[3-1]")  # (no host would be any host)


# ---- through a real cluster -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shims(cluster, tmp_path_factory):
    """The commands installed in a bin directory, and a runner of them with the cluster's config."""
    bin_dir = tmp_path_factory.mktemp("bin")
    env = dict(cluster.env, PATH=f"{bin_dir}:/nonexistent")  # this machine has a real Slurm in /usr/bin
    r = subprocess.run([sys.executable, "-c", "import sys; from grun.integrate import install_shims; sys.exit(install_shims(sys.argv[1:]))",
                        "install", str(bin_dir)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(bin_dir)) == sorted(compat.NAMES)

    def run(name, *args, input=None, cwd=None, timeout=60):
        return subprocess.run([str(bin_dir / name), *args], env=cluster.env, capture_output=True, text=True,
                              input=input, cwd=cwd, timeout=timeout)
    run.bin = bin_dir
    return run


def wait_end(cluster, job_id: int) -> dict:
    return cluster.client().wait([job_id], timeout=60)[job_id]


def test_install_refuses_to_shadow_a_real_slurm_and_uninstall_removes_only_its_own(tmp_path):
    real, target, private = tmp_path / "real", tmp_path / "bin", tmp_path / "private"
    real.mkdir()
    private.mkdir(mode=0o700)
    (private / "python").symlink_to(sys.executable)
    (real / "qstat").write_text("#!/bin/sh\necho real\n")
    (real / "qstat").chmod(0o755)
    run = lambda *a, path, python=sys.executable: subprocess.run(
        [python, "-c", "import sys; from grun.integrate import install_shims; sys.exit(install_shims(sys.argv[1:]))", *a],
        env=dict(os.environ, PATH=path), capture_output=True, text=True, timeout=30)
    r = run("install", str(target), path=f"{real}:/nonexistent")  # (a real SGE blocked Slurm's commands too)
    assert r.returncode == 0 and "real qstat" in r.stderr and "not shadowing SGE" in r.stderr, r.stderr
    assert sorted(os.listdir(target)) == sorted(compat.SLURM)
    assert f"(grun-compat install --force {target}: all the same)" in r.stderr
    r = run("install", "--force", str(tmp_path / "forced"), path=f"{real}:/nonexistent")  # (a private dir: said so)
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "forced")) == sorted(compat.NAMES), r.stderr
    r = run("install", str(target), path="/nonexistent", python=str(private / "python"))  # (a python under /root)
    assert r.returncode == 0 and sorted(os.listdir(target)) == sorted(compat.NAMES)
    assert f"{private / 'python'} is not executable by other users: the commands work for this user only" in r.stderr
    (target / "mine").write_text("keep")
    (target / "sbatch").write_text(f"#!{sys.executable}\n{compat.MARK}\n{SCRIPT}")  # ours, rewritten
    r = run("uninstall", str(target), path="/nonexistent")
    assert r.returncode == 0 and os.listdir(target) == ["mine"]
    (target / "squeue").write_text("#!/bin/sh\n")  # a real one in DIR: not overwritten
    r = run("install", str(target), path="/nonexistent")
    assert r.returncode == 0 and "real squeue" in r.stderr and (target / "squeue").read_text() == "#!/bin/sh\n"
    assert sorted(os.listdir(target)) == sorted(["mine", "squeue", *compat.SGE])
    for name in compat.SGE:
        os.remove(target / name)
    (target / "qsub").write_text("#!/bin/sh\n")  # both families real: nothing installed
    r = run("install", str(target), path="/nonexistent")
    assert r.returncode == 1 and sorted(os.listdir(target)) == ["mine", "qsub", "squeue"]


def test_sbatch_script_with_directives_runs_with_slurm_names(cluster, shims, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH -J named --cpus-per-task=2\n#SBATCH --mem=300M  # a comment\n"
                      "#SBATCH -o %x-%j.log\necho id=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK name=$SLURM_JOB_NAME "
                      "dir=$SLURM_SUBMIT_DIR args=$*\ntest -d \"$TMPDIR\" && echo tmp ok\necho err >&2\n"
                      "#SBATCH -J ignored-after-a-command\n")
    r = shims("sbatch", "-c", "1", str(script), "a1", "a2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Submitted batch job ") and r.stdout.count("\n") == 1
    job_id = int(r.stdout.split()[-1])
    script.unlink()  # as dask-jobqueue does: the script was read at submit
    command = lambda ref: re.search(r"\n   Command=(.*)\n", shims("scontrol", "show", "job", ref).stdout)[1]
    assert command(str(job_id)) == f"{script} a1 a2"  # (as Slurm's: the script as named, a name in the directory's path)
    (tmp_path / "two.sh").write_text("#!/bin/sh\n")
    for args, shown in ((["two.sh", "x y"], f"{tmp_path}/two.sh x y"), (["./two.sh"], "./two.sh"),
                        (["--wrap", "true"], "(null)"), ([], "(null)")):  # (--wrap's, stdin's: none, as Slurm's)
        r = shims("sbatch", "--parsable", "-H", "-o", "/dev/null", *args, cwd=tmp_path, input="#!/bin/sh\n")
        assert command(r.stdout.strip()) == shown, (args, r.stderr)
        shims("scancel", r.stdout.strip())
    job = wait_end(cluster, job_id)
    assert job["exit"] == 0 and job["cpus"] == 1 and job["memory"] == 300
    out = (tmp_path / f"named-{job_id}.log").read_text()
    assert out == f"id={job_id} cpus=1 name=named dir={tmp_path} args=a1 a2\ntmp ok\nerr\n"


def test_sbatch_wrap_parsable_wait_and_separate_error_file(cluster, shims, tmp_path):
    r = shims("sbatch", "--parsable", "--wait", "-e", "e-%j.txt", "--wrap", "echo out; echo oops >&2; exit 3",
              cwd=tmp_path)
    assert r.returncode == 3 and r.stdout.strip().isdigit(), (r.stdout, r.stderr)
    job_id = r.stdout.strip()
    assert (tmp_path / f"slurm-{job_id}.out").read_text() == "out\n"
    assert (tmp_path / f"e-{job_id}.txt").read_text() == "oops\n"
    r = shims("sbatch", "--parsable", "--wait", "-o", "p%3j-%J-%4a.%%4a", "--wrap", "echo x", cwd=tmp_path)  # zero-padded
    assert (tmp_path / f"p{int(r.stdout):03d}-{int(r.stdout)}-4294967294.%4a").read_text() == "x\n", r.stderr
    before = len(cluster.client().history(1000))
    for command in ("sbatch", "qsub"):  # a script is one argument: Linux takes 128 KiB (Slurm 4 MB), so it would fail
        r = shims(command, input="#!/bin/sh\n" + "# padding\n" * 13108, cwd=tmp_path)
        assert r.returncode == 1 and "131090 bytes" in r.stderr and "as a file" in r.stderr and r.stderr.count("\n") == 1
    assert len(cluster.client().history(1000)) == before


def test_sbatch_W_of_an_array_exits_with_its_highest_and_an_old_job_is_not_shown(cluster, shims, tmp_path, monkeypatch,
                                                                                capsys):
    r = shims("sbatch", "--parsable", "-W", "--array=1-3", "-o", "/dev/null", "--wrap", "exit $((SLURM_ARRAY_TASK_ID * 2))")
    assert r.returncode == 6, r.stderr  # (Slurm's: the highest task exit code, not the first failure's 2)
    array = r.stdout.strip()
    late = shims("sbatch", "-W", "--array=1-3", "-o", "/dev/null", "--wrap", "exit $((SLURM_ARRAY_TASK_ID * 2 - 2))")
    assert late.returncode == 4, late.stderr  # (task 1 exits 0: still the highest, not grun's 2, its lowest failed)
    assert shims("scontrol", "show", "job", array).returncode == 0  # (ended just now: shown, as Slurm's)
    monkeypatch.setenv("GRUN_CONF", cluster.client_config)  # ended > MinJobAge ago (job_list's 300 s, here 0 s)
    job_list = compat.job_list
    monkeypatch.setattr(compat, "job_list", lambda client, ids, finished_for=0: job_list(client, ids, finished_for))
    for ref in (array, f"{array}_2"):
        assert compat_slurm.scontrol(["show", "job", ref]) == 1
        assert capsys.readouterr().err == "slurm_load_jobs error: Invalid job id specified\n"


def test_squeue_shows_dependencies_and_one_never_satisfied_says_so(cluster, shims, tmp_path):
    first = shims("sbatch", "--parsable", "-H", "--wrap", "true", cwd=tmp_path).stdout.strip()
    then = shims("sbatch", "--parsable", "-d", f"afterok:{first}", "--wrap", "true", cwd=tmp_path).stdout.strip()
    r = shims("squeue", "-h", "-o", "%i %E", "-j", f"{first},{then}")
    assert r.stdout.splitlines() == [f"{first} (null)", f"{then} afterok:{first}(unfulfilled)"], r.stderr
    for option in ("-c0", "-n0", "-cx"):  # (Slurm's words)
        r = shims("sbatch", option, "--wrap", "true", cwd=tmp_path)
        assert r.returncode == 1 and r.stderr == f'sbatch: error: Invalid numeric value "{option[2:]}" for ' \
            f'--{"ntasks" if option == "-n0" else "cpus-per-task"}.\n', r.stderr
    assert shims("squeue", "-h", "-O", "JobID:6,Dependency:30", "-j", then).stdout.split() == [then, f"afterok:{first}(unfulfilled)"]
    fields = dict(w.split("=", 1) for w in shims("scontrol", "show", "job", then).stdout.split())
    assert (fields["Dependency"], fields["Requeue"]) == (f"afterok:{first}(unfulfilled)", "1")  # (Slurm's: its requeue)
    assert shims("scancel", first).returncode == 0 and wait_end(cluster, int(then))["state"] == "cancelled"
    assert "Reason=DependencyNeverSatisfied" in shims("scontrol", "show", "job", then).stdout
    assert shims("sacct", "-j", then, "-n", "-P", "-o", "State,Reason").stdout == "CANCELLED|DependencyNeverSatisfied\n"


def test_sbatch_signal_warns_before_the_time_limit_and_the_kill_is_said_in_its_output(cluster, shims, tmp_path):
    """Nextflow's `#SBATCH --signal B:USR2@30` was refused (no task ran); the kill at -t was in `grun -q history
    --long` only, not in slurm-N.out, where slurmstepd writes "CANCELLED ... DUE TO TIME LIMIT"."""
    (tmp_path / "task.sh").write_text("#!/bin/sh\n#SBATCH --signal B:USR2@2\n#SBATCH -t 0:04\ns=$(date +%s)\n"
                                      "trap 'echo warned after $(($(date +%s) - s)) s' USR2\nsleep 30 & wait; sleep 30 & wait\n")
    r = shims("sbatch", "--parsable", "--wait", "task.sh", cwd=tmp_path)
    job_id = int(r.stdout)
    first, last = (tmp_path / f"slurm-{job_id}.out").read_text().splitlines()
    assert r.returncode == 1 and re.fullmatch("warned after [123] s", first), (r.stderr, first)  # (Slurm's -W: a signal's)
    assert re.fullmatch(f"grun: job {job_id} ran out of its time limit of 4s \\(used [45]s\\); pass -t with more", last)
    assert cluster.client().job(job_id)["time_signal"] == [signal.SIGUSR2, 2]


def test_output_and_error_to_one_file_keep_both_and_open_mode_append_adds(cluster, shims, tmp_path):
    """-o F -e F opened F twice, each truncating it: the error lines wrote over the output's."""
    loop = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    lines = [f"{kind}{i}" for i in (1, 2, 3) for kind in ("out", "err")]
    for mode, times in (("truncate", 1), ("truncate", 1), ("append", 2)):
        r = shims("sbatch", "--wait", "-o", "same-%x.log", "-e", "same-%x.log", f"--open-mode={mode}", "--wrap", loop,
                  cwd=tmp_path)
        assert r.returncode == 0 and (tmp_path / "same-wrap.log").read_text().split() == lines * times, r.stderr
    for out, err in (("o.%j", "o.%A"), ("f f'\"", "./f f'\"")):  # one file once expanded, or by another path
        r = shims("sbatch", "--parsable", "--wait", "-o", out, "-e", err, "--wrap", loop, cwd=tmp_path)
        path = tmp_path / err.replace("%A", r.stdout.strip())
        assert r.returncode == 0 and path.read_text().split() == lines, r.stderr
    r = shims("sbatch", "--open-mode=add", "--wrap", "true", cwd=tmp_path)
    assert r.returncode == 1 and "Invalid --open-mode: add" in r.stderr
    r = shims("qsub", "-sync", "y", "-cwd", "-o", "q.log", "-e", "q.log", "-b", "y", loop, cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "q.log").read_text().split() == lines, r.stderr


def test_a_lab_scripts_directives_map_onto_grun_or_are_noted(cluster, shims, tmp_path):
    (tmp_path / "lab.sh").write_text(
        "#!/bin/bash\n#SBATCH --mail-type=END,FAIL\n#SBATCH --mail-user=me@lab.org\n#SBATCH -p long --qos=normal\n"
        "#SBATCH --comment 'run 3'\n#SBATCH --nice=5\n#SBATCH -w bi[f-g],big\n#SBATCH -n 3 --ntasks-per-node=1\n"
        "#SBATCH --kill-on-invalid-dep=yes\n#SBATCH --mem=0\n#SBATCH -o lab.out\n"
        "echo $SLURM_NTASKS $SLURM_CPUS_ON_NODE $SLURM_JOB_PARTITION $SLURM_MEM_PER_NODE\n")
    r = shims("sbatch", "--parsable", "lab.sh", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "sbatch: note: --partition, --qos, --mail-type, --mail-user ignored (grun has no partitions, QOS, mail)",
        "sbatch: note: --ntasks=3: one task with 3 cpus (grun runs one)",
        "sbatch: note: --mem=0: the largest node's, 8000 MB (no whole-node request)"]
    job = wait_end(cluster, int(r.stdout))  # (priority: grun's default, 20, less 5)
    assert (job["exit"], job["cpus"], job["memory"], job["priority"], job["node"]) == (0, 3, 8000, 15, "big")
    assert (tmp_path / "lab.out").read_text() == "3 3 grun 8000\n"
    r = shims("sbatch", "-Q", "--mem=0", "-w", "small", "--wait", "--wrap", "true", cwd=tmp_path)  # (-w: of those)
    assert r.returncode == 0 and not r.stderr
    assert cluster.client().history(1)[0]["memory"] == 2000


def test_sbatch_refuses_what_it_cannot_do_faithfully(cluster, shims, tmp_path):
    before = len(cluster.client().jobs()) + len(cluster.client().history(1000))
    (tmp_path / "noshebang.sh").write_text("echo hi\n")
    (tmp_path / "bad.sh").write_text("#!/bin/sh\n#SBATCH --gpus=1\necho\n")
    (tmp_path / "torn.sh").write_text("#!/bin/sh\n#SBATCH -J 'open\necho\n")
    (tmp_path / "dos.sh").write_text("#!/bin/sh\r\necho\r\n")
    for args, words in ((["--exclusive", "--wrap", "true"], "--exclusive: grun has no whole-node request"),
                        (["-n", "4", "--wrap", "srun hostname"], "--ntasks=4"), (["-x", "small", "--wrap", "true"], "--exclude"),
                        (["--begin=16:00", "--wrap", "true"], "--begin"), (["--signal=FOO", "--wrap", "true"], "unknown signal 'FOO'"),
                        (["dos.sh"], "Batch script contains DOS line breaks"),
                        (["noshebang.sh"], "does not look like a batch script"), (["bad.sh"], "line 2: unsupported option --gpus"),
                        (["--gres=gpu:1", "--wrap", "true"], "no node has gpu"),
                        (["torn.sh"], "line 2: No closing quotation"), (["-d", "after:1", "--wrap", "true"], "after:1"),
                        (["--mem", "lots", "--wrap", "true"], "bad memory size")):
        r = shims("sbatch", *args, cwd=tmp_path)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1 and not r.stdout, (args, r.stderr)
    for name, redirect, words in (("sbatch", "<&-", "no batch script given"), ("qsub", "<&-", "no job script given"),
                                  ("sbatch", "0>>w", "cannot read standard input: Bad file descriptor"),  # (write-only)
                                  ("qsub", "0>>w", "cannot read standard input: Bad file descriptor")):
        r = subprocess.run(["/bin/sh", "-c", f'exec "$0" {redirect}', shims.bin / name], env=cluster.env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and words in r.stderr and r.stderr.count("\n") == 1, (name, redirect, r.stderr)
    assert len(cluster.client().jobs()) + len(cluster.client().history(1000)) == before
    # srun with stdin closed: the job reads nothing (it read the master's socket, which took fd 0, and hung)
    r = subprocess.run(["/bin/sh", "-c", 'exec "$0" cat <&-', shims.bin / "srun"], env=cluster.env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr


def test_squeue_default_format_and_fields_as_tools_parse_them(cluster, shims, tmp_path):
    r = shims("sbatch", "-J", "sleeper", "--parsable", "--wrap", "sleep 30", cwd=tmp_path)
    job_id = int(r.stdout)
    try:
        cluster.client().wait_started(job_id)
        lines = shims("squeue").stdout.splitlines()
        assert lines[0].split() == ["JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "NODES", "NODELIST(REASON)"]
        row = next(line.split() for line in lines[1:] if line.split()[0] == str(job_id))
        assert row[2] == "sleeper" and row[4] == "R" and row[6] == "1"
        r = shims("squeue", "-h", "-j", str(job_id), "-o", "%i %T %j %u %M %D %R")
        i, state, name, user, used, nodes, where = r.stdout.split()
        assert user == current_user()
        assert (i, state, name, nodes) == (str(job_id), "RUNNING", "sleeper", "1") and ":" in used and where
        assert shims("squeue", "--me", "-h", "-O", "jobid,state").stdout.split() == [str(job_id), "RUNNING"]
        r = shims("squeue", "-o", "%Q %X")
        assert r.returncode == 1 and "%X" in r.stderr
    finally:
        assert shims("scancel", str(job_id)).returncode == 0
    assert wait_end(cluster, job_id)["state"] == "killed"
    r = shims("squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T")
    assert r.stdout.strip() == "CANCELLED"
    r = shims("squeue", "-j", "99999")
    assert r.returncode == 1 and "Invalid job id" in r.stderr


def test_sacct_parsable_fields_and_states(cluster, shims, tmp_path):
    ok = int(shims("sbatch", "--parsable", "-J", "fine", "--wrap", "true", cwd=tmp_path).stdout)
    bad = int(shims("sbatch", "--parsable", "--wrap", "exit 7", cwd=tmp_path).stdout)
    wait_end(cluster, ok), wait_end(cluster, bad)
    r = shims("sacct", "-X", "-n", "-P", "-j", f"{ok},{bad}", "--format", "JobID,JobName,State,ExitCode,Elapsed,MaxRSS")
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert [row[:4] for row in rows] == [[str(ok), "fine", "COMPLETED", "0:0"], [str(bad), "wrap", "FAILED", "7:0"]]
    assert all(len(row[4].split(":")) == 3 and row[5].endswith("K") for row in rows), rows
    lines = shims("sacct", "-j", str(ok)).stdout.splitlines()
    assert lines[0].split() == ["JobID", "JobName", "Partition", "Account", "AllocCPUS", "State", "ExitCode"]
    assert set(lines[1]) == {"-", " "} and lines[2].split()[0] == str(ok) and "COMPLETED" in lines[2]
    assert shims("sacct", "--format", "JobID,Bogus").returncode == 1
    r = shims("sacct", "-n", "-p", "--name", "fine", "--format", "jobid")
    assert f"{ok}|" in r.stdout.splitlines()
    for window, seen in ((["-S", "now-1hour"], True), (["-S", "2020-01-01", "-E", "2020-01-02T12:00"], False),
                         (["-E", "now-1days"], False), (["-S", "00:00"], True)):
        r = shims("sacct", "-nP", "-o", "JobID", *window)
        assert r.returncode == 0 and (str(ok) in r.stdout.split()) == seen, (window, r)
    r = shims("sacct", "-S", "whenever")
    assert r.returncode == 1 and "invalid time specification: whenever" in r.stderr


def test_slurms_words_for_formats_array_limits_ids_and_commands_not_found(cluster, shims, tmp_path):
    """squeue -o %all: every field, a `|` after each; sacct's DerivedExitCode, ArrayJobID, a negative width (left-
    justified), -M all (grun's one cluster); sbatch --array=1-3% and sacct -j abc refused, as Slurm's; srun of a
    command not found: Slurm's words and code 2, not /bin/sh's (with its line number)."""
    job = int(shims("sbatch", "--parsable", "-J", "w", "--wrap", "exit 3", cwd=tmp_path).stdout)
    wait_end(cluster, job)
    head = shims("squeue", "-o", "%all").stdout.splitlines()[0]
    assert head.startswith("JOBID|") and "|ACCOUNT|" in head and head.endswith("|"), head
    r = shims("sacct", "-nP", "-M", "all", "-j", str(job), "-o", "JobID,DerivedExitCode,ArrayJobID")
    assert r.stdout == f"{job}|3:0|{job}\n", r
    assert shims("sacct", "-n", "-j", str(job), "-o", "JobName%-15,State").stdout == f"{'w':<15}     FAILED\n"
    for args, words in ((["sbatch", "--array=1-3%", "--wrap", "true"], "bad value for --array: %N needs N >= 1, got '1-3%'"),
                        (["sacct", "-j", "abc"], "Bad job/step specified: abc"),
                        (["sacct", "--clusters=other"], "-M other: grun is one cluster, with no name (-M all: it)")):
        r = shims(*args, cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"{args[0]}: error: {words}\n"), r
    r = shims("srun", "nonexistent_cmd", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "srun: error: execve(): nonexistent_cmd: No such file or directory\n"), r


def test_srun_streams_output_and_exits_with_the_code(cluster, shims, tmp_path):
    r = shims("srun", "-c", "1", "--mem=100", "sh", "-c", "echo $SLURM_JOB_ID $SLURM_STEP_ID $SLURM_JOB_PARTITION; "
              "read x; echo got $x; exit 4", input="hello\n", cwd=tmp_path)
    assert r.returncode == 4 and r.stdout.splitlines()[1] == "got hello", r.stderr
    assert r.stdout.split()[0].isdigit() and r.stdout.split()[1:3] == ["0", "grun"]


def test_scancel_by_name_and_sinfo(cluster, shims, tmp_path):
    ids = [int(shims("sbatch", "--parsable", "-J", "victim", "--wrap", "sleep 30", cwd=tmp_path).stdout) for _ in (1, 2)]
    assert shims("scancel", "-n", "victim").returncode == 0
    assert {wait_end(cluster, i)["state"] for i in ids} == {"killed"}
    r = shims("sbatch", "--parsable", "-J", "avictim", "--array=1-4%1", "--wrap", "sleep 30", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    array = int(r.stdout)
    r = shims("scancel", "-n", "avictim")  # (an array with tasks waiting: its id, not 12_[2-4%1])
    assert r.returncode == 0, r.stderr
    assert wait_end(cluster, array)["state"] in ("killed", "cancelled")
    r = shims("scancel", "99999", str(ids[0]))  # never was, or has ended: nothing said, as Slurm 22.05's scancel
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    lines = shims("sinfo").stdout.splitlines()
    assert lines[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    assert sum(int(line.split()[3]) for line in lines[1:]) == 2
    assert sorted(line.split()[0] for line in shims("sinfo", "-N", "-h").stdout.splitlines()) == ["big", "small"]
    lines = shims("sinfo", "-s").stdout.splitlines()  # (nodes allocated, idle, other, in all)
    assert lines[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES(A/I/O/T)", "NODELIST"], lines
    assert lines[1].split()[3].endswith("/0/2") and lines[1].split()[4] == "big,small", lines
    r = shims("sinfo", "-N", "-o", "%N|%P|%a|%l|%D|%c|%m|%G|%.4c|%3D|%e %O %C")  # (Slurm's %X fields, as its -o)
    assert r.stdout.splitlines()[0] == "NODELIST|PARTITION|AVAIL|TIMELIMIT|NODES|CPUS|MEMORY|GRES|CPUS|NOD|FREE_MEM " \
        "CPU_LOAD CPUS(A/I/O/T)", r.stderr
    assert [re.fullmatch(r"([^|]+\|){10}\d+ \d+\.\d\d \d+/\d+/0/\d+", line) and line.split("|")[:10] for line in
            r.stdout.splitlines()[1:]] == [["big", "grun*", "up", "infinite", "1", "4", "8000", "(null)", "   4", "1  "],
                                           ["small", "grun*", "up", "infinite", "1", "1", "2000", "(null)", "   1", "1  "]]
    assert shims("sinfo", "-o", "%P %D").stdout == "PARTITION NODES\ngrun* 2\n"  # (nodes alike in its fields: a line)
    assert shims("sinfo", "-h", "-o", "%C %N").stdout.endswith("/5 big,small\n")
    r = shims("sinfo", "-o", "%N %Q")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "sinfo: error: Invalid node format specification: %Q\n")


def test_scancel_u_takes_a_uid_as_squeue_does(cluster, shims, tmp_path):
    job = int(shims("sbatch", "--parsable", "-H", "--wrap", "true", cwd=tmp_path).stdout)
    assert shims("scancel", "-u", str(os.getuid())).returncode == 0  # (it compared the uid with user names)
    assert wait_end(cluster, job)["state"] == "killed"
    r = shims("scancel", "-u", "no-such-user")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "scancel: error: Invalid user: no-such-user\n")


def test_singleton_waits_for_the_users_jobs_of_its_name_scancel_me_and_test_only(cluster, shims, tmp_path):
    first, other = (int(shims("sbatch", "--parsable", "-J", n, "--wrap", "sleep 30", cwd=tmp_path).stdout) for n in "ab")
    r = shims("sbatch", "--parsable", "-J", "a", "-d", "singleton", "--wrap", "true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert cluster.client().job(int(r.stdout))["deps"] == [["after", first]]
    r = shims("sbatch", "--parsable", "-J", "c", "-d", f"singleton,afterok:{other}", "--wrap", "true", cwd=tmp_path)
    assert cluster.client().job(int(r.stdout))["deps"] == [["afterok", other]]  # (no other c: singleton, no wait)
    ids = [j["id"] for j in cluster.client().jobs()]
    r = shims("sbatch", "--test-only", "-c", "1", "-w", "big", "--wrap", "true", cwd=tmp_path)  # (nothing submitted)
    assert r.returncode == 0 and re.fullmatch(r"sbatch: Job 0 to start at \S+ using 1 processors on nodes big in "
                                              r"partition grun\n", r.stderr), r.stderr
    r = shims("sbatch", "--test-only", "-c", "999", "--wrap", "true", cwd=tmp_path)
    assert r.stderr == "sbatch: error: Batch job submission failed: Requested node configuration is not available\n"
    assert r.returncode == 1 and [j["id"] for j in cluster.client().jobs()] == ids
    r = shims("sbatch", "--parsable", "-c", "2", "--mem-per-cpu=50", "-o", "mem.txt", "--wrap",
              "echo $SLURM_MEM_PER_CPU ${SLURM_MEM_PER_NODE:-none}", cwd=tmp_path)  # (as Slurm's: per cpu, not per node)
    assert wait_end(cluster, int(r.stdout))["state"] == "done" and (tmp_path / "mem.txt").read_text() == "50 none\n"
    r = shims("scancel", "--me")
    assert (r.returncode, r.stderr) == (0, "") and {wait_end(cluster, i)["state"] for i in ids} <= {"killed", "cancelled"}


def test_scontrol_shows_holds_releases_and_updates_jobs_as_slurms(cluster, shims, tmp_path):
    job = int(shims("sbatch", "--parsable", "-H", "-J", "ctl", "-c", "1", "--mem=100M", "-t", "10", "-o", "o-%j.txt",
                    "--wrap", "echo ran $SLURM_CPUS_PER_TASK $SLURM_JOB_CPUS_PER_NODE $SLURM_MEM_PER_NODE",
                    cwd=tmp_path).stdout)
    r = shims("scontrol", "show", "job", str(job))  # (Slurm 22.05's lines, as scripts grep and split them)
    fields = dict(word.split("=", 1) for word in r.stdout.split())
    assert r.stdout.startswith(f"JobId={job} JobName=ctl\n   UserId=") and r.stdout.endswith("\n   \n\n"), r.stdout
    assert (fields["GroupId"], fields["Command"]) == (f"{grp.getgrgid(os.getgid()).gr_name}({os.getgid()})", "(null)")
    assert [fields[k] for k in ("JobState", "Reason", "NumCPUs", "MinMemoryNode", "TimeLimit", "StdOut", "StdErr")] == [
        "PENDING", "JobHeldUser", "1", "100M", "00:10:00", str(tmp_path / f"o-{job}.txt"), str(tmp_path / f"o-{job}.txt")]
    one = shims("scontrol", "show", "job", "-o", str(job)).stdout
    assert one.count("\n") == 1 and dict(word.split("=", 1) for word in one.split()) == fields
    before = cluster.client().job(job)["priority"]
    r = shims("scontrol", "update", f"JobId={job}", "NumCPUs=2", "MinMemoryNode=200", "timelimit=1-00:00:00", "Nice=5")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    edited = cluster.client().job(job)
    assert (edited["cpus"], edited["memory"], edited["time"], edited["priority"]) == (2, 200, 86400, before - 5)
    for words in (["Priority=7", "Nice=5"], ["Nice=5", "Priority=7"]):  # (as Slurm 22.05's: Priority set, Nice ignored)
        r = shims("scontrol", "update", f"JobId={job}", *words)
        assert (r.returncode, r.stderr, cluster.client().job(job)["priority"]) == (0, "", 7), words
    assert shims("scontrol", "release", str(job)).returncode == 0 and wait_end(cluster, job)["state"] == "done"
    assert (tmp_path / f"o-{job}.txt").read_text() == "ran 2 2 200\n", "as it asks when it starts"
    r = shims("scontrol", "hold", str(job))
    assert (r.returncode, r.stderr) == (1, f"Job has already finished for job {job}\n")
    # a running job runs on (grun's hold would suspend it), and an array's running task; the rest are held (the array's
    # record: its tasks not started, none split out of it)
    array = int(shims("sbatch", "--parsable", "--array=1-3%1", "-o", "/dev/null", "--wrap", "sleep 30", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while not (tasks := [j for j in cluster.client().jobs() if j.get("array") == array and j["state"] == "running"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = shims("scontrol", "hold", str(array), str(tasks[0]["id"]))  # (a running task named: as Slurm's, refused)
    assert (r.returncode, r.stderr) == (1, f"Job is no longer pending execution for job {tasks[0]['id']}\n")
    assert shims("squeue", "-h", "-j", str(array), "-t", "PD", "-o", "%r").stdout == "JobHeldUser\n"
    held = lambda: [j["id"] for j in cluster.client().jobs() if j["state"] == "held"]
    assert cluster.client().job(tasks[0]["id"])["state"] == "running" and held() == [array]
    assert [j["task"] for j in cluster.client().jobs() if j.get("array") == array] == [1]
    r = shims("scontrol", "update", f"JobId={array}_1", "TimeLimit=5")
    assert (r.returncode, r.stderr) == (1, f"Job is no longer pending execution for job {array}_1\n")
    assert "ArrayJobId" in shims("scontrol", "show", "job", f"{array}_1").stdout
    assert shims("scontrol", "release", str(array)).returncode == 0 and held() == []
    shims("scancel", str(array))
    r = shims("sbatch", "--parsable", "-w", "big", "-o", "h.txt", "--wrap", f"{shims.bin}/scontrol show hostnames; "
              f"{shims.bin}/scontrol show hostnames 'n[1-2,08],x'", cwd=tmp_path)  # (as MPI scripts list their hosts)
    assert wait_end(cluster, int(r.stdout))["state"] == "done" and (tmp_path / "h.txt").read_text() == "big\nn1\nn2\nn08\nx\n"
    r = shims("scontrol", "show", "node", "big")  # (Slurm 22.05's lines, with what grun knows of its nodes)
    node = dict(word.split("=", 1) for word in r.stdout.split())
    assert r.returncode == 0 and r.stdout.startswith("NodeName=big\n   CPUAlloc=") and node["Partitions"] == "grun"
    assert node["State"] in ("IDLE", "MIXED", "ALLOCATED") and int(node["RealMemory"]) > 0, r.stdout
    assert shims("scontrol", "-o", "show", "nodes").stdout.count("\n") == 2
    r = shims("scontrol", "show", "node", "nope")
    assert (r.returncode, r.stdout) == (1, "Node nope not found\n")
    for args, code, err in (
            (["hold", "99999"], 1, "Invalid job id specified for job 99999"),
            (["show", "job", "99999"], 1, "slurm_load_jobs error: Invalid job id specified"),
            (["hold", "x1"], 1, "scontrol: error: Invalid job id x1"), (["hold"], 1, "scontrol: error: too few arguments for keyword:hold"),
            (["update", f"JobId={job}", "JobName=x"], 1, "scontrol: error: Update of this parameter is not supported: JobName=x"),
            (["update", "JobId=", "TimeLimit=5"], 1, "scontrol: error: Invalid job id ''"),
            (["update", "TimeLimit=5"], 1, "scontrol: error: No valid entity in update command (grun's scontrol updates jobs: JobId=)"),
            (["requeue", str(job)], 1, "scontrol: error: requeue " + str(job) + ": not supported (grun's scontrol has hold, "
             "release, show job, show node, show hostnames and update JobId=)"),
            (["show", "hostnames", "n[3-1]"], 1, "scontrol: error: invalid node name specified: n[3-1]")):
        r = shims("scontrol", *args)
        assert (r.returncode, r.stdout, r.stderr) == (code, "", err + "\n"), args


COUNTED = """import collections, sys
from grun import client, compat
calls, call = collections.Counter(), client.Client.call
def counted(self, method, *args, **kwargs):
    calls[method] += 1
    return call(self, method, *args, **kwargs)
client.Client.call, sys.argv[0] = counted, sys.argv[1]
code = compat.main(sys.argv[2:])
sys.stdout.flush()
print(sum(calls.values()), file=sys.stderr)
sys.exit(code)"""


def counted(cluster, *argv: str) -> tuple[int, str, str, int]:
    """A shim run as a command, and how many calls it made to the master: (exit code, stdout, stderr, calls)."""
    r = subprocess.run([sys.executable, "-c", COUNTED, *argv], env=cluster.env, capture_output=True, text=True, timeout=60)
    *err, calls = r.stderr.splitlines() or ["?"]
    return r.returncode, r.stdout, "".join(f"{line}\n" for line in err), int(calls)


def test_scontrol_acts_on_many_jobs_in_a_few_calls(cluster):
    """QA: `scontrol release` of 10,000 ids took 155 s, a call or two to the master a job (`grun -e resume` of them:
    3.4 s): now one read of the live jobs (and one of the ended), one hold, release or edit of them all."""
    from util import wait_for
    ids = cluster.client().submit_many([job_spec(["sleep", "30"], hold=True, name=f"many{i}") for i in range(40)])
    words = ",".join(map(str, ids))
    assert counted(cluster, "scontrol", "update", f"JobId={words}", "TimeLimit=5") == (0, "", "", 2)
    assert {j["time"] for j in map(cluster.client().job, ids)} == {300}
    assert counted(cluster, "scontrol", "release", words) == (0, "", "", 2)
    code, out, err, calls = counted(cluster, "scontrol", "hold", words)  # (those running: as Slurm's, refused)
    held = [i for i in ids if cluster.client().job(i)["state"] == "held"]
    assert (code, out, calls, len(held)) == (1, "", 2, 40 - err.count("\n")), err
    assert err == "".join(f"Job is no longer pending execution for job {i}\n" for i in ids if i not in held)
    assert counted(cluster, "scancel", *map(str, ids)) == (0, "", "", 1)
    wait_for(lambda: all(cluster.client().job(i)["state"] in J.FINAL_STATES for i in ids), 30, what="all cancelled")
    assert counted(cluster, "scontrol", "hold", f"{words},99999") == (
        1, "", "".join(f"Job has already finished for job {i}\n" for i in ids) + "Invalid job id specified for job 99999\n",
        43)  # (one unknown: the master's wait refuses them all, and each is asked for: 1 + 1 + 41)
    assert counted(cluster, "scontrol", "hold", words)[3] == 2


def test_qsub_script_with_directives_and_sge_names(cluster, shims, tmp_path):
    script = tmp_path / "job.sge"
    script.write_text("#!/bin/sh\n#$ -N sgejob\n#$ -cwd -j y\n#$ -pe smp 2\n#$ -l h_vmem=200M\n"
                      "echo job=$JOB_ID slots=$NSLOTS task=$SGE_TASK_ID name=$JOB_NAME\necho e >&2\n")
    r = shims("qsub", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[2])
    assert r.stdout == f'Your job {job_id} ("sgejob") has been submitted\n'
    job = wait_end(cluster, job_id)
    assert job["cpus"] == 2 and job["memory"] == 400 and job["exit"] == 0
    assert (tmp_path / f"sgejob.o{job_id}").read_text() == f"job={job_id} slots=2 task=undefined name=sgejob\ne\n"


def test_qsub_binary_terse_sync_stdin_qstat_qdel_qacct(cluster, shims, tmp_path):
    r = shims("qsub", "-b", "y", "-terse", "-sync", "y", "-cwd", "-o", "o.txt", "-e", "e.txt", "sh", "-c", "echo x; exit 2",
              cwd=tmp_path)
    assert r.returncode == 2 and r.stdout.splitlines()[0].isdigit(), r.stderr
    job_id = r.stdout.splitlines()[0]
    assert r.stdout.splitlines()[1] == f"Job {job_id} exited with exit code 2."
    assert (tmp_path / "o.txt").read_text() == "x\n"
    acct = dict(line.split(None, 1) for line in shims("qacct", "-j", job_id).stdout.splitlines()[1:])
    assert acct["exit_status"].strip() == "2" and acct["jobnumber"].strip() == job_id
    r = shims("qsub", "-terse", "-cwd", input="sleep 30\n", cwd=tmp_path)  # the script on stdin, no #!
    job_id = r.stdout.strip()
    cluster.client().wait_started(int(job_id))
    row = next(line.split() for line in shims("qstat").stdout.splitlines()[2:] if line.split()[0] == job_id)
    assert row[2] == "STDIN" and row[4] == "r"
    assert f"<JB_job_number>{job_id}</JB_job_number>" in shims("qstat", "-xml").stdout
    assert "job_name:" in shims("qstat", "-j", job_id).stdout
    r = shims("qdel", job_id)
    assert r.returncode == 0 and f"has registered the job {job_id} for deletion" in r.stdout
    assert wait_end(cluster, int(job_id))["state"] == "killed"
    r = shims("qdel", "99999")
    assert r.returncode == 1 and 'denied: job "99999" does not exist' in r.stdout
    r = shims("qsub", "-terse", "-P", "proj", "-A", "acct", "-q", "all.q", "-b", "y", "true", cwd=tmp_path)
    assert r.returncode == 0 and [line.split()[2] for line in r.stderr.splitlines()] == ["-q", "-P", "-A"], r.stderr
    for args, words in ((["-l", "gpu=1", "-b", "y", "true"], "no node has gpu"), (["-q", "all.q", "-now", "y"], "-now"),
                        (["-l", "h_vmem", "-b", "y", "true"], "-l h_vmem")):
        r = shims("qsub", *args, cwd=tmp_path)
        assert r.returncode == 1 and words in r.stderr and not r.stdout, (args, r.stderr)


def test_time_limits_map_onto_grun_time(cluster, shims, tmp_path):
    r = shims("sbatch", "--parsable", "-t", "0:02", "--wrap", "sleep 30", cwd=tmp_path)  # MM:SS, as Slurm reads it
    job_id = int(r.stdout)
    assert cluster.client().job(job_id)["time"] == 2
    wait_end(cluster, job_id)
    assert shims("sacct", "-nPj", str(job_id), "--format", "State,ExitCode").stdout.strip() == "TIMEOUT|0:15"
    assert "JobState=TIMEOUT Reason=TimeLimit " in shims("scontrol", "show", "job", str(job_id)).stdout  # (Slurm's)
    r = shims("srun", "-t", "0:02", "sleep", "30", cwd=tmp_path)  # (as Slurm's: killed with TERM, 128 + 15)
    assert r.returncode == 143 and shims("srun", "sh", "-c", "exit 124").returncode == 124, r.stderr
    r = shims("sbatch", "-W", "-t", "0:02", "--array=1-2", "-o", "/dev/null", "--wrap", "sleep 30", cwd=tmp_path)
    assert r.returncode == 1, r.stderr  # (Slurm's sbatch -W: 1 for a job a signal ended, not grun's 124)
    r = shims("qsub", "-terse", "-b", "y", "-l", "h_rt=90", "true", cwd=tmp_path)  # seconds, as SGE reads it
    assert cluster.client().job(int(r.stdout))["time"] == 90
    assert shims("sbatch", "-t", "soon", "--wrap", "true").returncode == 1


def test_arrays_with_a_limit_and_their_task_names(cluster, shims, tmp_path):
    r = shims("sbatch", "--parsable", "--array=1-4%2", "-o", "out-%A_%a.txt", "--wrap",
              "echo $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_JOB_ID", cwd=tmp_path)
    array = int(r.stdout)
    assert wait_end(cluster, array)["exit"] == 0
    found = [(tmp_path / f"out-{array}_{t}.txt").read_text().split() for t in range(1, 5)]
    assert [f[:2] for f in found] == [[str(array), str(t)] for t in range(1, 5)]
    assert len({f[2] for f in found}) == 4  # each task its own job id, as in Slurm
    r = shims("qsub", "-t", "1-3", "-tc", "1", "-cwd", "-b", "y", "sh", "-c", "echo $JOB_ID.$SGE_TASK_ID", cwd=tmp_path)
    assert r.stdout.startswith("Your job-array ") and r.stdout.split()[2].endswith(".1-3:1"), r.stdout
    array = int(r.stdout.split()[2].split(".")[0])
    wait_end(cluster, array)
    assert [(tmp_path / f"sh.o{array}.{t}").read_text() for t in (1, 2, 3)] == [f"{array}.{t}\n" for t in (1, 2, 3)]


@pytest.mark.skipif(not hasattr(J, "WAITING"), reason="needs job dependencies (the master's `waiting` state)")
def test_dependencies_afterok_and_hold_jid(cluster, shims, tmp_path):
    first = shims("sbatch", "--parsable", "--wrap", "sleep 1; echo 1 >> order", cwd=tmp_path).stdout.strip()
    second = shims("sbatch", "--parsable", "-d", f"afterok:{first}", "--wrap", "echo 2 >> order", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    r = shims("squeue", "-h", "-j", second.stdout.strip(), "-o", "%T %R")
    assert r.stdout.split() in (["PENDING", "(Dependency)"], ["RUNNING"], []) or "COMPLETED" in r.stdout, r.stdout
    third = shims("qsub", "-terse", "-cwd", "-hold_jid", second.stdout.strip(), "-b", "y", "sh", "-c", "echo 3 >> order",
                  cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    wait_end(cluster, int(third.stdout))
    assert (tmp_path / "order").read_text() == "1\n2\n3\n"
    prep = shims("qsub", "-terse", "-cwd", "-N", "prep", "-b", "y", "sh", "-c", "sleep 1; echo p >> named", cwd=tmp_path)
    after = shims("qsub", "-terse", "-cwd", "-hold_jid", "pre*", "-b", "y", "sh", "-c", "echo a >> named", cwd=tmp_path)
    assert [i for _, i in cluster.client().job(int(after.stdout))["deps"]] == [int(prep.stdout)]  # by name, a glob
    wait_end(cluster, int(after.stdout))
    assert (tmp_path / "named").read_text() == "p\na\n"
    failed = shims("sbatch", "--parsable", "--wrap", "exit 1", cwd=tmp_path).stdout.strip()
    never = shims("sbatch", "--parsable", "--dependency", f"afterok:{failed}", "--wrap", "true", cwd=tmp_path)
    assert wait_end(cluster, int(never.stdout))["state"] == "cancelled"
    r = shims("sacct", "-nPj", never.stdout.strip(), "-o", "State,ExitCode")
    assert r.stdout.strip() == "CANCELLED|0:0"  # (it never ran: no exit code, as Slurm's)


def test_sbatch_H_and_qsub_h_queue_the_job_held_so_it_never_starts_before_its_release(cluster, shims, tmp_path):
    # The hold is part of the submission's commit: on an idle cluster a submit-then-hold started the job first
    # (and the hold then suspended it).
    ids = [int(shims("sbatch", "--parsable", "-H", "--wrap", "echo s > ran_s", cwd=tmp_path).stdout),
           int(shims("qsub", "-terse", "-cwd", "-h", "-b", "y", "sh", "-c", "echo q > ran_q", cwd=tmp_path).stdout)]
    time.sleep(1.5)
    client = cluster.client()
    assert [client.job(i)["state"] for i in ids] == ["held", "held"]
    assert not list(tmp_path.glob("ran_*"))
    r = shims("squeue", "-h", "-j", str(ids[0]), "-o", "%T %R")
    assert r.stdout.split() == ["PENDING", "(JobHeldUser)"], r.stdout
    client.resume(ids)
    assert [wait_end(cluster, i)["state"] for i in ids] == ["done", "done"]
    assert (tmp_path / "ran_s").read_text() == "s\n" and (tmp_path / "ran_q").read_text() == "q\n"


@pytest.mark.parametrize("kind", ["SLURMCluster", "SGECluster"])
def test_dask_jobqueue_scales_workers_as_grun_jobs(cluster, shims, tmp_path, monkeypatch, kind):
    """A real third-party client, unchanged: dask-jobqueue writes its job script, submits it with sbatch or
    qsub (parsing the job id from what they print), and cancels it with scancel or qdel."""
    if os.environ.get("CI"):  # (the test extras install it: in CI a skip would hide the proof)
        import dask_jobqueue as jobqueue
    else:
        jobqueue = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install -e '.[test]')")
    from dask.distributed import Client as DaskClient
    monkeypatch.setenv("PATH", f"{shims.bin}:{os.environ['PATH']}")  # ours before the real Slurm of this machine
    import dask
    monkeypatch.setitem(dask.config.config, "temporary-directory", str(tmp_path))  # (else /tmp/dask-scratch-space stays)
    monkeypatch.setenv("GRUN_CONF", cluster.client_config)
    monkeypatch.chdir(tmp_path)
    semaphores = set(glob.glob("/dev/shm/sem.mp-*"))
    try:
        _scale_dask_workers(cluster, jobqueue, kind, tmp_path, DaskClient)
    finally:  # (dask's processes leave 12 named semaphores each run, its resource tracker killed with the workers)
        for name in set(glob.glob("/dev/shm/sem.mp-*")) - semaphores:
            with contextlib.suppress(OSError):
                os.unlink(name)
    assert not [j for j in cluster.client().jobs() if j["cmd"][3:4] == ["dask-worker"]]


def _scale_dask_workers(cluster, jobqueue, kind, tmp_path, DaskClient) -> None:
    with getattr(jobqueue, kind)(cores=1, memory="1GB", processes=1, walltime="00:10:00", python=sys.executable,
                                 log_directory=str(tmp_path), local_directory=str(tmp_path), scheduler_options={"host": "127.0.0.1"}) as dask:
        dask.scale(2)
        with DaskClient(dask) as client:
            client.wait_for_workers(2, timeout=60)
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
            assert sum(client.gather(client.map(lambda x: x * x, range(10)))) == 285
            names = {job["cmd"][3] for job in cluster.client().jobs() if job["state"] == "running"}
            assert len(names) == 1 and names <= {"dask-worker"}, names  # two jobs of one name, as in Slurm
        dask.scale(0)
        deadline = time.monotonic() + 30
        while [j for j in cluster.client().jobs() if j["cmd"][3:4] == ["dask-worker"]] and time.monotonic() < deadline:
            time.sleep(0.2)


def test_squeue_and_scancel_on_array_tasks(cluster, shims, tmp_path):
    array = shims("sbatch", "--parsable", "--array=1-3%1", "-o", "/dev/null", "--wrap", "sleep 30", cwd=tmp_path).stdout
    array = int(array)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "_1 R" not in (out := shims("squeue", "-h", "-o", "%i %t").stdout):
        time.sleep(0.1)
    assert f"{array}_1 R" in out and f"{array}_[2-3%1] PD" in out, out  # (Slurm: the tasks not started)
    assert shims("scancel", f"{array}_1").returncode == 0  # one task: the next starts
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and f"{array}_2 R" not in (out := shims("squeue", "-h", "-o", "%i %t").stdout):
        time.sleep(0.1)
    assert f"{array}_2 R" in out, out
    assert shims("scancel", str(array)).returncode == 0
    assert wait_end(cluster, array)["state"] == "killed"


def test_srun_inside_a_batch_job_runs_as_a_step_of_it(cluster, shims, tmp_path):
    """On a full cluster an srun that queued a job of its own waited for its parent's cpus (Slurm runs it as a
    step, in the job's allocation): here small is busy and the job holds all of big."""
    blocker = cluster.client().submit("sleep 60", hosts="small").id
    cluster.client().wait_started(blocker)
    (tmp_path / "steps.sh").write_text(
        f"#!/bin/sh\n#SBATCH -c 4 -o steps.out\nPATH={shims.bin}:$PATH  # (not this machine's real Slurm)\n"
        "srun sh -c 'echo step=$SLURM_STEP_ID job=$SLURM_JOB_ID proc=$SLURM_PROCID'\n"
        "srun sh -c 'echo step=$SLURM_STEP_ID'\necho data | srun cat\nsrun sh -c 'exit 3'; echo rc=$?\n"
        "srun -c 8 true; echo rc=$?\nsrun nosuch; echo rc=$?\n"
        "srun sh -c 'trap \"echo got TERM; exit 5\" TERM; while :; do sleep 0.1; done' & sleep 2; kill -TERM $!\n"
        "wait $!; echo rc=$?\n")
    try:
        job_id = int(shims("sbatch", "--parsable", "steps.sh", cwd=tmp_path).stdout)
        assert wait_end(cluster, job_id)["exit"] == 0
    finally:
        shims("scancel", str(blocker))
        wait_end(cluster, blocker)
    assert (tmp_path / "steps.out").read_text() == (
        f"step=0 job={job_id} proc=0\nstep=1\ndata\nrc=3\n"
        f"srun: error: Unable to create step for job {job_id}: More processors requested than permitted\nrc=1\n"
        "srun: error: execve(): nosuch: No such file or directory\nrc=2\ngot TERM\nrc=5\n")
    assert max(j["id"] for j in cluster.client().jobs() + cluster.client().history(1000)) == job_id  # no job after it


def test_a_step_gets_a_signal_to_its_job_once(cluster, shims, tmp_path):
    """scancel signals the job's process group, srun's too: srun forwarded the TERM to its step, which had it
    already (from the group), so the step counted two; Slurm's step gets one."""
    (tmp_path / "count.py").write_text("import signal, time\ngot = []\nsignal.signal(signal.SIGTERM, lambda *_: got.append(1))\n"
                                       "print('ready', flush=True)\nwhile not got:\n    time.sleep(0.01)\n"
                                       "time.sleep(1)\nprint('got', len(got))\n")
    (tmp_path / "count.sh").write_text(f"#!/bin/sh\n#SBATCH -o count.out\nPATH={shims.bin}:$PATH\n"
                                       f"srun grep SigIgn /proc/self/status\n"  # (not SIGPIPE, which Python ignores)
                                       f"trap 'echo batch got TERM' TERM\nsrun {sys.executable} count.py\n")
    job_id = int(shims("sbatch", "--parsable", "count.sh", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while "ready" not in ((tmp_path / "count.out").read_text() if (tmp_path / "count.out").exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert shims("scancel", "-s", "TERM", str(job_id)).returncode == 0
    wait_end(cluster, job_id)
    ignored, rest = (tmp_path / "count.out").read_text().split("\n", 1)
    assert not int(ignored.split()[1], 16) & 1 << (signal.SIGPIPE - 1) and rest == "ready\ngot 1\nbatch got TERM\n"


def test_srun_killed_with_TERM_kills_its_job(cluster, shims, tmp_path):
    srun = subprocess.Popen([str(shims.bin / "srun"), "-J", "termed", "sleep", "30"], env=cluster.env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (mine := [j for j in cluster.client().jobs() if j["cmd"][3:4] == ["termed"] and j["state"] == "running"]):
        assert time.monotonic() < deadline and srun.poll() is None
        time.sleep(0.1)
    srun.send_signal(15)
    assert srun.wait(timeout=30) == 143
    assert wait_end(cluster, mine[0]["id"])["state"] == "killed"


def test_squeue_and_sacct_show_an_arrays_tasks(cluster, shims, tmp_path):
    go = tmp_path / "go"  # (its tasks run until it exists: 'sleep 2' ended before squeue looked on a loaded machine)
    array = int(shims("sbatch", "--parsable", "--array=1-4%2", "-o", "/dev/null", "--wrap",
                      f"while [ ! -e {go} ]; do sleep 0.1; done", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(lines := shims("squeue", "-h", "-j", str(array), "-o", "%i %t %R").stdout
                                                        .splitlines()) < 3:
        time.sleep(0.1)
    assert lines[0] == f"{array}_[3-4%2] PD (JobArrayTaskLimit)" and sorted(line.split()[:2] for line in lines[1:]) == [
        [f"{array}_1", "R"], [f"{array}_2", "R"]], lines
    assert shims("squeue", "-h", "-j", f"{array}_2", "-o", "%i").stdout.split() == [f"{array}_2"]
    assert shims("squeue", "-h", "-r", "-t", "PD", "-o", "%i").stdout.split() == [f"{array}_3", f"{array}_4"]
    go.touch()
    wait_end(cluster, array)
    tasks = [f"{array}_{t}|COMPLETED" for t in (1, 2, 3, 4)]
    assert shims("sacct", "-nPj", str(array), "-o", "JobID,State").stdout.split() == tasks
    assert shims("sacct", "-nPj", f"{array}_3", "-o", "JobID,State").stdout.split() == tasks[2:3]
    everything = shims("sacct", "-nP", "-o", "JobID,State").stdout.split()
    assert set(tasks) <= set(everything) and not [line for line in everything if f"{array}_[" in line]
    assert set(tasks) <= set(shims("squeue", "-h", "-t", "CD", "-o", "%i|%T").stdout.split())
    assert f"{array}_1" in shims("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()  # (ended: MinJobAge)


def test_squeue_says_resources_for_the_first_in_line_and_refuses_bad_states_and_users(cluster, shims, tmp_path):
    ids = [shims("sbatch", "--parsable", "-J", "wide", "-c", "4", "--wrap", "sleep 30", cwd=tmp_path).stdout.strip()
           for _ in range(3)]
    try:
        cluster.client().wait_started(int(ids[0]))
        assert shims("squeue", "-h", "-n", "wide,other", "-o", "%i").stdout.split() == ids[1:] + ids[:1]  # (PD first)
        r = shims("squeue", "-h", "-j", ",".join(ids[1:]), "-o", "%i %R")
        assert r.stdout.splitlines() == [f"{ids[1]} (Resources)", f"{ids[2]} (Priority)"], r.stdout
    finally:
        shims("scancel", *ids)
    for args, words in ((["-t", "foo"], "squeue: error: Invalid job state specified: foo\n"),
                        (["-u", "nosuchuser"], "squeue: error: Invalid user: nosuchuser\n")):
        r = shims("squeue", *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", words)
    assert shims("squeue", "-h", "-t", "pd,R", "-u", "0", "-o", "%i").returncode == 0  # (uid 0: root, a user)


def test_sbatch_messages_and_environment_as_slurms(cluster, shims, tmp_path):
    for args, words in ((["--mem=500G", "--wrap", "true"], "no node has"), (["nonexist.sh"], "Unable to open file nonexist.sh")):
        r = shims("sbatch", *args, cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.startswith(f"sbatch: error: {words}") and "--force" not in r.stderr, r.stderr
    env = {k: v for k, v in cluster.env.items() if k != "USER"}  # (Slurm sets USER in the job even so)
    r = subprocess.run([str(shims.bin / "sbatch"), "--parsable", "--export=NONE", "-c", "2", "--array=1-5:2", "-o", "env-%a",
                        "--wrap", "echo pid=$$; env"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    wait_end(cluster, int(r.stdout))
    got = dict(line.split("=", 1) for line in (tmp_path / "env-3").read_text().splitlines() if "=" in line)
    assert {k: got.get(k) for k in ("USER", "SLURM_JOB_USER", "SLURM_JOB_CPUS_PER_NODE", "SLURM_NTASKS", "SLURM_PROCID",
                                    "SLURM_LOCALID", "SLURM_NODEID", "SLURM_TASKS_PER_NODE", "SLURM_ARRAY_TASK_COUNT",
                                    "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_ID")} == {
        "USER": current_user(), "SLURM_JOB_USER": current_user(), "SLURM_JOB_CPUS_PER_NODE": "2",
        "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "1",
        "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "5", "SLURM_ARRAY_TASK_ID": "3"}
    assert {k: got.get(k) for k in ("SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_CLUSTER_NAME", "SLURM_GTIDS", "SLURM_TASK_PID")} \
        == {"SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()), "SLURM_CLUSTER_NAME": "grun",
            "SLURM_GTIDS": "0", "SLURM_TASK_PID": got["pid"]}  # (the script's own pid, as Slurm's)
    assert got["SLURM_NODELIST"] == got["SLURM_JOB_NODELIST"] == "big"


def test_srun_whose_reader_goes_away_kills_its_job(cluster, shims, tmp_path):
    """`srun yes | head -1`: srun gets EPIPE and its job goes with it, as grun's does (srun left it running)."""
    r = subprocess.run(f"{shims.bin}/srun -J epipe yes | head -1", shell=True, env=cluster.env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.stdout == "y\n", r.stderr
    client = cluster.client()
    job = next(j for j in client.jobs() + client.history(20) if "yes" in str(j.get("cmd")))
    end = wait_end(cluster, job["id"])  # (failed of SIGPIPE, as it would have here: grun's too, test_cli_forms)
    assert (end["state"], end["signal"]) == ("failed", 13), end


def test_sinfo_shows_a_stopped_and_a_lost_node_as_slurm_does_and_why(shims):
    """A node whose daemon stopped is drained (drng while its jobs run on), one gone silent down* (not responding);
    -R says why. And a node offering more than its machine has is warned of, in its log and in `grun -q conf`."""
    from cluster import LocalCluster
    from util import nowait, wait_for
    nodes = {"ok": {"cpus": 50000, "memory": "64T"}, "gone": {"cpus": 1, "memory": 500, "heartbeat": 10},
             "lost": {"cpus": 1, "memory": 500}}
    with LocalCluster(nodes, master_extra={"node_timeout": 1}) as c:
        sinfo = lambda *args: subprocess.run([str(shims.bin / "sinfo"), *args], env=c.env, capture_output=True,
                                             text=True, timeout=60).stdout.splitlines()
        job = nowait(c, "-H", "gone", "sleep", "60")
        wait_for(lambda: c.client().job(job)["state"] == "running", 20, what="the job to run")
        assert c.grun("-C", c.configs["gone"], "-d", "-k").returncode == 0 and c.procs["gone"].wait(15) == 0
        c.kill("lost")  # (SIGKILL: silent, lost after node_timeout; gone, beating every 10 s, after 30)
        wait_for(lambda: {n["name"]: n["state"] for n in c.client().nodes()} == {"ok": "up", "gone": "stopped",
                                                                                "lost": "down"}, 20, what="both down")
        assert sorted(line.split() for line in sinfo("-N", "-h")) == [
            ["gone", "1", "grun*", "drng"], ["lost", "1", "grun*", "down*"], ["ok", "1", "grun*", "idle"]]
        assert sinfo("-s", "-h")[0].split() == ["grun*", "up", "infinite", "1/1/1/3", "gone,lost,ok"]
        lines = sinfo("-R")
        assert lines[0].split() == ["REASON", "USER", "TIMESTAMP", "NODELIST"], lines
        assert sorted((line[:20].strip(), *line[21:].split()[::2]) for line in lines[1:]) == [
            ("Node daemon stopped", "grun", "gone"), ("Not responding", "grun", "lost")], lines
        assert all(abs(time.mktime(time.strptime(line.split()[-2], "%Y-%m-%dT%H:%M:%S")) - time.time()) < 60
                   for line in lines[1:]), lines  # (when it was last heard from)
        c.client().kill([job])
        import psutil
        logs = {}
        for name in ("ok", "lost"):
            with open(os.path.join(c.root, name, "grun.log")) as f:
                logs[name] = f.read()
        conf = c.grun("-C", c.configs["ok"], "-q", "conf").stdout.decode()
        machine = psutil.virtual_memory().total // 2 ** 20
        for text in ("cpus: 50,000 offered, more than this machine's",
                     f"memory: 67,108,864 offered, more than this machine's {machine:,} MB"):
            assert logs["ok"].count(text) == 1 and f"# warning: {c.configs['ok']}:" in conf and text in conf, logs
        assert "more than this machine's" not in logs["lost"]


def test_a_cancelled_arrays_unstarted_tasks_task_ranges_and_states_as_slurms(cluster, shims, tmp_path):
    """scancel N_[3-4]: those tasks (not started); scancel -t PD: only tasks not started. An array cancelled with
    tasks not started: sacct and squeue -t CA show them as one line, N_[5-6%2] CANCELLED; sacct's lines by id
    (its -s: jobs in those states, by default now), sacct's fields by Slurm's names, a `+` where a value is cut."""
    array = int(shims("sbatch", "--parsable", "--array=1-6%2", "-J", "a-long-name", "-o", "/dev/null", "--wrap",
                      "sleep 30", cwd=tmp_path).stdout)
    other = int(shims("sbatch", "--parsable", "--array=1-3%1", "-o", "/dev/null", "--wrap", "sleep 30", cwd=tmp_path).stdout)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not {f"{array}_1", f"{array}_2", f"{other}_1"} <= set(
            shims("squeue", "-h", "-t", "R", "-o", "%i").stdout.split()):
        time.sleep(0.1)
    assert shims("scancel", f"{array}_[3-4]").returncode == 0 and shims("scancel", "-t", "PD", str(other)).returncode == 0
    lines = shims("squeue", "-h", "-t", "PD,R", "-j", f"{array},{other}", "-o", "%i %t").stdout.splitlines()
    assert sorted(lines) == sorted([f"{array}_1 R", f"{array}_2 R", f"{array}_[5-6%2] PD", f"{other}_1 R"]), lines
    assert shims("scancel", str(array), str(other)).returncode == 0
    wait_end(cluster, array), wait_end(cluster, other)
    ids = [f"{array}_{t}" for t in (1, 2, 3, 4)] + [f"{array}_[5-6%2]"] + [f"{other}_{t}" for t in (1, 2, 3)]
    assert shims("sacct", "-nPj", str(array), "-o", "JobID,State").stdout.split() == [f"{i}|CANCELLED" for i in ids[:5]]
    assert f"{array}_[5-6%2] CA" in shims("squeue", "-h", "-t", "CA", "-o", "%i %t").stdout.splitlines()
    for states, window, seen in (("CA", ["-S", "now-1hour"], True), ("CD,F", ["-S", "now-1hour"], False), ("CA", [], False)):
        out = [i for i in shims("sacct", "-nP", "-s", states, *window, "-o", "JobID").stdout.split() if i in ids]
        assert out == (ids if seen else []), (states, window, out)
    row = shims("sacct", "-n", "-j", str(array), "-o", "JobID,JobName%6,State%8").stdout.splitlines()[0].split()
    assert row == [f"{array}_1", "a-lon+", "CANCELL+"], row
    lines = shims("sacct", "-P", "-j", str(other), "-o", "JobID,Reason,Priority").stdout.splitlines()
    assert lines[0] == "JobID|Reason|Priority" and all(lines[1].split("|")), lines
    for args, words in ((["sacct", "-o", "JobID,reasonlist"], 'sacct: error: Invalid field requested: "reasonlist"\n'),
                        (["sacct", "-s", "done"], "sacct: error: Invalid job state specified: done\n"),
                        (["scancel", f"{array}_[5-4]"], f"scancel: error: Invalid job id {array}_[5-4]\n")):
        r = shims(*args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", words), r


def test_a_reader_gone_ends_the_commands_quietly(cluster, shims, tmp_path):
    """`sacct | head -1`: no word, as Slurm's; 141, as grun's CLI (a process killed by SIGPIPE)."""
    job = int(shims("sbatch", "--parsable", "--wrap", "true", cwd=tmp_path).stdout)
    wait_end(cluster, job)
    for argv in (["sacct", "-j", str(job)], ["squeue", "-t", "all"], ["sinfo"], ["qacct", "-j", str(job)]):
        read, write = os.pipe()
        os.close(read)  # (gone before the first line)
        try:
            r = subprocess.run([str(shims.bin / argv[0]), *argv[1:]], env=cluster.env, stdout=write,
                               stderr=subprocess.PIPE, timeout=60)
        finally:
            os.close(write)
        assert (r.returncode, r.stderr) == (141, b""), (argv, r)
