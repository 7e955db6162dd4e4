"""The one verb table and the pieces of issue 6 that need no cluster: the table's shape, the command
line's forms mapped onto it, the shell's parsing of a line, the remote-call result framing, and a
cheap `import grun`."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from grun import cli, running, shell, verbs
from grun.options import OPTIONS, UsageError
from grun.remote_worker import RESULT_MARK, ResultReader


def test_every_verb_has_a_name_help_usage_parser_and_runner():
    names = [n for v in verbs.VERBS.values() for n in (v.name, *v.aliases)]
    assert len(names) == len(set(names)), "a name or alias is used twice"
    for verb in verbs.VERBS.values():
        assert verb.help and "\n" not in verb.help
        assert callable(verb.run) and callable(verb.words)
        assert verbs.NAMES.get(verb.name) is verb
        assert set(verb.options) <= {o.long for o in OPTIONS}, "a verb's options come from the one table"
    for name in ("run", "submit", "jobs", "status", "history", "kill", "hold", "resume", "edit", "wait",
                 "attach", "why", "help", "exit", "watch", "top"):
        assert verbs.NAMES.get(name) is not None, name


@pytest.mark.parametrize("first", ["grun.verbs", "grun.running", "grun.many"])
def test_the_verbs_order_does_not_depend_on_which_module_was_imported_first(first):
    order = subprocess.run([sys.executable, "-c", f"import {first}, grun.verbs; print(*grun.verbs.VERBS)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert order == [*verbs.VERBS][:len(order)] and order[:4] == ["run", "submit", "attach", "jobs"]


def test_the_command_lines_forms_are_verbs_of_the_table():
    for query in cli.QUERIES:
        assert verbs.NAMES.get(query) is not None
    for alias in ("j", "s", "nodes", "hist", "h"):
        assert verbs.NAMES.get(alias).name in cli.QUERIES


@pytest.mark.parametrize("verb,words,expected", [
    ("kill", ["-n", "KILL", "3", "4"], {"ids": [3, 4], "signal": 9}),
    ("wait", ["7"], {"ids": [7]}),
    ("history", ["-c", "5", "--json"], {"count": 5, "json": True}),
    ("edit", ["priority=5,cpus=2", "3"], {"changes": {"priority": "5", "cpus": "2"}, "ids": [3]}),
    ("why", ["12"], {"ids": [12], "names": []}),
    ("why", ["waiter"], {"ids": [], "names": ["waiter"]}),
    ("hold", ["waiter", "12.7"], {"ids": ["12.7"], "names": ["waiter"]}),
    ("jobs", [], {}),
    ("kill", ["--user", "bob"], {"user": "bob", "ids": [], "names": []}),
])
def test_parsers(verb, words, expected):
    args = verbs.parse(verbs.NAMES.get(verb), words)
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize("verb,words,needle", [
    ("kill", [], "needs job ids"), ("kill", ["0"], "0"), ("wait", ["0"], "0"), ("why", ["1", "2"], "one"),
    ("status", ["extra"], "no arguments"), ("history", ["--bogus"], "--bogus"), ("edit", ["3"], "KEY=VALUE"),
    ("run", [], "no command"), ("run", ["-q", "jobs"], "--query"), ("run", ["-c", "lots", "x"], "-c"),
    ("kill", ["3", "--json"], "--json"), ("history", ["-c", "x"], "-c"), ("kill", ["--user", "bob", "3"], "--user"),
    ("kill", ["--user", "bob", "-j", "x"], "no job ids or names"), ("hold", ["--user", "bob"], "--user"),
])
def test_parse_errors_are_usage_errors(verb, words, needle):
    with pytest.raises(UsageError) as err:
        verbs.parse(verbs.NAMES.get(verb), words)
    assert needle in str(err.value)


def test_a_bare_grun_shows_its_usage_naming_the_verbs():
    """QA: `grun` alone said only "no command given": it shows the usage too, which names the verbs (`grun jobs`)."""
    r = subprocess.run([sys.executable, "-m", "grun.cli"], capture_output=True, text=True, env=dict(
        os.environ, GRUN_CONF="/nonexistent"), timeout=60)  # (no config read, no master asked)
    assert (r.returncode, r.stdout) == (2, "") and r.stderr.startswith("grun: no command given\nusage: grun "), r
    for name in set(verbs.VERBS) - {"run", "exit", "watch", "top"}:  # (watch and top: in grun shell)
        assert re.search(rf"\b{name}\b", r.stderr), name
    assert "grun -k ID" in r.stderr and "--user USER" in r.stderr and "grun help" in r.stderr


def test_hold_is_a_job_option_that_goes_into_the_spec():
    args = verbs.parse(verbs.NAMES.get("run"), ["--hold", "true"])
    assert running.cli_spec(args, args["cmd"])["hold"] is True and "hold" not in running.cli_spec({}, ["true"])


def test_run_takes_the_command_lines_job_options():
    args = verbs.parse(verbs.NAMES.get("run"), ["-c", "2", "-m", "1G", "echo", "-c", "x"])
    assert args["cpus"] == 2 and args["memory"] == 1024
    assert args["cmd"] == ["echo", "-c", "x"]
    assert verbs.parse(verbs.NAMES.get("kill"), ["3", "-n", "KILL", "4"])["ids"] == [3, 4], "options anywhere"
    spec = running.cli_spec(args, args["cmd"])
    assert (spec["cmd"], spec["shell"], spec["cpus"], spec["memory"]) == (["echo", "-c", "x"], False, 2, 1024)


@pytest.mark.parametrize("line,cmd", [
    ("run echo hi", ["echo", "hi"]),
    ("run -c 2 echo hi there", ["echo", "hi", "there"]),
    ("run sleep 1; echo done", ["sleep 1; echo done"]),
    ("submit -m 1G  yes | head -3  ", ["yes | head -3"]),
    ("run 'a; b'", ["a; b"]),
    ("run echo $HOME", ["echo $HOME"]),
])
def test_the_shell_leaves_shell_syntax_to_the_node(line, cmd):
    import shlex
    words = shlex.split(line)
    args = verbs.parse(verbs.NAMES.get(words[0]), words[1:])
    assert shell._command(line, len(words) - len(args["cmd"]), args["cmd"]) == cmd


def test_completion_of_verbs_options_ids_nodes_and_past_commands():
    import types

    from prompt_toolkit.document import Document
    view = types.SimpleNamespace(
        jobs=[{"id": 12, "state": "running", "cmd": ["sleep", "9"]}, {"id": 13, "state": "queued", "cmd": ["x"]}],
        nodes=[{"name": "big", "up": True}, {"name": "small", "up": False}],
        history=[{"id": 3, "state": "done", "cmd": ["make -j4"], "shell": True}])
    completer = shell._completer(view)

    def complete(text):
        return [c.text for c in completer.get_completions(Document(text), None)]

    assert "status" in complete("st") and "submit" in complete("s")
    assert complete("kill 1") == ["12", "13"]
    assert complete("kill 12 ") == ["13"]
    assert "3" in complete("wait ") and "3" not in complete("kill ")
    assert complete("run -H ") == ["big", "small"]
    assert "--cpus" in complete("run --c")
    assert complete("run -c 2 ma") == ["make -j4"]
    assert complete("run -c ") == []  # -c wants its value first
    assert complete("help ki") == ["kill"]


def _frame(nonce: bytes, payload: bytes) -> bytes:
    return RESULT_MARK + nonce + b":" + len(payload).to_bytes(8, "big") + payload


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_result_frame_is_found_whatever_the_chunking(size):
    nonce = b"ab" * 16
    looks_like = RESULT_MARK + b"cd" * 16 + b": not ours\n"
    data = b"hello\n" + b"\0 a NUL\n" + looks_like + b"partial \0grun-res" + b"ult\n" + _frame(nonce, b"PAYLOAD")
    out = []
    parser = ResultReader(nonce, out.append)
    for i in range(0, len(data), size):
        parser.feed(data[i:i + size])
    assert parser.close() == b"PAYLOAD"
    assert b"".join(out) == data[:data.index(RESULT_MARK + nonce)]


def test_output_is_not_held_back_without_a_nul():
    out = []
    parser = ResultReader(b"ab" * 16, out.append)
    parser.feed(b"progress 1\n")
    assert out == [b"progress 1\n"]
    assert parser.close() is None


def test_import_grun_is_cheap():
    code = ("import sys, grun; heavy = set(sys.modules) & {'Pyro5', 'cloudpickle', 'prompt_toolkit', 'psutil'}; "
            "import grun.cli; heavy |= set(sys.modules) & {'Pyro5', 'cloudpickle', 'prompt_toolkit'}; "
            "print(heavy); assert not heavy; from grun import Client, remote, map; "
            "assert Client.__name__ == 'Client' and callable(remote) and callable(map)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    import grun
    with pytest.raises(AttributeError):
        getattr(grun, "no_such_name")  # noqa: B009 - the lookup is what is tested


def test_a_missing_method_is_not_supported_and_a_broken_one_is_a_bug():
    """Only Pyro5's own "no such method" answer means a master lacks a verb (issue 10, bug 5): an
    AttributeError raised inside a method, even one naming the method, is reported as the failure it is."""
    import io

    import Pyro5.api

    from grun import registry
    from grun.client import Client

    @Pyro5.api.expose
    class PartialMaster:
        def jobs(self):
            return []

        def hold(self, ids):
            return self.table.hold(ids)  # a bug: "'PartialMaster' object has no attribute 'table'"

        def resume(self, ids):
            raise AttributeError("resume: 'JobTable' object has no attribute 'resume'")

    daemon = registry.start_daemon("127.0.0.1", "127.0.0.1")
    daemon.register(PartialMaster(), registry.MASTER_NAME)
    registry.serve_in_thread(daemon, "partial-master")
    try:
        host, port = daemon.locationStr.rsplit(":", 1)
        out, err = io.StringIO(), io.StringIO()
        client = Client(host, int(port), connect_wait=1)
        ctx = verbs.Context(lambda: client, out=out, err=err)
        codes = [shell.execute(ctx, line) for line in ("why 3", "edit priority=1 3", "hold 3", "resume 3", "jobs")]
    finally:
        daemon.shutdown()
    assert codes == [1, 1, 1, 1, 0]
    lines = err.getvalue().splitlines()
    assert lines[:2] == [f"grun: {v} is not available on the master at {host}:{port}" for v in ("why", "edit")]
    assert lines[2:] == [f"grun: master at {host}:{port}: 'PartialMaster' object has no attribute 'table'",
                         f"grun: master at {host}:{port}: resume: 'JobTable' object has no attribute 'resume'"]
    assert out.getvalue().startswith("ID ")


def test_conf_prints_the_config_the_command_line_loaded_without_a_master(tmp_path):
    from cluster import free_port

    from grun.config import describe, load_config
    conf = tmp_path / "grun.conf"
    conf.write_text(f"master: 127.0.0.1:{free_port()}\nservices: exec\nspool: {tmp_path}\ncpus: 3\nmemroy: 2G\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    r = subprocess.run([sys.executable, "-m", "grun.cli", "-C", str(conf), "-q", "conf"], env=env,
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, ""), "no master is needed"
    assert r.stdout == describe(load_config(str(conf)))
    assert "cpus: 3 " in r.stdout and "memroy" in r.stdout, "values, and the warning for an unknown key"


def test_status_shows_the_masters_warnings_below_the_nodes(tmp_path):
    """The master's warnings: one line a problem (a damaged journal, a disk nearly full); all that `grun -q status`
    prints comes from one call to the master, status() (with --long: its plugins too)."""
    import io

    import Pyro5.api

    from grun import registry
    from grun.client import Client

    @Pyro5.api.expose
    class SickMaster:
        def status(self, long=False):
            return {"nodes": [{"name": "n1", "up": True, "cpus": 2, "memory": 100, "free_cpus": 2, "free_memory": 100,
                               "running": 0}],
                    "warnings": ["journal.3.log was damaged at line 7; kept aside as journal.3.log.damaged",
                                 "disk 97% full"],
                    "master_spool": {"spool_free": 1200, "spool_size": 40000}, **({"plugins": {"master": []}} if long else {})}

    daemon = registry.start_daemon("127.0.0.1", "127.0.0.1")
    daemon.register(SickMaster(), registry.MASTER_NAME)
    registry.serve_in_thread(daemon, "sick-master")
    try:
        host, port = daemon.locationStr.rsplit(":", 1)
        out = io.StringIO()
        client = Client(host, int(port), connect_wait=1)
        assert verbs.execute(verbs.Context(lambda: client, out=out), ["status"]) == 0
        long = io.StringIO()
        assert verbs.execute(verbs.Context(lambda: client, out=long), ["status", "--long"]) == 0
    finally:
        daemon.shutdown()
    assert out.getvalue().splitlines()[1:] == [
        "n1    up     2/2               100/100             0     -",
        "master spool: 1,200 MB free of 40,000 MB",
        "warning: journal.3.log was damaged at line 7; kept aside as journal.3.log.damaged",
        "warning: disk 97% full"]
    assert "plugins of the master: none" in long.getvalue().splitlines()


def test_help_topics_are_made_from_the_tables_they_describe():
    from grun.config import KEYS

    def grun_help(*words):
        return subprocess.run([sys.executable, "-m", "grun.cli", "help", *words], capture_output=True, text=True,
                              timeout=60)
    page = grun_help("config")
    assert page.returncode == 0 and all(f"\n  {name} " in page.stdout for name in KEYS), page
    assert "%i:FILE" in grun_help("make").stdout and "--mem-per-cpu" in grun_help("slurm").stdout
    assert "-hold_jid" in grun_help("sge").stdout and "--afterok" in grun_help("options").stdout
    assert "SO_PEERCRED" in grun_help("trust").stdout and "expr    := and" in grun_help("rules").stdout
    listing = grun_help()
    assert listing.returncode == 0 and "help TOPIC" in listing.stdout and "kill" in listing.stdout
    listed = [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")]
    assert listed[:5] == ["run", "submit", "attach", "jobs", "status"], listed  # the verbs that run jobs first
    wrong = grun_help("bogus")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "topics: config" in wrong.stderr


def test_one_word_is_a_shell_line_unless_it_names_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my script.sh").write_text("")
    assert verbs.as_command(["./my script.sh"]) == ["./my script.sh"]
    assert verbs.as_command(["my script.sh"]) == "my script.sh"  # (no /: a command line; exec would search $PATH)
    assert verbs.as_command(["./other script.sh"]) == "./other script.sh"
    assert verbs.as_command(["ls -l | wc"]) == "ls -l | wc" and verbs.as_command(["ls", "-l"]) == ["ls", "-l"]
