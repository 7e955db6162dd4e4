"""Job arrays (`--array 1-100000%50`): one record at the master, its tasks made job records one at a time, as they are
placed (or killed or held one by one). Pure code, no I/O.

An array record is a job record (its id, request and state) with the fields below; it is queued while it has tasks
left to start, and leaves the job table with one "finish" record, its outcome, once every task has ended. A task is a
job record of its own (its own id from the same counter, so history, wire and kill stay keyed by int) with `array`
(the array's id) and `task` (its task id), shown as `12.7`."""

import re

from .jobs import require

MAX_TASKS = 100_000
# Set in every task's environment, for scripts written for grun, Slurm and SGE.
TASK_VARS, ARRAY_VARS = ("GRUN_TASK_ID", "SLURM_ARRAY_TASK_ID", "SGE_TASK_ID"), ("SLURM_ARRAY_JOB_ID",)
MAX_FAILURES_KEPT = 10  # the failed tasks an array's record names (the lowest task ids)
_BOOKS = ("tasks", "ranges", "limit", "at", "started", "taken", "counts", "failures", "stopped")


def label(job: dict) -> str:
    """How people name a job, as grun -q jobs shows it: `12`, or `12.7` for task 7 of array 12 (its own id is internal)."""
    return f"{job['array']}.{job['task']}" if "task" in job else str(job["id"])


def parse(text: str) -> dict:
    """`1-100`, `1-100:2`, `1,5,9`, a mix, then `%N` (at most N at once): an array's bookkeeping fields."""
    require(isinstance(text, str), "array must be a string like 1-100, 1-100:2, 1,5,9 or 1-100%10")
    ids, percent, limit = text.partition("%")
    require(not percent or limit.strip().isdigit() and int(limit) > 0, f"bad value for --array: %N needs N >= 1, got {text!r}")
    ranges, count = [], 0
    for part in ids.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?(?::(\d+))?\s*", part)
        span = range(int(m[1]), int(m[2] or m[1]) + 1, int(m[3] or 1)) if m and int(m[3] or 1) else range(0)
        require(span, f"bad value for --array: expected task ids like 1-100, 1-100:2 or 1,5,9, got {text!r}")
        count += len(span)
        require(count <= MAX_TASKS, f"bad value for --array: at most {MAX_TASKS:,} tasks in one array, got {text!r}")
        ranges.append([span.start, span.stop, span.step])
    require(len(ranges) < 2 or len(set().union(*(range(*r) for r in ranges))) == count,
            f"bad value for --array: a task id is given twice in {text!r}")
    return {"tasks": count, "ranges": ranges, "limit": int(limit) if limit else None, "at": [0, ranges[0][0]],
            "started": 0, "taken": [], "counts": {}, "failures": [], "stopped": False}


def is_array(job: dict) -> bool:
    return "ranges" in job


def left(array: dict) -> int:
    """Tasks not yet started (none once the array was killed)."""
    return 0 if array["stopped"] else array["tasks"] - array["started"]


def room(array: dict, live: int) -> int:
    """How many more of its tasks may start now, with `live` of them taking a slot (JobTable.busy_tasks)."""
    return left(array) if array["limit"] is None else max(0, min(left(array), array["limit"] - live))


def next_task(array: dict) -> int:
    """The lowest task id not started yet (the array must have one left)."""
    return array["at"][1]


def has_task(array: dict, task: int) -> bool:
    """Whether the job is an array, the task one of its own and not started yet."""
    ri, at = array.get("at", (0, 0))
    return is_array(array) and left(array) > 0 and task not in array["taken"] and any(
        task in range(*r) and (i > ri or i == ri and task >= at) for i, r in enumerate(array["ranges"]))


def unstarted(array: dict) -> list[int]:
    """Its tasks not started yet (killed: never to start), in order: from the cursor on, but those `taken` ahead."""
    (at_range, at), taken = array["at"], set(array["taken"])
    return [t for i, (start, stop, step) in enumerate(array["ranges"][at_range:], at_range)
            for t in range(at if i == at_range else start, stop, step) if t not in taken]


def take(array: dict, task: int) -> None:
    """Mark the task started: it joins `taken`, the tasks started ahead of the cursor (`at`: range index, task id),
    which moves past those it reaches. Fields are replaced, not changed: a snapshot being written may hold them."""
    array["started"] += 1
    taken, (ri, at), ranges = [*array["taken"], task], array["at"], array["ranges"]
    while at in taken:
        taken.remove(at)
        at += ranges[ri][2]
        if at >= ranges[ri][1]:
            ri, at = (ri + 1, ranges[ri + 1][0]) if ri + 1 < len(ranges) else (len(ranges), -1)
    array["taken"], array["at"] = taken, [ri, at]


def task_job(array: dict, job_id: int, task: int) -> dict:
    """The job record of one task: the array's request, its own id and environment."""
    job = {k: v for k, v in array.items() if k not in _BOOKS and k not in ("token", "name", "reserved_node")}
    env = dict(array.get("env") or {}, **{v: str(task) for v in TASK_VARS}, **{v: str(array["id"]) for v in ARRAY_VARS})
    return dict(job, id=job_id, array=array["id"], task=task, env=env)  # (its -o %a: core.jobs.out_names)


def ended(array: dict, task: dict) -> None:
    """Count a task that ended (in `counts` by state; the lowest failed ones in `failures`: task, exit[, error])."""
    array["counts"] = {**array["counts"], task["state"]: array["counts"].get(task["state"], 0) + 1}
    if task["state"] != "done":
        failure = [task["task"], task["exit"], *filter(None, [task.get("error")])]  # (why, if it says)
        array["failures"] = sorted([*array["failures"], failure])[:MAX_FAILURES_KEPT]


def outcome(array: dict) -> dict:
    """An ended array's result: killed, failed (the exit code of its lowest failed task), else done."""
    status = "killed" if array["stopped"] else "failed" if array["failures"] else "done"
    result = {"status": status, "exit_code": array["failures"][0][1] if array["failures"] else 0}
    if status == "killed" and not array["failures"]:
        result["signal"] = array["stopped"]  # (the signal it was killed with)
    return result

