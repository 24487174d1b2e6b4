"""The job store: jobs and their per-micrograph progress in SQLite under --state (WAL, one connection, one lock).

A job's outputs live in STATE/jobs/<id>/; the store only says what is queued, running and done. After a crash,
`recover()` puts running jobs back in the queue, in their original order, and the engine's resumable output skips
the micrographs already done.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    client TEXT,
    key TEXT UNIQUE,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS micrographs (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    pixel_size REAL,
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT,
    picks INTEGER,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS micrographs_name ON micrographs(job, name);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 0), at REAL NOT NULL);
"""


MAX_QUEUE = 500_000  # micrographs waiting across all queued and running jobs (--max-queue)
MAX_JOB_MICROGRAPHS = 100_000  # micrographs in one job (--max-job-micrographs): a facility's data set fits


class QueueFull(Exception):
    """More micrographs would wait than --max-queue allows (HTTP 429)."""


class KeyReused(Exception):
    """An Idempotency-Key sent again with another request body (HTTP 422)."""


class TooLarge(Exception):
    """One job holds more micrographs than --max-job-micrographs, or than the queue holds (HTTP 413)."""


@dataclass
class Job:
    """One row of the jobs table, decoded."""

    id: str
    kind: str
    state: str
    request: dict[str, Any]
    total: int
    done: int
    failed: int
    cancel: bool
    error: str | None
    result: dict[str, Any]
    client: str | None
    created: float
    started: float | None
    finished: float | None
    failures: list[dict[str, str]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """What GET /v1/jobs/{id} returns."""
        out = {"job": self.id, "kind": self.kind, "state": self.state, "done": self.done + self.failed,
               "total": self.total, "failures": self.failures, "created": self.created,
               "started": self.started, "finished": self.finished}
        if self.request.get("model"):
            out["model"] = self.request["model"]
        if self.error:
            out["error"] = self.error
        out.update(self.result)
        return out


class JobStore:
    """SQLite-backed jobs; safe to call from any thread."""

    def __init__(self, state_dir: Path, max_queue: int = MAX_QUEUE, max_job: int = MAX_JOB_MICROGRAPHS) -> None:
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.max_job = max_job
        self._lock = threading.RLock()
        self._reading: Counter[str] = Counter()  # jobs whose files a download is streaming
        self._db = sqlite3.connect(self.state_dir / "pupick.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.wakeup = threading.Condition()

    # ---------------------------------------------------------------- writing
    def _tx(self):
        return _Tx(self._db, self._lock)

    def submit(self, kind: str, request: dict[str, Any], micrographs: list[tuple],
               client: str | None = None, key: str | None = None, body_sha256: str | None = None) -> str:
        """Queue a job of (name, path[, pixel size]) micrographs; QueueFull/TooLarge when the bound would be exceeded.

        A repeated `key` (the client's Idempotency-Key, scoped to its endpoint) with the same `body_sha256` returns
        the job it created before instead of a second one; with another body, KeyReused."""
        n = len(micrographs)
        if n > self.max_job:
            raise TooLarge(f"the job holds {n} micrographs, more than this server takes in one job "
                           f"(--max-job-micrographs {self.max_job}); split it")
        if n > self.max_queue:  # it could never fit, however long the client waited
            raise TooLarge(f"the job holds {n} micrographs, more than this server queues at once ({self.max_queue}); "
                           "split it")
        job_id = secrets.token_hex(8)
        with self._tx() as db:
            if key is not None:
                row = db.execute("SELECT id, request FROM jobs WHERE key=?", (key,)).fetchone()
                if row is not None:
                    if json.loads(row["request"]).get("body_sha256") != body_sha256:
                        raise KeyReused("this Idempotency-Key was sent before with another request body; use a new "
                                        "key for a new request")
                    return row["id"]
                request = {**request, "body_sha256": body_sha256}
            waiting = self._waiting(db)
            if waiting + n > self.max_queue:
                raise QueueFull(f"the queue is full ({waiting} micrographs waiting, at most {self.max_queue}); "
                                "retry later")
            db.execute("INSERT INTO jobs (id, kind, state, request, total, client, key, created) "
                       "VALUES (?,?,?,?,?,?,?,?)",
                       (job_id, kind, "queued", json.dumps(request), n, client, key, time.time()))
            db.executemany("INSERT INTO micrographs (job, idx, name, path, pixel_size) VALUES (?,?,?,?,?)",
                           ((job_id, i, m[0], m[1], m[2] if len(m) > 2 else None) for i, m in enumerate(micrographs)))
        self.notify()
        return job_id

    def notify(self) -> None:
        with self.wakeup:
            self.wakeup.notify_all()

    def claim(self) -> Job | None:
        """The oldest queued job, now marked running (None when nothing waits)."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', started=COALESCE(started, ?) WHERE id=?",
                       (time.time(), row["id"]))
        return self.get(row["id"])

    def mark(self, job_id: str, name: str, ok: bool, reason: str | None = None, picks: int | None = None) -> None:
        """Record one micrograph as done (or failed with a reason); idempotent."""
        with self._tx() as db:
            old = db.execute("SELECT state FROM micrographs WHERE job=? AND name=?", (job_id, name)).fetchone()
            if old is None:
                return
            new = "done" if ok else "failed"
            db.execute("UPDATE micrographs SET state=?, reason=?, picks=? WHERE job=? AND name=?",
                       (new, reason, picks, job_id, name))
            if old["state"] != new:
                dec = {"done": "done = done - 1", "failed": "failed = failed - 1"}.get(old["state"])
                inc = "done = done + 1" if ok else "failed = failed + 1"
                db.execute(f"UPDATE jobs SET {inc}{', ' + dec if dec else ''} WHERE id=?", (job_id,))

    def mark_done(self, job_id: str, names: Iterable[str]) -> None:
        """Record as done, in one transaction, micrographs not yet so (an interrupted earlier run finished them)."""
        with self._tx() as db:
            db.executemany("UPDATE micrographs SET state='done', reason=NULL WHERE job=? AND name=? AND state!='done'",
                           ((job_id, name) for name in names))
            db.execute("UPDATE jobs SET done=(SELECT COUNT(*) FROM micrographs WHERE job=:j AND state='done'), "
                       "failed=(SELECT COUNT(*) FROM micrographs WHERE job=:j AND state='failed') WHERE id=:j",
                       {"j": job_id})

    def finish(self, job_id: str, state: str, error: str | None = None, result: dict | None = None) -> None:
        """Move a job to a final state (or back to queued) with an optional one-line error and result fields."""
        assert state in STATES
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, error=?, result=COALESCE(?, result), finished=? WHERE id=?",
                       (state, error, json.dumps(result) if result is not None else None,
                        time.time() if state in FINISHED else None, job_id))
        self.notify()

    def probe(self, room: int = 0) -> None:
        """Raise (OSError, sqlite3.Error) unless the database takes a write and `room` bytes fit in --state."""
        if room:
            path = self.state_dir / ".probe"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    data = memoryview(bytes(room))
                    while data:
                        data = data[os.write(fd, data):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (0, ?)", (time.time(),))

    def update_result(self, job_id: str, result: dict) -> None:
        """Replace a running job's result fields (training progress: epoch, loss, ap)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET result=? WHERE id=?", (json.dumps(result), job_id))

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask a running one to stop between micrographs; None if unknown."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute("UPDATE jobs SET state='cancelled', cancel=1, finished=? WHERE id=?", (time.time(), job_id))
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel=1 WHERE id=?", (job_id,))
        self.notify()
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row is None or row["cancel"])

    def recover(self) -> list[str]:
        """After a restart: running jobs go back to the queue (a cancel asked for before the crash is honoured)."""
        with self._tx() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state='running'")]
            db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE state='running' AND cancel=1",
                       (time.time(),))
            db.execute("UPDATE jobs SET state='queued' WHERE state='running'")
        return ids

    @contextmanager
    def reading(self, job_id: str) -> Iterator[None]:
        """While inside, `purge` keeps this job (a download streaming its files)."""
        with self._lock:
            self._reading[job_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._reading[job_id] -= 1
                if not self._reading[job_id]:
                    del self._reading[job_id]

    def purge(self, older_than_s: float) -> list[str]:
        """Remove finished jobs (rows and output folders) that finished more than `older_than_s` ago, but none
        that a download is reading (the next purge takes it)."""
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                f"SELECT id FROM jobs WHERE state IN {FINISHED} AND finished < ?", (cutoff,))
                   if r["id"] not in self._reading]
            for job_id in ids:
                db.execute("DELETE FROM micrographs WHERE job=?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        for job_id in ids:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return ids

    # ---------------------------------------------------------------- reading
    def models_in_use(self) -> set[str]:
        """Model names that queued or running jobs will load."""
        with self._lock:
            rows = self._db.execute("SELECT request FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        return {json.loads(r["request"]).get("model") for r in rows} - {None}

    def training(self) -> bool:
        """Whether a training job is queued or running (it may be using STATE/cache)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE kind='train' AND state IN ('queued', 'running') "
                                    "LIMIT 1").fetchone() is not None

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def get(self, job_id: str, with_failures: bool = True) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            failures = []
            if with_failures and row["failed"]:
                failures = [{"micrograph": r["name"], "path": r["path"], "error": r["reason"]} for r in
                            self._db.execute("SELECT name, path, reason FROM micrographs WHERE job=? AND "
                                             "state='failed' ORDER BY idx", (job_id,))]
        return _job(row, failures)

    def list(self, state: str | None = None, limit: int = 1000) -> list[Job]:
        with self._lock:
            if state:
                rows = self._db.execute("SELECT * FROM jobs WHERE state=? ORDER BY seq DESC LIMIT ?", (state, limit))
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
            return [_job(r, []) for r in rows.fetchall()]

    def micrographs(self, job_id: str, states: Iterable[str] | None = None) -> list[tuple[str, str, str]]:
        """(name, path, state) of a job's micrographs in request order."""
        with self._lock:
            rows = self._db.execute("SELECT name, path, state FROM micrographs WHERE job=? ORDER BY idx", (job_id,))
            out = [(r["name"], r["path"], r["state"]) for r in rows.fetchall()]
        if states is not None:
            out = [m for m in out if m[2] in set(states)]
        return out

    def iter_micrographs(self, job_id: str, page: int = 1000) -> Iterator[tuple[str, str, str]]:
        """(name, path, state) of a job's micrographs in request order, read a page at a time (memory: one page)."""
        return self._pages(job_id, "state", page)

    def iter_items(self, job_id: str, page: int = 1000) -> Iterator[tuple[str, str, float | None]]:
        """(name, path, pixel size or None) of a job's micrographs in request order, what the engine picks, read a
        page at a time (memory: one page, not a second list of every row beside the caller's)."""
        return self._pages(job_id, "pixel_size", page)

    def _pages(self, job_id: str, third: str, page: int) -> Iterator[tuple]:
        """(name, path, column `third`) a page at a time; `third` is named in this module, never by a client."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(f"SELECT idx, name, path, {third} FROM micrographs WHERE job=? AND idx>? "
                                        "ORDER BY idx LIMIT ?", (job_id, last, page)).fetchall()
            if not rows:
                return
            yield from ((r["name"], r["path"], r[third]) for r in rows)
            last = rows[-1]["idx"]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        got = {r["state"]: r["n"] for r in rows}
        return {s: got.get(s, 0) for s in STATES}

    def waiting(self) -> int:
        """Micrographs queued or running and not yet done: the queue depth the bound applies to."""
        with self._lock:
            return self._waiting(self._db)

    @staticmethod
    def _waiting(db) -> int:
        row = db.execute("SELECT COALESCE(SUM(total - done - failed), 0) AS n FROM jobs "
                         "WHERE state IN ('queued', 'running')").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock (rollback on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


def _job(row: sqlite3.Row, failures: list) -> Job:
    return Job(row["id"], row["kind"], row["state"], json.loads(row["request"]), row["total"], row["done"],
               row["failed"], bool(row["cancel"]), row["error"], json.loads(row["result"] or "{}"), row["client"],
               row["created"], row["started"], row["finished"], failures)
