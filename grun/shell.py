"""`grun shell`: an interactive console running the verbs of grun/verbs.py through its dispatcher. On a terminal:
a prompt_toolkit prompt with completion (verbs, options, job ids, nodes, past commands), a history file, and a
prompt that shows when the master is unreachable. Ctrl-C interrupts the running verb, not the shell; Ctrl-D or
`exit` leaves. Without a terminal (`echo jobs | grun shell`) it runs the lines of stdin and exits, as sh does, with the
status of the last one (or exit's CODE). The shell's own verbs (help, exit, watch) live here."""

import logging
import os
import shlex
import sys
import time
from importlib import import_module

from . import verbs
from .background import Loop
from .client import Client
from .options import EXIT_USAGE, OPTIONS, UsageError, help_text
from .options import parse as parse_options
from .tables import command_text, jobs_table, nodes_table
from .verbs import Context, verb

MONITOR_SECS = 1.0


class ExitShell(Exception):
    """`exit [CODE]`: args[0] is the status the shell leaves with."""


class ClusterView:
    """What completion knows, never fetched while typing: whether the master answers, and its jobs, nodes
    and past commands, refreshed every MONITOR_SECS by a client whose calls give up after a few seconds
    (a master gone silent must be noticed, not waited on). `say(text)` tells the user it went or came back."""

    def __init__(self, host: str, port: int, say):
        self.client, self.say, self.up, self._ticks = Client(host, port, connect_wait=0), say, None, 0
        self.client.call_timeout = 5.0
        self.jobs, self.nodes, self.history = [], [], []
        self.loop = Loop("grun-shell-monitor", self._refresh, MONITOR_SECS, logging.getLogger("grun.shell"))

    def _refresh(self) -> None:
        was = self.up
        try:
            self.jobs = self.client.jobs()
            if self._ticks % 3 == 0 or self.up is not True:
                self.nodes, self.history = self.client.nodes(), self.client.history(100)
            self.up = True
        except Exception:
            self.up = False
        self._ticks += 1
        if was is not None and was != self.up:
            self.say(f"the master at {self.client.address} is back" if self.up else
                     f"lost the master at {self.client.address}; waiting for it to return")


def _completer(view):
    from prompt_toolkit.completion import Completer, Completion

    class VerbCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            words = text.split()
            current, seen = words.pop() if text and not text[-1].isspace() else "", set()
            for word, meta in _candidates(view, words, current):
                if word.startswith(current) and word not in seen:
                    seen.add(word)
                    yield Completion(word, -len(current), display_meta=meta)

    return VerbCompleter()


def _candidates(view, done: list[str], current: str) -> list[tuple[str, str]]:
    """(text, meta) for the word being typed (`current`) after the words `done`, the first a verb's name."""
    if not done:
        return [(name, verbs.NAMES.get(name).help) for name in sorted(verbs.NAMES)]
    if (v := verbs.NAMES.get(done[0])) is None:
        return []
    if done[-1] in ("-H", "--hosts"):
        return [(n["name"], "up" if n["up"] else "down") for n in view.nodes]
    if current.startswith("-"):
        return [(f"--{o.long}", o.help) for o in OPTIONS if o.long in v.options]
    if v.words is _verb_name and len(done) == 1:
        return [(name, other.help) for name, other in verbs.VERBS.items()]
    if v.words in (verbs.one_id, verbs.ids_or_name, verbs.kill_ids, verbs.changes):
        jobs = view.jobs + (view.history if v.name in ("wait", "attach") else [])
        return [(str(j["id"]), f"{j.get('state', 'done')}: {command_text(j)}"[:60]) for j in jobs
                if str(j["id"]) not in done[1:]]
    if v.words is verbs.command and _command_starts_here(done[1:]):
        return [(command_text(j), f"job {j['id']}") for j in view.history]
    return []


def _command_starts_here(words: list[str]) -> bool:
    """Whether the next word would be the command of `run`/`submit`: the words so far are whole options
    (an option still waiting for its value is a usage error)."""
    try:
        return not parse_options(words, verbs.VERBS["run"].options, "run")[1]
    except UsageError:
        return False


def _command(line: str, skip: int, words: list[str]) -> list[str]:
    """The command of `run`/`submit` as typed: shell syntax (`a; b`, `x | y`, `$HOME`) is left to
    /bin/sh on the node, as a one-string command like `grun 'a; b'`; plain words stay an argv."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    for _ in range(skip):
        lexer.get_token()
    rest = line[lexer.instream.tell():].strip()
    return [rest] if len(words) > 1 and any(c in verbs.SHELL_CHARS - set(" \t\n") for c in rest) else words


def execute(ctx: Context, line: str) -> int:
    """Run one line (not blank, not a comment); returns its exit status. Raises ExitShell for `exit` (and
    BrokenPipeError when our reader went away: the command line ends quietly)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return ctx.say(f"cannot parse the line: {exc}", EXIT_USAGE)

    def keep_shell_syntax(v: verbs.Verb, args: dict) -> None:
        if v.words is verbs.command:
            args["cmd"] = _command(line, len(words) - len(args["cmd"]), args["cmd"])

    return verbs.execute(ctx, words, adjust=keep_shell_syntax)


def run(ctx: Context, lines) -> int:
    """Verbs from a file, a pipe or the prompt, one a line, until they end or `exit`; the last one's status."""
    status = 0
    try:
        for line in (line.strip() for line in lines):
            if line and not line.startswith("#"):
                status = execute(ctx, line)
    except ExitShell as exc:  # (`exit` alone: the last line's status, as sh's)
        return status if exc.args[0] is None else exc.args[0]
    return status


def _prompted(ctx: Context, view: ClusterView, history_path: str):
    """The lines typed at the prompt, until Ctrl-D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    try:
        os.makedirs(os.path.dirname(history_path), exist_ok=True)
        open(history_path, "a").close()  # writable? FileHistory would only fail at the first line
        history = FileHistory(history_path)
    except OSError as exc:
        ctx.say(f"no history file ({exc})")
        history = InMemoryHistory()
    address = ctx.client.address
    session = PromptSession(message=lambda: f"grun [{address} unreachable]> " if view.up is False else "grun> ",
                            history=history, completer=_completer(view), auto_suggest=AutoSuggestFromHistory(),
                            complete_while_typing=False, refresh_interval=0.5)
    print(f"grun shell: master {address}; 'help' lists the verbs, Ctrl-D leaves", file=ctx.err)
    while True:
        try:
            with patch_stdout(raw=True):  # the monitor's notices print above the prompt
                line = session.prompt()
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line
        except EOFError:
            return
        yield line


# ---- the shell's own verbs -----------------------------------------------------------------------

def _verb_name(words: list[str], called: str, opts: dict) -> dict:
    if len(words) > 1:
        raise UsageError("help takes at most one verb or topic")
    return {"verb": words[0]} if words else {}


def _config_page() -> str:
    from .config import KEYS
    return "config keys (YAML, /etc/grun.conf; `grun -q conf` reads them from this host's file, not from a running daemon, which keeps what it read at its start or last grun -d -r):\n" + "\n".join(
        f"  {k.name:<19} {k.doc}" + (f" [default: {k.default}]" if not callable(k.default) else
                                     f" [guessed: {k.guess}]" if k.guess else "") +
        ("" if k.reload else " (needs grun -d -R)") for k in KEYS.values())


def _doc(module: str) -> str:
    return import_module(module, __package__).__doc__.strip()


# `help TOPIC`: pages made from the tables and docstrings they describe
TOPICS = {"config": _config_page,  # (their names: grun.cli.HELP_TOPICS, for completion)
          "options": lambda: help_text("grun [options] COMMAND [ARGS...]   (every option; `grun -h`: the command "
                                       "line's)", tuple(o.long for o in OPTIONS)), "make": lambda: _doc(".make"),
          "rules": lambda: _doc(".core.rules") + "\n\n" + _doc(".core.expr"),
          "trust": lambda: _doc(".auth"), "slurm": lambda: _shim_page(".compat_slurm", "SUBMIT", "sbatch and srun"),
          "sge": lambda: _shim_page(".compat_sge", "QSUB", "qsub")}


def _shim_page(module: str, table: str, what: str) -> str:
    options = sorted(getattr(import_module(module, __package__), table), key=str.lower)
    return f"{_doc(module)}\n\n{what} take: {' '.join(options)} (others: a one-line error, nothing submitted)"


@verb("[VERB|TOPIC]", words=_verb_name, aliases="?")
def do_help(ctx: Context, args: dict) -> int:
    """list the verbs, show one verb's arguments, or a topic: config, rules, make, options, trust, slurm, sge"""
    if args.get("verb") in TOPICS:
        return ctx.print(TOPICS[args["verb"]]())
    if args.get("verb"):
        if (found := verbs.NAMES.get(args["verb"])) is None:
            return ctx.say(f"no verb or topic {args['verb']!r} (topics: {', '.join(TOPICS)})", EXIT_USAGE)
        text = "\n".join([f"{found.name} {found.usage}".rstrip(), f"    {found.help}"] +
                         ([f"    aliases: {', '.join(found.aliases)}"] if found.aliases else []))
        return ctx.print(help_text(text, found.options) if found.options else text)
    from .cli import PROGRAMS
    width = max(map(len, verbs.VERBS))
    ctx.print(f"{'verb':<{width + 4}}{'command line':<21}what it does")
    for v in verbs.VERBS.values():
        spelled = {"exit": "in grun shell", "run": "grun CMD", **PROGRAMS}.get(v.name, f"grun {v.name}")
        ctx.print(f"  {v.name:<{width}}  {spelled:<20} {v.help}")
    return ctx.print(f"help VERB shows its arguments, help TOPIC a page ({', '.join(TOPICS)}); " + (
        "`grun -- VERB` runs a program of that name; -q, -k, -e: grun --help" if ctx.cli else
        "Ctrl-C interrupts a verb, Ctrl-D leaves."))


def _exit_code(words: list[str], called: str, opts: dict) -> dict:
    if words[1:] or words and not words[0].isdigit():
        raise UsageError("usage: exit [CODE]")
    return {"code": int(words[0]) & 0xFF if words else None}


@verb("[CODE]", words=_exit_code, aliases="quit")
def do_exit(ctx: Context, args: dict) -> int:
    """leave the shell (also Ctrl-D) with CODE, else the last line's status"""
    raise ExitShell(args["code"])


def _screen(client) -> str:
    nodes, jobs = client.nodes(), client.jobs()
    head = f"grun {client.address}  {time.strftime('%H:%M:%S')}  {len(jobs)} jobs on {len(nodes)} nodes"
    return "\n\n".join([head, nodes_table(nodes), jobs_table(jobs)])


@verb("[-n SECONDS]", "interval", aliases="top")
def do_watch(ctx: Context, args: dict) -> int:
    """a live table of nodes and jobs until a key is pressed"""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd) or not ctx.out.isatty():
        return ctx.print(_screen(ctx.client))  # without a terminal: once
    import select
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while True:
            ctx.print("\x1b[H\x1b[2J" + _screen(ctx.client) + "\n\n(press any key to stop)")
            if select.select([fd], [], [], args.get("interval", 2.0))[0]:
                os.read(fd, 64)
                return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def main(ctx: Context, words: list[str]) -> int:
    """`grun shell`: interactive on a terminal, else verbs from stdin. The client is connected (which
    may start the personal cluster) once the arguments are known to be good."""
    if words:
        raise UsageError(f"grun shell takes no arguments, got {' '.join(words)} (pipe verbs into it instead)")
    ctx.cli, ctx.stdin_fd = False, None  # the shell owns neither the process nor (a script's) stdin
    client = ctx.client
    if not (sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()):
        return run(ctx, sys.stdin)
    from .config import user_state_dir
    view = ClusterView(client.host, client.port, ctx.say)
    view.loop.start()
    view.loop.wake()  # the first look at once, then every MONITOR_SECS
    try:
        return run(ctx, _prompted(ctx, view, os.path.join(user_state_dir(), "shell_history")))
    finally:
        view.loop.stop()
