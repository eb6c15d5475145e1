"""The server's one SQLite file and its two owners: older files are brought up to date, the owners share the file
without touching each other's tables or the history's version, and old job records read with today's fields."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlx_ft.errors import UserError
from mlx_ft.services.history import SCHEMA_VERSION, History
from mlx_ft.services.job_store import Job, JobStore
from mlx_ft.services.sqlite_store import Schema

# The history as schema 1 wrote it: no `conversations.model`.
SCHEMA_1 = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, system TEXT NULL, temperature REAL NOT NULL,
    top_p REAL NOT NULL, max_tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL, created REAL NOT NULL);
INSERT INTO conversations VALUES ('c1', 'Old', NULL, 0.7, 1.0, 512, 1.0, 2.0);
INSERT INTO messages (conversation_id, role, content, created) VALUES ('c1', 'user', 'hello', 1.5);
PRAGMA user_version = 1;
"""


def test_a_schema_1_history_gains_its_model_column_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.executescript(SCHEMA_1)
    raw.close()
    with History(db) as history:
        old = history.get("c1")
        assert old is not None and old.title == "Old" and old.model is None
        assert [m.content for m in history.messages("c1")] == ["hello"]
        assert history.update("c1", model="runs/fish").model == "runs/fish"  # type: ignore[union-attr]
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_jobs_and_history_share_the_file_and_its_version_is_the_historys(tmp_path: Path) -> None:
    """The server opens the jobs first (a fresh file), then the history; either order leaves version 2."""
    db = tmp_path / "chat.db"
    jobs = JobStore(db)
    with History(db) as history:
        c = history.create("kept")
        job = Job(id="j1", kind="export", run="r", run_dir="r", argv=[], command="", log="x", created=1.0)
        jobs.save(job)
        assert jobs.get("j1") == job and history.get(c.id) == c
    jobs.close()
    with pytest.raises(RuntimeError, match="JobStore is closed"):
        jobs.get("j1")
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        raw.execute("PRAGMA user_version = 99")  # a newer history: the jobs table still opens, the history refuses
        raw.commit()
    finally:
        raw.close()
    JobStore(db).close()
    with pytest.raises(UserError, match="newer"):
        History(db)


def test_a_job_record_from_before_start_times_reads_without_one(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    JobStore(db).close()
    old = {"id": "j0", "kind": "train", "run": "r", "run_dir": "r", "argv": [], "command": "", "log": "x"}
    old |= {"created": 1.0, "state": "running", "pid": 4242, "retired_field": True}
    raw = sqlite3.connect(db)
    raw.execute("INSERT INTO jobs VALUES (?, ?, ?)", ("j0", 1.0, json.dumps(old)))
    raw.commit()
    raw.close()
    store = JobStore(db)
    job = store.get("j0")
    assert job is not None and job.pid == 4242 and job.pid_started is None
    store.close()


def test_not_a_database_is_a_user_error_for_the_jobs_too(tmp_path: Path) -> None:
    bad = tmp_path / "chat.db"
    bad.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(UserError, match="cannot hold the studio's jobs"):
        JobStore(bad)


def test_a_version_needs_its_migrations() -> None:
    with pytest.raises(ValueError, match="needs 2 migrations"):
        Schema(("CREATE TABLE IF NOT EXISTS t (x)",), 3, (lambda conn: None,))
