"""The `grun` and `grun-node` commands: parse the command line, then run a job, a query, a kill or a
daemon action through the one client. Every failure the user can cause ends in one line on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import signal
import sys
import time

from . import __version__
from .config import ConfigError, find_config_path, load_config
from .options import UsageError, help_text, parse

SHELL_CHARS = set(" \t\n|&;<>()$`\\\"'*?[]#~=%{}")
EXIT_USAGE = 2


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 1) -> int:
    _say(f"grun: {message}")
    return code


def command_text(job: dict) -> str:
    cmd = job.get("cmd") or []
    return cmd[0] if job.get("shell") else shlex.join(cmd)


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    lines = []
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)


def _fmt_secs(secs) -> str:
    if secs is None:
        return "-"
    secs = float(secs)
    if secs < 60:
        return f"{secs:.2f}s"
    minutes, s = divmod(int(secs), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


def _exit_text(job: dict) -> str:
    if job.get("signal"):
        return f"sig{job['signal']}"
    return str(job.get("exit", job.get("exit_code", "-")))


def _client(opts: dict, cfg):
    from .client import Client
    from .daemon import ensure_personal_cluster
    client = Client(cfg.master_host, cfg.master_port)
    if cfg.personal:
        ensure_personal_cluster(cfg, client, _say)
    return client


# ---- verbs -----------------------------------------------------------------------------------

def run_job(opts: dict, words: list[str], cfg) -> int:
    from .client import default_env
    shell = len(words) == 1 and any(c in SHELL_CHARS for c in words[0])
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    spec = {"cmd": words, "shell": shell, "cwd": cwd, "env": default_env(opts.get("env")),
            "user": getpass.getuser(), "uid": os.getuid(), "gid": os.getgid()}
    for key in ("cpus", "memory", "priority"):
        if key in opts:
            spec[key] = opts[key]
    if "hosts" in opts:
        spec["host"] = opts["hosts"]
    if "priority" not in opts and os.environ.get("GRUN_PRIORITY", "").lstrip("-").isdigit():
        spec["priority"] = int(os.environ["GRUN_PRIORITY"])
    client = _client(opts, cfg)
    if opts.get("nowait"):
        job_id = client.submit(spec)
        print(f"Job_ID: {job_id}", flush=True)
        return 0
    stdin_fd = None
    try:
        if not os.isatty(0):
            os.fstat(0)
            stdin_fd = 0
    except OSError:
        stdin_fd = None
    state = {"id": None}

    def on_submit(job_id):
        state["id"] = job_id
        if opts.get("verbose"):
            _say(f"grun: job {job_id} queued")

    def on_start(job):
        if opts.get("verbose"):
            _say(f"grun: job {job['id']} {job['state']} on {job.get('node') or '-'}")

    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background by a script
    try:
        return client.run(spec, stdin_fd=stdin_fd, on_submit=on_submit, on_start=on_start)
    except KeyboardInterrupt:
        return _interrupted(client, state["id"], signal.SIGINT, 130)
    except Terminated:
        return _interrupted(client, state["id"], signal.SIGTERM, 143)
    except BrokenPipeError:
        return _interrupted(client, state["id"], signal.SIGPIPE, 141, quiet=True)


def _raise_terminated(*_):
    raise Terminated()


def _interrupted(client, job_id, sig, code, quiet=False) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if job_id is not None:
        from .client import Client, GrunError
        try:
            Client(client.host, client.port, connect_wait=5.0).kill([job_id], sig)
        except GrunError as exc:
            _say(f"grun: could not kill job {job_id}: {exc}")
    if not quiet:
        _say(f"grun: job {job_id} killed" if job_id else "grun: interrupted")
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return code


def query(opts: dict, words: list[str], cfg) -> int:
    if not words:
        raise UsageError("-q needs a query: jobs, status, history, wait ID...")
    what, args = words[0], words[1:]
    if what in ("jobs", "j"):
        jobs = _client(opts, cfg).jobs()
        rows = [[j["id"], j.get("user", "-"), j["state"], j.get("node") or "-", f"{j['cpus']:g}",
                 j["memory"], j.get("cwd", "-"), command_text(j)] for j in jobs]
        print(_table(rows, ["ID", "USER", "STATE", "NODE", "CPUS", "MEM", "CWD", "COMMAND"]))
        return 0
    if what in ("status", "nodes", "s"):
        nodes = _client(opts, cfg).nodes()
        rows = [[n["name"], "up" if n["up"] else "down", f"{n['free_cpus']:g}/{n['cpus']:g}",
                 f"{n['free_memory']}/{n['memory']}", n["running"]] for n in nodes]
        print(_table(rows, ["NODE", "STATE", "CPUS(free/total)", "MEM_MB(free/total)", "JOBS"]))
        return 0
    if what in ("history", "hist", "h"):
        hopts, rest = _history_options(args)
        jobs = _client(opts, cfg).history(hopts.get("count", 20), hopts.get("user"))
        if hopts.get("json"):
            print(json.dumps(jobs, indent=1, sort_keys=True))
            return 0
        rows = [[j["id"], j.get("user", "-"), _exit_text(j), j.get("node") or "-",
                 _fmt_secs((j.get("usage") or {}).get("wall")), command_text(j)] for j in reversed(jobs)]
        print(_table(rows, ["ID", "USER", "EXIT", "NODE", "WALL", "COMMAND"]))
        return 0
    if what == "wait":
        ids = _job_ids(args, "-q wait")
        done = _client(opts, cfg).wait(ids)
        codes = [int(done[i].get("exit", 1)) for i in ids]
        return next((c for c in codes if c), 0)
    raise UsageError(f"unknown query {what!r}: use jobs, status, history or wait")


def _history_options(args: list[str]) -> tuple[dict, list[str]]:
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "--count") and i + 1 < len(args) and args[i + 1].isdigit():
            out["count"] = int(args[i + 1])
            i += 1
        elif a == "--user" and i + 1 < len(args):
            out["user"] = args[i + 1]
            i += 1
        elif a == "--json":
            out["json"] = True
        else:
            raise UsageError(f"unknown history option {a!r}")
        i += 1
    return out, []


def _job_ids(words: list[str], what: str) -> list[int]:
    if not words:
        raise UsageError(f"{what} needs job ids")
    ids = []
    for w in words:
        if not w.isdigit() or int(w) == 0:
            raise UsageError(f"bad job id {w!r}")
        ids.append(int(w))
    return ids


def kill(opts: dict, words: list[str], cfg) -> int:
    sig = opts.get("signal", signal.SIGTERM)
    ids_words = []
    i = 0
    while i < len(words):
        if words[i] in ("-n", "--signal") and i + 1 < len(words):
            from .options import _signal
            try:
                sig = _signal(words[i + 1])
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            i += 2
            continue
        ids_words.append(words[i])
        i += 1
    found = _client(opts, cfg).kill(_job_ids(ids_words, "-k"), sig)
    missing = [i for i, ok in found.items() if not ok]
    for job_id in missing:
        _say(f"grun: no such job {job_id}")
    return 1 if missing else 0


def daemon(opts: dict, words: list[str], cfg) -> int:
    from . import daemon as d
    if words:
        raise UsageError(f"unexpected arguments after -d: {' '.join(words)}")
    if opts.get("kill"):
        if d.stop(cfg):
            _say("grun: stopped")
            return 0
        _say("grun: not running")
        return 0
    if opts.get("foreground"):
        return d.serve(cfg, foreground=True)
    pid = d.start_background(cfg)
    _say(f"grun: started services {', '.join(sorted(cfg.services))} (pid {pid}, log {cfg.log_file})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, words = parse(argv)
        if opts.get("help"):
            print(help_text())
            return 0
        if opts.get("version"):
            print(f"grun {__version__}")
            return 0
        cfg = load_config(find_config_path(opts.get("config")))
        if opts.get("daemon"):
            return daemon(opts, words, cfg)
        if opts.get("query"):
            return query(opts, words, cfg)
        if opts.get("kill"):
            return kill(opts, words, cfg)
        if not words:
            raise UsageError("no command given (see grun --help)")
        return run_job(opts, words, cfg)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .client import GrunError
        from .daemon import DaemonError
        if isinstance(exc, (GrunError, DaemonError, OSError)):
            return _fail(str(exc))
        raise


def node_main(argv: list[str] | None = None) -> int:
    """`grun-node [-C FILE]`: the exec service in the foreground, for systemd."""
    argv = sys.argv[1:] if argv is None else argv
    from .daemon import DaemonError, serve
    try:
        opts, words = parse(argv)
        if opts.get("help"):
            print("usage: grun-node [-C FILE]   run the exec service in the foreground")
            return 0
        if words:
            raise UsageError(f"unexpected arguments: {' '.join(words)}")
        cfg = load_config(find_config_path(opts.get("config")))
        return serve(cfg, services=frozenset({"exec"}), foreground=True)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (ConfigError, DaemonError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
