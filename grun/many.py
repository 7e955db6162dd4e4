"""Many jobs from one `grun`: `--array IDS` (one array job at the master, its tasks started as they fit, each with
$GRUN_TASK_ID: grun.core.arrays) and `--cmds FILE` (one job per line, run by /bin/sh, submitted in batches), for scripts
that would otherwise loop over `grun --nowait` (a Python process per job). Imported only when one is asked for."""

import os

from .core import arrays
from .options import UsageError
from .running import cli_spec, dies_with
from .verbs import Context, json_text

SUBMIT_BATCH = 1000  # --cmds specs per submit_many call: one disk commit on the master each


def array_spec(args: dict) -> dict:
    """The one spec of `--array IDS[%N] COMMAND`; its ids checked here, so a bad one queues nothing."""
    try:
        arrays.parse(args["array"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return dict(cli_spec(args, args["cmd"]), array=args["array"])


def task_specs(ctx: Context, args: dict) -> list[dict]:
    """`--cmds FILE` (or - for stdin): one spec per line that is not blank or a comment, run by /bin/sh,
    GRUN_TASK_ID = the line number; %a in output file names is the line number."""
    path = args["cmds"]
    if path == "-" and ctx.stdin_fd is None:
        raise UsageError("--cmds -: no standard input to read commands from")
    try:
        with open(os.dup(ctx.stdin_fd) if path == "-" else path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--cmds {path}: {exc.strerror or exc}") from None
    tasks = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not tasks:
        raise UsageError(f"no commands in {path}")
    base = cli_spec(args, [tasks[0][1]])
    return [dict(base, cmd=[cmd], shell=True, env=dict(base["env"], GRUN_TASK_ID=str(task))) for task, cmd in tasks]


def run(ctx: Context, args: dict) -> int:
    """Submit the array (or every --cmds line, in batches), print the job ids (with --nowait or -v);
    without --nowait, wait for them all and exit with the first non-zero exit code, in task order.
    Their output is not streamed (said when waiting, unless -o): -o/--err with %a keep it."""
    if "array" in args and "cmds" in args:
        raise UsageError("give --array or --cmds, not both")
    if args.get("wait-existing") or args.get("name") and "cmds" in args:  # (-j NAME --array names the array job)
        raise UsageError("-j/-W name one job; they do not go with --cmds, nor -W with --array")
    if "cmds" in args and args["cmd"]:
        raise UsageError(f"--cmds takes its commands from {args['cmds']}; unexpected: {' '.join(args['cmd'])}")
    specs, ids = [array_spec(args)] if "array" in args else task_specs(ctx, args), []
    if not args.get("nowait") and not {"out", "out-err", "out-append", "out-err-append"} & args.keys():  # (else silent)
        ctx.say("tasks' output is not shown here; give -o out.%a (and --err err.%a) to keep it", 0)

    def submit_and_wait() -> int:
        for start in range(0, len(specs), SUBMIT_BATCH):
            ids.extend(batch := ctx.client.submit_many(specs[start:start + SUBMIT_BATCH], check=False))  # (cli_spec's)
            if (args.get("nowait") or args.get("verbose")) and not args.get("json"):
                ctx.print("\n".join(f"Job_ID: {i}" for i in batch))
        if args.get("json") and args.get("nowait"):
            ctx.print(json_text({"ids": ids}))
        # one by one: each wait is O(1) on the master
        ends = [] if args.get("nowait") else [(i, ctx.client.wait([i])[i]) for i in ids]
        failed = [(i, end.get("exit", 1), *filter(None, [end.get("error")])) for i, end in ends if end.get("exit", 1)]
        if failed and "array" in args:  # the array's record counts its tasks and names the lowest failed ones
            end = ends[0][1]
            count, total = sum(n for state, n in end.get("counts", {}).items() if state != "done"), end.get("tasks")
            named = [(f"{ids[0]}.{task}", *rest) for task, *rest in end.get("failures", [])]
        else:
            count, total, named = len(failed), len(ids), failed
        if named:  # (and the first one's error: why, e.g. its -o file could not be opened)
            shown = ", ".join(f"{i} (exit {code})" for i, code, *_ in named[:10]) + (", ..." if count > 10 else "")
            ctx.say(f"{count} of {total} {'tasks' if 'array' in args else 'jobs'} failed: {shown}"
                    + "".join(f"; {named[0][0]}: {error}" for error in named[0][2:]))
        return failed[0][1] if failed else 0
    return dies_with(ctx, ids, submit_and_wait)  # (Ctrl-C, SIGTERM: what was submitted is killed)
