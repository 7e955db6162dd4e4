"""Why a job cannot run, in words: the refusal of a request no known node could ever run (at submit
and edit), `grun why ID`'s paragraph and a waiting `grun`'s progress line. Pure code over the job table."""

import itertools

from ..mounts import unmounted
from . import arrays as A
from . import jobs as J
from .deps import waiting_text
from .nodes import EPS, NodeView, consumables, delays_claim, host_matches, label_matches, mismatch, shape
from .rules import meets


def refusal(job: dict, table) -> str | None:
    """A limit the job alone passes, else impossible(), kept per shape till a node changes: no submit scans 10,000."""
    return table.quotas.refusal(job, alone=True) or table.nodes.remembered(shape(job), lambda: impossible(
        job, list(table.nodes.values())))


def impossible(job: dict, nodes: list[NodeView]) -> str | None:
    """Why no known node could ever run this job ("no node has 64 cpus; largest is 48"), or None (or no node known);
    said of the nodes meeting its other constraints: "of the nodes with os=debian12, none has gpu=1" (none has both)."""
    given: list[str] = []  # (the constraints _unmet found met so far: hosts, a rule's nodes:, params)
    text = _unmet(job, nodes, given) if nodes else None
    return f"of the nodes {' and '.join(given)}, none{text[7:]}" if given and str(text).startswith("no node") else text


def _unmet(job: dict, nodes: list[NodeView], given: list[str]) -> str | None:
    pool = [n for n in nodes if not job.get("host") or host_matches(n.name, job["host"])]
    if not pool:
        return f"no node matches hosts {job['host']!r}"
    given += [f"in hosts {job['host']!r}"] if job.get("host") else []
    if job.get("nodes") and not (pool := [n for n in pool if meets(job["nodes"], n)]):
        return f"no node meets {job['nodes']}"
    given += [f"meeting {job['nodes']}"] if job.get("nodes") else []
    for name, want in (job.get("params") or {}).items():
        labelled, having = ([n for n in pool if name in getattr(n, kind)] for kind in ("labels", "resources"))
        if labelled:
            ok = [n for n in labelled if label_matches(n.labels[name], want)]
            if not ok and not having:
                values = sorted({str(n.labels[name]) for n in labelled})
                return f"no node has {name}={want}; {name} is {', '.join(values[:5])}"
            pool = ok + [n for n in having if n not in ok and isinstance(want, (int, float))]
        elif having:
            if not isinstance(want, (int, float)):
                return f"{name} is a consumable: ask for a number of {name}, not {want!r}"
            if (largest := max(n.resources[name] for n in having)) + EPS < want:
                return f"no node has {want:g} {name}; largest is {largest:g}"
            pool = [n for n in having if n.resources[name] + EPS >= want]
            if want != round(want) and all(name in n.devices for n in pool):
                return f"{name} is indexed (devices): ask for a whole number, not {want:g}"
        else:
            return f"no node has {name}" + f"={want}" * bool(given)
        if not pool:
            return f"no node has {name}={want}"
        given.append(f"with {name}={want}")
    if job.get("cwd_fs") and all(unmounted(job, n) for n in pool):
        return f"no node mounts {unmounted(job, pool[0])}"
    if job["cpus"] > (largest := max(n.cpus for n in pool)) + EPS:
        return f"no node has {job['cpus']:g} cpus; largest is {largest:g}"
    if job["memory"] > (largest := max(n.memory for n in pool)):
        return f"no node has {job['memory']} MB of memory; largest is {largest} MB"
    if not any(n.could_ever_fit(job) for n in pool):
        return f"no node has {job['cpus']:g} cpus and {job['memory']} MB of memory together"
    return None


def disk_low(where: str, space: dict, settings: dict) -> tuple[bool, str] | None:
    """(refusing, text) when a spool ({spool_free, spool_size} MB) is under min_free_disk or disk_warn, else None."""
    free, size, warn = space.get("spool_free"), space.get("spool_size") or 0, settings["disk_warn"]
    warn = size * float(warn[:-1]) / 100 if isinstance(warn, str) else warn  # "10%", or MB
    if free is None or free >= max(settings["min_free_disk"], warn):
        return None
    if free < settings["min_free_disk"]:
        return True, f"{where} takes no new jobs: its spool has {free} MB free (min_free_disk {settings['min_free_disk']} MB)"
    return False, f"{where}'s spool is getting full: {free} MB free of {size} MB"


def request_text(job: dict) -> str:
    params = [f"{k}={v}" for k, v in sorted((job.get("params") or {}).items())]
    hosts = [f"hosts {job['host']}"] if job.get("host") else []
    return ", ".join([f"{job['cpus']:g} cpu{'s' if job['cpus'] != 1 else ''}", f"{job['memory']} MB", *params, *hosts])


def node_reason(node, job: dict, claims: dict, private: bool = False, shown=str) -> tuple[str, str]:
    """(kind, text) for why the job does not run on this node now ("fits": it would); `private`: no job ids, a count;
    `shown`: a job id as it is named (_shown)."""
    if not node.up:
        return "down", "down"
    if node.disk and node.disk[0]:
        return "disk", node.disk[1].split(": ", 1)[1]
    if why := mismatch(node, job):
        return "excluded", why
    wants = [(job["cpus"], node.cpus, node.free_cpus, "cpu" + "s" * (node.cpus != 1), "cpus",
              f", {_n(node.outside_cpus)} taken by other programs" * bool(node.outside_cpus)),
             (job["memory"], node.memory, node.free_memory, "MB", "MB",
              f", {node.outside_memory} MB used by other programs" * bool(node.outside_memory)),
             *((need, node.resources.get(name, 0), node.free(name), name, name, "")
               for name, need in consumables(job, node).items())]
    for need, total, _, unit, _, _ in wants:
        if need > total + EPS:
            return "small", f"{_n(total)} {unit} in all"
    busy = [f"{_n(max(0, free))} of {_n(total)} {unit} free{outside}"
            for need, total, free, _, unit, outside in wants if need > free + EPS]
    if busy:
        ids, s = sorted(node.jobs), "s" * (len(node.jobs) > 1)
        named = f"{len(ids)} job{s}" if private else f"job{s} {', '.join(map(shown, ids[:5]))}" + ", ..." * (len(ids) > 5)
        return "busy", "; ".join(busy) + (f", running {named}" if ids else "")
    if delays_claim(node, job, claims):
        return "claimed", "reserved for " + ("another job" if private else f"job {shown(claims[node.name]['id'])}")
    return "fits", "has room now"


def explain(job: dict, master, now: float, private: bool = False) -> str:
    """`master`: the master's MasterState; `private`: node_reason's. Jobs named as people name them (_shown)."""
    ref, state, shown = A.label(job), job["state"], _shown(master.table)
    head = f"Job {ref}"
    if state == J.HELD:
        return f"{head} is held: it will not run until released with `grun -e resume {ref}`."
    if state in (J.DISPATCHED, J.RUNNING):
        return f"{head} is {state} on {job.get('node')}{unread_text(job)}."
    if state == J.SUSPENDED:
        return (f"{head} is suspended on {job.get('node')} (stopped, its cpus lent to other jobs, its "
                f"memory kept); continue it with `grun -e resume {ref}`.")
    if state == J.WAITING:
        return waiting_text({**job, "id": ref, "deps": [[k, shown(i)] for k, i in job.get("deps") or ()]}, now)
    if state in J.FINAL_STATES:
        return f"{head} has finished: {state}, {job.get('reason') or f'exit {J.describe_exit(job)}'}."
    table, claims = master.table, master.table.claims(now)
    if not table.room(job):  # an array (or one of its tasks) at its %N
        array, n = table.jobs.get(job.get("array"), job), job.get("limit") or table.jobs[job["array"]]["limit"]
        what = head if "task" in job else f"Array {ref}"
        busy = [t["state"] in J.ON_NODE_STATES for t in table.busy_tasks(array["id"])]
        running, queued = sum(busy), f", {len(busy) - sum(busy)} more queued to start" * (len(busy) > sum(busy))
        return f"{what} waits: the array runs at most {n} task{'s' * (n > 1)} at once (%{n}) and {running} " \
               f"{'is' if running == 1 else 'are'} running{queued}; the next starts when one ends."
    groups: dict[str, list[str]] = {}
    for node in sorted(table.nodes.values(), key=lambda n: n.name):
        kind, text = node_reason(node, job, claims, private, shown)
        groups.setdefault(kind, []).append(f"{node.name} ({text})" if kind != "down" else node.name)
    waited = now - job.get("queued_time", job.get("submit_time", now))
    lines = [f"{head} is queued and needs {request_text(job)}."]
    if not table.nodes:
        lines.append("No node has registered yet.")
    for kind, label in (("small", "too small"), ("excluded", "excluded"), ("down", "down"), ("busy", "busy now"),
                        ("claimed", "reserved for a job that has waited longer"), ("fits", "with room now"),
                        ("disk", "taking no new jobs, their spool nearly full")):
        if names := groups.get(kind):
            lines.append(f"{len(names)} node{'s' if len(names) > 1 else ''} {label}: {'; '.join(names)}.")
    ahead = list(itertools.takewhile(lambda other: other["id"] != job["id"], table.pending))
    position, higher = len(ahead) + 1, sum(other["priority"] > job["priority"] for other in ahead)
    lines.append(f"It is number {position} of {len(table.pending)} in the queue (priority {job['priority']}"
                 f"{f'; {higher} of higher priority ahead' if higher else ''}) and has waited {_duration(waited)}.")
    if job.get("cwd_fs") and (up := [n for n in table.nodes.values() if n.up]) and all(unmounted(job, n) for n in up):
        lines.append(f"No node up mounts {unmounted(job, up[0])}.")
    if limit := table.quotas.refusal(job):
        lines.append(f"It waits under the config's limits: {limit}.")
    possible = any(k in groups for k in ("busy", "claimed", "fits", "disk"))
    if job.get("reserved_node"):
        lines.append(f"Node {job['reserved_node']} is reserved for it: only jobs taking nothing it needs go there.")
    elif possible and "fits" not in groups and (left := master.settings["reserve_after"] - waited) > 0:
        lines.append(f"After {_duration(left)} more a node will be reserved for it.")
    if "fits" in groups and not limit:
        lines.append("It should start at the next scheduling pass.")
    elif not possible and any(not n.up and n.could_ever_fit(job) for n in table.nodes.values()):
        lines.append("It runs once a node that is down and could run it comes back.")
    elif not possible:
        lines.append("No node up now could ever run it as it is; edit it with `grun -e` or kill it.")
    return " ".join(lines)


def unread_text(job: dict) -> str:
    """A running job waiting in its write for a reader (drain.py: its node's spool_max reached, none attached)."""
    unread = (job.get("usage_now") or {}).get("unread")
    return f"; its output waits for a reader: {unread / 2**20:.0f} MB unread, spool_max reached: attach (grun " \
           f"--attach {A.label(job)}) or use -o" if unread else ""


def placement(job: dict, master, now: float, private: bool = False) -> tuple[str, str]:
    """Where a queued job could go now, as (kind, words): "starting", "busy" (the node with most room; of both, the
    limits it waits under if any), "disk" (only nodes with a nearly full spool), "none up", "no node"."""
    claims, limit, shown = master.table.claims(now), master.table.quotas.refusal(job), _shown(master.table)
    reasons = [(node, *node_reason(node, job, claims, private, shown)) for node in master.table.nodes.values()]
    busy = max(((n.free_cpus, n.name, text) for n, kind, text in reasons if kind in ("busy", "claimed")), default=None)
    return ("starting", limit or "starting") if any(kind == "fits" for _, kind, _ in reasons) else \
        ("busy", limit or f"most room: {busy[1]} ({busy[2]})") if busy else \
        ("disk", "the nodes that could run it have a nearly full spool") if any(k == "disk" for _, k, _ in reasons) \
        else ("none up", "no node up could run it") if master.table.nodes else ("no node", "no node yet")


def progress(job: dict, master, now: float, private: bool = False) -> str:
    """A waiting `grun`'s line ("queued: 14 ahead; needs 4 cpus, 100 MB; most room: n3 (...)"); else explain()'s."""
    if job["state"] != J.QUEUED:  # (the caller names the job: "grun: job 7 is held: ...")
        return explain(job, master, now, private).removeprefix(f"Job {A.label(job)} ")
    ahead = sum(1 for _ in itertools.takewhile(lambda other: other["id"] != job["id"], master.table.pending))
    return f"queued: {ahead} ahead; needs {request_text(job)}; {placement(job, master, now, private)[1]}"


def provenance(job: dict) -> str:
    """Where the job's request came from when not from its submitter (`origin`: a rule, ...), and its warnings."""
    origin = ", ".join(f"{field} from {where}" for field, where in (job.get("origin") or {}).items())
    warnings = "".join(f" Warning: {w}." for w in job.get("warnings") or ())
    return (f" Its request: {origin}." if origin else "") + warnings


_n = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # (memory: an int, 1048576 MB not 1.04858e+06)
_shown = lambda table: lambda job_id: A.label(table.jobs.get(job_id) or {"id": job_id})  # (node_reason's `shown`)


def _duration(secs: float) -> str:
    secs = max(0.0, secs)
    return f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.0f} min" if secs < 5400 else f"{secs / 3600:.1f} h"
