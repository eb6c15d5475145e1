"""The studio's jobs as records: what was asked for, what runs (or ran) and how it ended, kept in the server's SQLite
file (the chat history's file, its own `jobs` table and its own connection) so that a restarted server shows every
job as it was.

A job is one `python -m mlx_ft …` command (train, eval or export) and its life:

    queued ──▶ running ──▶ done | failed
      │          └──▶ stopping ──▶ stopped ──(resume)──▶ queued …
      └──▶ cancelled          (server gone) ──▶ interrupted ──(resume)──▶ queued …

A stopped or interrupted job whose folder shows its work complete (a train that trained all its steps) is done: its
process ended in its last step (`job_runner.finished`).

Each record is stored whole as one JSON column beside its id and creation time: the record can gain fields without a
schema migration, and one `INSERT OR REPLACE` writes it atomically.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlx_ft.errors import UserError

KINDS = ("train", "eval", "export")
STATES = ("queued", "running", "stopping", "stopped", "interrupted", "failed", "done", "cancelled")
ACTIVE = ("running", "stopping")  # a process runs for it
RESUMABLE = ("stopped", "interrupted")
FINAL = ("stopped", "interrupted", "failed", "done", "cancelled")  # no process runs for it and none will by itself
BUSY_TIMEOUT_S = 5.0

_SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)"


@dataclass
class Job:
    id: str
    kind: str  # one of KINDS
    run: str  # the run's name (the folder under the runs folder)
    run_dir: str  # the run folder, as the command names it
    argv: list[str]  # what follows `python -m mlx_ft` in the job's first command
    command: str  # the command line shown for the job's current (or last) process
    log: str  # the file the process writes its output to
    created: float
    state: str = "queued"
    queued: float = 0.0  # when it last joined the queue: the queue is first come, first served
    started: float | None = None
    ended: float | None = None
    pid: int | None = None  # of the current (or last) process, the leader of its own process group
    start_step: int = 0  # the step its current process started from (a resumed train does not start at 0)
    stop_requested: bool = False
    error: str | None = None
    result: dict[str, Any] | None = None
    out_dir: str | None = None  # where the files it produces go (export: its folder; eval: RUN/eval-job-<id>)
    files: list[str] = field(default_factory=list)  # the files it produced, relative to out_dir (downloadable)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    @classmethod
    def from_json(cls, text: str) -> Job:
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class JobStore:
    """The `jobs` table. One connection shared by the server's threads behind a lock (every operation is one short
    statement in autocommit mode); WAL lets the history's connection and other processes read meanwhile."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise UserError(f"{self.path} cannot hold the studio's jobs ({e}); pass another --db path") from e
        self._conn: sqlite3.Connection | None = conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("JobStore is closed")
        return self._conn

    def save(self, job: Job) -> None:
        with self._lock:
            self._db().execute(
                "INSERT OR REPLACE INTO jobs (id, created, record) VALUES (?, ?, ?)",
                (job.id, job.created, json.dumps(asdict(job), ensure_ascii=False)),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db().execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def all(self) -> list[Job]:
        """Every job, newest first."""
        with self._lock:
            rows = self._db().execute("SELECT record FROM jobs ORDER BY created DESC, rowid DESC").fetchall()
        return [Job.from_json(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
