"""A lab's grun plugin, as a third party writes one (tests/test_plugins.py): every hook, each leaving a
trace in $GRUN_TESTPLUG_DIR (one JSON line per call in a file named after the hook). Raises, Sleeps and SlowProbe
are the plugins that misbehave, Strict one that enforces, loaded by `plugins:` in a config."""

import contextlib
import json
import os
import time

from grun import Reject


def _note(hook: str, **data) -> None:
    with open(os.path.join(os.environ["GRUN_TESTPLUG_DIR"], hook), "a") as f:
        f.write(json.dumps(data) + "\n")


class LabPlugin:
    budget = 1.0

    def on_submit(self, job):
        if job["user"] == "intern" or job["name"] == "forbidden":
            raise Reject("interns may not submit on Sundays")
        if job["cpus"] > 16:  # (an edit is judged by this hook too)
            raise Reject("at most 16 cpus here")
        if job["name"] == "aligner":  # a policy: more memory and cpus, a higher priority, a licence param
            job.update(memory=1234, cpus=2, priority=77, params={**job["params"], "licence": "matlab"})
        if job["name"] == "padded":  # on what the submitter asked (an edit's too)
            job["memory"] += 100
        if job["name"] == "bad-change":
            return {"cpus": -3}  # refused by the validation again: the job goes on as asked
        job["env"]["SUBMITTED_VIA"] = "labplugin"
        if job["edit"]:  # an edit (grun -e): its job's id, and what it changes, each [was, asked]
            _note("on_submit_edit", id=job["id"], edit=job["edit"])
            job["env"]["EDITED"] = ",".join(sorted(job["edit"]))

    def on_dispatch(self, job, node):
        _note("on_dispatch", id=job["id"], node=node["name"])

    def on_finish(self, job, record):
        _note("on_finish", id=job["id"], state=record["state"], exit=record["exit"], node=record.get("node"))

    def node_resources(self):
        return {"resources": {"widget": 2}, "labels": {"plugged": "yes", "licence": "matlab"}}

    def on_start(self, job, env):
        env["STARTED_BY"] = "labplugin"
        if job["env"].get("WRAP_ME"):
            job["cmd"] = ["env", "WRAPPED=yes"] + job["cmd"]


class Raises:
    """Every hook raises."""

    def __getattr__(self, hook):
        if hook.startswith("on_") or hook == "node_resources":
            def fail(*args):
                raise RuntimeError(f"{hook} is broken")
            return fail
        raise AttributeError(hook)


class Sleeps:
    """Every hook sleeps well past its budget."""
    budget = 0.3

    def _sleep(self, *args):
        time.sleep(3)
        if args and isinstance(args[-1], dict):
            args[-1]["SLEPT"] = "yes"  # too late: a late hook's changes never count

    on_submit = on_dispatch = on_finish = on_start = node_resources = _sleep


class SlowProbe:
    """A node's probe (a licence server's count) that hangs once when $GRUN_TESTPLUG_DIR/hang exists (renamed
    `hanging` as it does); its on_start is quick."""
    budget = 4.0

    def node_resources(self):
        with contextlib.suppress(FileNotFoundError):
            os.rename(hang := os.path.join(os.environ["GRUN_TESTPLUG_DIR"], "hang"), hang + "ing")
            time.sleep(8)
        return {"resources": {"lic": 2}, "labels": {"plug": "yes"}}

    def on_start(self, job, env):
        env["PROBED"] = "yes"


class Strict:
    """An admin's policy that enforces: its on_submit failing refuses the submission rather than let the job through."""
    enforce = True

    def on_submit(self, job):
        if job["name"] == "crash":
            raise RuntimeError("the quota database is down")
        if job["name"] == "bad-strict":
            return {"cpus": -1}  # not valid: refused too, not let through as asked
