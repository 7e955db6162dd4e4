"""The verbs that run jobs (`run`, `submit`, `attach`): a command line made a job spec (`cli_spec`, with `-M`'s gate),
its output followed, the job killed with its submitter (`dies_with`: also --array's and the Slurm/SGE shims')."""

import os
import stat

from .options import JOB_OPTIONS, UsageError
from .verbs import Context, Terminated, as_command, by_name, command, json_text, one_id, verb

# -o and its kin: option (and option-append) -> the streams it takes
OUTPUTS = {"out": ("stdout",), "err": ("stderr",), "out-err": ("stdout", "stderr")}
# the other options of a job -> the job_spec keywords they set
KEYWORDS = {"cpus": "cpus", "memory": "memory", "priority": "priority", "param": "params", "name": "name",
            "hosts": "hosts", "env": "pass_env", **{k: k.replace("-", "_") for k in ("time", "time-signal", "retries", "retry-delay", "wrap", "stage", "hold")}}


def asks_staging(args: dict) -> bool:
    """Whether the command line asks for its files to be staged (grun.stage), beyond what -M implies."""
    return args.get("stage", "never") != "never" or bool({"stage-in", "stage-out"} & args.keys())


def cli_spec(args: dict, words: list[str], follow: bool = False) -> dict:
    """The spec of `grun [options] COMMAND...`; `follow`: this grun follows the job to its end, and can stage its
    files (grun.stage); else they are never staged."""
    from .client import job_spec
    extra = {}
    for option, append in ((name + suffix, bool(suffix)) for name in OUTPUTS for suffix in ("", "-append")):
        for stream in OUTPUTS[option.removesuffix("-append")] if args.get(option) else ():
            if f"{stream}_file" in extra:
                raise UsageError(f"the job's {stream} is sent to two files; give one of -o, --err, --out-err")
            extra[f"{stream}_file"], extra[f"{stream}_append"] = args[option], append
    for kind, refs in [(k, r) for k in ("after", "afterok", "afternotok") for r in args.get(k, ())] + [
            item for given in args.get("dependency", ()) for item in given.items()]:
        extra[kind] = [*extra.get(kind, []), *refs]
    extra.update((keyword, args[option]) for option, keyword in KEYWORDS.items() if option in args)
    if follow and args.get("retries") and "retry-delay" not in args:
        # (its node drops a run's output when the next run starts there: grun needs a moment to fetch each run's)
        extra["retry_delay"] = 1.0
    for key in ("stage-in", "stage-out"):  # (grun.stage)
        if args.get(key):
            extra[key.replace("-", "_")] = paths = [os.path.abspath(p) for p in args[key]]
            if outside := next((p for p in paths if not p.startswith(os.getcwd().rstrip("/") + "/")), None):
                raise UsageError(f"--{key} {outside}: only files under the working directory are staged")
    if not follow and asks_staging(args):
        raise UsageError("--stage, --stage-in and --stage-out need grun to follow the job (not --noio, --array, --cmds)")
    if not follow and (args.get("make") or "stdout_file" in extra or "stderr_file" in extra):
        extra["stage"] = "never"  # nobody would serve its files (-M's, or -o's: they would stay on its node)
    if (parent := os.environ.get("GRUN_JOB_ID", "")).isdigit() and int(parent) > 0:  # a grun in a job: its reservation
        extra["parent"] = int(parent)
    cmd, made = args.get("_make") or (as_command(words), {})
    if follow:  # its `>> FILE`s: if it is staged, they go to its node first and come back (a log gains this run's lines)
        from .make import appends
        made = dict(made, appends=appends(cmd, os.getcwd()))
    return job_spec(cmd, requeue=not args.get("norequeue"), force=bool(args.get("force")), **extra, **made)


def make_gate(ctx: Context, args: dict) -> int | None:
    """`-M`: the exit code when nothing is to be queued (up to date, or --noexec); else None, and the command
    without its markers and the make keys of its spec are left in args["_make"] for cli_spec."""
    if not args.get("make"):
        if args.get("noexec"):
            raise UsageError("--noexec goes with -M")
        return None
    if "array" in args or "cmds" in args:
        raise UsageError("-M does not go with --array or --cmds")
    from . import make
    try:
        m = make.parse(as_command(args["cmd"]), os.getcwd())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    d = make.decide(m)
    if args.get("noexec"):  # on stdout, as `make -n` prints: why, and what would run
        import shlex
        return ctx.print("\n".join(d.reasons + [m.cmd if isinstance(m.cmd, str) else shlex.join(m.cmd)] * d.run))
    if not d.run and os.getuid() not in _makers(ctx.client, m.inputs):  # (a live job remaking an input: after it)
        return ctx.say(d.reasons[0].removeprefix("# "), 0)
    args["_make"] = m.cmd, make.spec_keys(m, d)
    return None


def _makers(client, paths: list) -> list[int]:
    """The uids of the live jobs making these files; none when the master is away (up to date: it needs none)."""
    from .client import MasterUnreachable
    try:
        return client.call("makers", paths, wait=0)
    except MasterUnreachable:
        return []


@verb("[options] COMMAND [ARGS...]", JOB_OPTIONS, command)
def do_run(ctx: Context, args: dict) -> int:
    """run a command on the cluster and stream its output"""
    if args.get("pty") and (clash := next((o for o in args if args[o] and o.removesuffix("-append") in (
            "nowait", "array", "cmds", "noio", *OUTPUTS)), None)):
        raise UsageError(f"--pty does not go with --{clash}: the job's terminal is this grun's")
    if args.get("pty") and not os.isatty(0):
        raise UsageError("--pty needs a terminal on stdin")
    if (code := make_gate(ctx, args)) is not None:
        return code
    if "array" in args or "cmds" in args:
        from . import many
        return many.run(ctx, args)
    if args.get("nowait"):
        if ctx.cli and _piped(ctx.stdin_fd) and not args.get("noinput"):  # (a terminal's, /dev/null, a file: no word)
            ctx.say("--nowait does not send the job our input (it reads /dev/null): give it a file to read")
        staged = asks_staging(args)
        job_id = ctx.client.submit_spec(cli_spec(args, args["cmd"], follow=staged))
        code = ctx.print(json_text({"id": job_id}) if args.get("json") else f"Job_ID: {job_id}")
        if staged:  # asked for: a process of ours serves its files while it runs (only then: one a job)
            from . import config, stage
            from .files import make_dirs
            make_dirs(state := config.user_state_dir())  # (as a personal cluster's: 0755, which it then accepts)
            stage.follow_detached(ctx.client, job_id, os.path.join(state, "stage.log"))
        return code
    if not args.get("wait-existing"):
        return _run_new(ctx, args)
    from .client import GrunError, current_user
    for _ in range(5):  # -j NAME -W: if a job of that name is live, wait for it and exit with its code
        if (existing := ctx.client.lookup(args["name"], current_user(), False)) is not None:  # (names: per user)
            if args.get("verbose"):
                ctx.say(f"job {existing} is named {args['name']}: waiting for it")
            return ctx.client.exit_code(existing, ctx.say)
        try:
            return _run_new(ctx, args)
        except GrunError as exc:
            if "already exists" not in str(exc):
                raise  # else: it was submitted meanwhile; wait for that one
    raise GrunError(f"cannot submit or find the job named {args['name']!r}")


@verb("[options] COMMAND [ARGS...]", JOB_OPTIONS, command, aliases="sub")
def do_submit(ctx: Context, args: dict) -> int:
    """queue a command and print its job id"""
    return do_run(ctx, dict(args, nowait=True))


def _piped(fd: int | None) -> bool:
    """Whether our input is a pipe or socket, which a job reads once (not a terminal's, /dev/null, nor a file)."""
    return fd is not None and stat.S_IFMT(os.fstat(fd).st_mode) in (stat.S_IFIFO, stat.S_IFSOCK)


def _raise_terminated(*_):
    from .cli import SIGNALLED
    SIGNALLED.append(15)
    raise Terminated()


def dies_with(ctx: Context, ids: list, body, before=lambda: None, wait_end: bool = False) -> int:
    """`body()`, which submits jobs (their ids into `ids`) and follows them (`grun CMD`, srun, --array). On Ctrl-C,
    SIGTERM, EPIPE or a write error (`> /dev/full`: exit 1), `before()`, then the jobs are killed (on a new
    connection: the old one may be mid-reply) and said so (not to a reader gone), exiting as that death would.
    `wait_end` (a foreground `grun CMD`): Ctrl-C asks for the kill and `body` goes on to the job's real end (its last
    words, a kill that came too late, an INT ignored until SIGKILL), which is said; a second Ctrl-C stops waiting."""
    import contextlib
    import signal
    import threading

    from .client import Client, GrunError
    from .stream import WriteError
    asked = []  # (wait_end: the kill asked at the first Ctrl-C)

    def what() -> str:  # (ids: filled by body)
        return f"jobs {ids[0]}-{ids[-1]}" if len(ids) > 1 else f"job {ids[0]}" if ids else ""

    def kill(sig: int) -> dict:
        try:
            return Client(ctx.client.host, ctx.client.port, connect_wait=5.0).kill(ids, sig)
        except GrunError as exc:
            return ctx.say(f"could not kill {what()}: {exc}") and {}

    def interrupted(*_):  # (the kill by a thread: our main one may hold a lock it needs, and streams on meanwhile)
        from .cli import SIGNALLED
        SIGNALLED.append(2)
        if asked or not (wait_end and ids):
            raise KeyboardInterrupt
        asker = threading.Thread(target=kill, args=(signal.SIGINT,), daemon=True)
        asked.extend((before(), asker))  # (first: a second Ctrl-C as soon as this one is said is a second)
        asker.start()
        ctx.say(f"{what()}: killing it, its output followed to its end (Ctrl-C again: stop waiting)")
    if ctx.cli:
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGINT, interrupted)  # (even when started in the background by a script)
    try:
        code = body()
    except (KeyboardInterrupt, Terminated, BrokenPipeError, WriteError) as exc:
        before()
        refused = exc if isinstance(exc, WriteError) else None
        sig = {KeyboardInterrupt: signal.SIGINT, Terminated: signal.SIGTERM}.get(type(exc), signal.SIGPIPE)
    else:  # after Ctrl-C's kill: the job's real end said, 130 if our kill ended it (if it never ran, follow said it)
        if not asked:
            return code
        if (job := ctx.client.job(ids[0]))["state"] != "killed":
            return ctx.say(f"job {ids[0]} ended {job['state']} {job.get('exit')} before the kill", code)
        return ctx.say(f"{what()} killed", 130) if job.get("start_time") else 130
    if ctx.cli:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if asked and sig == signal.SIGINT:  # (the kill asked first: a second Ctrl-C at once would end it unsent)
        asked[-1].join(10) if asked[-1].ident else kill(signal.SIGINT)
        return ctx.say(f"{what()} may still be running: grun -q wait {ids[0]} gives its end", 128 + sig)
    killed = kill(sig) if ids else {}
    if refused:  # (a job that had ended already is not said killed)
        return ctx.say(f"{refused}" + (f"; {what()} killed" if any(killed.values()) else ""))
    if sig != signal.SIGPIPE:
        ctx.say(f"{what()} killed" if ids else "interrupted")
    with contextlib.suppress(BrokenPipeError):
        ctx.out.flush()
    return 128 + sig


def _run_new(ctx: Context, args: dict) -> int:
    """Submit the job and stream its output (--noio: wait for its end); Ctrl-C, SIGTERM or EPIPE kill it."""
    spec, ids, verbose, run = cli_spec(args, args["cmd"], not args.get("noio")), [], args.get("verbose"), {}
    stdin_fd, term, piped = None if args.get("noinput") else ctx.stdin_fd, None, False
    if args.get("pty"):  # (grun.pty_job: not re-run elsewhere, its keys gone with its node)
        from .pty_job import Terminal
        stdin_fd = (term := Terminal()).fd
        spec.update(cmd=term.wrap(spec["cmd"], spec["shell"]), shell=False, requeue=False)
    elif ctx.cli and ctx.stdin_fd is None and os.isatty(0):  # `grun bash`, `grun python3`: they would end at once
        from .core.jobs import CODE_OPTIONS, INTERPRETERS
        if INTERPRETERS.fullmatch(os.path.basename(args["cmd"][0])) and all(
                w[:1] == "-" and w not in CODE_OPTIONS for w in args["cmd"][1:]):
            ctx.say("jobs get no terminal: run a script, pipe input to it, or give --pty")
    # a pipe is read once: no retries (nor default_retries), nor a re-queue, which would read an empty stdin
    elif piped := not args.get("noio") and _piped(stdin_fd):  # (stream.input_again)
        if spec.setdefault("retries", 0):
            raise UsageError("--retries: the job's input is a pipe, which a retry could not read again; "
                             "give it as a file (< FILE), or < /dev/null if it reads none")
        spec["requeue"] = False  # (its node lost: it ends lost, said below)

    def waiting(line: str) -> None:  # on a terminal, one line that updates itself; with -v elsewhere, lines
        import shutil
        run["shown"] = ctx.err.isatty()
        text = f"grun: job {ids[0]} {line}"
        ctx.err.write(f"\r\033[K{text[:shutil.get_terminal_size().columns - 1]}" if run["shown"] else text + "\n")
        ctx.err.flush()

    def started(job: dict | None = None) -> None:  # (None: interrupted, the job to be killed: our terminal back)
        if run.pop("shown", False):
            ctx.err.write("\r\033[K")  # the progress line goes
        if verbose and job and job.get("node"):  # (not a job that ended before it ran, or ran again: it says so)
            ctx.say(f"job {job['id']} {job['state']} on {job['node']}")
        if term:
            term.start() if job else term.restore()

    def follow() -> int:
        ids.append(ctx.client.submit_spec(dict(spec, stdin=stdin_fd is not None and not args.get("noio"))))
        if verbose:
            ctx.say(f"job {ids[0]} queued")
        if args.get("noio"):  # no streams: say when it starts if asked, wait for its code
            if verbose:
                started(ctx.client.wait_started(ids[0]))
            return ctx.client.exit_code(ids[0], ctx.say)
        on_wait = waiting if ctx.cli and (verbose or ctx.err.isatty()) else None
        say = (lambda text: ctx.say(text + "\r" * term.raw)) if term else ctx.say  # (a raw terminal's \n: no \r)
        return ctx.client.follow(ids[0], stdin_fd=stdin_fd, on_start=started, on_limit=say, on_note=say,
                                 on_wait=on_wait, one_run=True)  # (from run to run, when it is retried)

    ctx.out.flush()
    try:
        code = dies_with(ctx, ids, follow, before=started, wait_end=not term)
    finally:
        if term:
            term.restore()
    if piped and code and ids and ctx.client.job(ids[0])["state"] == "lost":
        ctx.say(f"job {ids[0]} was not run again: its input is a pipe, read once (give it as a file, < FILE)")
    for path in [p for p in spec.get("outputs", ()) if code == 0 and not os.path.exists(p)]:  # (-M; follow synced NFS)
        ctx.say(f"-M: the job did not write {os.path.relpath(path)}, an output it declares")
    return code


@verb("[--tail] ID|NAME", "tail", one_id)
def do_attach(ctx: Context, args: dict) -> int:
    """stream a job's output (from the start, or --tail: from now) and its exit code; Ctrl-C detaches"""
    ctx.out.flush()
    job_id = ctx.client.job_id(by_name(ctx, args, True)[0])
    if "ranges" in (job := ctx.client.job(job_id)):  # (an array: grun.core.arrays.is_array) has no output of its own
        return ctx.say(f"job {job_id} is an array: attach to one of its tasks, e.g. grun --attach {job_id}.{job['ranges'][0][0]}")
    try:
        return ctx.client.follow(job_id, tail=bool(args.get("tail")), on_note=ctx.say, on_limit=ctx.say, one_run=True)
    except KeyboardInterrupt:
        return ctx.say(f"detached from job {job_id} (it keeps running)", 130)
