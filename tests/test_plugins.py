"""Plugins (issue 12): a third-party plugin installed as its own package (tests/plugin_pkg, found by its entry
point) shows each hook against real daemons; plugins that raise, that sleep past their budget, or that cannot be
imported never take a daemon down nor lose a job; and the hooks' rules on their own (grun.plugins.Plugins)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from cluster import LocalCluster
from util import assert_one_error_line, nowait, wait_for, wait_state

from grun.plugins import Plugin, Plugins, Reject

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin_pkg")
LAB = "grun_testplug:LabPlugin"


@pytest.fixture(scope="module")
def installed():
    """`pip install` of the plugin's package into a directory of its own, put on the daemons' PYTHONPATH
    (the test environment's site-packages is shared with the other tests' daemons); and a directory where
    the plugin writes what its hooks saw."""
    root = tempfile.mkdtemp(prefix="grun-plugin-")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "GRUN_TESTPLUG_DIR")}
    try:
        shutil.copytree(PACKAGE, os.path.join(root, "src"))  # (pip builds in the source tree: not in ours)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                            "--no-build-isolation", "--target", os.path.join(root, "site"), os.path.join(root, "src")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.path.exists(os.path.join(root, "site", "grun_testplug.py"))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(root, "site"), saved["PYTHONPATH"]]))
        os.environ["GRUN_TESTPLUG_DIR"] = notes = os.path.join(root, "notes")
        os.mkdir(notes)
        yield notes
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(installed):
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000}}) as c:
        c.notes = installed
        yield c


def notes(cluster, hook: str) -> list[dict]:
    path = os.path.join(cluster.notes, hook)
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def log(cluster, name: str) -> str:
    return open(os.path.join(cluster.root, name, "grun.log")).read()


def test_each_hook_of_an_installed_plugin(cluster):
    # status --long: the plugins each daemon runs
    r = cluster.grun("-q", "status", "--long")
    assert r.returncode == 0, r.stderr
    status = r.stdout.decode()
    assert f"plugins of the master: {LAB}" in status and f"plugins of the node n1: {LAB}" in status
    # node_resources: a resource and labels only the plugin offers place the job
    r = cluster.grun("-p", "widget=2", "-p", "plugged=yes", "sh", "-c", "echo placed")
    assert (r.returncode, r.stdout) == (0, b"placed\n"), r.stderr
    # on_submit adds to env, on_start too; both reach the job
    r = cluster.grun("sh", "-c", 'echo "$SUBMITTED_VIA $STARTED_BY"')
    assert (r.returncode, r.stdout) == (0, b"labplugin labplugin\n"), r.stderr
    # on_start wraps the command (a shell line too)
    r = cluster.grun("-E", "WRAP_ME", "echo wrapped=$WRAPPED", env={**cluster.env, "WRAP_ME": "1"})
    assert (r.returncode, r.stdout) == (0, b"wrapped=yes\n"), r.stderr
    # on_submit changes a request, validated, with where it came from
    job_id = nowait(cluster, "-j", "aligner", "true")
    job = wait_state(cluster, job_id, "done")
    assert (job["memory"], job["cpus"], job["priority"], job["params"]) == (1234, 2, 77, {"licence": "matlab"})
    assert job["origin"]["memory"] == f"plugin {LAB}" and job["memory_set"]
    # ... whose invalid changes are skipped: the job goes on as asked
    job = wait_state(cluster, nowait(cluster, "-j", "bad-change", "true"), "done")
    assert job["cpus"] == 1 and "origin" not in job
    assert "on_submit's changes are not valid" in log(cluster, "master")
    # on_submit rejects: the submitter sees why, exit 1, nothing queued
    before = len(cluster.client().jobs()) + len(cluster.client().history(1000))
    r = cluster.grun("-j", "forbidden", "true")
    assert_one_error_line(r, "interns may not submit on Sundays (plugin grun_testplug:LabPlugin)")
    assert r.returncode == 1
    assert len(cluster.client().jobs()) + len(cluster.client().history(1000)) == before
    # on_dispatch and on_finish: notices with the job's node and its final state
    failed = nowait(cluster, "sh", "-c", "exit 3")
    wait_for(lambda: any(n["id"] == failed for n in notes(cluster, "on_finish")), what="on_finish")
    assert {"id": failed, "state": "failed", "exit": 3, "node": "n1"} in notes(cluster, "on_finish")
    assert {"id": failed, "node": "n1"} in notes(cluster, "on_dispatch")
    assert {n["id"] for n in notes(cluster, "on_finish")} >= {job_id, failed}


def test_an_edit_is_judged_by_on_submit_as_a_submission_is(cluster):
    first = nowait(cluster, "sleep", "30")
    job = nowait(cluster, "-j", "aligner", "--after", str(first), "true")
    r = cluster.grun("-e", "cpus=1,memory=100", str(job))  # (said: QA found a plugin's override accepted in silence)
    assert r.returncode == 0 and r.stderr.decode() == (f"grun: warning: job {job}: cpus=1 set to 2 by plugin {LAB}\n"
                                                       f"grun: warning: job {job}: memory=100 set to 1234 by plugin {LAB}\n")
    got = cluster.client().job(job)
    assert (got["cpus"], got["memory"], got["priority"]) == (2, 1234, 77) and got["origin"]["cpus"] == f"plugin {LAB}"
    r = cluster.grun("-e", "cpus=20,force=yes", str(job))
    assert_one_error_line(r, "at most 16 cpus here (plugin grun_testplug:LabPlugin)")
    assert r.returncode == 1 and cluster.client().job(job)["cpus"] == 2
    padded = nowait(cluster, "-j", "padded", "-m", "2000", "--after", str(first), "true")
    assert cluster.grun("-e", "cpus=2", str(padded)).returncode == 0  # from the 2000 asked, not the default
    assert (cluster.client().job(padded)["memory"], cluster.client().job(padded)["cpus"]) == (2100, 2)
    assert cluster.grun("-k", str(first), str(job), str(padded)).returncode == 0


def test_on_submit_tells_an_edit_from_a_submission_and_the_env_it_sets_then_is_kept(cluster, tmp_path):
    """QA: on_submit could not tell an edit from a submission, and the env it set at an edit was dropped: it gets the
    job's `id` and `edit` (each field changed: [was, asked]; None at a submission), and the job runs with that env."""
    r = cluster.grun("--nowait", "--hold", "sh", "-c", 'echo "$EDITED" > edited.txt', cwd=tmp_path)
    job = int(r.stdout.split()[-1])
    before = cluster.client().job(job)
    assert not any(n["id"] == job for n in notes(cluster, "on_submit_edit")), "a submission: edit is None"
    assert cluster.grun("-e", "memory=300,priority=5,p.widget=1", str(job)).returncode == 0
    assert [n for n in notes(cluster, "on_submit_edit") if n["id"] == job] == [{"id": job, "edit": {
        "memory": [before["memory"], 300], "priority": [before["priority"], 5], "params.widget": [None, 1]}}]
    assert cluster.grun("resume", str(job)).returncode == 0
    wait_state(cluster, job, "done")
    assert (tmp_path / "edited.txt").read_text() == "memory,params.widget,priority\n"


def test_plugins_that_raise_or_sleep_lose_nothing(installed):
    bad = {"plugins": ["grun_testplug:Raises", "grun_testplug:Sleeps"]}
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000, **bad}}, master_extra=bad) as c:
        assert wait_for(lambda: "node_resources ran past its budget" in log(c, "n1"), what="the node's log")
        started = time.monotonic()
        ids = [nowait(c, "sh", "-c", f'echo "{i} $SLEPT"') for i in range(3)]
        took = time.monotonic() - started
        for job_id in ids:
            assert wait_state(c, job_id, "done", timeout=30)["exit"] == 0
        outputs = [c.grun("--attach", str(i)).stdout for i in ids]
        assert outputs == [f"{i} \n".encode() for i in range(3)]  # a late hook's changes never count
        # the first submit waits out Sleeps' budget (0.3 s); while it still sleeps, its next calls are skipped
        assert took < 3 * 1.5, took
        master = log(c, "master")
        assert "plugin grun_testplug:Raises: on_submit failed (RuntimeError: on_submit is broken)" in master
        assert "plugin grun_testplug:Sleeps: on_submit ran past its budget of 0.3 s" in master
        assert "on_submit not called while its late on_submit runs; skipped" in master
        assert "on_start failed" in log(c, "n1")
        r = c.grun("-q", "status", "--long")
        assert "grun_testplug:Raises, grun_testplug:Sleeps" in r.stdout.decode()


def test_a_plugin_that_cannot_be_imported(installed, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(yaml.safe_dump({"master": "127.0.0.1:1", "bind": "127.0.0.1", "spool": str(tmp_path / "spool"),
                                    "plugins": ["nosuch_lab_module:Quota"]}))
    for argv in (["grun.cli", "-C", str(conf), "-d"], ["grun.daemon", str(conf)]):
        r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert_one_error_line(r, "plugin 'nosuch_lab_module:Quota'", "No module named 'nosuch_lab_module'")
    assert not os.path.exists(tmp_path / "spool" / "grun.pid")


def test_reload_is_checked_by_the_daemon_which_never_imports_a_plugin_again(cluster):
    """`grun -d -r` says the daemon's verdict, and exits 1 when it kept the running config. The client no longer
    checks the plugins itself (one only the daemon's PYTHONPATH finds refused the reload: QA), and a class added to
    a module the daemon imported is refused with why: a reload does not import plugin code again (QA)."""
    conf, site = cluster.configs["master"], os.path.join(os.path.dirname(cluster.notes), "site")
    good, module = open(conf).read(), os.path.join(site, "grun_reloadlab.py")
    bare = {**cluster.env, "PYTHONPATH": os.pathsep.join(p for p in os.environ["PYTHONPATH"].split(os.pathsep)
                                                        if p != site)}  # (this client imports no plugin)

    def reload(plugins: str, env=None):
        with open(conf, "w") as f:
            f.write(good + f"plugins: [{plugins}]\n")
        return cluster.grun("-C", conf, "-d", "-r", env=env or cluster.env)
    try:
        with open(module, "w") as f:
            f.write("class A:\n    def on_submit(self, job):\n        job['env']['LAB'] = 'a'\n")
        r = reload("grun_reloadlab:A", env=bare)
        assert r.returncode == 0 and re.fullmatch(rb"grun: the daemon \(pid \d+\) reloaded \S+: applied plugins: "
                                                  rb"\['grun_reloadlab:A'\]\n", r.stderr), r.stderr
        assert cluster.grun("sh", "-c", 'echo "$LAB $SUBMITTED_VIA"').stdout == b"a labplugin\n"
        with open(module, "a") as f:
            f.write("class B:\n    pass\n")
        r = reload("grun_reloadlab:A, grun_reloadlab:B")
        assert_one_error_line(r, "the daemon (pid", "refused the reload: plugin 'grun_reloadlab:B'",
                              "AttributeError: module 'grun_reloadlab' has no attribute 'B'",
                              f"({module} changed since the daemon imported it: a reload does not import plugin code "
                              "again, grun -d -R does); keeping the running config")
        assert_one_error_line(reload("nosuch_lab_module:Quota", env=bare),
                              "plugin 'nosuch_lab_module:Quota'", "No module named 'nosuch_lab_module'", "keeping the")
        assert LAB in cluster.client().status(True)["plugins"]["master"]
        assert cluster.grun("sh", "-c", 'echo "$LAB $SUBMITTED_VIA"').stdout == b"a labplugin\n"
        r = reload("grun_reloadlab:A")  # its plugins load, its changed code does not run: said
        assert r.returncode == 0 and f"grun: plugin module {module} changed since the daemon imported " \
            "it: a reload does not import plugin code again, grun -d -R does; its old code runs until then\n" \
            in r.stderr.decode() and b"grun: the daemon (pid " in r.stderr, r.stderr
    finally:
        with open(conf, "w") as f:
            f.write(good)
        os.unlink(module)
        assert cluster.grun("-C", conf, "-d", "-r").returncode == 0


def test_a_late_node_probe_keeps_its_offer_and_delays_no_other_hook(installed):
    """A node_resources late at a reload lost its plugin's resources and labels until the next good reload, and a job
    started meanwhile waited behind the late call, its on_start called late (QA): the last answer stands, on_start runs
    at once beside it. And an enforcing plugin's failed on_submit refuses the submission rather than let it through."""
    node = {"cpus": 2, "memory": 4000, "plugins": ["grun_testplug:SlowProbe"]}
    with LocalCluster({"n1": node}, master_extra={"plugins": ["grun_testplug:Strict"]}) as c:
        def n1() -> dict:
            return next(n for n in c.client().nodes() if n["name"] == "n1")
        assert (n1()["resources"]["lic"][1], n1()["labels"]["plug"]) == (2, "yes"), n1()
        open(os.path.join(installed, "hang"), "w").close()
        try:
            c.write_config("n1", {"services": "exec", "count_outside_load": False, **node, "cpus": 3})
            reload = c.popen("-C", c.configs["n1"], "-d", "-r")
            wait_for(lambda: os.path.exists(os.path.join(installed, "hanging")), what="the probe to hang")
            r = c.grun("-p", "lic=1", "printenv", "PROBED")
            assert (r.returncode, r.stdout) == (0, b"yes\n"), r.stderr  # (it waited behind it, and was skipped)
            err = reload.communicate(timeout=30)[1].decode()
        finally:
            os.unlink(os.path.join(installed, "hanging"))
        assert reload.returncode == 0 and "grun: plugin grun_testplug:SlowProbe: node_resources ran past its budget " \
            "of 4 s; skipped, keeping its last resources and labels\n" in err, err
        wait_for(lambda: n1()["cpus"] == 3, what="the node to register again")
        assert (n1()["resources"]["lic"][1], n1()["labels"]["plug"]) == (2, "yes"), n1()
        assert c.grun("-p", "lic=2", "-p", "plug=yes", "true").returncode == 0
        assert_one_error_line(c.grun("-j", "crash", "true"), "plugin grun_testplug:Strict: on_submit failed "
                              "(RuntimeError: the quota database is down); the submission refused (it enforces)")
        assert_one_error_line(c.grun("-j", "bad-strict", "true"), "plugin grun_testplug:Strict: on_submit's changes "
                              "are not valid (expected cpus: a number >= 0, got -1); the submission refused (it enforces)")


# ---- the hooks' rules, without daemons ------------------------------------------------------------

class Policy:
    budget = 0.2

    def on_submit(self, job):
        if job["name"] == "no":
            raise Reject("not today")
        if job["name"] == "slow":
            time.sleep(1)
        job["memory"] = 2048
        return {"params": {"gpu": 1}}


def _requests(*names):
    from grun.core.jobs import validate_spec
    return [validate_spec({"cmd": ["true"], "cwd": "/", "name": n}) for n in names]


def test_on_submit_changes_are_validated_and_recorded():
    plugins = Plugins([Plugin("lab:Policy", Policy())])
    requests = _requests("a")
    plugins.submit(requests)
    assert (requests[0]["memory"], requests[0]["params"], requests[0]["memory_set"]) == (2048, {"gpu": 1}, True)
    assert requests[0]["origin"] == {"memory": "plugin lab:Policy", "params": "plugin lab:Policy"}
    with pytest.raises(ValueError, match=r"not today \(plugin lab:Policy\)"):
        plugins.submit(_requests("a", "no"))


def test_a_late_hook_is_skipped_and_its_plugin_skipped_while_it_runs(caplog):
    plugins = Plugins([Plugin("lab:Policy", Policy())])
    requests = _requests("slow", "a", "a", "a")
    started = time.monotonic()
    plugins.submit(requests)
    assert time.monotonic() - started < 0.6  # one budget, not one per job
    assert [r["memory"] for r in requests] == [100] * 4 and "origin" not in requests[1]
    assert [r.getMessage() for r in caplog.records] == [  # the skips said once, not once per job
        "plugin lab:Policy: on_submit ran past its budget of 0.2 s; skipped",
        "plugin lab:Policy: on_submit not called while its late on_submit runs; skipped"]
    time.sleep(1)
    plugins.submit(requests[1:])  # done sleeping: called again
    assert requests[1]["memory"] == 2048


def test_a_late_hook_delays_no_other_and_a_skipped_node_resources_keeps_its_last_answer(caplog):
    import threading

    class Probe:
        budget, answer = 0.3, None

        def node_resources(self):
            if self.answer is None:
                raise RuntimeError("licence server down")
            time.sleep(self.answer.get("sleep", 0))
            return self.answer

        def on_start(self, job, env):
            env["PROBED"] = "yes"
    probe, offered = Probe(), {"resources": {"lic": 2}, "labels": {"plug": "yes"}}
    plugins, probe.answer = Plugins([Plugin("lab:Probe", probe)]), offered
    assert plugins.node_resources() == offered
    probe.answer = None
    assert plugins.node_resources() == offered  # failed: its last answer stands
    plugins.replace([Plugin("lab:Probe", probe)])  # (a reload: a new instance, the same name)
    probe.answer = {"sleep": 1.0, "resources": {"lic": 9}}
    slow = threading.Thread(target=lambda: offers.append(plugins.node_resources()))
    offers, job = [], {"cmd": ["true"], "env": {}}
    slow.start()
    time.sleep(0.1)
    started = time.monotonic()
    plugins.start(job, "/bin/sh")  # while node_resources runs within its budget: beside it, at once
    assert (job["env"], time.monotonic() - started < 0.2) == ({"PROBED": "yes"}, True)
    slow.join()
    assert offers == [offered]  # late: its last answer stands
    started, job = time.monotonic(), {"cmd": ["true"], "env": {}}
    plugins.start(job, "/bin/sh")  # while the late one still runs: skipped at once
    assert (job["env"], time.monotonic() - started < 0.2) == ({}, True)
    assert [r.getMessage() for r in caplog.records] == [
        ("plugin lab:Probe: node_resources failed (RuntimeError: licence server down); skipped, keeping its last "
         "resources and labels"),
        "plugin lab:Probe: node_resources ran past its budget of 0.3 s; skipped, keeping its last resources and labels",
        "plugin lab:Probe: on_start not called while its late node_resources runs; skipped"]


def test_an_enforcing_plugin_refuses_what_it_could_not_check():
    class Quota(Policy):
        enforce = True

        def on_submit(self, job):
            if job["name"] == "broken":
                raise RuntimeError("quota db down")
            return {"cpus": -1} if job["name"] == "bad" else super().on_submit(job)
    plugins = Plugins([Plugin("lab:Quota", Quota())])
    with pytest.raises(ValueError, match=r"^plugin lab:Quota: on_submit failed \(RuntimeError: quota db down\); the "
                       r"submission refused \(it enforces\)$"):
        plugins.submit(_requests("a", "broken"))
    with pytest.raises(ValueError, match=r"on_submit ran past its budget of 0.2 s; the submission refused"):
        plugins.submit(_requests("slow"))
    with pytest.raises(ValueError, match=r"on_submit not called while its late on_submit runs; the submission refused"):
        plugins.submit(_requests("a"))
    time.sleep(1)
    plugins.submit(requests := _requests("a"))  # done sleeping: called again
    assert requests[0]["memory"] == 2048
    with pytest.raises(ValueError, match=r"^plugin lab:Quota: on_submit's changes are not valid \(expected cpus: a "
                       r"number >= 0, got -1\); the submission refused \(it enforces\)$"):  # (QA: it let the job through)
        plugins.submit(_requests("bad"))
    Quota.enforce = False  # one that does not enforce: skipped, the job goes on as asked
    plugins.replace([Plugin("lab:Quota", Quota())])
    plugins.submit(requests := _requests("bad"))
    assert requests[0]["cpus"] == 1 and "origin" not in requests[0]


def test_no_plugins_cost_nothing_and_on_start_wraps_argv():
    empty = Plugins()
    job = {"cmd": ["echo hi"], "shell": True, "env": {}}
    empty.start(job, "/bin/sh")
    assert job == {"cmd": ["echo hi"], "shell": True, "env": {}}

    class Wrapper:
        def on_start(self, job, env):
            env["X"] = 1
            job["cmd"] = ["nice"] + job["cmd"]
    Plugins([Plugin("w:Wrapper", Wrapper())]).start(job, "/bin/sh")
    assert job == {"cmd": ["nice", "/bin/sh", "-c", "echo hi"], "shell": False, "env": {"X": "1"}}


def test_the_readme_plugin_works_as_written():
    readme = open(os.path.join(os.path.dirname(PACKAGE), "..", "README.md")).read()
    code = readme[readme.index("### Plugins"):].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own example, as written)
    plugins = Plugins([Plugin("mylab.grun_policy:Policy", scope["Policy"]())])
    from grun.core.jobs import validate_spec
    star = [validate_spec({"cmd": ["/opt/STAR", "--runThreadN", "8"], "cwd": "/", "cpus": 8, "user": "ana"})]
    plugins.submit(star)
    assert star[0]["memory"] == 32000
    with pytest.raises(ValueError, match="guests may use at most 4 cpus per job"):
        plugins.submit([validate_spec({"cmd": ["true"], "cwd": "/", "cpus": 8, "user": "guest"})])
    job = {"id": 1, "cmd": ["true"], "cpus": 2.5, "env": {}}
    plugins.start(job, "/bin/sh")
    assert job["env"] == {"OMP_NUM_THREADS": "2"}


def test_notices_never_wait_and_a_stuck_plugin_holds_a_bounded_number(monkeypatch, caplog):
    import threading

    import grun.plugins
    monkeypatch.setattr(grun.plugins, "MAX_NOTICES", 3)
    gate, entered, seen = threading.Event(), threading.Event(), []

    class Mailer:
        def on_finish(self, job, record):
            entered.set()
            gate.wait(10)
            seen.append(job["id"])
    plugins = Plugins([Plugin("lab:Mailer", Mailer())])
    started = time.monotonic()
    plugins.finished([{"id": 1, "state": "done", "env": {}}])
    assert entered.wait(5)
    plugins.finished([{"id": i, "state": "done", "env": {}} for i in range(2, 11)])
    assert time.monotonic() - started < 0.5
    gate.set()
    wait_for(lambda: len(seen) >= 4, 5, what="the notices")
    time.sleep(0.2)
    assert seen == [1, 2, 3, 4]  # the one running, and 3 waiting; the others dropped, and said once
    assert [r.getMessage() for r in caplog.records] == [
        "plugin lab:Mailer: on_finish dropped, and its next notices while 3 wait"]
