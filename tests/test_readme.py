"""The README's two set-up commands, and CI running the README's test command (issue 2, "Tests and CI")."""
from __future__ import annotations

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_readme_gives_the_install_and_test_commands():
    blocks = re.findall(r"```\n(.*?)```", _read("README.md"), re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    assert "pip install . && grun hostname" in commands
    test_command = next(c for c in commands if "pytest" in c)
    assert "pip install" in test_command and "[test]" in test_command


def test_ci_installs_and_runs_the_readmes_test_command():
    ci = _read(".ci/run")
    readme = _read("README.md")
    test_command = next(line.strip() for line in readme.splitlines() if "pytest" in line and "pip" in line)
    install, _, run = test_command.partition(" && ")
    assert install.split("pip install ", 1)[1] in ci  # the same package spec, e.g. -e '.[test]'
    ci_runs = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    readme_runs = run.split(" && ")
    assert len(ci_runs) == len(readme_runs), (ci_runs, readme_runs)
    for readme_run, ci_run in zip(readme_runs, ci_runs):  # the same runs, in order; CI may add options
        for word in readme_run.split():
            assert word in ci_run.split(), (word, ci_run)


def test_readme_lists_what_a_job_gets_of_the_environment():
    from grun.client import DEFAULT_ENV
    environment = next(p for p in _read("README.md").split("\n\n") if p.startswith("Environment: a job gets"))
    assert [name for name in DEFAULT_ENV if f"`{name}`" not in environment] == []
    assert all(f"`{name}`" in environment for name in ("GRUN_JOB_ID", "GRUN_NODE", "GRUN_CPUS", "GRUN_MEMORY"))
