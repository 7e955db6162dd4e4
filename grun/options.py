"""The one table of command-line options, and the parser that reads the subset a verb (or `grun` itself) takes.

Options come before the command (`grun -c 4 mycmd -c x`: the second -c is mycmd's). Letters follow the
original grun (-c cpus, -m memory, -r priority, -q query, -k kill, -d daemon, -e edit, -j name, -f
option file, -o output); a letter may mean different things to verbs that never share it (-c: a count for `history`)."""

from collections import namedtuple

from .values import close_to, is_name, number_or_text, parse_cpus, parse_duration, parse_job_priority, parse_memory
from .values import parse_priority as _int  # a whole number, as config reads one
from .values import parse_time_limit as _time


class UsageError(Exception):
    """A command line (or option file) that cannot be read: one line, exit status EXIT_USAGE."""


EXIT_USAGE = 2


def _signal(text: str) -> int:
    import signal
    name = text.upper().removeprefix("SIG")
    number = int(name) if name.isdigit() else signal.Signals.__members__.get("SIG" + name)
    if number is None or not 1 <= number <= 64:
        raise ValueError(f"unknown signal {text!r}")
    return int(number)


def _time_signal(text: str) -> list:
    """--time-signal (sbatch --signal's form, [R|B:]SIG[@SECS]; R, B ignored): [SIG, SECS before the limit (60)]."""
    flags, _, sig = text.rpartition(":")
    if not set(flags.upper()) <= {"R", "B"}:
        raise ValueError(f"expected [B:]SIG[@SECS], got {text!r}")
    sig, _, secs = sig.partition("@")
    return [_signal(sig), _whole_between(0, 65535)(secs) if secs else 60]


def _param(text: str) -> tuple:
    """`-p NAME=VALUE`: a number asks for that much of a consumable, text for a label to match."""
    name, eq, value = (part.strip() for part in text.partition("="))
    if not eq or not value:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    if not is_name(name):
        raise ValueError(f"bad resource name {name!r}")
    if not isinstance(amount := number_or_text(value), str) and amount < 0:  # (the master's check, said first)
        raise ValueError(f"{name}: expected a count of 0 or more, got {value}")
    return name, amount


def _env(text: str) -> str:
    """`-E NAME,NAME=VALUE,'*'`: checked here (grun.client.default_env reads it). A NAME may be bash's of an exported
    function (`export -f f`: BASH_FUNC_f%%), which only '*' passed."""
    for word in filter(str.strip, text.split(",")):
        name, eq, _ = word.partition("=")
        if not (name.strip() == "*" and not eq or name.strip().replace("_", "a").isalnum() and name.isascii()
                and not name.strip()[0].isdigit() or _function(name.strip())):
            raise ValueError(f"expected VAR, VAR=VALUE or '*', got {word!r}")
    return text


def _function(name: str) -> bool:
    body = name.removeprefix("BASH_FUNC_").removesuffix("%%")
    return len(body) == len(name) - 12 > 0 and "%" not in body and not any(c.isspace() for c in body)


def _above_zero(parse, what: str, hint: str):
    """-c and -m: none (0) is no request a node can count (the master's check, said first: a usage error)."""
    def convert(text: str):
        if (value := parse(text)) <= 0:
            raise ValueError(f"{what} must be above 0 ({hint}), got {text}")
        return value
    return convert


def _lazy(module: str, name: str):
    """A parser of grun.core, imported only when an option needs it (not by every `grun` call)."""
    return lambda text: getattr(__import__(f"grun.core.{module}", fromlist=[name]), name)(text)


_refs = _lazy("jobs", "job_refs")
_dependency = _lazy("deps", "parse_dependency")


def _whole_between(least: int, most: int):
    """The parser of a whole number from `least` to `most`."""
    def parse(text: str) -> int:
        if not least <= (n := _int(text)) <= most:
            raise ValueError(f"expected {least} to {most}, got {text}")
        return n
    return parse


def _name(text: str) -> str:
    if not text.strip() or "\n" in text or len(text) > 200:  # (grun.core.jobs.MAX_NAME)
        raise ValueError(f"expected a name of one line and at most 200 characters, got {text[:60]!r}"
                         + (f" ({len(text)} characters)" if len(text) > 200 else ""))
    return text


# kind: flag | value | list (repeatable); an option's key in a parsed dict is its long name.
# (A namedtuple, not a dataclass or typing.NamedTuple: those import `inspect` or `typing`, paid by every `grun`.)
Option = namedtuple("Option", "short long kind convert help metavar", defaults=("flag", None, "", ""))

OPTIONS = [
    Option("c", "cpus", "value", _above_zero(parse_cpus, "cpus", "fractions allowed: -c 0.5"), "cpus the job needs (fractions allowed; default 1)", "CPUS"),
    Option("m", "memory", "value", _above_zero(parse_memory, "memory", "give a size, like -m 500M"), "memory the job needs, MB or with a suffix: 500M, 4G", "MEM"),
    Option("t", "time", "value", _time, "wall-time limit: 30 (minutes), 90s, 2h, 1:30:00, 1-12:00 (0: none); "
           "then TERM, KILL after kill_grace", "TIME"),
    Option(None, "time-signal", "value", _time_signal, "also send SIG to the job SECS (default 60) seconds before "
           "its -t limit (sbatch --signal)", "SIG[@SECS]"),
    Option("r", "priority", "value", parse_job_priority, "priority, higher runs first (default 20)", "N"),
    Option("H", "hosts", "value", str, "only run on these nodes (glob or comma list)", "PATTERN"),
    Option("E", "env", "list", _env, "also pass these environment variables ('*' for all), or set VAR=VALUE",
           "VAR[=VALUE],..."),
    Option("p", "param", "list", _param, "a custom resource (gpu=1) or a label to match (os=debian12)", "NAME=VALUE"),
    Option("j", "name", "value", _name, "a unique name for the job (also: grun -k -j NAME)", "NAME"),
    Option("W", "wait-existing", help="with -j: if that job exists, wait for it and exit with its code"),
    Option("f", "file", "value", str, "read options from a YAML file (command-line options win)", "FILE"),
    Option("o", "out", "value", str, "the job's stdout goes to FILE (%j: its id, %x: its name), written on its node", "FILE"),
    Option(None, "err", "value", str, "the job's stderr goes to FILE", "FILE"),
    Option(None, "out-err", "value", str, "stdout and stderr both go to FILE", "FILE"),
    *(Option(None, f"{o}-append", "value", str, f"like --{o}, appending", "FILE") for o in ("out", "err", "out-err")),
    Option(None, "pty", help="run the command on a terminal of its own, ours while it runs: a shell, vim, top"),
    Option(None, "noio", help="wait for the job without streaming its input or output"),
    Option(None, "force", help="queue what no node can run now; with -k: mark killed even if its node is away"),
    Option(None, "noinput", help="the job reads /dev/null, our stdin left unread (ssh -n: a `while read` loop)"),
    Option(None, "nowait", help="queue the job, print its id and exit"),
    Option(None, "norequeue", help="do not run the job again if its node is lost"),
    Option(None, "hold", help="queue the job held: it starts once released (grun -e resume ID)"),
    Option(None, "array", "value", str, "one array job, a task per id: 1-100, 1-100:2, 1,5,9; %N: N at once ($GRUN_TASK_ID; %a in -o)", "IDS"),
    Option(None, "cmds", "value", str, "a job per line of FILE ('-': stdin), run by sh ($GRUN_TASK_ID)", "FILE"),
    Option("M", "make", help="run only if an output (%o:F, >F) is missing, empty or older than an input (%i:F, <F)"),
    Option(None, "noexec", help="with -M (also -M -n): print what would run and why; queue nothing"),
    Option(None, "after", "list", _refs, "start once these jobs have ended, whatever their exit", "ID|NAME,..."),
    Option(None, "afterok", "list", _refs, "start once these have succeeded (one fails: cancelled)", "ID|NAME,..."),
    Option(None, "afternotok", "list", _refs, "start once these have failed (one succeeds: cancelled)", "ID|NAME,..."),
    Option(None, "dependency", "list", _dependency, "Slurm's form: afterok:12:13,after:14", "KIND:ID[:ID],..."),
    Option(None, "retries", "value", _whole_between(0, 100), "run a job that fails again, up to N times (default 0)", "N"),
    Option(None, "retry-delay", "value", parse_duration, "wait this long before each retry (default 0; 1s for a job grun follows)", "TIME"),
    Option(None, "wrap", "value", str, "run the command inside PREFIX, at {cmd} (else at its end): a container, a module", "PREFIX"),
    Option(None, "stage", "value", str, "auto|always|never: send the -M and --stage-in/out files to and from the node (auto: when it lacks the cwd)", "MODE"),
    Option(None, "stage-in", "list", str, "also send FILE (under the cwd) to the job's node when it is staged", "FILE"),
    Option(None, "stage-out", "list", str, "also bring FILE (under the cwd) back from the job's node when it is staged", "FILE"),
    Option("v", "verbose", help="print the job id and node on stderr"),
    Option(None, "json", help="one JSON document (with --nowait: the job ids)"),
    Option("e", "edit", help="grun -e hold|resume ID... or grun -e KEY=VALUE[,KEY=VALUE] ID..."),
    Option(None, "attach", "value", str, "re-attach to a job: replay its output, exit with its code", "ID|NAME"),
    Option(None, "tail", help="with --attach: only the output from now on"),
    Option("q", "query", help="query: jobs, status, history, wait ID..., why ID, conf"),
    Option("k", "kill", help="kill jobs: grun -k ID... (with -d: stop the daemons)"),
    Option("n", "signal", "value", _signal, "signal for -k (default TERM)", "SIG"),
    Option("d", "daemon", help="start the configured services in the background"),
    Option("F", "foreground", help="with -d: stay in the foreground"),
    Option("R", "restart", help="with -d: restart the daemons gracefully (new code and config)"),
    Option(None, "reload", help="with -d: reload the config file (also -d -r, or SIGHUP)"),
    Option("C", "config", "value", str, "config file (default $GRUN_CONF or /etc/grun.conf)", "FILE"),
    Option(None, "systemd", help="with -d: print a systemd unit for this host's services (--install [DIR]: write it)"),
    Option(None, "install", help="with -d --systemd: write the unit into DIR (default /etc/systemd/system)"),
    Option(None, "completion", "value", str, "print a completion script: bash, zsh or fish", "SHELL"),
    Option(None, "user", "value", str, "only this user's jobs (-q jobs, history); with -k: kill all their jobs", "USER"),
    Option("h", "help", help="show this help"),
    Option("V", "version", help="show the version"),
    # for `history` and `watch` (and --user above)
    Option("c", "count", "value", _whole_between(1, 1_000_000), "how many jobs (default 20)", "N"),
    Option("g", "grep", "value", str, "only jobs whose command or name matches REGEX", "REGEX"),
    Option("l", "long", help="every recorded field, a block per job"),
    Option("F", "format", "value", lambda text: [f.strip().lower() for f in text.split(",") if f.strip()],
           "the columns of -q jobs, by name: id,user,state,node,cpus,mem,using,time,cwd,command or any field", "FIELDS"),
    Option("n", "interval", "value", lambda text: parse_duration(text, positive=True),
           "time between redraws (default 2s)", "SECONDS"),
]
_BY_LONG = {o.long: o for o in OPTIONS}
# Slurm's spellings of grun's options (not close enough for close_to): said in the error, as its "did you mean"
SLURM = {f"--{slurm}": f"--{ours}" for slurm, ours in (("mem", "memory"), ("cpus-per-task", "cpus"), ("job-name", "name"),
         ("output", "out"), ("error", "err"), ("nodelist", "hosts"), ("export", "env"))}
_NAMES = list(_BY_LONG)
JOB_OPTIONS = tuple(_NAMES[:_NAMES.index("json") + 1])  # `run`'s and `submit`'s; an option file (-f) may hold all but json
GRUN_OPTIONS = tuple(_NAMES[:_NAMES.index("version") + 1])  # grun's own: those and its forms' (the rest: some verbs')


def parse(argv: list[str], names: tuple[str, ...], called: str, interspersed: bool = False) -> tuple[dict, list[str]]:
    """The options among `names` (long names) and the other words. Options end at the first other word
    (the command), or, `interspersed`, may come anywhere; `--` ends them either way."""
    allowed = {f"--{name}": _BY_LONG[name] for name in names}
    allowed |= {f"-{o.short}": o for o in list(allowed.values()) if o.short}
    opts, words, rest = {}, [], iter(argv)

    def take(where: str, value: str | None = None) -> None:
        """Record option `where`, with its value given inline, else (if it takes one) the next word."""
        if (opt := allowed.get(where)) is None:
            if known := [f"--{o.long}" for o in OPTIONS if where in (f"-{o.short}", f"--{o.long}")]:
                meant = f" ({' or '.join(known)})" if where[1] != "-" else ""  # a letter may mean more than one
                raise UsageError(f"option {where}{meant} does not go with {called}")
            meant = f"; did you mean {SLURM[where]!r}?" if SLURM.get(where) in allowed else close_to(where, allowed)
            raise UsageError(f"unknown option {where} (see grun --help){meant}")  # (a typo, or Slurm's name for it)
        if opt.kind == "flag" and value is not None:
            raise UsageError(f"option {where} takes no value")
        if opt.kind != "flag" and value is None and (value := next(rest, None)) is None:
            raise UsageError(f"option {where} needs a value ({opt.metavar})")
        try:
            value = True if opt.kind == "flag" else opt.convert(value)
        except ValueError as exc:
            raise UsageError(f"bad value for {where}: {exc}") from None
        opts[opt.long] = [*opts.get(opt.long, []), value] if opt.kind == "list" else value

    for word in rest:
        if word == "--":
            return opts, words + list(rest)
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            take(name, value if eq else None)
        elif word.startswith("-") and len(word) > 1 and not word[1].isdigit():  # -1: a (negative) number
            for j, letter in enumerate(word[1:], 2):
                if letter == "r" and "daemon" in opts:
                    opts["reload"] = True  # `grun -d -r`: reload, as in the original grun
                elif letter == "n" and opts.get("make") and "--noexec" in allowed:
                    opts["noexec"] = True  # `grun -M -n`: make's dry run (-n is -k's signal otherwise)
                elif getattr(allowed.get(f"-{letter}"), "kind", "flag") != "flag":
                    take(f"-{letter}", word[j:] or None)  # `-c4` or `-c 4`
                    break
                else:
                    take(f"-{letter}")
        elif interspersed:
            words.append(word)
        else:
            return opts, [word, *rest]
    return opts, words


def help_text(usage: str, names: tuple[str, ...]) -> str:
    lines = [usage, "", "options:"]
    for o in (_BY_LONG[n] for n in names):
        flags = (f"-{o.short}, " if o.short else "    ") + f"--{o.long}" + (f" {o.metavar}" if o.metavar else "")
        lines.append(f"  {flags:<26} {o.help}")
    return "\n".join(lines)


def load_option_file(path: str, opts: dict, names: tuple[str, ...]) -> list[str]:
    """`-f FILE`: a YAML mapping of long option names among `names` (cpus: 4, memory: 3G, param: {gpu: 1},
    name: x, out: log.txt) and optionally `command:` (a string for the shell, or a list). Options
    given on the command line (`opts`) win; the others join them. Returns the command words, or []."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(data, dict | None):
        raise UsageError(f"{path}: expected a mapping of option: value")
    given, command = set(opts), (data or {}).pop("command", None)
    if command is not None and not (isinstance(command, str) and command.strip() or isinstance(command, list)
                                    and command and all(isinstance(w, str | int | float) for w in command)):
        raise UsageError(f"{path}: command must be a string or a list of words")
    for name, value in (data or {}).items():
        if (opt := _BY_LONG.get(str(name).replace("_", "-"))) is None or opt.long not in names:
            raise UsageError(f"{path}: unknown option {name!r}{close_to(str(name).replace('_', '-'), names)}")
        if opt.long in given:
            continue
        if opt.kind == "flag" and not isinstance(value, bool):
            raise UsageError(f"{path}: {opt.long} must be true or false")
        items = [f"{k}={v}" for k, v in value.items()] if opt.kind == "list" and isinstance(value, dict) else \
            value if opt.kind == "list" and isinstance(value, list) else [value]
        try:
            if any(isinstance(item, dict | list) or item is None for item in items):
                raise ValueError(f"{value!r}")
            converted = [True] if opt.kind == "flag" else [opt.convert(str(item)) for item in items]
        except ValueError as exc:
            raise UsageError(f"{path}: bad value for {opt.long}: {exc}") from None
        if value is not False:
            opts[opt.long] = converted if opt.kind == "list" else converted[0]
    return [command] if isinstance(command, str) else [str(w) for w in command or []]
