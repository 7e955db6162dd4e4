"""Completion scripts run by the real shells (options, queries, and the job ids of a live cluster), and the
systemd unit checked by systemd-analyze (issue 16, native CLI)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from cluster import LocalCluster

from grun.shell import TOPICS

# bash's (and zsh's, through bashcompinit) completion of `grun WORDS` with the cursor after the last word
COMPLETE = """source /dev/stdin <<< "$SCRIPT"
{setup}COMP_WORDS=(grun {words}); COMP_CWORD={cword}; _grun; printf '%s\\n' "${{COMPREPLY[@]}}"
"""


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000}}) as c:
        yield c


def _script(shell: str) -> str:
    r = subprocess.run([sys.executable, "-m", "grun.cli", "--completion", shell], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r
    return r.stdout


def _complete(shell: str, words: list[str], env: dict) -> list[str]:
    env = dict(env, SCRIPT=_script(shell), PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"])
    if shell == "fish":
        code = f"source (grun --completion fish | psub); complete -C {' '.join(words)!r}"
        r = subprocess.run(["fish", "-c", code.replace("grun --completion", f"{sys.executable} -m grun.cli --completion")],
                           capture_output=True, text=True, env=env, timeout=30)
        return [line.split("\t")[0] for line in r.stdout.splitlines()]
    quoted = " ".join(f'"{w}"' for w in words[1:])
    code = COMPLETE.format(setup="setopt ksharrays; " if shell == "zsh" else "", words=quoted, cword=len(words) - 1)
    r = subprocess.run([shell, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert not r.stderr, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_completes_options_queries_and_live_job_ids(cluster, shell):
    if not shutil.which(shell):
        pytest.skip(f"no {shell} here (CI installs it)")
    job = cluster.client().submit(["sleep", "60"]).id
    try:
        assert "--nowait" in _complete(shell, ["grun", "--nowa"], cluster.env)
        assert _complete(shell, ["grun", "-q", ""], cluster.env) == ["conf", "history", "jobs", "status", "wait",
                                                                     "why"] if shell == "fish" else \
            ["jobs", "status", "history", "wait", "why", "conf"]
        assert str(job) in _complete(shell, ["grun", "-k", ""], cluster.env)
        assert "n1" in _complete(shell, ["grun", "-H", ""], cluster.env)
        assert sorted(_complete(shell, ["grun", "help", ""], cluster.env)) == sorted(TOPICS), "not every command"
    finally:
        cluster.client().kill([job])


def test_an_unknown_shell_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "grun.cli", "--completion", "tcsh"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bash, zsh, fish" in r.stderr


def test_the_systemd_unit_keeps_jobs_over_restarts_and_systemd_accepts_it(tmp_path):
    conf = tmp_path / "grun.conf"
    conf.write_text("master: 127.0.0.1:5999\nservices: queue exec\n")
    grun = [sys.executable, "-m", "grun.cli", "-C", str(conf), "-d", "--systemd"]
    unit = subprocess.run(grun, capture_output=True, text=True, check=True).stdout
    assert "KillMode=process" in unit and "Restart=on-failure" in unit and "LimitNOFILE=" in unit
    assert f"-m grun.cli -d -F -C {conf}" in unit and "(exec, queue)" in unit
    r = subprocess.run([*grun, "--install", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "grun.service").read_text() == unit and "wrote" in r.stdout, r
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "grun.service")], capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run([sys.executable, "-m", "grun.cli", "-d", "--systemd"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "GRUN_CONF"})
    if not os.path.exists("/etc/grun.conf"):  # personal mode: no unit to make
        assert r.returncode == 2 and "needs a config file" in r.stderr
