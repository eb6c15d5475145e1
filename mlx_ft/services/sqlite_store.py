"""The server's SQLite file, as its owners (the chat history, the studio's job records) share it: one connection per
owner, opened once and shared by every thread behind a lock, in WAL mode with a busy timeout, with each owner's tables
created and migrated on open.

One connection behind a lock rather than one per thread: the WSGI servers start a thread per request (Werkzeug) or
reuse a pool (waitress), so per-thread connections would be opened on every request and never closed
deterministically (`close()` cannot close another thread's connection). An operation takes well under a millisecond,
so serialising them costs nothing a user could notice, and SQLite serialises writers anyway. Other connections (the
other owner's, another `serve` on the same `--db`) are handled by WAL (readers never wait for a writer) and the busy
timeout (writers wait for each other).

An owner describes what it keeps in a `Schema`: its `CREATE … IF NOT EXISTS` statements (run on every open, so a
fresh file gets the newest tables at once) and, when it keeps a version, that version and the ordered migrations that
bring an older file up to it. The version lives in the file's `PRAGMA user_version`, of which a file has one: only one
owner per file may keep a version (the chat history does, since its schema 1).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_ft.errors import UserError

BUSY_TIMEOUT_MS = 5000

Migration = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Schema:
    """An owner's tables. `migrations[i]` brings a file from version i+1 to version i+2; each must also be harmless on
    a file that already has what it adds, since a fresh file (version 0) gets the newest tables from `statements` and
    then runs them all. `newer`: the message for a file written by a newer mlx_ft (its version above ours)."""

    statements: tuple[str, ...]
    version: int | None = None  # None: the owner keeps no version (and leaves the file's user_version alone)
    migrations: tuple[Migration, ...] = ()
    newer: Callable[[Path, int], str] | None = None

    def __post_init__(self) -> None:
        if self.version is not None and len(self.migrations) != max(self.version - 1, 0):
            raise ValueError(f"schema version {self.version} needs {self.version - 1} migrations")


def statements(script: str) -> tuple[str, ...]:
    """A script's statements, to run one at a time: `executescript` would COMMIT first and so escape our transaction."""
    return tuple(s.strip() for s in script.split(";") if s.strip())


class Database:
    """One owner's connection to the file; `owner` names it in errors, `unusable(path, error)` is the message for a
    file that is not a usable database (a `UserError`: the user passed the path)."""

    def __init__(self, path: Path | str, schema: Schema, *, owner: str, unusable: Callable[[Path, str], str]) -> None:
        self.path = Path(path)
        self._owner = owner
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module opens no transactions behind our back; we BEGIN explicitly.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            _open(conn, self.path, schema)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(unusable(self.path, str(exc))) from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self._owner} is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent). The last connection to close checkpoints WAL back into the main file."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front: a deferred transaction that reads, then
        writes, can fail with SQLITE_BUSY at once (no busy_timeout wait) when another connection wrote in between."""
        with self._lock:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            with conn:  # commits on success, rolls back on any exception (KeyboardInterrupt included)
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one snapshot even while another connection writes."""
        with self._lock:
            conn = self.connection()
            conn.execute("BEGIN")
            with conn:
                yield conn


def _open(conn: sqlite3.Connection, path: Path, schema: Schema) -> None:
    # These pragmas are per connection (or, for journal_mode, must be set outside a transaction).
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: without it ON DELETE CASCADE does nothing
    conn.execute("PRAGMA journal_mode=WAL")
    # IMMEDIATE: two processes starting on a fresh file must not both try to create the tables half-way.
    conn.execute("BEGIN IMMEDIATE")
    with conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0] if schema.version is not None else 0
        if schema.version is not None and version > schema.version:
            raise UserError(schema.newer(path, version) if schema.newer else f"{path}: schema {version} is newer")
        for statement in schema.statements:
            conn.execute(statement)
        for migration in schema.migrations[max(version - 1, 0) :]:
            migration(conn)
        if schema.version is not None and version < schema.version:
            conn.execute(f"PRAGMA user_version={schema.version}")  # PRAGMA takes no parameters; an int of ours
