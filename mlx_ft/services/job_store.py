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
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlx_ft.services.sqlite_store import Database, Schema

KINDS = ("train", "eval", "export")
STATES = ("queued", "running", "stopping", "stopped", "interrupted", "failed", "done", "cancelled")
ACTIVE = ("running", "stopping")  # a process runs for it
RESUMABLE = ("stopped", "interrupted")
FINAL = ("stopped", "interrupted", "failed", "done", "cancelled")  # no process runs for it and none will by itself
# No version of its own (the file's one version is the history's): the record is JSON, so a new field needs no
# migration, a record written before it simply lacks it and reads as the field's default.
_SCHEMA = Schema(
    ("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)",)
)


def _unusable(path: Path, error: str) -> str:
    return f"{path} cannot hold the studio's jobs ({error}); pass another --db path"


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
    # that process's start time (psutil's create_time): with the pid, what tells it from a later one given its pid.
    # None in records written before it was kept (and if the process was gone before it could be read).
    pid_started: float | None = None
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
    """The `jobs` table, on its own connection to the file (`sqlite_store`: shared by the server's threads behind a
    lock; WAL lets the history's connection and other processes read meanwhile)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = Database(self.path, _SCHEMA, owner="JobStore", unusable=_unusable)

    def save(self, job: Job) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO jobs (id, created, record) VALUES (?, ?, ?)",
                (job.id, job.created, json.dumps(asdict(job), ensure_ascii=False)),
            )

    def get(self, job_id: str) -> Job | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def all(self) -> list[Job]:
        """Every job, newest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT record FROM jobs ORDER BY created DESC, rowid DESC").fetchall()
        return [Job.from_json(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()
