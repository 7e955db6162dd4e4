"""An edit of a queued job's request (`grun -e`), judged as its submission was: the priority the user asks (only root,
`admins:` and rules raise one), then the policy rules on the request its submitter gave with the edit's changes."""

from . import jobs as J
from . import rules as R
from .explain import _n

# what an edit writes: the request's fields, and what the rules made of them
EDITED = ("priority", "cpus", "memory", "host", "params", "memory_set", "cpus_set", "time", "nodes", "origin", "asked")
fields = lambda job: {k: job.get(k) for k in EDITED}  # (a job's or a request's)
flat = lambda req: {**req, **{f"params.{k}": v for k, v in (req.get("params") or {}).items()}}  # (params.NAME: as origin)


def may_raise(priority: int | None, who: dict, settings: dict) -> None:
    """Only root, an admin or a rule raises a priority above default_priority (Slurm's --nice): else a ValueError."""
    if priority is not None and priority > (top := settings["default_priority"]) and who["uid"] and \
            who["user"] not in settings["admins"]:
        raise ValueError(f"priority {priority} is above this cluster's default_priority ({top}): only root, an admin "
                         f"(admins:) or a rule may raise a job's priority")


def run_rules(rules, req: dict, spec: dict, facts=None, log=None) -> dict:
    """grun.core.rules.apply, keeping the submitter's value of each field a rule changed (`asked`: for given_spec)."""
    if not rules:
        return req
    mine = flat(req)
    given = {k for k, v in spec.items() if v is not None} | {f"params.{k}" for k in spec.get("params") or ()}
    R.apply(rules, req, spec, facts, log)
    asked = {k: mine[k] for k in req.get("origin") or () if k in given and k in mine}
    if asked:
        req["asked"] = asked
    if "edit" not in req and (said := overridden(req, asked)):  # (a submission's; an edit's: told, of what it asks)
        req["warnings"] = [*req.get("warnings", ()), *said]
    return req


def overridden(req: dict, asked: dict) -> list[str]:
    """Each value asked ({key: value}) that a rule or plugin set otherwise: "memory=9000 set to 4000 by rule cap"."""
    now, origin = flat(req), req.get("origin") or {}
    return [f"{k}={_n(v)} set to {_n(now.get(k))} by {origin[k]}" for k, v in asked.items() if now.get(k) != v and k in origin]


def given(req: dict, key: str) -> bool:
    """Whether the submitter gave the request's `key`: cpus and memory if asked (-c, -m, qsub's mem_free), any other."""
    return bool(req.get(f"{key}_set", key not in ("cpus", "memory")))


def given_spec(job: dict, changes: dict) -> dict:
    """The job's spec as its submitter gave it (a field in `origin`: back to `asked`, or none), with the changes."""
    ruled = {k: (job.get("asked") or {}).get(k) for k, where in (job.get("origin") or {}).items()
             if not where.startswith("learned")}
    mine = {**job, **{k: v for k, v in ruled.items() if "." not in k}}
    params = {**(job.get("params") or {}), **{k[7:]: v for k, v in ruled.items() if k.startswith("params.")},
              **changes.get("params", {})}  # (None: the param goes)
    spec = {k: mine[k] for k in J.SPEC_KEYS - {"name", "array"}  # (a task's "array" is its array's id, not a range)
            if mine.get(k) is not None and given(mine, k)}
    return {**spec, **changes, "env": {}, "params": {name: value for name, value in params.items() if value is not None}}


def edited(job: dict, changes: dict, settings: dict, facts=None, log=None, who=None) -> dict:
    """The job's request after an edit (parse_edit's `changes`): the priority `who` asks (None: the cluster's own
    callers), then given_spec validated and through the rules, as at submit."""
    may_raise(changes.get("priority") if who else None, who, settings)
    spec = given_spec(job, changes)
    req = J.validate_spec(spec, settings["default_cpus"], settings["default_memory"], settings["default_priority"])
    learned = {k: v for k, v in (job.get("origin") or {}).items() if v.startswith("learned") and k not in changes}
    edit = {k: [flat(job).get(k), v] for k, v in flat(changes).items() if k != "params"}  # (on_submit's: [was, asked])
    req.update({k: job.get(k) for k in ("id", "group", "name", "array", "env")}, edit=edit,
               **({"origin": learned} if learned else {}))
    return run_rules(settings["rules"], req, spec, facts, log)


def told(judged: dict) -> list:
    """What an edit tells its submitter, [job id, text] each, as a submission tells its warnings: the rules' `warn:`, and
    each value it asks that a rule or plugin set otherwise ("memory=9000 set to 4000 by rule cap")."""
    return [[job_id, text] for job_id, (_, req) in judged.items() for text in [
        *(req.get("warnings") or ()), *overridden(req, {k: asked for k, (_, asked) in req["edit"].items()})]]


def written(job: dict, changes: dict, settings: dict, judged: dict | None) -> dict:
    """The EDITED fields of a job's request after an edit, as the master judged it outside its lock (`judged`), or
    else (the core's tests) here, by the rules alone."""
    was, req = (fields(job), edited(job, changes, settings) if changes else {}) if judged is None or not changes else \
        judged.get(job["id"]) or judged.get(job.get("array")) or (None, None)
    if req is None or was != fields(job):  # (made, split from its array, or edited since)
        raise ValueError("it changed while the edit was judged: try again")
    new = fields(req) if req else {}  # (and env only if a plugin's on_submit changed it: not journaled at every edit)
    return {**new, "env": req["env"]} if req and req.get("env") != job.get("env") else new


def to_place(job: dict, new: dict, changes: dict) -> dict:
    """What nodes must have for the edited job: all it asks; of a job forced at submit, only what the edit asks."""
    return {**job, **new} if not job.get("force") else {
        "user": job["user"], "group": job.get("group"), "cpus": new["cpus"] if "cpus" in changes else 0.0,
        "memory": new["memory"] if "memory" in changes else 0,
        "host": changes.get("host"), "params": {k: new["params"][k] for k in changes.get("params", ()) if k in new["params"]}}
