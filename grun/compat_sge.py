"""SGE's commands (qsub, qstat, qdel, qacct) as thin fronts to grun's client, for the tools written for
SGE, on the ground grun/compat.py lays for both families (Slurm's: grun/compat_slurm.py)."""

import fnmatch
import os
import re
import shlex
import signal
import sys
import time

from . import compat as C
from .client import Client, GrunError, current_user, refusals
from .compat import Refused, items, last, out_path, parse, table
from .core import arrays
from .core.jobs import FINAL_STATES, ON_NODE_STATES, number_or_text, wrapped
from .tables import command_text, label, name_of, spans, usage
from .values import is_name, parse_time_limit, task_ref

QSUB = {**table("name=-N out=-o err=-e join=-j cwd:-cwd wd=-wd allenv:-V env=-v resources=-l array=-t limit=-tc "
                "hold_jid=-hold_jid hold_jid_ad=-hold_jid_ad sync=-sync terse:-terse binary=-b shell=-S "
                "start_shell=-shell queue=-q project=-P account=-A rerun=-r hold:-h notify:-notify mail=-m "
                "mail_to=-M priority=-p reserve=-R verify=-w now=-now share=-js begin=-a ckpt=-ckpt"), "-pe": ("pe", 2)}
STATES = {"queued": "qw", "held": "hqw", "waiting": "hqw", "dispatched": "t", "running": "r", "suspended": "s",
          **dict.fromkeys(FINAL_STATES, "z")}
SHOW = {"p": {"qw", "hqw", "Eqw"}, "r": {"r", "t"}, "s": {"s"}, "z": {"z"}, "h": {"hqw"},  # qstat -s's letters
        "a": {"qw", "hqw", "Eqw", "r", "t", "s"}}
# qacct's `failed` of a job a signal ended (h_rt's KILL too; 37, qmaster enforced, is a job its execd failed to kill) or lost
AFTER, AFTER_STATES = "100 : assumedly after job", ("killed", "lost", "timeout")
# memory limits (grun's -m: reserved, limited at hard_factor x it), memory requests (reserved only), time limits
MEMORY, REQUEST, TIME = ("h_vmem", "h_rss", "h_data", "mem"), ("mem_free", "virtual_free"), ("h_rt",)
NOTIFY, QDEL_NOTIFY = 60, 3  # SGE's queue `notify`: the KILL after a USR1 at s_rt or -notify's USR2 (qdel's: it waits)
WARN = "(trap '' USR1 USR2; sleep {}; kill -{} 0) </dev/null >/dev/null 2>&1 &\n"  # (a signal the job sends itself)
NOTIFIED = 't=${GRUN_TIME:-0}; [ "$t" -gt 0 ] && ' + WARN.format(f"$((t > {NOTIFY} ? t - {NOTIFY} : 0))", "USR2")
ULIMITS = {"h_cpu": ("-t", 1), "h_fsize": ("-f", 512), "h_stack": ("-s", 1024)}  # (sh's ulimit: s, 512-byte blocks, KB)
NOTED = {"-P": "projects", "-A": "accounts", "-m": "mail", "-M": "mail", "-js": "job shares", "-ckpt": "checkpoints"}
REFUSED = {"-a": "grun cannot delay a job's start (-h queues it held till `grun -e resume ID`)",
           "-l": "grun has no whole-node request (ask for slots and memory: -pe smp N -l h_vmem=SIZE)",
           "-now": "grun queues a job till it can start", "-w": "grun does not verify a job without queueing it",
           "-l s_vmem": "grun has no soft memory limit (-l h_vmem= limits, mem_free= reserves)"}
# options that are grun's, one to one: KEY -> (job_spec's argument, its value); -p: as SGE's, a user may lower a job's
GRUN = {"hold": ("hold", bool), "priority": ("priority", lambda p: C.priority(p, "-p"))}
_bytes = lambda text: int(text) if text.isdigit() else C.megabytes(text) << 20  # (plain numbers are bytes, in SGE)
_seconds = lambda text: parse_time_limit(f"{text}s" if text.isdigit() else text)  # (plain numbers are seconds)
# SGE's exit 99, "run it again" (grun re-queues for no exit code): run again in place, signals passed on, the script's died of
RERUN = "{{ trap : HUP INT QUIT TERM USR1 USR2 ALRM; while :; do {}; c=$?; [ $c = 99 ] || break; sleep 1; done; trap - HUP INT " \
    "QUIT TERM USR1 USR2 ALRM; case $((c - 128)) in [1-9]|1[0-6]|2[4-7]|29|3[01]) ulimit -c 0; kill -$((c - 128)) $$;; esac; exit $c; }}\n"
PATTERNS = {"$JOB_ID": '"$JOB_ID"', "$TASK_ID": '"$SGE_TASK_ID"', "$JOB_NAME": '"$JOB_NAME"', "$USER": '"$USER"',
            "$HOME": '"$HOME"', "$HOSTNAME": '"$HOSTNAME"'}  # (in -o/-e paths)


def yes(opts: dict, flag: str, default: str = "n") -> bool:
    if (value := last(opts, QSUB[flag][0], default)) not in ("y", "yes", "n", "no"):
        raise Refused(f"{flag} takes y or n, got {value!r}")
    return value.startswith("y")


def qsub(argv: list[str]) -> int:
    """qsub [options] [SCRIPT [ARGS...]] | -b y COMMAND...: prints `Your job N ("name") has been submitted`."""
    opts, rest = parse(argv, QSUB, glued=False)  # (SGE's options are whole words: -verify is not -v erify)
    script = None if (binary := yes(opts, "-b")) else C.read_script(rest[0] if rest else None, "job")
    if binary and not (rest and rest[0].strip()):
        raise Refused("-b y needs a command")
    opts = opts if binary else C.directives(script, "#$", QSUB, opts, first_only=False, glued=False)
    name = last(opts, "name", os.path.basename(rest[0].split()[0] if binary else rest[0]) if rest else "STDIN")
    if "name" in opts and re.search(r"[\s/:@\\*?]", name):  # (as SGE's: refused at submit, not at start)
        raise Refused(f"-N {name!r}: a job name has no whitespace and none of / : @ \\ * ?")
    resources = {key: value for key, _, value in (item.partition("=") for item in items(opts, "resources"))}
    queues = items(opts, "queue")  # QUEUE@HOST, *@HOST: the host; a queue without one: any host
    hosts = [h for q in queues for h in q.partition("@")[2].split("|")] if all("@" in q for q in queues) else []
    hosts += [h for key in ("h", "hostname") for h in resources.pop(key, "").split("|") if h]
    for spelling in [flag for flag in ("-q", *NOTED) if QSUB[flag][0] in opts and (flag != "-q" or not hosts)]:
        print(f"qsub: note: {spelling} ignored (grun has no {NOTED.get(spelling, 'queues')})", file=sys.stderr)
    verify = last(opts, "verify", "n")
    if refused := "-a" * ("begin" in opts) or "-now y" * yes(opts, "-now") or "-w v" * (verify == "v") or \
            "-l s_vmem" * ("s_vmem" in resources) or next((f"-l {key}" for key in ("exclusive", "excl") if
                                                           resources.pop(key, "false").lower() not in ("false", "0")), None):
        raise Refused(f"{refused}: {REFUSED.get(refused) or REFUSED[refused.split()[0]]}")
    if verify not in ("e", "w", "n"):
        raise Refused(f"-w takes e, w, n or v, got {verify!r}")
    yes(opts, "-R")  # (-R y: grun reserves room for a job that waits long by itself)
    slots = _slots(opts, resources)
    request: dict = {"cpus": int(slots), "requeue": yes(opts, "-r", "y"), "hosts": ",".join(hosts) or None,
                     "cwd": os.getcwd() if "cwd" in opts else last(opts, "wd", os.path.expanduser("~")),
                     **{arg: value(last(opts, key)) for key, (arg, value) in GRUN.items() if key in opts},
                     **_limits(resources, int(slots)), "time_signal": [int(signal.SIGKILL), 0]}
    # SGE's TMP, output paths (the wrapper's o, e, opened: made whole) and, for a parallel job (-pe), its PE_HOSTFILE
    setup = 'e="$o"; ' * yes(opts, "-j") + 'case $o in /*) ;; *) o="$PWD/$o";; esac; case $e in /*) ;; *) e="$PWD/$e";; esac\n' \
        'export TMP="$TMPDIR" SGE_STDOUT_PATH="$o" SGE_STDERR_PATH="$e"\n' + \
        'export PE_HOSTFILE="$TMPDIR/pe_hostfile"; echo "$HOSTNAME $NSLOTS all.q@$HOSTNAME UNDEFINED" >"$PE_HOSTFILE"\n' \
        * ("pe" in opts) + (WARN.format(request.pop("warn"), "USR1") if "warn" in request else "") + \
        NOTIFIED * ("notify" in opts)  # (-notify's USR2 NOTIFY s before h_rt, timed as it starts: qalter's h_rt too)
    for key, value in resources.items():
        if key in ULIMITS and value:  # SGE's hard limits of each process: ulimit's in the job's shell
            amount = _seconds(value) if key == "h_cpu" else _bytes(value)
            setup += f"ulimit {ULIMITS[key][0]} {max(1, int(amount) // ULIMITS[key][1])}\n"
        elif value and is_name(key):  # a consumable (gpu=1) or a label (arch=x86_64)
            request.setdefault("params", {})[key] = number_or_text(value)
        else:
            raise Refused(f"unsupported resource -l {key}{'=' * bool(value)}{value}")
    client, tasks = Client(), _task_range(last(opts, "array")) if "array" in opts else None
    span = tasks and f"{tasks.start}-{tasks[-1]}:{tasks.step}"
    request["after"] = [j["id"] for j in _holds(client, items(opts, "hold_jid"))]  # (none: no dependency)
    if "hold_jid_ad" in opts:  # grun has no task-to-task dependency: each task waits for the whole arrays
        held = _holds(client, items(opts, "hold_jid_ad"))  # (ranges compare by the numbers they hold: -t 1-1000000)
        if tasks is None or any([range(*r) for r in a.get("ranges") or []] != [tasks] for a in held):
            raise Refused("-hold_jid_ad: this job and the jobs it names must be arrays of the same -t range")
        if held:
            print("qsub: note: -hold_jid_ad: each task waits for all the tasks of "
                  f"{', '.join(str(a['id']) for a in held)} (grun has no task-to-task dependency)", file=sys.stderr)
        request["after"] += [a["id"] for a in held]
    if not last(opts, "limit", "1").isdigit():
        raise Refused(f"-tc {last(opts, 'limit')}: expected a number of tasks")
    if tasks:
        request["array"] = span + (f"%{last(opts, 'limit')}" if "limit" in opts else "")
    env = dict(JOB_NAME=name, REQUEST=name, NSLOTS=slots, NHOSTS="1", QUEUE="all.q", ENVIRONMENT="BATCH",
               SGE_CWD_PATH=request["cwd"], **({"PE": last(opts, "pe")[0]} if "pe" in opts else {}),
               SGE_TASK_ID="undefined", SGE_O_WORKDIR=os.getcwd(), SGE_O_HOST=os.uname().nodename,
               **dict(zip(("SGE_TASK_FIRST", "SGE_TASK_LAST", "SGE_TASK_STEPSIZE"),
                          re.split("[-:]", span) if tasks else ["undefined"] * 3)),
               **{f"SGE_O_{k}": os.environ.get(k, "") for k in ("HOME", "PATH", "SHELL", "LOGNAME")}, GRUN_TIME="0")
    request.update(env=env, pass_env=["*"] * ("allenv" in opts) + items(opts, "env"))  # (-v NAME=VALUE: set so)
    out, err = (_output(opts, key, name, request["cwd"]) for key in ("out", "err"))
    if binary and yes(opts, "-shell", "y"):
        # SGE's -shell y: the command line goes to a shell, its variables ($SGE_TASK_ID) expanded; (SGE joins the
        # words with spaces; here each argument stays one word, "$VAR" in it expanded, so `sh -c "a; b"` still works)
        rest = [last(opts, "shell", "/bin/sh"), "-c", rest[0] + "".join(
            ' "' + re.sub(r'(["\\`])', r"\\\1", word) + '"' for word in rest[1:])]
    shell, ids = last(opts, "shell", "" if (script or "#!").startswith("#!") else "/bin/sh"), []
    setup += (C.RUN.removesuffix("exec ") if script is not None else "") + RERUN.format(  # (RUN's exec: never reached)
        '"$@"' if script is None else f'{shlex.quote(shell) + " " if shell else ""}"$f" "$@"')

    def submit() -> int:  # (-sync y: as SGE's, the job dies with qsub, on SIGINT, SIGTERM and EPIPE)
        ids.append(C.submit(client, "sge", name, script, rest[1:] if script is not None else rest, out,
                            None if yes(opts, "-j") else err, shell, append=True, setup=setup, **request))
        shown = f"{ids[0]}.{span}" if tasks else str(ids[0])
        print(shown if "terse" in opts else
              f"Your job{'-array' if 'array' in opts else ''} {shown} (\"{name}\") has been submitted", flush=True)
        if not yes(opts, "-sync"):
            return 0
        code, job = client.exit_code(ids[0]), C.find(client, str(ids[0])) or {}
        sig = signal.SIGKILL if job.get("state") == "timeout" else job.get("signal")  # (at h_rt: SGE's KILL, as qacct's)
        print(f"Job {ids[0]} exited " + (f"because of signal {signal.Signals(sig).name}" if sig else
                                         f"with exit code {code}."))  # (SGE's words; a signal's: exit 1)
        return 1 if sig else code
    return C.dies_with(client, ids, submit) if yes(opts, "-sync") else submit()


def _slots(opts: dict, resources: dict) -> str:
    """-pe's slots: N, or a range N-M, N-, -M: its lowest (grun gives no more than asked); or -l slots=N."""
    pe = last(opts, "pe", [None, "1"])[1]
    m = pe and re.fullmatch(r"(\d+)?(?:-(\d*))?", pe)  # ('': refused)
    slots = resources.pop("slots", None) or (m[1] or "1" if m else pe)
    if not slots.isdigit() or int(slots) < 1 or m and m[2] and int(m[2]) < int(slots):
        raise Refused(f"-pe {' '.join(last(opts, 'pe'))}: expected a number of slots or a range of them")
    return slots


def _limits(resources: dict, slots: int) -> dict:
    """-l's memory per slot as SGE counts it (h_vmem: reserved and limited; mem_free alone: reserved) and time (h_rt;
    s_rt: `warn`, a USR1 the job sends itself, its KILL NOTIFY s later or at h_rt), as grun's request, out of `resources`."""
    request, memory = {}, {}
    soft, hard = (_seconds(resources.pop(k)) if resources.get(k) else None for k in ("s_rt", "h_rt"))
    hard = hard if soft is None else soft + NOTIFY if hard is None else min(hard, soft + NOTIFY)
    if hard is not None:
        request.update(time=hard, **{"warn": round(soft)} if soft is not None and soft < hard else {})
    for key, value in [(k, v) for k, v in resources.items() if v and k in (*MEMORY, *REQUEST)]:
        del resources[key]
        memory[key in MEMORY] = -(-_bytes(value) * slots // (1 << 20))
    return request | ({"memory": memory.get(True, memory.get(False)), "reserve_only": True not in memory or None}
                      if memory else {})


def _task_range(text: str) -> range:
    """-t n[-m[:s]]: the task ids (its last, as SGE's, the last one the step reaches), as the core reads an array's."""
    if not re.fullmatch(r"0*[1-9]\d*(-\d+(:\d+)?)?", text):
        raise Refused(f"-t {text}: expected n[-m[:s]], task ids from 1")
    try:
        return range(*arrays.parse(text)["ranges"][0])
    except ValueError as exc:  # (too many tasks, say)
        raise Refused(f"-t {text}: {str(exc).removeprefix('bad value for --array: ')}") from None


def _holds(client: Client, held: list[str], anyone: bool = False) -> list[dict]:
    """-hold_jid's jobs: ids, names or globs (this user's live jobs of that name); as SGE's, no job is no hold."""
    known = [job for word in held if word.isdigit() and (job := C.find(client, word))]  # (an id may be of no job)
    if names := [i for i in held if not i.isdigit()]:
        known += [j for j in client.jobs() if (anyone or j.get("user") == current_user()) and "task" not in j
                  and any(fnmatch.fnmatchcase(name_of(j), n) for n in names)]
    return known


def _named(client: Client, words: list[str], anyone: bool = False) -> list[str]:
    """N, N.T as they are; a name or glob: the caller's (`anyone`: anyone's) live jobs of it, as SGE's (none: itself)."""
    return [ref for w in words for ref in ([w] if w.isdigit() or task_ref(w) else [
        label(j) for j in _holds(client, [w], anyone)] or [w])]


def _output(opts: dict, key: str, name: str, cwd: str) -> str:
    """SGE's output name: `NAME.oJOBID[.TASK]` in the job's directory (`cwd`) or the one -o/-e names, or that file."""
    path = last(opts, key, "")
    if not path or os.path.isdir(os.path.join(cwd, path)):
        path = os.path.join(path, name) + f".{key[0]}$JOB_ID" + ".$TASK_ID" * ("array" in opts)
    return out_path(path, PATTERNS)


def qstat(argv: list[str]) -> int:
    """qstat [-u USER,...|'*'] [-j ID,...] [-s STATES] [-q QUEUE] [-f] [-r] [-ext] [-g c] [-xml]: the live jobs (-s z:
    and the latest 100 ended, as SGE's finished_jobs). -q lists every job (grun has one queue, all.q): a tool polling
    its own queue (Nextflow's) would take its jobs as gone, and fail them."""
    opts, rest = parse(argv, table("user=-u jobs=-j xml:-xml full:-f states=-s queue=-q request:-r ext:-ext group=-g"),
                       False)
    if rest:  # (as SGE's: a job is asked with -j)
        raise Refused(f'invalid option argument "{rest[0]}"')
    client = Client()
    if "jobs" in opts:  # live jobs only (an array: one block)
        return _blocks([(w, [j] if (j := C.find(client, w)) and j["state"] not in FINAL_STATES else []) for w in (
            _named(client, items(opts, "jobs"), True))], _detail, 28, "Following jobs do not exist: ")
    letters = re.findall(r"h[uosdja]?|[przsa]", asked := "".join(opts.get("states", ["prs"])))
    if not asked or "".join(letters) != asked or last(opts, "group", "c") != "c":
        raise Refused(f"-s {asked!r}: expected p, r, s, z, h or a" if "".join(letters) != asked or not asked else
                      "-g: only -g c")
    shown, users = set().union(*(SHOW[w[0]] for w in letters)), set(items(opts, "user"))
    # the jobs asked, running ones first (as SGE's: then the pending, an array's tasks left after its running ones)
    rows = sorted(((_row(j), j) for j in client.jobs() + (client.history(100) if "z" in shown else [])
                   if ("*" in users or j.get("user") in (users or {current_user()})) and ("ranges" not in j or arrays.left(
                       j)) and STATES.get(j["state"], "Eqw") in shown), key=lambda r: r[0][4] not in ("r", "t", "s"))
    if "group" in opts or "full" in opts:
        return _queues(client.nodes(), rows, "group" in opts, "ext" in opts)
    if "xml" in opts:
        from xml.sax.saxutils import escape
        tags = ("JB_job_number", "JAT_prio", "JB_name", "JB_owner", "state"), ("queue_name", "slots", "tasks")
        parts = {part: "".join(f'    <job_list state="{state}">\n' + "".join(
            f"      <{t}>{escape(v)}</{t}>\n" for t, v in zip((*tags[0], when, *tags[1]), (*r[:5], re.sub(
                r"(..)/(..)/(....) ", r"\3-\1-\2T", r[5]), *r[6:])) if v)  # (its time, as _row's: in ISO 8601)
            + "    </job_list>\n" for r, j in rows if (r[4] in ("r", "t", "s")) == (state == "running"))
            for part, state, when in (("queue_info", "running", "JAT_start_time"),
                                      ("job_info", "pending", "JB_submission_time"))}
        print("<?xml version='1.0'?>\n<job_info>\n" + "".join(f"  <{p}>\n{x}  </{p}>\n" for p, x in parts.items())
              + "</job_info>")
        return 0
    ext = "ext" in opts
    head = ("job-ID  prior   " + "ntckt   " * ext + "name       user         " + "project          department " * ext +
            "state " + ("cpu        mem     io      tckts ovrts otckt ftckt stckt share " if ext else
                        "submit/start at     ") + "queue                          slots ja-task-ID ")
    if rows:
        print(f"{head}\n{'-' * (len(head) - 1)}")
    for r, j in rows:
        print(_line(r, ext, True) + (_requests(j) if "request" in opts else ""))
    return 0


def _row(j: dict) -> tuple:
    """A job's line: one task, or an array's tasks not started yet; the time: its start's, pending: its submission's."""
    state = STATES.get(j["state"], "Eqw")
    return (str(j["array"] if "task" in j else j["id"]), f"{0.5 + j.get('priority', 20) / 2048:.5f}", name_of(j),
            j.get("user", "?"), state, time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(state in ("r", "t", "s") and
                j.get("start_time") or j.get("submit_time") or 0)), f"all.q@{j['node']}" if j.get("node") else "",
            f"{max(1, round(j.get('cpus', 1)))}",
            str(j["task"]) if "task" in j else _ranges(arrays.unstarted(j)) if "ranges" in j else "")


def _ranges(tasks: list[int]) -> str:
    """Task ids as SGE writes them: 5-8:1, 1-9:2, and two a step apart as 5,6."""
    return re.sub(r"(\d+)-(\d+)(?=,|$)", lambda m: m[0].replace("-", ",") if int(m[2]) - int(m[1]) == 1 else
                  m[0] + ":1", spans(tasks))


def _line(r: tuple, ext: bool, queue: bool) -> str:
    """-ext's columns: grun has no tickets, projects or departments, and learns a job's usage when it ends."""
    return " ".join([f"{r[0]:>7}", r[1]] + ["0.00000"] * ext + [f"{r[2][:10]:<10}", f"{r[3][:12]:<12}"] +
                    ["NA              ", "defaultdep"] * ext + [f"{r[4]:<5}"] + [
                        "NA         NA      NA          0     0     0     0     0 0.00" if ext else r[5]] +
                    [f"{r[6]:<30}"] * queue + [f"{r[7]:>5}", r[8]]).rstrip()


def _requests(j: dict) -> str:
    """-r: a job's requests, under its line."""
    return "".join(f"\n       {k:<18}{v}" for k, v in (
        ("Full jobname:", name_of(j)), ("Master Queue:", f"all.q@{j['node']}" if j.get("node") else ""),
        ("Requested PE:", f"smp {j['cpus']:g}" if j.get("cpus", 1) > 1 else ""),
        ("Hard Resources:", "\n                         ".join(f"{a} (0.000000)" for a in _hard(j)))) if v)


def _hard(j: dict) -> list[str]:
    """A job's -l as asked: its memory per slot (h_vmem, a limit; mem_free, a reservation alone) and h_rt."""
    memory = j.get("memory_set") and f"{'mem_free' if j.get('reserve_only') else 'h_vmem'}={j['memory'] / j['cpus']:g}M"
    return [a for a in (memory, j.get("time") and f"h_rt={j['time']:g}") if a]


def _queues(nodes: list[dict], rows: list, summary: bool, ext: bool) -> int:
    """-g c: grun's one queue, all.q, as SGE's cluster queue summary; -f: a node a queue instance all.q@NODE with its
    jobs, then the jobs pending. A node's load: the cores its jobs and others' processes keep busy, per core."""
    load = {n["name"]: (n["grun_cpus"] + n["outside_cpus"]) / n["cpus"] for n in nodes if n["up"] and n["cpus"]}
    up = [n for n in nodes if n["up"]]
    if summary:
        print(f"{'CLUSTER QUEUE':<31} CQLOAD   USED    RES  AVAIL  TOTAL aoACDS  cdsuE\n" + "-" * 80)
        print(f"{'all.q':<31} " + (f"{sum(load.values()) / len(load):6.2f}" if load else "  -NA-") + "".join(
            f" {v:>6g}" for v in (sum(n["cpus"] - n["free_cpus"] for n in up), 0, sum(n["free_cpus"] for n in up),
                                   sum(n["cpus"] for n in nodes), 0, len(nodes) - len(up))))
        return 0
    print(f"{'queuename':<30} qtype resv/used/tot. load_avg arch          states")
    for n in nodes:  # (states: u, unreachable; d, its daemon stopped, as a disabled queue)
        slots = f"0/{n['cpus'] - n['free_cpus']:g}/{n['cpus']:g}"
        avg = f"{load[n['name']]:.2f}" if n["name"] in load else "-NA-"
        print("-" * 81 + f"\n{'all.q@' + n['name']:<30} BIP   {slots:<14} {avg:<8} {'-NA-':<13} " +
              {"up": "", "stopped": "d"}.get(n["state"], "u"))
        for r in (r for r, j in rows if j.get("node") == n["name"] and r[4] in "rts"):
            print(_line(r, ext, False))
    if pending := [r for r, _ in rows if r[4] not in "rts"]:
        print("\n" + "#" * 76 + "\n" + " - PENDING JOBS" * 5 + "\n" + "#" * 76)
        print("\n".join(_line(r, ext, False) for r in pending))
    return 0


def _blocks(found: list[tuple[str, list]], fields, width: int, missing_text: str) -> int:
    """Each id asked with its jobs: a block of `key value` lines per job; the ids without one named on stderr."""
    for _, jobs in found:
        for job in jobs:
            print("=" * 62 + "".join(f"\n{key:<{width}}{value}" for key, value in fields(job)))
    if missing := [word for word, jobs in found if not jobs and word]:  # (qacct -j alone: none missing)
        print(missing_text + ", ".join(missing), file=sys.stderr)
    return 1 if missing else 0


def _detail(job: dict) -> tuple:
    return (("job_number:", job["id"]), ("submission_time:", time.ctime(job.get("submit_time", 0))),
            ("owner:", job.get("user")), ("sge_o_workdir:", job.get("cwd")), ("job_name:", name_of(job)),
            ("job_state:", STATES.get(job["state"], job["state"])), ("script_file:", command_text(job)),
            ("parallel environment:", f"smp range: {job.get('cpus', 1):g}"),
            ("hard resource_list:", ",".join(_hard(job))), ("exec_host_list 1:", job.get("node") or ""))


def _accounting(job: dict) -> tuple:
    return (("qname", "all.q"), ("hostname", job.get("node")), ("owner", job.get("user")), ("jobname", name_of(job)),
            ("jobnumber", job["array"] if "task" in job else job["id"]), ("taskid", job.get("task", "undefined")),
            ("qsub_time", time.ctime(job.get("submit_time", 0))), ("start_time", time.ctime(job.get("start_time") or 0)),
            ("end_time", time.ctime(job.get("end_time") or 0)), ("slots", f"{job.get('cpus', 1):g}"),
            ("failed", job.get("sge_failed") or (AFTER if job.get("signal") or job["state"] in AFTER_STATES else 0)),
            ("exit_status", 137 if job["state"] == "timeout" else job.get("exit")),
            ("ru_wallclock", f"{usage(job, 'wall'):.3f}s"), ("ru_utime", f"{usage(job, 'utime'):.3f}s"),
            ("ru_stime", f"{usage(job, 'stime'):.3f}s"), ("ru_maxrss", f"{int(usage(job, 'maxrss_kb'))}K"),
            ("maxvmem", f"{usage(job, 'maxrss_kb') / 1024:.3f}M"))  # (grun measures the peak RSS, not virtual memory)


def _unopened(client: Client, job: dict, down: set) -> None:
    """SGE's failed 26 for a qsub job whose output file could not be opened (-o nodir/x.out): it exits 2 before its
    script, its shell's words for line 2 (compat.submit's `exec >>FILE`) in the stderr its node keeps (read unreleased,
    ~10 ms; a node that does not answer costs seconds: `down`, not asked again)."""
    cmd = job.get("cmd") or []
    if job["state"] != "failed" or job.get("exit") != 2 or not wrapped(cmd) or not re.match(r".*\no=.*exec >>", cmd[2]) \
            or job.get("node") in down:
        return
    err: list[bytes] = []
    try:
        client.follow(job["id"], stdout_fd=lambda b: None, stderr_fd=err.append, release=False, require_output=True)
    except GrunError:
        down.add(job.get("node"))
    if m := re.match(rf"{re.escape(name_of(job))}: (?:line )?2: (.*)", b"".join(err).decode(errors="replace")):
        job["sge_failed"] = f"26  : opening input/output file: {m[1]}"


def qdel(argv: list[str]) -> int:
    """qdel [-f] [-u USER,...] [ID|NAME|PATTERN,...] [-t TASKS]: `USER has registered the job N for deletion` (running)
    or `has deleted job N` (not started), `job-array task N.T` for a task (an array's running ones, N.T, -t's). As
    SGE's, a running job is KILLed, with no TERM first; one of qsub -notify's gets a USR2 QDEL_NOTIFY s before."""
    opts, words = parse(argv, table("user=-u force:-f tasks=-t"), False)
    ids = [i for w in words for i in w.split(",") if i]
    if not ids and ("user" not in opts or "tasks" in opts):
        raise Refused("usage: qdel [-f] [-u USER,...] [JOB_ID|NAME,...] [-t TASKS]")
    client, me, out = Client(), current_user(), []  # (out: a line or more a job, printed at once)
    named = {n: [label(j) for j in _holds(client, [n])] for n in ids if not (n.isdigit() or task_ref(n))}
    ids = [i for i in ids if i not in named] + [i for labels in named.values() for i in labels]
    ids = [f"{i}.{t}" for i in ids for t in _task_range(last(opts, "tasks"))] if "tasks" in opts else ids
    live = client.jobs()
    by_label, asked = {label(j): j for j in live}, set(ids)
    ids += [label(j) for j in live if "task" not in j and j.get("user") in items(opts, "user")
            and label(j) not in asked]  # (jobs and arrays: an array's tasks go with it)
    warned = {label(j) for j in live if j["state"] in ON_NODE_STATES and {label(j), str(j.get("array"))} & set(ids)
              and NOTIFIED in "".join((j.get("cmd") or [])[2:3])}  # (qsub -notify's)
    time.sleep(QDEL_NOTIFY * any(refusals(client.kill, list(warned), int(signal.SIGUSR2))[0].values() if warned else ()))
    found, refused = refusals(client.kill, ids, int(signal.SIGKILL), "force" in opts)  # (SGE's: no TERM first)
    found.update((i, True) for i in found if str(i) in warned | {w.split(".")[0] for w in warned})  # (ended of USR2)
    found.update((n, False) for n, labels in named.items() if not labels)
    for job_id, ok in found.items():  # (N.T: one task; only an array's walk all the live jobs, not each job's)
        job = by_label.get(str(job_id), {})
        running = [job] if job.get("state") in ON_NODE_STATES and "ranges" not in job else [t for t in live if t.get(
            "array") == job["id"] and "task" in t and t["state"] in ON_NODE_STATES] if "ranges" in job else []
        lines = [f"{me} has registered the job{'-array task' * ('task' in t)} {label(t)} for deletion" for t in running]
        if not ok:  # (another user's: SGE's words)
            lines = [f'{me} - you do not have the necessary privileges to delete the job "{job_id}"' if job_id in refused
                     else f'denied: job "{job_id}" does not exist']
        elif not running or "ranges" in job and arrays.left(job):  # (an array's unstarted tasks)
            lines.append(f"{me} has deleted job{'-array task' * ('.' in str(job_id))} {job_id}")
        out += lines or [""]
    print("\n".join(out), end="\n" * bool(out))
    return 0 if all(found.values()) else 1


def qacct(argv: list[str]) -> int:
    """qacct -j [ID|NAME|PATTERN,...] [-o [OWNER]] [-d DAYS]: -j, the accounting record of each job that ran (N: a job
    or an array's tasks; a name or glob: the jobs of that name; nothing: all); else SGE's summary (-o: per owner, or
    of OWNER only). Records by name, all and the summary: among the newest 10,000 ended jobs (-d: all, since DAYS)."""
    opts, words = {}, list(argv)
    while words:  # (-j and -o take a value only if one follows: not getopt's way)
        if (flag := words.pop(0)) not in ("-j", "-o", "-d"):
            raise Refused(f"unsupported option {flag}" if flag.startswith("-") else f'invalid option argument "{flag}"')
        opts[flag] = words.pop(0) if words and not words[0].startswith("-") else ""
    if not opts.get("-d", "0").isdigit():
        raise Refused("-d takes a number of days")
    client, asked = Client(), [w for w in opts.get("-j", "").split(",") if w] or [""] * ("-j" in opts)
    names, since = [w for w in asked if not w.isdigit()], time.time() - 86400 * int(opts["-d"]) if "-d" in opts else 0
    jobs = C.job_list(client, [w for w in asked if w.isdigit()], None)[0] if len(names) < len(asked) else []
    jobs += client.history(sys.maxsize if since else 10_000, opts.get("-o") or None, since=since)[::-1] \
        if names or not asked else []  # (as they ended; -d: all that ended since, as those that started did)
    jobs = [j for j in {j["id"]: j for j in jobs}.values() if "ranges" not in j and j["state"] in FINAL_STATES
            and (j.get("start_time") or 0) > since and opts.get("-o") in (None, "", j.get("user"))]  # (never run: none)
    if asked:
        ended, down = {}, set()
        for j in jobs:  # (N: a job, or an array's tasks; read on its node if asked by number or name, not `-j` alone)
            if (key := str(j.get("array", j["id"]))) in asked or any(fnmatch.fnmatchcase(name_of(j), n) for n in names):
                _unopened(client, j, down)
            ended.setdefault(key, []).append(j)
        return _blocks([(w, ended.get(w, []) if w.isdigit() else [j for j in jobs if fnmatch.fnmatchcase(
            name_of(j), w or "*")]) for w in asked], _accounting, 13, "error: job id not found: ")
    print(("OWNER       " if "-o" in opts else "Total System Usage\n") + "    WALLCLOCK         UTIME         STIME    "
          "       CPU             MEMORY                 IO                IOW\n" + "=" * (112 + 12 * ("-o" in opts)))
    for owner in sorted({j.get("user", "?") for j in jobs}) if "-o" in opts else [""]:
        mine = [j for j in jobs if owner in ("", j.get("user", "?"))]
        wall, utime, stime = (sum(usage(j, key) for j in mine) for key in ("wall", "utime", "stime"))
        memory = sum(usage(j, "maxrss_kb") / 2**20 * usage(j, "wall") for j in mine)  # (GB s: its peak all along)
        io = sum(usage(j, "read_bytes", "write_bytes") for j in mine) / 1e9
        print(f"{owner:<12}" * ("-o" in opts) + f"{wall:>13.0f} {utime:>13.3f} {stime:>13.3f} {utime + stime:>13.3f} "
              f"{memory:>18.3f} {io:>18.3f} {0:>18.3f}")
    return 0


def qhold(argv: list[str], release: bool = False) -> int:
    """qhold [-h u] ID|NAME,...: `modified hold of job N` for each of the caller's live jobs (qrls: released); one
    running runs on, as SGE's (whose hold matters only to a run not started); another user's, SGE's refusal."""
    opts, words = parse(argv, table("kind=-h"), False, glued=False)
    if last(opts, "kind", "u") != "u" or not words:
        raise Refused(f"usage: {'qrls' if release else 'qhold'} [-h u] JOB_ID|NAME,...  (grun's holds are users')")
    client, me, lines = Client(), current_user(), []  # (10,000 jobs: one read of them, one hold or release)
    jobs = C.records(client, _named(client, [i for word in words for i in word.split(",") if i]))  # (N, N.T)
    # another user's: the master says (it knows admins); a suspended job's release would resume it: its owner's only
    mine = {ref: job for ref, job in jobs.items() if job and job["state"] not in FINAL_STATES and not (
        release and job["state"] == "suspended" and job.get("user") != me)}
    refused = C.act(client, mine, tuple(STATES), *("resume",) if release else ("hold", True))
    for ref, job in jobs.items():
        if not job or job["state"] in FINAL_STATES:  # (as SGE's: an ended job is none)
            lines.append(f'denied: job "{ref}" does not exist')
        elif ref in refused or ref not in mine:
            lines.append(f'{me} - you have no permission to modify job "{ref}"')
        else:  # (an array whole: its tasks not started)
            lines += [f"modified hold of job-array task {ref}.{t}" for t in arrays.unstarted(job)] if ref == str(
                job["id"]) and "ranges" in job else [f"modified hold of job{'-array task' * ('.' in ref)} {ref}"]
    print("\n".join(lines))
    return int(any(not line.startswith("modified") for line in lines))


def qrls(argv: list[str]) -> int:
    return qhold(argv, True)


def qalter(argv: list[str]) -> int:
    """qalter [-l h_vmem|mem_free=SIZE,h_rt=TIME] [-pe smp N] [-p PRIORITY] [-hold_jid IDS] ID,...: a pending job's
    request, as SGE's qalter words it (`modified hard resource list of job N`); -N: grun's job names are their commands'."""
    opts, words = parse(argv, {k: QSUB[k] for k in ("-l", "-pe", "-p", "-N", "-hold_jid")}, False, glued=False)
    if "name" in opts or not words or not opts:
        raise Refused("-N: grun cannot rename a job" if "name" in opts else "usage: qalter [-l h_vmem|mem_free=SIZE,"
                      "h_rt=TIME] [-pe smp N] [-p PRIORITY] [-hold_jid IDS] JOB_ID,...")
    resources = {key: value for key, _, value in (item.partition("=") for item in items(opts, "resources"))}
    if bad := [key for key, value in resources.items() if not value or key not in (*MEMORY, *REQUEST, *TIME)]:
        raise Refused(f"-l {','.join(bad)}: qalter changes memory (h_vmem, mem_free) and time (h_rt) only")
    client, lines, groups, asked = Client(), [], {}, int(_slots(opts, {})) if "pe" in opts else None
    said = {"resources": "modified hard resource list of job {0}", "pe": "modified slot range of job {0}", "priority": (
        f"{current_user()}@{os.uname().nodename} sets scheduling priority of job {{0}} to {last(opts, 'priority')}"),
        "hold_jid": "modified job id hold list of job {0}"}  # (SGE's words, in its order)
    fixed = {"priority": GRUN["priority"][1](last(opts, "priority"))} if "priority" in opts else {}  # (a config read)
    if "hold_jid" in opts:  # (replacing what it waits for; no job: nothing)
        fixed["after"] = ",".join(str(j["id"]) for j in _holds(client, items(opts, "hold_jid")))
    for ref, job in C.records(client, _named(client, [i for word in words for i in word.split(",") if i])).items():
        if not job or job["state"] not in ("queued", "held", "waiting"):
            lines.append(f'denied: job "{ref}" does not exist' if not job or job["state"] in FINAL_STATES else
                         f"job {ref} can't modify running jobs")
            continue
        slots = asked or job.get("cpus", 1)
        changes = {k: f"{v}s" if k == "time" else v for k, v in _limits(dict(resources), slots).items()
                   if k not in ("reserve_only", "warn")} | fixed
        if "pe" in opts:
            changes["cpus"] = slots
            if job.get("memory_set"):  # its memory was asked per slot, as SGE counts it
                changes.setdefault("memory", round(job["memory"] * slots / job.get("cpus", 1)))
        groups.setdefault(tuple(changes.items()), []).append(ref)  # (an edit for each set of changes, not each job)
        lines += [text.format(ref) for key, text in said.items() if key in opts]
    for changes, refs in groups.items():
        client.edit(refs, dict(changes))
    print("\n".join(lines))
    return int(any(line.startswith(("denied: ", "job ")) for line in lines))
