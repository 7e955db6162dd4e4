"""A `--pty` job's terminal (`grun --pty CMD`, `srun --pty CMD`): this module owns it, both ends.

The job's end, `python -m grun.pty_job ROWSxCOLS CMD [ARGS...]` (what --pty makes of the command; it imports
nothing of grun's), runs CMD on a new pty of that size, the controlling terminal of the job's session (we lead it),
CMD's process group its foreground: CMD stays in the job's session, where the node's suspend and kills reach all it
starts. It copies the job's stdin to the pty and the pty's output to the job's stdout, passes the signals grun sends
the job (FORWARDED) on to CMD's group and to the terminal's foreground group (neither is the job's process group),
and exits with CMD's status (128+N: killed by signal N). The end of its stdin (the client gone) hangs the terminal
up: SIGHUP, as when an ssh connection drops.
The client's end, Terminal: our terminal raw while the job runs (Ctrl-C, Ctrl-Z, Ctrl-\\ are keys for the job),
its keys and window sizes into a pipe, the job's stdin; put back as it was however grun ends.
A window size (at the job's start, and on each SIGWINCH) travels in band on that stream as FRAME: the bytes 0xFF
0xFE, then rows and columns, 2 bytes each, big-endian. 0xFF and 0xFE never occur in UTF-8, so no key and no paste
of a UTF-8 terminal sends them; a 0xFF not followed by 0xFE goes to the pty as it is."""
import contextlib
import os
import select
import signal
import struct
import sys

FRAME, MARK = struct.Struct(">2sHH"), b"\xff\xfe"
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def unframe(buf: bytes) -> tuple[bytes, list[tuple[int, int]], bytes]:
    """`buf`'s bytes for the pty, the window sizes framed in it, and its tail held back: a frame cut short."""
    data, sizes, start, i = [], [], 0, buf.find(b"\xff")
    while i >= 0:
        if buf[i + 1:i + 2] in (b"", MARK[1:]):  # a frame, or the start of one
            if len(buf) < i + FRAME.size:
                return b"".join([*data, buf[start:i]]), sizes, buf[i:]
            data.append(buf[start:i])
            sizes.append(FRAME.unpack_from(buf, i)[1:])
            start = i + FRAME.size
        i = buf.find(b"\xff", max(start, i + 1))
    return b"".join([*data, buf[start:]]), sizes, b""


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def main(argv: list[str]) -> int:
    """The job's end (the module's docstring)."""
    import fcntl
    import termios
    winsize = lambda rows, cols: struct.pack("HHHH", int(rows), int(cols), 0, 0)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize(*argv[0].split("x", 1)))  # (ROWSxCOLS) before CMD reads it
    try:  # (we lead the job's session, the reaper's setsid; not under a --wrap that forks, `timeout 1h {cmd}`)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        ours = True
    except OSError:  # CMD then leads a session of its own (as pty.fork made it), which we pass the job's signals on to
        ours = False
    if (pid := os.fork()) == 0:  # CMD, on the pty, in the job's session (the node's signals and kills reach it there)
        if not ours:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        else:
            os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # (else tcsetpgrp from a background group stops us)
        os.tcsetpgrp(slave, os.getpid())
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTOU):  # (Python ignores them, and exec would keep that)
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(argv[1], argv[1:])
        except OSError as exc:
            os.write(2, f"grun: {argv[1]}: {exc.strerror}\n".encode())
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    os.close(slave)  # (CMD holds it: its read fails, EIO, once nobody does)

    def forward(sig, _=None):
        groups = {pid}
        with contextlib.suppress(OSError):
            groups.add(os.tcgetpgrp(master) or pid)  # (0 once the pty has lost its session: killpg(0) is our own)
        groups.discard(os.getpgrp())  # (ours, the terminal's until CMD takes it: a signal to us came back to us)
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, sig)
    for sig in FORWARDED:  # (in the job's session, the node's signals reach CMD's groups: passed on, they came twice)
        signal.signal(sig, (lambda *_: None) if ours else forward)
    wake, woken = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(woken)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (its byte on `wake`: CMD has ended, even if others hold the pty)
    os.set_blocking(master, False)
    inputs, held, pending, status = [0], b"", b"", None
    while status is None:  # (until CMD ends, or the pty closes: every holder of it has ended)
        ready, writable, _ = select.select([master, wake, *([] if pending else inputs)], [master] if pending else [], [])
        if wake in ready:
            os.read(wake, 512)
            if (ended := os.waitpid(pid, os.WNOHANG))[0]:
                status = ended[1]
        if master in ready and status is None:
            try:
                data = os.read(master, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:  # EIO: nobody holds the pty any more
                status = os.waitpid(pid, 0)[1]
                continue
            _write_all(1, data)
        if writable:  # (the pty takes its input as CMD reads it: not all at once, never blocking us)
            with contextlib.suppress(OSError):  # (EIO: the pty is closing; its read says so)
                pending = pending[os.write(master, pending):]
        if 0 in ready:
            if not (data := os.read(0, 1 << 16)):
                inputs = []
                forward(signal.SIGHUP)
            data, sizes, held = unframe(held + data)
            pending += data
            for size in sizes:
                fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(*size))
    with contextlib.suppress(OSError):  # what CMD wrote before it ended
        while data := os.read(master, 1 << 16):
            _write_all(1, data)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Terminal:
    """The client's end: our terminal (fd 0) as it is now, raw from `start` (client.follow's on_start) with its keys
    and window sizes written into a pipe, `fd`, the job's stdin; `restore` (idempotent) puts it back."""

    def __init__(self):
        import termios
        self.saved, self.raw = termios.tcgetattr(0), False
        self.fd, self.pipe = os.pipe()

    def wrap(self, words: list[str], shell: bool = False) -> list[str]:
        """The job's command: `words` (`shell`: a line for /bin/sh) on a pty of our window's size."""
        cols, rows = os.get_terminal_size(0)
        return [sys.executable, "-m", "grun.pty_job", f"{rows}x{cols}", *(["/bin/sh", "-c"] if shell else []), *words]

    def start(self, job=None) -> None:
        if not self.raw:
            import threading
            import tty
            self.raw = True
            tty.setraw(0)
            signal.signal(signal.SIGWINCH, self.resized)
            self.resized()  # (it may have changed while the job was queued)
            threading.Thread(target=self._copy, name="grun-pty-keys", daemon=True).start()

    def resized(self, *_) -> None:
        """The job's new size, written by a thread of its own: the pipe full (a job not reading its terminal) would
        block the thread the signal came to, the one streaming the job's output."""
        import threading
        cols, rows = os.get_terminal_size(0)
        threading.Thread(target=os.write, args=(self.pipe, FRAME.pack(MARK, rows, cols)), daemon=True).start()

    def _copy(self) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, 1024):  # (at most PIPE_BUF: each write whole, never split by a frame)
                os.write(self.pipe, data)

    def restore(self) -> None:
        if self.raw:
            import termios
            self.raw = False
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)


if __name__ == "__main__":
    if len(sys.argv) < 3 or not all(part.isdigit() for part in sys.argv[1].split("x", 1)):
        sys.exit("usage: python -m grun.pty_job ROWSxCOLS CMD [ARGS...]")
    os._exit(main(sys.argv[1:]))  # (not sys.exit: Python's exit puts SIGTERM's default back, and a late one killed us)
