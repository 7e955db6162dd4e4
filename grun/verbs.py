"""The verbs: every command `grun` and `grun shell` run, each `do_NAME(ctx, args) -> exit code` declared with
`@verb` (its docstring its help), and `execute`, the one dispatcher of the shell's lines and the command line's
forms (`grun -k 3` runs `kill 3`); and the verbs that query and control jobs (those that run them are
grun.running's). On the path of every `grun CMD`: nothing heavy is imported at import time."""

import os
import sys
from collections import namedtuple
from functools import cached_property

from .cli import say, show
from .client import GrunError, JobNotFound, current_user, known_user, refusals
from .options import EXIT_USAGE, JOB_OPTIONS, UsageError, load_option_file
from .options import parse as parse_options
from .values import task_ref

SHELL_CHARS = set(" \t\n|&;<>()$`\\\"'*?[]#~=%{}")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


class Context:
    """What a verb works with: where it writes (text streams for tables and messages; a job's bytes go to file
    descriptors 1 and 2), the input a job may read (`stdin_fd`), the config, and the client, connected on first use
    (`conf` needs no master). `cli`: the one-shot command line, which owns the process (its signal handlers)."""

    def __init__(self, connect, cfg=None, out=None, err=None, stdin_fd: int | None = None, cli: bool = False):
        self.connect, self.cfg, self.cli, self.stdin_fd = connect, cfg, cli, stdin_fd
        self.out, self.err = out or sys.stdout, err or sys.stderr

    @cached_property
    def client(self):
        return self.connect()

    def print(self, text: str = "", end: str = "\n") -> int:
        """`text` on our output; returns 0 (a verb that shows something ends `return ctx.print(...)`)."""
        return show(text, end, self.out)

    def say(self, message: str, code: int = 1) -> int:
        """A message for the user, "grun: MESSAGE" on stderr; returns `code` (for a verb that fails)."""
        return say(message, code, self.err)


# ---- the table and the dispatcher ----------------------------------------------------------------

Verb = namedtuple("Verb", "name run help usage options words aliases")
# by name, in help's order: grun.running's first, whichever of it and this module is imported first
VERBS: dict[str, Verb] = dict.fromkeys(("run", "submit", "attach"))
NAMES: dict[str, Verb] = {}  # by name and alias


def verb(usage: str = "", options: str | tuple = (), words=None, aliases: str = ""):
    """Declare `do_NAME(ctx, args)` a verb: its usage line, the long names of the options it takes,
    how its other words are read ((words, called, options) -> args; default: none), its aliases."""
    def declare(run):
        v = Verb(run.__name__.removeprefix("do_"), run, " ".join(run.__doc__.split()), usage,
                 tuple(options.split() if isinstance(options, str) else options), words or no_words,
                 tuple(aliases.split()))
        VERBS[v.name] = v
        NAMES.update(dict.fromkeys((v.name, *v.aliases), v))
        return run
    return declare


def parse(v: Verb, words: list[str], called: str | None = None, preset: dict | None = None) -> dict:
    """A verb's args from its words, and from the options the command line read already (`preset`)."""
    called, preset = called or v.name, preset or {}
    if wrong := sorted(set(preset) - set(v.options)):
        raise UsageError(f"option --{wrong[0]} does not go with {called}")
    opts, rest = parse_options(words, v.options, called, interspersed=v.words is not command)
    args = {**preset, **opts}
    args.update(v.words(rest, called, args))
    return args


def execute(ctx: Context, words: list[str], called: str | None = None, preset: dict | None = None,
            adjust=lambda v, args: None) -> int:
    """Run one verb (`words[0]`) with its words; every failure a user can cause is one line and an exit
    status. `adjust(verb, args)` may rework the args first (the shell keeps a command's shell syntax)."""
    try:
        if (v := NAMES.get(words[0])) is None:
            raise UsageError(f"unknown verb {words[0]!r} (try: help)")
        args = parse(v, words[1:], called, preset)
        adjust(v, args)
        code = v.run(ctx, args)
    except UsageError as exc:
        return ctx.say(str(exc), EXIT_USAGE)
    except (GrunError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # our reader went away: the shell or the command line ends quietly
        return ctx.say(str(exc))
    except KeyboardInterrupt:
        code = 130
        if not ctx.cli:
            ctx.say("interrupted")
    if code == 130 and "client" in vars(ctx):  # (connected) after Ctrl-C a call may be cut off mid-reply
        ctx.client.reset()
    return code


# ---- readers of a verb's words -------------------------------------------------------------------

def no_words(words: list[str], called: str, opts: dict) -> dict:
    if words:
        raise UsageError(f"{called} takes no arguments, got {' '.join(words)}")
    return {}


def one_id(words: list[str], called: str, opts: dict) -> dict:
    """`ID|NAME`: one job (12), task (12.7) or name."""
    if len(words) != 1:
        raise UsageError(f"{called} takes one job id or name" if words else f"{called} needs job ids")
    return ids_or_name(words, called, opts)


def ids_or_name(words: list[str], called: str, opts: dict) -> dict:
    """`ID|NAME...`: a word not a job id (12) or task (12.7) names a job (kill's `-j NAME` may stand alone)."""
    names = [w for w in words if not (w.isdecimal() or task_ref(w))]
    if not (words or opts.get("name") or opts.get("user")):
        raise UsageError(f"{called} needs job ids")
    if bad := next((w for w in words if w.isdecimal() and not int(w)), None):
        raise UsageError(f"bad job id {bad!r}")
    return {"ids": [int(w) if w.isdecimal() else w for w in words if w not in names],
            "names": names + ([opts["name"]] if opts.get("name") else [])}


def kill_ids(words: list[str], called: str, opts: dict) -> dict:
    """kill's ids_or_name: its --user is all that user's jobs, none named (jobs' and history's, a filter of them)."""
    if opts.get("user") and (words or opts.get("name")):
        raise UsageError(f"{called} --user takes all that user's jobs: give no job ids or names with it")
    return ids_or_name(words, called, opts)


def by_name(ctx: Context, args: dict, finished: bool = False) -> list:
    """The ids (a task's `12.7` as it is), and those of the jobs named: ours, live (`finished`: or newest finished),
    else, root's and admins', anyone's live one (the master's lookup: a name more users have is an error). Not
    `finished`, a glob (`bulk*`: no name has * ? [) names all our live jobs it matches (root's, if none: anyone's)."""
    ids = list(args.get("ids", ()))
    for name in args.get("names", ()):
        glob = not finished and any(c in name for c in "*?[")
        found = ctx.client.call("matching", name, current_user()) if glob else \
            ctx.client.lookup(name, current_user(), finished, True)
        if not found:  # (None, or no match; no job's id is 0)
            raise GrunError(f"no job named {name!r}" if found is None else f"no live job's name matches {name!r}")
        ids += found if glob else [int(found)]
    return ids


def changes(words: list[str], called: str, opts: dict) -> dict:
    """`KEY=VALUE[,KEY=VALUE] ID...`"""
    if not words or "=" not in words[0]:
        raise UsageError(f"usage: {called} KEY=VALUE[,KEY=VALUE] ID...")
    found, key = {}, None
    for item in words[0].split(","):
        if "=" not in item and key in ("after", "afterok", "afternotok"):
            found[key] += "," + item  # after=12,13
            continue
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key:
            raise UsageError(f"bad change {item!r}: expected KEY=VALUE")
        found[key] = value
        if key in ("priority", "cpus", "memory", "time") and value:  # refused here as the option's value would be
            parse_options([f"--{key}", value], (key,), called)  # (and again by the master)
    if not words[1:]:
        raise UsageError(f"{called} needs job ids or names")
    return {"changes": found, **ids_or_name(words[1:], called, opts)}


def command(words: list[str], called: str, opts: dict) -> dict:
    """`[options] COMMAND [ARGS...]`; `-f FILE` adds the options (and maybe the command) it holds."""
    if "file" in opts:
        from_file = load_option_file(opts.pop("file"), opts, JOB_OPTIONS[:-1])
        words = words or from_file
    if not words and "cmds" not in opts:
        raise UsageError(f"no command given to {called} (see grun --help)")
    if opts.get("wait-existing") and not opts.get("name"):
        raise UsageError("-W waits for the job named by -j NAME; give -j too")
    return {"cmd": words}


def as_command(words: list[str]) -> str | list[str]:
    """One word with shell syntax is a command line for /bin/sh, unless it names a file (`grun "./my script.sh"`: the
    program); else the words are an argv."""
    return words[0] if len(words) == 1 and any(c in SHELL_CHARS for c in words[0]) and not (
        "/" in words[0] and os.path.isfile(words[0])) else list(words)  # (no /: exec looks in $PATH, not here)


def json_text(document) -> str:
    """`--json`: one document, keys sorted (field names as the README's "Queries as JSON" lists them)."""
    import json
    return json.dumps(document, indent=1, sort_keys=True, default=sorted)


# ---- queries and control ---------------------------------------------------------------------------

def shown(ctx: Context, args: dict, text, records, *fields, quiet: bool = False) -> int:
    """`records` as --json, or as text(records, -F's fields); `fields`: the columns and record fields -F knows.
    `quiet`: no table (not even its header) when every job asked for is missing, as squeue -j prints only the error."""
    from .tables import check_fields
    check_fields(args.get("format"), *fields)  # (an unknown one: a UsageError)
    if quiet and not args.get("json"):
        return 0
    return ctx.print(json_text(records) if args.get("json") else text(records, args.get("format")))


def _where(client, job_id: int | str, finished: bool, arrays: bool = False) -> dict | str:
    """The job's (or task `12.7`'s) record if it has finished (not `finished`: if it is live; `arrays`: an array's
    either way); else why a query does not show it, as squeue -j and sacct -j (a task not begun: its array's record)."""
    from .core.jobs import FINAL_STATES
    from .tables import label
    try:
        job = client.job(job_id)
    except JobNotFound:
        return f"no such job {job_id}"
    return job if (job["state"] in FINAL_STATES) == finished or arrays and "ranges" in job else f"job {job_id} has " \
        f"{'not ' * finished}finished ({job['state']}): see grun -q {'jobs' if finished else 'history'} {label(job)}"


@verb("[--user USER] [--long|--json|-F FIELDS] [ID|NAME...]", "user long json format",
      lambda words, called, opts: ids_or_name(words, called, opts) if words else {}, aliases="j")
def do_jobs(ctx: Context, args: dict) -> int:
    """the queued and running jobs (all, a user's, or those named; an array's id takes its tasks too)"""
    from .core.arrays import has_task, is_array
    from .tables import COLUMNS, history_long, job_fields, jobs_table, label
    ids, names, user = set(map(str, args.get("ids", ()))), set(args.get("names", ())), known_user(args.get("user"))
    unbegun = {ref for i in ids if (ref := task_ref(i))}  # (one not begun: its array's row, as squeue's 12_[7-9])
    jobs = [j for j in ctx.client.jobs() if user in (None, j.get("user")) and (
        not ids and not names or {label(j), str(j["id"]), str(j.get("array"))} & ids or j.get("name") in names
        or is_array(j) and any(a == j["id"] and has_task(j, t) for a, t in unbegun))]
    arrays = {j["id"] for j in jobs if str(j["id"]) in ids}  # named: its tasks a row each (as squeue -j 12)
    code = shown(ctx, args, lambda js, fields: history_long(js[::-1]) if args.get("long") else jobs_table(
        js, fields, arrays), jobs, COLUMNS, job_fields(), quiet=bool(ids and not names and not jobs))
    live = {str(j[key]) for j in jobs for key in ("id", "array") if key in j} | {label(j) for j in jobs}
    notes = [_where(ctx.client, i if "." in i else int(i), False)  # an id or task asked for, ended or unknown: said,
             for i in sorted(ids - live) if i.isdigit() or task_ref(i)]  # and rc 1
    return max([code, *(ctx.say(note) for note in notes if isinstance(note, str))])  # (squeue -j past MinJobAge)


@verb("[--long|--json|-F FIELDS]", "long json format", aliases="nodes s")
def do_status(ctx: Context, args: dict) -> int:
    """the nodes (state, free cpus and memory, jobs; --long: labels, counted resources, plugins) and warnings"""
    from .tables import NODE_COLUMNS, NODE_FIELDS, nodes_table, status_text
    status = ctx.client.status(bool(args.get("long")) and not args.get("json"))
    if args.get("json") or args.get("format"):
        return shown(ctx, args, nodes_table, status if args.get("json") else status["nodes"], NODE_COLUMNS, NODE_FIELDS)
    return ctx.print(status_text(status, bool(args.get("long"))))


@verb("[-c COUNT] [--user USER] [-g REGEX] [--long|--json|-F FIELDS] [ID|NAME...]", "count user grep long json format",
      lambda words, called, opts: ids_or_name(words, called, opts) if words else {}, aliases="hist h")
def do_history(ctx: Context, args: dict) -> int:
    """finished jobs, newest last: state, exit, node, queue wait, wall, cpu, memory (all, those named, an array's tasks)"""
    from .core.jobs import FINAL_STATES
    from .tables import HISTORY_COLUMNS, history_long, history_table, job_fields
    user = known_user(args.get("user"))  # (an unknown one: an error, not an empty table)
    refs, found = [*dict.fromkeys(by_name(ctx, args, True))], {}  # (ids, and tasks 12.7 as they are)
    if ids := [r for r in refs if isinstance(r, int)]:  # in one call: the master's wait, which with 0 s does not wait
        try:
            found = {int(i): job for i, job in ctx.client.call("wait", ids, 0).items()}
        except JobNotFound:  # (one is unknown: each is asked about, as the live ones and the tasks are)
            pass
    found.update((r, _where(ctx.client, r, True, arrays=isinstance(r, int))) for r in refs if r not in found)
    for r, job in [(r, j) for r, j in found.items() if isinstance(r, int) and isinstance(j, dict) and "ranges" in j]:
        tasks = ctx.client.history(args.get("count", 10**6), None, None, r)  # an array's id: its ended tasks (as sacct
        found[r] = [job][:job["state"] in FINAL_STATES] + tasks or _where(ctx.client, r, True)  # -j), its line once ended
    jobs = [j for r in reversed(refs) for j in (found[r] if isinstance(found[r], list) else [found[r]])
            if isinstance(j, dict)] if refs else ctx.client.history(args.get("count", 20), user, args.get("grep"))
    code = shown(ctx, args, lambda js, fields: history_long(js) if args.get("long") else history_table(js, fields),
                 jobs, HISTORY_COLUMNS, job_fields(), quiet=bool(refs and not jobs))
    return max([code, *(ctx.say(note) for note in found.values() if isinstance(note, str))])


@verb("ID|NAME...", words=ids_or_name)
def do_wait(ctx: Context, args: dict) -> int:
    """wait until jobs finish; exits with the first non-zero code"""
    return next((code for code in [ctx.client.exit_code(i, ctx.say) for i in by_name(ctx, args, True)] if code), 0)


def _gone(client, job_id) -> str:
    """Why the master did not act on a job: it has ended (its history has it), else there is no such job."""
    job = _where(client, job_id, True) if isinstance(job_id, int) else None
    return f"job {job_id} has already ended ({job['state']})" if isinstance(job, dict) else f"no such job {job_id}"


def _control(name: str, usage: str, options: str, words, doc: str, extra=lambda args: ()) -> None:
    """The verbs that act on jobs through the master's call of their name: kill, hold, resume, edit.
    `extra(args)`: the call's arguments after the ids; each id the master did not find is named."""
    def run(ctx: Context, args: dict) -> int:
        user = known_user(args.get("user"))  # kill's: all that user's live jobs, as scancel -u (none is said to have ended)
        ids = [j["id"] for j in ctx.client.jobs() if j.get("user") == user] if user else by_name(ctx, args)
        if user and not ids and user != current_user():  # (with private_queries, nobody else's: it killed none, silently)
            ctx.say(f"no live jobs of {user} that you may see")
            return 1
        found, refused = refusals(getattr(ctx.client, name), ids, *extra(args))
        return max([0, *(ctx.say(refused.get(job_id) or _gone(ctx.client, job_id))
                         for job_id, ok in found.items() if not ok and (job_id in refused or not user))])
    run.__name__, run.__doc__ = f"do_{name}", doc
    verb(usage, options, words)(run)


_control("kill", "[-n SIG] [--force] [--user USER] [-j NAME] ID|NAME...", "signal force name user", kill_ids,
         "kill jobs (queued, waiting or running)", lambda args: (args.get("signal", 15), bool(args.get("force"))))
_control("hold", "ID|NAME...", "", ids_or_name, "hold queued jobs, suspend running ones")
_control("resume", "ID|NAME...", "", ids_or_name, "release held jobs, continue suspended ones")
_control("edit", "KEY=VALUE[,KEY=VALUE] ID|NAME...", "", changes,
         "change queued, waiting or held jobs: priority, cpus, memory, time, hosts, p.NAME, after(ok|notok), force",
         lambda args: (args["changes"],))


@verb("[--json] ID|NAME", "json", one_id)
def do_why(ctx: Context, args: dict) -> int:
    """why a queued job is not running"""
    ref = by_name(ctx, args, True)[0]  # (root and admins: any user's job, as squeue -n shows every user's)
    why = ctx.client.why(ref)  # (a task not begun: its array's why)
    return ctx.print(json_text({"id": ref, "why": why}) if args.get("json") else why)


@verb("[--json]", "json")
def do_conf(ctx: Context, args: dict) -> int:
    """this host's config file read now (not a running daemon's): each value and where it came from"""
    from .config import describe
    return ctx.print(json_text(describe(ctx.cfg, as_dict=True)) if args.get("json") else describe(ctx.cfg).rstrip("\n"))


from . import running  # noqa: F401  (the verbs that run jobs; it imports the helpers above)
