"""The Python API as a data scientist uses it (QA): each function learns from its own runs only, a call killed at
a learned limit says so, running() while the job runs, names that do not collide, the function's keywords apart from
the job's, a module beside the script, messages in the API's words, bad arguments as ValueError, time='1h', and
map over several iterables. One cluster for all (learning needs a node with memory to spare)."""
from __future__ import annotations

import concurrent.futures
import functools
import os
import subprocess
import sys
import textwrap
import time

import pytest
from cluster import LocalCluster
from util import wait_for

import grun
from grun.calls import code_key, worker_spec


@pytest.fixture(scope="module")
def lc():
    with LocalCluster({"n1": {"cpus": 2, "memory": 4000}}) as c:
        yield c


def test_only_the_same_function_learns_from_its_runs(lc):
    """Calls were learned by qualname: three tiny lambdas taught a memory limit that killed a big lambda."""
    client = lc.client()
    for _ in range(3):
        assert grun.remote(lambda: 1, client=client) == 1
    big = grun.submit_call(lambda: len(b"y" * (300 << 20) + bytes(time.sleep(2) or 0)), client=client)  # (held 2 s)
    assert big.result(60) == 300 << 20
    assert "origin" not in big.job.info(), "it learned from another function's runs"


def test_a_call_killed_at_a_learned_memory_limit_names_that_limit(lc):
    """It named the reservation (19 MB), not the limit enforced (x learn_memory_factor), and said "ask for more with
    memory=" of a value never given."""
    def grow(mb: int, seconds: float) -> int:
        held = b"y" * (mb << 20)
        time.sleep(seconds)
        return len(held)

    client = lc.client()
    for _ in range(3):
        grun.remote(grow, 1, 0, client=client)
    future = grun.submit_call(grow, 600, 4, client=client)
    with pytest.raises(grun.RemoteError) as err:
        future.result(60)
    info = future.job.info()
    assert f"limit {info['memory_limit']} MB = learned {info['memory']} MB x learn_memory_factor): its memory was " \
        "learned from its last runs; give memory= what it needs" in str(err.value), err.value


def test_running_while_its_job_runs_and_cancel_kills_it(lc):
    blocker = grun.submit_call(time.sleep, 30, client=lc.client())  # (not running() before its job runs: after it)
    future = grun.submit_call(time.sleep, 30, afterok=blocker, client=lc.client())
    time.sleep(1)
    assert not future.running() and future.job.state == "waiting"
    blocker.cancel()
    future = grun.submit_call(time.sleep, 30, client=lc.client())
    wait_for(future.running, 30, what="running()")
    assert future.job.state == "running"
    assert future.cancel() and future.cancelled() and not future.running()
    assert future.job.wait(30) == 143


def test_names_of_calls_and_maps(lc):
    """Two maps named alike collided on fit-0: a map's names carry its own id. One call's name is its job's, unique
    among one's live jobs as the CLI's -j."""
    client = lc.client()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        maps = [pool.submit(grun.map, time.sleep, [1, 1], name="fit", client=client) for _ in range(2)]
        assert [m.result(60) for m in maps] == [[None, None]] * 2
    names = [job["name"] for job in client.history(4)]
    assert len(set(names)) == 4 and all(name.startswith("fit-") and name[-2:] in ("-0", "-1") for name in names), names
    first = grun.submit_call(time.sleep, 30, name="k9left", client=client)
    with pytest.raises(grun.GrunError, match="a job named 'k9left' already exists"):
        grun.submit_call(abs, 1, name="k9left", client=client)
    first.cancel()


def test_a_functions_own_keyword_named_like_a_job_option_is_refused(lc):
    def f(x, time=0):
        return time

    with pytest.raises(TypeError, match=r"time= would be the job's, and f takes it too: .*functools.partial"):
        grun.remote(f, 1, time=5, client=lc.client())
    assert grun.remote(functools.partial(f, time=3), 1, time=30, client=lc.client()) == 3

    def pick(name, /):  # (positional-only: no keyword of the call's can be its)
        return name

    assert grun.remote(pick, "x", name="posonly", client=lc.client()) == "x"


def test_code_keys_and_bad_options_before_pickling():
    """Two lambdas on one line differing in a constant shared a key (one learned the other's memory); a bad time= was
    refused only after the function and all the arguments were pickled (hundreds of MB for a big map)."""
    assert code_key(lambda: 1) != code_key(lambda: 2)
    keys = [code_key(f) for f in (lambda: alloc(1), lambda: free(1), lambda: np.zeros(1), lambda: np.ones(1))]  # noqa: F821
    assert len(set(keys)) == 4, "two lambdas on one line calling different functions shared a key"
    script = ("import grun.calls; grun.calls.map = None; "  # (code_key called grun's map: jobs on the cluster)
              "print(grun.calls.code_key(lambda: [x in {'a', 'b', 'c'} for x in 'ab']))")
    keys = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": str(seed)}, text=True,
                           capture_output=True, check=True).stdout for seed in range(4)}
    assert len(keys) == 1, f"a key not the same in every run: {keys}"

    class Unpicklable:
        def __reduce__(self):
            raise AssertionError("pickled before its options were checked")

    with pytest.raises(grun.BadArgument, match="soon"):
        grun.submit_call(abs, Unpicklable(), time="soon", client=object())


def test_a_function_of_a_module_beside_the_script(lc, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "mymod.py").write_text("def sq(x):\n    return x * x\n")
    (project / "run.py").write_text("import grun, mymod\nprint(grun.map(mymod.sq, [1, 2, 3]))\n")
    r = subprocess.run([sys.executable, "proj/run.py"], cwd=tmp_path, env=lc.env, capture_output=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, b"[1, 4, 9]\n"), r.stderr
    (project / "gone.py").write_text("def sq(x):\n    return x * x\n")
    (project / "run.py").write_text(textwrap.dedent("""
        import os, shutil, grun, gone
        os.remove(gone.__file__); shutil.rmtree(os.path.join(os.path.dirname(gone.__file__), "__pycache__"))
        grun.remote(gone.sq, 2)
    """))
    r = subprocess.run([sys.executable, "proj/run.py"], cwd=tmp_path, env=lc.env, capture_output=True, timeout=120)
    assert b"No module named 'gone' (install it for this python; a module of your own: cloudpickle." \
        b"register_pickle_by_value(mod) sends it with the call)" in r.stderr, r.stderr  # (was: numpy's too)


def test_messages_speak_the_python_apis_words(lc, capfd):
    client = lc.client()
    with pytest.raises(grun.GrunError, match=r"^afterok=: no job 999999$"):
        grun.remote(abs, 1, afterok=999999, client=client)
    with pytest.raises(grun.GrunError, match=r"\(force=True queues it anyway\)$"):
        grun.remote(abs, 1, cpus=1000, client=client)
    forced = grun.submit_call(abs, 1, cpus=1000, force=True, client=client)
    assert forced.job.state == "queued" and forced.cancel()
    with pytest.raises(grun.RemoteError, match=r"killed at its time limit \(1 s\): give time= what it needs"):
        grun.remote(time.sleep, 30, time=1, client=client)
    err = capfd.readouterr().err
    assert "give time= more" in err and "-t" not in err, err


def test_bad_arguments_are_value_errors_and_durations_and_iterables_as_elsewhere(lc):
    client = lc.client()
    for bad in ({"cpus": -1}, {"memory": "lots"}, {"time": "soon"}, {"after": [None]}):
        with pytest.raises(ValueError) as err:
            grun.remote(abs, 1, client=client, **bad)
        assert isinstance(err.value, grun.GrunError), err.value
    future = grun.submit_call(abs, -1, time="1h", client=client)
    assert future.result(60) == 1 and future.job.info()["time"] == 3600
    assert grun.map(pow, [1, 2], [3, 4], client=client) == [1, 16]
    assert grun.map(os.path.join, ["a", "b"], ["x"], client=client) == ["a/x"]  # (the shortest, as zip)


def test_worker_spec_leaves_the_callers_resources_as_they_were():
    """It popped env and rewrote after and time in the dict it was given: a caller reusing its dict of options for a
    second call sent that call no env."""
    resources = {"env": {"SEED": "1"}, "after": [7, "prep"], "time": "1h", "cpus": 2}
    spec = worker_spec("m.f", None, resources)
    assert resources == {"env": {"SEED": "1"}, "after": [7, "prep"], "time": "1h", "cpus": 2}
    assert (spec["env"]["SEED"], spec["after"], spec["time"], spec["cpus"]) == ("1", [7, "prep"], 3600, 2)
    assert worker_spec("m.f", None, resources)["env"]["SEED"] == "1", "the second call lost its env"


def test_a_function_taking_any_keyword_leaves_the_job_options_to_the_job(lc):
    """def f(x, **kw): a keyword that is a job option (time=, name=, memory=) is the job's, and not in kw (were it
    refused as a clash, no job option could be given to such a function); the function's own: functools.partial."""
    def f(x, **kw):
        return kw

    client = lc.client()
    future = grun.submit_call(f, 1, time=30, name=f"kw-{os.getpid()}", memory="200M", alpha=2, client=client)
    assert future.result(60) == {"alpha": 2}
    info = future.job.info()
    assert (info["time"], info["memory"], info["name"]) == (30, 200, f"kw-{os.getpid()}")
    assert grun.remote(functools.partial(f, time=3, name="mine"), 1, time=30, client=client) == {"time": 3, "name": "mine"}
    assert grun.map(f, [1], name="kwmap", client=client) == [{}]
