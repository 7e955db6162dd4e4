"""The `grun` client's fast path: what a `grun CMD` process imports, the config fast path that reads
a plain config file without PyYAML, and the quick exit (the wire protocol: tests/test_wire.py).

Every module the client imports is paid by every `grun` call (bench/README.md, scenario 2), so these
tests fail when a heavy import creeps back onto that path.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import yaml

import grun
from grun.config import _read_simple, _read_yaml, load_config

# Not needed to submit or run a job: daemons' defaults (psutil), YAML (only for unusual config files),
# Pyro5 and what it drags in (ssl, logging, sqlite3, serpent, inspect), dataclasses/inspect,
# fractions/decimal, secrets/hmac, platform.
HEAVY = {"Pyro5", "psutil", "yaml", "ssl", "logging", "sqlite3", "serpent", "inspect", "dataclasses", "fractions",
         "decimal", "secrets", "hmac", "platform", "cloudpickle", "prompt_toolkit", "subprocess", "getpass",
         "grun.daemon"}  # only to start a personal cluster that is not up

PROBE = """
import sys
from grun import cli
code = cli.main(sys.argv[1:])
sys.stdout.flush()
heavy = sorted(({m.split('.')[0] for m in sys.modules} | set(sys.modules)) & set(%r))
print('HEAVY=' + ' '.join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(cluster, *args: str, env: dict | None = None, heavy=HEAVY) -> tuple[subprocess.CompletedProcess, list[str]]:
    # -S: no site, whose .pth files may import much themselves (here: contextlib, threading); our path instead
    env = dict(env or cluster.env, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-S", "-c", PROBE % sorted(heavy), *args], env=env,
                       capture_output=True, text=True, timeout=60)
    line = [x for x in r.stderr.splitlines() if x.startswith("HEAVY=")]
    assert line, r.stderr
    return r, line[-1][6:].split()


@pytest.mark.parametrize("args", [("--nowait", "true"), ("true",), ("sh", "-c", "echo hi; exit 3")])
def test_submit_and_run_import_nothing_heavy(cluster, args):
    r, heavy = _probe(cluster, *args)
    assert heavy == [], f"`grun {' '.join(args)}` imported {heavy}"
    if args[0] == "--nowait":  # (a job that streams needs them; one queued needs none: ~4 ms of each loop's call)
        r, light = _probe(cluster, *args, heavy={"socket", "selectors", "contextlib", "json", "threading", "re", "enum"})
        assert light == [], f"`grun {' '.join(args)}` imported {light}"
        assert r.returncode == 0 and r.stdout.startswith("Job_ID: ")
        cluster.client().wait([int(r.stdout.split()[1])])
    elif args[0] == "sh":
        assert (r.returncode, r.stdout) == (3, "hi\n")
    else:
        assert r.returncode == 0


@pytest.mark.skipif(os.path.exists("/etc/grun.conf"), reason="a system config: no personal mode here")
def test_personal_mode_with_its_cluster_up_imports_no_daemon_code(cluster, tmp_path):
    """No config file: personal mode. Its cluster answers (here: GRUN_MASTER names a running one), so
    the daemon module (logging, subprocess) is not imported, and nothing else heavy either."""
    env = {k: v for k, v in cluster.env.items() if k != "GRUN_CONF"}
    env.update(GRUN_MASTER=f"127.0.0.1:{cluster.port}", GRUN_SPOOL=str(tmp_path))
    r, heavy = _probe(cluster, "--nowait", "true", env=env)
    assert r.returncode == 0, r.stderr
    assert heavy == [], heavy
    cluster.client().wait([int(r.stdout.split()[1])])


def test_a_config_file_with_nesting_still_reads_and_still_names_bad_keys(tmp_path):
    """A config the fast path cannot read goes to PyYAML, with the same values and errors."""
    path = tmp_path / "grun.conf"
    path.write_text("master: 127.0.0.1:7000\nulimit:\n  nofile: 4096\nlabels: {os: debian12}\n")
    cfg = load_config(str(path))
    assert (cfg.master_port, cfg.ulimit, cfg.labels) == (7000, {"nofile": 4096}, {"os": "debian12"})
    path.write_text("master: 127.0.0.1:7000\n# comment\nspool: /tmp/x\ncpus: lots\n")
    with pytest.raises(Exception) as err:
        load_config(str(path))
    assert str(err.value) == f"{path}:4: key 'cpus': expected a number of CPUs like 4 or 0.5, got 'lots'"
    path.write_text("master: 127.0.0.1:7000\nspool: /tmp/x\nspool: /tmp/y\n")
    with pytest.raises(Exception, match=r":3: key 'spool': given twice \(first on line 2\)"):
        load_config(str(path))


VALUES = ["", "~", "null", "NULL", "yes", "No", "on", "OFF", "y", "true", "0", "007", "08", "0x1f", "0b11", "1_000",
          "10:30", "1.5", "1.", ".5", "1e5", "1.5e+3", "1.5e3", "-1", "+1", "-", "- x", "127.0.0.1", "10.0", "00.5",
          "2001-12-14", "2001-12-14 21:59:43.10 -5", "64M", "1h30m", "4G", "/var/spool/grun", "./x", "queue exec",
          "queue,exec", "a#b", "a #b", "'q'", "'a''b'", "''", '"x"', '"a\\nb"', "[a, b]", "{a: 1}", ".inf", "-.inf",
          ".nan", "12h", "unlimited", "Yes please", "a: b", "&a x", "*a", "!x", "|", ">", "%x", "@x", "x  y", "x\ty",
          "=", "<<", "x:", "x :y", "debug   # a comment", "'a' # c", "'a' b", "2d", "0x1G", "1.2.3", "1_2", "0b2",
          "1.5.", ".", "..", "1d2", "10.0.0.1 x", ".iNf", ".Nan", "0o7", "1e-5", "1.0e-5", "0.5d"]


def _same_as_yaml(text: str) -> None:
    got = _read_simple(text)
    if got is None:
        return  # left to PyYAML
    try:
        ref = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AssertionError(f"fast path read {text!r} as {got[0]}, PyYAML refuses it: {exc}") from None
    raw, lines = got
    assert raw == ref and [type(v) for v in raw.values()] == [type(v) for v in ref.values()], (text, raw, ref)
    assert set(lines) == set(raw)


def test_fast_config_reader_agrees_with_pyyaml(tmp_path):
    for value in VALUES:
        for key in ("cpus", "yes", "a1", "_x", "null"):
            _same_as_yaml(f"{key}: {value}\n" if value else f"{key}:\n")
    assert _read_simple("# x\n\nmaster: '127.0.0.1:5184'\ncpus: 4\nheartbeat: 1.5\nservices: exec\n") == (
        {"master": "127.0.0.1:5184", "cpus": 4, "heartbeat": 1.5, "services": "exec"},
        {"master": 3, "cpus": 4, "heartbeat": 5, "services": 6})
    for value in ["127.0.0.1:5184", "[::1]:6000", "10:30", "6000", "yes", "~", "h:1 # c", "h:1#c", "-x", "%x", "'h:1'",
                  "{a: 1}", "[x", "|x", "a b"]:  # master's value as PyYAML reads it (quoted: config._MASTER_LINE)
        text = f"master: {value}\n"
        fast, path = _read_simple(text), tmp_path / "grun.conf"
        path.write_text(text + "x: [1]\n")  # a line only PyYAML reads
        assert fast is None or fast[0]["master"] == _read_yaml(str(path))[0]["master"], value
        assert fast is not None or value in ("h:1#c", "{a: 1}", "|x"), value
    rnd = random.Random(5)
    alphabet = "ab01.-_/ :#'\"xeE+9~\t\n"
    for _ in range(20000):
        lines = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 9))) for _ in range(rnd.randint(1, 3))]
        _same_as_yaml("\n".join(f"k{i}: {v}" if rnd.random() < 0.9 else v for i, v in enumerate(lines)) + "\n")
    path = tmp_path / "random.conf"
    for _ in range(3000):  # master's values: as PyYAML's path reads them (quoted by config._MASTER_LINE)
        text = "master: " + "".join(rnd.choice(alphabet.replace("\n", "") + "[]{}|>&*!%@,\r\x0b\xa0") for _ in range(rnd.randint(0, 9)))
        if (fast := _read_simple(text + "\n")) is not None:
            path.write_text(text + "\nx: [1]\n")  # a line only PyYAML reads
            try:
                slow = _read_yaml(str(path))[0]
            except Exception:  # (PyYAML refuses it: then the fast path must not have taken it)
                raise AssertionError(f"fast path read {text!r}, PyYAML's path refuses it") from None
            assert fast[0]["master"] == slow["master"], text


def test_when_grun_returns_the_master_has_the_jobs_end(cluster):
    """`grun CMD; grun -q history` must show the job finished: the client leaves fast (no teardown,
    release sent oneway), but not before the master has the job's end."""
    for _ in range(5):
        r = cluster.grun("-v", "sh", "-c", "exit 3")
        assert r.returncode == 3, r.stderr
        job_id = int(r.stderr.decode().split("grun: job ")[1].split()[0])
        record = cluster.client().job(job_id)
        assert (record["state"], record["exit"]) == ("failed", 3), record


def test_a_profiled_grun_still_ends_normally(tmp_path):
    """The quick exit skips the interpreter's teardown, but never a profiler's (bench/profile.py) or an
    atexit handler's work."""
    prof = tmp_path / "grun.prof"
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "grun.cli", "--version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("grun "), r.stderr
    assert prof.stat().st_size > 0
    code = "import atexit, sys; from grun import cli; atexit.register(print, 'atexit ran'); sys.argv[1:] = ['-V']; cli.main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == [f"grun {grun.__version__}", "atexit ran"], r.stdout + r.stderr


def test_a_mount_point_with_a_space_costs_no_import_of_re():
    """The client reads mountinfo (cwd_fs) on every call; a mount named with a space (\\040) must not pull in re."""
    probe = ("import sys; from grun import mounts; "
             "m = mounts.parse(r'62 27 0:56 /a\\134b /m\\040nt rw shared:4 - nfs srv:/e\\011x rw'); "
             "print('re' in sys.modules, m)")
    r = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert r.stdout.strip() == ("False [{'type': 'nfs', 'source': 'srv:/e\\tx', 'root': '/m nt', 'sub': '/a\\\\b'}]"), r
