"""One Python call as a job: `python -m grun.remote_worker [LABEL]` on a node (the job `grun.remote` submits),
and the result frame both sides read. Input (the job's stdin): a line with a one-time nonce, then cloudpickle
bytes of (func, args, kwargs). The function's stdout and stderr are the job's. When it returns or raises, one
frame goes to stdout:

    RESULT_MARK + nonce + b":" + 8-byte big-endian length + pickle of the outcome

The outcome is ("ok", value) or ("error", exception or None, remote traceback text, "Type: message").
The caller knows the nonce, so no output of the function can be taken for the frame (ResultReader).
LABEL only names the call in `grun -q jobs`. Nothing of grun's is imported: it must start fast, and may
run under another interpreter (`python=`) that only has cloudpickle."""
import contextlib
import os
import pickle
import select
import sys
import traceback
from collections.abc import Callable

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
        func, args, kwargs = pickle.loads(blob)
    except BaseException as exc:
        return "error", None, traceback.format_exc(), f"cannot load the call on this node: {type(exc).__name__}: {exc}"
    try:
        return "ok", func(*args, **kwargs)
    except SystemExit as exc:
        return "error", None, _traceback(exc), f"the function called sys.exit({exc.code!r})"
    except BaseException as exc:
        return "error", exc, _traceback(exc), f"{type(exc).__name__}: {exc}"


def _traceback(exc: BaseException) -> str:
    """The traceback from the function down (this module's own frame left out)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main() -> int:
    if not select.select([0], [], [], ARRIVAL_TIMEOUT)[0]:
        print(f"grun: no call arrived within {ARRIVAL_TIMEOUT:g} s (did the caller go away?)", file=sys.stderr)
        return 2
    nonce, _, blob = sys.stdin.buffer.read().partition(b"\n")
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
            if outcome[0] == "error":
                payload = _dumps(("error", None, outcome[2], outcome[3]))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    frame = RESULT_MARK + nonce + b":" + len(payload).to_bytes(LENGTH_BYTES, "big") + payload
    view = memoryview(frame)
    while view:
        view = view[os.write(1, view):]
    return 0 if outcome[0] == "ok" else 1


class ResultReader:
    """The caller's side: the job's stdout, whose output passes through to `sink` and whose result frame
    is kept (only the caller knows the nonce that marks it)."""

    def __init__(self, nonce: bytes, sink: Callable[[bytes], None]):
        self.mark, self.sink = RESULT_MARK + nonce + b":", sink
        self.pending = bytearray()
        self.frame: bytearray | None = None

    def feed(self, data: bytes) -> None:
        if self.frame is not None:
            self.frame += data
            return
        self.pending += data
        at = self.pending.find(self.mark)
        if at >= 0:
            self.frame = bytearray(self.pending[at + len(self.mark):])
            self._emit(at)
            return
        # hold back only a tail that could be the start of the mark (it starts with the one NUL)
        nul = self.pending.rfind(b"\0", max(0, len(self.pending) - len(self.mark)))
        self._emit(nul if nul >= 0 and self.mark.startswith(self.pending[nul:]) else len(self.pending))

    def _emit(self, upto: int) -> None:
        """Pass the output held before `upto` on; what follows it is the (start of a) frame, or kept."""
        if upto:
            self.sink(bytes(self.pending[:upto]))
        del self.pending[:upto if self.frame is None else len(self.pending)]

    def close(self) -> bytes | None:
        """The pickled outcome, or None if the job ended without a (whole) result frame."""
        self._emit(len(self.pending))
        if self.frame is None or len(self.frame) < LENGTH_BYTES:
            return None
        size = int.from_bytes(self.frame[:LENGTH_BYTES], "big")
        body = bytes(self.frame[LENGTH_BYTES:LENGTH_BYTES + size])
        return body if len(body) == size else None


if __name__ == "__main__":
    sys.exit(main())
