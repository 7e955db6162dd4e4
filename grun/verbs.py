"""The one verb table: every command the `grun` command line and `grun shell` run.

A verb has a name, aliases, a one-line help, a usage line, a parser (words -> args dict, raising
UsageError) and a function `run(client, args, io) -> exit code`. The command line maps its forms onto
the table (`grun CMD` is `run`, `--nowait` is `submit`, `-q jobs|status|history|wait` the verbs of the
same names, `-k` is `kill`); the shell runs the same verbs by name. Adding a verb is one entry in VERBS.

This module talks to the cluster only through the client it is handed (`grun.client.Client`) and
imports nothing heavy at import time, so the command line stays quick to start.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import NamedTuple, TextIO

from .options import OPTIONS, UsageError
from .options import parse as parse_options

SHELL_CHARS = set(" \t\n|&;<>()$`\\\"'*?[]#~=%{}")

# Command-line options that are not about the job a verb runs: refused after `run`/`submit` in the shell.
NOT_JOB_OPTIONS = {"query", "kill", "daemon", "foreground", "config", "help", "version", "signal",
                   "attach", "tail", "restart", "reload"}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


class IO:
    """Where a verb writes: text streams for tables and messages, file descriptors for a job's bytes.

    `cli` says the verb runs as the one-shot command line (it may install signal handlers and owns the
    process); the shell runs verbs with `cli=False` and `stdin_fd=None`.
    (IO and Verb are not dataclasses: `dataclasses` imports `inspect`, ~5 ms of every `grun CMD`.)
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, stdin_fd: int | None = None,
                 stdout_fd: int = 1, stderr_fd: int = 2, cli: bool = False):
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.stdin_fd, self.stdout_fd, self.stderr_fd, self.cli = stdin_fd, stdout_fd, stderr_fd, cli

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def say(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    def fail(self, message: str, code: int = 1) -> int:
        self.say(f"grun: {message}")
        return code


class Verb(NamedTuple):
    name: str
    help: str                                       # one line
    usage: str                                      # the arguments, after the verb's name
    run: Callable[..., int]                         # (client, args, io) -> exit code
    parse: Callable[[list[str], str], dict]         # (words, how the verb was called) -> args
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = ()                   # offered by the shell's completion
    completes: str = ""                             # what its arguments are: "jobs", "command" or ""
    needs_client: bool = True


# ---- formatting ------------------------------------------------------------------------------

def command_text(job: dict) -> str:
    import shlex
    cmd = job.get("cmd") or []
    return cmd[0] if job.get("shell") else shlex.join(cmd)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    lines = []
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)


def fmt_secs(secs) -> str:
    if secs is None:
        return "-"
    secs = float(secs)
    if secs < 60:
        return f"{secs:.2f}s"
    minutes, s = divmod(int(secs), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


def exit_text(job: dict) -> str:
    from .core.jobs import LIMIT_WORDS
    if job.get("limit") in LIMIT_WORDS:
        return LIMIT_WORDS[job["limit"]]
    if job.get("signal"):
        return f"sig{job['signal']}"
    return str(job.get("exit", job.get("exit_code", "-")))


def jobs_table(jobs: list[dict]) -> str:
    """Queued and running jobs; USING is what a running job's processes use now, as its node last
    sampled them (cpus busy, resident MB)."""
    rows = [[j["id"], j.get("user", "-"), j["state"], j.get("node") or "-", f"{j['cpus']:g}",
             j["memory"], _using(j), j.get("cwd", "-"), command_text(j)] for j in jobs]
    return table(rows, ["ID", "USER", "STATE", "NODE", "CPUS", "MEM", "USING", "CWD", "COMMAND"])


def _using(job: dict) -> str:
    now = job.get("usage_now")
    if not now:
        return "-"
    return f"{now.get('cpu', 0):g}c/{now.get('rss_mb', 0)}M"


def nodes_table(nodes: list[dict]) -> str:
    rows = [[n["name"], "up" if n["up"] else "down", f"{n['free_cpus']:g}/{n['cpus']:g}",
             f"{n['free_memory']}/{n['memory']}", n["running"]] for n in nodes]
    return table(rows, ["NODE", "STATE", "CPUS(free/total)", "MEM_MB(free/total)", "JOBS"])


def history_table(jobs: list[dict]) -> str:
    rows = []
    for j in reversed(jobs):
        u = j.get("usage") or {}
        cpu = (u.get("utime") or 0) + (u.get("stime") or 0) if u else None
        rows.append([j["id"], j.get("user", "-"), exit_text(j), j.get("node") or "-", fmt_secs(queue_wait(j)),
                     fmt_secs(u.get("wall")), fmt_secs(cpu), fmt_mb(u.get("maxrss_kb")), command_text(j)])
    return table(rows, ["ID", "USER", "EXIT", "NODE", "WAIT", "WALL", "CPU", "MAXRSS", "COMMAND"])


def queue_wait(job: dict):
    """Seconds from submission to its (last) start on a node."""
    if job.get("queue_wait") is not None:
        return job["queue_wait"]
    started = job.get("start_time") or job.get("dispatch_time")
    return None if not started or not job.get("submit_time") else max(0.0, started - job["submit_time"])


def fmt_mb(kb) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}M"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def history_long(jobs: list[dict]) -> str:
    """`-q history --long`: every recorded field of each job, a block per job."""
    import time as _time
    blocks = []
    for j in reversed(jobs):
        u = j.get("usage") or {}
        when = lambda t: _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t)) if t else "-"
        lines = [f"job {j['id']}{' (' + j['name'] + ')' if j.get('name') else ''}: {j.get('state')}, "
                 f"exit {exit_text(j)}{', signal ' + str(j['signal']) if j.get('signal') else ''}",
                 f"  command   {command_text(j)}",
                 f"  user      {j.get('user', '-')}   cwd {j.get('cwd', '-')}",
                 f"  node      {j.get('node') or '-'}   attempt {j.get('attempt', '-')}",
                 f"  request   {j.get('cpus', 0):g} cpus, {j.get('memory')} MB, priority {j.get('priority')}"
                 + "".join(f", {k}={v}" for k, v in sorted((j.get("params") or {}).items())),
                 f"  times     submitted {when(j.get('submit_time'))}, waited {fmt_secs(queue_wait(j))}, "
                 f"ran {fmt_secs(u.get('wall'))}, ended {when(j.get('end_time'))}",
                 f"  cpu       user {fmt_secs(u.get('utime'))}, system {fmt_secs(u.get('stime'))}",
                 f"  memory    max rss {fmt_mb(u.get('maxrss_kb'))}"
                 + (f", limit {j['limits'].get('memory_mb')} MB" if (j.get("limits") or {}).get("memory_mb") else ""),
                 f"  io        read {fmt_bytes(u.get('read_bytes'))}, written {fmt_bytes(u.get('write_bytes'))}"]
        if j.get("limit"):
            lines.append(f"  limit     {j['limit']} ({exit_text(j)}): {j.get('limit_detail') or ''}".rstrip())
        if j.get("error"):
            lines.append(f"  error     {j['error']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---- parsers ---------------------------------------------------------------------------------

def _no_args(words: list[str], called: str) -> dict:
    if words:
        raise UsageError(f"{called} takes no arguments, got {' '.join(words)}")
    return {}


def job_ids(words: list[str], called: str) -> list[int]:
    if not words:
        raise UsageError(f"{called} needs job ids")
    ids = []
    for w in words:
        if not w.isdigit() or int(w) == 0:
            raise UsageError(f"bad job id {w!r}")
        ids.append(int(w))
    return ids


def _ids(words: list[str], called: str) -> dict:
    return {"ids": job_ids(words, called)}


def _one_id(words: list[str], called: str) -> dict:
    ids = job_ids(words, called)
    if len(ids) != 1:
        raise UsageError(f"{called} takes one job id")
    return {"id": ids[0]}


def _job_command(words: list[str], called: str) -> dict:
    """`[options] COMMAND [ARGS...]`, with the command line's job options."""
    opts, cmd = parse_options(words)
    wrong = sorted(set(opts) & NOT_JOB_OPTIONS)
    if wrong:
        raise UsageError(f"option --{wrong[0]} does not go with {called}")
    if not cmd and "cmds" not in opts:
        raise UsageError(f"{called} needs a command")
    return {"opts": opts, "cmd": cmd}


def _history_args(words: list[str], called: str) -> dict:
    out, i = {}, 0
    while i < len(words):
        a = words[i]
        if a in ("-c", "--count") and i + 1 < len(words) and words[i + 1].isdigit():
            out["count"] = int(words[i + 1])
            i += 1
        elif a == "--user" and i + 1 < len(words):
            out["user"] = words[i + 1]
            i += 1
        elif a == "--json":
            out["json"] = True
        elif a in ("-l", "--long"):
            out["long"] = True
        elif a in ("-g", "--grep") and i + 1 < len(words):
            out["grep"] = words[i + 1]
            i += 1
        else:
            raise UsageError(f"unknown history option {a!r}")
        i += 1
    return out


def _kill_args(words: list[str], called: str) -> dict:
    from .options import _signal
    out, ids_words, i = {}, [], 0
    while i < len(words):
        if words[i] == "--force":
            out["force"] = True
            i += 1
            continue
        if words[i] in ("-n", "--signal") and i + 1 < len(words):
            try:
                out["signal"] = _signal(words[i + 1])
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            i += 2
            continue
        ids_words.append(words[i])
        i += 1
    out["ids"] = job_ids(ids_words, called)
    return out


def _edit_args(words: list[str], called: str) -> dict:
    """`key=val[,key=val] ID...`"""
    if not words or "=" not in words[0]:
        raise UsageError(f"usage: {called} KEY=VALUE[,KEY=VALUE] ID...")
    changes = {}
    for item in words[0].split(","):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"bad change {item!r}: expected KEY=VALUE")
        changes[key.strip()] = value.strip()
    return {"changes": changes, "ids": job_ids(words[1:], called)}


# ---- running jobs ----------------------------------------------------------------------------

def build_spec(opts: dict, words: list[str]) -> dict:
    """The job spec for `grun [options] COMMAND...`: one shell string or an argv, run here and as us."""
    from .client import current_user, default_env
    shell = len(words) == 1 and any(c in SHELL_CHARS for c in words[0])
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    spec = {"cmd": list(words), "shell": shell, "cwd": cwd, "env": default_env(opts.get("env")),
            "user": current_user(), "uid": os.getuid(), "gid": os.getgid()}
    for key in ("cpus", "memory", "priority"):
        if key in opts:
            spec[key] = opts[key]
    if "hosts" in opts:
        spec["host"] = opts["hosts"]
    if opts.get("norequeue"):
        spec["requeue"] = False
    if "priority" not in opts and os.environ.get("GRUN_PRIORITY", "").lstrip("-").isdigit():
        spec["priority"] = int(os.environ["GRUN_PRIORITY"])
    spec.update(_job_extras(opts))
    return spec


# option -> (streams, append)
OUTPUT_OPTIONS = {"out": (("stdout",), False), "err": (("stderr",), False), "out_err": (("stdout", "stderr"), False),
                  "out_append": (("stdout",), True), "err_append": (("stderr",), True),
                  "out_err_append": (("stdout", "stderr"), True)}


def _job_extras(opts: dict) -> dict:
    """Custom resources, a name, output files, --force, and the job we run inside, if any (nested
    grun: GRUN_JOB_ID is set in every job's environment)."""
    spec: dict = {}
    if opts.get("params"):
        spec["params"] = dict(opts["params"])
    if opts.get("name"):
        spec["name"] = opts["name"]
    if opts.get("force"):
        spec["force"] = True
    for option, (streams, append) in OUTPUT_OPTIONS.items():
        if not opts.get(option):
            continue
        for stream in streams:
            if f"{stream}_file" in spec:
                raise UsageError(f"the job's {stream} is sent to two files; give one of -o, --err, --out-err")
            spec[f"{stream}_file"], spec[f"{stream}_append"] = opts[option], append
    parent = os.environ.get("GRUN_JOB_ID", "")
    if parent.isdigit() and int(parent) > 0:
        spec["parent"] = int(parent)
    return spec


def _submit(client, args: dict, io: IO) -> int:
    if "array" in args["opts"] or "cmds" in args["opts"]:
        return _run_many(client, args, io)
    job_id = client.submit_spec(build_spec(args["opts"], args["cmd"]))
    io.print(f"Job_ID: {job_id}")
    return 0


# ---- many jobs at once: --array IDS and --cmds FILE -------------------------------------------------

SUBMIT_BATCH = 1000  # specs per submit_many call: one disk commit on the master each


def _task_specs(opts: dict, words: list[str], io: IO) -> list[dict]:
    """One spec per task: the same command with $GRUN_TASK_ID set (--array), or one per line of a file
    (--cmds, GRUN_TASK_ID = the line number). %a in output file names becomes the task id."""
    if "array" in opts and "cmds" in opts:
        raise UsageError("give --array or --cmds, not both")
    if opts.get("name") or opts.get("wait_existing"):
        raise UsageError("-j/-W name one job; they do not go with --array or --cmds")
    if "cmds" in opts:
        if words:
            raise UsageError(f"--cmds takes its commands from {opts['cmds']}; unexpected: {' '.join(words)}")
        tasks = [(number, [line]) for number, line in _command_lines(opts["cmds"], io)]
        if not tasks:
            raise UsageError(f"no commands in {opts['cmds']}")
    else:
        tasks = [(task, words) for task in opts["array"]]
    base = build_spec(opts, tasks[0][1])
    specs = []
    for task, cmd in tasks:
        spec = dict(base, cmd=list(cmd), env=dict(base["env"], GRUN_TASK_ID=str(task)))
        if "cmds" in opts:
            spec["shell"] = True  # a line is a shell command line, like a line of a script
        for key in ("stdout_file", "stderr_file"):
            if key in spec:
                spec[key] = spec[key].replace("%a", str(task))
        specs.append(spec)
    return specs


def _command_lines(path: str, io: IO) -> list[tuple[int, str]]:
    """The non-blank, non-comment lines of a file (or stdin for '-'), with their line numbers."""
    try:
        if path == "-":
            if io.stdin_fd is None:
                raise UsageError("--cmds -: no standard input to read commands from")
            with os.fdopen(os.dup(io.stdin_fd), encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
    except OSError as exc:
        raise UsageError(f"--cmds {path}: {exc.strerror or exc}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _run_many(client, args: dict, io: IO) -> int:
    """--array / --cmds: submit every task in batches (one master call and one disk commit per
    SUBMIT_BATCH), print each job id; without --nowait, wait for them all and exit with the first
    non-zero exit code, in task order. Their output is not streamed: -o/--err with %a keep it."""
    opts = args["opts"]
    specs = _task_specs(opts, args["cmd"], io)
    ids: list[int] = []
    try:
        for start in range(0, len(specs), SUBMIT_BATCH):
            batch = client.submit_many(specs[start:start + SUBMIT_BATCH])
            ids.extend(batch)
            if opts.get("nowait") or opts.get("verbose"):
                io.print("\n".join(f"Job_ID: {i}" for i in batch))
        if opts.get("nowait"):
            return 0
        failed = []
        for job_id in ids:  # one by one: each wait is O(1) on the master, a wait on all is O(jobs)
            final = client.wait([job_id])[job_id]
            if int(final.get("exit", 1)):
                failed.append((job_id, int(final.get("exit", 1))))
    except KeyboardInterrupt:
        return _interrupted_many(client, ids, io)
    if failed:
        shown = ", ".join(f"{i} (exit {code})" for i, code in failed[:10]) + (", ..." if len(failed) > 10 else "")
        io.say(f"grun: {len(failed)} of {len(ids)} jobs failed: {shown}")
        return failed[0][1]
    return 0


def _interrupted_many(client, ids: list[int], io: IO) -> int:
    if ids:
        from .client import Client, GrunError
        try:
            Client(client.host, client.port, connect_wait=5.0).kill(ids, signal.SIGINT)
        except GrunError as exc:
            io.say(f"grun: could not kill jobs {ids[0]}-{ids[-1]}: {exc}")
        io.say(f"grun: {len(ids)} jobs killed")
    return 130


def _raise_terminated(*_):
    raise Terminated()


def _run(client, args: dict, io: IO) -> int:
    opts = args["opts"]
    if opts.get("wait_existing") and not opts.get("name"):
        raise UsageError("-W waits for the job named by -j NAME; give -j too")
    if opts.get("nowait") or "array" in opts or "cmds" in opts:
        return _submit(client, args, io)
    if opts.get("wait_existing"):
        return _run_or_wait_named(client, args, io)
    return _run_new(client, args, io)


def _run_or_wait_named(client, args: dict, io: IO) -> int:
    """`-j NAME -W`: if a job of that name is live, wait for it and exit with its code; else run."""
    from .client import GrunError
    name = args["opts"]["name"]
    for _ in range(5):
        existing = client.lookup(name)
        if existing is not None:
            if args["opts"].get("verbose"):
                io.say(f"grun: job {existing} is named {name}: waiting for it")
            return wait_code(client, existing, io)
        try:
            return _run_new(client, args, io)
        except GrunError as exc:
            if "already exists" not in str(exc):
                raise  # else: it was submitted meanwhile; wait for that one
    raise GrunError(f"cannot submit or find the job named {name!r}")


def wait_code(client, job_id: int, io: IO) -> int:
    """Wait for a job without its output; say on stderr if it died of a limit; return its code."""
    from . import limits
    final = client.wait([job_id])[job_id]
    note = limits.describe(final, job_id)
    if note:
        io.say(f"grun: {note}")
    return int(final.get("exit", 1))


def _run_new(client, args: dict, io: IO) -> int:
    opts = args["opts"]
    spec = build_spec(opts, args["cmd"])
    state = {"id": None}

    def on_submit(job_id):
        state["id"] = job_id
        if opts.get("verbose"):
            io.say(f"grun: job {job_id} queued")

    def on_start(job):
        if opts.get("verbose"):
            io.say(f"grun: job {job['id']} {job['state']} on {job.get('node') or '-'}")

    if io.cli:
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background by a script
    io.out.flush()
    try:
        if opts.get("noio"):  # no streams: submit, say when it starts if asked, wait for its code
            on_submit(client.submit_spec(spec))
            if opts.get("verbose"):
                on_start(client.wait_started(state["id"]))
            return wait_code(client, state["id"], io)
        return client.run(spec, stdin_fd=io.stdin_fd, stdout_fd=io.stdout_fd, stderr_fd=io.stderr_fd,
                          on_submit=on_submit, on_start=on_start, on_limit=lambda m: io.say(f"grun: {m}"),
                          on_note=lambda m: io.say(f"grun: {m}"))
    except KeyboardInterrupt:
        return _interrupted(client, state["id"], signal.SIGINT, 130, io)
    except Terminated:
        return _interrupted(client, state["id"], signal.SIGTERM, 143, io)
    except BrokenPipeError:
        return _interrupted(client, state["id"], signal.SIGPIPE, 141, io, quiet=True)


def _interrupted(client, job_id, sig, code, io: IO, quiet=False) -> int:
    if io.cli:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if job_id is not None:
        from .client import Client, GrunError
        try:
            Client(client.host, client.port, connect_wait=5.0).kill([job_id], sig)
        except GrunError as exc:
            io.say(f"grun: could not kill job {job_id}: {exc}")
    if not quiet:
        io.say(f"grun: job {job_id} killed" if job_id else "grun: interrupted")
    try:
        io.out.flush()
    except BrokenPipeError:
        pass
    return code


def _attach_args(words: list[str], called: str) -> dict:
    tail = "--tail" in words
    args = _one_id([w for w in words if w != "--tail"], called)
    args["tail"] = tail
    return args


def _attach(client, args: dict, io: IO) -> int:
    io.out.flush()
    try:
        return client.follow(args["id"], stdout_fd=io.stdout_fd, stderr_fd=io.stderr_fd,
                             tail=args.get("tail", False), on_note=lambda m: io.say(f"grun: {m}"))
    except KeyboardInterrupt:
        io.say(f"grun: detached from job {args['id']} (it keeps running)")
        return 130


# ---- queries and control ---------------------------------------------------------------------

def _jobs(client, args: dict, io: IO) -> int:
    io.print(jobs_table(client.jobs()))
    return 0


def _status(client, args: dict, io: IO) -> int:
    io.print(nodes_table(client.nodes()))
    return 0


def _history(client, args: dict, io: IO) -> int:
    jobs = client.history(args.get("count", 20), args.get("user"), args.get("grep"))
    if args.get("json"):
        import json
        io.print(json.dumps(jobs, indent=1, sort_keys=True))
    elif args.get("long"):
        io.print(history_long(jobs))
    else:
        io.print(history_table(jobs))
    return 0


def _wait(client, args: dict, io: IO) -> int:
    ids = args["ids"]
    done = client.wait(ids)
    codes = [int(done[i].get("exit", 1)) for i in ids]
    return next((c for c in codes if c), 0)


def _report_missing(found: dict, io: IO) -> int:
    missing = [i for i, ok in found.items() if not ok]
    for job_id in missing:
        io.say(f"grun: no such job {job_id}")
    return 1 if missing else 0


def _kill(client, args: dict, io: IO) -> int:
    return _report_missing(client.kill(args["ids"], args.get("signal", signal.SIGTERM), args.get("force", False)), io)


def _hold(client, args: dict, io: IO) -> int:
    return _report_missing(client.hold(args["ids"]), io)


def _resume(client, args: dict, io: IO) -> int:
    return _report_missing(client.resume(args["ids"]), io)


def _edit(client, args: dict, io: IO) -> int:
    return _report_missing(client.edit(args["ids"], args["changes"]), io)


def _why(client, args: dict, io: IO) -> int:
    io.print(client.why(args["id"]))
    return 0


def _opts(*names: str) -> tuple[str, ...]:
    return names


_JOB_OPTIONS = tuple(f"--{o.long}" for o in OPTIONS if o.dest not in NOT_JOB_OPTIONS)

VERBS: list[Verb] = [
    Verb("run", "run a command on the cluster and stream its output", "[options] COMMAND [ARGS...]",
         _run, _job_command, options=_JOB_OPTIONS, completes="command"),
    Verb("submit", "queue a command and print its job id", "[options] COMMAND [ARGS...]",
         _submit, _job_command, aliases=("sub",), options=_JOB_OPTIONS, completes="command"),
    Verb("jobs", "the queued and running jobs", "", _jobs, _no_args, aliases=("j",)),
    Verb("status", "the nodes: state, free cpus and memory, running jobs", "", _status, _no_args,
         aliases=("nodes", "s")),
    Verb("history", "finished jobs, newest last: exit, node, queue wait, wall, cpu, memory",
         "[-c COUNT] [--user USER] [-g REGEX] [--long|--json]", _history,
         _history_args, aliases=("hist", "h"), options=_opts("--count", "--user", "--json", "--long", "--grep")),
    Verb("wait", "wait until jobs finish; exits with the first non-zero code", "ID...", _wait, _ids,
         completes="jobs"),
    Verb("kill", "kill jobs (queued or running)", "[-n SIG] [--force] ID...", _kill, _kill_args,
         options=_opts("--signal", "--force"), completes="jobs"),
    Verb("hold", "hold queued jobs, suspend running ones", "ID...", _hold, _ids, completes="jobs"),
    Verb("resume", "release held jobs, continue suspended ones", "ID...", _resume, _ids, completes="jobs"),
    Verb("edit", "change queued jobs: priority, cpus, memory, hosts, params", "KEY=VALUE[,KEY=VALUE] ID...",
         _edit, _edit_args, completes="jobs"),
    Verb("attach", "stream a job's output (from the start, or --tail: from now) and its exit code; "
         "Ctrl-C detaches", "[--tail] ID", _attach, _attach_args, options=_opts("--tail"), completes="jobs"),
    Verb("why", "why a queued job is not running", "ID", _why, _one_id, completes="jobs"),
]

BY_NAME: dict[str, Verb] = {}
for _v in VERBS:
    for _n in (_v.name, *_v.aliases):
        BY_NAME[_n] = _v


def find(name: str) -> Verb | None:
    return BY_NAME.get(name)


def add(verb: Verb) -> None:
    """Add a verb to the table (for the shell's own verbs and plugins)."""
    VERBS.append(verb)
    for n in (verb.name, *verb.aliases):
        BY_NAME[n] = verb


def usage(verb: Verb) -> str:
    """A few lines for `help VERB`: the usage, the help line, the aliases."""
    lines = [f"{verb.name} {verb.usage}".rstrip(), f"    {verb.help}"]
    if verb.aliases:
        lines.append(f"    aliases: {', '.join(verb.aliases)}")
    return "\n".join(lines)
