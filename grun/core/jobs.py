"""Job records: the states a job moves through, validation of what a client submits, and how an exit status is told to
a user. Plain dicts travel on the wire and in the journal; this module is the one place that says what keys they hold.

A submission or edit that cannot be accepted is a ValueError with one line for the user: the builtin, which Pyro5
clients rebuild (a class of ours would reach them as an unknown-class error)."""

import contextlib
import math
import os
import re
import shlex

from .. import values
from ..values import MAX_PRIORITY, STAGE_MODES, expect, is_name, number, number_or_text, parse_cpus

QUEUED, HELD, DISPATCHED, RUNNING, SUSPENDED = "queued", "held", "dispatched", "running", "suspended"
DONE, FAILED, KILLED, LOST, TIMEOUT = "done", "failed", "killed", "lost", "timeout"  # TIMEOUT: at its -t
WAITING, CANCELLED = "waiting", "cancelled"  # for dependencies or a retry delay; a dependency never met
FINAL_STATES = (DONE, FAILED, KILLED, LOST, TIMEOUT, CANCELLED)
# A kill with one of these ends the job as killed however it exits (a trap's exit 0), as Slurm's CANCELLED: its afterok
# dependents do not run; USR1 & co. (HUP, a server job's "reload") are signals, no end asked: killed only if it died of one.
ENDING_SIGNALS = (2, 3, 9, 15)
SIGPIPE = 13  # a client's kill for its reader gone (grun.running.dies_with: `grun CMD | head -1`)
EXIT_TIMEOUT = 124  # a job ended at its time limit exits with this, as under timeout(1)
ON_NODE_STATES = (DISPATCHED, RUNNING, SUSPENDED)
UNSTARTED = (QUEUED, HELD, WAITING, DISPATCHED)
DEP_KINDS = ("after", "afterok", "afternotok")  # (grun.core.deps)

MAX_CMD_BYTES, MAX_ENV_BYTES = 1 << 20, 4 << 20
MAX_CPUS, MAX_MEMORY_MB = 1_000_000, 1 << 40

# Keys a client may set; anything else in a submission is refused, so typos do not pass silently.
SPEC_KEYS = {
    "cmd", "shell", "cwd", "env", "cpus", "memory", "user", "uid", "gid", "stdin",
    "token", "priority", "name", "host", "params", "parent", "force", "requeue",
    "stdout_file", "stderr_file", "stdout_append", "stderr_append", "time", "time_signal",
    "inputs", "outputs", "make", "needs", "appends",  # make semantics (grun.make)
    "array",  # `--array 1-100%10`: one record, its tasks made jobs as they start (grun.core.arrays)
    "groups", "umask",  # from the submitter's credential (grun.auth), with its uid, gid and user
    *DEP_KINDS, "retries", "retry_delay",
    "wrap",  # a command prefix (grun.spawner.wrapped)
    "cwd_fs",  # the network filesystem the cwd lies on (grun.mounts.identity): placed only where it is mounted
    "stage", "stage_in", "stage_out",  # files sent to and from a node without the shared filesystem (grun.stage)
    "hold",  # queued held (sbatch -H, qsub -h): in the submission's own commit, so no pass can start it first
    "reserve_only",  # its memory reserved, not a limit (qsub -l mem_free)
    "lease",  # seconds it lives past its submitter's last renewal (grun.core.leases: grun.calls' jobs)
}
MAX_PARAMS, MAX_NAME, MAX_PATH, MAX_FILES = 64, 200, 4096, 1000
MAX_RETRIES, MAX_REFS = 100, 1000
# What a killed-for-limit job shows in history instead of its exit code.
LIMIT_WORDS = {"memory": "OUTOFMEM", "cpu": "CPULIMIT", "fsize": "FILESIZE", "time": "TIMEOUT"}
INTERPRETERS = re.compile(r"(python|pypy|(ba|da|z|k)?sh|Rscript|perl|ruby|node|julia)[\d.]*")
CODE_OPTIONS, ARG_OPTIONS = ("-c", "-e", "-m"), ("-W", "-X", "-o", "-I")  # the program follows / an argument follows


def asked_to_end(job: dict) -> bool:
    return job.get("kill_requested") in ENDING_SIGNALS


def reader_gone(job: dict) -> bool:
    """Killed for its reader gone: it failed, as it would have of the pipe, but was cut short: neither retried (nobody
    reads a re-run) nor learned from (its low time and memory)."""
    return job.get("kill_requested") == SIGPIPE


def argv(job: dict) -> list[str]:
    """A job's words: a shell command line's as `split` makes them."""
    return split(job["cmd"][0]) if job.get("shell") else job["cmd"]


WORDS = re.compile(r"[;&|<>]+|[^ \t\r\n;&|<>]+")  # (shlex's punctuation_chars words of a line without quotes)


def split(line: str) -> list[str]:
    """A shell line's words as /bin/sh splits them, operators words too (`a|b`: a, |, b); unbalanced: at blanks."""
    quoted = any(c in line for c in "'\"\\")  # (else as str.split or a regex: shlex costs 10-200 µs a line)
    with contextlib.suppress(ValueError):
        if any(c in line for c in ";&|"):  # (`zcat x|bwa mem`: not one command zcat)
            if not quoted and "#" not in line:  # (shlex's words: its operators as runs of ;&|<>, a # ends the line)
                return WORDS.findall(line)
            words = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")  # (not `()`: `x=$(date);` one word)
            words.whitespace_split = True
            return list(words)
        if quoted:
            return shlex.split(line)
    return line.split()


SETUP = frozenset({"cd", "pushd", "export", "set", "unset", "source", ".", "module", "ml", "conda", "ulimit", "umask",
                   "echo", "printf", "true", ":", "mkdir", "date", "hostname"})  # before a line's real work
OPERATORS = frozenset({"&&", "||", ";", "|", "&", "|&"})  # (split makes them words)
# Shell builtins that only end or steer a line (`echo hi; exit 0`): never its working command while another is there,
# else every such line would share their learned key (`true`, `false`, `:` stay: alone they are a job's whole work).
RUN_NOTHING = frozenset({"exit", "return", "wait", "logout", "shift", "trap", "break", "continue"})
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"}  # `SHELL -c SCRIPT`: SCRIPT is a shell line
MARK = "# grun-compat"  # heads a shim's job's script (grun.compat.submit) and the shims grun-compat installs


def working_commands(words: list[str]) -> list[tuple[list[str], str]]:
    """A shell line's working commands, each with the operator after it: set-up (`cd DIR && python3 a.py`: not the cd
    all such lines share), `VAR=value` words and (but alone) RUN_NOTHING commands skipped; all set-up: its last."""
    commands, current = [], []
    for word in words:
        if word in OPERATORS:
            commands, current = [*commands, (current, word)], []
            continue
        if "(" not in (word := word if current else word.lstrip("(")):  # (`(cd x; make)`: cd, make; `$(date)` stays)
            word = word.rstrip(")")
        if word and (current or "=" not in word or not word.split("=")[0].isidentifier()):
            current.append(word)
    commands = [c for c in [*commands, (current, "")] if c[0]]
    commands = [c for c in commands if c[0][0] not in RUN_NOTHING] or commands
    return [c for c in commands if os.path.basename(c[0][0]) not in SETUP] or commands[-1:] or [(words, "")]


def shell_script(words: list[str]) -> int | None:
    """The index of SCRIPT in `sh -c SCRIPT` (bash, `-ec`, `-o pipefail -c`, ...), else None."""
    if not words or os.path.basename(words[0]) not in SHELLS:
        return None
    i, script = 1, False
    while i < len(words) and words[i][:1] in "-+" and words[i] not in ("-", "--"):
        word = words[i]
        script = script or (word[0] == "-" and word[1:2] != "-" and "c" in word)
        i += 2 if word in ("-o", "+o", "-O", "+O") else 1  # (those take the next word)
    i += words[i:i + 1] == ["--"]
    return i if script and i < len(words) else None


def wrapped(cmd: list[str]) -> tuple[str, str | None, list[str]] | None:
    """grun.compat.submit's [/bin/sh, -c, MARK + BODY, NAME, [SCRIPT], *ARGS]: (NAME, SCRIPT|None, ARGS), else None."""
    if len(cmd) < 4 or not cmd[2].startswith(MARK):
        return None
    script = cmd[2].endswith('"$f" "$@"') and len(cmd) > 4  # (only a script's RUN ends so: not "mktemp" in a -o path)
    return cmd[3], (cmd[4] if script else None), cmd[5 if script else 4:]


def name_of(job: dict) -> str:
    """Its name as shown: -j NAME, sbatch's or qsub's script name, else its program's."""
    cmd = job.get("cmd") or ["?"]
    if not job.get("shell") and (wrapper := wrapped(cmd)):
        return wrapper[0]
    return job.get("name") or os.path.basename(cmd[0].split()[0] if job.get("shell") and cmd[0].split() else cmd[0])


def out_names(job: dict, array: dict | None = None) -> dict:
    """The job, its -o/--err names with %j (its id), %x (its name; a task's: its `array`'s), %A (its array's id, else
    %j), %a (its task id, $GRUN_TASK_ID: an array's or --cmds'), %% (a %), as sbatch's; an array's own keeps them."""
    names = lambda m: str({"j": job["id"], "x": name_of(array or job), "A": (array or job)["id"], "%": "%",
                           "a": (job.get("env") or {}).get("GRUN_TASK_ID", "%a")}[m[1]])
    if "ranges" not in job:
        job.update({key: re.sub("%([jxAa%])", names, job[key]) for key in ("stdout_file", "stderr_file") if job.get(key)})
    return job


LINES = re.compile(r"^[ \t]*[^#\s][^\r\n\\]*(?:\\(?:\r?\n|.)?[^\r\n\\]*)*", re.MULTILINE)  # but comments, blank; `\` continues
LAUNCHERS = frozenset({"srun", "mpirun", "mpiexec", "orterun", "prterun"})  # a batch script whose work is theirs:
# keyed by its name (their options, which differ by launcher, would make the program a guess)
KEYED = 4  # a pipeline's or list's commands (`zcat x | bwa mem`) its learned key names (grun.core.learn.program_of)


def script_words(script: str) -> list[str]:
    """A shell script's lines (but comments, blank) as one line's words, each ended by `;`; read up to its KEYED-th line
    of work only (a whole batch script's cost ~800 µs, at every job end)."""
    words, work = [], 0
    for match in LINES.finditer(script):
        line = split(re.sub(r"\\\r?\n", " ", match[0]) if "\\" in match[0] else match[0])
        words += [*line, ";"]
        work += any(os.path.basename(c[0]) not in SETUP | RUN_NOTHING for c, _ in working_commands(line) if c is not line)
        if work == KEYED:
            break
    return words


def batch_script(words: list[str]) -> tuple[str, None, str] | None:
    """An sbatch or qsub script keyed by its name: one of another interpreter (`#!/usr/bin/env python3`, `qsub -S
    python3`: all keyed `import` before) or whose work is srun's or mpirun's (LAUNCHERS); None: a shell script."""
    if not (wrapper := wrapped(words)) or (script := wrapper[1]) is None:
        return None
    run = words[2].rsplit("&& exec ", 1)[-1]  # (`... && exec [SHELL] "$f" "$@"`: qsub -S SHELL)
    interpreter = split(run)[:-2] if run != '"$f" "$@"' else \
        split(script[2:].split("\n", 1)[0]) if script.startswith("#!") else []
    while interpreter[1:] and (os.path.basename(interpreter[0]) == "env" or interpreter[0].startswith("-")):
        interpreter = interpreter[1:]  # (`#!/usr/bin/env -S python3 -u`)
    program = os.path.basename(interpreter[0]) if interpreter else "sh"
    if program not in SHELLS or (program := run_of(commands_of(script_words(script), True)[0][0])[2]) in LAUNCHERS:
        return wrapper[0], None, program
    return None


def script_of(words: list[str], shell: bool = False) -> tuple[str | None, tuple | None, str]:
    """What a job's first command runs (run_of), or a batch script keyed by its name."""
    return not shell and batch_script(words) or run_of(commands_of(words, shell)[0][0])


def run_of(words: list[str]) -> tuple[str | None, tuple | None, str]:
    """What a command runs: ("/x/a.py", None, "python3") for `python3 -u /x/a.py` (script, inline code or module as
    ("-c", CODE), program)."""
    name = os.path.basename(words[0]) if words else "?"
    if not INTERPRETERS.fullmatch(name):
        return (words[0] if words else None), None, name
    args = iter(words[1:])
    for arg in args:
        if arg in CODE_OPTIONS:
            return None, (arg, next(args, "")), name
        if arg in ARG_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg, None, name
    return None, None, name


def commands_of(words: list[str], shell: bool = False) -> list[tuple[list[str], str]]:
    """The commands a job runs, each with the operator after it (working_commands'; "" after the last): `env`, `exec`,
    `nohup`, `time`, --pty's wrapper (grun.pty_job) and (`shell`) a shell line's set-up skipped; of `sh -c SCRIPT` and
    a batch script of grun's Slurm and SGE commands: their lines'."""
    if not shell and (wrapper := wrapped(words)):
        if wrapper[1] is not None:  # (its interpreter's, if not a shell: see batch_script)
            return commands_of(script_words(wrapper[1]), True)
        words = wrapper[2]
    found = []
    for command, operator in working_commands(words) if shell else [
            (words[4:] if words[1:3] == ["-m", "grun.pty_job"] else words, "")]:
        while command[1:] and (os.path.basename(command[0]) in ("env", "exec", "nohup", "time", "command") or
                               command[0].split("=")[0].isidentifier() and "=" in command[0]):  # (`env X=1 ./sim`)
            command = command[1:]
        inner = [(command, "")] if (at := shell_script(command)) is None else commands_of(script_words(command[at]), True)
        found += [*inner[:-1], (inner[-1][0], operator)]
    return [*found[:-1], (found[-1][0], "")]


def require(ok, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _number(spec: dict, key: str, default: float, limit: float, hint: str = "") -> float:
    """`hint`: cpus and memory asked for: none (0) is no request a node can count (and -m 0 is not Slurm's whole node)."""
    value = default if spec.get(key) is None else spec[key]  # a spec is typed: "4" is refused, as by _whole_field
    expect(not isinstance(value, str), f"{key}: a number >= 0", value)
    value = number(value, f"{key}: a number >= 0", limit)
    if hint and value <= 0 and spec.get(key) is not None:
        raise ValueError(f"-{key[0]} {value:g}: {key} must be above 0 ({hint})")
    return value


def _whole_field(spec: dict, key: str, default: int | None, ok, what: str) -> int | None:
    """A spec's whole-number field (an int: a spec is typed, "4" is no number) that passes `ok`; `default` if absent."""
    if (value := spec.get(key)) is None:
        return default
    require(isinstance(value, int) and not isinstance(value, bool) and ok(value),
            f"{key} must be {what}, got {value!r}")
    return value


def _text(spec: dict, key: str, limit: int) -> str | None:
    if (value := spec.get(key)) is None or value == "":
        return None
    require(isinstance(value, str) and "\0" not in value and "\n" not in value, f"{key} must be a one-line string")
    require(len(value) <= limit, f"{key} is too long (limit {limit} characters)")
    return value


def validate_params(params) -> dict:
    """Custom requests: NAME -> number (a consumable) or string (a label to match, globs allowed)."""
    if params is None:
        return {}
    require(isinstance(params, dict) and len(params) <= MAX_PARAMS,
            f"params must map at most {MAX_PARAMS} names to values")
    for name, value in params.items():
        require(isinstance(name, str) and is_name(name), f"bad param name {name!r} (letters, digits, _ . - only)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"param {name} must be a number or a string, got {value!r}")
        if isinstance(value, str) and (not value or len(value) > 256 or "\0" in value):
            raise ValueError(f"param {name} has a bad value {value!r}")
        if not isinstance(value, str) and (not math.isfinite(value) or value < 0):
            raise ValueError(f"param {name} must be a finite number >= 0, got {value!r}")
    return dict(params)


def validate_spec(spec: object, default_cpus: float = 1.0, default_memory: int = 100,
                  default_priority: int = 20) -> dict:
    """Check a submission and return a normalised copy (the job's immutable request)."""
    require(isinstance(spec, dict), "a job spec must be a mapping")
    require(not (unknown := set(spec) - SPEC_KEYS), f"unknown job spec keys: {', '.join(sorted(map(str, unknown)))}")
    cmd = spec.get("cmd")
    require(isinstance(cmd, (list, tuple)) and cmd and all(isinstance(a, str) for a in cmd),
            "cmd must be a non-empty list of strings")
    require(sum(len(a) for a in cmd) <= MAX_CMD_BYTES, "command line too long")
    require(not any("\0" in a for a in cmd), "command contains a NUL byte")
    cwd = spec.get("cwd") or "/"
    require(isinstance(cwd, str) and cwd.startswith("/"), "cwd must be an absolute path")
    env = spec.get("env") or {}
    require(isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()),
            "env must map strings to strings")
    require(sum(len(k) + len(v) for k, v in env.items()) <= MAX_ENV_BYTES, "environment too large")
    uid, gid = os.getuid() or 65534, os.getgid() or 65534  # (a spec not saying runs as us; if we are root, as nobody)
    out = {
        "cmd": list(cmd),
        "shell": bool(spec.get("shell", False)),
        "cwd": cwd,
        "env": dict(env),
        "cpus": float(_number(spec, "cpus", default_cpus, MAX_CPUS, "fractions allowed: -c 0.5")),
        "memory": math.ceil(_number(spec, "memory", default_memory, MAX_MEMORY_MB, "give a size, like -m 500M")),
        "user": _text(spec, "user", MAX_NAME) or "nobody",
        "uid": int(_number(spec, "uid", uid, 1 << 32)),
        "gid": int(_number(spec, "gid", gid, 1 << 32)),
        "stdin": bool(spec.get("stdin", False)),
        "priority": _whole_field(spec, "priority", int(default_priority), lambda v: abs(v) <= MAX_PRIORITY, "a whole number"),
        "token": spec.get("token") if isinstance(spec.get("token"), str) else None,
        "name": job_name(_text(spec, "name", MAX_NAME)),
        "host": _text(spec, "host", MAX_PATH),
        "params": validate_params(spec.get("params")),
        "parent": _whole_field(spec, "parent", None, lambda v: v > 0, "a job id"),
        "force": bool(spec.get("force", False)),
        "requeue": bool(spec.get("requeue", True)),  # run again if its node is lost (--norequeue: no)
    }
    require((groups := spec.get("groups")) is None or isinstance(groups, list) and len(groups) <= 65536 and all(
        isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 1 << 32 for g in groups), "groups must be a list of group ids")
    require((stage := spec.get("stage")) in (None, *STAGE_MODES), f"stage must be auto, always or never, got {stage!r}")
    require((fs := spec.get("cwd_fs")) is None or isinstance(fs, dict) and fs.keys() == {"root", "source", "sub", "type"}
            and all(isinstance(v, str) and 0 < len(v) <= MAX_PATH for v in fs.values()),
            "cwd_fs must map type, source, root and sub to strings")
    if (sig := spec.get("time_signal")) is not None and not (isinstance(sig, list) and len(sig) == 2 and all(
            type(v) is int for v in sig) and 1 <= sig[0] <= 64 and 0 <= sig[1] <= values.MAX_TIME):  # (seconds before its -t)
        raise ValueError(f"time_signal must be [signal 1-64, seconds], got {sig!r}")
    if spec.get("array") is not None:
        require(spec.get("lease") is None, "an array takes no lease (its tasks are jobs of their own)")
        from .arrays import parse
        parse(spec["array"])  # (a ValueError, one line, when it is not an array)
    given = lambda key: spec.get(key) is not None or None  # (None: the key is left out)
    optional = {
        "memory_set": given("memory"),  # asked for (-m): learning leaves it alone; a limit unless reserve_only
        "reserve_only": spec.get("reserve_only") or None,
        "cpus_set": given("cpus"),  # asked for (-c): rules' defaults and learned requests leave it alone
        "groups": groups and list(groups), "cwd_fs": fs and dict(fs), "array": spec.get("array"),
        "umask": _whole_field(spec, "umask", None, lambda v: 0 <= v <= 0o777, "a umask from 0 to 0o777"),
        "time": given("time") and _number(spec, "time", 0, values.MAX_TIME) or None,  # (0: no limit, as Slurm's -t 0)
        "time_signal": sig,
        "lease": given("lease") and _number(spec, "lease", 0, values.MAX_TIME) or None,  # (0: none; else 1 s at least, below)
        **{f"{stream}_file": _text(spec, f"{stream}_file", MAX_PATH) for stream in ("stdout", "stderr")},
        **{f"{stream}_append": bool(spec.get(f"{stream}_append")) if spec.get(f"{stream}_file") else None
           for stream in ("stdout", "stderr")},  # (set with its file only)
        "stage": stage or None,
        **{key: _paths(spec, key) or None for key in ("inputs", "outputs", "needs", "appends", "stage_in", "stage_out")},
        "make": bool(spec.get("make")) or None,  # the node renames its outputs FILE.failed when it fails
        **{kind: job_refs(spec[kind], kind) if spec.get(kind) else None for kind in DEP_KINDS},
        "retries": _whole_field(spec, "retries", None, lambda v: 0 <= v <= MAX_RETRIES, f"0 to {MAX_RETRIES}"),
        "retry_delay": given("retry_delay") and float(_number(spec, "retry_delay", 0, values.MAX_TIME)),
        "wrap": _text(spec, "wrap", MAX_PATH),
        "hold": bool(spec.get("hold")) or None,
    }
    out.update((key, value) for key, value in optional.items() if value is not None)
    # (renewed every lease / 3: a lease of a few ms killed a live caller's calls)
    require(out.get("lease", 1) >= 1, f"lease must be 0 (none) or at least 1 s, got {spec.get('lease')!r}")
    return out


def job_name(name: str | None) -> str | None:
    """A job's name (-j), taken where ids are: not one that reads as an id (65, 12.3), nor with a comma, glob, blank."""
    if name is not None and (name.replace(".", "", 1).isdigit() or any(c in ",*?[]" or c.isspace() for c in name)):
        raise ValueError(f"bad job name {name!r}: a name is not a number and has no blank or any of , * ? [ ]")
    return name


def job_refs(refs, what: str = "dependencies") -> list:
    """Jobs named by id (12), array task ("12.7") or name: a list, or the command line's "12,13,build"."""
    if isinstance(refs, str):
        refs = [r.strip() for r in refs.split(",") if r.strip()]
    require(isinstance(refs, list) and len(refs) <= MAX_REFS,
            f"{what} must be a list of at most {MAX_REFS} job ids or names")
    refs = [int(ref) if isinstance(ref, str) and ref.isdigit() else ref for ref in refs]
    for ref in refs:
        if isinstance(ref, bool) or not (ref > 0 if isinstance(ref, int) else isinstance(ref, str) and
                                         0 < len(ref) <= MAX_NAME and "\n" not in ref):
            raise ValueError(f"{what}: bad job id or name {ref!r}")
    return refs


def _paths(spec: dict, key: str) -> list[str]:
    paths = spec.get(key) or []
    require(isinstance(paths, list) and len(paths) <= MAX_FILES and all(
        isinstance(p, str) and p.startswith("/") and "\0" not in p and len(p) <= MAX_PATH for p in paths),
        f"{key} must be a list of at most {MAX_FILES} absolute paths")
    return list(paths)


EDIT_ALIASES = {"r": "priority", "c": "cpus", "m": "memory", "hosts": "host", "H": "host", "t": "time"}


def parse_edit(changes: object) -> dict:
    """`grun -e KEY=VALUE,...` (values typed, or strings) as changes to the request (`p.NAME=`: a param removed)."""
    parsers = {"priority": values.parse_job_priority, "cpus": parse_cpus, "memory": values.parse_memory, "host": lambda v: str(v).strip() or None,
               "time": values.parse_time_limit, **dict.fromkeys(DEP_KINDS, job_refs),
               "force": lambda v: v is True or str(v).strip().lower() in ("1", "yes", "true")}  # as --force at submit
    require(isinstance(changes, dict) and changes, "an edit needs KEY=VALUE changes")
    out: dict = {}
    for raw_key, value in changes.items():
        key = str(raw_key).strip()
        field, param = EDIT_ALIASES.get(key, key), key.startswith(("p.", "param."))
        require(param or field in parsers,
                f"cannot edit {key!r}: use priority, cpus, memory, time, hosts, after(ok|notok), p.NAME or force")
        try:
            if param:  # (a string is read as -p reads it; an empty one removes the param)
                text = value.strip() if isinstance(value, str) else value
                out.setdefault("params", {})[key.split(".", 1)[1]] = number_or_text(text) if text != "" else None
            else:
                out[field] = parsers[field](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {key}: {exc}") from None
    return out


def exit_code_of(result: dict) -> int:
    """The code a local shell would give: the exit status, 128+N for signal N, EXIT_TIMEOUT at its time limit; a job
    that never started: 128+N if it was killed (kill_signal), else 1 (cancelled): it did not succeed."""
    if result.get("limit") == "time":
        return EXIT_TIMEOUT
    if result.get("signal") or result.get("kill_signal"):
        return 128 + int(result.get("signal") or result["kill_signal"])
    code = result.get("exit_code", 1)
    return 1 if code is None else int(code) & 0xFF


def describe_exit(result: dict) -> str:
    """The EXIT of history: a limit's word, the signal, the exit status; "-" for a job that never started."""
    if result.get("limit") in LIMIT_WORDS:
        return LIMIT_WORDS[result["limit"]]
    if result.get("signal"):
        return f"signal {result['signal']}"
    return "-" if "exit_code" in result and result["exit_code"] is None else str(result.get("exit_code", "?"))


def never_started(status: str, signal: int | None, reason: str) -> dict:
    """The result of a job that ends before it ever ran: no exit status (Slurm's 0:0), its kill_signal, and why."""
    return {"status": status, "exit_code": None, **({"kill_signal": signal} if signal else {}), "reason": reason}


def public_view(job: dict) -> dict:
    """What queries return: everything but the environment, which can be large and private."""
    return {k: v for k, v in job.items() if k != "env"}


def as_submitter(spec, who: dict):
    """A user's submission with the identity their credential proved (grun.auth); claiming another's is refused."""
    if not isinstance(spec, dict):
        return spec
    if spec.get("uid") not in (None, who["uid"]):
        raise ValueError(f"not authorized: you are uid {who['uid']} ({who['user']}), not uid {spec['uid']}")
    return {**spec, **{k: who[k] for k in ("uid", "gid", "groups", "umask", "user")}}


def lent_only_inside(req: dict, who: dict) -> None:
    """A user's job borrows its parent's reservation only if their credential vouches they run in it (grun.auth.who)."""
    if (parent := req["parent"]) not in (None, who["job"]):  # (said: the nested grun may wait for room of its own)
        req["parent"], said = None, f"GRUN_JOB_ID {parent}: this grun does not run inside job {parent}: nothing lent"
        req.setdefault("warnings", []).append(said)


def job_number(raw) -> int | None:
    """The job (or array) a reference like 12 or "12.7" names, or None."""
    with contextlib.suppress(TypeError, ValueError):
        return int(str(raw).partition(".")[0])
    return None


def parse_job_id(raw) -> int:
    """A job id from the wire; a ValueError (which Pyro5 clients rebuild) for anything else."""
    with contextlib.suppress(TypeError, ValueError):
        if (job_id := int(raw)) > 0:
            return job_id
    raise ValueError(f"bad job id {raw!r}")


def history_filter(user: str | None, grep: str | None, array: int = 0):
    """A predicate for `grun -q history -u USER -g REGEX` (command line, or name) and an array's tasks; None: every job."""
    if not (user or grep or array):
        return None
    try:
        pattern = re.compile(str(grep)) if grep else None
    except re.error as exc:
        raise ValueError(f"bad regular expression {grep!r}: {exc}") from None

    def keep(job: dict) -> bool:
        cmd = job.get("cmd") or []
        return (not user or job.get("user") == user) and array in (0, job.get("array")) and (pattern is None or bool(
            pattern.search(cmd[0] if job.get("shell") and cmd else " ".join(cmd)) or pattern.search(job.get("name") or "")))
    return keep
