"""Dependencies between jobs and retries of failed ones: the decisions, pure code over the job table.

A job submitted `--after/--afterok/--afternotok` other jobs waits (state WAITING, its unmet ones in `deps`, each
[kind, id]) until each has ended as its kind asks; one that can never be met (an `afterok` job failed, an `afternotok`
one succeeded) cancels it, and the cancellation, itself an end, decides its own dependants in the same step. The job
table indexes waiting jobs by what they wait for, so the end of a job nobody waits for costs one dict lookup. A job
failing with `retries` left is queued again (after `retry_delay`): not final for its dependants until then."""

from ..values import task_ref
from . import arrays as A
from . import jobs as J

WAITS_FOR = {"after": "to end", "afterok": "to succeed", "afternotok": "to fail"}


def met(kind: str, state: str) -> bool:
    """Whether a dependency of this kind on a job that ended in this state is met."""
    return kind == "after" or (state == J.DONE) == (kind == "afterok")


def parse_dependency(text: str) -> dict:
    """Slurm's `--dependency afterok:12:13,after:14` -> {kind: [refs]}, all to be met (Slurm's `?`: any one)."""
    J.require("?" not in text, f"grun has no `?` (any one of them): each dependency must be met, got {text!r}")
    out: dict = {}
    for item in text.split(","):
        kind, _, refs = item.strip().partition(":")
        J.require(kind in J.DEP_KINDS and refs, f"expected {'|'.join(J.DEP_KINDS)}:ID[:ID...], got {item.strip()!r}")
        out.setdefault(kind, []).extend(J.job_refs(refs.replace(":", ","), kind))
    return out


def resolve(req: dict, table, recent: dict, known: dict, settings: dict) -> tuple[list, dict | None]:
    """The request's references (taken out of it) as the dependencies unmet, [[kind, id], ...], and a finished job
    that makes one never met (or None). A reference is a live job (a name: this user's), else a finished one (`recent`,
    or `known`: the master's history). A make job waits for the newest live job of the user making each input (missing
    or not), and for each making an output of its own (two writers of one file race): then its node checks it again."""
    deps, never = [], None
    for kind in J.DEP_KINDS:
        for ref in req.pop(kind, ()):
            if isinstance(ref, int):
                job = table.jobs.get(ref) or recent.get(ref) or known.get(ref)
            elif task := task_ref(ref):  # (begun: live; ended: as grun.actors.master._finished found it)
                job = table.jobs.get(table.tasks.get(task[0], {}).get(task[1])) or known.get((req["user"], ref))
            else:
                job = table.jobs.get(table.names.get((req["user"], ref))) or known.get((req["user"], ref))
            if job is None:
                raise ValueError(f"--{kind}: no job {ref}" if isinstance(ref, int) else
                                 f"--{kind}: no task {ref}" if ref.replace(".", "").isdigit() else
                                 f"--{kind}: no job named {ref!r} of user {req['user']}")
            if job.get("user") != req["user"] and settings["private_queries"] and req["user"] not in (
                    "root", *settings["admins"]):  # (unknown to them: how it ended would show through theirs)
                raise ValueError(f"--{kind}: no job {ref}")
            if job.get("user") != req["user"] and not settings["deps_other_users"]:
                raise ValueError(f"--{kind}: job {A.label(job)} is {job.get('user')}'s (deps_other_users is off)")
            if job["state"] not in J.FINAL_STATES:
                deps.append([kind, job["id"]])
            elif not met(kind, job["state"]) and never is None:
                never = job
    def makers(path: str) -> list[int]:  # make (-M): the live jobs of the user that make this file
        return [i for i in table.makers.get(path, ()) if table.jobs[i].get("user") == req["user"]]
    for path in (needs := req.pop("needs", ())):  # an input missing now: refused if no live job makes it
        J.require(makers(path), f"no input {path}")
    # an input's newest maker (the input missing, or an old copy it rewrites) must succeed first; an output's, end
    made = {max(makers(p)) for p in [*needs, *(req.get("make") and req.get("inputs") or ())] if makers(p)}
    if (same := {i for path in req.get("outputs") or () if req.get("make") for i in makers(path)}) or made:
        deps += [["afterok", i] for i in sorted(made)] + [["after", i] for i in sorted(same - made)]
        req["recheck"] = True  # then its node checks it again (a missing input: it runs)
    return deps, never


def edited(job: dict, kinds: dict, table, recent: dict, known: dict, settings: dict) -> list:
    """The dependencies an edit gives a job (`kinds`: {kind: refs}, as resolve takes them), with the waits for its
    make (-M) files' makers kept; a ValueError for one never met or a cycle."""
    deps, never = resolve({"user": job["user"], **kinds}, table, recent, known, settings)
    if never is not None:
        raise ValueError(f"job {A.label(never)} is {never['state']}: that dependency is never met")
    J.require(not reaches(table, [d[1] for d in deps], job["id"]), "that dependency would make a cycle")
    made = {i for path in (job.get("inputs") or []) + (job.get("outputs") or []) if job.get("make")
            for i in table.makers.get(path, ())}
    return deps + [d for d in job.get("deps", ()) if d[1] in made and d not in deps]


def cancel(job_id: int, dep: dict, now: float) -> dict:
    """The record that ends a job whose dependency `dep` (a finished job) can never be met."""
    reason = f"dependency {A.label(dep)} {'succeeded' if dep['state'] == J.DONE else dep['state']}"
    return {"op": "finish", "id": job_id, "time": now, "result": {**J.never_started(J.CANCELLED, None, reason), "error": reason}}


def followups(table, job: dict, now: float) -> list[dict]:
    """Records for the jobs that wait for this one, just ended: each dependency met, or the dependant cancelled."""
    out = []
    for dependant_id in sorted(table.dependants.get(job["id"], ())):
        kinds = [k for k, i in table.jobs[dependant_id]["deps"] if i == job["id"]]
        out.append({"op": "dep", "id": dependant_id, "dep": job["id"], "time": now}
                   if all(met(k, job["state"]) for k in kinds) else cancel(dependant_id, job, now))
    return out


def retry_or_finish(job: dict, rec: dict) -> dict:
    """The finish record or its retry: it failed with retries left, not killed (by user, -t, -m) nor its reader gone."""
    result = rec["result"]
    tried = job.get("retried", 0) - len(job.get("exclude", ()))  # (a node without its cwd is not a failure)
    if (tried >= job.get("retries", 0) or result.get("status") or J.asked_to_end(job) or J.reader_gone(job)
            or not J.exit_code_of(result)):
        return rec
    if result.get("limit") in ("time", "memory"):  # a retry would end the same (as Slurm, no requeue)
        return {**rec, "result": {**result, "not_retried": f"it reached its {result['limit']} limit, as a retry would"}}
    return {"op": "retry", "id": job["id"], "time": rec["time"], "at": rec["time"] + job.get("retry_delay", 0.0),
            "reason": f"attempt {job.get('attempt', 0)} failed: exit {J.describe_exit(result)}"}


def reaches(table, ids: list[int], target: int) -> bool:
    """Whether any of these jobs is the target or waits for it, directly or not (an edit's cycle)."""
    seen, todo = set(), list(ids)
    while todo:
        if (job_id := todo.pop()) == target:
            return True
        if job_id not in seen:
            seen.add(job_id)
            todo += [i for _, i in table.jobs.get(job_id, {}).get("deps") or ()]
    return False


def named(deps: list, find) -> list:
    """[[kind, id], ...] with each task as people name it, `12.7`, not by its internal id (`find`: an id's job or None)."""
    return [[kind, A.label(job) if (job := find(i)) and "task" in job else i] for kind, i in deps]


def waits_text(job: dict) -> str:
    """What a job's dependencies wait for: "job 12 to succeed (afterok), job 13 to end (after)"; "" if none."""
    return ", ".join(f"job {i} {WAITS_FOR[k]} ({k})" for k, i in job.get("deps") or ())


def waiting_text(job: dict, now: float) -> str:
    """`grun why` for a waiting job."""
    waits = waits_text(job)
    text = f"Job {job['id']} is waiting for {waits}." if waits else f"Job {job['id']} is waiting."
    if job.get("retry_at", 0) > now:
        text += (f" It is retried in {job['retry_at'] - now:.0f} s (retry {job.get('retried', 0)} of "
                 f"{job.get('retries', 0)}; {job.get('retry_reason')}).")
    return text + " Change what it waits for with `grun -e after=ID,... " + f"{job['id']}`."
