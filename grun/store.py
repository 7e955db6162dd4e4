"""The master's durable state, in one directory; the master gives dicts and gets dicts back.

- ``journal.<first_seq>.log``: the journal (grun.journal), the truth: group commit, replay.
- ``snapshot.<ticket>.json``: the live state (TinyDB tables ``meta`` and ``jobs``), written whole and atomically; a
  restart loads the newest readable one and replays the journal after it.
- ``history/<n>.json``: finished jobs (TinyDB), flushed lazily and rotated every ``history_rotate_docs`` jobs so a
  write never costs more as history grows; ``history/index.json`` holds each closed (never changed) file's id range.

A damaged file is never skipped in silence: it is kept aside, logged as critical and named in ``Store.problems``
(warnings in `grun -q status`), as is a file system too full to take new jobs (`Store.refusal`).
"""

import contextlib
import fcntl
import heapq
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from .background import Loop
from .files import read_json, remove_temps, write_atomic
from .journal import Journal, StoreError, encode, numbered

_HISTORY_BATCH = 1000  # flush history early once this many records wait
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)  # what a damaged file raises
_SNAPSHOT_CHUNK = 500  # documents encoded per piece: the GIL changes hands between pieces
DISK_CHECK_SECS = 1.0  # how stale the free-space figure a submission is checked against may be
DISK_LOG_SECS = 60.0   # how often the log repeats that submissions are being refused
MIN_FREE_INODES = 1000
# Finished jobs' names are looked up (--after NAME) among this many: the current history file's and newer.
NAMES_KEPT = 100_000
SINCE_SLACK_SECS = 60.0  # a `since` query reads on past a file ending this near it: end times are taken before the lock


def _tables(tables: dict) -> Iterator[bytes]:
    """The pieces of a file TinyDB reads as these tables of JSON-encoded documents (doc ids 1..n), a chunk at a
    time: 100k jobs as one string held the GIL for up to 0.8 s and took 2-3x their size in memory for good."""
    yield b"{"
    for t, (name, docs) in enumerate(tables.items()):
        yield b"%s%s:{" % (b"," if t else b"", encode(name).encode())
        by_id, sep = enumerate(docs, 1), ""
        while chunk := list(itertools.islice(by_id, _SNAPSHOT_CHUNK)):
            yield (sep + ",".join(f'"{i}":{doc}' for i, doc in chunk)).encode()
            sep = ","
        yield b"}"
    yield b"}"


def _read_tables(path: str, *names: str) -> list[list[dict]]:
    """The documents of these tables of a file _tables() wrote, in doc id order, read as plain JSON (TinyDB would
    wrap each document, twice the time for 100k jobs, and re-parse the file on every table access)."""
    with open(path, "rb") as f:
        data = json.load(f)
    return [list(data.get(name, {}).values()) for name in names]  # (AttributeError: not a TinyDB file)


class Store:

    def __init__(self, state_dir: str, *, history_rotate_docs: int = 2000, history_flush_secs: float = 1.0):
        self.dir = os.path.abspath(state_dir)
        self._log = logging.getLogger("grun.store")
        self.problems: list[str] = []  # one line each, for an admin: damage found, data kept aside
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        # Two masters appending to one journal would interleave seqs: refuse the second.
        self._lockfile = open(os.path.join(self.dir, "lock"), "a")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise StoreError(f"{self.dir} is in use by another grun master") from None
        remove_temps(self.dir)
        self._snap_lock = threading.Lock()
        self._loaded = self._closed = False
        self._disk = (0.0, None, None, 0.0)  # last check: (when, min_free_mb, refusal, when last logged)
        self.journal = Journal(self.dir, self._log, self.problems)
        self._hdir, self._rotate_docs = os.path.join(self.dir, "history"), history_rotate_docs
        os.makedirs(self._hdir, mode=0o700, exist_ok=True)
        remove_temps(self._hdir)
        self._lock = threading.Lock()  # the history buffer, the current docs; never held during I/O
        self._file_lock = threading.Lock()  # the current history file, its documents, rotation, the index
        self._buffer: dict[int, dict] = {}  # finished jobs not yet on disk
        self._amend: dict[int, dict] = {}  # records of the current file taken anew (add_history's replace)
        self._closed_docs: dict[int, dict[int, dict]] = {}  # (_closed_file)
        numbers = numbered(self._hdir, "", ".json")
        self._current = numbers[-1] if numbers else 1
        self._ranges = self._load_index(numbers)  # closed file number -> (lowest id, highest id)
        self._previous_ids = {doc["id"] for doc in self._read_file(self._current - 1)}
        docs = self._read_file(self._current)
        self._current_docs, self._current_parts = {doc["id"]: doc for doc in docs}, [encode(doc) for doc in docs]
        self._names: dict[tuple, int] = {}  # (user, job name) -> the newest such job's id (for --after NAME)
        self._name(docs)
        # (a flush that fails is logged and tried again next round: the jobs are safe in the journal)
        self._flusher = Loop("grun-history", self._flush_history, history_flush_secs, self._log)
        self._flusher.start()

    def _snap_path(self, ticket: int) -> str:
        return os.path.join(self.dir, f"snapshot.{ticket}.json")

    def load(self) -> tuple[dict | None, list[dict]]:
        if self._loaded:
            raise StoreError("load() is called once, at startup")
        tickets = numbered(self.dir, "snapshot.", ".json")
        state, ticket = None, 0
        for t in reversed(tickets):
            try:
                [meta], jobs = _read_tables(self._snap_path(t), "meta", "jobs")  # (no meta, or two: a ValueError)
                if meta["ticket"] != t or len(jobs) != (meta["jobs_count"] or 0):
                    raise ValueError("no meta document for this ticket, or not as many jobs as it says")
                state, ticket = meta["state"] if meta["jobs_count"] is None else dict(meta["state"], jobs=jobs), t
                break
            except _UNREADABLE as e:
                self._log.warning("snapshot %s unreadable (%s); falling back", self._snap_path(t), e)
                os.replace(self._snap_path(t), self._snap_path(t) + ".corrupt")
        records, last = self.journal.replay(ticket)
        for path in sorted(f"{self.dir}/{name}" for name in os.listdir(self.dir) if name.endswith(".damaged")):
            if not any(path in p for p in self.problems):  # (found at an earlier start, its segment pruned since)
                self.problems.append(f"damaged journal kept at {path}: see the master's log; remove it once dealt with")
        self.journal.open(max([last, ticket] + tickets) + 1)
        self._loaded = True
        return state, records

    def log(self, records: list[dict]) -> int:
        """Append records and return their last seq once they are fsync'd."""
        seq = self.journal.append(records)
        self.journal.wait(seq)
        return seq

    def write_snapshot(self, ticket: int, state: dict) -> None:
        # A fallback to the previous snapshot replays the records up to this ticket: have them on disk.
        self.journal.wait(ticket)
        jobs = state.get("jobs", [])  # a table of job documents; the rest is one document, meta
        meta = {"ticket": ticket, "jobs_count": len(jobs) if "jobs" in state else None,
                "state": {k: v for k, v in state.items() if k != "jobs"}}
        with self._snap_lock:
            try:
                write_atomic(self._snap_path(ticket), _tables({"meta": [encode(meta)], "jobs": map(encode, jobs)}))
            except OSError as e:
                raise StoreError(f"snapshot {ticket} not written: {e}") from e
            tickets = numbered(self.dir, "snapshot.", ".json")
            for old in tickets[:-2]:
                os.unlink(self._snap_path(old))
            if len(tickets) >= 2:
                self.journal.prune(tickets[-2])

    def full(self) -> str | None:
        """Why no job may be submitted or changed now: the journal's disk has no room (grun.journal.DiskFull)."""
        why = self.journal.full
        return why and f"master's disk is full: {why}: no new jobs or changes until there is room"

    def refusal(self, min_free_mb: int) -> str | None:
        """Why no new jobs should be taken now (the file system is full or nearly full), or None."""
        if full := self.full():
            return full
        now = time.monotonic()
        checked, minimum, before, logged = self._disk
        if now - checked < DISK_CHECK_SECS and minimum == min_free_mb:
            return before
        try:
            st = os.statvfs(self.dir)
        except OSError as exc:
            refusal = f"the grun master cannot check its disk ({exc}): not accepting new jobs"
        else:
            free_mb = st.f_bavail * st.f_frsize // 2**20
            low = (f"{st.f_favail} free inodes" if st.f_files and st.f_favail < MIN_FREE_INODES else
                   f"{free_mb} MB free" if free_mb < min_free_mb else None)
            refusal = low and (f"the grun master's disk is nearly full ({low} in {self.dir}, "
                               f"min_free_disk is {min_free_mb} MB): not accepting new jobs")
        if refusal and (before is None or now - logged > DISK_LOG_SECS):
            self._log.error("refusing submissions: %s", refusal.split(": not accepting")[0])
            logged = now
        elif refusal is None and before is not None:
            self._log.warning("disk space is back above min_free_disk (%s MB): accepting submissions", min_free_mb)
        self._disk = (now, min_free_mb, refusal, logged)
        return refusal

    def _history_path(self, n: int) -> str:
        return os.path.join(self._hdir, f"{n}.json")

    def _load_index(self, numbers: list[int]) -> dict[int, tuple[int, int]]:
        """The id ranges of the closed files; a file the index misses is read, and the index written again."""
        try:  # (read_json gives None for a missing or torn file)
            ranges = {int(n): (int(lo), int(hi)) for n, (lo, hi) in read_json(f"{self._hdir}/index.json").items()}
        except (ValueError, TypeError, AttributeError):
            ranges = {}
        missing = [n for n in numbers[:-1] if n not in ranges]  # (the last one is the current file)
        ranges.update({n: (min(ids), max(ids)) for n in missing if (ids := [d["id"] for d in self._read_file(n)])})
        ranges = {n: r for n, r in ranges.items() if n in numbers}
        if missing:
            self._save_index(ranges)
        return ranges

    def _save_index(self, ranges: dict[int, tuple[int, int]]) -> None:
        write_atomic(os.path.join(self._hdir, "index.json"),
                     encode({str(n): list(r) for n, r in sorted(ranges.items())}).encode())

    def _read_file(self, n: int) -> list[dict]:
        """The jobs of history file n, [] if there is none; a damaged one is reported and kept aside (.corrupt)."""
        path = self._history_path(n)
        try:
            docs = _read_tables(path, "jobs")[0] if os.path.exists(path) else []
            if all(isinstance(doc, dict) and "id" in doc for doc in docs):
                return docs
            raise ValueError("a document without an id")
        except _UNREADABLE as e:
            message = f"history file {path} unreadable ({e}): kept as {path}.corrupt"
            self._log.critical(message)
            self.problems.append(message)
            with contextlib.suppress(OSError):
                os.replace(path, path + ".corrupt")
            return []

    def _name(self, jobs: list[dict]) -> None:
        """Index the names of these jobs, the newest last; the oldest go past NAMES_KEPT."""
        for job in jobs:
            if job.get("name"):
                self._names.pop(key := (job.get("user"), job["name"]), None)
                self._names[key] = job["id"]
        while len(self._names) > NAMES_KEPT:
            del self._names[next(iter(self._names))]

    def add_history(self, jobs: list[dict], replace: bool = False) -> None:
        """Finished jobs, each once; `replace`: one there taken anew (a lost job's late end) unless its file closed."""
        with self._lock:
            self._name(jobs)
            for job in jobs:
                if replace and job["id"] in self._current_docs:
                    self._amend[job["id"]] = dict(job)
                elif replace and job["id"] in self._buffer or not (
                        job["id"] in self._buffer or job["id"] in self._current_docs or job["id"] in self._previous_ids):
                    self._buffer[job["id"]] = dict(job)
            if len(self._buffer) >= _HISTORY_BATCH:
                self._flusher.wake()

    def _flush_history(self) -> None:
        """Write the history buffer, the current file from its jobs kept encoded and the new ones (a TinyDB insert
        re-encoded the whole file, up to 5,000 jobs, every second)."""
        with self._file_lock:
            if self.journal.full:  # (history waits for the journal, which waits for room)
                return
            with self._lock:
                batch, (amend, self._amend) = list(self._buffer.values()), (self._amend, {})
            for i, job_id in enumerate(self._current_docs if amend else ()):
                if job_id in amend:
                    self._current_docs[job_id], self._current_parts[i] = amend[job_id], encode(amend[job_id])
            if amend:
                write_atomic(self._history_path(self._current), _tables({"jobs": self._current_parts}))
            if batch and self._loaded:  # their ends on disk first: history is never ahead of the journal
                self.log([])
            while batch:
                room = self._rotate_docs - len(self._current_docs)
                if room <= 0:
                    ids = self._current_docs.keys()
                    self._ranges[self._current] = (min(ids), max(ids))
                    self._save_index(self._ranges)  # before the next file exists: a crash re-reads the index
                    self._current += 1
                    with self._lock:
                        self._previous_ids, self._current_docs, self._current_parts = set(ids), {}, []
                    continue
                chunk, batch = batch[:room], batch[room:]
                parts = self._current_parts + [encode(job) for job in chunk]
                write_atomic(self._history_path(self._current), _tables({"jobs": parts}))
                self._current_parts = parts
                with self._lock:
                    for job in chunk:
                        self._current_docs[job["id"]] = self._buffer.pop(job["id"])

    def history(self, limit=50, predicate: Callable[[dict], bool] | None = None, after_id=0, since=0.0,
                view: Callable[[dict], dict] = dict) -> list[dict]:
        """The newest `limit` matching jobs ended since `since`, each as `view` copies it (queries: without its env);
        files whose ids all are <= `after_id` are skipped. Only those copies and one file are held at a time (a full
        listing held every record whole, env too, twice: +100 MB a call, much of it kept by the allocator after)."""
        match = lambda job: (job.get("end_time") or 0) >= since and (predicate or bool)(job)
        newest: list[tuple] = []  # a heap of ((end time, id), view): the newest `limit` matches so far
        seen: set[int] = set()

        def keep(docs) -> None:
            for doc in docs:
                if doc["id"] not in seen and match(doc):
                    seen.add(doc["id"])
                    if len(newest) < limit:
                        heapq.heappush(newest, ((doc.get("end_time") or 0.0, doc["id"]), view(doc)))
                    elif (when := (doc.get("end_time") or 0.0, doc["id"])) > newest[0][0]:
                        heapq.heapreplace(newest, (when, view(doc)))
        with self._lock:
            pending = list(self._buffer.values())
        keep(pending)
        # Files hold jobs in finish order: once `limit` matches are in hand older files hold no newer ones
        for n in reversed(numbered(self._hdir, "", ".json")):
            if len(newest) >= limit:
                break
            if n in self._ranges and self._ranges[n][1] <= after_id:  # (the current file is not indexed yet)
                continue
            with self._file_lock:  # (closed files never change)
                docs = list(self._current_docs.values()) if n == self._current else None
            docs = self._read_file(n) if docs is None else docs
            keep(docs)
            if since and docs and max((doc.get("end_time") or 0) for doc in docs) < since - SINCE_SLACK_SECS:
                break  # (in finish order: older files ended before `since` too, give or take a lock wait)
        return [job for _, job in sorted(newest, key=lambda item: item[0], reverse=True)]

    def find_history(self, job_id: int) -> dict | None:
        """A finished job's record (for its state and end: one from a closed file comes without its env)."""
        with self._lock:
            job = self._buffer.get(job_id) or self._current_docs.get(job_id)
        if job is not None:
            return dict(job)
        files = sorted((n for n, (lo, hi) in list(self._ranges.items()) if lo <= job_id <= hi), reverse=True)
        return next((dict(doc) for n in files if (doc := self._closed_file(n).get(job_id))), None)

    def _closed_file(self, n: int) -> dict[int, dict]:
        """Closed history file n's jobs by id, without their env (a file's 2,000 envs held 34 MB), the last two read
        kept (a closed file never changes): a wait on 3,000 jobs read a file of 2,000 per ended job, each pass (92 % of
        the master's cpu in bench/profile.py)."""
        with self._lock:
            if (docs := self._closed_docs.get(n)) is not None:
                return docs
        docs = {doc["id"]: {k: v for k, v in doc.items() if k != "env"} for doc in self._read_file(n)}
        with self._lock:
            self._closed_docs = {**dict(list(self._closed_docs.items())[-1:]), n: docs}
        return docs

    def find_name(self, user: str, name: str) -> dict | None:
        """The newest finished job of this user with this name, among those indexed (see NAMES_KEPT)."""
        return None if (job_id := self._names.get((user, name))) is None else self.find_history(job_id)

    def flush(self) -> None:
        self._flush_history()
        if self._loaded:
            self.log([])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flusher.stop(join=60)
            self._flush_history()  # here, not in the loop, so that a failure is reported
        finally:
            self.journal.close()
            self._lockfile.close()
