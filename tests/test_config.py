"""Tests for grun.config: real files under tmp_path, no network (IP literals avoid DNS)."""

import math
import os
import re
import socket
import subprocess
import sys

import psutil
import pytest
import yaml

from grun import config as C
from grun.config import KEYS, Config, ConfigError, describe, find_config_path, load_config
from grun.values import DEFAULT_PORT, parse_cpus, parse_duration, parse_hostport, parse_memory, parse_services


@pytest.fixture
def env(tmp_path):
    """A clean environment with its own home and state dir."""
    return {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state")}


@pytest.fixture
def conf(tmp_path, env):
    """write(text) -> loaded Config from a real file."""
    def write(text, environ=None):
        path = tmp_path / "grun.conf"
        path.write_text(text)
        return load_config(str(path), environ=env if environ is None else environ)
    return write


def error(conf, text):
    with pytest.raises(ConfigError) as e:
        conf(text)
    assert "\n" not in str(e.value)
    return e.value


# --- personal mode -------------------------------------------------------------------------

def test_personal_defaults(env, tmp_path):
    cfg = load_config(None, environ=env)
    state = str(tmp_path / "state" / "grun")
    assert cfg.personal and cfg.path is None
    assert (cfg.master_host, cfg.master_port) == ("127.0.0.1", DEFAULT_PORT) == ("127.0.0.1", 5184)
    assert cfg.services == {"queue", "exec"}
    assert cfg.bind == cfg.advertise == "127.0.0.1"
    assert cfg.hostname == socket.gethostname()
    assert cfg.cpus == float(psutil.cpu_count(logical=True))
    assert cfg.memory == psutil.virtual_memory().total // 2 ** 20
    assert cfg.spool == state  # XDG even though the tests run as root
    assert cfg.log_file == os.path.join(state, "grun.log")
    assert cfg.pid_file == os.path.join(state, "grun.pid")
    assert (cfg.log_level, cfg.node_timeout, cfg.heartbeat) == ("info", 60, 5)
    assert (cfg.default_cpus, cfg.default_memory, cfg.output_keep) == (1, 100, 86400)
    assert cfg.warnings == [] and cfg.where == {}


def test_personal_state_dir_falls_back_to_home(tmp_path):
    home = str(tmp_path / "h")
    assert load_config(None, environ={"HOME": home}).spool == f"{home}/.local/state/grun"
    # XDG says relative values are to be ignored
    assert C.user_state_dir({"HOME": home, "XDG_STATE_HOME": "rel"}) == f"{home}/.local/state/grun"


def test_config_constructed_directly_gets_personal_values(tmp_path):
    cfg = Config(spool=str(tmp_path))
    assert cfg.personal and cfg.services == {"queue", "exec"} and cfg.master_port == 5184
    assert cfg.log_file == str(tmp_path / "grun.log") and cfg.pid_file == str(tmp_path / "grun.pid")
    assert Config(spool="/s", log_file=None).log_file is None


# --- cluster mode: defaults and every key ----------------------------------------------------

@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "---\n"])
def test_empty_file_means_all_defaults(conf, text, monkeypatch):
    monkeypatch.setattr(C.os, "geteuid", lambda: 0)
    cfg = conf(text)
    assert not cfg.personal and cfg.path.endswith("grun.conf")
    assert cfg.master_host == socket.gethostname() and cfg.master_port == 5184
    assert cfg.services == {"queue", "exec"}  # this host is the master
    assert cfg.bind == "0.0.0.0" and cfg.advertise == cfg.hostname
    assert cfg.spool == "/var/spool/grun" and cfg.log_file == "/var/spool/grun/grun.log"


def test_cluster_spool_as_non_root_is_xdg(conf, monkeypatch, tmp_path):
    monkeypatch.setattr(C.os, "geteuid", lambda: 1000)
    assert conf("").spool == str(tmp_path / "state" / "grun")


def test_every_key(conf, tmp_path):
    cfg = conf(f"""
master: head.example:6000
services: exec
hostname: n1
bind: 10.1.2.3
advertise: n1.example
cpus: 3.5
memory: 16G
spool: {tmp_path}/sp
log_file: logs/g.log
pid_file: /run/g.pid
log_level: DEBUG
node_timeout: 2m
heartbeat: 2.5
default_cpus: 0.5
default_memory: 1G
output_keep: 12h
future_key: {{a: 1}}
""")
    assert (cfg.master_host, cfg.master_port, cfg.services) == ("head.example", 6000, {"exec"})
    assert (cfg.hostname, cfg.bind, cfg.advertise) == ("n1", "10.1.2.3", "n1.example")
    assert (cfg.cpus, cfg.memory) == (3.5, 16384)
    assert cfg.spool == f"{tmp_path}/sp"
    assert cfg.log_file == f"{tmp_path}/sp/logs/g.log"  # relative: under the spool
    assert cfg.pid_file == "/run/g.pid"
    assert (cfg.log_level, cfg.node_timeout, cfg.heartbeat) == ("debug", 120, 2.5)
    assert (cfg.default_cpus, cfg.default_memory, cfg.output_keep) == (0.5, 1024, 43200)
    assert cfg.warnings == [f"{tmp_path}/grun.conf:18: unknown key 'future_key' ignored"]
    assert cfg.where["cpus"] == f"{tmp_path}/grun.conf:7" and len(cfg.where) == 16


@pytest.mark.parametrize("text", ["log_file:\n", "log_file: null\n", "log_file: '-'\n", "log_file: ''\n"])
def test_log_file_off_means_stderr(conf, text):
    assert conf(text).log_file is None


def test_null_value_takes_the_default(conf):
    cfg = conf("cpus:\nnode_timeout: ~\n")
    assert cfg.cpus == float(psutil.cpu_count(logical=True)) and cfg.node_timeout == 60


def test_log_level_warn_alias(conf):
    assert conf("log_level: warn").log_level == "warning"


@pytest.mark.parametrize("bind, advertise", [
    ("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("::1", "::1"),
    ("10.0.0.5", "10.0.0.5"), ("0.0.0.0", "nodename"), ("::", "nodename"), ("::0", "nodename"), ("n.lan", "n.lan"),
    ("10.0.0.0", "10.0.0.0"),
])
def test_advertise_guess(conf, bind, advertise):
    assert conf(f"hostname: nodename\nbind: '{bind}'\n").advertise == advertise


# --- master and services ----------------------------------------------------------------------

@pytest.mark.parametrize("text, host, port", [
    ("master: foo.example", "foo.example", 5184),
    ("master: foo.example:6000", "foo.example", 6000),
    ("master: [::1]:6000", "::1", 6000),          # unquoted: not valid YAML as such
    ("master: '[::1]:6000'", "::1", 6000),
    ("master: [::1]  # comment", "::1", 5184),
    ("master: ::1", "::1", 5184),
    ("master: 10.0.0.1:7000", "10.0.0.1", 7000),
])
def test_master_forms(conf, text, host, port):
    cfg = conf(text + "\nservices: exec\n")
    assert (cfg.master_host, cfg.master_port) == (host, port)


@pytest.mark.parametrize("value", ["foo:0", "foo:70000", "foo:http", "foo:", "[::1", "[::1]x",
                                   "'a b'", "5184", "10:30", "[a, b]"])
def test_bad_master_is_an_error_with_line(conf, value):
    e = error(conf, f"cpus: 1\nmaster: {value}\n")
    assert e.line == 2 and e.key == "master" and ":2: key 'master': " in str(e)
    assert "630" not in str(e)  # "10:30" is not read as YAML's base-60 integer


@pytest.mark.parametrize("text, services", [
    ("services: queue", {"queue"}),
    ("services: [queue, exec]", {"queue", "exec"}),
    ("services: queue,exec", {"queue", "exec"}),
    ("services: ' Exec '", {"exec"}),
    ("services:\n  - exec\n  - queue", {"queue", "exec"}),
])
def test_services_forms(conf, text, services):
    assert conf("master: 192.0.2.1\n" + text).services == services


@pytest.mark.parametrize("value", ["[]", "bogus", "queue,master", "5", "{a: 1}"])
def test_bad_services(conf, value):
    e = error(conf, f"services: {value}")
    assert (e.line, e.key) == (1, "services")


@pytest.mark.parametrize("text, services", [
    ("master: 192.0.2.1", {"exec"}),                        # TEST-NET: not us
    ("master: 127.0.0.1", {"queue", "exec"}),
    ("master: localhost:6000", {"queue", "exec"}),
    (f"master: {socket.gethostname()}", {"queue", "exec"}),
    ("hostname: alpha\nmaster: alpha.example.invalid", {"queue", "exec"}),  # short name matches
    ("hostname: alpha\nmaster: ALPHA", {"queue", "exec"}),
])
def test_services_guessed_from_master(conf, text, services):
    assert conf(text).services == services


def test_is_this_host_by_local_address():
    addrs = [a.address for nic in psutil.net_if_addrs().values() for a in nic
             if a.family == socket.AF_INET]
    assert all(C.is_this_host(a) for a in addrs)
    assert not C.is_this_host("192.0.2.77")


def test_personal_mode_always_runs_both_services(env):
    assert load_config(None, environ={**env, "GRUN_MASTER": "192.0.2.1"}).services == {"queue", "exec"}


# --- parsing tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, mb", [
    (3000, 3000), ("3000", 3000), (0, 0), ("0", 0), ("500M", 500), ("500m", 500), ("500MB", 500),
    ("4G", 4096), ("4g", 4096), ("4GB", 4096), ("4GiB", 4096), ("1T", 1048576), ("512K", 1),
    ("1.5G", 1536), (" 2 G ", 2048), (1.5, 2), ("0.1", 1), (".5g", 512), ("2048k", 2), ("512kb", 1), ("4 gib", 4096),
    ("4Gi", 4096), ("4mi", 4),  # (Kubernetes' spelling, as the QA's newcomer wrote it)
])
def test_parse_memory(value, mb):
    assert parse_memory(value) == mb


@pytest.mark.parametrize("value", ["", "lots", "-1", -1, "4X", "4 GBs", "G", "1e3", "500B",
                                   "4ib", "4mib b", "4gbb", "1_000", "4..5g", "4 g b", math.nan, math.inf, "nan", "inf", True, None, [1], "2000000T"])
def test_parse_memory_refuses(value):
    with pytest.raises(ValueError, match="expected"):
        parse_memory(value)


@pytest.mark.parametrize("value, cpus", [("4", 4.0), ("0.5", 0.5), (2, 2.0), (0.25, 0.25),
                                         ("0", 0.0), (" 8 ", 8.0), (100000, 100000.0)])
def test_parse_cpus(value, cpus):
    assert parse_cpus(value) == cpus and isinstance(parse_cpus(value), float)


@pytest.mark.parametrize("value", ["lots", "", "-1", -0.5, math.nan, math.inf, "nan", "inf",
                                   100001, "1e9", False, None, "4 cores"])
def test_parse_cpus_refuses(value):
    with pytest.raises(ValueError, match="expected"):
        parse_cpus(value)


@pytest.mark.parametrize("value, seconds", [
    (30, 30), (2.5, 2.5), ("30", 30), ("45s", 45), ("30m", 1800), ("12h", 43200), ("1d", 86400),
    ("1w", 604800), ("1h30m", 5400), ("1h 30m", 5400), ("1.5h", 5400), ("0", 0), ("2D", 172800),
    (" 1 h 30 m ", 5400), ("0.7h", 2520),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "-5", -5, "1h30", "5x", "h", math.inf, True, None,
                                   "1e5s", "1hh", "1 5h", "+5m", "1h-30m"])
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError, match="expected"):
        parse_duration(value)


def test_parse_hostport_and_services_directly():
    assert parse_hostport("h", default_port=1) == ("h", 1)
    assert [parse_hostport(a) for a in ("[::1]:7", "[::1]", "fe80::1", " h:7 ")] == [
        ("::1", 7), ("::1", DEFAULT_PORT), ("fe80::1", DEFAULT_PORT), ("h", 7)]
    for bad in ("", ":7", "h:", "[::1]x", "[::1", "a b:7", "h/x:7", "h:²", "h:0", "h:65536", "7000"):
        with pytest.raises(ValueError, match="^expected"):  # (a port of "²" once got int()'s own message)
            parse_hostport(bad)
    assert parse_services(["exec"]) == {"exec"}


# --- errors carry file:line:key ----------------------------------------------------------------

def test_error_format(conf, tmp_path):
    e = error(conf, "# comment\nmaster: 192.0.2.1\ncpus: lots\n")
    assert str(e) == f"{tmp_path}/grun.conf:3: key 'cpus': expected a number of CPUs like 4 or 0.5, got 'lots'"
    assert (e.path, e.line, e.key) == (f"{tmp_path}/grun.conf", 3, "cpus")


@pytest.mark.parametrize("key, value", [
    ("hostname", "'a b'"), ("hostname", "[x]"), ("bind", "''"), ("advertise", "{a: 1}"),
    ("cpus", "-2"), ("cpus", "yes"), ("memory", "lots"), ("memory", "-1G"), ("spool", "relative/dir"),
    ("spool", "5"), ("log_file", "[a]"), ("pid_file", "{}"), ("log_level", "loud"),
    ("node_timeout", "0"), ("heartbeat", "-1"), ("heartbeat", "soon"), ("default_cpus", ".nan"),
    ("default_memory", "4X"), ("output_keep", "forever"),
    *(pytest.param(key, "9" * 400, id=f"{key}-too-large-for-a-float") for key in ("cpus", "memory", "heartbeat")),
])
def test_bad_value_of_each_key(conf, key, value):
    e = error(conf, f"services: exec\n\n{key}: {value}\n")
    assert (e.line, e.key) == (3, key)
    assert str(e).startswith(f"{e.path}:3: key '{key}': expected ")


def test_multiline_yaml_value_error_still_one_line(conf):
    e = error(conf, "services: exec\nmemory: |\n  4G\n  and more\n")
    assert e.line == 2 and "\\n" in str(e)


def test_duplicate_key(conf):
    e = error(conf, "cpus: 1\nmemory: 2G\ncpus: 2\n")
    assert (e.line, e.key) == (3, "cpus") and "first on line 1" in str(e)


def test_malformed_yaml(conf, tmp_path):
    e = error(conf, "cpus: 1\nmemory: [1, 2\nbind: x\n")
    assert str(e).startswith(f"{tmp_path}/grun.conf:") and "not valid YAML" in str(e)
    assert e.line in (3, 4)
    e = error(conf, "a: 1\n  b: 2\n")
    assert e.line == 2 and "not valid YAML" in str(e)
    assert "not valid YAML" in str(error(conf, "a: 1\n---\nb: 2\n"))  # two documents
    assert "not valid YAML" in str(error(conf, "a: !!python/object:os.system x\n"))


@pytest.mark.parametrize("text, line, kind", [
    ("- cpus: 1\n", 1, "a list"), ("\n\njust a string\n", 3, "a single value"), ("42", 1, "a single")])
def test_top_level_not_a_mapping(conf, tmp_path, text, line, kind):
    e = error(conf, text)
    assert str(e).startswith(f"{tmp_path}/grun.conf:{line}: expected a mapping") and kind in str(e)


def test_not_utf8(tmp_path, env):
    path = tmp_path / "bin.conf"
    path.write_bytes(b"cpus: 1\nhostname: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.conf:2: not valid UTF-8"):
        load_config(str(path), environ=env)


def test_unreadable(tmp_path, env):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path), environ=env)  # a directory: root can't read it either
    assert str(e.value) == f"{tmp_path}: cannot read: Is a directory"
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "nope.conf"), environ=env)
    assert str(e.value) == f"{tmp_path}/nope.conf: cannot read: No such file or directory"


def test_config_error_plain_message():
    assert str(ConfigError("just this")) == "just this"
    assert str(ConfigError("bad\n  thing", "/f", 2, "k")) == "/f:2: key 'k': bad thing"


# --- environment overrides ---------------------------------------------------------------------

def test_env_overrides(conf, env, tmp_path):
    environ = {**env, "GRUN_MASTER": "[::1]:7000", "GRUN_SPOOL": str(tmp_path / "s")}
    cfg = conf("master: 192.0.2.1:6000\nspool: /elsewhere\n", environ=environ)
    assert (cfg.master_host, cfg.master_port, cfg.spool) == ("::1", 7000, str(tmp_path / "s"))
    assert cfg.services == {"queue", "exec"}  # guessed from the overriding master
    assert cfg.pid_file == str(tmp_path / "s" / "grun.pid")
    personal = load_config(None, environ=environ)
    assert (personal.master_host, personal.master_port, personal.spool) == ("::1", 7000, str(tmp_path / "s"))


def test_bad_env_master(env):
    with pytest.raises(ConfigError, match=r"^\$GRUN_MASTER: expected a port"):
        load_config(None, environ={**env, "GRUN_MASTER": "h:99999"})


# --- find_config_path ----------------------------------------------------------------------------

def test_find_config_path_precedence(tmp_path):
    a, b, etc = tmp_path / "a.conf", tmp_path / "b.conf", tmp_path / "etc.conf"
    for p in (a, b, etc):
        p.write_text("")
    assert find_config_path(str(a), {"GRUN_CONF": str(b)}, etc_path=str(etc)) == str(a)
    assert find_config_path(None, {"GRUN_CONF": str(b)}, etc_path=str(etc)) == str(b)
    assert find_config_path(None, {"GRUN_CONF": ""}, etc_path=str(etc)) == str(etc)
    assert find_config_path(None, {}, etc_path=str(etc)) == str(etc)
    assert find_config_path(None, {}, etc_path=str(tmp_path / "missing")) is None


def test_find_config_path_named_but_missing_is_an_error(tmp_path):
    missing = str(tmp_path / "missing.conf")
    for explicit, environ in ((missing, {}), (None, {"GRUN_CONF": missing})):
        with pytest.raises(ConfigError) as e:
            find_config_path(explicit, environ, etc_path=str(tmp_path))
        assert str(e.value) == f"{missing}: cannot read: No such file or directory"


# --- describe (grun -q conf) and unknown keys ---------------------------------------------------------

def test_describe_round_trips(conf, tmp_path, env):
    cfg = conf(f"master: '[::1]:6000'\nservices: exec\nmemory: 3G\nspool: {tmp_path}/sp\n"
               "log_file: null\noutput_keep: 1h\nlabels: {os: debian12, v: '12', 'yes': on}\nextra: [1, 2]\n")
    text = describe(cfg)
    assert text.startswith(f"# grun config from {tmp_path}/grun.conf;")
    assert yaml.safe_load(text)["memory"] == 3072
    again = tmp_path / "again.conf"
    again.write_text(text)
    back = load_config(str(again), environ=env)
    assert repr(back) == repr(cfg) and back.labels == {"os": "debian12", "v": "12", "yes": "true"}
    assert back.warnings == [] and set(back.where) == set(KEYS)  # every key now from the file


def test_describe_says_where_each_value_came_from(conf, tmp_path, env):
    environ = {**env, "GRUN_SPOOL": str(tmp_path / "s")}
    cfg = conf("# a cluster\nmaster: 192.0.2.1:6000\nmemroy: 2G\ncpus: 2\n", environ=environ)
    lines = describe(cfg).splitlines()
    assert f"# warning: {tmp_path}/grun.conf:3: unknown key 'memroy' ignored; did you mean 'memory'?" in lines
    origin = {line.split(":")[0]: line.split(" # ")[1] for line in lines if not line.startswith("#")}
    assert list(origin) == list(KEYS)
    assert origin["master"] == f"{tmp_path}/grun.conf:2" and origin["cpus"] == f"{tmp_path}/grun.conf:4"
    assert origin["spool"] == "$GRUN_SPOOL"
    assert origin["memory"] == "guessed: physical memory" and origin["services"].startswith("guessed: ")
    assert origin["node_timeout"] == origin["log_file"] == "default"
    assert "cpus: 2 " in describe(cfg) and f"memory: {psutil.virtual_memory().total // 2 ** 20} " in describe(cfg)


def test_describe_warns_of_users_and_groups_this_host_does_not_know(conf, tmp_path):
    cfg = conf("admins: [root, nobodyhere, \"a\\0b\"]\nlimits: {user.root: {jobs: 1}, group.nosuchgroup: {jobs: 1}, "
               "group.root: {jobs: 1}, user.nobodyhere: {cpus: 2}}\n")
    assert describe(cfg, as_dict=True)["warnings"] == [
        f"{tmp_path}/grun.conf:2: limits: no group 'nosuchgroup' on this host",
        f"{tmp_path}/grun.conf:1: admins: no user 'a\\x00b' on this host",  # (a NUL: getpwnam's ValueError)
        f"{tmp_path}/grun.conf:1: admins: no user 'nobodyhere' on this host",
        f"{tmp_path}/grun.conf:2: limits: no user 'nobodyhere' on this host"]
    assert cfg.warnings == [], "the lookups are a daemon's and `grun -q conf`'s, not every client's"


def test_describe_warns_of_a_plugin_grun_d_refuses_and_of_a_node_no_job_fits(conf, tmp_path):
    """QA: `grun -q conf` said nothing of these (the plugin's line is `grun -d`'s refusal)."""
    cfg = conf("services: exec\ncpus: 1\nmemory: 0\ndefault_cpus: 100\nplugins: [nosuchmod:Plugin]\n")
    assert describe(cfg, as_dict=True)["warnings"] == [
        (f"{tmp_path}/grun.conf:4: default_cpus: 100, more than the 1 cpus this node offers: a job without -c cannot "
         "run on it"),
        f"{tmp_path}/grun.conf:3: memory: 0 offered: no job can run on this node",
        (f"plugin 'nosuchmod:Plugin' (plugins: in {tmp_path}/grun.conf:5) cannot be loaded: ModuleNotFoundError: "
         "No module named 'nosuchmod'")]
    assert describe(conf("services: queue\nmemory: 0\ndefault_cpus: 100\n"), as_dict=True)["warnings"] == []  # no node


def test_describe_personal(env):
    text = describe(load_config(None, environ=env))
    assert "personal mode" in text and yaml.safe_load(text)["master"] == "127.0.0.1:5184"
    assert "master: 127.0.0.1:5184" in text.splitlines()[1] and "# default" not in text.splitlines()[1]


@pytest.mark.parametrize("text, line, other", [
    ("cpus: 2\nmemroy: 2G\n", 2, 3),                               # the fast reader
    ("labels: {os: x}\n\nmemroy:\n  - 2G\n", 3, 5),                 # PyYAML
])
def test_unknown_keys_are_warnings_with_the_closest_key(conf, tmp_path, text, line, other):
    cfg = conf(text + "zzqq: 1\n")
    assert cfg.warnings == [f"{tmp_path}/grun.conf:{line}: unknown key 'memroy' ignored; did you mean 'memory'?",
                            f"{tmp_path}/grun.conf:{other}: unknown key 'zzqq' ignored"]


def test_the_client_side_imports_no_guess_and_no_difflib(tmp_path):
    """What `grun CMD` reads of a cluster config costs no psutil, DNS, yaml or difflib (an unknown key
    would import difflib, to name the closest key)."""
    path = tmp_path / "grun.conf"
    path.write_text("master: 192.0.2.1:6000\nservices: exec\nspool: /tmp/x\n")
    code = ("import sys; from grun.config import load_config; c = load_config(sys.argv[1]); "
            "c.master_host, c.master_port, c.spool, c.log_file, c.pid_file, c.personal; "
            "print(sorted(m for m in ('psutil', 'yaml', 'difflib', 'logging') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# --- the README's config block and reload paragraph come from KEYS -----------------------------------------

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _readme_section() -> str:
    with open(README) as f:
        return f.read().split("## A real cluster", 1)[1].split("\n## ", 1)[0]


def test_readme_config_block_is_the_table(tmp_path, env):
    """Every key of KEYS once, in order, with its doc; each example value reads back without error."""
    block = re.search(r"```yaml\n(.*?)```", _readme_section(), re.DOTALL).group(1)
    rows = [re.fullmatch(r"(?:# )?([a-z_]+): (\S.*?) +# (.*)", line) for line in block.splitlines()]
    rows = [m.groups() for m in rows if m]
    expected = "\n".join(f"{k.name}: ...  # {k.doc}" for k in KEYS.values())
    assert [(name, doc) for name, _, doc in rows] == [(k.name, k.doc) for k in KEYS.values()], \
        f"the README's config block should list, in this order:\n{expected}"
    path = tmp_path / "readme.conf"
    path.write_text("".join(f"{name}: {example}\n" for name, example, _ in rows))
    cfg = load_config(str(path), environ=env)
    assert cfg.warnings == [] and set(cfg.where) == set(KEYS)


def test_readme_reload_paragraph_names_the_keys_that_need_a_restart():
    text = " ".join(_readme_section().split())
    named = re.search(r"every key applies at once except (.*?) \(", text).group(1)
    assert set(re.findall(r"`(\w+)`", named)) == {k.name for k in KEYS.values() if not k.reload}


# --- scheduling and limits keys (issue 4) ---------------------------------------------------------

def test_scheduling_and_limit_keys(conf):
    cfg = conf("default_priority: 15\nreserve_after: 2m\nhard_factor: 2\nresources: {gpu: 2, scratch_gb: 500, scratch: 500G}\n"
               "labels: {os: debian12, cuda: 12}\nulimit: {cpu: 1h, fsize: 10G, nofile: 4096, core: unlimited}\n"
               "count_outside_load: no\n")
    assert (cfg.default_priority, cfg.reserve_after, cfg.hard_factor) == (15, 120.0, 2.0)
    assert cfg.resources == {"gpu": 2.0, "scratch_gb": 500.0, "scratch": 512000}  # a size: MB, as memory
    assert cfg.labels == {"os": "debian12", "cuda": "12"}
    assert cfg.ulimit == {"cpu": 3600, "fsize": 10240, "nofile": 4096, "core": None}
    assert cfg.count_outside_load is False and cfg.warnings == []
    again = load_config_from_describe(conf, cfg)
    assert (again.resources, again.labels, again.ulimit) == (cfg.resources, cfg.labels, cfg.ulimit)
    defaults = conf("")
    assert (defaults.default_priority, defaults.reserve_after, defaults.hard_factor, defaults.ulimit,
            defaults.resources, defaults.labels, defaults.count_outside_load) == (20, 300.0, 1.5, {}, {}, {}, True)


def load_config_from_describe(conf, cfg):
    return conf(describe(cfg))


@pytest.mark.parametrize("text, key", [
    ("hard_factor: 0.5\n", "hard_factor"), ("hard_factor: lots\n", "hard_factor"),
    ("resources: {gpu: -1}\n", "resources"), ("resources: [gpu]\n", "resources"),
    ("resources: {cpus: 2}\n", "resources"), ("labels: {os: [a, b]}\n", "labels"),
    ("labels: {'bad name': x}\n", "labels"), ("ulimit: {bogus: 1}\n", "ulimit"),
    ("ulimit: {nofile: 3}\n", "ulimit"), ("ulimit: {cpu: forever}\n", "ulimit"), ("ulimit: 5\n", "ulimit"),
    ("default_priority: high\n", "default_priority"), ("reserve_after: soon\n", "reserve_after"),
    ("count_outside_load: maybe\n", "count_outside_load"),
])
def test_bad_scheduling_and_limit_keys(conf, text, key):
    e = error(conf, text)
    assert e.key == key and e.line == 1, str(e)


def test_guesses_say_their_rule_without_contradicting_the_value(conf, env):
    """(`allow_root: false  # guessed: personal mode: yes` and `auth: none # guessed: secret in personal mode`.)"""
    for cfg, root, auth in ((conf("cpus: 2\n"), "no", "none"), (load_config(None, environ=env), "yes", "secret")):
        origin = describe(cfg, as_dict=True)["keys"]
        assert origin["allow_root"]["origin"] == "guessed: yes in personal mode (its user's own cluster), else no"
        assert origin["auth"]["origin"] == "guessed: secret in personal mode, else none (as the original grun)"
        assert (cfg.allow_root, cfg.auth) == (root == "yes", auth)


@pytest.mark.parametrize("value", ["x", "-1", "lots of", "'8 gpus'"])
def test_a_bad_resource_value_says_what_a_resource_may_be(conf, value):
    """(`resources: {gpu: x}` said "expected a memory size like 4096 (MB), 500M or 4G".)"""
    e = error(conf, f"resources: {{gpu: {value}}}\n")
    assert "resource gpu: expected a count like 8, a size counted in MB like 500G or a list of device names" in str(e)
    assert "memory size" not in str(e), str(e)


def test_a_size_given_to_a_resource_is_counted_in_mb_as_its_doc_says(conf):
    assert conf("resources: {io: 8G}\n").resources == {"io": 8192}
    assert "sizes counted in MB (500G)" in KEYS["resources"].doc


def test_the_config_page_says_conf_reads_the_file_not_the_running_daemon():
    from grun.shell import _config_page
    assert "values in effect" not in _config_page() and "not from a running daemon" in _config_page()
