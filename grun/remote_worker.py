"""One Python call as a job: `python -m grun.remote_worker [LABEL]` on a node (the job `grun.remote` submits),
and the result frame both sides read. Input (the job's stdin): a line with a one-time nonce, then cloudpickle
bytes of func, then of (args, kwargs) (a map's calls share the function's bytes). The function's stdout and stderr
are the job's. When it returns or raises, one frame goes to stdout:

    RESULT_MARK + nonce + b":" + 8-byte big-endian length + pickle of the outcome

The outcome is ("ok", value) or ("error", exception or None, remote traceback text, "Type: message"); an exception
that pickle cannot rebuild (its __init__ takes other arguments than its args) goes as (type, args, __dict__).
The caller knows the nonce, so no output of the function can be taken for the frame (ResultReader).
LABEL only names the call in `grun -q jobs`. Nothing else of grun's is imported: it must start fast. Another
interpreter (`python=`) must have grun (this module) and cloudpickle."""
import contextlib
import io
import os
import pickle
import select
import sys
import traceback
from collections.abc import Callable
from resource import RLIMIT_DATA, getrlimit

RESULT_MARK = b"\x00grun-result:"
LENGTH_BYTES = 8
# The caller attaches as soon as the job runs; a call that has not arrived by then never will (the
# caller went away), and the job must not hold its node's resources waiting for it.
ARRIVAL_TIMEOUT = float(os.environ.get("GRUN_CALL_TIMEOUT", "300"))


def _dumps(outcome: tuple) -> bytes:
    try:
        import cloudpickle
        return cloudpickle.dumps(outcome)
    except Exception:
        return pickle.dumps(outcome)


def _outcome(blob: bytes) -> tuple:
    try:
        func, (args, kwargs) = pickle.load(call := io.BytesIO(blob)), pickle.load(call)
    except BaseException as exc:  # (a module the caller imports by name, not on our sys.path: how to get it here)
        hint = " (install it for this python; a module of your own: cloudpickle.register_pickle_by_value(mod)" \
               " sends it with the call)" if isinstance(exc, ModuleNotFoundError) else ""
        return "error", None, traceback.format_exc(), f"cannot load the call on this node: {type(exc).__name__}: {exc}{hint}"
    try:
        return "ok", func(*args, **kwargs)
    except SystemExit as exc:
        return "error", None, _traceback(exc), f"the function called sys.exit({exc.code!r})"
    except BaseException as exc:
        if type(exc) is MemoryError and not exc.args and (limit := getrlimit(RLIMIT_DATA)[0]) > 0:  # (none: -1)
            exc.args = (f"the call reached its memory limit of {limit >> 20} MB (memory={os.environ.get('GRUN_MEMORY')} MB"
                        + " x the node's hard_factor): ask for more with memory=",)
        return "error", exc, _traceback(exc), f"{type(exc).__name__}: {exc}"


def _traceback(exc: BaseException) -> str:
    """The traceback from the function down (this module's own frame left out)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main() -> int:
    os.set_blocking(0, False)
    try:  # (a FIFO whose writer closed before we opened it reads as ended, but select never says so: measured)
        data = os.read(0, 1 << 16)
    except BlockingIOError:
        data = None
    os.set_blocking(0, True)
    if data != b"" and (data is not None or select.select([0], [], [], ARRIVAL_TIMEOUT)[0]):
        data = (data or b"") + sys.stdin.buffer.read()  # (None: nothing came within ARRIVAL_TIMEOUT)
    nonce, line, blob = (data or b"").partition(b"\n")
    if not line:  # (an input that ended first: the caller hung up before it sent the call)
        why = "its input ended before it" if data is not None else f"none within {ARRIVAL_TIMEOUT:g} s"
        print(f"grun: no call arrived ({why}: did the caller go away?)", file=sys.stderr)
        return 2
    with open(os.devnull, "rb") as devnull:  # the function reads nothing of ours
        os.dup2(devnull.fileno(), 0)
    outcome = _outcome(blob)
    try:
        payload = _dumps(outcome)
    except BaseException as exc:
        what, text = ("result", "") if outcome[0] == "ok" else ("exception", outcome[2])
        payload = _dumps(("error", None, text, f"cannot pickle the {what}: {type(exc).__name__}: {exc}"))
    else:
        try:
            pickle.loads(payload)  # an exception that pickles but cannot be rebuilt would fail the caller
        except BaseException:
            if outcome[0] == "error":  # (the caller rebuilds it without its __init__)
                payload = _dumps(("error", (type(outcome[1]), outcome[1].args, vars(outcome[1])), *outcome[2:]))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    view = memoryview(RESULT_MARK + nonce + b":" + len(payload).to_bytes(LENGTH_BYTES, "big") + payload)
    while view:
        view = view[os.write(1, view):]
    return 0 if outcome[0] == "ok" else 1


class ResultReader:
    """The caller's side: the job's stdout, whose output passes through to `sink` and whose result frame
    is kept (only the caller knows the nonce that marks it). From the first RESULT_MARK on, nothing is passed
    on before close(), so no frame reaches `sink` as raw bytes, ours or another's."""

    def __init__(self, nonce: bytes, sink: Callable[[bytes], None]):
        self.mark, self.sink, self.held, self.framed = RESULT_MARK + nonce + b":", sink, bytearray(), False

    def feed(self, data: bytes) -> None:
        self.held += data  # (once framed: the frame, from the first RESULT_MARK on)
        if self.framed:
            return
        if (at := self.held.find(RESULT_MARK)) >= 0:
            self.framed = True
        else:  # hold back only a tail that could be the start of the mark (it starts with the one NUL)
            nul = self.held.rfind(b"\0", max(0, len(self.held) - len(RESULT_MARK)))
            at = nul if nul >= 0 and RESULT_MARK.startswith(self.held[nul:]) else len(self.held)
        self._emit(at)

    def _emit(self, upto: int) -> None:
        """Pass the output held before `upto` on."""
        if upto:
            self.sink(bytes(self.held[:upto]))
            del self.held[:upto]

    def close(self) -> bytes | None:
        """The pickled outcome, or None if the job ended without a (whole) result frame; a ValueError if its
        frame is not this call's (a mark the function printed, before ours, is output: passed on now)."""
        if not self.framed:
            return self._emit(len(self.held))
        if (at := self.held.find(self.mark)) < 0:
            raise ValueError("its result frame is not this call's (another nonce): the node ran it without its call")
        self._emit(at)
        frame = self.held[len(self.mark):]
        size = int.from_bytes(frame[:LENGTH_BYTES], "big")
        body = bytes(frame[LENGTH_BYTES:LENGTH_BYTES + size])
        return body if len(frame) >= LENGTH_BYTES and len(body) == size else None


if __name__ == "__main__":
    sys.exit(main())
