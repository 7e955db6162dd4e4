"""The `grun` command line: one table of options and a parser that stops at the command.

Options come before the command (`grun -c 4 -m 3000 mycmd -c x`: the second -c is mycmd's). Letters
follow the original grun where they overlap (-c cpus, -m memory, -r priority, -q query, -k kill, -d
daemon, -e edit, -j name, -f option file, -o output); adding an option is one line in OPTIONS.
Errors are one line, raised as UsageError.
"""

from __future__ import annotations

from typing import NamedTuple

from .config import parse_cpus, parse_memory


class UsageError(Exception):
    pass


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _signal(text: str) -> int:
    import signal as _sig
    name = text.upper()
    if not name.isdigit():
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(getattr(_sig.Signals, name))
        except AttributeError:
            raise ValueError(f"unknown signal {text!r}") from None
    number = int(name)
    if not 1 <= number <= 64:
        raise ValueError(f"bad signal number {text!r}")
    return number


def _param(text: str) -> tuple:
    """`-p NAME=VALUE`: a number asks for that much of a consumable, text for a label to match."""
    from .core.jobs import PARAM_NAME, number_or_text
    name, eq, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not value:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    if not PARAM_NAME.fullmatch(name):
        raise ValueError(f"bad resource name {name!r}")
    return name, number_or_text(value)


MAX_TASKS = 100_000


def _tasks(text: str) -> list[int]:
    """`--array 1-100`, `1-100:2` (a step), `1,5,9`, or a mix (`1-3,10`): task ids, in order, each once."""
    ids: list[int] = []
    for part in text.split(","):
        span, _, step = part.strip().partition(":")
        first, dash, last = span.partition("-")
        try:
            lo, hi, inc = int(first), int(last) if dash else int(first), int(step) if step else 1
        except ValueError:
            raise ValueError(f"expected task ids like 1-100, 1-100:2 or 1,5,9, got {text!r}") from None
        if lo < 0 or hi < lo or inc < 1:
            raise ValueError(f"expected task ids like 1-100, 1-100:2 or 1,5,9, got {text!r}")
        if len(ids) + (hi - lo) // inc + 1 > MAX_TASKS:
            raise ValueError(f"at most {MAX_TASKS:,} tasks in one array, got {text!r}")
        ids.extend(range(lo, hi + 1, inc))
    if len(set(ids)) != len(ids):
        raise ValueError(f"a task id is given twice in {text!r}")
    return ids


def _name(text: str) -> str:
    if not text.strip() or "\n" in text or len(text) > 200:
        raise ValueError(f"expected a one-line name, got {text!r}")
    return text


class Option(NamedTuple):  # not a dataclass: `dataclasses` imports `inspect`, ~5 ms of every `grun CMD`
    short: str | None
    long: str
    dest: str
    kind: str = "flag"          # flag | value | list
    convert: object = None
    help: str = ""
    metavar: str = ""


OPTIONS = [
    Option("c", "cpus", "cpus", "value", parse_cpus, "cpus the job needs (fractions allowed; default 1)", "CPUS"),
    Option("m", "memory", "memory", "value", parse_memory, "memory the job needs, MB or with a suffix: 500M, 4G", "MEM"),
    Option("r", "priority", "priority", "value", _int, "priority, higher runs first (default 20)", "N"),
    Option("H", "hosts", "hosts", "value", str, "only run on these nodes (glob or comma list)", "PATTERN"),
    Option("E", "env", "env", "list", str, "also pass these environment variables ('*' for all)", "VAR,..."),
    Option("p", "param", "params", "list", _param, "a custom resource (gpu=1) or a label to match (os=debian12)", "NAME=VALUE"),
    Option("j", "name", "name", "value", _name, "a unique name for the job (also: grun -k -j NAME)", "NAME"),
    Option("W", "wait-existing", "wait_existing", help="with -j: if that job exists, wait for it and exit with its code"),
    Option("f", "file", "optfile", "value", str, "read options from a YAML file (command-line options win)", "FILE"),
    Option("o", "out", "out", "value", str, "the job's stdout goes to FILE, written on its node", "FILE"),
    Option(None, "err", "err", "value", str, "the job's stderr goes to FILE", "FILE"),
    Option(None, "out-err", "out_err", "value", str, "stdout and stderr both go to FILE", "FILE"),
    Option(None, "out-append", "out_append", "value", str, "like --out, appending", "FILE"),
    Option(None, "err-append", "err_append", "value", str, "like --err, appending", "FILE"),
    Option(None, "out-err-append", "out_err_append", "value", str, "like --out-err, appending", "FILE"),
    Option(None, "noio", "noio", help="wait for the job without streaming its input or output"),
    Option(None, "force", "force", help="queue a request no node can satisfy now; with -k: mark killed "
           "even if its node cannot be reached"),
    Option("e", "edit", "edit", help="grun -e hold|resume ID... or grun -e KEY=VALUE[,KEY=VALUE] ID..."),
    Option(None, "nowait", "nowait", help="queue the job, print its id and exit"),
    Option(None, "norequeue", "norequeue", help="do not run the job again if its node is lost"),
    Option(None, "array", "array", "value", _tasks, "one job per task id (1-100, 1-100:2, 1,5,9), each with "
           "$GRUN_TASK_ID set; %a in -o/--err file names is the task id", "IDS"),
    Option(None, "cmds", "cmds", "value", str, "one job per line of FILE ('-': stdin), each run by /bin/sh, "
           "with $GRUN_TASK_ID its line number", "FILE"),
    Option(None, "attach", "attach", "value", _int, "re-attach to a job: replay its output, exit with its code", "ID"),
    Option(None, "tail", "tail", help="with --attach: only the output from now on"),
    Option("v", "verbose", "verbose", help="print the job id and node on stderr"),
    Option("q", "query", "query", help="query: jobs, status, history, wait ID..., why ID"),
    Option("k", "kill", "kill", help="kill jobs: grun -k ID... (with -d: stop the daemons)"),
    Option("n", "signal", "signal", "value", _signal, "signal for -k (default TERM)", "SIG"),
    Option("d", "daemon", "daemon", help="start the configured services in the background"),
    Option("F", "foreground", "foreground", help="with -d: stay in the foreground"),
    Option("R", "restart", "restart", help="with -d: restart the daemons gracefully (new code and config)"),
    Option(None, "reload", "reload", help="with -d: reload the config file (also -d -r, or SIGHUP)"),
    Option("C", "config", "config", "value", str, "config file (default $GRUN_CONF or /etc/grun.conf)", "FILE"),
    Option("h", "help", "help", help="show this help"),
    Option("V", "version", "version", help="show the version"),
]
_SHORT = {o.short: o for o in OPTIONS if o.short}
_LONG = {o.long: o for o in OPTIONS}

USAGE = """usage: grun [options] COMMAND [ARGS...]      run a command on the cluster
       grun -q jobs|status|history|wait ID...   query
       grun -k ID... [-n SIG] [--force] | -k -j NAME   kill jobs
       grun -e hold|resume ID... | -e KEY=VAL,... ID...   hold, resume or edit jobs
       grun [--nowait] --array 1-100 COMMAND    many jobs, each with $GRUN_TASK_ID (or --cmds FILE: one a line)
       grun why ID                              why a job is not running
       grun --attach ID [--tail]                re-attach to a job's output and exit code
       grun shell                               the interactive console (or: echo jobs | grun shell)
       grun -d [-F] | -d -k                     start (foreground) | stop the daemons
       grun -d -R | -d -r                       restart gracefully | reload the config"""


def help_text() -> str:
    lines = [USAGE, "", "options:"]
    for o in OPTIONS:
        names = (f"-{o.short}, " if o.short else "    ") + f"--{o.long}" + (f" {o.metavar}" if o.metavar else "")
        lines.append(f"  {names:<26} {o.help}")
    return "\n".join(lines)


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """Options up to the first non-option word, and the words from there on."""
    opts: dict = {}
    i = 0

    def take(opt: Option, value: str | None, where: str) -> None:
        if opt.kind == "flag":
            if value is not None:
                raise UsageError(f"option {where} takes no value")
            opts[opt.dest] = True
            return
        if value is None:
            raise UsageError(f"option {where} needs a value ({opt.metavar})")
        try:
            converted = opt.convert(value) if opt.convert else value
        except ValueError as exc:
            raise UsageError(f"bad value for {where}: {exc}") from None
        if opt.kind == "list":
            opts.setdefault(opt.dest, []).append(converted)
        else:
            opts[opt.dest] = converted

    while i < len(argv):
        word = argv[i]
        if word == "--":
            return opts, argv[i + 1:]
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            opt = _LONG.get(name)
            if opt is None:
                raise UsageError(f"unknown option --{name} (see grun --help)")
            if opt.kind != "flag" and not eq:
                i += 1
                value = argv[i] if i < len(argv) else None
            take(opt, value if (eq or opt.kind != "flag") else None, f"--{name}")
        elif word.startswith("-") and len(word) > 1 and not _is_number(word):
            j = 1
            while j < len(word):
                opt = _SHORT.get(word[j])
                if opt is None:
                    raise UsageError(f"unknown option -{word[j]} (see grun --help)")
                if opt.dest == "priority" and opts.get("daemon") and not word[j + 1:] and not (
                        i + 1 < len(argv) and _is_number(argv[i + 1])):
                    opts["reload"] = True  # `grun -d -r`: reload, as in the original grun
                    j += 1
                    continue
                if opt.kind == "flag":
                    take(opt, None, f"-{word[j]}")
                    j += 1
                    continue
                value = word[j + 1:]
                if not value:
                    i += 1
                    value = argv[i] if i < len(argv) else None
                take(opt, value, f"-{word[j]}")
                break
        else:
            return opts, argv[i:]
        i += 1
    return opts, []


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def load_option_file(path: str, opts: dict) -> tuple[dict, list[str]]:
    """`-f FILE`: a YAML mapping of long option names (cpus: 4, memory: 3G, param: {gpu: 1},
    name: x, out: log.txt) and optionally `command:` (a string for the shell, or a list). Options
    given on the command line win. Returns (options, command words or [])."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:120]}") from None
    if data is None:
        return opts, []
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option: value")
    merged, command = dict(opts), _file_command(path, data.pop("command", None))
    for key, value in data.items():
        opt = _LONG.get(str(key).replace("_", "-"))
        if opt is None or opt.dest in _NOT_IN_FILES:
            raise UsageError(f"{path}: unknown option {key!r}")
        if opt.dest in opts:
            continue
        merged.update(_file_value(path, opt, value))
    return merged, command


_NOT_IN_FILES = {"optfile", "query", "kill", "daemon", "foreground", "help", "version", "edit", "config",
                 "restart", "reload", "attach"}


def _file_command(path: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value and all(isinstance(w, (str, int, float)) for w in value):
        return [str(w) for w in value]
    raise UsageError(f"{path}: command must be a string or a list of words")


def _file_value(path: str, opt: Option, value) -> dict:
    if opt.kind == "flag":
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {opt.long} must be true or false")
        return {opt.dest: True} if value else {}
    items = value if opt.kind == "list" else [value]
    if opt.kind == "list" and isinstance(value, dict):
        items = [f"{k}={v}" for k, v in value.items()]
    elif opt.kind == "list" and not isinstance(value, list):
        items = [value]
    converted = []
    for item in items:
        if isinstance(item, (dict, list)) or item is None:
            raise UsageError(f"{path}: bad value for {opt.long}: {item!r}")
        try:
            converted.append(opt.convert(str(item)) if opt.convert else str(item))
        except ValueError as exc:
            raise UsageError(f"{path}: bad value for {opt.long}: {exc}") from None
    return {opt.dest: converted if opt.kind == "list" else converted[0]}
