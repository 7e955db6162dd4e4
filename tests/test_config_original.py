"""The original Perl grun's /etc/grun.conf (issue 12): each of its keys is understood (turned into ours) or
reported at its FILE:LINE with what to use instead; Perl (`match:`, `auto_profile`) is never run and the report
shows the rule that replaces it; a file that is not YAML is read as the original read it; and a cluster started
from original files runs jobs with their resources, labels and wrapper."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from cluster import free_port
from util import wait_for

from grun.client import Client
from grun.config import KEYS, ConfigError, load_config

# A lab's master config from the original grun's days (its README's example, grown over the years).
ORIGINAL = """\
# /etc/grun.conf -- grun master
master:    head.lab.local
services:   queue exec
log_file:  /var/log/grun.log
spool: /var/spool/grun
bind: 0.0.0.0:6000
wrap: /usr/bin/gwrap
hard_factor: 2
default_memory: 2000000
default_cpu: 0.5
default_priority: 10
expire_secs: 7200
expire_action: fail
ping_secs: 10
io_keep: 7200
log_types: note error warn
param-gpu: 2
param-scratch: 500
param-os: centos6
env: PATH LD_LIBRARY_PATH PERL5LIB
idle_load: .5
nfs_sync: 1
ulimit: -f 1073741824 -v 8000000
run_asroot: 0
match: $node->{load} < 4 && $job->{user} ne 'bob'
auto_profile: /etc/grun.prof
memroy: 4G
"""


@pytest.fixture
def conf(tmp_path):
    def write(text: str, name: str = "grun.conf") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def test_each_original_key_is_understood(conf):
    path = conf(ORIGINAL)
    cfg = load_config(path, environ={})
    assert (cfg.master, cfg.services, cfg.bind) == (("head.lab.local", 6000), {"queue", "exec"}, "0.0.0.0")
    assert (cfg.log_file, cfg.spool, cfg.hard_factor) == ("/var/log/grun.log", "/var/spool/grun", 2)
    assert "wrap" not in KEYS or cfg.wrap == "/usr/bin/gwrap"  # (the node's wrap: key, issue 14)
    assert (cfg.default_memory, cfg.default_cpus, cfg.default_priority) == (2000, 0.5, 10)  # kB there
    assert (cfg.node_timeout, cfg.requeue, cfg.heartbeat, cfg.output_keep) == (7200, False, 10, 7200)
    assert (cfg.log_level, cfg.allow_root, cfg.ulimit) == ("info", False, {})
    assert "nfs_sync" not in KEYS or cfg.nfs_sync is True and cfg.where["nfs_sync"] == f"{path}:22"
    assert (cfg.resources, cfg.labels) == ({"gpu": 2, "scratch": 500}, {"os": "centos6"})
    assert cfg.where["default_cpus"] == f"{path}:10 (original default_cpu)"
    assert cfg.where["resources"] == f"{path}:17 (original param-gpu)"
    assert cfg.where["master"] == f"{path}:2 (the port: line 6's)"


def test_what_is_not_supported_is_reported_with_what_to_use_instead(conf):
    path = conf(ORIGINAL)
    warnings = {w.split(":")[1]: w for w in load_config(path, environ={}).warnings}
    wrap = [] if "wrap" in KEYS else ["7"]  # (the node's wrap: key, issue 14, once on main)
    nfs = [] if "nfs_sync" in KEYS else ["22"]  # (nfs_sync: ours too, issue 14)
    assert sorted(warnings, key=int) == [*wrap, "20", "21", *nfs, "23", "25", "26", "27"]
    assert all(w.startswith(f"{path}:") for w in warnings.values())
    assert "key 'env' (PATH LD_LIBRARY_PATH PERL5LIB) not supported in this grun" in warnings["20"]
    assert "-E VAR,..." in warnings["20"] and "count_outside_load" in warnings["21"]
    assert "`ulimit: {fsize: 100G, cpu: 12h}`" in warnings["23"] and "hard_factor" in warnings["23"]
    # Perl is not run: the report shows the rule that replaces it
    match, profile = warnings["25"], warnings["26"]
    assert "key 'match' ($node->{load} < 4 && $job->{user} ne 'bob') not supported in this grun" in match
    assert "its Perl is not run" in match and "`rules: [{nodes: 'load < 4 and labels.os == \"debian12\"'}]`" in match
    assert "its Perl is not run" in profile
    assert """`rules: [{if: 'prog == "tophat" and size(argv[4]) > 100K', default: {memory: 3000}}]`""" in profile
    assert warnings["27"].endswith("unknown key 'memroy' ignored; did you mean 'memory'?")


def test_a_file_yaml_cannot_read_is_read_as_the_original_did(conf, tmp_path):
    conf("cpus: 8\nparam-licence: matlab\nparam-io: 4\n", "site.conf")
    path = conf("# not YAML: `env: *` is an alias there, backticks are reserved\nmaster: head\nservices: exec\n"
                "env: *\nInclude: site.conf\nmatch: `uptime` =~ /load/\nmemory: {8*1024}\n"
                f"spool: {tmp_path}/spool-$hostname\nhostname: n7\nport: 7000\nparam-io: 8\n")
    cfg = load_config(path, environ={})
    assert (cfg.master, cfg.services, cfg.hostname) == (("head", 7000), {"exec"}, "n7")
    assert cfg.spool == f"{tmp_path}/spool-n7"  # ($hostname: another key's value)
    assert (cfg.cpus, cfg.resources, cfg.labels) == (8, {"io": 8}, {"licence": "matlab"})  # the file wins
    assert cfg.where["labels"] == f"{path}:2 of site.conf (original param-licence)"
    warnings = " | ".join(cfg.warnings)
    assert f"{path}:7: key 'memory' ({{8*1024}}) not supported in this grun: Perl code in {{...}} is not run" \
        in warnings
    assert f"{path}:6: key 'match'" in warnings and f"{path}:4: key 'env' (*)" in warnings


def test_the_rules_the_reports_show_are_valid_config(conf):
    """What the reports of `match:` and `auto_profile` show loads as written (once `rules:` is a key)."""
    shown = re.findall(r"`(rules: \[.*?\])`", " ".join(load_config(conf(ORIGINAL), environ={}).warnings))
    assert len(shown) == 3
    for text in shown:
        assert load_config(conf(text + "\n", "rules.conf"), environ={}).warnings == [], text


@pytest.mark.parametrize("text, line, needle", [
    ("master: head\nport: 70000\n", r"1 \(the port: line 2's\)", "a port between 1 and 65535"),
    ("bind: 0.0.0.0:http\n", "1", "a port between 1 and 65535"),
    ("param-gpu: 2\nexpire_secs: soon\n", r"2 \(original expire_secs\)", "a duration"),
    ("include: nosuch.conf\n", "1", "cannot read nosuch.conf"),
])
def test_bad_original_values_name_their_line(conf, text, line, needle):
    path = conf(text)
    with pytest.raises(ConfigError, match=rf"^{path}:{line}: .*{needle}"):
        load_config(path, environ={})


@pytest.mark.parametrize("lines, level", [("log_types: note error warn", "info"), ("log_types: error", "error"),
                                          ("log_types: warn error", "warning"), ("trace: 1\nlog_types: error", "debug"),
                                          ("trace: 0", "info"), ("log_types: note debug", "debug")])
def test_what_the_original_logged_is_the_log_level(conf, lines, level):
    assert load_config(conf(f"param-x: 1\n{lines}\n"), environ={}).log_level == level


def test_a_yaml_file_is_left_as_it_was(conf):
    path = conf("master: head:5000\nresources: {gpu: 2}\nlabels: {os: debian12}\nbind: '::1'\n")
    cfg = load_config(path, environ={})
    assert (cfg.master, cfg.resources, cfg.labels, cfg.bind, cfg.warnings) == (
        ("head", 5000), {"gpu": 2}, {"os": "debian12"}, "::1", [])


def test_a_cluster_from_an_original_config(tmp_path):
    """One daemon with both services from an original file: the port from `bind`, `param-` resources and
    labels place a job, `wrap` runs it, `default_memory` (kB) is its reservation; `grun -d` warns of `match:`."""
    port = free_port()
    path = tmp_path / "grun.conf"
    path.write_text(f"master: 127.0.0.1\nbind: 127.0.0.1:{port}\nservices: queue exec\nspool: {tmp_path}/spool\n"
                    "log_file: grun.log\nhostname: old1\nparam-gpu: 2\nparam-os: centos6\nwrap: env WRAPPED=yes\n"
                    "default_memory: 300000\nrun_asroot: 1\nping_secs: 1\nmatch: $node->{load} < 4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "grun.cli", "-C", str(path), *args], env=env,
                                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    r = run("-d")
    try:
        assert r.returncode == 0, r.stderr
        assert f"grun: warning: {path}:13: key 'match' ($node->{{load}} < 4) not supported" in r.stderr.decode()
        client = Client("127.0.0.1", port, connect_wait=10)
        wait_for(lambda: any(n["up"] for n in client.nodes()), what="the node")
        r = run("-p", "gpu=2", "-p", "os=centos6", "sh", "-c", 'echo "$WRAPPED $GRUN_NODE"')
        wrapped = b"yes" if "wrap" in KEYS else b""  # (the node's wrap: key, issue 14, once on main)
        assert (r.returncode, r.stdout) == (0, wrapped + b" old1\n"), r.stderr
        # the client learns the exit from the node's stream, maybe before the node has told the master
        assert wait_for(lambda: client.history(1), what="the job in history")[0]["memory"] == 300
    finally:
        assert run("-d", "-k").returncode == 0  # (it waits for the daemon to end, by its pid file)


def test_a_bind_port_no_daemon_listens_on_is_reported(conf):
    """A node's `bind: host:port` (a fixed port for a firewall) beside a master: with its own port: none listens there."""
    cfg = load_config(conf("master: 127.0.0.1:5360\nbind: 127.0.0.1:5361\n"), environ={})
    assert (cfg.master, cfg.bind) == (("127.0.0.1", 5360), "127.0.0.1")
    said = "key 'bind' (127.0.0.1:5361) its port is not used: the master listens on master:'s (5360), nodes on ports"
    assert [w.split(": ", 1)[1] for w in cfg.warnings] == [said + " the OS gives"]
