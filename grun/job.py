"""`Job`, the handle Python code gets for one job (`Client.submit`, `Client.get`): it holds the id and
asks the master, or the job's node for its output, when used. Not on the `grun` command's path."""

import os
import threading
from collections.abc import Iterator

from . import wire
from .client import Client, GrunError, _failure


class Job:
    """A handle for one job. `wait()` returns the exit code as a shell would give it (128+N for death by
    signal N); `stdout()`/`stderr()` the whole output once the job has ended, or with `stream=True` the
    chunks as the job writes them, from its node, which keeps them to be read again (stdout and stderr are read
    apart) until `release()`, else for `output_keep:` (a day by default)."""

    def __init__(self, client: Client, job_id: int):
        self.client, self.id = client, int(job_id)

    def __repr__(self) -> str:
        return f"Job({self.id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.client.address == self.client.address

    def __hash__(self) -> int:
        return hash((self.client.address, self.id))

    def info(self) -> dict:
        """The job's record as the master has it now."""
        return self.client.job(self.id)

    @property
    def state(self) -> str:
        """queued, held, dispatched, running, suspended, done, failed, killed or lost."""
        return self.info()["state"]

    def wait(self, timeout: float | None = None) -> int:
        """Block until the job has finished and return its exit code; raises Timeout after `timeout` s."""
        return self.client.exit_code(self.id, timeout=timeout)

    def stdout(self, stream: bool = False) -> bytes | Iterator[bytes]:
        """The job's standard output: all of it (waiting for the end), or chunks as they come."""
        chunks = _chunks(self.client, self.id, "stdout")
        return chunks if stream else b"".join(chunks)

    def stderr(self, stream: bool = False) -> bytes | Iterator[bytes]:
        """The job's standard error: all of it (waiting for the end), or chunks as they come."""
        chunks = _chunks(self.client, self.id, "stderr")
        return chunks if stream else b"".join(chunks)

    def release(self) -> None:
        """Let the job's node drop its output (now, or once it ends): stdout() and stderr() find it gone."""
        job = self.info()
        try:
            if supervisor := self.client.supervisor(self.id, job):
                with supervisor:
                    supervisor.release()
        except Exception as exc:
            if not isinstance(exc, (LookupError, wire.CallRejected)):  # (else its node holds it no longer)
                raise _failure(exc, f"node of job {self.id}") from None

    def kill(self, sig: int = 15) -> bool:
        """Signal the job (TERM by default; KILL follows after a grace period). False if it had ended."""
        return bool(self.client.kill([self.id], sig).get(self.id))

    def suspend(self) -> bool:
        """Stop a running job (its process group gets SIGSTOP) or hold a queued one."""
        return bool(self.client.hold([self.id]).get(self.id))

    def resume(self) -> bool:
        """Continue a suspended job or release a held one."""
        return bool(self.client.resume([self.id]).get(self.id))


def _chunks(client: Client, job_id: int, which: str) -> Iterator[bytes]:
    """The job's stdout or stderr as it is produced: a follower thread streams it into a pipe we read
    (the other one is dropped). If the reader stops early (closes or drops the iterator), the
    follower's next write meets a broken pipe, and it hangs up on the node."""
    read_end, write_end = os.pipe()
    failed: list[GrunError] = []

    def follow() -> None:
        fds = {"stdout_fd": lambda data: None, "stderr_fd": lambda data: None, f"{which}_fd": write_end}
        try:
            client.follow(job_id, **fds, release=False, require_output=True)
        except Exception as exc:  # handed to the reading thread, unless it stopped reading (a broken pipe)
            if not isinstance(exc, BrokenPipeError):
                failed.append(exc if isinstance(exc, GrunError) else GrunError(f"job {job_id}: {exc}"))
        finally:
            os.close(write_end)

    threading.Thread(target=follow, name=f"grun-job-{job_id}-{which}", daemon=True).start()
    with open(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            yield chunk
    if failed:
        raise failed[0]
