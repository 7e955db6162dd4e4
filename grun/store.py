"""The master's durable state.

Owns three kinds of files under one state directory:

- ``journal.<first_seq>.log``: an append-only JSON-lines journal. Every record gets a
  monotonically increasing ``seq``; one writer thread batches whatever is pending into one
  write and one fdatasync (group commit), then wakes the callers whose records are durable.
- ``snapshot.<ticket>.json``: atomic TinyDB snapshots of the live state (tables ``meta`` and
  ``jobs``). A restart loads the newest readable snapshot and replays the journal after it.
- ``history/<n>.json``: TinyDB files of finished jobs, written lazily by a flusher thread and
  rotated every ``history_rotate_docs`` documents so a write never costs more as history grows;
  ``history/index.json`` holds the id range of each closed file, for lookups of old jobs.

No networking and no knowledge of what a record means: the master gives dicts, gets dicts back.
"""

import fcntl
import heapq
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

_HISTORY_BATCH = 1000  # flush history early once this many records wait
# The journal only appends: fdatasync syncs the data and the new size, skipping the mtime update.
_datasync = getattr(os, "fdatasync", os.fsync)
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators) builds one per call


class StoreError(Exception):
    """An unrecoverable storage problem (bad disk, failed fsync, missing journal)."""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temps(directory: str) -> None:
    for name in os.listdir(directory):
        if name.endswith(".tmp"):  # an atomic write that a crash interrupted
            os.unlink(os.path.join(directory, name))


def _numbered(directory: str, prefix: str, suffix: str) -> list[int]:
    """Sorted N of every file named <prefix>N<suffix>; temp and .corrupt files don't match."""
    found = []
    for name in os.listdir(directory):
        middle = name[len(prefix):len(name) - len(suffix)]
        if name.startswith(prefix) and name.endswith(suffix) and middle.isdigit():
            found.append(int(middle))
    return sorted(found)


_SNAPSHOT_CHUNK = 500  # documents written per step: the GIL changes hands between steps


def _write_tables(path: str, tables: dict[str, Iterable[str]]) -> None:
    """Write a file TinyDB reads as these tables of JSON-encoded documents (doc ids 1..n), atomically:
    temp file, fsync, rename.

    The documents go into the file a chunk at a time, so they may be encoded lazily as they come:
    encoding 100k jobs as one string held the GIL for up to 0.8 s (every submit waited) and took
    2-3x the table's size in memory, a peak the master's RSS never gave back.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(b"{")
            for t, (name, docs) in enumerate(tables.items()):
                f.write(b"%s%s:{" % (b"," if t else b"", _encode(name).encode()))
                numbered = enumerate(docs, 1)
                sep = ""
                while chunk := list(itertools.islice(numbered, _SNAPSHOT_CHUNK)):
                    f.write((sep + ",".join('"%d":%s' % item for item in chunk)).encode())
                    sep = ","
                f.write(b"}")
            f.write(b"}")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AtomicJSONStorage(Storage):
    """TinyDB storage whose every write replaces the file atomically.

    A plain JSONStorage rewrites the file in place, so a kill -9 mid-write leaves a file TinyDB
    cannot open. We are the file's only writer, so the parsed data is kept and reads after the
    first one cost nothing (TinyDB otherwise re-parses the file once per table access).
    """

    def __init__(self, path: str, fresh: bool = False):
        self.path = path
        self._data = {} if fresh else None

    def read(self):
        if self._data is None:
            try:
                with open(self.path, "rb") as f:
                    self._data = json.load(f)
            except FileNotFoundError:
                return None
            if not isinstance(self._data, dict):
                self._data = None
                raise ValueError(f"{self.path}: not a TinyDB file")
        return self._data

    def write(self, data) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_encode(data).encode())
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
            _fsync_dir(os.path.dirname(self.path) or ".")
        except BaseException:
            self._data = None  # TinyDB already changed the dict it read; the disk did not
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._data = data

    def close(self) -> None:
        self._data = None


class _Stored(dict):
    """Stands in for tinydb's Document and returns the stored dict itself: wrapping 100k jobs in
    Documents (which callers would copy back into plain dicts) doubles the time of a load."""

    def __new__(cls, doc, doc_id):
        return doc


class _PlainTable(Table):
    document_class = _Stored


class _DB(TinyDB):
    table_class = _PlainTable


class _Journal:
    """Segmented JSON-lines journal with a group-commit writer thread."""

    def __init__(self, directory: str, log: logging.Logger):
        self.dir, self._log = directory, log
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # writer waits for pending items
        # Callers waiting for durability: (seq, tiebreak, held lock). The writer releases exactly
        # the ones its fsync covered; a shared Condition would wake all 32 to let 14 go.
        self._waiters: list = []
        self._tiebreak = itertools.count()
        self._pending: list = []  # encoded lines, or an int: switch to segment journal.<int>.log
        self._seq = self._durable = 0
        self._segment = 0  # first seq of the segment that new records go to
        self._file = None
        self._error: StoreError | None = None
        self._closing = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="grun-journal", daemon=True)
        self._thread.start()

    def _path(self, first: int) -> str:
        return os.path.join(self.dir, f"journal.{first}.log")

    def replay(self, after: int) -> tuple[list[dict], int]:
        """Records with seq > after, and the highest seq present (torn or corrupt lines skipped)."""
        segs = _numbered(self.dir, "journal.", ".log")
        if segs and segs[0] > after + 1:
            raise StoreError(f"journal starts at seq {segs[0]}, but the snapshot ends at seq {after}")
        records, last = [], 0
        for i, first in enumerate(segs):
            newest = i == len(segs) - 1
            if not newest and segs[i + 1] <= after + 1:
                continue  # every record in it is already in the snapshot
            path, offset = self._path(first), 0
            with open(path, "rb") as f:
                for n, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        self._log.warning("%s: skipping torn last line %d (%d bytes)", path, n, len(line))
                        if newest:  # so appending after it can't glue a record onto the fragment
                            os.truncate(path, offset)
                        break
                    offset += len(line)
                    try:
                        rec = json.loads(line)
                        seq = rec["seq"]
                        if type(seq) is not int or seq <= last:
                            raise ValueError(f"seq {seq!r} out of order")
                    except (ValueError, TypeError, KeyError) as e:
                        self._log.warning("%s: skipping corrupt line %d: %s", path, n, e)
                        continue
                    last = seq
                    if seq > after:
                        records.append(rec)
        return records, max([last] + [s - 1 for s in segs[-1:]])

    def open(self, next_seq: int) -> None:
        self._seq = self._durable = next_seq - 1
        self._segment = next_seq
        self._file = open(self._path(next_seq), "ab")
        _fsync_dir(self.dir)

    def append(self, records: list[dict]) -> int:
        bodies = []
        for rec in records:
            if not isinstance(rec, dict):
                raise TypeError(f"journal records are dicts, not {type(rec).__name__}")
            if "seq" in rec:
                rec = {k: v for k, v in rec.items() if k != "seq"}
            bodies.append(_encode(rec).encode())
        with self._lock:
            if self._error:
                raise self._error
            if self._closing:
                raise StoreError("store is closed")
            for body in bodies:  # seq is spliced in under the lock so lines reach disk in seq order
                self._seq += 1
                head = b'{"seq":%d' % self._seq
                self._pending.append(head + (b"}\n" if body == b"{}" else b"," + body[1:] + b"\n"))
            if bodies:
                self._work.notify()
            return self._seq

    def wait(self, seq: int) -> None:
        with self._lock:
            if self._durable >= seq:
                return
            if self._error:
                raise self._error
            gate = threading.Lock()
            gate.acquire()
            heapq.heappush(self._waiters, (seq, next(self._tiebreak), gate))
        gate.acquire()
        if self._durable < seq:
            raise self._error

    def _release(self, upto: float) -> None:
        while self._waiters and self._waiters[0][0] <= upto:
            heapq.heappop(self._waiters)[2].release()

    def rotate(self) -> int:
        with self._lock:
            ticket = self._seq
            if self._segment != ticket + 1:
                self._segment = ticket + 1
                self._pending.append(ticket + 1)
                self._work.notify()
            return ticket

    def prune(self, upto: int) -> None:
        """Delete segments holding only records <= upto; the newest segment always stays."""
        segs = _numbered(self.dir, "journal.", ".log")
        for first, successor in zip(segs, segs[1:]):
            if successor <= upto + 1:
                os.unlink(self._path(first))

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._work.wait()
                if not self._pending:
                    return
                batch, self._pending, upto = self._pending, [], self._seq
            try:
                self._write(batch)
            except OSError as e:
                # After a failed fsync the page cache may claim data the disk lost: stop for good.
                self._log.error("journal write failed: %s", e)
                with self._lock:
                    self._error = StoreError(f"journal write failed: {e}")
                    self._release(float("inf"))
                return
            with self._lock:
                self._durable = upto
                self.commits += 1
                self._release(upto)

    def _write(self, batch: list) -> None:
        lines = []
        for item in batch + [None]:
            if isinstance(item, bytes):
                lines.append(item)
                continue
            if lines:
                self._file.write(b"".join(lines))
                self._file.flush()
                _datasync(self._file.fileno())
                lines = []
            if item is not None:
                self._file.close()
                self._file = open(self._path(item), "ab")
                _fsync_dir(self.dir)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._work.notify()
        self._thread.join()
        if self._file:
            self._file.close()


class _History:
    """Finished jobs: an in-memory buffer, flushed lazily into rotating TinyDB files.

    Each job is JSON-encoded once: the current file's documents are kept encoded, and a flush
    rewrites the file from those pieces plus the new jobs (a TinyDB insert re-encoded the whole file,
    up to 5,000 jobs, every second). Closed files never change; ``index.json`` keeps the id range of
    each, so looking up an old job reads one file, not every file newest first.
    """

    def __init__(self, directory: str, rotate_docs: int, flush_secs: float, log: logging.Logger):
        self.dir, self._rotate_docs, self._log = directory, rotate_docs, log
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _remove_temps(directory)
        self._lock = threading.Lock()  # buffer and id sets; never held during file I/O
        self._file_lock = threading.Lock()  # the current file, its documents, rotation, the index
        self._wake = threading.Condition(self._lock)
        self._buffer: dict[int, dict] = {}
        self._inflight: dict[int, dict] = {}  # taken by a flush, not yet on disk
        self._closing = False
        numbers = _numbered(directory, "", ".json")
        self._current = numbers[-1] if numbers else 1
        self._ranges = self._load_index(numbers)  # closed file number -> (lowest id, highest id)
        self._previous_ids = {doc["id"] for doc in self._docs(self._current - 1)}
        self._current_docs, self._current_parts = self._open_current()
        self._current_ids = set(self._current_docs)
        self._thread = threading.Thread(target=self._run, args=(flush_secs,), name="grun-history", daemon=True)
        self._thread.start()

    def _path(self, n: int) -> str:
        return os.path.join(self.dir, f"{n}.json")

    def _load_index(self, numbers: list[int]) -> dict[int, tuple[int, int]]:
        try:
            with open(os.path.join(self.dir, "index.json"), "rb") as f:
                ranges = {int(n): (int(lo), int(hi)) for n, (lo, hi) in json.load(f).items()}
        except FileNotFoundError:
            ranges = {}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self._log.warning("history index unreadable (%s); rebuilding it", e)
            ranges = {}
        missing = [n for n in numbers if n != numbers[-1] and n not in ranges]
        for n in missing:  # written before the index existed, or the index was lost: read once
            ids = [doc["id"] for doc in self._read_file(n)]
            if ids:
                ranges[n] = (min(ids), max(ids))
        ranges = {n: r for n, r in ranges.items() if n in numbers}
        if missing:
            self._save_index(ranges)
        return ranges

    def _save_index(self, ranges: dict[int, tuple[int, int]]) -> None:
        path = os.path.join(self.dir, "index.json")
        with open(path + ".tmp", "wb") as f:
            f.write(_encode({str(n): list(r) for n, r in sorted(ranges.items())}).encode())
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)

    def _open_current(self) -> tuple[dict[int, dict], list[str]]:
        try:
            docs = self._read_file(self._current, strict=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._log.warning("history file %s is corrupt (%s); starting a new one", self._path(self._current), e)
            os.replace(self._path(self._current), self._path(self._current) + ".corrupt")
            self._current += 1
            return {}, []
        return {doc["id"]: doc for doc in docs}, [_encode(doc) for doc in docs]

    def _read_file(self, n: int, strict: bool = False) -> list[dict]:
        if not os.path.exists(self._path(n)):
            return []
        db = _DB(self._path(n), storage=AtomicJSONStorage)
        try:
            docs = db.table("jobs").all()
            for doc in docs:
                doc["id"]
            return docs
        except (OSError, ValueError, KeyError, TypeError) as e:
            if strict:
                raise
            self._log.warning("history file %s unreadable: %s", self._path(n), e)  # one bad file must not hide the rest
            return []
        finally:
            db.close()

    def _docs(self, n: int) -> list[dict]:
        with self._file_lock:
            if n == self._current:
                return list(self._current_docs.values())
        return self._read_file(n)  # closed files never change

    def add(self, jobs: list[dict]) -> None:
        with self._lock:
            for job in jobs:
                jid = job["id"]
                if not (jid in self._buffer or jid in self._inflight or jid in self._current_ids
                        or jid in self._previous_ids):
                    self._buffer[jid] = dict(job)
            if len(self._buffer) >= _HISTORY_BATCH:
                self._wake.notify()

    def flush(self) -> None:
        with self._file_lock:
            with self._lock:
                if not self._buffer:
                    return
                self._inflight, self._buffer = self._buffer, {}
            try:
                self._write(list(self._inflight.values()))
            finally:
                with self._lock:  # whatever did not reach disk goes back for the next try
                    self._buffer = {**self._inflight, **self._buffer}
                    self._inflight = {}

    def _write(self, batch: list[dict]) -> None:
        while batch:
            room = self._rotate_docs - len(self._current_docs)
            if room <= 0:
                ids = self._current_docs.keys()
                self._ranges[self._current] = (min(ids), max(ids))
                self._save_index(self._ranges)  # before the next file exists: a crash re-reads the index
                self._current += 1
                with self._lock:
                    self._previous_ids, self._current_ids = self._current_ids, set()
                self._current_docs, self._current_parts = {}, []
                continue
            chunk, batch = batch[:room], batch[room:]
            parts = self._current_parts + [_encode(job) for job in chunk]
            _write_tables(self._path(self._current), {"jobs": parts})
            self._current_parts = parts
            with self._lock:
                for job in chunk:
                    self._current_docs[job["id"]] = job
                    self._current_ids.add(job["id"])
                    del self._inflight[job["id"]]

    def query(self, limit: int, predicate: Callable[[dict], bool] | None) -> list[dict]:
        match = predicate or (lambda job: True)
        with self._lock:
            pending = [*self._buffer.values(), *self._inflight.values()]
        found = {job["id"]: dict(job) for job in pending if match(job)}
        # Files hold jobs in finish order, so once `limit` matches are in hand older files can't
        # hold newer ones (replayed finishes aside, which land close to their original place).
        for n in reversed(_numbered(self.dir, "", ".json")):
            if len(found) >= limit:
                break
            for doc in self._docs(n):
                if doc["id"] not in found and match(doc):
                    found[doc["id"]] = dict(doc)
        newest = sorted(found.values(), key=lambda j: (j.get("end_time") or 0.0, j["id"]), reverse=True)
        return newest[:limit]

    def find(self, job_id: int) -> dict | None:
        with self._lock:
            job = self._buffer.get(job_id) or self._inflight.get(job_id)
        if job is not None:
            return dict(job)
        with self._file_lock:
            job = self._current_docs.get(job_id)
            candidates = [n for n, (lo, hi) in self._ranges.items() if lo <= job_id <= hi]
        if job is not None:
            return dict(job)
        for n in sorted(candidates, reverse=True):
            for doc in self._read_file(n):
                if doc["id"] == job_id:
                    return doc
        return None

    def _run(self, flush_secs: float) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._closing or len(self._buffer) >= _HISTORY_BATCH, flush_secs)
                if self._closing:
                    return  # close() does the last flush itself, so it can report failure
            try:
                self.flush()
            except Exception as e:  # records are safe in the journal; retry on the next round
                self._log.error("history flush failed: %s", e)
                with self._lock:
                    self._wake.wait(flush_secs)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self.flush()


class Store:
    """Journal + snapshots + history for the master. See the module docstring."""

    def __init__(self, state_dir: str, *, history_rotate_docs: int = 2000,
                 history_flush_secs: float = 1.0, log: logging.Logger | None = None):
        self.dir = os.path.abspath(state_dir)
        self._log = log or logging.getLogger("grun.store")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        # Two masters appending to one journal would interleave seqs: refuse the second.
        self._lockfile = open(os.path.join(self.dir, "lock"), "a")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise StoreError(f"{self.dir} is in use by another grun master") from None
        _remove_temps(self.dir)
        self._snap_lock = threading.Lock()
        self._loaded = self._closed = False
        self._journal = _Journal(self.dir, self._log)
        self._history = _History(os.path.join(self.dir, "history"), history_rotate_docs,
                                 history_flush_secs, self._log)

    def _snap_path(self, ticket: int) -> str:
        return os.path.join(self.dir, f"snapshot.{ticket}.json")

    def load(self) -> tuple[dict | None, list[dict]]:
        if self._loaded:
            raise StoreError("load() is called once, at startup")
        tickets = _numbered(self.dir, "snapshot.", ".json")
        state, ticket = None, 0
        for t in reversed(tickets):
            try:
                state, ticket = self._read_snapshot(t), t
                break
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                self._log.warning("snapshot %s unreadable (%s); falling back", self._snap_path(t), e)
                os.replace(self._snap_path(t), self._snap_path(t) + ".corrupt")
        records, last = self._journal.replay(ticket)
        self._journal.open(max([last, ticket] + tickets) + 1)
        self._loaded = True
        return state, records

    def _read_snapshot(self, ticket: int) -> dict:
        db = _DB(self._snap_path(ticket), storage=AtomicJSONStorage)
        try:
            metas = db.table("meta").all()
            if len(metas) != 1 or metas[0]["ticket"] != ticket:
                raise ValueError("no meta document for this ticket")
            meta = metas[0]
            state = dict(meta["state"])
            if meta["has_jobs"]:
                state["jobs"] = db.table("jobs").all()
                if len(state["jobs"]) != meta["jobs_count"]:  # the meta write landed, the jobs one didn't
                    raise ValueError(f"{len(state['jobs'])} jobs, meta says {meta['jobs_count']}")
            return state
        finally:
            db.close()

    def _check_loaded(self) -> None:
        if not self._loaded:  # the next seq is only known once load() has read the journal
            raise StoreError("load() must be called before anything is logged")

    def log(self, records: list[dict]) -> int:
        """Append records and return once they are fsync'd; returns the last seq."""
        seq = self.log_nowait(records)
        self._journal.wait(seq)
        return seq

    def log_nowait(self, records: list[dict]) -> int:
        """Append records; the next group commit makes them durable. Returns the last seq,
        which wait_durable() accepts: call this under the state lock, wait after releasing it."""
        self._check_loaded()
        return self._journal.append(records)

    def wait_durable(self, seq: int) -> None:
        self._journal.wait(seq)

    def begin_snapshot(self) -> int:
        self._check_loaded()
        return self._journal.rotate()

    def write_snapshot(self, ticket: int, state: dict) -> None:
        # A fallback to the previous snapshot replays the records up to this ticket: have them on disk.
        self._journal.wait(ticket)
        jobs = state.get("jobs")
        as_table = isinstance(jobs, list) and all(isinstance(job, dict) for job in jobs)
        meta = {"ticket": ticket, "has_jobs": as_table, "jobs_count": len(jobs) if as_table else 0,
                "state": {k: v for k, v in state.items() if not (as_table and k == "jobs")}}
        path = self._snap_path(ticket)
        with self._snap_lock:
            try:
                _write_tables(path, {"meta": [_encode(meta)], "jobs": map(_encode, jobs if as_table else [])})
            except OSError as e:
                raise StoreError(f"snapshot {ticket} not written: {e}") from e
            tickets = _numbered(self.dir, "snapshot.", ".json")
            for old in tickets[:-2]:
                os.unlink(self._snap_path(old))
            if len(tickets) >= 2:
                self._journal.prune(tickets[-2])

    def add_history(self, jobs: list[dict]) -> None:
        self._history.add(jobs)

    def history(self, limit: int = 50, predicate: Callable[[dict], bool] | None = None) -> list[dict]:
        return self._history.query(limit, predicate)

    def find_history(self, job_id: int) -> dict | None:
        return self._history.find(job_id)

    def flush(self) -> None:
        self._history.flush()
        if self._loaded:
            self._journal.wait(self._journal.append([]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._history.close()
        finally:
            self._journal.close()
            self._lockfile.close()
