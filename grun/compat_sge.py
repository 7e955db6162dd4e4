"""SGE's commands (qsub, qstat, qdel, qacct) as thin fronts to grun's client, for the tools written for
SGE, on the ground grun/compat.py lays for both families (Slurm's: grun/compat_slurm.py)."""

import os
import re
import sys
import time

from . import compat as C
from .client import Client, GrunError, current_user
from .compat import Refused, items, last, out_path, parse, table
from .core.arrays import left
from .core.jobs import FINAL_STATES, ON_NODE_STATES, number_or_text, parse_time_limit
from .tables import command_text, label, name_of
from .values import is_name, task_ref

QSUB = {**table("name=-N out=-o err=-e join=-j cwd:-cwd wd=-wd allenv:-V env=-v resources=-l array=-t limit=-tc "
                "hold_jid=-hold_jid hold_jid_ad=-hold_jid_ad sync=-sync terse:-terse binary=-b shell=-S "
                "start_shell=-shell queue=-q project=-P account=-A rerun=-r hold:-h notify:-notify mail=-m "
                "mail_to=-M priority=-p reserve=-R verify=-w now=-now share=-js begin=-a ckpt=-ckpt"), "-pe": ("pe", 2)}
STATES = {"queued": "qw", "held": "hqw", "waiting": "hqw", "dispatched": "t", "running": "r", "suspended": "s"}
# memory limits (grun's -m: reserved, limited at hard_factor x it), memory requests (reserved only), time limits
MEMORY, REQUEST, TIME = ("h_vmem", "s_vmem", "h_rss", "h_data", "mem"), ("mem_free", "virtual_free"), ("h_rt", "s_rt")
ULIMITS = {"h_cpu": ("-t", 1), "h_fsize": ("-f", 512), "h_stack": ("-s", 1024)}  # (sh's ulimit: s, 512-byte blocks, KB)
NOTED = {"-P": "projects", "-A": "accounts", "-m": "mail", "-M": "mail", "-js": "job shares", "-ckpt": "checkpoints",
         "-notify": "USR1/USR2 warnings: at its limits a job gets TERM, then KILL"}
REFUSED = {"-a": "grun cannot delay a job's start (-h queues it held till `grun -e resume ID`)",
           "-l": "grun has no whole-node request (ask for slots and memory: -pe smp N -l h_vmem=SIZE)"}


def yes(opts: dict, key: str) -> bool:
    value = last(opts, key, "n")
    if value not in ("y", "yes", "n", "no"):
        flag = next(spelling for spelling, (name, _) in QSUB.items() if name == key)
        raise Refused(f"{flag} takes y or n, got {value!r}")
    return value.startswith("y")


def qsub(argv: list[str]) -> int:
    """qsub [options] [SCRIPT [ARGS...]] | -b y COMMAND...: prints `Your job N ("name") has been submitted`."""
    opts, rest = parse(argv, QSUB, glued=False)  # (SGE's options are whole words: -verify is not -v erify)
    binary = yes(opts, "binary")
    script = None if binary else C.read_script(rest[0] if rest else None, "job")
    if binary and not rest:
        raise Refused("-b y needs a command")
    opts = opts if binary else C.directives(script, "#$", QSUB, opts, first_only=False, glued=False)
    name = last(opts, "name", os.path.basename(rest[0].split()[0] if binary and rest[0].split() else rest[0])
                if rest else "STDIN")
    if "name" in opts and re.search(r"[\s/:@\\*?]", name):  # (as SGE's: refused at submit, not at start)
        raise Refused(f"-N {name!r}: a job name has no whitespace and none of / : @ \\ * ?")
    resources = {key: value for key, _, value in (item.partition("=") for item in items(opts, "resources"))}
    queues = items(opts, "queue")  # QUEUE@HOST, *@HOST: the host; a queue without one: any host
    hosts = [h for q in queues for h in q.partition("@")[2].split("|")] if all("@" in q for q in queues) else []
    hosts += [h for key in ("h", "hostname") for h in resources.pop(key, "").split("|") if h]
    for spelling in [flag for flag in ("-q", *NOTED) if QSUB[flag][0] in opts and (flag != "-q" or not hosts)]:
        print(f"qsub: note: {spelling} ignored (grun has no {NOTED.get(spelling, 'queues')})", file=sys.stderr)
    if refused := "-a" * ("begin" in opts) or next((f"-l {key}" for key in ("exclusive", "excl") if resources.pop(
            key, "false").lower() not in ("false", "0")), None):
        raise Refused(f"{refused}: {REFUSED[refused[:2]]}")
    if yes(opts, "now") or last(opts, "verify", "n") not in ("e", "w", "n"):
        raise Refused("-now y: grun queues a job till it can start" if yes(opts, "now") else
                      "-w v: grun does not verify a job without queueing it" if last(opts, "verify") == "v" else
                      f"-w takes e, w, n or v, got {last(opts, 'verify')!r}")
    yes(opts, "reserve")  # (-R y: grun reserves room for a job that waits long by itself)
    pe = last(opts, "pe", [None, "1"])[1]  # N, or a range N-M, N-, -M: its lowest (grun gives no more than asked)
    m = re.fullmatch(r"(\d+)?(?:-(\d*))?", pe)
    slots = resources.pop("slots", None) or (m[1] or "1" if m else pe)
    if not slots.isdigit() or int(slots) < 1 or m and m[2] and int(m[2]) < int(slots):
        raise Refused(f"-pe {' '.join(last(opts, 'pe'))}: expected a number of slots or a range of them")
    request: dict = {"cpus": int(slots), "requeue": last(opts, "rerun", "y").startswith("y"), "hosts": ",".join(hosts)
                     or None, "cwd": os.getcwd() if "cwd" in opts else last(opts, "wd", os.path.expanduser("~"))}
    if "priority" in opts:  # (as SGE's: a user may lower a job's, from 0 down to -1023)
        if not re.fullmatch(r"[+-]?\d+", last(opts, "priority")):
            raise Refused(f"-p {last(opts, 'priority')}: expected a number")
        request["priority"] = C.priority(int(last(opts, "priority")))
    setup, memory = "", {}
    size = lambda v: int(v) if v.isdigit() else C.megabytes(v) << 20  # (bytes: plain numbers are, in SGE)
    seconds = lambda v: parse_time_limit(f"{v}s" if v.isdigit() else v)  # (SGE: plain numbers are seconds)
    for key, value in resources.items():
        if (key in MEMORY or key in REQUEST) and value:  # per slot, as SGE counts them
            memory[key in MEMORY] = -(-size(value) * int(slots) // (1 << 20))
        elif key in TIME and value:
            request["time"] = seconds(value)
        elif key in ULIMITS and value:  # SGE's hard limits of each process: ulimit's in the job's shell
            amount = seconds(value) if key == "h_cpu" else size(value)
            setup += f"ulimit {ULIMITS[key][0]} {max(1, int(amount) // ULIMITS[key][1])}\n"
        elif value and is_name(key):  # a consumable (gpu=1) or a label (arch=x86_64)
            request.setdefault("params", {})[key] = number_or_text(value)
        else:
            raise Refused(f"unsupported resource -l {key}{'=' * bool(value)}{value}")
    if memory:  # a limit (h_vmem) reserves and limits; a request alone (mem_free) only reserves
        request.update(memory=memory.get(True, memory.get(False)), reserve_only=True not in memory or None)
    client, tasks = Client(), _task_range(last(opts, "array")) if "array" in opts else None
    span = tasks and f"{tasks.start}-{tasks[-1]}:{tasks.step}"
    request["after"] = [j["id"] for j in _holds(client, items(opts, "hold_jid"))]  # (none: no dependency)
    if "hold_jid_ad" in opts:  # grun has no task-to-task dependency: each task waits for the whole arrays
        arrays = _holds(client, items(opts, "hold_jid_ad"))
        # (ranges compare by the numbers they hold, without listing them: -t 1-1000000)
        if tasks is None or any([range(*r) for r in a.get("ranges") or []] != [tasks] for a in arrays):
            raise Refused("-hold_jid_ad: this job and the jobs it names must be arrays of the same -t range")
        if arrays:
            print("qsub: note: -hold_jid_ad: each task waits for all the tasks of "
                  f"{', '.join(str(a['id']) for a in arrays)} (grun has no task-to-task dependency)", file=sys.stderr)
        request["after"] += [a["id"] for a in arrays]
    if tasks:
        request["array"] = span + (f"%{last(opts, 'limit')}" if "limit" in opts else "")
    env = dict(JOB_NAME=name, REQUEST=name, NSLOTS=slots, NHOSTS="1", QUEUE="all.q", ENVIRONMENT="BATCH",
               SGE_TASK_ID="undefined", SGE_O_WORKDIR=os.getcwd(), SGE_O_HOST=os.uname().nodename,
               **dict(zip(("SGE_TASK_FIRST", "SGE_TASK_LAST", "SGE_TASK_STEPSIZE"),
                          re.split("[-:]", span) if tasks else ["undefined"] * 3)),
               **{f"SGE_O_{k}": os.environ.get(k, "") for k in ("HOME", "PATH", "SHELL", "LOGNAME")})
    request.update(env=env, pass_env=["*"] * ("allenv" in opts) + items(opts, "env"))  # (-v NAME=VALUE: set so)
    task = '."$SGE_TASK_ID"' if "array" in opts else ""
    names = {"$JOB_ID": '"$JOB_ID"', "$TASK_ID": '"$SGE_TASK_ID"', "$JOB_NAME": '"$JOB_NAME"', "$USER": '"$USER"',
             "$HOME": '"$HOME"', "$HOSTNAME": '"$HOSTNAME"'}
    out, err = (_output(opts, key, name, names, task) for key in ("out", "err"))
    if binary and ("start_shell" not in opts or yes(opts, "start_shell")):
        # SGE's -shell y: the command line goes to a shell, its variables ($SGE_TASK_ID) expanded; (SGE joins the
        # words with spaces; here each argument stays one word, "$VAR" in it expanded, so `sh -c "a; b"` still works)
        rest = [last(opts, "shell", "/bin/sh"), "-c", rest[0] + "".join(
            ' "' + re.sub(r'(["\\`])', r"\\\1", word) + '"' for word in rest[1:])]
    ids: list = []

    def submit() -> int:  # (-sync y: as SGE's, the job dies with qsub, on SIGINT, SIGTERM and EPIPE)
        try:
            ids.append(C.submit(client, "sge", name, script, rest[1:] if script is not None else rest, out,
                                None if yes(opts, "join") else err, last(opts, "shell", "" if (script or "#!").startswith(
                                    "#!") else "/bin/sh"), hold="hold" in opts, append=True, setup=setup, **request))
        except GrunError as exc:  # the master's words for grun's options, in qsub's
            raise Refused(str(exc).replace("--after: ", "-hold_jid: ")) from None
        shown = f"{ids[0]}.{span}" if tasks else str(ids[0])
        print(shown if "terse" in opts else
              f"Your job{'-array' if 'array' in opts else ''} {shown} (\"{name}\") has been submitted", flush=True)
        if not yes(opts, "sync"):
            return 0
        code = client.exit_code(ids[0])
        print(f"Job {ids[0]} exited with exit code {code}.")
        return code
    if not yes(opts, "sync"):
        return submit()
    from .running import dies_with
    from .verbs import Context
    return dies_with(Context(lambda: client, cli=True), ids, submit)


def _task_range(text: str) -> range:
    """-t n[-m[:s]]: the task ids (its last, as SGE's, the last one the step reaches)."""
    m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", text)
    tasks = range(int(m[1]), int(m[2] or m[1]) + 1, int(m[3] or 1)) if m and int(m[3] or 1) else range(0)
    if not tasks or not tasks[0]:
        raise Refused(f"-t {text}: expected n[-m[:s]], task ids from 1")
    return tasks


def _holds(client: Client, held: list[str]) -> list[dict]:
    """-hold_jid's jobs: ids, names or globs (this user's live jobs of that name). As SGE, a name that
    matches no job and an id of no job (or of one long gone) are no hold."""
    known = [job for word in held if word.isdigit() and (job := C.find(client, word))]  # (an id may be of no job)
    if names := [i for i in held if not i.isdigit()]:
        import fnmatch
        known += [j for j in client.jobs() if j.get("user") == current_user() and "task" not in j
                  and any(fnmatch.fnmatchcase(name_of(j), n) for n in names)]
    return known


def _output(opts: dict, key: str, name: str, names: dict, task: str) -> str:
    """SGE's output name: `NAME.oJOBID[.TASK]` in the job's directory, or in the directory -o/-e names, or the file."""
    path = last(opts, key, "")
    if not path or os.path.isdir(path):
        return (out_path(path.rstrip("/") + "/", names) if path else "") + \
            out_path(name, names) + f'.{key[0]}"$JOB_ID"' + task
    return out_path(path, names)


def qstat(argv: list[str]) -> int:
    """qstat [-u USER,...|'*'] [-j ID,...] [-xml]: the live jobs, SGE's columns and states."""
    opts = parse(argv, table("user=-u jobs=-j xml:-xml full:-f"), None)[0]
    if "jobs" in opts:
        client, words = Client(), items(opts, "jobs")  # live jobs only (an array: one block)
        found = [(w, [j] if w.isdigit() and (j := C.find(client, w)) and j["state"] not in FINAL_STATES else [])
                 for w in words]
        return _blocks(found, _detail, 28, "Following jobs do not exist: ")
    users = set(items(opts, "user")) if "user" in opts else {current_user()}
    rows = [(str(j["array"] if "task" in j else j["id"]), f"{0.5 + j.get('priority', 20) / 2048:.5f}", name_of(j), j.get("user", "?"),
             STATES.get(j["state"], "Eqw"), time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(
                 j.get("start_time") or j.get("submit_time") or 0)), f"all.q@{j['node']}" if j.get("node") else "",
             f"{max(1, round(j.get('cpus', 1)))}", str(j.get("task", j.get("array", "") if "ranges" in j else "")))
            for j in Client().jobs() if ("*" in users or j.get("user") in users)
            and ("ranges" not in j or not j.get("stopped") and j["tasks"] > j["started"])]
    if "xml" in opts:
        from xml.sax.saxutils import escape
        tags = ("JB_job_number", "JAT_prio", "JB_name", "JB_owner", "state", "JAT_start_time", "queue_name", "slots",
                "tasks")
        parts = {part: "".join(f'    <job_list state="{"running" if running else "pending"}">\n' + "".join(
            f"      <{t}>{escape(v)}</{t}>\n" for t, v in zip(tags, r) if v) + "    </job_list>\n"
            for r in rows if (running := r[4] in ("r", "t", "s")) == (part == "queue_info"))
            for part in ("queue_info", "job_info")}
        print("<?xml version='1.0'?>\n<job_info>\n" + "".join(f"  <{p}>\n{x}  </{p}>\n" for p, x in parts.items())
              + "</job_info>")
        return 0
    if rows:
        print("job-ID  prior   name       user         state submit/start at     queue                          "
              "slots ja-task-ID \n" + "-" * 113)
    for r in rows:
        print(f"{r[0]:>7} {r[1]} {r[2][:10]:<10} {r[3][:12]:<12} {r[4]:<5} {r[5]} {r[6]:<30} {r[7]:>5} {r[8]}".rstrip())
    return 0


def _blocks(found: list[tuple[str, list]], fields, width: int, missing_text: str) -> int:
    """Each id asked with its jobs: a block of `key value` lines per job; the ids without one named on stderr."""
    for _, jobs in found:
        for job in jobs:
            print("=" * 62 + "".join(f"\n{key:<{width}}{value}" for key, value in fields(job)))
    if missing := [word for word, jobs in found if not jobs]:
        print(missing_text + ", ".join(missing), file=sys.stderr)
    return 1 if missing else 0


def _detail(job: dict) -> tuple:
    return (("job_number:", job["id"]), ("submission_time:", time.ctime(job.get("submit_time", 0))),
            ("owner:", job.get("user")), ("sge_o_workdir:", job.get("cwd")), ("job_name:", name_of(job)),
            ("job_state:", STATES.get(job["state"], job["state"])), ("script_file:", command_text(job)),
            ("parallel environment:", f"smp range: {job.get('cpus', 1):g}"),
            ("hard resource_list:", f"h_vmem={job.get('memory')}M"), ("exec_host_list 1:", job.get("node") or ""))


def _accounting(job: dict) -> tuple:
    u = job.get("usage") or {}
    return (("qname", "all.q"), ("hostname", job.get("node")), ("owner", job.get("user")), ("jobname", name_of(job)),
            ("jobnumber", job["array"] if "task" in job else job["id"]), ("taskid", job.get("task", "undefined")),
            ("qsub_time", time.ctime(job.get("submit_time", 0))), ("start_time", time.ctime(job.get("start_time") or 0)),
            ("end_time", time.ctime(job.get("end_time") or 0)), ("slots", f"{job.get('cpus', 1):g}"),
            ("failed", 0 if job.get("start_time") else 1), ("exit_status", job.get("exit")),
            ("ru_wallclock", f"{u.get('wall', 0):.3f}s"), ("ru_utime", f"{u.get('utime', 0):.3f}s"),
            ("ru_stime", f"{u.get('stime', 0):.3f}s"), ("ru_maxrss", f"{u.get('maxrss_kb', 0)}K"))


def qdel(argv: list[str]) -> int:
    """qdel ID[,ID...] | -u USER: per job, `USER has registered the job N for deletion` (running) or `has deleted
    job N` (not started); an array's running tasks and a task given as N.T: `... job-array task N.T ...`."""
    opts, words = parse(argv, table("user=-u force:-f"), False)
    ids = [i for w in words for i in w.split(",") if i]
    if not ids and "user" not in opts or any(not (i.isdigit() or task_ref(i)) for i in ids):
        raise Refused("usage: qdel JOB_ID[,JOB_ID...] | -u USER")
    client, me = Client(), current_user()
    live = client.jobs()
    by_label = {label(j): j for j in live}
    ids += [label(j) for j in live if "task" not in j and j.get("user") in last(opts, "user", "").split(",")
            and label(j) not in ids]  # (jobs and arrays: an array's tasks go with it)
    found = client.kill(ids, 15, "force" in opts)  # (N.T: one task)
    for job_id, ok in found.items():
        job = by_label.get(str(job_id), {})
        running = [job] if job.get("state") in ON_NODE_STATES and "ranges" not in job else [
            t for t in live if t.get("array") == job.get("id") and "task" in t and t["state"] in ON_NODE_STATES]
        lines = [f"{me} has registered the job{'-array task' * ('task' in t)} {label(t)} for deletion" for t in running]
        if not ok:
            lines = [f'denied: job "{job_id}" does not exist']
        elif not running or "ranges" in job and left(job):  # (an array's unstarted tasks)
            lines.append(f"{me} has deleted job{'-array task' * ('.' in str(job_id))} {job_id}")
        print("\n".join(lines))
    return 0 if all(found.values()) else 1


def qacct(argv: list[str]) -> int:
    """qacct -j ID[,ID...]: the accounting record of finished jobs."""
    opts, rest = parse(argv, table("jobs=-j"), False)
    if rest or "jobs" not in opts:
        raise Refused("usage: qacct -j JOB_ID[,JOB_ID...]")
    client, words, ended = Client(), items(opts, "jobs"), {}
    for j in C.job_list(client, words, None)[0]:  # ended jobs; an array's ended tasks, as SGE's accounting has them
        if "ranges" not in j and j["state"] in FINAL_STATES:
            for key in {str(j.get("array", j["id"])), f"{j.get('array')}_{j.get('task')}"}:  # (N, or N_T)
                ended.setdefault(key, []).append(j)
    return _blocks([(w, ended.get(w, [])) for w in words], _accounting, 13, "error: job id not found: ")
