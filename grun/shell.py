"""`grun shell`: an interactive console running the verbs of the command line's table (grun/verbs.py).

On a terminal it is a prompt_toolkit prompt with completion (verbs, options, job ids, node names, the
commands of past jobs), a persistent history file, suggestions from that history, and a prompt that
shows when the master is unreachable (a monitor thread pings it; the next verb reconnects). Ctrl-C
interrupts the running verb, not the shell (a `run` job is killed, as with `grun CMD`; `attach`
detaches); Ctrl-D or `exit` leaves. Without a terminal (`echo jobs | grun shell`) it reads verbs
from stdin, one a line, prints their output and exits with the status of the last one.

The shell's own verbs (help, exit, watch) are added to the same table.
"""

from __future__ import annotations

import os
import select
import shlex
import sys
import threading
import time

from . import verbs
from .client import Client, GrunError
from .options import UsageError

EXIT_USAGE = 2
MONITOR_SECS = 1.0


class ExitShell(Exception):
    def __init__(self, code: int):
        self.code = code


# ---- what the completion knows: refreshed by a monitor thread, never fetched while typing -------

class _QuickClient(Client):
    """A client whose calls give up after a few seconds: the monitor must notice a master that went
    silent (host down, cable cut), not wait on it for the minutes a long call may take."""

    def _proxy(self):
        proxy = super()._proxy()
        proxy._pyroTimeout = 5.0
        return proxy


class ClusterView:
    """The master's reachability and recent lists of jobs, nodes and past commands."""

    def __init__(self, host: str, port: int, interval: float = MONITOR_SECS, on_change=None):
        self.client = _QuickClient(host, port, connect_wait=0)
        self.interval = interval
        self.on_change = on_change   # called with True/False when the master comes back / goes away
        self.up: bool | None = None
        self.jobs: list[dict] = []
        self.nodes: list[dict] = []
        self.history: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="grun-shell-monitor", daemon=True)

    def start(self) -> ClusterView:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            was = self.up
            try:
                self.client.call("ping", wait=0)
                self.jobs = self.client.jobs()
                if tick % 3 == 0 or self.up is not True:
                    self.nodes = self.client.nodes()
                    self.history = self.client.history(100)
                self.up = True
            except Exception:
                self.up = False
            if was is not None and was != self.up and self.on_change is not None:
                try:
                    self.on_change(self.up)
                except Exception:
                    pass
            tick += 1
            self._stop.wait(self.interval)


def _completer(view: ClusterView):
    from prompt_toolkit.completion import Completer, Completion

    shell_options = {o.long: o for o in verbs.OPTIONS}

    class VerbCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            words = text.split()
            current = "" if not words or text[-1:].isspace() else words[-1]
            done = words if current == "" else words[:-1]
            if not done:
                for name in sorted(verbs.BY_NAME):
                    if name.startswith(current):
                        yield Completion(name, -len(current), display_meta=verbs.BY_NAME[name].help)
                return
            verb = verbs.find(done[0])
            if verb is None:
                return
            previous = done[-1] if len(done) > 1 else ""
            if previous in ("-H", "--hosts"):
                for n in view.nodes:
                    if n["name"].startswith(current):
                        yield Completion(n["name"], -len(current), display_meta="up" if n["up"] else "down")
                return
            if current.startswith("-"):
                for opt in verb.options:
                    if opt.startswith(current):
                        o = shell_options.get(opt[2:])
                        yield Completion(opt, -len(current), display_meta=o.help if o else "")
                return
            if verb.completes == "verbs" and len(done) == 1:
                for v in verbs.VERBS:
                    if v.name.startswith(current):
                        yield Completion(v.name, -len(current), display_meta=v.help)
                return
            if verb.completes == "jobs":
                seen = set(done[1:])
                candidates = [(j["id"], j["state"], verbs.command_text(j)) for j in view.jobs]
                if verb.name in ("wait", "attach"):
                    candidates += [(j["id"], j.get("state", "done"), verbs.command_text(j)) for j in view.history]
                for job_id, state, cmd in candidates:
                    if str(job_id).startswith(current) and str(job_id) not in seen:
                        seen.add(str(job_id))
                        yield Completion(str(job_id), -len(current), display_meta=f"{state}: {cmd}"[:60])
                return
            if verb.completes == "command" and _command_starts_here(done[1:]):
                seen = set()
                for j in view.history:
                    cmd = verbs.command_text(j)
                    if cmd.startswith(current) and cmd not in seen:
                        seen.add(cmd)
                        yield Completion(cmd, -len(current), display_meta=f"job {j['id']}")

    return VerbCompleter()


def _command_starts_here(words: list[str]) -> bool:
    """Whether the next word would be the command of `run`/`submit` (all words so far are options)."""
    try:
        _opts, rest = verbs.parse_options(words)
    except UsageError:
        return False
    if rest:
        return False
    # an option still waiting for its value takes the next word
    last = words[-1] if words else ""
    for o in verbs.OPTIONS:
        if o.kind != "flag" and last in (f"--{o.long}", f"-{o.short}" if o.short else None):
            return False
    return True


def _command(line: str, skip: int, words: list[str]) -> list[str]:
    """The command of `run`/`submit` as typed: shell syntax (`a; b`, `x | y`, `$HOME`) is left to
    /bin/sh on the node, as a one-string command like `grun 'a; b'`; plain words stay an argv."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    for _ in range(skip):
        lexer.get_token()
    rest = line[lexer.instream.tell():].strip()
    if len(words) > 1 and any(c in verbs.SHELL_CHARS - set(" \t\n") for c in rest):
        return [rest]
    return words


# ---- the shell -------------------------------------------------------------------------------

class Shell:
    def __init__(self, client: Client, io: verbs.IO | None = None, view: ClusterView | None = None):
        self.client = client
        self.io = io or verbs.IO()
        self.view = view
        self.status = 0

    def execute(self, line: str) -> int:
        """Run one line; returns its exit status. Raises ExitShell for `exit`."""
        line = line.strip()
        if not line or line.startswith("#"):
            return self.status
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._done(self.io.fail(f"cannot parse the line: {exc}", EXIT_USAGE))
        verb = verbs.find(words[0])
        if verb is None:
            return self._done(self.io.fail(f"unknown verb {words[0]!r} (try: help)", EXIT_USAGE))
        try:
            args = verb.parse(words[1:], verb.name)
            if verb.completes == "command":
                args["cmd"] = _command(line, len(words) - len(args["cmd"]), args["cmd"])
            code = verb.run(self if not verb.needs_client else self.client, args, self.io)
            if code == 130:  # the verb caught Ctrl-C itself: a call may have been cut off mid-reply
                self.client.reset()
            return self._done(code)
        except ExitShell:
            raise
        except UsageError as exc:
            return self._done(self.io.fail(str(exc), EXIT_USAGE))
        except GrunError as exc:
            return self._done(self.io.fail(str(exc)))
        except KeyboardInterrupt:
            self.client.reset()  # the interrupted call left the connection mid-reply
            self.io.say("grun: interrupted")
            return self._done(130)
        except BrokenPipeError:
            raise ExitShell(141) from None
        except OSError as exc:
            return self._done(self.io.fail(str(exc)))

    def _done(self, code: int) -> int:
        self.status = code
        return code

    # ---- the loop ------------------------------------------------------------------------------

    def run_script(self, stream) -> int:
        """Verbs from a file or pipe, one a line."""
        for line in stream:
            try:
                self.execute(line)
            except ExitShell as exc:
                return exc.code
        return self.status

    def interact(self, history_path: str | None) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        history = InMemoryHistory()
        if history_path:
            try:
                os.makedirs(os.path.dirname(history_path), exist_ok=True)
                with open(history_path, "a"):
                    pass
                history = FileHistory(history_path)
            except OSError as exc:
                self.io.say(f"grun: no history file ({exc})")
        session = PromptSession(message=self._prompt, history=history, completer=_completer(self.view),
                                auto_suggest=AutoSuggestFromHistory(), complete_while_typing=False,
                                refresh_interval=0.5)
        self.io.say(f"grun shell: master {self.client.address}; 'help' lists the verbs, Ctrl-D leaves")
        while True:
            try:
                with patch_stdout(raw=True):  # the monitor's notices print above the prompt
                    line = session.prompt()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                return self.status
            try:
                self.execute(line)
            except ExitShell as exc:
                return exc.code

    def _prompt(self) -> str:
        up = self.view.up if self.view is not None else True
        if up is False:
            return f"grun [{self.client.address} unreachable]> "
        return "grun> "


# ---- the shell's own verbs -------------------------------------------------------------------

def _help(shell: Shell, args: dict, io: verbs.IO) -> int:
    name = args.get("verb")
    if name:
        verb = verbs.find(name)
        if verb is None:
            return io.fail(f"no verb {name!r} (try: help)", EXIT_USAGE)
        io.print(verbs.usage(verb))
        return 0
    width = max(len(v.name) for v in verbs.VERBS)
    for verb in verbs.VERBS:
        io.print(f"  {verb.name:<{width}}  {verb.help}")
    io.print("help VERB shows its arguments; Ctrl-C interrupts a verb, Ctrl-D leaves.")
    return 0


def _help_args(words: list[str], called: str) -> dict:
    if len(words) > 1:
        raise UsageError("help takes at most one verb")
    return {"verb": words[0]} if words else {}


def _exit(shell: Shell, args: dict, io: verbs.IO) -> int:
    raise ExitShell(args.get("code", 0))


def _exit_args(words: list[str], called: str) -> dict:
    if not words:
        return {}
    if len(words) == 1 and words[0].isdigit():
        return {"code": int(words[0]) & 0xFF}
    raise UsageError("usage: exit [CODE]")


def _watch_args(words: list[str], called: str) -> dict:
    if not words:
        return {"interval": 2.0}
    if len(words) == 2 and words[0] in ("-n", "--interval"):
        try:
            interval = float(words[1])
        except ValueError:
            interval = 0
        if interval > 0:
            return {"interval": interval}
    raise UsageError(f"usage: {called} [-n SECONDS]")


def _screen(client: Client) -> str:
    nodes, jobs = client.nodes(), client.jobs()
    head = f"grun {client.address}  {time.strftime('%H:%M:%S')}  {len(jobs)} jobs on {len(nodes)} nodes"
    return "\n\n".join([head, verbs.nodes_table(nodes), verbs.jobs_table(jobs)])


def _watch(shell: Shell, args: dict, io: verbs.IO) -> int:
    """Redraw nodes and jobs every few seconds until a key is pressed (once, without a terminal)."""
    client = shell.client
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd) or not io.out.isatty():
        io.print(_screen(client))
        return 0
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while True:
            io.out.write("\x1b[H\x1b[2J" + _screen(client) + "\n\n(press any key to stop)\n")
            io.out.flush()
            if select.select([fd], [], [], args["interval"])[0]:
                os.read(fd, 64)
                return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


verbs.add(verbs.Verb("watch", "a live table of nodes and jobs until a key is pressed", "[-n SECONDS]",
                     _watch, _watch_args, aliases=("top",), options=("--interval",), needs_client=False))
verbs.add(verbs.Verb("help", "list the verbs, or show one verb's arguments", "[VERB]", _help, _help_args,
                     aliases=("?",), completes="verbs", needs_client=False))
verbs.add(verbs.Verb("exit", "leave the shell (also Ctrl-D)", "[CODE]", _exit, _exit_args,
                     aliases=("quit",), needs_client=False))


def _notice(address: str):
    def say(up: bool) -> None:
        print(f"grun: the master at {address} is back" if up else f"grun: lost the master at {address}; "
              f"waiting for it to return", file=sys.stderr, flush=True)
    return say


def history_path() -> str:
    from .config import user_state_dir
    return os.path.join(user_state_dir(), "shell_history")


def main(connect, words: list[str]) -> int:
    """`grun shell`: interactive on a terminal, else verbs from stdin. `connect()` gives the Client
    (it may start the personal cluster, so it is called once the arguments are known to be good)."""
    if words:
        raise UsageError(f"grun shell takes no arguments, got {' '.join(words)} (pipe verbs into it instead)")
    client = connect()
    interactive = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive:
        return Shell(client).run_script(sys.stdin)
    view = ClusterView(client.host, client.port, on_change=_notice(client.address)).start()
    try:
        return Shell(client, view=view).interact(history_path())
    finally:
        view.stop()
