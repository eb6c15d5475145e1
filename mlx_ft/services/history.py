"""The web chat's conversation history: a small SQLite store that survives restarts and serves many threads.

One file holds two tables, `conversations` (title, system prompt, sampling settings, the model that answers) and
`messages` (the user and assistant turns, in insertion order). The file runs in WAL mode so readers never wait for a
writer and a second process (another `serve` on the same `--db`) can use it too; every write is one `BEGIN IMMEDIATE`
transaction.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlx_ft import checks
from mlx_ft.inference.sampling import CHAT_TEMPERATURE, MAX_TOKENS
from mlx_ft.services.sqlite_store import Database, Schema, statements

SCHEMA_VERSION = 2  # 2: conversations.model
DEFAULT_TITLE = "New chat"
DEFAULT_SETTINGS: dict[str, Any] = {"temperature": CHAT_TEMPERATURE, "top_p": 1.0, "max_tokens": MAX_TOKENS}
ROLES = ("user", "assistant")  # the turns a conversation stores, of chat_template.ROLES; its system prompt is a setting
MAX_TITLE_CHARS = 200
AUTO_TITLE_CHARS = 40
MAX_TOKENS_LIMIT = 32768
MAX_MODEL_ID_CHARS = 1000

_TABLES = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    system      TEXT NULL,
    temperature REAL NOT NULL,
    top_p       REAL NOT NULL,
    max_tokens  INTEGER NOT NULL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    model       TEXT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    created         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def _add_model_column(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2: the model that answers a conversation."""
    if "model" not in {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}:
        conn.execute("ALTER TABLE conversations ADD COLUMN model TEXT NULL")


def _newer(path: Path, version: int) -> str:
    return (
        f"{path} was written by a newer mlx_ft (history schema {version}, this version "
        f"reads {SCHEMA_VERSION}); upgrade mlx_ft or pass another --db path"
    )


def _unusable(path: Path, error: str) -> str:
    return f"{path} is not a usable chat history database ({error}); pass another --db path or move this file away"


_SCHEMA = Schema(statements(_TABLES), SCHEMA_VERSION, (_add_model_column,), _newer)

_CONVERSATION_COLUMNS = "id, title, system, temperature, top_p, max_tokens, created, updated, model"


class _Unset(enum.Enum):
    """Sentinel type for `update`: "not given" must differ from `None`, which clears the system prompt."""

    UNSET = enum.auto()


_UNSET = _Unset.UNSET


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    system: str | None
    temperature: float
    top_p: float
    max_tokens: int
    created: float
    updated: float
    model: str | None = None  # the studio's model id that answers (None: the model `serve` started with)

    @property
    def settings(self) -> dict[str, Any]:
        """The sampling settings, keyed like DEFAULT_SETTINGS (what generation takes)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    id: int
    role: str
    content: str
    created: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- validation: the server passes request JSON straight in, so every field is checked here, by name ----------------


def _check_title(title: object) -> str:
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    title = title.strip()
    if len(title) > MAX_TITLE_CHARS:
        raise ValueError(f"title must be at most {MAX_TITLE_CHARS} characters (got {len(title)})")
    return title


def _check_system(system: object) -> str | None:
    if system is None:
        return None
    if not isinstance(system, str):
        raise ValueError("system must be a string or null")
    # A blank system prompt would still render as an empty system turn; store it as "no system prompt".
    return system if system.strip() else None


def _check_model(model: object) -> str | None:
    """Only the shape: which ids exist is the server's to say (they come and go with the runs folder)."""
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_ID_CHARS:
        raise ValueError(f"model must be a model id string (at most {MAX_MODEL_ID_CHARS} characters) or null")
    return model


def _check_temperature(value: object) -> float:
    return checks.number(value, "field 'temperature'", 0.0, 2.0)


def _check_top_p(value: object) -> float:
    return checks.number(value, "field 'top_p'", 0.0, 1.0, lo_open=True)


def _check_max_tokens(value: object) -> int:
    return checks.integer(value, "field 'max_tokens'", 1, MAX_TOKENS_LIMIT)


_SETTING_CHECKS: dict[str, Callable[[object], Any]] = {
    "temperature": _check_temperature,
    "top_p": _check_top_p,
    "max_tokens": _check_max_tokens,
}


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    return role  # type: ignore[return-value]


def _check_content(content: object) -> str:
    # Empty is allowed: a model can legitimately answer with nothing (EOS first, or max_tokens reached at once).
    if not isinstance(content, str):
        raise ValueError("content must be a string")
    return content


def auto_title(text: str) -> str | None:
    """The title a conversation gets from its first user message: whitespace collapsed, cut at 40 characters + "…"."""
    flat = " ".join(text.split())
    if not flat:
        return None
    if len(flat) <= AUTO_TITLE_CHARS:
        return flat
    return flat[:AUTO_TITLE_CHARS].rstrip() + "…"


def _conversation(row: tuple) -> Conversation:
    return Conversation(*row)


def _message(row: tuple) -> Message:
    return Message(*row)


class History:
    """Conversations and their messages in one SQLite file; safe to share between threads and processes (one
    connection behind a lock, WAL between processes: `sqlite_store`)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock  # injectable so tests can order conversations without sleeping
        self._db = Database(self.path, _SCHEMA, owner="History", unusable=_unusable)

    # --- connection plumbing ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent). The last connection to close checkpoints WAL back into the main file."""
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        return self._db.connection()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    # --- conversations ----------------------------------------------------------------------------------------------

    def create(
        self,
        title: str | None = None,
        system: str | None = None,
        cid: str | None = None,
        model: str | None = None,
        **settings: Any,
    ) -> Conversation:
        """A new, empty conversation. `settings` are temperature / top_p / max_tokens; the rest come from defaults.
        `cid` names it (the seed API's one server-side conversation has a fixed id); default a fresh uuid."""
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(DEFAULT_SETTINGS)})")
        values = {
            name: _SETTING_CHECKS[name](settings.get(name, default)) for name, default in DEFAULT_SETTINGS.items()
        }
        now = self._clock()
        conversation = Conversation(
            id=cid or uuid.uuid4().hex,
            title=DEFAULT_TITLE if title is None else _check_title(title),
            system=_check_system(system),
            created=now,
            updated=now,
            model=_check_model(model),
            **values,
        )
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(conversation),
            )
        return conversation

    def get(self, cid: str) -> Conversation | None:
        with self._read() as conn:
            return self._get(conn, cid)

    def list(self) -> builtins.list[Conversation]:
        """All conversations, most recently updated first (ties: most recently created first)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations ORDER BY updated DESC, rowid DESC"
            ).fetchall()
        return [_conversation(r) for r in rows]

    def update(
        self,
        cid: str,
        *,
        title: str | _Unset = _UNSET,
        system: str | None | _Unset = _UNSET,
        temperature: float | _Unset = _UNSET,
        top_p: float | _Unset = _UNSET,
        max_tokens: int | _Unset = _UNSET,
        model: str | None | _Unset = _UNSET,
    ) -> Conversation | None:
        """Change only the given fields (`system=None` clears the system prompt); None if there is no such
        conversation. Any change bumps `updated`. Raises ValueError naming the first invalid field."""
        changes: dict[str, Any] = {}
        if title is not _UNSET:
            changes["title"] = _check_title(title)
        if system is not _UNSET:
            changes["system"] = _check_system(system)
        if model is not _UNSET:
            changes["model"] = _check_model(model)
        for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not _UNSET:
                changes[name] = _SETTING_CHECKS[name](value)
        with self._write() as conn:
            if self._get(conn, cid) is None:
                return None
            if changes:
                changes["updated"] = self._clock()
                # Column names come from the fixed keys above, never from the caller; values are parameters.
                assignments = ", ".join(f"{name} = ?" for name in changes)
                conn.execute(f"UPDATE conversations SET {assignments} WHERE id = ?", [*changes.values(), cid])
            return self._get(conn, cid)

    def delete(self, cid: str) -> bool:
        """Delete a conversation and (ON DELETE CASCADE) its messages; False if there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0

    def clear(self, cid: str) -> bool:
        """Delete a conversation's messages, keeping the conversation and its settings; False if there is none."""
        with self._write() as conn:
            if conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (self._clock(), cid)).rowcount == 0:
                return False
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
            return True

    # --- messages ---------------------------------------------------------------------------------------------------

    def add(self, cid: str, role: str, content: str) -> Message:
        """Append one message. Raises KeyError for an unknown conversation, ValueError for a bad role or content."""
        role, content = _check_role(role), _check_content(content)
        with self._write() as conn:
            return self._add(conn, cid, role, content, self._clock())

    def add_exchange(self, cid: str, user_text: str, assistant_text: str) -> tuple[Message, Message]:
        """Append a question and its answer in one transaction: a crash never keeps one without the other."""
        user_text, assistant_text = _check_content(user_text), _check_content(assistant_text)
        with self._write() as conn:
            now = self._clock()
            return (
                self._add(conn, cid, "user", user_text, now),
                self._add(conn, cid, "assistant", assistant_text, now),
            )

    def messages(self, cid: str) -> builtins.list[Message]:
        """The conversation's messages in the order they were added (empty for an unknown conversation)."""
        with self._read() as conn:
            return self._messages(conn, cid)

    def chat_messages(self, cid: str) -> builtins.list[dict[str, str]]:
        """The conversation as chat-template messages: its system prompt first (when set), then every turn.
        Raises KeyError for an unknown conversation."""
        with self._read() as conn:  # one snapshot: the system prompt and the turns belong together
            conversation = self._get(conn, cid)
            if conversation is None:
                raise KeyError(cid)
            turns = self._messages(conn, cid)
        system = [{"role": "system", "content": conversation.system}] if conversation.system is not None else []
        return system + [{"role": m.role, "content": m.content} for m in turns]

    # --- helpers that run inside a caller's transaction -------------------------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, cid: str) -> Conversation | None:
        row = conn.execute(f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (cid,)).fetchone()
        return None if row is None else _conversation(row)

    @staticmethod
    def _messages(conn: sqlite3.Connection, cid: str) -> builtins.list[Message]:
        rows = conn.execute(
            "SELECT id, role, content, created FROM messages WHERE conversation_id = ? ORDER BY id", (cid,)
        ).fetchall()
        return [_message(r) for r in rows]

    @staticmethod
    def _add(conn: sqlite3.Connection, cid: str, role: str, content: str, now: float) -> Message:
        row = conn.execute("SELECT title FROM conversations WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(cid)
        title = None
        if (
            role == "user"
            and row[0] == DEFAULT_TITLE
            and conn.execute(
                "SELECT 1 FROM messages WHERE conversation_id = ? AND role = 'user' LIMIT 1", (cid,)
            ).fetchone()
            is None
        ):
            title = auto_title(content)
        if title is not None:
            conn.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?", (title, now, cid))
        else:
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, cid))
        cursor = conn.execute(
            "INSERT INTO messages (conversation_id, role, content, created) VALUES (?, ?, ?, ?)",
            (cid, role, content, now),
        )
        assert cursor.lastrowid is not None
        return Message(id=cursor.lastrowid, role=role, content=content, created=now)


def _row(c: Conversation) -> tuple:
    return (c.id, c.title, c.system, c.temperature, c.top_p, c.max_tokens, c.created, c.updated, c.model)
