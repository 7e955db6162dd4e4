"""Policy rules (issue 12) as pure code: the expression language's grammar, each field and function over a
job and a node, each action, the order rules run in, errors with their FILE:LINE:COLUMN, the cost per rule,
and the nodes: condition in placement and refusals. The file reads go through RuleFacts on real files."""
from __future__ import annotations

import grp
import os
import random

import pytest

from grun.actors.master import RuleFacts
from grun.config import ConfigError, checks, load_config
from grun.core import edits as E
from grun.core import jobs as J
from grun.core import rules as R
from grun.core.explain import explain, impossible
from grun.core.master_state import MasterState
from grun.core.nodes import NodeView

ISSUE_RULES = """\
rules:
  - if: prog == "align.py" and size(argv[2]) > 1G
    default: {memory: 8G, cpus: 4}
  - if: script ~ "import torch"
    params: {gpu: 1}
  - if: group == "students" and cpus > 8
    reject: "students may use at most 8 cpus per job"
  - if: cmd ~ "rm -rf /"
    warn: "this job removes files under /"
  - if: user == "alice"
    priority: +10
    nodes: labels.os == "debian12"
"""


class Facts:
    """Facts as a dict: path -> (bytes, size); no file is read."""

    def __init__(self, files=None, groups=()):
        self.files, self._groups, self.asked = files or {}, list(groups), []

    def head(self, path, uid, gid):
        self.asked.append(path)
        return self.files.get(path, (None, None))[0]

    def size(self, path, uid, gid):
        return self.files.get(path, (None, None))[1]

    def groups(self, user, gid):
        return self._groups


def req(cmd=("true",), group="staff", **spec):
    """A request as MasterState.requests has it when the rules run (with its group), and the spec given."""
    spec = {"cmd": list(cmd) if not isinstance(cmd, str) else [cmd], "shell": isinstance(cmd, str), "cwd": "/w",
            "user": "bob", **spec}
    return dict(J.validate_spec(spec), group=group), spec


def run(rules, cmd=("true",), facts=None, **spec):
    request, given = req(cmd, **spec)
    return R.apply(R.compile_rules(rules), request, given, facts)


def test(condition, cmd=("true",), facts=None, **spec) -> bool:
    return bool(R._job_test(condition)(R.Job(req(cmd, **spec)[0], facts)))


test.__test__ = False  # (a helper, not a test)


@pytest.fixture
def conf(tmp_path, monkeypatch):
    monkeypatch.delenv("GRUN_SPOOL", raising=False)

    def write(text, name="grun.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return load_config(str(path), environ={"HOME": str(tmp_path)}), str(path)
    return write


# ---- the language --------------------------------------------------------------------------------

@pytest.mark.parametrize("condition, expected", [
    ('user == "bob"', True), ("user == 'alice'", False), ('user != "alice"', True), ("cpus >= 1 and memory < 1G", True),
    ("cpus > 1 or memory == 100", True), ("not cpus > 1", True), ("not not (cpus == 1)", True),
    ("1 < 2 and 2 <= 2 and 3 > 2 and 3 >= 3", True), ("-5 < 0", True), ("2G == 2048 and 1T == 1048576", True),
    ("512K == 0.5 and 500MB == 500 and 1GiB == 1024 and 3M == 3", True), ("30m == 1800 and 2h == 7200", True),
    ("1d == 86400 and 1w == 604800 and 45s == 45", True), ('"12" == 12 and "9" < "10"', True),
    ('"abc" < "abd"', True), ('argv[0] == "true" and argv[-1] == "true"', True), ("argv[5] == null", True),
    ("argv[5] > 3", False), ("argv[5] < 3", False), ('"x" in ["x", "y"] and 2 in [1, 2]', True),
    ('"z" not in ["x"]', True), ('"ru" in "true"', True), ('"gpu" in params', False), ("[] == []", True),
    ('cmd ~ "^tr"', True), ('cmd !~ "^tr"', False), ('cmd like "t*e"', True), ('cmd like "t*x"', False),
    ('argv ~ "ue$"', True), ("true and not false", True), ("null == null", True), ('user ~ "B"', False),
    ('"a\\"b" == \'a"b\'', True), ('len(argv) == 1 and len("abc") == 3 and len(name) == null', True),
    ("params.gpu == null and params.gpu.x == null", True), ('(user == "bob") == true', True),
])
def test_the_grammar(condition, expected):
    assert test(condition) is expected


def test_or_and_not_bind_in_that_order():
    assert test("true or true and false") is True   # or (and)
    assert test("not true or true") is True         # (not true) or true
    assert test("not (true or true)") is False


@pytest.mark.parametrize("cmd, argv, prog, script_path", [
    (["python3", "-u", "align.py", "in.fq"], ["python3", "-u", "align.py", "in.fq"], "align.py", "align.py"),
    (["/usr/bin/env", "python", "x/a.py"], ["/usr/bin/env", "python", "x/a.py"], "a.py", "x/a.py"),
    (["bash", "run.sh", "1"], ["bash", "run.sh", "1"], "run.sh", "run.sh"),
    (["Rscript", "fit.R"], ["Rscript", "fit.R"], "fit.R", "fit.R"),
    (["./bin/tool", "-x"], ["./bin/tool", "-x"], "tool", "./bin/tool"),
    ("perl sum.pl 'a b' > out", ["perl", "sum.pl", "a b", ">", "out"], "sum.pl", "sum.pl"),
    (["python3", "-c", "import torch"], ["python3", "-c", "import torch"], "python3", None),
    (["python3", "-W", "ignore", "x.py"], ["python3", "-W", "ignore", "x.py"], "x.py", "x.py"),  # -W's argument
    (["node", "app.js"], ["node", "app.js"], "app.js", "app.js"),
    (["python3", "-m", "pip", "list"], ["python3", "-m", "pip", "list"], "pip", None),  # a module: its name, no script
    (pty := ["/x/python3", "-m", "grun.pty_job", "24x80", "python3", "a.py"], pty, "a.py", "a.py"),  # --pty's: what it runs
])
def test_argv_prog_and_the_script_of_an_interpreter(cmd, argv, prog, script_path):
    job = R.Job(req(cmd)[0], None)
    assert job.argv == argv and R.JOB_FIELDS["prog"](job) == prog and job.script_path[0] == script_path
    assert R.JOB_FIELDS["script"](job) == ("import torch" if "-c" in argv else None)


@pytest.mark.parametrize("cmd", [["python3", "-W", "ignore", "x.py"], ["/usr/bin/env", "python3", "a.py"],
                                 "python3 'my run.py' > out", ["julia", "fit.jl"], ["/opt/bin/bwa", "mem"]])
def test_a_rule_sees_the_program_learned_requests_key_on(cmd):
    from grun.core.learn import program_of
    job = R.Job(req(cmd)[0], None)
    assert R.JOB_FIELDS["prog"](job) == program_of(job.req)


def test_every_job_field():
    facts = Facts({"/w/a.py": (b"import torch\n" + b"x" * 100_000, 3 << 30), "/w/in": (None, 5 << 20)},
                  groups=["students", "gpu"])
    job = R.Job(req(["python", "a.py", "in"], group="students", cpus=2, memory=300, time=60, priority=5, name="n1", host="a*",
                    params={"gpu": 1, "os": "debian12"}, array="1-3")[0], facts)
    values = {name: get(job) for name, get in R.JOB_FIELDS.items()}
    assert values == {
        "user": "bob", "group": "students", "groups": ["students", "gpu"], "cmd": "python a.py in",
        "argv": ["python", "a.py", "in"], "script": "import torch\n" + "x" * (R.SCRIPT_BYTES - 13), "prog": "a.py",
        "cwd": "/w", "cpus": 2.0, "memory": 300, "time": 60, "priority": 5, "params": {"gpu": 1, "os": "debian12"},
        "name": "n1", "array": "1-3", "hosts": "a*"}
    assert job.size("a.py") == 3072 and job.size("in") == 5 and job.size("nope") is None and job.size(None) is None
    assert test('size(argv[1]) > 2G and size(argv[2]) < 10M and size("x") == null', ["python", "a.py", "in"],
                facts)
    assert test('"gpu" in groups and script ~ "^import torch"', ["python", "a.py"], facts)
    assert test('script == "import torch"', ["python3", "-c", "import torch"])  # inline: no file to read


def test_the_script_is_read_once_per_job_and_never_for_a_rule_that_does_not_ask():
    facts = Facts({"/w/a.py": (b"import torch", 12)})
    run([{"if": 'user == "x"'}], ["python", "a.py"], facts)
    assert facts.asked == []
    run([{"if": 'script ~ "torch"', "warn": "a"}, {"if": 'script ~ "numpy"', "warn": "b"}], ["python", "a.py"], facts)
    assert facts.asked == ["/w/a.py"]


def test_node_fields_and_meets():
    node = NodeView("gpu1", 8, 64000, labels={"os": "debian12", "cuda": "12.2"}, resources={"gpu": 4},
                    outside_cpus=1.5, grun_cpus=2.0)
    assert R.meets('name like "gpu*" and labels.os == "debian12" and labels.cuda >= 12', node)
    assert R.meets("resources.gpu >= 2 and load == 3.5 and cpus == 8 and memory > 32G", node)
    assert not R.meets('labels.zone == "a"', node)
    assert not R.meets("labels.os > 3", node), "an error on a node is a node not met"
    with pytest.raises(R.RuleError, match="unknown field .*user"):
        R.compile_rules([{"if": "true", "nodes": 'user == "x"'}])
    with pytest.raises(R.RuleError, match="unknown function"):
        R.compile_rules([{"nodes": "size(name) > 1"}])


@pytest.mark.parametrize("condition, message", [
    ('user = "x"', "unexpected at '='"), ("sise(argv[1]) > 1", "unknown function .* at 'sise'"),
    ("usr == 1", "unknown field .*did you mean 'user'"), ('cmd ~ "("', "bad regular expression"),
    ("1 +", "unexpected at '\\+'"), ('"abc', "unterminated string"), ("argv[1", "expected ']' at the end"),
    ("memory > 3Q", "unknown unit .* at '3Q'"), ("(user", "expected '\\)'"), ("[1,", "expected a value at the end"),
    ("labels.", "unknown field"), ("user.", "expected a name after '.'"), ("", "expected a condition"),
    ("user == 1 2", "unexpected at '2'"), ("and", "expected a value at 'and'"), ("x(1)", "unknown function"),
])
def test_errors_name_the_token(condition, message):
    with pytest.raises(R.RuleError, match=message):
        R.compile_rules([{"if": condition, "warn": "w"}])


def test_a_runtime_error_skips_the_rule_and_is_logged():
    log = []
    request, spec = req(["sleep", "abc"])
    rules = R.compile_rules([{"if": "argv[1] > 5", "set": {"cpus": 3}}, {"if": "true", "set": {"memory": 5}}])
    R.apply(rules, request, spec, None, log)
    assert request["cpus"] == 1 and request["memory"] == 5
    assert log == [("warning", "rule 1 skipped for a job of bob: TypeError: cannot compare 'abc' with 5",
                    ["sleep", "abc"])]


# ---- actions -------------------------------------------------------------------------------------

def test_default_fills_only_what_nobody_gave_and_set_overrides():
    rules = [{"if": "true", "default": {"memory": "2G", "cpus": 2, "time": "1h", "priority": 7, "hosts": "n*",
                                        "retries": 2}},
             {"default": {"memory": "4G"}}]
    out = run(rules)
    assert (out["memory"], out["cpus"], out["time"], out["priority"], out["host"], out["retries"]) == \
        (2048, 2.0, 3600.0, 7, "n*", 2)
    assert out["memory_set"] and out["cpus_set"], "a rule's memory counts as asked: a limit, as -m"
    assert out["origin"] == dict.fromkeys(["memory", "cpus", "time", "priority", "host", "retries"], "rule 1")
    given = run(rules, memory=300, cpus=1, time=60, priority=3, host="x", retries=0)
    assert (given["memory"], given["cpus"], given["time"], given["priority"], given["host"], given["retries"]) == \
        (300, 1.0, 60, 3, "x", 0) and "origin" not in given
    forced = run([{"set": {"memory": "1G", "cpus": 0.5}}], memory=300, cpus=4)
    assert (forced["memory"], forced["cpus"], forced["origin"]) == (1024, 0.5, {"memory": "rule 1", "cpus": "rule 1"})


def test_params_labels_priority_hosts_warn_nodes():
    out = run([{"name": "gpu", "params": {"gpu": 1, "scratch": "2.5"}, "labels": {"cuda": 12}, "priority": "+10"},
               {"priority": "-3", "hosts": "g[1-4]", "warn": "one", "nodes": 'labels.os == "a"'},
               {"warn": "two", "nodes": "load < 2"}], params={"os": "x"})
    assert out["params"] == {"os": "x", "gpu": 1, "scratch": 2.5, "cuda": "12"}
    assert (out["priority"], out["host"], out["warnings"]) == (27, "g[1-4]", ["one", "two"])
    assert out["nodes"] == '(labels.os == "a") and (load < 2)'
    assert out["origin"] == {"params.gpu": "rule gpu", "params.scratch": "rule gpu", "params.cuda": "rule gpu",
                             "priority": "rule 2", "host": "rule 2", "nodes": "rule 3"}
    assert run([{"priority": 5}], priority=50)["priority"] == 5, "a plain number sets it"


def test_reject_is_a_value_error_with_its_message_and_stops_the_rules():
    log = []
    request, spec = req(cpus=9)
    rules = R.compile_rules([{"if": "cpus > 8", "reject": "at most 8 cpus"}, {"warn": "never"}])
    with pytest.raises(ValueError, match=r"^at most 8 cpus \(rule 1\)$"):  # the user sees which rule (QA)
        R.apply(rules, request, spec, None, log)
    assert log == [("info", "rule 1 refused a job of bob: at most 8 cpus", ["true"])] and "warnings" not in request


def test_rules_see_what_earlier_rules_did():
    out = run([{"set": {"cpus": 16}}, {"if": "cpus > 8", "set": {"memory": "1G"}}, {"if": "memory == 1G", "warn": "w"}])
    assert (out["cpus"], out["memory"], out["warnings"]) == (16, 1024, ["w"])


@pytest.mark.parametrize("rule, message", [
    ({"if": "true", "sett": {"cpus": 1}}, "sett: unknown action"), ({"set": {"colour": 1}}, "not a field a rule sets"),
    ({"set": {"memory": "8Q"}}, "memory: expected a memory size"), ({"priority": "+x"}, "expected a whole number"),
    ({"params": {"bad name": 1}}, "bad param name"), ({"set": "4G"}, "expected a mapping"), ("x", "expected a mapping"),
    ({"set": {"time": "-5"}}, "time: expected a time limit"), ({"set": {"retries": 500}}, "retries must be"),
])
def test_bad_actions(rule, message):
    with pytest.raises(R.RuleError, match=message):
        R.compile_rules([rule])


def test_no_rules_and_equality():
    assert R.compile_rules(None) == () and R.compile_rules([]) == () and R.compile_rules("") == ()
    with pytest.raises(R.RuleError, match="expected a list of rules"):
        R.compile_rules({"if": "true"})
    a, b = R.compile_rules([{"warn": "x"}]), R.compile_rules([{"warn": "x"}])
    assert a == b and a != R.compile_rules([{"warn": "y"}]) and a != () and repr(a) == "<1 rules>"


# ---- the config: positions in the file -----------------------------------------------------------

def test_the_issues_rules_load_and_work_as_written(conf):
    cfg, _ = conf(ISSUE_RULES)
    assert [label for label, _, _ in cfg.rules] == [f"rule {n} (grun.yaml:{line})" for n, line in
                                                    ((1, 2), (2, 4), (3, 6), (4, 8), (5, 10))]
    facts = Facts({"/w/align.py": (b"import torch", 10), "/w/in.fq": (None, 2 << 30)})
    request, spec = req(["python3", "align.py", "in.fq", "x"], user="alice")
    out = R.apply(cfg.rules, request, spec, facts)
    assert (out["memory"], out["cpus"], out["params"], out["priority"], out["nodes"]) == \
        (8192, 4, {"gpu": 1}, 30, 'labels.os == "debian12"')
    request, spec = req("rm -rf /tmp/x", group="students", cpus=9)
    with pytest.raises(ValueError, match=r"^students may use at most 8 cpus per job \(rule 3\)$"):
        R.apply(cfg.rules, request, spec, facts)
    request, spec = req("rm -rf /tmp/x", group="students", cpus=8)
    assert R.apply(cfg.rules, request, spec, facts)["warnings"] == ["this job removes files under /"]


@pytest.mark.parametrize("change, at, message", [
    (('size(argv[2])', 'sise(argv[2])'), "2:32", "rule 1 \\(grun.yaml:2\\), if: unknown function"),
    (('"import torch"', '"import (torch"'), "4:18", "rule 2 \\(grun.yaml:4\\), if: bad regular expression"),
    (("8G, cpus", "8Q, cpus"), "3:23", "rule 1 \\(grun.yaml:2\\), default: memory: expected a memory size"),
    (("    warn:", "    wran:"), "9:5", "rule 4 \\(grun.yaml:8\\), wran: unknown action"),
    (('labels.os == "debian12"', "labels.os = 1"), "12:22", "nodes: unexpected at '='"),
    (("priority: +10", "priority: ten"), "11:15", "priority: expected a whole number"),
])
def test_a_bad_rule_is_refused_with_file_line_and_column(conf, change, at, message):
    with pytest.raises(ConfigError) as e:
        conf(ISSUE_RULES.replace(*change))
    assert str(e.value).startswith(f"{e.value.path}:{at}: key 'rules': ") and "\n" not in str(e.value)
    assert pytest.raises(ConfigError, conf, ISSUE_RULES.replace(*change)).match(message)


def test_quoted_conditions_count_their_quote(conf):
    with pytest.raises(ConfigError, match=r"grun.yaml:2:19: .*unexpected at '='"):
        conf("rules:\n  - if: 'cpus > 1 = 2'\n    warn: x\n")
    with pytest.raises(ConfigError, match=r"grun.yaml:2:5: key 'rules': rule 1: expected a mapping"):
        conf("rules:\n  - just text\n")


# ---- the master's core: requests, placement, refusal, why ---------------------------------------

def test_requests_run_the_rules_between_validation_and_the_settings():
    m = MasterState(random.Random(0), rules=R.compile_rules([{"if": 'cmd ~ "risky"', "warn": "careful"},
                                                            {"if": "argv[1] > 1", "set": {"cpus": 2}}]),
                    default_retries=1)
    log = []
    a, b = m.requests([{"cmd": ["risky"], "cwd": "/"}, {"cmd": ["x", "y"], "cwd": "/"}], None, log)
    assert a["warnings"] == ["careful"] and "warnings" not in b and a["retries"] == b["retries"] == 1
    assert [level for level, *_ in log] == ["warning"] and "skipped" in log[0][1]
    with pytest.raises(ValueError, match="no"):
        MasterState(rules=R.compile_rules([{"reject": "no"}])).requests([{"cmd": ["x"], "cwd": "/"}])


def test_a_nodes_condition_places_refuses_and_explains():
    m = MasterState(random.Random(0), rules=R.compile_rules([{"if": 'name == "picky"', "nodes": 'labels.os == "b"'}]))
    for name, os_ in (("n1", "a"), ("n2", "b")):
        m.handle("register", {"name": name, "cpus": 4, "memory": 1000, "uri": "PYRO:x@h:1", "labels": {"os": os_}}, 0.0)
    picky = m.requests([{"cmd": ["x"], "cwd": "/", "name": "picky"}])
    plain = m.requests([{"cmd": ["x"], "cwd": "/", "name": "plain"}])
    m.handle("submit", picky + plain, None, 0.0)
    offers = {node: [j["name"] for j in jobs] for _, node, jobs in m.handle("schedule", 1.0).do}
    assert "picky" in offers["n2"] and "picky" not in offers.get("n1", []), offers
    nobody = dict(picky[0], nodes='labels.os == "c"', name=None)
    assert impossible(nobody, list(m.table.nodes.values())) == "no node meets labels.os == \"c\""
    step = m.handle("submit", [dict(nobody, token="t", force=True)], None, 2.0)
    why = explain(m.table.jobs[step.reply[0]], m, 3.0)
    assert "does not meet labels.os == \"c\"" in why and "could ever run it" in why, why
    with pytest.raises(ValueError, match='no node meets labels.os == "c"; nodes from rule 1 \\(--force'):
        m.handle("submit", [dict(nobody, token="u")], None, 2.0)
    m.settings["rules"] = R.compile_rules([{"params": {"gpus": 1}}])  # what a rule added, said so (QA)
    with pytest.raises(ValueError, match=r"^no node has gpus; params.gpus from rule 1 \(--force queues it anyway\)$"):
        m.handle("submit", m.requests([{"cmd": ["x"], "cwd": "/"}]), None, 2.0)


def test_the_shape_of_a_job_includes_its_condition():
    """A job whose condition no node meets must not stop plain jobs of the same size in the same pass."""
    from grun.core.nodes import shape
    assert shape({"cpus": 1, "memory": 1, "nodes": "x"}) != shape({"cpus": 1, "memory": 1})


def test_typos_that_parse_are_warned_of_never_refused(conf):
    """QA: a group this host lacks, a number ordered against a word (in a condition, a nodes: one) reloaded without a
    word; now warned of where limits: warns of unknown groups (grun.config.checks: `grun -d`, reload, `grun -q conf`)."""
    group = grp.getgrgid(os.getgid()).gr_name
    cfg, _ = conf(f'rules:\n  - if: group == "nosuchgroup" or "{group}" in groups or user in ["root", "nosuchuser"]\n'
                  '    warn: x\n  - name: sizes\n    if: \'"two" < cpus and memory < 2G and name > "a"\'\n'
                  '    nodes: load >= "high" and cpus > 2\n  - if: group in "students staff"\n    warn: a substring\n')
    assert checks(cfg, {"queue"}) == [
        "rule sizes (grun.yaml:4): 'two' < cpus compares a number with a word: it fails on every job (the rule is skipped)",
        "rule sizes (grun.yaml:4): load >= 'high' compares a number with a word: no node meets it",
        "rule 1 (grun.yaml:2): no group 'nosuchgroup' on this host",
        "rule 1 (grun.yaml:2): no user 'nosuchuser' on this host"]
    assert checks(cfg, {"exec"}) == [] and cfg.warnings == [], "the lookups are the master's and `grun -q conf`'s"


# ---- the facts the master reads ------------------------------------------------------------------

def test_rule_facts_read_files_once_as_the_user_could(tmp_path):
    script, secret, fifo = tmp_path / "a.py", tmp_path / "secret", tmp_path / "fifo"
    script.write_bytes(b"import torch\n" * 10_000)
    secret.write_text("x")
    os.chmod(secret, 0o600)
    os.mkfifo(fifo)
    facts = RuleFacts()
    assert len(facts.head(str(script), 1000, 1000)) == R.SCRIPT_BYTES and facts.size(str(script), 0, 0) == 130_000
    assert facts.head(str(secret), 1000, 1000) is None and facts.head(str(secret), 0, 0) == b"x"
    assert facts.head(str(fifo), 0, 0) is None and facts.size(str(tmp_path / "none"), 0, 0) is None
    script.write_bytes(b"changed")
    assert facts.head(str(script), 1000, 1000).startswith(b"import torch"), "read once per submission"
    assert grp.getgrgid(0).gr_name in facts.groups("root", 0)
    assert facts.groups("nobody-such", 0) == ["root"] and facts.groups("nobody-such", 987654) == ["987654"], (
        "a user unknown to the master: the gid given, by name if it has one, as its `group` (review)")
    assert len(facts._seen) == 9, "each looked up once"
    facts.groups("root", 0), facts.size(str(script), 0, 0)
    assert len(facts._seen) == 9


def test_the_readmes_rules_load(conf):
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    block = readme[readme.index("### Rules"):].split("```yaml\n")[1].split("```")[0]
    cfg, _ = conf(block)
    assert [label.split(" (")[0] for label, _, _ in cfg.rules] == \
        ["rule gpu code", "rule big alignments", "rule 3", "rule 4", "rule 5"]
    request, spec = req(["python3", "train.py"], user="alice")
    out = R.apply(cfg.rules, request, spec, Facts({"/w/train.py": (b"import jax\n", 11)}))
    assert (out["params"], out["priority"], out["nodes"]) == ({"gpu": 1}, 30, 'labels.os == "debian12"')


# ---- an edit is judged as its submission was; a user may not raise a priority ----------------------

def _queued(rules, **spec):
    """A MasterState with these rules and a node, and a job of bob's (group staff) queued on it: (state, job id)."""
    m = MasterState(random.Random(0), rules=R.compile_rules(rules), default_priority=20)
    m.group_of = lambda user, gid: "staff"
    m.handle("register", {"name": "n1", "cpus": 8, "memory": 8000, "uri": "PYRO:x@h:1", "resources": {"gpu": 4}}, 0.0)
    spec = {"cmd": ["x"], "cwd": "/", "user": "bob", "uid": 1000, "gid": 1000, **spec}
    return m, m.handle("submit", m.requests([spec], trusted=False), None, 0.0).reply[0]


def test_an_edit_goes_through_the_rules_as_its_submission_did():
    rules = [{"if": 'group == "staff" and cpus > 2', "reject": "at most 2 cpus"},
             {"if": 'user == "bob"', "priority": "+10", "params": {"gpu": 1}},
             {"if": 'name == "fixed"', "set": {"priority": 3}},
             {"if": "cpus >= 2", "default": {"memory": 300}}]
    m, job = _queued(rules)
    with pytest.raises(ValueError, match=r"^job \d+: at most 2 cpus \(rule 1\)$"):
        m.handle("edit", [job], {"cpus": "3"}, 1.0)
    j = m.table.jobs[job]
    assert (j["cpus"], j["priority"], j["params"]) == (1, 30, {"gpu": 1}), "refused: unchanged"
    m.handle("edit", [job], {"p.gpu": "2", "cpus": "2"}, 1.0)  # +10 of the submitted 20 once; params: forced
    assert (j["cpus"], j["priority"], j["params"], j["memory"]) == (2, 30, {"gpu": 1}, 300)
    assert j["origin"] == {"priority": "rule 2", "params.gpu": "rule 2", "memory": "rule 4"}
    m.handle("edit", [job], {"priority": "5", "memory": "200"}, 2.0)  # what the edit asks, the rule's +10 on it
    assert (j["priority"], j["memory"], j["asked"]) == (15, 200, {"priority": 5, "params.gpu": 2})
    m.handle("edit", [job], {"cpus": "1"}, 3.0)  # the edit's memory stays its own; the default does not undo it
    assert (j["priority"], j["memory"], j["cpus"]) == (15, 200, 1) and "memory" not in j["origin"]
    m, fixed = _queued(rules, name="fixed", memory=500)
    m.handle("edit", [fixed], {"priority": "9", "cpus": "2"}, 1.0)  # set: forces it, as at submit
    assert (m.table.jobs[fixed]["priority"], m.table.jobs[fixed]["memory"]) == (3, 500), "-m given: no default"


def test_an_edit_judged_while_another_was_made_is_refused():
    """The master judges an edit outside its lock (master._judged): one made meanwhile (root's priority=-50) is not
    undone by the commit of the earlier-judged one (bob's cpus=2), which is refused."""
    m, job = _queued([])
    j = m.table.jobs[job]
    judged = lambda: {job: (E.fields(j), E.edited(dict(j), {"cpus": 2.0}, m.settings))}
    first = judged()
    m.handle("edit", [job], {"priority": -50}, 1.0)
    with pytest.raises(ValueError, match=rf"^job {job}: it changed while the edit was judged: try again$"):
        m.handle("edit", [job], {"cpus": 2.0}, 2.0, judged=first)
    assert (j["priority"], j["cpus"]) == (-50, 1)
    m.handle("edit", [job], {"cpus": 2.0}, 3.0, judged=judged())
    assert (j["priority"], j["cpus"]) == (-50, 2)


def test_a_user_may_not_raise_a_priority_root_admins_and_rules_may():
    settings = {**MasterState().settings, "admins": frozenset({"ann"})}
    bob = {"uid": 1000, "user": "bob"}
    with pytest.raises(ValueError, match=r"priority 21 is above this cluster's default_priority \(20\): only root, "
                                         r"an admin \(admins:\) or a rule may raise"):
        E.may_raise(21, bob, settings)
    for who in ({"uid": 0, "user": "root"}, {"uid": 1001, "user": "ann"}):
        E.may_raise(1000, who, settings)
    E.may_raise(20, bob, settings)
    m, job = _queued([{"if": 'user == "bob"', "priority": "+50"}], priority=-5)  # a rule's raise is no user's
    assert m.table.jobs[job]["priority"] == 45
    with pytest.raises(ValueError, match="default_priority"):
        _queued([], priority=1000)
    assert m.requests([{"cmd": ["x"], "cwd": "/", "uid": 1000, "priority": 1000}])[0]["priority"] == 1000, "trusted"
    j = m.table.jobs[job]
    with pytest.raises(ValueError, match=r"^priority 21 is above"):
        E.edited(j, {"priority": 21}, m.settings, who=bob)
    assert E.edited(j, {"cpus": 2.0}, m.settings, who=bob)["priority"] == 45, "an edit of another field: no check"
    assert E.edited(j, {"priority": 21}, m.settings, who={"uid": 0, "user": "root"})["priority"] == 71
