"""How records look to a person: `grun -q jobs`, `-q status` and `-q history` tables (and `--long` blocks), a job's
command as typed; at the end, as Slurm's tools (grun/compat_slurm.py) show them. Pure functions of master records."""

import re
import time
from collections import Counter

from .core.arrays import label, left, unstarted
from .core.jobs import DEP_KINDS, FINAL_STATES, SPEC_KEYS, describe_exit, name_of, wrapped
from .values import close_to


def command_text(job: dict) -> str:
    """As typed; a job sent by sbatch or qsub (grun.compat): its script's name and arguments, by srun: its command."""
    import shlex
    cmd = job.get("cmd") or []
    if cmd[1:3] == ["-m", "grun.pty_job"]:  # (--pty's wrapper: what runs on its terminal)
        return cmd[6] if cmd[4:6] == ["/bin/sh", "-c"] else shlex.join(cmd[4:])
    if not job.get("shell") and (wrapper := wrapped(cmd)):
        return shlex.join([wrapper[0]] * (wrapper[1] is not None) + wrapper[2])
    return cmd[0] if job.get("shell") else shlex.join(cmd)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in cells)


def fmt_secs(secs) -> str:
    return "-" if secs is None else f"{float(secs):.2f}s" if float(secs) < 60 else duration(secs)


def duration(secs, days_first: bool = False) -> str:
    """Slurm's elapsed times, also ours: `M:SS`, `H:MM:SS`, `D-HH:MM:SS`; sacct's `HH:MM:SS` (days_first)."""
    days, rest = divmod(int(secs or 0), 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days_first or days else \
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def fmt_span(secs) -> str:
    """30m, 1h30m, 45s, 2m5s: a duration as -t reads it ("-" for none; "<1s": a learned time of `true`)."""
    if secs is None or secs < 1:
        return "-" if secs is None else "<1s"
    secs = round(secs)
    parts = [(secs // 86400, "d"), (secs % 86400 // 3600, "h"), (secs % 3600 // 60, "m"), (secs % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def fmt_rss(usage: dict) -> str:
    """A job's peak memory; "<=16M" where it is no more than its node's reaper's at the fork (Linux counts that)."""
    kb = usage.get("maxrss_kb")
    return "<=" * bool(usage.get("maxrss_at_most")) + ("-" if kb is None else f"{kb / 1024:.0f}M")


def fmt_bytes(n) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n is None or n < 1024 or unit == "GB":
            return "-" if n is None else f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def fmt_time(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


COLUMNS = ["ID", "USER", "STATE", "NODE", "CPUS", "MEM", "USING", "TIME", "CWD", "COMMAND"]  # of -q jobs
RECORD_FIELDS = ("submit_time", "start_time", "attempt", "task", "deps", "queue_wait", "origin", "warnings")


def jobs_table(jobs: list[dict], fields: list[str] | None = None, unfolded=()) -> str:
    """Queued and running jobs; USING: what a running job's processes use now (cpus busy, resident MB);
    TIME: its time limit (-t). An array is one line, its STATE the count of its tasks in each state (see fold_arrays).
    `fields` (-F): these columns by name, or any field of the records."""
    jobs = fold_arrays(jobs, unfolded)
    using = [f"{u.get('cpu', 0):g}c/{u.get('rss_mb', 0)}M" if (u := j.get("usage_now")) else "-" for j in jobs]
    rows = [[label(j), j.get("user", "-"), j["state"], j.get("node") or "-", f"{j['cpus']:g}" + learned(j, "cpus"),
             f"{j['memory']}{learned(j, 'memory')}", now, fmt_span(j.get("time") or j.get("expected_time"))
             + learned(j, "time"), j.get("cwd", "-"), command_text(j)] for j, now in zip(jobs, using)]
    return chosen(rows, COLUMNS, jobs, fields)


def learned(job: dict, field: str) -> str:
    """`*` after a value learned from the runs of the job's program (grun.core.learn)."""
    return "*" if (job.get("origin") or {}).get(field, "").startswith("learned") else ""


def fold_arrays(jobs: list[dict], unfolded=()) -> list[dict]:
    """The jobs with each array's tasks folded into its line: "3 running, 97 queued, 5 done" (`unfolded` arrays: their
    live tasks keep their own lines, its line counts the others)."""
    arrays = {j["id"]: Counter() for j in jobs if "ranges" in j}
    for j in jobs:
        if j.get("array") in arrays and j["array"] not in unfolded:
            arrays[j["array"]][j["state"]] += 1
    for j in jobs:
        if j["id"] in arrays:
            arrays[j["id"]].update({j["state"]: left(j)} if left(j) else {}, **j["counts"])  # (+ its tasks not started)
    return [dict(j, state=", ".join(f"{n} {s}" for s, n in arrays[j["id"]].items())) if j["id"] in arrays else j
            for j in jobs if (j.get("array") not in arrays or j["array"] in unfolded)
            and (j["id"] not in unfolded or arrays.get(j["id"], 1))]  # (its tasks all begun: their lines alone)


NODE_COLUMNS = ["NODE", "STATE", "CPUS(free/total)", "MEM_MB(free/total)", "DEVICES(in use)", "JOBS", "SPOOL_MB_FREE"]
NODE_FIELDS = ("name", "up", "state", "cpus", "memory", "free_cpus", "free_memory", "running", "outside_cpus",
               "outside_memory", "grun_cpus", "last_seen", "devices", "resources", "labels", "spool_free")  # NodeView.public


def nodes_table(nodes: list[dict], fields: list[str] | None = None) -> str:
    """A node a line. STATE: up, down, or unknown (the master restarted and has not heard from it yet).
    DEVICES: which devices of its indexed resources jobs hold ("gpu 0,2 of 4"), a column only when some node has
    them; its labels and counted resources are in nodes_long (--long), -F and --json."""
    rows = [[n["name"], n.get("state") or ("up" if n["up"] else "down"), f"{n['free_cpus']:g}/{n['cpus']:g}",
             f"{n['free_memory']}/{n['memory']}",
             "; ".join(f"{k} {','.join(used) or 'none'} of {len(ids)}" for k, (ids, used) in
                       sorted(n.get("devices", {}).items())) or "-", n["running"],
             "-" if n.get("spool_free") is None else f"{n['spool_free']:,}"] for n in nodes]
    if fields or any(n.get("devices") for n in nodes):
        return chosen(rows, NODE_COLUMNS, nodes, fields)
    return table([row[:4] + row[5:] for row in rows], NODE_COLUMNS[:4] + NODE_COLUMNS[5:])


def status_text(status: dict, long: bool) -> str:
    """`grun -q status` (--long: and each node's labels and counted resources, and the plugins each daemon runs)."""
    space, nodes = status["master_spool"], status["nodes"]
    outside = "; ".join(f"{n['name']} {n['outside_cpus']:g} cpus, {n['outside_memory']} MB" for n in nodes
                        if n.get("outside_cpus") or n.get("outside_memory"))  # (not free: count_outside_load)
    return "\n".join(filter(None, [nodes_table(nodes), outside and f"taken by other programs: {outside}",
                                   long and nodes_long(nodes), *(
        f"plugins of the {daemon}: {', '.join(names) or 'none'}" for daemon, names in status.get("plugins", {}).items()),
        f"master spool: {space['spool_free']:,} MB free of {space['spool_size']:,} MB",
        *(f"warning: {problem}" for problem in status["warnings"])]))


def nodes_long(nodes: list[dict]) -> str:
    """After `-q status --long`'s table: each node's labels and counted resources (free/total), if any, a line each."""
    return "\n".join(f"node {n['name']}:" + f" labels {labels}" * bool(labels)
                     + f"{';' * bool(labels)} resources(free/total) {counted}" * bool(counted) for n in nodes
                     for labels in [" ".join(f"{k}={v}" for k, v in sorted((n.get("labels") or {}).items()))]
                     for counted in [" ".join(f"{k} {free:g}/{total:g}" for k, (free, total) in
                                              sorted((n.get("resources") or {}).items()))] if labels or counted)


HISTORY_COLUMNS = ["ID", "USER", "STATE", "EXIT", "NODE", "WAIT", "WALL", "CPU", "MAXRSS", "COMMAND"]


def history_table(jobs: list[dict], fields: list[str] | None = None) -> str:
    """Finished jobs (STATE: how each ended, as sacct's), given newest first, shown oldest first, an array's own line
    after its last task (by end time it fell among them: 88.1, 88, 88.2); -F as jobs_table's."""
    jobs = jobs[::-1]
    last = {j["array"]: i for i, j in enumerate(jobs) if "task" in j}
    jobs = [jobs[i] for i in sorted(range(len(jobs)), key=lambda i: (last.get(jobs[i]["id"], i), "ranges" in jobs[i]))]
    rows = [[label(j), j.get("user", "-"), j.get("state", "-"), describe_exit(j), j.get("node") or "-",
             *map(fmt_secs, (j.get("queue_wait"), u.get("wall"), usage(j, "utime", "stime") if "utime" in u else None)),
             fmt_rss(u), command_text(j)] for j in jobs for u in [j.get("usage") or {}]]
    return chosen(rows, HISTORY_COLUMNS, jobs, fields)


def history_long(jobs: list[dict]) -> str:
    """`-q history --long` (and `-q jobs --long`): every recorded field of each job, a block per job."""
    from .core.deps import waits_text
    from .core.explain import unread_text  # (here: core.explain's imports cost every `grun -q jobs` 25 ms)
    blocks = []
    for j in reversed(jobs):
        u, limit = j.get("usage") or {}, (j.get("limits") or {}).get("memory_mb")
        params = "".join(f", {k}={v}" for k, v in sorted((j.get("params") or {}).items()))
        blocks.append("\n".join(line for line in (
            f"job {label(j)}" + (f" ({j['name']})" if j.get("name") else "") + f": {j.get('state')}"
            + (f", exit {describe_exit(j)}" if j.get("state") in FINAL_STATES else ""),
            f"  command   {command_text(j)}",
            f"  user      {j.get('user', '-')}   cwd {j.get('cwd', '-')}",
            f"  node      {j.get('node') or '-'}   attempt {j.get('attempt', '-')}",
            unread_text(j) and f"  output    {unread_text(j)[2:]}",
            j.get("deps") and f"  after     {waits_text(j)}",
            j.get("requeue_reason") and f"  requeued  {j['requeue_reason']}",
            j.get("retry_reason") and f"  retried   {j['retry_reason']}",
            j.get("killed_by") and f"  killed    by {j['killed_by']}",
            j.get("held_by") and f"  held      by an admin ({j['held_by']}): only an admin can release it",
            j.get("not_retried") and f"  retried   not: {j['not_retried']}",
            f"  request   {j.get('cpus', 0):g} cpus, {j.get('memory')} MB, priority {j.get('priority')}{params}"
            + (f", time limit {fmt_span(j['time'])}" if j.get("time") else ""),
            f"  times     submitted {fmt_time(j.get('submit_time'))}, waited {fmt_secs(j.get('queue_wait'))}, "
            + f"ran {fmt_secs(u.get('wall'))}, ended {fmt_time(j.get('end_time'))}",
            f"  cpu       user {fmt_secs(u.get('utime'))}, system {fmt_secs(u.get('stime'))}",
            f"  memory    max rss {fmt_rss(u)}" + (f", limit {limit} MB" if limit else ""),
            f"  io        read {fmt_bytes(u.get('read_bytes'))}, written {fmt_bytes(u.get('write_bytes'))}",
            j.get("devices") and "  devices   " + "; ".join(f"{k} {','.join(v)}" for k, v in j["devices"].items()),
            j.get("inputs") and "  inputs    " + " ".join(j["inputs"]),
            j.get("outputs") and "  outputs   " + " ".join(j["outputs"]) + ("  (make)" if j.get("make") else ""),
            j.get("origin") and "  origin    " + ", ".join(f"{k} from {v}" for k, v in j["origin"].items()),
            *(f"  warning   {w}" for w in j.get("warnings") or ()),
            j.get("nodes") and f"  nodes     {j['nodes']}",
            j.get("limit") and f"  limit     {j['limit']}: {j.get('limit_detail') or ''}".rstrip(),
            j.get("error") and f"  error     {j['error']}") if line))
    return "\n\n".join(blocks)


# ---- -F: columns of a table by name, or fields of the records, formatted as the tables do ----------

SHOWN = {**dict.fromkeys(("submit_time", "start_time", "end_time", "dispatch_time", "queued_time", "suspend_time",
                          "retry_at"), fmt_time), "queue_wait": fmt_secs, "last_seen": fmt_secs, "time": fmt_span,
         "expected_time": fmt_span, "deps": lambda deps: ",".join(f"{kind}:{i}" for kind, i in deps)}
FINISHED_FIELDS = ("end_time", "exit", "signal", "error", "limit", "limit_detail", "usage", "devices")


def column_key(header: str) -> str:
    """How -F names a column: its header's first word, in lower case (CPUS(free/total): cpus)."""
    return header.split("(")[0].lower()


def check_fields(fields: list[str] | None, columns: list[str], record_fields) -> None:
    """A UsageError (one line, naming those it knows) for a field of -F that is neither a column nor a record's."""
    from .options import UsageError
    known = {column_key(c) for c in columns} | set(record_fields)
    known |= {"mem"} if "memory" in known else set()  # (-q jobs' MEM column: the request)
    if wrong := next((f for f in fields or () if f not in known), None):
        raise UsageError(f"-F: no field {wrong!r} (known: {', '.join(sorted(known))}){close_to(wrong, known)}")


def job_fields() -> set[str]:
    """The fields -F knows in a job's record (as submitted, as queued, as finished)."""
    return SPEC_KEYS - {"env", "token", "stdin"} | {*RECORD_FIELDS, *FINISHED_FIELDS, "id", "state", "node",
                                                    "requeue_reason", "retry_reason", "expected_time"}


def chosen(rows: list[list], header: list[str], records: list[dict], fields: list[str] | None) -> str:
    """The table, or with `fields` (-F) those columns (by column_key) or fields of the records (field_text)."""
    if not fields:
        return table(rows, header)
    at = {column_key(h): i for i, h in enumerate(header)}
    return table([[row[at[f]] if f in at else field_text(rec, "memory" if f == "mem" else f) for f in fields]
                  for rec, row in zip(records, rows)], [f.upper() for f in fields])


def field_text(record: dict, name: str) -> str:
    """One field of a record as a person reads it: times as dates, spans as -t writes them, the command as typed,
    dependencies as Slurm's %E (afterok:12; -F after: all of them, afterok: those ids), a node's counted resources free/total, lists and mappings joined."""
    name = "deps" if name == "after" else name  # (-F after: what it waits for, whatever the kind)
    value = [i for kind, i in record.get("deps") or () if kind == name] if name in DEP_KINDS else record.get(name)
    if value is None or value in ("", [], {}):
        return "-"
    if name == "cmd":
        return command_text(record)
    if name in SHOWN:
        return SHOWN[name](value)
    if name == "resources" and "free_cpus" in record:  # (a node's: [free, total])
        return ",".join(f"{k}={free:g}/{total:g}" for k, (free, total) in sorted(value.items()))
    return _plain(value)


def _plain(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_plain(v)}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ",".join(map(_plain, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- how records look to Slurm's tools (grun/compat_slurm.py) ----------------------------------

STATES = {"queued": "PENDING", "held": "PENDING", "waiting": "PENDING", "dispatched": "RUNNING", "running": "RUNNING",
          "suspended": "SUSPENDED", "done": "COMPLETED", "failed": "FAILED", "killed": "CANCELLED",
          "cancelled": "CANCELLED", "lost": "NODE_FAIL", "timeout": "TIMEOUT"}
SHORT = {"PENDING": "PD", "RUNNING": "R", "SUSPENDED": "S", "COMPLETED": "CD", "FAILED": "F", "CANCELLED": "CA",
         "NODE_FAIL": "NF", "TIMEOUT": "TO", "OUT_OF_MEMORY": "OOM"}
REASONS = {"held": "JobHeldUser", "waiting": "Dependency", "queued": "Priority", "timeout": "TimeLimit",
           "failed": "NonZeroExitCode"}  # (an ended job's: as Slurm 22.05's scontrol shows them)


def state_of(job: dict) -> str:
    """(An array's line once it was cancelled: its tasks that never started, CANCELLED as Slurm's.)"""
    limit = {"memory": "OUT_OF_MEMORY", "time": "TIMEOUT"}.get(job.get("limit"))
    return limit or "CANCELLED" * bool(job.get("stopped")) or STATES.get(job["state"], job["state"].upper())


def id_of(job: dict) -> str:
    """grun's label (12; task 7 of array 12, 12.7) as Slurm's (12_7); its tasks yet (or never) to start: 12_[3-9%2]."""
    if "ranges" not in job:
        return label(job).replace(".", "_")
    ids, limit = unstarted(job), f"%{job['limit']}" if job.get("limit") else ""
    return f"{job['id']}_[{spans(ids) + limit if ids else job.get('array', '')}]"


def spans(ids: list[int], steps: bool = True) -> str:
    """Task ids as Slurm writes them: 1-4, 1-9:2, 1,5,9 (without `steps`, as its hostlists: 1-4, 1,3,5)."""
    out, i = [], 0
    while i < len(ids):
        j, step = i, ids[i + 1] - ids[i] if steps and i + 1 < len(ids) else 1
        while j + 1 < len(ids) and ids[j + 1] - ids[j] == step:
            j += 1
        j = i if j == i + 1 and step > 1 else j  # (two ids a step apart: a list, not a range)
        out.append(str(ids[i]) if j == i else f"{ids[i]}-{ids[j]}" + (f":{step}" if step > 1 else ""))
        i = j + 1
    return ",".join(out)


def host_ranges(names: list[str]) -> str:
    """Node names as a Slurm hostlist: n1,n2,n3,n7,x as n[1-3,7],x; n01..n12 as n[01-12] (compat_slurm.hostlist: back)."""
    groups: dict = {}
    for prefix, digits in sorted(re.fullmatch(r"(.*?)(\d*)", name).groups() for name in names):
        width = len(digits) * (digits[:1] == "0" or (prefix, len(digits)) in groups)  # (zero-padded: as wide)
        groups.setdefault((prefix, width if digits else -1), []).append(int(digits or 0))
    return ",".join(p if w < 0 else p + (f"[{s}]" if len(ids) > 1 else s) for (p, w), ids in groups.items()
                    for s in [re.sub(r"\d+", lambda m, w=w: m[0].zfill(w), spans(sorted(ids), steps=False))])


def reason_of(job: dict) -> str:
    """Why a pending job waits, in Slurm's words (squeue may have found `Resources`)."""
    at_limit = job["state"] == "queued" and "ranges" in job and job["limit"] and \
        job["started"] - sum(job["counts"].values()) >= job["limit"]  # (held, waiting: that, as Slurm's)
    never = job["state"] == "cancelled" and (job.get("error") or "").startswith("dependency ")  # (core.deps.cancel's)
    return job.get("_reason") or ("JobArrayTaskLimit" if at_limit else "DependencyNeverSatisfied" if never else
                                  REASONS.get(job["state"], "None"))


def elapsed(job: dict) -> float:
    wall = (job.get("usage") or {}).get("wall")
    return wall if wall is not None else time.time() - job["start_time"] if job.get("start_time") else 0


def stamp(t) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "Unknown"


def usage(job: dict, *keys: str) -> float:
    return sum((job.get("usage") or {}).get(key) or 0 for key in keys)


# squeue's %letter: its header, -O's (lower case) and sacct's (Slurm's spelling) names, sacct's width, its value
FIELDS = {row[0]: row[1:] for row in [
    ("i", "JOBID", "jobid JobID", 12, id_of), ("A", "JOBID", "", 0, lambda j: str(j["array"] if "task" in j else j["id"])),
    ("F", "ARRAY_JOB_ID", "ArrayJobID", 15, lambda j: str(j.get("array") if "task" in j else j["id"])),
    ("K", "ARRAY_TASK_ID", "ArrayTaskID", 11, lambda j: str(j.get("task", "N/A"))),
    ("j", "NAME", "name JobName", 10, name_of), ("u", "USER", "username User", 9, lambda j: j.get("user", "?")),
    ("T", "STATE", "state State", 10, state_of), ("t", "ST", "statecompact", 0, lambda j: SHORT.get(state_of(j), "?")),
    ("M", "TIME", "timeused", 0, lambda j: duration(elapsed(j))), ("D", "NODES", "numnodes NNodes", 8, lambda j: "1"),
    ("R", "NODELIST(REASON)", "reasonlist", 0, lambda j: j.get("node") or f"({reason_of(j)})"),
    ("N", "NODELIST", "nodelist NodeList", 15, lambda j: j.get("node") or ""),
    ("P", "PARTITION", "partition Partition", 10, lambda j: "grun"), ("a", "ACCOUNT", "account Account", 10, lambda j: ""),
    ("C", "CPUS", "numcpus AllocCPUS ReqCPUS", 10, lambda j: f"{j.get('cpus', 1):g}"),
    ("m", "MIN_MEMORY", "minmemory ReqMem", 10, lambda j: f"{j.get('memory', 0)}M"),
    ("l", "TIME_LIMIT", "timelimit Timelimit", 10, lambda j: duration(j["time"]) if j.get("time") else "UNLIMITED"),
    ("Z", "WORK_DIR", "workdir WorkDir", 20, lambda j: j.get("cwd", "")),
    ("E", "DEPENDENCY", "dependency", 0, lambda j: ",".join(  # (Slurm's words: its afterany is grun's after)
        f"{'afterany' if k == 'after' else k}:{i}(unfulfilled)" for k, i in j.get("deps") or ()) or "(null)"),
    ("r", "REASON", "reason Reason", 22, reason_of), ("o", "COMMAND", "command", 0, command_text),
    ("V", "SUBMIT_TIME", "submittime Submit", 19, lambda j: stamp(j.get("submit_time"))),
    ("S", "START_TIME", "starttime Start", 19, lambda j: stamp(j.get("start_time"))),
    ("Q", "PRIORITY", "priority Priority", 10, lambda j: str(j.get("priority", 0))),
    ("1", "", "JobIDRaw", 12, lambda j: str(j["id"])), ("6", "", "End", 19, lambda j: stamp(j.get("end_time"))),
    ("2", "", "ExitCode DerivedExitCode", 8, lambda j: f"{0 if j.get('signal') else j.get('exit', 0)}:{j.get('signal') or 0}"
     if j.get("start_time") else "0:0"),
    ("3", "", "Elapsed", 10, lambda j: duration(elapsed(j), True)), ("4", "", "ElapsedRaw", 10, lambda j: str(int(elapsed(j)))),
    ("5", "", "MaxRSS", 10, lambda j: f"{int(usage(j, 'maxrss_kb'))}K" if usage(j, "maxrss_kb") else ""),
    ("7", "", "TotalCPU", 10, lambda j: duration(usage(j, "utime", "stime"), True))]}
BY_NAME = {name.lower(): (name, letter) for letter, row in FIELDS.items() for name in row[1].split()}
