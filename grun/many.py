"""Many jobs from one `grun`: `--array IDS` (one job per task id, each with $GRUN_TASK_ID) and
`--cmds FILE` (one job per line, run by /bin/sh), submitted in batches, for scripts that would
otherwise loop over `grun --nowait` (a Python process per job). Imported only when one is asked for."""

import os
import re

from .options import UsageError
from .verbs import Context, cli_spec, interrupted

MAX_TASKS = 100_000
SUBMIT_BATCH = 1000  # specs per submit_many call: one disk commit on the master each


def task_ids(text: str) -> list[int]:
    """`--array 1-100`, `1-100:2` (a step), `1,5,9`, or a mix (`1-3,10`): task ids, in order, each once."""
    ids: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?(?::(\d+))?\s*", part)
        step = int(m[3] or 1) if m else 0
        tasks = range(int(m[1]), int(m[2] or m[1]) + 1, step) if step else range(0)
        if not tasks:
            raise UsageError(f"bad value for --array: expected task ids like 1-100, 1-100:2 or 1,5,9, got {text!r}")
        if len(ids) + len(tasks) > MAX_TASKS:
            raise UsageError(f"bad value for --array: at most {MAX_TASKS:,} tasks in one array, got {text!r}")
        ids.extend(tasks)
    if len(set(ids)) != len(ids):
        raise UsageError(f"bad value for --array: a task id is given twice in {text!r}")
    return ids


def task_specs(ctx: Context, args: dict) -> list[dict]:
    """One spec per task: the same command with $GRUN_TASK_ID set (--array), or one per line of a file
    (--cmds, GRUN_TASK_ID = the line number), run by /bin/sh. %a in output file names is the task id."""
    if "array" in args and "cmds" in args:
        raise UsageError("give --array or --cmds, not both")
    if args.get("name") or args.get("wait-existing"):
        raise UsageError("-j/-W name one job; they do not go with --array or --cmds")
    if "cmds" in args and args["cmd"]:
        raise UsageError(f"--cmds takes its commands from {args['cmds']}; unexpected: {' '.join(args['cmd'])}")
    tasks = _command_lines(ctx, args["cmds"]) if "cmds" in args else [(i, args["cmd"]) for i in task_ids(args["array"])]
    base = cli_spec(args, tasks[0][1])
    return [dict(base, cmd=list(cmd), shell=base["shell"] or "cmds" in args,
                 env=dict(base["env"], GRUN_TASK_ID=str(task)),
                 **{key: base[key].replace("%a", str(task)) for key in ("stdout_file", "stderr_file") if key in base})
            for task, cmd in tasks]


def _command_lines(ctx: Context, path: str) -> list[tuple[int, list[str]]]:
    """The non-blank, non-comment lines of a file (or stdin for '-'), with their line numbers."""
    if path == "-" and ctx.stdin_fd is None:
        raise UsageError("--cmds -: no standard input to read commands from")
    try:
        with (os.fdopen(os.dup(ctx.stdin_fd), encoding="utf-8", errors="surrogateescape") if path == "-" else
              open(path, encoding="utf-8", errors="surrogateescape")) as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--cmds {path}: {exc.strerror or exc}") from None
    lines = [(n, [line.strip()]) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UsageError(f"no commands in {path}")
    return lines


def run(ctx: Context, args: dict) -> int:
    """Submit every task in batches, print each job id (with --nowait or -v); without --nowait, wait for
    them all and exit with the first non-zero exit code, in task order. Their output is not streamed:
    -o/--err with %a keep it."""
    specs, ids = task_specs(ctx, args), []
    try:
        for start in range(0, len(specs), SUBMIT_BATCH):
            ids.extend(batch := ctx.client.submit_many(specs[start:start + SUBMIT_BATCH]))
            if args.get("nowait") or args.get("verbose"):
                ctx.print("\n".join(f"Job_ID: {i}" for i in batch))
        # one by one: each wait is O(1) on the master
        failed = [(i, code) for i in ([] if args.get("nowait") else ids) if (code := ctx.client.exit_code(i))]
    except KeyboardInterrupt:
        return interrupted(ctx, ids, 2)  # SIGINT
    if failed:
        shown = ", ".join(f"{i} (exit {code})" for i, code in failed[:10]) + (", ..." if len(failed) > 10 else "")
        ctx.say(f"{len(failed)} of {len(ids)} jobs failed: {shown}")
    return failed[0][1] if failed else 0
