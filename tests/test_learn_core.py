"""Learned requests as pure code (issue 11 point 2): the key of a job, the prediction from the last runs,
what a submission gets filled in and warned of, the table's bounds, and a master restart that must
neither lose nor double-count a run (snapshot + journal replay through the same apply)."""
from __future__ import annotations

import random

import pytest

from grun.core import jobs as J
from grun.core import learn as L
from grun.core.master_state import MasterState

SETTINGS = {"learn": True, "learn_memory_factor": 4.0, "learn_runs": 20}


@pytest.mark.parametrize("cmd, shell, program", [
    (["python3", "-u", "/data/x/align.py", "r1.fq"], False, "align.py"),
    (["/usr/bin/python3.11", "-W", "ignore", "tools/sort.py"], False, "sort.py"),
    (["bash", "run.sh", "a"], False, "run.sh"),
    (["Rscript", "--vanilla", "stats.R"], False, "stats.R"),
    (["perl", "-e", "print 1"], False, "perl -e 'print 1'"),
    (["python3", "-m", "pip", "list"], False, "python3 -m 'pip'"),
    (["/opt/bin/bwa", "mem", "ref.fa"], False, "bwa"),
    (["sh -c 'x' | sort"], True, "x|sort"),  # the shell's words, as rules see them; `sh -c SCRIPT`: what SCRIPT runs
    (["/bin/sh", "-c", "cd /x && python3 a.py"], False, "a.py"),  # (was `sh -c 'cd /x && python3 a.py'`)
    (["bash", "-o", "pipefail", "-ec", "module load gcc\nmake -j4 \\\n  all"], False, "make"),
    (["python3 -u 'my run.py' > out"], True, "my run.py"),
    (["/usr/bin/env", "python3", "a.py"], False, "a.py"),
    (["ksh", "x.ksh"], False, "x.ksh"),
    (["samtools sort in.bam > out.bam"], True, "samtools"),
    (["python3"], False, "python3"),
    (["cd /tmp && python3 -u big.py"], True, "big.py"),  # (was cd: every `cd DIR && ...` line shared one key, and a
    (["cd /tmp && true"], True, "true"),                 # big job was killed at the limit its small ones taught)
    (["echo start; X=1 ./prog a | sort"], True, "prog|sort"),
    (["module load gcc; make -j4"], True, "make"),
    (["echo", "a;", "python3", "x.py"], False, "echo"),  # an argv is no shell line: nothing split at its words
    (["cd /x && exec python3 -u a.py"], True, "a.py"),
    (["nohup", "time", "./sim", "1"], False, "sim"),
    (["env", "OMP_NUM_THREADS=4", "./sim"], False, "sim"),
    (["/bin/sh", "-c", "python3 \\\n  -u a.py"], False, "a.py"),  # a line continued by `\`
    (["/bin/sh", "-c", "OMP_NUM_THREADS=4 \\\r\n ./sim\n"], False, "sim"),
    (["/bin/sh", "-c", "X=1\n  # note\n\nmodule load x\n./run a"], False, "run"),
    (["sleep", "5"], False, "sleep 5"),  # its argument is its length: `sleep 5` learns nothing from `sleep 15`
    (["/bin/sh", "-c", "cd /x && /bin/sleep 15; echo"], False, "sleep 15"),
    (["sleep 1m && true"], True, "sleep 1m"),
    (["sh", "-c", "echo sleep 5 && sleep 60"], False, "sleep 60"),  # the sleep that runs, not the first word sleep
    (["echo sleep 5; sleep 60"], True, "sleep 60"),
    (["echo hi; exit 0"], True, "echo"),  # (was exit: every line ending `exit` shared one key, and its learned limit)
    (["mytool a | tee log; exit $?"], True, "mytool|tee"),
    (["./a & ./b & wait"], True, "a&b"),
    # a pipeline or list is all its commands (QA: `cat nums | python3 -c BIG` got `grun cat`'s 12 MB and was killed
    # at 48; `sh -c "head -n 50; sleep 20; cat"` head's): a plain line stays its program's
    (["cat nums.txt | python3 -c 'import sys'"], True, "cat|python3 -c 'import sys'"),
    (["zcat r.fq.gz | bwa mem ref - > out.sam"], True, "zcat|bwa"), (["zcat r.fq.gz > r.fq"], True, "zcat"),
    (["sh", "-c", "head -n 50; sleep 20; cat"], False, "head;sleep 20;cat"),
    (["cd /x && ./a || ./b"], True, "a||b"), (["a|b|c|d|e|f"], True, "a|b|c|d|"),  # (KEYED commands at most)
    (["sh", "-c", "module load x\n./a\n./b | ./c\n./d\n./e"], False, "a;b|c;d;"),  # a script: its lines, KEYED at most
    (["exit 3"], True, "exit"),  # (nothing else there)
    (["sh", "-c", "echo hi; exit 0"], False, "echo"), (["sh", "-c", "echo a\nmytool\nexit 0"], False, "mytool"),
    (["sh", "-c", "echo a\nexit 0"], False, "echo"),
    # a Python call (grun.calls) by its function: all shared one key, and a tiny function's learned limit killed a big one
    (["/usr/bin/python3", "-u", "-m", "grun.remote_worker", "lab.fit"], False, "python3 call lab.fit"),
    (["python3", "-m", "grun.remote_worker", "__main__.<lambda>"], False, "python3 call __main__.<lambda>"),
    # and by its code (grun.calls.code_key): every `f` and `<lambda>` of every script shared one key
    (["python3", "-m", "grun.remote_worker", "__main__.f", "3fa2c19b01de"], False, "python3 call __main__.f 3fa2c19b01de"),
])
def test_the_program_is_the_script_for_interpreters_else_the_command(cmd, shell, program):
    assert L.program_of({"cmd": cmd, "shell": shell}) == program


@pytest.mark.parametrize("line, words", [
    ("zcat x|bwa mem ref - >out.sam 2>&1", ["zcat", "x", "|", "bwa", "mem", "ref", "-", ">", "out.sam", "2", ">&", "1"]),
    ("a||b;c &&d |& e&", ["a", "||", "b", ";", "c", "&&", "d", "|&", "e", "&"]),
    ("x=$(date); y\tz\r\n", ["x=$(date)", ";", "y", "z"]),  # (`()` no operator; only blank, tab, CR, LF part words)
    ("a\x0bb;c", ["a\x0bb", ";", "c"]),
    ("a; b # c | d", ["a", ";", "b"]),  # (a comment: shlex's)
    ("a 'b; c' | \"d e\"", ["a", "b; c", "|", "d e"]),  # (quotes: shlex's)
    ("a 'b | c", ["a", "'b", "|", "c"]),  # (unbalanced: at blanks)
    ("a>b c", ["a>b", "c"]),  # (no ; & |: at blanks, as before)
])
def test_a_shell_line_splits_as_shlex_does_without_it_where_unquoted(line, words):
    """(shlex for every line with ; & or | made program_of, at submit and in finish under the master's lock, 5x slower.)"""
    assert J.split(line) == words


def test_a_job_of_the_slurm_and_sge_commands_is_keyed_by_what_its_user_gave_them():
    """(Every sbatch, srun and qsub job of a user shared one key, the first 40 characters of grun.compat's wrapper.)"""
    from grun import compat

    class Client:
        def submit_spec(self, spec):
            self.program = L.program_of(spec)
            return 1
    client, wrap = Client(), "#!/bin/sh\n# This script was created by sbatch --wrap.\n\ncd /x && python3 a.py\n"
    for args, program in [(("slurm", "wrap", wrap, [], "slurm-%j.out"), "a.py"),
                          (("slurm", "run.sh", "#!/bin/bash\n#SBATCH -c 2\nsamtools sort $1\n", ["in.bam"]), "samtools"),
                          (("slurm", "srun", None, ["python3", "b.py"]), "b.py"),
                          (("sge", "x", None, ["/bin/sh", "-c", "exec ./sim 1"], "o", "e"), "sim"),  # qsub -b y
                          (("sge", "x", None, ["./sim", "1"], "mktemp.out", "e"), "sim"),  # (read as a script)
                          # (all three were `import`, the first line of code of every Python batch script)
                          (("slurm", "job.py", "#!/usr/bin/env python3\n#SBATCH -c 2\nimport os\n", []), "job.py"),
                          (("slurm", "j2", "#!/usr/bin/env -S python3 -u\nimport os\n", []), "j2"),
                          (("sge", "x.py", "import os\n", [], "o", "e", "/usr/bin/python3"), "x.py"),  # qsub -S
                          (("sge", "b.sh", "cd /x\npython3 b.py\n", [], "o", "e", "/bin/bash"), "b.py"),
                          (("slurm", "mpi.sh", "#!/bin/bash\n#SBATCH -n 4\nmodule load openmpi\nsrun -n 4 ./sim in\n",
                            []), "mpi.sh"),  # (was srun)
                          (("slurm", "s.sh", "#!/bin/sh\n# sleep 5\nsleep 60\n", []), "sleep 60")]:
        compat.submit(client, *args)
        assert client.program == program


def test_the_compat_wrapper_is_read_in_one_place_the_same_by_every_reader():
    from grun import compat, tables
    from grun.core.jobs import wrapped

    class Client:
        def submit_spec(self, spec):
            self.job = spec
            return 1
    client = Client()
    compat.submit(client, "slurm", "run.sh", "#!/bin/sh\n./a\n", ["x y", "z"], "slurm-%j.out")
    assert wrapped(client.job["cmd"]) == ("run.sh", "#!/bin/sh\n./a\n", ["x y", "z"])
    assert (tables.command_text(client.job), tables.name_of(client.job)) == ("run.sh 'x y' z", "run.sh")
    compat.submit(client, "slurm", "srun", None, ["./b", "1"])
    assert wrapped(client.job["cmd"]) == ("srun", None, ["./b", "1"])
    assert (tables.command_text(client.job), tables.name_of(client.job)) == ("./b 1", "srun")
    assert wrapped(["/bin/sh", "-c", "echo hi", "x"]) is None and wrapped(["./a"]) is None


def _run(table, peak_mb=100, wall=10.0, cpu=5.0, user="ann", cmd=("python3", "align.py"), keep=20, **job):
    job = {"cmd": list(cmd), "user": user, "state": "done",
           "usage": {"wall": wall, "utime": cpu, "stime": 0.0, "maxrss_kb": peak_mb * 1024}, **job}
    return table.observe(job, keep)


def _req(**extra):
    return {"cmd": ["python3", "align.py", "x"], "user": "ann", "memory": 100, "cpus": 1.0, **extra}


def test_after_three_runs_a_request_gets_p95_memory_cpus_and_an_expected_time_with_their_origin():
    table, req = L.Learned(), _req()
    for peak in (300, 310):
        _run(table, peak)
    table.fill([req], SETTINGS)
    assert req == _req(), "two runs are not enough to go on"
    _run(table, 290, wall=20.0, cpu=19.0)
    table.fill([req], SETTINGS)
    assert (req["memory"], req["cpus"], req["expected_time"], req["memory_limit"]) == (310, 1.0, 20.0, 1240)
    assert req["origin"]["memory"] == "learned: p95 of the last 3 runs of align.py by ann"
    assert set(req["origin"]) == {"memory", "cpus", "time"} and "time" not in req and "warnings" not in req
    assert _run(table, 100, user="bob") is None
    other = _req(user="bob")
    table.fill([other], SETTINGS)
    assert other == _req(user="bob"), "another user's runs say nothing of this one's"


def test_p95_of_the_last_runs_only_and_cpus_rounded_up_to_tenths():
    table = L.Learned()
    for i in range(40):
        _run(table, peak_mb=1000 if i < 20 else 100 + i, cpu=2.5 if i < 20 else 0.3, keep=20)
    memory, cpus, wall, top = table.keys[("ann", "align.py")].guess
    assert (memory, cpus, wall, top) == (138, 0.1, 10.0, 139), "the first 20 runs aged out"
    _run(table, 50, cpu=4.04, keep=5)  # a smaller window (learn_runs reloaded) applies from the next run
    assert len(table.keys[("ann", "align.py")].walls) == 5
    assert table.keys[("ann", "align.py")].guess[1] == 0.5


def test_what_the_user_or_a_rule_gave_stays_and_a_far_larger_memory_is_warned_of():
    table = L.Learned()
    for _ in range(3):
        _run(table, 1100)
    asked = _req(memory=64 * 1024, memory_set=True, cpus=8.0, cpus_set=True, time=60.0)
    table.fill([asked], SETTINGS)
    assert (asked["memory"], asked["cpus"], asked["time"]) == (64 * 1024, 8.0, 60.0)
    assert "memory_limit" not in asked and "origin" not in asked
    assert asked["warnings"] == ["-m 64.0G, but the last 3 runs of align.py by ann peaked at 1.1G"]
    close = _req(memory=2000, memory_set=True)  # under 4x, or under 1 GB over: no warning
    table.fill([close], SETTINGS)
    assert "warnings" not in close and close["origin"].keys() == {"cpus", "time"}


def test_the_learned_limit_follows_the_factor_and_learning_can_be_turned_off():
    table = L.Learned()
    for _ in range(3):
        _run(table, 200)
    off, none = _req(), _req()
    table.fill([off], dict(SETTINGS, learn_memory_factor=0.0))
    assert off["memory"] == 200 and "memory_limit" not in off
    table.fill([none], dict(SETTINGS, learn=False))
    assert none == _req()


def test_runs_near_their_limit_three_times_in_a_row_warn_at_finish_and_at_the_next_submit():
    table, near = L.Learned(), {"limits": {"memory_mb": 1000}}
    assert [_run(table, 950, **near) for _ in range(2)] == [None, None]
    assert _run(table, 10, wall=95.0, limits={"time": 100}) == (
        "the last 3 runs of align.py by ann used 90 % or more of their time limit of 100 s: they need more")
    req = _req()
    table.fill([req], SETTINGS)
    assert req["warnings"] == ["the last 3 runs of align.py by ann used 90 % or more of their time limit of 100 s"]
    assert _run(table, 500, **near) is None, "a run well under its limits starts the count again"
    table.fill([again := _req()], SETTINGS)
    assert "warnings" not in again


def test_runs_that_say_little_are_not_counted():
    table = L.Learned()
    _run(table, state="lost")
    _run(table, state="cancelled")
    _run(table, state="killed", kill_requested=15)
    _run(table, wall=0)
    assert not table.keys
    _run(table, state="killed", kill_requested=9, limit="memory")  # killed at its limit: it needs more
    assert len(table.keys[("ann", "align.py")].peaks) == 1 and not table.keys[("ann", "align.py")].walls


def test_a_run_killed_at_its_memory_limit_teaches_only_that_it_needs_more_than_the_limit():
    """(Its peak and cpu time were cut short: after one, a program using 0.2 cpus was given 1.)"""
    table = L.Learned()
    for _ in range(3):
        _run(table, 100, wall=10.0, cpu=2.0)
    warning = _run(table, 17, wall=1.0, cpu=1.0, state="failed", limit="memory", limits={"memory_mb": 150})
    runs = table.keys[("ann", "align.py")]
    assert (list(runs.peaks), len(runs.walls), len(runs.cpus), runs.near) == ([100, 100, 100, 150], 3, 3, 1), warning
    table.fill([req := _req()], SETTINGS)
    assert (req["memory"], req["cpus"], req["expected_time"]) == (150, 0.2, 10.0)


def test_runs_too_short_to_measure_teach_no_cpus():
    """`true`: cpu time / a wall of ~0 s said 0.7-0.8 cpus."""
    table = L.Learned()
    for _ in range(3):
        _run(table, 2, wall=0.004, cpu=0.003, cmd=("true",))
    table.fill([req := _req(cmd=["true"])], SETTINGS)
    assert (req["memory"], req["cpus"], req["expected_time"], set(req["origin"])) == (2, 1.0, 0.0, {"memory", "time"})
    _run(table, 2, wall=2.0, cpu=0.9, cmd=("true",))
    table.fill([req := _req(cmd=["true"])], SETTINGS)
    assert req["cpus"] == 0.5, "a run long enough teaches cpus"


def test_the_table_is_bounded_the_key_run_longest_ago_going_first(monkeypatch):
    monkeypatch.setattr(L, "MAX_KEYS", 3)
    table = L.Learned()
    for name in ("a.py", "b.py", "c.py"):
        for _ in range(3):
            _run(table, cmd=("python3", name))
    _run(table, cmd=("python3", "a.py"))  # the key whose last run is oldest goes first
    _run(table, cmd=("python3", "d.py"))
    assert [k[1] for k in table.keys] == ["c.py", "a.py", "d.py"]


def test_an_edit_keeps_learned_values_it_does_not_change():
    job = _req(memory=310, cpus=0.3, origin={"memory": "learned: x", "cpus": "learned: x"})
    assert L.Learned.kept(job, {"priority": 5, "memory": 100, "cpus": 1.0}) == {"priority": 5, "memory": 310, "cpus": 0.3}
    asked = {"memory": 2000, "memory_set": True, "cpus": 1.0}
    assert L.Learned.kept(job, asked) == {"memory": 2000, "memory_set": True, "cpus": 0.3}


# ---- through the master's state: finish records, snapshot and replay ------------------------------------

def _master() -> MasterState:
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 64, "memory": 64000, "incarnation": "i"}, 0.0)
    return m


def _finish_one(m: MasterState, peak_mb: int, now: float) -> list[dict]:
    """Submit, start and finish one `python3 align.py`; the records it journaled."""
    records = []
    step = m.handle("submit", m.requests([{"cmd": ["python3", "align.py"], "user": "ann"}]), None, now)
    job_id = step.reply[0]
    records += step.records + m.handle("schedule", now).records
    records += m.handle("started", "a", {"started": {str(job_id): 9}, "incarnation": "i", "seq": 1}, now).records
    usage = {"wall": 10.0, "utime": 1.0, "stime": 0.0, "maxrss_kb": peak_mb * 1024}
    records += m.handle("finished", "a", [{"id": job_id, "exit_code": 0, "usage": usage}], now + 1).records
    return records


def test_learned_values_no_node_could_run_are_not_used():
    m = _master()  # one node of 64 cpus
    for i in range(3):
        usage = {"wall": 10.0, "utime": 900.0, "stime": 0.0, "maxrss_kb": 100 * 1024}  # 90 cpus busy
        m.table.learned.observe({"cmd": ["python3", "align.py"], "user": "ann", "state": "done", "usage": usage}, 20)
    [req] = m.requests([{"cmd": ["python3", "align.py"], "user": "ann"}])
    assert req["cpus"] == 90.0 and req["origin"].keys() == {"memory", "cpus", "time"}
    [job_id] = m.handle("submit", [req], None, 1.0).reply
    job = m.table.jobs[job_id]
    assert (job["cpus"], job["memory"], "origin" in job, "memory_limit" in job) == (1.0, 100, False, False), \
        "the defaults, and it is queued"
    assert job["warnings"] == [("its learned request (100M, 90 cpus, 10 s: p95 of the last 3 runs of align.py by ann) "
                               "was dropped for the defaults: no node has 90 cpus; largest is 64")]


def test_queued_jobs_learned_values_no_node_or_limit_lets_run_any_more_give_way_to_the_defaults():
    """(A job queued with a learned 1.5G waited forever once every node was cut to 1200 MB: only a submit fell back.)"""
    m, journal = _master(), []
    for peak in (1500, 1500, 1500):
        journal += _finish_one(m, peak, 0.0)
    held, fine, forced, timed = (m.requests([{"cmd": ["python3", "align.py"], "user": "ann", **extra}])[0] for extra in (
        {"hold": True}, {"hold": True, "memory": 1000}, {"hold": True, "force": True}, {"hold": True, "time": 60}))
    journal += m.handle("submit", [held, fine, forced], None, 5.0).records
    ids = sorted(m.table.jobs)
    assert [m.table.jobs[i]["memory"] for i in ids] == [1500, 1000, 1500] and m.table.learnt
    assert not m.handle("schedule", 6.0).records, "nothing changed: no edit"
    journal += m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 64, "memory": 1200,
                                     "incarnation": "j"}, 7.0).records
    step = m.handle("schedule", 8.0)
    assert [(r["op"], r["id"]) for r in step.records] == [("edit", ids[0])], "not the one given -m, nor the forced one"
    [timed_id] = m.handle("submit", [timed], None, 8.5).reply  # (-t: no learned time to show; it raised TypeError)
    assert m.table.jobs[timed_id]["warnings"][0].startswith("its learned request (1.5G, 0.1 cpus: p95")
    journal += step.records
    job = m.table.jobs[ids[0]]
    assert (job["memory"], job["cpus"], job["memory_limit"], job["expected_time"], job["origin"]) == \
        (100, 1.0, None, None, None) and job["state"] == "held" and L.filed(m.table.jobs[ids[2]]) is None
    assert not any(ids[0] in filed for filed in m.table.learnt.values()), "out of the index: never looked at again"
    assert job["warnings"] == [("its learned request (1.5G, 0.1 cpus, 10 s: p95 of the last 3 runs of align.py by ann) "
                               "was dropped for the defaults: no node has 1500 MB of memory; largest is 1200 MB")]
    assert not m.handle("schedule", 9.0).records
    assert _recovered(None, journal).table.jobs[ids[0]] == job, "the edit is journaled: a replay agrees"
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 64, "memory": 64000, "incarnation": "k"}, 10.0)
    journal += m.handle("submit", m.requests([{"cmd": ["python3", "align.py"], "user": "ann"}]), None, 11.0).records
    m.configure(limits={"user": {"memory": 1000}})  # a reload: over the user's limit, as at submit
    edit, dispatch = m.handle("schedule", 12.0).records  # (the edit first: it runs at once, as the defaults)
    assert (edit["op"], dispatch["op"]) == ("edit", "dispatch") and edit["changes"]["memory"] == 100 and edit["changes"]["warnings"][0].endswith(
        "dropped for the defaults: user ann may run at most 1000 MB of memory at once and this job alone asks for 1500")


def test_a_restart_from_snapshot_and_journal_counts_each_run_once():
    m, journal = _master(), []
    for i, peak in enumerate((100, 200, 300)):
        journal += _finish_one(m, peak, float(i))
    snapshot, after = m.table.snapshot(), []
    for i, peak in enumerate((400, 500)):
        after += _finish_one(m, peak, 10.0 + i)
    for recovered in (_recovered(snapshot, after), _recovered(None, journal + after)):
        assert recovered.table.learned.dump() == m.table.learned.dump()
        [req] = recovered.requests([{"cmd": ["python3", "align.py"], "user": "ann"}])
        assert req["memory"] == 500 and req["origin"]["memory"].startswith("learned: p95 of the last 5 runs")


def _recovered(snapshot, records) -> MasterState:
    m = MasterState(random.Random(0))
    m.recover(snapshot, records, 100.0)
    return m


def test_a_learned_time_under_a_second_shows_as_such_not_as_none():
    """(`true`'s learned time of 0.0 s showed as `-*` in `grun -q jobs`.)"""
    from grun.tables import jobs_table
    job = {"id": 7, "state": "queued", "cmd": ["true"], "cpus": 1.0, "memory": 2, "expected_time": 0.0,
           "origin": {"time": "learned: p95 of the last 3 runs of true by ann"}}
    assert jobs_table([job]).splitlines()[1].split()[7] == "<1s*"
    assert jobs_table([dict(job, expected_time=None, origin={})]).splitlines()[1].split()[7] == "-"
