"""The `grun` and `grun-node` commands: read the command line, then run its form as a verb through the
dispatcher the shell uses (grun/verbs.py), or a daemon action. Every failure the user can cause ends
in one line on stderr and a non-zero exit, never a traceback."""

import _signal  # (signal's C core: signal itself imports enum, ~1.5 ms of each call)
import atexit
import os
import sys
import time

TIMES = {"start": time.time()}  # when each step of this run ended: GRUN_TIMES=1 prints them (bench's latency split)

from . import __version__
from .config import ConfigError, find_config_path, load_config
from .options import EXIT_USAGE, GRUN_OPTIONS, UsageError, help_text
from .options import parse as parse_options
from .values import close_to

QUERIES = ("jobs", "status", "history", "wait", "why", "conf")
# A first word naming a verb runs it (`grun jobs` is `grun -q jobs`; `grun -- jobs` runs a program `jobs`), but for
# the verbs named as common programs (/bin/kill, procps' watch): `grun kill 60` is refused, saying grun's spelling
PROGRAMS = {"kill": "grun -k ID...", "watch": "in grun shell"}
HELP_TOPICS = ("config", "rules", "make", "options", "trust", "slurm", "sge")  # (grun/shell.py's pages)
USAGE = """usage: grun [options] COMMAND [ARGS...]      run a command on the cluster
       grun [-q] jobs|status|history|wait ID...|why ID|conf   query
       grun -k ID... [-n SIG] [--force] | -k -j NAME | -k --user USER   kill jobs
       grun [-e] hold|resume ID... | -e KEY=VAL,... ID...   hold, resume or edit jobs
       grun [--nowait] --array 1-100 COMMAND    many jobs, each with $GRUN_TASK_ID (or --cmds FILE: one a line)
       grun VERB [ARGS...]                      any verb by name, also submit CMD, edit K=V ID (grun help [VERB])
       grun --attach ID [--tail]                re-attach to a job's output and exit code
       grun shell                               the interactive console (or: echo jobs | grun shell)
       grun -d [-F] | -d -k                     start (foreground) | stop the daemons
       grun -d -R | -d -r                       restart gracefully | reload the config
       grun -d --systemd [--install [DIR]]      a systemd unit for this host's services
       grun --completion bash|zsh|fish          a shell completion script (source it)"""


def say(message: str, code: int = 1, file=None) -> int:
    """'grun: MESSAGE' on stderr (a failure, or with code 0 what was done); returns `code`."""
    print(f"grun: {message}", file=file or sys.stderr, flush=True)
    return code


def show(text: str, end: str = "\n", file=None) -> int:
    """`text` on stdout (or `file`); returns 0. A write error is one line, as coreutils say it (a reader gone: quietly).
    (Here, not in grun.verbs: --help, -V and --completion do not import the verbs, 4.6 ms.)"""
    try:
        print(text, end=end, file=file, flush=True)
    except OSError as exc:  # `> /dev/full`, `>&-`
        from .stream import WriteError
        raise exc if isinstance(exc, BrokenPipeError) else WriteError(exc.errno, exc.strerror) from None
    return 0


def _form(opts: dict, words: list[str], escaped: bool = False) -> tuple[list[str], str | None]:
    """The verb (and its words) a command line's form names, and how to call it in messages; the
    options that chose it are taken out of `opts`. A first word naming a verb is that verb, whatever
    follows (a wrong use is a usage error, never a job of that name), unless `escaped`: after `--`."""
    from .verbs import NAMES, VERBS
    if opts.pop("query", False):
        if (found := NAMES.get(words[0]) if words else None) is None or found.name not in QUERIES:
            wrong = f"unknown query {words[0]!r}: use " if words else "-q needs a query: "
            raise UsageError(wrong + ", ".join(QUERIES))
        return [found.name, *words[1:]], f"-q {found.name}"
    if opts.pop("kill", False):
        return ["kill", *words], "-k"
    if opts.pop("edit", False):
        if not words or words[0] not in ("hold", "resume") and "=" not in words[0]:
            raise UsageError("-e needs hold ID..., resume ID... or KEY=VALUE[,KEY=VALUE] ID..." +
                             (close_to(words[0], ("hold", "resume")) if words else ""))
        return (words, f"-e {words[0]}") if words[0] in ("hold", "resume") else (["edit", *words], "-e")
    if "attach" in opts:
        return ["attach", str(opts.pop("attach")), *words], "--attach"
    first, line = None if escaped else (words or [None])[0], " ".join(words)
    if first in PROGRAMS:
        raise UsageError(f"`grun {line}` would run the {first} program on a node; grun's {first}: "
                         f"{PROGRAMS[first].replace('ID...', line[len(first) + 1:] or 'ID...')} (the program: grun -- {line})")
    if first in VERBS and first != "exit" or first in ("shell", "help"):
        if opts and first == "shell":  # (a verb's own options go to it: `grun --json why 7`; others are refused)
            raise UsageError(f"option --{next(iter(opts))} does not go with shell")
        return words, None
    return ["run", "--", *words], "grun"


def fill_closed_std_fds() -> bool:
    """A standard fd left closed (`grun CMD >&-`) gets /dev/null, read-only: no socket of ours takes its number, and a
    write to it fails with EBADF as `echo hi >&-`'s does. Whether stdin was closed: the job gets no input, as before."""
    stdin_closed = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # (the fds below are open: /dev/null gets this number, the lowest free one)
            os.open(os.devnull, os.O_RDONLY)
            stdin_closed = stdin_closed or fd == 0
    if sys.stdout is None:  # (Python gave up on them at start; print() to a None stderr writes to stdout)
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:  # our messages have nowhere to go
        sys.stderr = open(os.devnull, "w")
    return stdin_closed


def main(argv: list[str] | None = None) -> int:
    """The `grun` command; as the program (argv None) it ends the process itself when it can (_exit_quickly)."""
    stdin_closed = argv is None and fill_closed_std_fds()
    if argv is None and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # (not ignored: `grun &`)
        _signal.signal(_signal.SIGINT, _interrupted)
    code = _main(sys.argv[1:] if argv is None else argv, stdin_closed)
    if argv is None:
        try:
            show("", end="")  # what print() left (`--help > /dev/full`), unless _main said so already
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError):  # (a reader gone: quietly, as `ls | head -1`)
                code = code or say(str(exc))
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the bytes left go: the flush at exit fails no more
    if os.environ.get("GRUN_TIMES"):
        print("grun: times:", " ".join(f"{step}={t:.6f}" for step, t in TIMES.items()), file=sys.stderr)
    if argv is None:
        if code - 128 in SIGNALLED:  # bash stops a script at Ctrl-C only if its child died of SIGINT: as srun, sleep
            _die_of(code - 128)
        _exit_quickly(code)
    return code


SIGNALLED: list[int] = []  # the signals (INT, TERM) this run was stopped by: it ends by them (main)


def _interrupted(sig, frame):  # Python's own SIGINT handler, remembering it
    SIGNALLED.append(sig)
    raise KeyboardInterrupt


def _die_of(sig: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    _signal.signal(sig, _signal.SIG_DFL)
    os.kill(os.getpid(), sig)


def _main(argv: list[str], stdin_closed: bool = False) -> int:
    try:
        opts, words = parse_options(argv, GRUN_OPTIONS, "grun")
        if not argv:  # a bare `grun`: what it does, as a usage error (as `srun` alone is one)
            return say(f"no command given\n{USAGE}\n(grun --help: the options; grun help: the verbs)", EXIT_USAGE)
        if opts.get("help") or opts.get("version"):
            return show(help_text(USAGE, GRUN_OPTIONS) if opts.get("help") else f"grun {__version__}")
        if "completion" in opts:
            from .integrate import completion
            return show(completion(opts["completion"]), end="")
        from . import verbs
        from .client import Client
        TIMES["imported"] = time.time()
        reload = bool(opts.get("daemon") and opts.get("reload"))  # (its daemon refuses a bad value, in its log too)
        cfg = load_config(find_config_path(opts.pop("config", None)), lenient=reload)
        TIMES["config"] = time.time()
        if opts.pop("daemon", False):
            return daemon(opts, words, cfg)
        escaped = bool(words) and argv[-len(words) - 1:-len(words)] == ["--"]  # (the words are argv's tail)
        words, called = _form(opts, words, escaped)
        stdin_fd = None if stdin_closed or os.isatty(0) else 0  # (a terminal's or none: the job gets no input)
        ctx = verbs.Context(lambda: Client(config=cfg), cfg, stdin_fd=stdin_fd, cli=True)
        if words[0] in ("shell", "help"):
            from . import shell  # (its verbs: help)
            if words[0] == "shell":
                return shell.main(ctx, words[1:])
        code = verbs.execute(ctx, words, called, opts)
        TIMES.update(getattr(vars(ctx).get("client"), "times", {}))
        return code
    except UsageError as exc:
        return say(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # our reader went away (`grun -q history | head -1`): no error, as with `ls`
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # else the flush of what is left fails once more
        return 141
    except Exception as exc:
        from .client import GrunError
        from .daemon import DaemonError
        if isinstance(exc, (ConfigError, GrunError, DaemonError, OSError)):
            return say(str(exc))
        raise


def daemon(opts: dict, words: list[str], cfg) -> int:
    """`grun -d` starts the configured services (-F: in the foreground); -k stops, -R restarts, -r reloads;
    --systemd shows a unit."""
    from . import daemon as d
    if opts.get("systemd"):
        from .integrate import systemd_unit
        if len(words) > bool(opts.get("install")) or set(opts) - {"systemd", "install"}:
            raise UsageError("usage: grun -d --systemd [--install [DIR]]")
        return show(systemd_unit(cfg, (words or ["/etc/systemd/system"])[0] if opts.get("install") else None), end="")
    if words or set(opts) - {"kill", "foreground", "restart", "reload"}:
        raise UsageError(f"unexpected arguments after -d: {' '.join(words) or ', '.join(opts)}")
    services = ", ".join(sorted(cfg.services))
    d.controllable(cfg, next((verb for key, verb in (("kill", "stop"), ("reload", "reload"), ("restart", "restart"))
                              if opts.get(key)), "start"))
    if opts.get("kill"):
        pid = d.stop(cfg)
        return say("not running" if pid is None else f"still stopping (pid {pid})" if pid else "stopped" + (
            "; jobs running here run on: the next start adopts them" if "exec" in cfg.services else ""), 0)
    if opts.get("reload"):
        pid, said = d.ask_reload(cfg)
        where = f"see {cfg.log_file}" if cfg.log_file else "its log goes to its stderr"
        return say(f"the daemon (pid {pid}) {said}" if said else f"asked the daemon (pid {pid}) to reload "
                   f"{cfg.path or 'its config'}; {where}" if pid else "not running", 0 if pid else 1)
    if opts.get("restart"):
        old, pid = d.restart(cfg)
        return say(f"restarted services {services} (pid {old} -> {pid})" if old else
                   f"was not running; started services {services} (pid {pid})", 0)
    if opts.get("foreground"):
        return d.serve(cfg, foreground=True)
    return say(f"started services {services} (pid {d.start_background(cfg)}, log {cfg.log_file})", 0)


def _exit_quickly(code: int) -> None:
    """Leave without the interpreter's teardown (freeing every module and object: ~5 ms of each `grun` call, measured)
    when nothing needs it: no profiler or coverage to write its results, no work asked of atexit since we started, no
    logging handler to flush, no thread of ours still working, and the interactive shell not used."""
    logging, threading = sys.modules.get("logging"), sys.modules.get("threading")
    if "grun.shell" in sys.modules or sys.getprofile() or sys.gettrace() or _atexit_count() > _ATEXIT_AT_START or \
            logging and (logging.root.handlers or any(getattr(lg, "handlers", None)
                                                      for lg in list(logging.Logger.manager.loggerDict.values()))) or \
            threading and any(t.is_alive() and not t.daemon and t is not threading.main_thread()
                              for t in threading.enumerate()):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # e.g. a closed pipe: the usual exit reports it as Python would
    os._exit(code if isinstance(code, int) else 1)


_atexit_count = getattr(atexit, "_ncallbacks", lambda: 0)  # CPython's; elsewhere, assume none were added
_ATEXIT_AT_START = _atexit_count()


def node_main(argv: list[str] | None = None) -> int:
    """`grun-node [-C FILE]`: the exec service in the foreground, for systemd."""
    from .daemon import DaemonError, serve
    try:
        opts, words = parse_options(sys.argv[1:] if argv is None else argv, ("config", "help"), "grun-node")
        if words:
            raise UsageError(f"unexpected arguments: {' '.join(words)}")
        if opts.get("help"):
            return show("usage: grun-node [-C FILE]   run the exec service in the foreground")
        return serve(load_config(find_config_path(opts.get("config"))), services=frozenset({"exec"}), foreground=True)
    except UsageError as exc:
        return say(str(exc), EXIT_USAGE)
    except (ConfigError, DaemonError, OSError) as exc:  # (OSError: `--help > /dev/full`)
        return say(str(exc))


if __name__ == "__main__":  # (python -m grun.cli: as grun.cli, the module its verbs import, whose SIGNALLED they fill)
    from grun.cli import main as cli_main
    sys.exit(cli_main())
