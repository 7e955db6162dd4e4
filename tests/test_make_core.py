"""Make semantics of `grun -M` (grun/make.py), without daemons: the markers, the run / up-to-date
decision on real files and mtimes, each bad input, and the renaming of a failed job's outputs."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from grun import make
from grun.core import jobs as J
from grun.core.master_state import MasterState

CWD = "/w"


def _parse(cmd):
    return make.parse(cmd, CWD)


@pytest.mark.parametrize(("cmd", "run", "inputs", "outputs"), [
    # %i:/%o: stay in the command without their marker; #i:/#o: words are removed
    (["bwa", "mem", "ref.fa", "%i:r1.fq", "#o:out.sam"], ["bwa", "mem", "ref.fa", "r1.fq"], ["r1.fq"], ["out.sam"]),
    (["gzip", "-c", "#i:x", "%o:y"], ["gzip", "-c", "y"], ["x"], ["y"]),
    (["tool", "--in=%i:a.txt", "--out=#o:b.txt"], ["tool", "--in=a.txt", "--out="], ["a.txt"], ["b.txt"]),
    ("sort %i:data.txt > sorted.txt", "sort data.txt > sorted.txt", ["data.txt"], ["sorted.txt"]),
    ("gzip %i:x.foo #o:x.foo.gz", "gzip x.foo", ["x.foo"], ["x.foo.gz"]),
    ('wc %i:"my file" "#o:out put" | cat', 'wc "my file" | cat', ["my file"], ["out put"]),
    ('tool "--in=#i:q" >o', 'tool "--in=" >o', ["q"], ["o"]),
    # < FILE is an input, > FILE, >FILE, 1> and &> outputs; >> FILE (&>>) a log, neither, unless marked
    ("tr a b < in.txt >out.txt", "tr a b < in.txt >out.txt", ["in.txt"], ["out.txt"]),
    ("cat %i:a >> log 1>x &>y &>>z", "cat a >> log 1>x &>y &>>z", ["a"], ["x", "y"]),
    ("cat %i:a >> %o:log", "cat a >> log", ["a"], ["log"]),
    ("cat %i:a > %o:b", "cat a > b", ["a"], ["b"]),
    # %!>FILE writes FILE, not an output; 2>FILE and 2>&1 neither; a comment is not the command's
    ("sort %i:a > b %!>log.txt", "sort a > b >log.txt", ["a"], ["b"]),
    ("sort %i:a %!>>log.txt", "sort a >>log.txt", ["a"], []),
    ("cmd %i:a > b 2>err.log 2>&1 >&2", "cmd a > b 2>err.log 2>&1 >&2", ["a"], ["b"]),
    ("cmd %o:a # %i:not 'an input", "cmd a # %i:not 'an input", [], ["a"]),
    ("diff <(sort %i:a) %i:b >d", "diff <(sort a) b >d", ["a", "b"], ["d"]),
    ("printf '%i: %s' x > y", "printf '%i: %s' x > y", [], ["y"]),  # `%i: ` in quotes is text
    # the script of `sh -c` (bash, -ec, -o OPT) is a shell line: its markers end with their shell word
    (["sh", "-c", "sort %i:data.txt > %o:s2.txt; echo done"], ["sh", "-c", "sort data.txt > s2.txt; echo done"],
     ["data.txt"], ["s2.txt"]),
    (["sh", "-c", "echo x > %o:res4.txt; exit 3"], ["sh", "-c", "echo x > res4.txt; exit 3"], [], ["res4.txt"]),
    (["/bin/bash", "-o", "pipefail", "-ec", "cat %i:a|gzip>b.gz '#o:c'"], ["/bin/bash", "-o", "pipefail", "-ec",
     "cat a|gzip>b.gz"], ["a"], ["b.gz", "c"]),
    (["sh", "x.sh", "%i:a;b"], ["sh", "x.sh", "a;b"], ["a;b"], []),  # no -c: a word, which the marker begins
    # a marker inside another word ends at whitespace, a quote or a metacharacter
    (["python3", "-c", "f('%i:a', '%o:b'); g(%i:c)"], ["python3", "-c", "f('a', 'b'); g(c)"], ["a", "c"], ["b"]),
    (["tool", "--in=#i:a x"], ["tool", "--in= x"], ["a"], []),
])
def test_markers(cmd, run, inputs, outputs):
    m = _parse(cmd)
    assert m.cmd == run
    assert m.inputs == [os.path.join(CWD, p) for p in inputs]
    assert m.outputs == [os.path.join(CWD, p) for p in outputs]


def test_paths_are_absolute_and_listed_once():
    m = make.parse(["cat", "%i:../a", "%i:/abs/b", "%i:./c/../a", "#o:sub/out"], "/w/x")
    assert m.inputs == ["/w/a", "/abs/b", "/w/x/a"] and m.outputs == ["/w/x/sub/out"]
    assert make.parse(["cat", "%i:a", "%i:a", "#o:b"], CWD).inputs == ["/w/a"]
    # the kernel's files are no one's inputs or outputs: a failed job renamed /dev/null (as root, it broke the host)
    m = make.parse("cat < /dev/null %i:a 2>/dev/null > /dev/stdout; echo > %o:/proc/self/fd/1 > b", CWD)
    assert (m.inputs, m.outputs) == (["/w/a"], ["/w/b"])
    with pytest.raises(ValueError, match="names no input or output"):
        make.parse("cat < /dev/null > /dev/null", CWD)


def test_the_rewritten_line_runs(tmp_path):
    (tmp_path / "data.txt").write_text("b\na\n")
    m = make.parse("sort %i:data.txt > sorted.txt && echo done %!>log.txt && echo ok >&2", str(tmp_path))
    done = subprocess.run(["/bin/sh", "-c", m.cmd], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "ok\n"
    assert (tmp_path / "sorted.txt").read_text() == "a\nb\n" and (tmp_path / "log.txt").read_text() == "done\n"
    assert m.outputs == [str(tmp_path / "sorted.txt")]


def _files(tmp_path, **ages):
    """Files named by the keywords, `age` seconds old (None: missing, 'empty': an empty file, 10 s old)."""
    now = 1_700_000_000
    for name, age in ages.items():
        if age is not None:
            (tmp_path / name).write_text("" if age == "empty" else "x")
            os.utime(tmp_path / name, (now - 10, now - (10 if age == "empty" else age)))


def _decide(tmp_path, cmd):
    return make.decide(make.parse(cmd, str(tmp_path)))


@pytest.mark.parametrize(("ages", "reasons"), [
    ({"data.txt": 5, "sorted.txt": 10}, ["# need sorted.txt: data.txt is newer"]),
    ({"data.txt": 5, "sorted.txt": None}, ["# need sorted.txt: it does not exist"]),
    ({"data.txt": 5, "sorted.txt": "empty"}, ["# need sorted.txt: it is empty"]),
    ({"data.txt": 10, "sorted.txt": 5}, None),
    ({"data.txt": 10, "sorted.txt": 10}, None),  # as make: equal times are up to date
])
def test_decide(tmp_path, ages, reasons):
    _files(tmp_path, **ages)
    d = _decide(tmp_path, "sort %i:data.txt > sorted.txt")
    assert d.missing == []
    assert (d.run, d.reasons) == ((True, reasons) if reasons else (False, ["# up to date: sorted.txt"]))


def test_decide_each_output_against_the_newest_input(tmp_path):
    _files(tmp_path, a=20, b=5, old=30, fresh=1, gone=None)
    d = _decide(tmp_path, ["cmd", "%i:a", "%i:b", "#o:old", "#o:fresh", "#o:gone"])
    assert d.run and d.reasons == ["# need old: b is newer", "# need gone: it does not exist"]
    assert not _decide(tmp_path, ["cmd", "%i:a", "%i:b", "#o:fresh"]).run
    outside = make.decide(make.parse(["cmd", "%i:../a", "#o:../x"], str(tmp_path / "sub")))
    assert outside.reasons == [f"# need {tmp_path}/x: it does not exist"]  # out of the cwd: named in full


def test_a_missing_input_waits_for_its_producer(tmp_path):
    _files(tmp_path, a=5, out=1)
    d = _decide(tmp_path, ["cmd", "%i:a", "%i:later", "#o:out"])
    assert d.run and d.missing == [str(tmp_path / "later")]
    assert d.reasons == ["# need out: later does not exist yet"]
    assert make.spec_keys(make.parse(["cmd", "%i:a", "%i:later", "#o:out"], str(tmp_path)), d) == {
        "inputs": [str(tmp_path / "a"), str(tmp_path / "later")], "outputs": [str(tmp_path / "out")],
        "make": True, "needs": [str(tmp_path / "later")]}


def test_no_output_always_runs(tmp_path):
    _files(tmp_path, a=5)
    d = _decide(tmp_path, "wc -l %i:a")
    assert d.run and d.missing == [] and d.reasons == ["# need to run: no output to compare with its inputs"]
    assert "needs" not in make.spec_keys(make.parse("wc -l %i:a", str(tmp_path)), d)


@pytest.mark.parametrize(("cmd", "error"), [
    (["cat", "%i:"], "-M: %i: names no file"),
    ("cat #o: x", "-M: #o: names no file"),
    ("echo 'a > b", "-M: unbalanced quotes (or a trailing backslash) in: echo 'a > b"),
    ('echo "a > b', "-M: unbalanced quotes"),
    ("echo a \\", "-M: unbalanced quotes"),
    ("sort %i:a >", "-M: no file after '>'"),
    ("sort %i:a > | cat", "-M: no file after '>'"),
    ("sort %i:a %!>", "-M: no file after '%!>'"),
    (["sort", "%i:a", "%!>log"], "-M: %!>FILE is a redirection"),
    (["echo", "hi"], "-M: the command names no input or output"),
    ("echo hi | cat", "-M: the command names no input or output"),
    (["#i:a", "#o:b"], "-M: nothing is left to run"),
])
def test_bad_input(cmd, error):
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace(")", r"\)")) as caught:
        _parse(cmd)
    assert "\n" not in str(caught.value)


def test_an_output_that_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    for cmd in (["cp", "%i:a", "%o:d"], "cat %i:a > d"):
        with pytest.raises(ValueError, match=f"^-M: output {tmp_path}/d is a directory$"):
            make.parse(cmd, str(tmp_path))


def test_a_make_job_waits_for_the_live_job_rewriting_an_input_it_has_then_is_looked_at_again():
    """The master's core (grun.core.deps): an input there now but remade by a live make job of the user (an old copy)
    waits for it to succeed, as a missing one does (`needs`), and then its node decides again whether to run."""
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 8, "memory": 8000, "incarnation": "i"}, 0.0)

    def submit(user="ann", **keys):
        reqs = [{**m.requests([{"cmd": ["x"], "user": user}])[0], "make": True, **keys}]
        return m.handle("submit", reqs, None, 1.0).reply[0]

    step1 = submit(inputs=["/d/a"], outputs=["/d/step1"])
    submit(user="bob", outputs=["/d/in2"])
    step2 = submit(inputs=["/d/step1", "/d/in2"], outputs=["/d/step2"])  # (bob's job: not a maker of ann's files)
    alone = submit(inputs=["/d/in2"], outputs=["/d/out"])
    assert [m.table.jobs[i].get("deps") for i in (step2, alone)] == [[["afterok", step1]], None]
    assert [m.table.jobs[i].get("recheck") for i in (step2, alone)] == [True, None]
    m.handle("kill", [step1], 15, False, 2.0)  # afterok: a failed maker leaves no input to run on
    assert m.table.jobs.get(step2) is None and m.recent[step2]["state"] == J.CANCELLED


def test_rename_failed(tmp_path):
    (tmp_path / "half").write_text("half written")
    (tmp_path / "old").write_text("new try")
    (tmp_path / "old.failed").write_text("older failure")
    (tmp_path / "old.failed.1").write_text("oldest failure")
    paths = [str(tmp_path / name) for name in ("half", "missing", "old")]
    assert make.rename_failed(paths) == [paths[0], paths[2]]
    assert sorted(os.listdir(tmp_path)) == ["half.failed", "old.failed", "old.failed.1", "old.failed.2"]
    # an older FILE.failed of other content is kept aside (a log appended to holds what no rerun makes again)
    assert [(tmp_path / f"old.failed{n}").read_text() for n in ("", ".1", ".2")] == [
        "new try", "oldest failure", "older failure"]
    (tmp_path / "old").write_text("new try")  # the same content again: it replaces its copy
    assert make.rename_failed(paths[2:]) == paths[2:] and len(os.listdir(tmp_path)) == 4
    assert make.rename_failed(paths) == [] and make.rename_failed([str(tmp_path / "no/dir/x")]) == []
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "link")
    assert make.rename_failed([str(tmp_path / "fifo"), str(tmp_path / "link")]) == []  # (no file a job half wrote)


def test_a_make_job_waits_for_the_live_jobs_making_its_outputs_then_is_looked_at_again():
    """The master's core (grun.core.deps): two writers of one file would race; the later one waits for the
    earlier to end, whatever its end, and then its node decides again whether it still has to run."""
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 8, "memory": 8000, "incarnation": "i"}, 0.0)

    def submit(user="ann", **keys):  # (make's keys as grun.core.jobs validates them; the client sets them)
        reqs = [{**m.requests([{"cmd": ["x"], "user": user}])[0], "make": True, **keys}]
        return m.handle("submit", reqs, None, 1.0).reply[0]

    first, theirs = submit(outputs=["/d/dup.txt"]), submit(user="bob", outputs=["/d/dup.txt"])
    again = submit(outputs=["/d/b.txt", "/d/dup.txt"])
    later = submit(outputs=["/d/b.txt"], make=None)  # (not a make job: nothing to look at again)
    assert [m.table.jobs[i].get("deps") for i in (first, theirs, again, later)] == [None, None, [["after", first]], None]
    assert [m.table.jobs[i].get("recheck") for i in (first, theirs, again)] == [None, None, True]
    m.handle("edit", [again], {"after": str(later)}, 1.5)  # (what it waits for, changed: the other writer stays)
    assert m.table.jobs[again]["deps"] == [["after", later], ["after", first]]
    m.handle("kill", [first, later], 15, False, 2.0)  # a failed or killed maker leaves FILE.failed: the next one runs
    assert m.table.jobs[again]["state"] == J.QUEUED and m.table.jobs[again]["recheck"]


def test_appends_are_files_the_shell_need_not_expand():
    """(Review) `>> ~/x` was read as CWD/~/x and `>> *.log` as a file named so: a staged job said "~/x was never written
    by the job". Only a plain name is given back."""
    assert make.appends("echo a >> ~/x; echo b >> *.log; echo c >>$LOG 2>>log[1]; echo d >> ok.log 2>>x~", CWD) == ["/w/ok.log", "/w/x~"]
