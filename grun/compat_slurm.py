"""Slurm's commands (sbatch, srun, squeue, sacct, scancel, sinfo) as thin fronts to grun's client, for the tools
written for Slurm, on the ground grun/compat.py lays for both families (SGE's: grun/compat_sge.py)."""

import contextlib
import math
import os
import re
import shlex
import sys
import time

from . import compat as C
from .client import Client, GrunError, current_user, known_user, refusals
from .compat import Refused, last, parse, table
from .core.arrays import left, unstarted
from .core.arrays import parse as array_tasks
from .core.deps import parse_dependency
from .core.jobs import EXIT_TIMEOUT, FINAL_STATES, ON_NODE_STATES, wrapped
from .core.nodes import host_matches
from .options import OPTIONS
from .pty_job import Terminal
from .tables import BY_NAME, FIELDS, SHORT, command_text, host_ranges, label, name_of, reason_of, stamp, state_of
from .values import is_name, parse_time_limit

# a job and a step are one task (grun runs a job as one task on one node), as Slurm tells its task
ONE_TASK = {"SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
            "SLURM_GTIDS": "0"}

SLURM_STATES = " ".join([*SHORT, *SHORT.values()]) + " ALL PREEMPTED PR BOOT_FAIL BF DEADLINE DL COMPLETING CG" \
    " CONFIGURING CF REQUEUED RQ REQUEUE_FED RF REQUEUE_HOLD RH RESIZING RS RESV_DEL_HOLD RD REVOKED RV SIGNALING SI" \
    " SPECIAL_EXIT SE STAGE_OUT SO STOPPED ST"  # (what squeue -t takes)
SUBMIT = table("name=-J,--job-name out=-o,--output err=-e,--error cpus=-c,--cpus-per-task mem=--mem "
               "mem-per-cpu=--mem-per-cpu time=-t,--time array=-a,--array dependency=-d,--dependency "
               "parsable:--parsable export=--export chdir=-D,--chdir wait:-W,--wait partition=-p,--partition "
               "account=-A,--account ntasks=-n,--ntasks nodes=-N,--nodes wrap=--wrap quiet:-Q,--quiet "
               "norequeue:--no-requeue requeue:--requeue hold:-H,--hold gres=--gres open-mode=--open-mode qos=-q,--qos "
               "mail-type=--mail-type mail-user=--mail-user comment=--comment nice?--nice hosts=-w,--nodelist "
               "ntasks-per-node=--ntasks-per-node kill-on-invalid-dep=--kill-on-invalid-dep "
               "exclude=-x,--exclude exclusive?--exclusive begin=-b,--begin signal=--signal test:--test-only")
SRUN = {k: v for k, v in SUBMIT.items()
        if v[0] not in ("array", "parsable", "wait", "wrap", "out", "err", "hold", "open-mode", "test")} | \
    table("pty:--pty")  # (grun.pty_job)
IGNORED = {"partition": "partitions", "account": "accounts", "qos": "QOS", "mail-type": "mail", "mail-user": "mail"}
ONE = "grun runs a job as one task on one node"
REFUSED = {"exclude": ("grun cannot keep a job off a node (-w names those it may run on)",),  # KEY: (why, values ok)
           "exclusive": ("grun has no whole-node request (ask for cpus and memory: -c N --mem=0)",),
           "begin": ("grun cannot delay a job's start (-H queues it held till `grun -e resume ID`)",),
           "nodes": (ONE, "1", "1-1"), "ntasks-per-node": (ONE, "1", "1-1"),
           "kill-on-invalid-dep": ("grun cancels a job whose dependency can never be met", "yes")}
# scontrol update's keys (in lower case) -> grun's edit's; the shell texts of sbatch's -o %j, %A, %a, %N
UPDATE = {"jobid": "id", "numcpus": "cpus", "minmemorynode": "memory", "timelimit": "time", "priority": "priority",
          "nice": "nice"}
OUT_NAMES = ('"$SLURM_JOB_ID"', '"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"', '"${SLURM_ARRAY_TASK_ID:-4294967294}"',
             '"$GRUN_NODE"')
CONVERT = {o.long: o.convert for o in OPTIONS}  # grun's own readers of --signal, --time-signal (sbatch --signal's form)
# the options that are grun's, one to one: KEY -> (job_spec's argument, its value from the option's); --signal's B:,
# the batch shell alone: grun signals all of the job's session
GRUN = {"time": ("time", parse_time_limit), "hold": ("hold", bool), "norequeue": ("requeue", lambda _: False),
        "signal": ("time_signal", CONVERT["time-signal"]),
        "nice": ("priority", lambda n: C.priority("100" if n is True else n, "--nice", -1))}  # (--nice: less 100)


def slurm_request(opts: dict, name: str, command: str, script: str = "") -> dict:
    """job_spec's arguments for Slurm's options, with the environment Slurm gives a job (`script`: sbatch's)."""
    if key := next((key for key in REFUSED if key in opts and last(opts, key) not in REFUSED[key][1:]), None):
        raise Refused(f"--{key}" + f"={last(opts, key)}" * (len(REFUSED[key]) > 1) + f": {REFUSED[key][0]}")
    note = (lambda text: None) if "quiet" in opts else lambda text: print(f"{command}: note: {text}", file=sys.stderr)
    if ignored := [key for key in IGNORED if key in opts]:
        note(f"{', '.join('--' + k for k in ignored)} ignored (grun has no {', '.join(dict.fromkeys(map(IGNORED.get, ignored)))})")
    per_task, tasks = last(opts, "cpus", "1"), last(opts, "ntasks", "1")
    if bad := next(((k, v) for k, v in (("cpus-per-task", per_task), ("ntasks", tasks)) if not v.isdigit() or not int(v)), 0):
        raise Refused(f'Invalid numeric value "{bad[1]}" for --{bad[0]}.')  # (Slurm's words)
    export, here, cpus = last(opts, "export", "ALL").split(","), os.getcwd(), str(int(per_task) * int(tasks))
    env = dict(SLURM_SUBMIT_DIR=here, SLURM_SUBMIT_HOST=os.uname().nodename, SLURM_JOB_NAME=name,
               SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1", SLURM_CPUS_ON_NODE=cpus, SLURM_JOB_CPUS_PER_NODE=cpus,
               SLURM_JOB_USER=current_user(), USER=os.environ.get("USER") or current_user(), SLURM_TASKS_PER_NODE="1",
               SLURM_JOB_UID=str(os.getuid()), SLURM_JOB_GID=str(os.getgid()), SLURM_CLUSTER_NAME="grun",
               SLURM_JOB_PARTITION="grun", **ONE_TASK, **({"SLURM_CPUS_PER_TASK": per_task} if "cpus" in opts else {}))
    if tasks != "1":  # no srun to start them: N tasks are N cpus for the one (bwa -t $SLURM_NTASKS)
        if command == "srun" or re.search(r"^[^#\n]*\bsrun\b", script, re.MULTILINE):
            raise Refused(f"--ntasks={tasks}: {ONE}")
        note(f"--ntasks={tasks}: one task with {cpus} cpus (grun runs one)")
        env.update(SLURM_NTASKS=tasks, SLURM_NPROCS=tasks, SLURM_TASKS_PER_NODE=tasks)
    request = {"cpus": int(cpus), "cwd": os.path.join(here, last(opts, "chdir", "")), "env": env,
               "pass_env": ["*" if w == "ALL" else w for w in export if w != "NONE"],  # (NAME=VALUE: set so)
               "hosts": ",".join(hostlist(last(opts, "hosts", ""))) or None,  # (a bad -t: a ValueError, one line)
               **{arg: value(last(opts, key)) for key, (arg, value) in GRUN.items() if key in opts}}
    if "mem" in opts or "mem-per-cpu" in opts:
        request["memory"] = C.megabytes(last(opts, "mem", last(opts, "mem-per-cpu")), 1 if "mem" in opts else int(cpus))
        if not request["memory"] and not (command == "srun" and os.environ.get("GRUN_JOB_ID", "").isdigit()):
            # 0: all of the node's memory (a step's: all of its job's, as it is)
            request["memory"] = max([n["memory"] for n in Client().nodes()
                                     if host_matches(n["name"], request["hosts"] or "*")] or [1])
            note(f"--mem=0: the largest node's, {request['memory']} MB (no whole-node request)")
        per_cpu = "mem" not in opts  # (as Slurm's: the amount asked, per cpu or per node)
        env[f"SLURM_MEM_PER_{'CPU' if per_cpu else 'NODE'}"] = str(request["memory"] // int(cpus) if per_cpu else request["memory"])
    for item in C.items(opts, "gres"):  # gpu:2, gpu:a100:2 (a type: ignored)
        name, *kind, count = item.split(":") if ":" in item else (item, "1")
        if not count.isdigit() or not is_name(name) or len(kind) > 1:
            raise Refused(f"bad --gres {item!r}: expected NAME[:TYPE]:COUNT")
        request.setdefault("params", {})[name] = int(count)
    if "dependency" in opts:  # grun's, whose after is Slurm's afterany (not its after, ?, aftercorr, names or +TIME)
        if not re.fullmatch(r"((after(any|ok|notok)(:\d+(_\d+)?)+|singleton)(,(?=.)|$))+", dep := last(opts, "dependency")):
            raise Refused(f"unsupported dependency {dep!r}: grun has afterany, afterok, afternotok and singleton")
        if "singleton" in (words := dep.split(",")):  # after the user's live jobs of this name, as at submit (two
            words = [w for w in words if w != "singleton"] + [  # submitted at once do not see each other)
                f"after:{j['id']}" for j in Client().jobs() if j.get("user") == current_user() and name_of(j) == name
                and "task" not in j]  # (an array once: its tasks, each its own job id, come with it)
        request.update(parse_dependency(",".join(words).replace("afterany", "after").replace("_", ".")) if words else {})
    return request


def hostlist(text: str) -> list[str]:
    """Slurm's host list (n[1-3,07-08],m) as names: n1, n2, n3, n07, n08, m (a word's [...] groups one by one)."""
    if not (m := re.search(r"([^,]*?)\[(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)\]((?:\[[^]]*\]|[^,])*)", text)):
        return [word for word in text.split(",") if word]  # (names, or patterns as grun's -H takes: n[ab]*)
    ranges = [(first, int(first), int(end or first)) for first, _, end in (item.partition("-") for item in m[2].split(","))]
    if any(low > high for _, low, high in ranges):  # (n[3-1]: as Slurm's, refused, not no host, which is any)
        raise Refused(f"invalid node name specified: {m[0]}")
    words = [f"{m[1]}{n:0{len(first)}}{m[3]}" for first, low, high in ranges for n in range(low, high + 1)]
    return hostlist(text[:m.start()] + ",".join(words) + text[m.end():])


def sbatch(argv: list[str]) -> int:
    """sbatch [options] [SCRIPT [ARGS...]] | --wrap CMD: prints `Submitted batch job N` (--parsable: N)."""
    opts, rest = parse(argv, SUBMIT)
    if "wrap" in opts:
        if rest:
            raise Refused(f"--wrap and a script ({rest[0]}) given together")
        script, name = f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{last(opts, 'wrap')}\n", "wrap"
    else:
        name = os.path.basename(rest[0]) if rest else "sbatch"
        try:
            script = C.read_script(rest[0] if rest else None, "batch", newline="")
        except OSError:  # (Slurm's words)
            raise Refused(f"Unable to open file {rest[0]}") from None
    if not script.startswith("#!"):
        raise Refused("This does not look like a batch script.  The first line must start with #! followed by "
                      "the path to an interpreter.")
    if "\r\n" in script:
        raise Refused("Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX line breaks (\\n).")
    opts = C.directives(script, "#SBATCH", SUBMIT, opts)
    name = last(opts, "name", name)
    request = slurm_request(opts, name, "sbatch", script)
    if "array" in opts:  # (a bad value: a ValueError, one line)
        ranges = array_tasks(request.setdefault("array", last(opts, "array")))["ranges"]
        ids = sorted(t for r in ranges for t in range(*r))
        request["env"].update(SLURM_ARRAY_TASK_COUNT=str(len(ids)), SLURM_ARRAY_TASK_STEP=str(ranges[0][2]),
                              SLURM_ARRAY_TASK_MIN=str(ids[0]), SLURM_ARRAY_TASK_MAX=str(ids[-1]))
    names = {"%%": "%", **dict(zip(("%j", "%A", "%a", "%N"), OUT_NAMES)), "%J": OUT_NAMES[0], "%x": shlex.quote(name),
             "%u": shlex.quote(current_user()), "%n": "0", "%t": "0", "%s": "batch"}
    out = last(opts, "out", "slurm-%A_%a.out" if "array" in opts else "slurm-%j.out")
    names |= {f"%{n}{c}": f'"$(printf %0{n}d {names["%" + c]})"' for n in "0123456789" for c in "jJAa"}  # %4a: 0004
    if (mode := last(opts, "open-mode", "truncate")) not in ("append", "truncate"):
        raise Refused(f"Invalid --open-mode: {mode} (append or truncate)")
    if "test" in opts:
        return test_only(request)
    path = rest[0] if rest[:1] and rest[0][:1] in "./" else os.path.join(request["cwd"], *rest[:1])  # (as Slurm's)
    job_id = C.submit(client := Client(), "slurm", name, script, rest[1:], C.out_path(out, names),
                      C.out_path(last(opts, "err"), names) if "err" in opts else None, append=mode == "append",
                      setup=f": {shlex.quote(path)}\n" * bool(rest), **request)  # (its path: for scontrol's Command)
    print(job_id if "parsable" in opts else f"Submitted batch job {job_id}", flush=True)
    code = client.exit_code(job_id) if "wait" in opts else 0  # as Slurm's: 1 for a job a signal ended (or its time
    # limit), and an array's, its tasks' highest exit code (grun's: its lowest failed task's)
    jobs = C.job_list(client, [str(job_id)], None)[0] if code else []  # (an array's own: its tasks that never ran)
    return max([0] + [code if "ranges" in j else 1 if j.get("signal") else j.get("exit", 1) for j in jobs])


def test_only(request: dict) -> int:
    """sbatch --test-only: nothing submitted; the nodes that could start the job now (grun has no estimate of later)."""
    fits = [n for n in Client().nodes() if n["up"] and host_matches(n["name"], request["hosts"] or "*")
            and n["cpus"] >= request["cpus"] and n["memory"] >= request.get("memory", 0)]
    if not fits:
        raise Refused("Batch job submission failed: Requested node configuration is not available")
    free = [n["name"] for n in fits if n["free_cpus"] >= request["cpus"] and n["free_memory"] >= request.get("memory", 0)]
    print(f"sbatch: Job 0 to start at {stamp(time.time() if free else None)} using {request['cpus']} processors on nodes "
          f"{host_ranges(free or [n['name'] for n in fits])} in partition grun", file=sys.stderr)
    return 0


def srun(argv: list[str]) -> int:
    """srun [options] COMMAND [ARGS...]: runs it, its input and output streamed, with its exit code (in a job: step)."""
    opts, command = parse(argv, SRUN)
    if not command:
        raise Refused("No command given to execute.")
    name, stdin = last(opts, "name", os.path.basename(command[0])), None if os.isatty(0) else 0
    request = slurm_request(opts, name, "srun")
    if os.environ.get("GRUN_JOB_ID", "").isdigit():
        return step(request, command)
    client, ids = Client(), []
    request["env"].update(SLURM_STEP_ID="0", SLURM_STEPID="0")  # (as Slurm's: its job's one step)
    if term := "pty" in opts and stdin is None and Terminal():  # (no terminal, as Slurm's: no --pty)
        command, stdin, request["requeue"] = term.wrap(command), term.fd, False

    def follow() -> int:  # (as grun's: the job dies with us, on SIGINT, SIGTERM and EPIPE)
        ids.append(C.submit(client, "slurm", name, None, command, stdin=stdin is not None, **request))
        say = lambda text: print(f"srun: {text}" + "\r" * bool(term and term.raw), file=sys.stderr, flush=True)
        code = client.follow(ids[0], stdin_fd=stdin, on_limit=say, on_note=say, on_start=term and term.start, one_run=True)
        job = C.find(client, ids[0]) if code == EXIT_TIMEOUT else None  # (its time limit's, or its command's own)
        return 128 + int(job.get("signal") or 15) if job and job.get("limit") == "time" else code  # (Slurm's: 143)
    try:
        return C.dies_with(client, ids, follow)
    finally:
        term and term.restore()


def step(request: dict, command: list[str]) -> int:
    """srun in a grun job, as Slurm's in an allocation: srun becomes the command, a step of the job in its reservation
    (asking more than it has is refused, as Slurm's), so the streams, signals and exit code are the command's."""
    import signal
    job = os.environ["GRUN_JOB_ID"]
    for key, have, words in (("cpus", "SLURM_CPUS_ON_NODE", "More processors requested than permitted"),
                             ("memory", "SLURM_MEM_PER_NODE", "Memory required by task is not available")):
        if os.environ.get(have, "").isdigit() and request.get(key, 0) > int(os.environ[have]):
            raise Refused(f"Unable to create step for job {job}: {words}")
    number = "0"
    if os.environ.get("SLURM_JOB_ID") == job and os.environ.get("TMPDIR"):  # (the job's own TMPDIR: grun/spawner.py)
        # steps are numbered 0, 1, ...: a byte appended for each (unbuffered: one write, then where it ended)
        with contextlib.suppress(OSError), open(f"{os.environ['TMPDIR']}/.srun-steps-{job}", "ab", buffering=0) as f:
            number = str(f.write(b".") and f.tell() - 1)
    env = {**os.environ, **{k: v for k, v in request["env"].items() if k == "SLURM_CPUS_PER_TASK"}, **ONE_TASK,
           "SLURM_JOB_ID": job, "SLURM_JOBID": job, "SLURM_STEP_ID": number, "SLURM_STEPID": number,
           "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NUM_NODES": "1", "SLURM_TASK_PID": str(os.getpid()),
           "SLURM_STEP_NODELIST": os.environ.get("GRUN_NODE", "")}
    # (no child: it got a signal to the job's process group twice); SIGPIPE, SIGXFSZ at their default, as Popen's
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.chdir(request["cwd"])
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"srun: error: execve(): {command[0]}: {exc.strerror}", file=sys.stderr)
        return 2


def fmt_fields(fmt: str, fields: dict | None = None, kind: str = "job") -> list[tuple]:
    """squeue's (`fields`: letter -> (header, value of a job); by default tables.FIELDS') and sinfo's -o: `%[.][N]X`
    fields (`.`: right-justified, N: width) and the text between them, as (header, value, width, right-justified)."""
    fields = fields or {c: row[:4:3] for c, row in FIELDS.items() if row[0]}
    out, fmt = [], fmt.replace("%all", "".join(f"%{c}|" for c in fields))  # (Slurm's: all)
    for literal, right, width, letter in re.findall(r"([^%]*)(?:%(\.?)(\d*)([A-Za-z]))?", fmt):
        if letter and letter not in fields:
            raise Refused(f"Invalid {kind} format specification: %{letter}")
        out += [(literal, None, 0, False)] * bool(literal) + ([(*fields[letter], int(width or 0), bool(right))] if letter else [])
    return out


def print_rows(fields: list[tuple], items: list, header: bool) -> None:
    """fmt_fields' fields of each item a line (`header`: their headers first), cut to their widths, as Slurm's."""
    for i in [None] * header + items:
        print("".join(f"{t[:w]:{'>' if r else '<'}{w}}" if w else t for h, get, w, r in fields
                      for t in [h if i is None or not get else get(i)]).rstrip())


def wanted_states(opts: dict, key: str) -> set[str]:
    """The states of squeue -t, sacct -s, scancel -t, in capitals (PD or PENDING)."""
    states = {s.upper(): s for s in C.items(opts, key)}
    if bad := next((given for s, given in states.items() if s not in SLURM_STATES.split()), None):
        raise Refused(f"Invalid job state specified: {bad}")
    return set(states)


def in_states(job: dict, states: set[str]) -> bool:
    return not states or "ALL" in states or bool({state_of(job), SHORT.get(state_of(job))} & states)


def user_name(word: str) -> str:
    try:
        return known_user(word)
    except GrunError:
        raise Refused(f"Invalid user: {word}") from None


def squeue(argv: list[str]) -> int:
    """squeue [-j IDS] [-u USERS] [--me] [-t STATES] [-n NAMES] [-r] [-h] [-o FORMAT | -O FIELDS]"""
    opts = parse(argv, table("jobs=-j,--jobs user=-u,--user noheader:-h,--noheader format=-o,--format name=-n,--name "
                             "Format=-O,--Format me:--me states=-t,--states partition=-p,--partition all:-a,--all "
                             "tasks:-r,--array"), None)[0]
    fields = fmt_fields(last(opts, "format", "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"))
    if "Format" in opts:
        fields = []
        for item in last(opts, "Format").split(","):
            key, _, width = item.partition(":")
            letter = BY_NAME.get(key.lower().replace("_", ""), ("", "1"))[1]  # ("1": sacct's only)
            if not FIELDS[letter][0] or not re.fullmatch(r"\.?\d*", width):
                raise Refused(f"Invalid job format specification: {item}")
            fields += [(*FIELDS[letter][:4:3], int(width.strip(".") or 20), width.startswith(".")), (" ", None, 0, False)]
    states = wanted_states(opts, "states")
    users = {user_name(u) for u in C.items(opts, "user")} if "user" in opts else \
        {current_user()} if "me" in opts else None
    ids, names, client = C.items(opts, "jobs"), C.items(opts, "name"), Client()
    jobs, unknown = C.job_list(client, ids)
    if unknown and not jobs:  # (one that has ended long ago: no line, as Slurm past MinJobAge)
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        return 1
    if not ids and set(states) - {"PENDING", "PD", "RUNNING", "R", "SUSPENDED", "S"}:  # ended ones too, as
        jobs += client.history(sys.maxsize, since=time.time() - 300)  # Slurm's MinJobAge (those ended since)
    shown = []  # (an array's own line while tasks are left to start, or, cancelled, some never started: with -t or -j)
    for job in sorted(jobs, key=lambda j: (SHORT.get(state_of(j), ""), -j.get("priority", 0), j["id"])):  # (Slurm's order)
        if in_states(job, states) and (users is None or job.get("user") in users) and (
                "name" not in opts or name_of(job) in names) and (
                "ranges" not in job or left(job) or (states or ids) and job["tasks"] > job["started"]):
            shown += [dict({k: v for k, v in job.items() if k != "ranges"}, array=job["id"], task=task,
                           _reason=reason_of(job)) for task in unstarted(job)] if "tasks" in opts and "ranges" in job \
                else [job]  # (-r: an array's tasks not started, one a line)
    head = next((j for j in shown if j["state"] == "queued" and reason_of(j) == "Priority"), None)
    if head and not any(n["up"] and n["free_cpus"] >= head.get("cpus", 1) and n["free_memory"] >= head.get("memory", 0)
                        for n in client.nodes()):  # the first in line waits for room (those after it, for it)
        head["_reason"] = "Resources"
    elif head:  # a node has room: does the job (queued with --force) want a host, resource or mount none has?
        head["_reason"] = "ReqNodeNotAvail" if client.call("placement", head["id"]) == "none up" else "Priority"
    print_rows(fields, shown, "noheader" not in opts)
    return 0


def sacct(argv: list[str]) -> int:
    """sacct [-j IDS] [-X] [-n] [-P|-p] [-o|--format FIELDS] [-u USERS | -a] [--name NAMES] [-b] [-S|-E TIME] [-M all]"""
    opts = parse(argv, table("jobs=-j,--jobs X:-X,--allocations noheader:-n,--noheader P:-P,--parsable2 "
                             "p:-p,--parsable format=-o,--format user=-u,--user all:-a,--allusers name=--name "
                             "brief:-b,--brief start=-S,--starttime end=-E,--endtime state=-s,--state "
                             "clusters=-M,--clusters"), None)[0]
    fields, states = [], wanted_states(opts, "state")
    for i, item in enumerate(last(opts, "format", "jobid,state,exitcode" if "brief" in opts else
                                  "jobid,jobname,partition,account,alloccpus,state,exitcode").split(",")):
        key, _, width = item.partition("%")
        name, letter = BY_NAME.get(key.lower(), ("x", ""))
        if name.islower() or width and not re.fullmatch(r"-?\d+", width):  # (squeue's -O names: not sacct's)
            raise Refused(f'Invalid field requested: "{key}"')  # (a width: right-justified; -N, left, as the first's)
        fields.append((name, int(width or FIELDS[letter][2] * (-1 if i == 0 else 1)), FIELDS[letter][3]))
    if bad := [f"-M {c}: grun is one cluster, with no name (-M all: it)" for c in C.items(opts, "clusters") if c != "all"] \
            + [f"Bad job/step specified: {w}" for w in C.items(opts, "jobs") if not w[:1].isdigit()]:  # (as Slurm's)
        raise Refused(bad[0])
    client = Client()
    if "jobs" in opts:
        jobs = C.job_list(client, C.items(opts, "jobs"), None)[0]
    else:  # as sacct: this user's jobs that ran or waited between -S (default: midnight; with -s, now) and -E (now)
        users = None if "all" in opts else {user_name(u) for u in C.items(opts, "user")} or {current_user()}
        start, end = C.when(last(opts, "start", "now" if states else "midnight")), C.when(last(opts, "end", "now"))
        jobs = [j for j in client.history(sys.maxsize, None if users is None or len(users) > 1 else next(iter(users)),
                                          since=start)[::-1]  # (those that ended since -S, in the whole history)
                + client.jobs() if j.get("submit_time", 0) <= end and (users is None or j.get("user") in users)]
    # an array whose tasks have lines: its own while some wait (or, cancelled, never will start); Slurm's order: by id
    listed = {j["array"] for j in jobs if "task" in j}
    jobs = sorted((j for j in jobs if ("ranges" not in j or j["id"] not in listed or j["tasks"] > j["started"]) and (
        "name" not in opts or name_of(j) in C.items(opts, "name")) and in_states(j, states)),
        key=lambda j: (j["array"] if "task" in j else j["id"], j.get("task", math.inf)))
    sep, cut = "|" if "P" in opts or "p" in opts else None, lambda t, w: t if len(t) <= w else t[:w - 1] + "+"
    rows = [] if "noheader" in opts else [[f[0] for f in fields]] + ([] if sep else [["-" * abs(w) for _, w, _ in fields]])
    for row in rows + [[get(job) if sep else cut(get(job), abs(w)) for _, w, get in fields] for job in jobs]:
        print(sep.join(row) + ("|" if "p" in opts else "") if sep else
              " ".join(t[:-w].ljust(-w) if w < 0 else t[:w].rjust(w) for t, (_, w, _) in zip(row, fields)))
    return 0


def scancel(argv: list[str]) -> int:
    """scancel [-n NAME] [-u USER | --me] [-t STATE] [-s SIGNAL] [ID...]: ids as N, N_T (one array task) or N_[TASKS]."""
    opts, ids = parse(argv, table("name=-n,--name,--jobname user=-u,--user signal=-s,--signal quiet:-Q,--quiet "
                                  "state=-t,--state me:--me"), False)
    states = wanted_states(opts, "state")
    if not (ids or {"name", "user", "me"} & opts.keys() or states):
        raise Refused("No job identification provided")
    ids, sig, client = slurm_ids(ids), CONVERT["signal"](last(opts, "signal", "TERM")), Client()  # (bad: one line)
    user = user_name(last(opts, "user")) if "user" in opts else current_user() if "me" in opts else None  # (-u 1000)
    if "name" in opts or user or states:  # filters on the live jobs (with ids: those of them), anyone's, as Slurm's
        ids = [i for j in client.jobs() if (not ids or label(j) in ids or FIELDS["A"][3](j) in ids)
               and in_states(j, states) and name_of(j) == last(opts, "name", name_of(j)) and user in (None, j.get("user"))
               for i in ([f"{j['id']}.{t}" for t in unstarted(j)] if states and "ranges" in j else [label(j)])]
    # (an array: its id, all tasks; -t: those not started). As the real Slurm 22.05 here: ids of jobs that have ended or
    # never were, no word; another user's, a line each and exit non-zero (its 210), the rest cancelled
    refused = refusals(client.kill, ids, sig)[1] if ids else {}
    for i in refused:
        print(f"scancel: error: Kill job error on job id {str(i).replace('.', '_')}: Access/permission denied",
              file=sys.stderr)
    return 1 if refused else 0


def slurm_ids(words: list[str]) -> list[str]:
    """Slurm's job ids (N, N_T, N_[4-5,7]; comma lists) as grun's (N, N.T); Refused naming one that is none."""
    refs = []
    for word in (w for given in words for w in re.split(r",(?![^[]*])", given) if w):
        m = re.fullmatch(r"(\d+)(?:_(\d+|\[[\d,:-]+]))?", word)
        try:
            refs += [f"{m[1]}.{t}" for r in array_tasks(m[2].strip("[]"))["ranges"] for t in range(*r)] if m[2] else [m[1]]
        except (TypeError, ValueError):  # (TypeError: no match)
            raise Refused(f"Invalid job id {word}") from None
    if words and not refs:  # (`scontrol update JobId= ...` did nothing, and said nothing)
        raise Refused(f"Invalid job id {' '.join(words)!r}")
    return refs


def scontrol(argv: list[str]) -> int:
    """scontrol [-o] hold|release ID... | show job [ID] | show node [LIST] | show hostnames [LIST] | update JobId=ID
    KEY=VALUE...: a pending job's hold or release, jobs' or nodes' records (Slurm's KEY=VALUE lines; -o: one line each),
    a hostlist's names (default: $SLURM_JOB_NODELIST), a pending job's edit (NumCPUs, MinMemoryNode, TimeLimit,
    Priority, Nice). Else: one line."""
    opts, words = parse(argv, table("oneliner:-o,--oneliner quiet:-Q,--quiet"), False)
    verb, what, args = *(w.lower() for w in (words + ["", ""])[:2]), words[1:]
    if verb == "show" and what in ("hostnames", "hostname", "job", "node", "nodes") and len(args) < 3:
        if what == "job":
            jobs, unknown = C.job_list(Client(), args[1:])
            if unknown or args[1:] and not jobs:  # (or ended long ago: as Slurm's past its MinJobAge)
                print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
                return 1
            lines = [show_job(j, "oneliner" in opts) for j in jobs] or ["No jobs in the system"]
        elif what.startswith("node"):  # (all, or those of a hostlist)
            from .compat_slurm_nodes import show_node
            if not (lines := [show_node(n, "oneliner" in opts) for n in Client().nodes()
                              if not args[1:] or n["name"] in hostlist(args[1])]):
                print(f"Node {args[1]} not found" if args[1:] else "No nodes in the system")
                return 1
        elif not (lines := hostlist((args[1:] or [os.environ.get("SLURM_JOB_NODELIST", "")])[0])):
            raise Refused("host list is empty")
        print("\n".join(lines))
        return 0
    if verb not in ("hold", "release", "update") or not args:
        raise Refused(f"too few arguments for keyword:{verb}" if verb in ("hold", "release", "update") else
                      "too many arguments for keyword:show" if verb == "show" and len(args) > 2 else
                      f"{' '.join(words[:2]) or 'no command'}: not supported (grun's scontrol has hold, release, show job, "
                      "show node, show hostnames and update JobId=)")
    changes = {}
    for word in args if verb == "update" else ():
        key, _, value = word.partition("=")
        if (key := key.lower()) not in UPDATE:  # (JobName: grun's names are its command, as its submitter gave it)
            raise Refused(f"Update of this parameter is not supported: {word}")
        changes[UPDATE[key]] = value
    if "nice" in changes:  # (as Slurm 22.05's: a Priority given is set, the Nice ignored)
        changes.setdefault("priority", C.priority(changes.pop("nice"), "Nice", -1))
    if verb == "update" and "id" not in changes:
        raise Refused("No valid entity in update command (grun's scontrol updates jobs: JobId=)")
    client, lines = Client(), []  # (10,000 ids: one read of the jobs, one hold, release or edit of them all)
    jobs = C.records(client, slurm_ids([changes.pop("id")] if verb == "update" else args))
    pending = ("queued", "held", "waiting") if verb == "update" else ("held",) if verb == "release" else ("queued", "waiting")
    refused = C.act(client, jobs, pending, *{"update": ("edit", changes), "release": ("resume",)}.get(verb, ("hold", True)))
    for ref, job in jobs.items():  # (as Slurm's: one held, nothing; one running runs on, and an array's running tasks)
        if ref in refused or not job or job["state"] in FINAL_STATES or verb == "update" and job["state"] not in pending \
                or verb == "hold" and "ranges" not in job and job["state"] in ON_NODE_STATES:
            lines.append(f"scontrol: error: {refused[ref]}" if ref in refused else ("Invalid job id specified" if not job
                         else "Job has already finished" if job["state"] in FINAL_STATES else
                         "Job is no longer pending execution") + f" for job {ref.replace('.', '_')}")
    print("\n".join(lines), file=sys.stderr, end="\n" * bool(lines))
    return int(bool(lines))


def show_job(j: dict, oneliner: bool) -> str:
    """scontrol show job's lines for a job, as Slurm 22.05's with the fields grun knows."""
    from .tables import duration, elapsed, spans
    array = f" ArrayJobId={j['array']} ArrayTaskId={j['task']}" if "task" in j else \
        f" ArrayJobId={j['id']} ArrayTaskId={spans(unstarted(j))}" if "ranges" in j else ""
    end, cpus = j.get("end_time") or j.get("start_time") and j.get("time") and j["start_time"] + j["time"], FIELDS["C"][3](j)
    lines = [f"JobId={j['id']}{array} JobName={name_of(j)}", f"UserId={j.get('user')}({j.get('uid')}) GroupId={j.get('group')}({j.get('gid')})",
             f"Priority={j.get('priority', 0)}", f"JobState={state_of(j)} Reason={reason_of(j)} Dependency={FIELDS['E'][3](j)}",
             f"Requeue={int(j.get('requeue') is not False)} ExitCode={FIELDS['2'][3](j)}",
             f"RunTime={duration(elapsed(j), True)} TimeLimit={duration(j['time'], True) if j.get('time') else 'UNLIMITED'}",
             f"SubmitTime={stamp(j.get('submit_time'))}", f"StartTime={stamp(j.get('start_time'))} EndTime={stamp(end)}",
             "Partition=grun", f"NodeList={j.get('node') or ''}", f"NumNodes=1 NumCPUs={cpus} NumTasks=1 CPUs/Task={cpus}",
             f"MinMemoryNode={j.get('memory', 0)}M", f"Command={command_of(j)}", f"WorkDir={j.get('cwd', '')}",
             *(f"{key}={path}" for key, path in zip(("StdOut", "StdErr"), output_files(j)))]
    return " ".join(lines) + " " if oneliner else "\n   ".join(lines + [""]) + "\n"


def command_of(j: dict) -> str:
    """scontrol's Command, as Slurm's: sbatch's script as named (its `: PATH` line) and its arguments, (null) for
    --wrap's or stdin's; srun's program; a job of grun's own, as typed."""
    if not (wrapper := wrapped(j.get("cmd") or [])) or wrapper[1] is None:
        return wrapper[2][0] if wrapper else command_text(j)
    m = re.search(r"^: ('[^']*'(?:\"'\"'[^']*')*|\S+)$", j["cmd"][2], re.MULTILINE)
    return " ".join([shlex.split(m[1])[0], *wrapper[2]]) if m else "(null)"


def output_files(j: dict) -> list[str]:
    """sbatch's -o and -e (compat.submit's o= and e=) with the job's %j, %A, %a, %N; else grun's -o and -e."""
    if not (m := re.search(r"^o=(.*?); (?:e=(.*?); )?exec", "".join((j.get("cmd") or [])[2:3]), re.MULTILINE)):
        return [j.get("stdout_file", ""), j.get("stderr_file", "")]
    words = [m[1], m[2] or m[1]]
    for text, value in zip(OUT_NAMES, (j["id"], FIELDS["A"][3](j), j.get("task", 4294967294), j.get("node", ""))):
        words = [w.replace(text, shlex.quote(str(value))) for w in words]
    return [os.path.join(j.get("cwd", ""), shlex.split(w)[0]) for w in words]


def sinfo(argv: list[str]) -> int:  # (its views of nodes: grun/compat_slurm_nodes.py, which stands on this module)
    from .compat_slurm_nodes import sinfo
    return sinfo(argv)
