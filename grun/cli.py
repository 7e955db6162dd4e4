"""The `grun` and `grun-node` commands: parse the command line, then run a job, a query, a kill or a
daemon action through the one client. Every failure the user can cause ends in one line on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from . import __version__, verbs
from .config import ConfigError, find_config_path, load_config
from .options import UsageError, help_text, load_option_file, parse
from .verbs import SHELL_CHARS, Terminated, command_text  # noqa: F401  (kept importable from here)

EXIT_USAGE = 2


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 1) -> int:
    _say(f"grun: {message}")
    return code


def _client(opts: dict, cfg):
    from .client import Client
    client = Client(cfg.master_host, cfg.master_port)
    if cfg.personal and not client.reachable():
        from .daemon import ensure_personal_cluster  # daemon code (logging, subprocess) only when needed
        ensure_personal_cluster(cfg, client, _say)
    return client


# ---- verbs: the command line's forms mapped onto the one verb table (grun/verbs.py) -----------

def _io() -> verbs.IO:
    stdin_fd = None
    try:
        if not os.isatty(0):
            os.fstat(0)
            stdin_fd = 0
    except OSError:
        stdin_fd = None
    return verbs.IO(stdin_fd=stdin_fd, cli=True)


def _verb(name: str, opts: dict, words: list[str], cfg, called: str | None = None, **defaults) -> int:
    verb = verbs.find(name)
    args = verb.parse(words, called or name)
    for key, value in defaults.items():
        args.setdefault(key, value)
    return verb.run(_client(opts, cfg), args, _io())


def run_job(opts: dict, words: list[str], cfg) -> int:
    """`grun CMD` is the verb `run`; `grun --nowait CMD` is `submit`."""
    verb = verbs.find("submit" if opts.get("nowait") else "run")
    return verb.run(_client(opts, cfg), {"opts": opts, "cmd": words}, _io())


def query(opts: dict, words: list[str], cfg) -> int:
    """`grun -q jobs|status|history|wait ID...`: the verbs of those names."""
    if not words:
        raise UsageError("-q needs a query: jobs, status, history, wait ID..., why ID")
    what, args = words[0], words[1:]
    verb = verbs.find(what)
    if verb is None or verb.name not in QUERIES:
        raise UsageError(f"unknown query {what!r}: use jobs, status, history, wait or why")
    return _verb(verb.name, opts, args, cfg, called=f"-q {verb.name}")


QUERIES = ("jobs", "status", "history", "wait", "why")


def kill(opts: dict, words: list[str], cfg) -> int:
    """`grun -k ID... [-n SIG] [--force]`, or `grun -k -j NAME`: the verb `kill`."""
    if opts.get("name"):
        job_id = _client(opts, cfg).lookup(opts["name"])
        if job_id is None:
            return _fail(f"no job named {opts['name']!r}")
        words = [*words, str(job_id)]
    return _verb("kill", opts, words, cfg, called="-k", signal=opts.get("signal", signal.SIGTERM),
                 force=bool(opts.get("force")))


def edit(opts: dict, words: list[str], cfg) -> int:
    """`grun -e hold ID...`, `grun -e resume ID...`, `grun -e KEY=VALUE[,KEY=VALUE] ID...`."""
    if not words:
        raise UsageError("-e needs hold ID..., resume ID... or KEY=VALUE[,KEY=VALUE] ID...")
    if words[0] in ("hold", "resume"):
        return _verb(words[0], opts, words[1:], cfg, called=f"-e {words[0]}")
    return _verb("edit", opts, words, cfg, called="-e")


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
    if opts.get("reload"):
        pid = d.ask_reload(cfg)
        if pid is None:
            return _fail("not running")
        _say(f"grun: asked the daemon (pid {pid}) to reload {cfg.path or 'its config'}; see {cfg.log_file}")
        return 0
    if opts.get("restart"):
        old, pid = d.restart(cfg)
        _say(f"grun: restarted services {', '.join(sorted(cfg.services))} (pid {old} -> {pid})" if old else
             f"grun: was not running; started services {', '.join(sorted(cfg.services))} (pid {pid})")
        return 0
    if opts.get("foreground"):
        return d.serve(cfg, foreground=True)
    pid = d.start_background(cfg)
    _say(f"grun: started services {', '.join(sorted(cfg.services))} (pid {pid}, log {cfg.log_file})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `grun` command. Called as the program (argv None), it ends the process itself when it can:
    see _exit_quickly."""
    code = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:
        _exit_quickly(code)
    return code


def _exit_quickly(code: int) -> None:
    """Leave without the interpreter's teardown (freeing every module and object: ~5 ms of each `grun`
    call, measured), when nothing needs it: our output is flushed, no logging handler waits to be
    flushed, no thread of ours is still working, and the interactive shell was not used."""
    if "grun.shell" in sys.modules or sys.getprofile() is not None or sys.gettrace() is not None:
        return  # a profiler or coverage writes its results as the interpreter ends
    if _atexit_count() > _ATEXIT_AT_START:
        return  # something we ran asked for work at exit
    logging = sys.modules.get("logging")
    if logging is not None and (logging.root.handlers or any(
            getattr(lg, "handlers", None) for lg in list(logging.Logger.manager.loggerDict.values()))):
        return
    threading = sys.modules.get("threading")
    if threading is not None and any(t.is_alive() and not t.daemon and t is not threading.main_thread()
                                     for t in threading.enumerate()):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # e.g. a closed pipe: the usual exit reports it as Python would
    os._exit(code if isinstance(code, int) else 1)


def _atexit_count() -> int:
    import atexit
    count = getattr(atexit, "_ncallbacks", None)  # CPython's; elsewhere, assume none were added
    return count() if count else 0


_ATEXIT_AT_START = _atexit_count()


def _main(argv: list[str]) -> int:
    try:
        opts, words = parse(argv)
        if "optfile" in opts:
            opts, command = load_option_file(opts["optfile"], opts)
            words = words or command
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
        if opts.get("edit"):
            return edit(opts, words, cfg)
        if words[:1] == ["why"] and len(words) == 2 and words[1].isdigit() and set(opts) <= {"config"}:
            return _verb("why", opts, words[1:], cfg)  # `grun -c1 why 3` runs a program named why
        if "attach" in opts:
            if words:
                raise UsageError(f"unexpected arguments after --attach: {' '.join(words)}")
            return _verb("attach", opts, [str(opts["attach"])] + (["--tail"] if opts.get("tail") else []), cfg,
                         called="--attach")
        if words[:1] == ["shell"] and set(opts) <= {"config"}:  # `grun -- shell` runs a program named shell
            from . import shell
            return shell.main(lambda: _client(opts, cfg), words[1:])
        if not words and "cmds" not in opts:
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
