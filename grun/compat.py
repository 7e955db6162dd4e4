"""The ground Slurm's and SGE's commands (grun/compat_slurm.py, grun/compat_sge.py) stand on, thin fronts to grun's
client for the tools written for them: `main`, which goes by the name it was called by (`grun-compat install`,
grun/integrate.py, puts each on PATH as a small script calling it); their option and directive parser; how a batch job
is submitted; and how jobs are read back.

A batch job runs as `/bin/sh -c WRAPPER NAME SCRIPT ARGS...`: the wrapper opens the output files Slurm or SGE would
(their names may hold the job id, which the job learns only when it starts: $SLURM_JOB_ID or $JOB_ID, set by
grun/spawner.py for jobs marked GRUN_COMPAT), then writes the script, as it was at submit, into the job's TMPDIR and
runs it. $0 carries the job's name (grun's are unique, Slurm's and SGE's not): squeue, sacct and qstat read it back."""

import contextlib
import os
import re
import shlex
import sys
import time

from .client import Client, GrunError, JobNotFound, job_spec, refusals
from .core.jobs import MARK
from .values import parse_memory

SLURM = ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol")
SGE = ("qsub", "qstat", "qdel", "qacct", "qhold", "qrls", "qalter")
NAMES = SLURM + SGE
MAX_ARG = 131072  # Linux's MAX_ARG_STRLEN: the longest argument (a batch script's text), its NUL included
RUN_FILE = {"slurm": "sbatch --wrap 'bash SCRIPT'", "sge": "qsub -b y bash SCRIPT"}
# srun's command not found: srun's words and code, as its step's (grun.compat_slurm.step), not /bin/sh's (a line number)
NOT_FOUND = 'command -v "$1" >/dev/null || { echo "srun: error: execve(): $1: No such file or directory" >&2; exit 2; }; '
RUN = 'f=$(mktemp "${TMPDIR:-/tmp}/script.XXXXXX") && printf %s "$1" >"$f" && chmod 700 "$f" && shift && exec '


class Refused(Exception):
    """One line for the user: exit 1, nothing submitted."""


def main(argv: list[str] | None = None) -> int:
    called, argv = os.path.basename(sys.argv[0]), sys.argv[1:] if argv is None else argv
    if called not in NAMES:
        from .integrate import install_shims
        return install_shims(argv)
    from . import compat_sge, compat_slurm
    from .cli import fill_closed_std_fds
    fill_closed_std_fds()  # (`srun cat <&-`: else the master's socket took fd 0, and the job read it)
    try:
        code = getattr(compat_slurm if called.startswith("s") else compat_sge, called)(argv)
        sys.stdout.flush()  # (a reader gone: found here, not at exit)
        return code
    except BrokenPipeError:  # our reader went away (`sacct | head -1`): quietly, as Slurm's, and grun's CLI (cli.py)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # else the flush at exit fails once more
        return 141
    except (Refused, GrunError, OSError, ValueError) as exc:
        print(f"{called}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def parse(argv: list[str], table: dict, stop: bool | None = True, glued: bool = True) -> tuple[dict, list[str]]:
    """Options in `table` (spelling -> (key, number of values)), as --opt=V, --opt V, -XV, -X V or flags together
    (-nP); each key -> its values, in order. Other words: with `stop`, options end at the first; with False, they are
    collected; with None, there may be none. Without `glued` (SGE's whole words: -verify), neither -XV nor -nP."""
    opts, rest, words = {}, [], list(reversed(argv))
    while words:
        word = words.pop()
        if word == "--" or not word.startswith("-") or word == "-":
            if stop is None and (word != "--" or words):
                raise Refused(f"unexpected argument {words[-1] if word == '--' else word}")
            if stop or word == "--":
                return opts, rest + ([] if word == "--" else [word]) + words[::-1]
            rest.append(word)
            continue
        name, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if glued and name not in table and not word.startswith("--") and word[:2] in table:
            if table[word[:2]][1]:
                name, eq, inline = word[:2], "=", word[2:]  # -Jname
            elif f"-{word[2]}" in table:
                name = word[:2]
                words.append(f"-{word[2:]}")  # -nP: -n -P
        if name not in table:
            raise Refused(f"unsupported option {name}")
        key, count = table[name]
        count = count if count >= 0 else int(bool(eq))  # (KEY?--opt: a value only as --opt=V, as getopt's optional)
        values = ([inline] if eq else []) + [words.pop() if words else None for _ in range(count - bool(eq))]
        if eq and not count or None in values:
            raise Refused(f"option {name} " + ("takes no value" if eq else "needs a value"))
        opts.setdefault(key, []).append(values[0] if count == 1 else values or True)
    return opts, rest


def last(opts: dict, key: str, default=None):
    return opts[key][-1] if key in opts else default


def items(opts: dict, key: str) -> list[str]:
    """The comma lists given with an option (-u a,b -u c), as one list."""
    return [item for value in opts.get(key, []) for item in value.split(",") if item]


def directives(script: str, prefix: str, table: dict, opts: dict, first_only: bool = True, glued: bool = True) -> dict:
    """The options of the script's `#SBATCH` (to its first command) or `#$` lines, under the command line's (`opts`);
    line 1 too unless it is the #! line (qsub's script on stdin, or with no #!)."""
    found, start = {}, int(script.startswith("#!"))
    for number, line in enumerate(script.splitlines()[start:], start + 1):
        text = line.strip()
        if text.startswith(prefix) and (len(text) == len(prefix) or text[len(prefix)].isspace()):
            try:
                words = shlex.split(text[len(prefix):], comments=True)
                parsed, rest = parse(words, table, glued=glued)
            except (ValueError, Refused) as exc:
                raise Refused(f"script line {number}: {exc}: {text}") from None
            if rest or not words:
                raise Refused(f"script line {number}: not an option: {text}")
            for key, values in parsed.items():
                found.setdefault(key, []).extend(values)
        elif first_only and text and not text.startswith("#"):
            break
    return {**found, **opts}


def read_script(path: str | None, kind: str, newline: str | None = None) -> str:
    """The script's text, as at submit (stdin without a path); newline="" keeps \r\n (for sbatch to refuse)."""
    if path is None and (not sys.stdin or sys.stdin.isatty()):  # (None: closed)
        raise Refused(f"no {kind} script given (and no script on standard input)")
    try:
        with open(path or 0, encoding="utf-8", errors="surrogateescape", newline=newline, closefd=bool(path)) as f:
            return f.read()
    except OSError as exc:
        if path:
            raise
        raise Refused(f"cannot read standard input: {exc.strerror}") from None


def megabytes(text: str, per: float = 1) -> int:
    try:
        return round(parse_memory(text) * per)  # (0: Slurm's all of a node's memory)
    except ValueError as exc:
        raise Refused(f"bad memory size {text!r}: {exc}") from None


def out_path(pattern: str, names: dict) -> str:
    """A file name pattern as a shell word: literal parts quoted, `names` (a pattern -> shell text) expanded."""
    parts = re.split("(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + ")", pattern)
    return "".join(names.get(part) or shlex.quote(part) for part in parts if part)


def submit(client: Client, family: str, name: str, script: str | None, args: list[str],
           out: str | None = None, err: str | None = None, shell: str = "", env: dict | None = None, append: bool = False,
           setup: str = "", **request) -> int:
    """Queue a job (its id): the script with its output files (`append`: added to, as SGE's are), or the command `args`
    (srun); `setup`: shell lines run first (SGE's ulimits; sbatch's `: SCRIPT`, its path for scontrol); `name` as its $0; `request` as for job_spec. An `err` that
    is `out` once expanded (o.%j, o.%A; f, ./f) is opened once: twice, each truncates it."""
    if script is not None and (size := len(script.encode(errors="surrogateescape"))) >= MAX_ARG:
        raise Refused(f"the script is {size} bytes: grun passes it as one "
                      f"argument, less than 128 KiB (Slurm's take 4 MB): run it as a file, e.g. {RUN_FILE[family]}")
    # read back by core.jobs.wrapped (for tables.command_text, name_of, core.jobs.script_of), batch_script (RUN's
    # `exec [SHELL]`) and SGE's qacct (the exec on line 2): change them together
    to = ">>" if append else ">"
    opened = f'e={err}; exec {to}"$o"; [ "$o" -ef "$e" ] && exec 2>&1 || exec 2{to}"$e"' if err else f'exec {to}"$o" 2>&1'
    body = ('export SLURM_NODELIST="$SLURM_JOB_NODELIST" SLURM_TASK_PID=$$\n' if family == "slurm" else "") + \
        (f"o={out}; {opened}\n" if out else "") + setup + \
        (RUN + (shlex.quote(shell) + ' "$f" "$@"' if shell else '"$f" "$@"') if script is not None else
         NOT_FOUND * (family == "slurm") + 'exec "$@"')
    words = ["/bin/sh", "-c", f"{MARK}\n{body}", name, *([script] if script is not None else []), *args]
    try:  # (a job with an `out` no grun follows: nobody would fetch its files from a staged node's work dir)
        return client.submit_spec(job_spec(words, env={**(env or {}), "GRUN_COMPAT": family},
                                           stage="never" if out else None, **request))
    except GrunError as exc:  # (the master's refusals may name grun's own options, which these commands lack)
        words = str(exc).replace(" (--force queues it anyway)", "")
        words = ("a negative --nice: " if family == "slurm" else "a positive -p: ") * ("default_priority (" in words) + words
        raise GrunError(words.replace("--after: ", "-hold_jid: ") if family == "sge" else words) from None


def priority(text: str, flag: str, sign: int = 1) -> int:
    """grun's priority (higher first: $GRUN_PRIORITY, else the configured default) + sign x text (--nice N: -N; -p N)."""
    from .config import find_config_path, load_config
    from .values import parse_job_priority
    if not re.fullmatch(r"[+-]?\d+", text):
        raise Refused(f"{flag} {text}: expected a number")
    base = os.environ.get("GRUN_PRIORITY", "").strip() or load_config(find_config_path(), use_auth=False).default_priority
    return parse_job_priority(base) + sign * int(text)


def dies_with(client: Client, ids: list, run) -> int:
    """run(), its job (ids[0], once submitted) killed if we die (SIGINT, SIGTERM, EPIPE): srun's, qsub -sync y's."""
    from .running import dies_with
    from .verbs import Context
    return dies_with(Context(lambda: client, cli=True), ids, run)


def table(text: str) -> dict:
    """An option table from `KEY=SPELLING,...` (a value), `KEY:SPELLING,...` (a flag), `KEY?...` (either: --opt=V)."""
    return {spelling: (key, {"=": 1, ":": 0, "?": -1}[eq]) for word in text.split() for key, eq, spellings in
            [re.match(r"([\w-]+)([=:?])(.*)", word).groups()] for spelling in spellings.split(",")}


def when(text: str) -> float:
    """sacct's -S/-E: YYYY-MM-DD[THH:MM[:SS]], MM/DD[/YY][-HH:MM[:SS]] (or MM.DD[.YY], MMDD[YY]; no year: the latest
    past), HH:MM[:SS] (today), midnight, noon, fika, teatime, today, now[{+|-}N[seconds|minutes|hours|days|weeks]]."""
    now, low = time.time(), text.lower()
    clock = {"midnight": "0:00", "today": "0:00", "noon": "12:00", "fika": "15:00", "teatime": "16:00"}.get(low, text)
    if m := re.fullmatch(r"now(?:([+-]\d+)(seconds?|minutes?|hours?|days?|weeks?|[smhdw]?))?", low):
        return now + int(m[1] or 0) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[(m[2] or "s")[0]]
    iso, this = text, time.localtime(now)
    if re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?", clock):  # (today)
        return time.mktime(this[:3] + (*map(int, (clock + ":0").split(":")[:3]), 0, 0, -1))
    if m := re.fullmatch(r"(\d\d)([/.]?)(\d\d)(?:\2(\d\d))?(-\d\d:\d\d(?::\d\d)?)?", text):
        iso = f"{2000 + int(m[4]) if m[4] else this.tm_year - (int(m[1]) > this.tm_mon)}-{m[1]}-{m[3]}" + \
            (m[5] or "").replace("-", "T")
    try:
        import datetime
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        raise Refused(f"invalid time specification: {text}") from None


def find(client: Client, ref: str) -> dict | None:
    """The record of job N (an array: its own) or of task N.T, or None: there is none (or none the master knows)."""
    with contextlib.suppress(GrunError):
        return client.job(ref)


def records(client: Client, refs: list[str]) -> dict[str, dict | None]:
    """find's answer for each of N (a job, an array's own record; a task's own id) and N.T (a task; not begun: its
    array's), from a call for all the live jobs and one for the ended: a shim acting on 10,000 jobs asks twice, not
    10,000 times (if one is unknown, find's for each not live)."""
    from .core.arrays import has_task, label
    from .values import task_ref
    live = {key: j for j in client.jobs() for key in {str(j["id"]), label(j)}}
    found = {ref: live.get(ref) or (t := task_ref(ref)) and (a := live.get(str(t[0]))) and has_task(a, t[1]) and a
             for ref in refs}
    with contextlib.suppress(JobNotFound):  # (the master's wait, which with 0 s does not wait: the ended ones' records)
        ended = client.call("wait", rest, 0) if (rest := [r for r, j in found.items() if not j and r.isdigit()]) else {}
        found.update((ref, job) for ref, job in ended.items() if ref in found)
    return {ref: job or find(client, ref) for ref, job in found.items()}


def act(client: Client, jobs: dict, states: tuple, verb: str, *args) -> dict:
    """The master's hold, resume or edit (`verb`, with `args`) of those of the jobs (records(): by ref) in `states`,
    in one call: {ref: why} of those refused (another user's)."""
    refs = [ref for ref, job in jobs.items() if job and job["state"] in states]
    return {str(k): why for k, why in refusals(getattr(client, verb), refs, *args)[1].items()} if refs else {}


def job_list(client: Client, ids: list[str], finished_for: float | None = 300.0) -> tuple[list[dict], list[str]]:
    """The live jobs, or those with these ids: N a job, or an array's tasks (and its part not started yet, if any), N_T
    one task (or its array's unstarted part); ended ones too (< `finished_for` s ago; None: any); the ids not found."""
    if not ids:
        return client.jobs(), []
    found, unknown, arrays = {}, [], {}
    for word in ids:
        number, _, task = word.partition("_")
        job = number.isdigit() and find(client, f"{number}.{task}" if task else number)  # (a task: as the master has it)
        if not job:
            unknown.append(word)
        elif "ranges" in job and not task:
            arrays[job["id"]] = job
        else:
            found.setdefault(job["id"], job)
    if arrays:  # their tasks: live ones, and each one's ended ones (the history's: `array` reads only its files)
        history = [j for i, a in arrays.items() if (n := sum(a["counts"].values())) for j in client.history(n, array=i)]
        tasks = {j["id"]: j for j in history + client.jobs() if "task" in j and j["array"] in arrays}
        found.update(sorted(tasks.items(), key=lambda item: item[1]["task"]))
        begun = {j["array"] for j in tasks.values()}  # an array's own line: tasks not started (or never to start)
        found.update((i, a) for i, a in arrays.items() if a["tasks"] > a["started"] or i not in begun)
    now = time.time()
    return [j for j in found.values() if finished_for is None or now - j.get("end_time", now) < finished_for], unknown
