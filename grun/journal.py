"""The master's journal: the truth of its state, as append-only JSON lines each with a rising `seq`,
in segments `journal.<first seq>.log`. One writer thread writes whatever is pending with one
fdatasync (group commit) and wakes exactly the callers it made durable. Replay reads it back after a
snapshot, cuts a torn last line (a crash mid-write) and reports any other damage (`problems`).

A disk with no room left (ENOSPC, EDQUOT) stops nothing for good: what did not fit is cut off the file, stays
pending and is written again, every RETRY_SECS, until it fits; meanwhile `full` says why, and a wait for a
record not yet on disk raises DiskFull at once. Any other failure to write stops the journal for good (after a
failed fsync the page cache may claim data the disk lost: only a restart that reads the disk is safe).
"""

import errno
import heapq
import itertools
import json
import logging
import os
import re
import shutil
import threading

from .background import Loop
from .files import fsync_dir
from .spool import disk_full

# The journal only appends: fdatasync syncs the data and the new size, skipping the mtime update.
_datasync = getattr(os, "fdatasync", os.fsync)
encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators) builds one per call
RETRY_SECS = 1.0  # how often the writer tries again while the disk is full


class StoreError(Exception):
    """An unrecoverable storage problem (bad disk, failed fsync, missing journal)."""


class DiskFull(Exception):
    """The journal's disk has no room for what is pending: it is kept, and written once there is room."""


def numbered(directory: str, prefix: str, suffix: str) -> list[int]:
    """Sorted N of every file named <prefix>N<suffix>; temp, .corrupt and .damaged files don't match."""
    names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(suffix)]
    return sorted(int(m) for m in (n[len(prefix):len(n) - len(suffix)] for n in names) if m.isdigit())


class Journal:
    def __init__(self, directory: str, log: logging.Logger, problems: list[str]):
        self.dir, self._log, self.problems = directory, log, problems
        self._lock = threading.Lock()
        # (seq, id(lock), held lock): the writer releases the ones its fsync covered (a Condition woke all 32 for 14)
        self._waiters: list = []
        self._pending: list = []  # encoded lines, or an int: switch to segment journal.<int>.log
        self._seq = self._durable = self.commits = 0
        self._segment = 0  # first seq of the segment that new records go to
        self._file, self._error, self._closing = None, None, False
        self.full: str | None = None  # why the disk takes no more records now (DiskFull); None: it does
        self._writer = Loop("grun-journal", self._commit, lambda: RETRY_SECS if self.full else 60.0, log)
        self._writer.start()

    def _path(self, first: int) -> str:
        return os.path.join(self.dir, f"journal.{first}.log")

    def replay(self, after: int) -> tuple[list[dict], int]:
        """Records with seq > after, and the highest seq present; a torn last line is cut off, other bad ones damage."""
        segs = numbered(self.dir, "journal.", ".log")
        if segs and segs[0] > after + 1:
            raise StoreError(f"journal starts at seq {segs[0]}, but the snapshot ends at seq {after}")
        records, last = [], 0
        for first, successor in itertools.pairwise([*segs, None]):
            if successor is not None and successor <= after + 1:
                continue  # every record in it is already in the snapshot
            path, offset, bad = self._path(first), 0, []  # bad: (line number, offset, line) since the last good one
            with open(path, "rb") as f:
                for n, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line) if line.endswith(b"\n") else None
                        seq = rec["seq"]
                        if type(seq) is not int or seq <= last:
                            raise ValueError(f"seq {seq!r} out of order")
                    except (ValueError, TypeError, KeyError):
                        bad.append((n, offset, line))
                    else:
                        if bad:
                            self._damaged(path, bad, max(last, first - 1), seq)
                            bad = []
                        last = seq
                        if seq > after:
                            records.append(rec)
                    offset += len(line)
            if bad and successor is None and len(bad) == 1 and not bad[0][2].endswith(b"\n"):
                self._log.warning("%s: skipping torn last line %d (%d bytes)", path, bad[0][0], len(bad[0][2]))
            elif bad:
                self._damaged(path, bad, max(last, first - 1), None)
            if bad and successor is None:  # so appending after it can't glue a record onto the fragment
                os.truncate(path, bad[0][1])
        return records, max([last] + [s - 1 for s in segs[-1:]])

    def _damaged(self, path: str, bad: list, before: int, after: int | None) -> None:
        """Lines that are not a torn tail (records lost): the file kept aside, the loss logged and in `problems`."""
        kept = path + ".damaged"
        if not os.path.exists(kept):
            shutil.copyfile(path, kept)
        text = b"\n".join(line for _, _, line in bad)
        seen = [f"{op.decode()} of job {i.decode()}" for op, i in re.findall(rb'"op":"(\w+)"[^\n]*?"id":(\d+)', text)]
        lost = (f"records after {before}" if after is None else
                f"record {before + 1}" if after == before + 2 else f"records {before + 1}-{after - 1}")
        message = (f"damaged journal: {len(bad)} unreadable line(s) from line {bad[0][0]} of {path} ({lost} lost"
                   f"{'; they look like ' + ', '.join(seen[:5]) if seen else ''}); a copy is kept at {kept}")
        self._log.critical(message)
        self.problems.append(message)

    def open(self, next_seq: int) -> None:
        self._seq = self._durable = next_seq - 1
        self._segment = next_seq
        self._file = open(self._path(next_seq), "ab", buffering=0)  # (unbuffered: a failed write leaves nothing behind)
        fsync_dir(self.dir)

    def append(self, records: list[dict]) -> int:
        """Queue records for the next group commit; returns the last seq (wait() takes it)."""
        bodies = [encode(rec if "seq" not in rec else {k: v for k, v in rec.items() if k != "seq"}).encode()
                  for rec in records]  # (a caller's seq is ignored)
        with self._lock:
            if self._error:
                raise self._error
            if self._file is None or self._closing:  # (the next seq is known once load() read the journal)
                raise StoreError("store is closed" if self._closing else "load() must come before anything is logged")
            for body in bodies:  # seq is spliced in under the lock so lines reach disk in seq order
                self._seq += 1
                head = b'{"seq":%d' % self._seq
                self._pending.append(head + (b"}\n" if body == b"{}" else b"," + body[1:] + b"\n"))
            seq = self._seq
        if bodies:
            self._writer.wake()
        return seq

    def wait(self, seq: int) -> None:
        with self._lock:
            if self._durable >= seq:
                return
            if self._error or self.full:
                raise self._error or DiskFull(self.full)
            gate = threading.Lock()
            gate.acquire()
            heapq.heappush(self._waiters, (seq, id(gate), gate))
        gate.acquire()
        if self._durable < seq:
            raise self._error or DiskFull(self.full or "no room for its journal")

    def _release(self, upto: float) -> None:
        while self._waiters and self._waiters[0][0] <= upto:
            heapq.heappop(self._waiters)[2].release()

    def rotate(self) -> int:
        """Later records go to a new segment; returns the last seq before it (a snapshot's ticket)."""
        with self._lock:
            ticket = self._seq
            if self._segment != ticket + 1:
                self._segment = ticket + 1
                self._pending.append(ticket + 1)
                self._writer.wake()
            return ticket

    def prune(self, upto: int) -> None:
        """Delete segments holding only records <= upto; the newest segment always stays."""
        for first, successor in itertools.pairwise(numbered(self.dir, "journal.", ".log")):
            if successor <= upto + 1:
                os.unlink(self._path(first))

    def _commit(self) -> None:
        """One group commit: whatever is pending, one write and one fdatasync per segment."""
        with self._lock:
            if not self._pending or self._error:
                return
            batch, self._pending = self._pending, []
        done, durable = 0, self._durable  # (items of the batch on disk; only this thread moves _durable)
        try:
            while done < len(batch):
                if not isinstance(first := batch[done], bytes):  # later records go to journal.<first>.log
                    self._file.close()
                    self._file = open(self._path(first), "ab", buffering=0)
                    fsync_dir(self.dir)  # (when this or the open fails, a retry switches again, to the same file)
                    done += 1
                    continue
                end = next((i for i in range(done, len(batch)) if not isinstance(batch[i], bytes)), len(batch))
                self._write(batch[done:end])
                durable, done = durable + end - done, end  # (a line per seq)
                with self._lock:
                    self._durable = durable
                    self._release(durable)
        except OSError as exc:
            with self._lock:
                if disk_full(exc):
                    self._pending[:0] = batch[done:]
                    if self.full is None:
                        self._log.critical("no room for its journal in %s (%s): %d records wait in memory; new jobs "
                                           "and changes are refused until there is room", self.dir, exc.strerror,
                                           len(self._pending))
                    self.full = f"no room for its journal in {self.dir} ({exc.strerror})"
                else:
                    self._log.error("journal write failed: %s", exc)
                    self._error = StoreError(f"journal write failed: {exc}")
                self._release(float("inf"))  # (each raises: nobody waits on a disk with no room, or a broken one)
            return
        with self._lock:
            self.commits += 1
            if self.full is not None:
                self._log.warning("the journal's disk has room again: its records are written; accepting jobs")
                self.full = None

    def _write(self, lines: list[bytes]) -> None:
        """Append lines and fdatasync them; no room: cut off again, so that no partial line is left to glue onto."""
        fd = self._file.fileno()
        data, size = memoryview(b"".join(lines)), os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
            _datasync(fd)
        except OSError as exc:
            if disk_full(exc):
                try:
                    os.ftruncate(fd, size)
                except OSError as cut:  # (the partial line stays: not for want of room, whatever its errno)
                    raise OSError(errno.EIO, f"cutting off a partial write failed: {cut.strerror}") from None
            raise

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._writer.stop(join=60)
        self._commit()  # what was appended before close
        if self._pending and not self._error:
            self._log.error("%d journal records not written at close (%s): they were never acknowledged",
                            len(self._pending), self.full)
        if self._file:
            self._file.close()
