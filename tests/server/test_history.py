"""The chat history store: persistence, WAL, cascades, titles, validation, threads and a second process's view."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest

from mlx_ft.errors import UserError
from mlx_ft.services.history import DEFAULT_SETTINGS, DEFAULT_TITLE, SCHEMA_VERSION, Conversation, History, Message


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "history.sqlite"


@pytest.fixture
def history(db: Path):
    # A strictly increasing clock: ordering tests must not depend on time.time() resolution or on sleeping.
    ticks = itertools.count(1_000_000)
    h = History(db, clock=lambda: float(next(ticks)))
    yield h
    h.close()


def test_creates_parent_folders_schema_and_pragmas(history: History, db: Path) -> None:
    assert db.is_file()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is stored in the file
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        assert {"conversations", "messages", "messages_by_conversation"} <= tables
    finally:
        raw.close()
    conn = history._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_create_defaults_and_to_dict(history: History) -> None:
    c = history.create()
    assert isinstance(c, Conversation) and len(c.id) == 32 and int(c.id, 16) >= 0
    assert c.title == DEFAULT_TITLE and c.system is None
    assert c.settings == DEFAULT_SETTINGS
    d = c.to_dict()
    assert d == {
        "id": c.id,
        "title": "New chat",
        "system": None,
        "temperature": 0.7,
        "top_p": 1.0,
        "max_tokens": 512,
        "created": c.created,
        "updated": c.updated,
        "model": None,
    }
    assert history.get(c.id) == c
    c2 = history.create("Fish", "You are terse.", temperature=0.2, max_tokens=64)
    assert (c2.title, c2.system, c2.temperature, c2.top_p, c2.max_tokens) == ("Fish", "You are terse.", 0.2, 1.0, 64)
    assert history.get(c2.id) == c2
    with pytest.raises(ValueError, match="top_k"):
        history.create(top_k=5)
    with pytest.raises(ValueError, match="temperature"):
        history.create(temperature=3)


def test_survives_close_and_reopen(db: Path) -> None:
    h = History(db)
    c = h.create("Kept", "Be kind.", temperature=1.3, top_p=0.9, max_tokens=100)
    h.add_exchange(c.id, "hello", "hi there")
    h.add(c.id, "user", "and again")
    other = h.create()
    h.delete(other.id)
    before = (h.get(c.id), h.messages(c.id))
    h.close()
    h.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        h.get(c.id)

    with History(db) as reopened:
        assert [x.id for x in reopened.list()] == [c.id]
        assert (reopened.get(c.id), reopened.messages(c.id)) == before
        conv = reopened.get(c.id)
        assert conv is not None
        assert (conv.title, conv.system, conv.temperature, conv.top_p, conv.max_tokens) == (
            "Kept",
            "Be kind.",
            1.3,
            0.9,
            100,
        )
        assert [(m.role, m.content) for m in reopened.messages(c.id)] == [
            ("user", "hello"),
            ("assistant", "hi there"),
            ("user", "and again"),
        ]
        # New ids keep growing after a restart (AUTOINCREMENT): order by id stays insertion order.
        m = reopened.add(c.id, "assistant", "last")
        assert m.id > before[1][-1].id
        assert reopened.messages(c.id)[-1] == m


def test_second_history_on_same_file_sees_writes(db: Path) -> None:
    with History(db) as first, History(db) as second:
        c = first.create("shared")
        assert second.get(c.id) == c
        first.add_exchange(c.id, "q", "a")
        assert [m.content for m in second.messages(c.id)] == ["q", "a"]
        second.add(c.id, "user", "from the other one")
        assert [m.content for m in first.messages(c.id)] == ["q", "a", "from the other one"]
        assert second.update(c.id, title="renamed") is not None
        assert first.get(c.id).title == "renamed"  # type: ignore[union-attr]
        assert first.delete(c.id)
        assert second.get(c.id) is None and second.messages(c.id) == []


def test_delete_cascades_messages(history: History) -> None:
    a, b = history.create(), history.create()
    history.add_exchange(a.id, "q1", "a1")
    history.add_exchange(b.id, "q2", "a2")
    assert history.delete(a.id) is True
    assert history.get(a.id) is None and history.messages(a.id) == []
    # Really gone from the table, not just unreachable through the API.
    conn = history._connection()
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (a.id,)).fetchone()[0] == 0
    assert [m.content for m in history.messages(b.id)] == ["q2", "a2"]
    assert history.delete(a.id) is False


def test_clear_keeps_conversation_and_others(history: History) -> None:
    a = history.create("A", "sys", temperature=0.1)
    b = history.create("B")
    history.add_exchange(a.id, "qa", "aa")
    history.add_exchange(b.id, "qb", "ab")
    assert history.clear(a.id) is True
    assert history.messages(a.id) == []
    kept = history.get(a.id)
    assert kept is not None and (kept.title, kept.system, kept.temperature) == ("A", "sys", 0.1)
    assert [m.content for m in history.messages(b.id)] == ["qb", "ab"]
    assert history.clear("nope") is False


def test_list_newest_updated_first(history: History) -> None:
    a, b, c = history.create("a"), history.create("b"), history.create("c")
    assert [x.id for x in history.list()] == [c.id, b.id, a.id]
    history.add(a.id, "user", "bump a")
    assert [x.id for x in history.list()] == [a.id, c.id, b.id]
    history.update(b.id, temperature=0.5)
    assert [x.id for x in history.list()] == [b.id, a.id, c.id]
    listed = history.list()
    assert all(x.updated >= y.updated for x, y in zip(listed, listed[1:]))


def test_title_from_first_user_message(history: History) -> None:
    c = history.create()
    history.add(c.id, "assistant", "Welcome! (assistant turns never name the chat)")
    assert history.get(c.id).title == DEFAULT_TITLE  # type: ignore[union-attr]
    history.add(c.id, "user", "  How   often\nshould I\tfeed my goldfish?  ")
    assert history.get(c.id).title == "How often should I feed my goldfish?"  # type: ignore[union-attr]
    history.add(c.id, "user", "second question does not rename")
    assert history.get(c.id).title == "How often should I feed my goldfish?"  # type: ignore[union-attr]

    long = history.create()
    text = "word " * 30
    history.add_exchange(long.id, text, "ok")
    title = history.get(long.id).title  # type: ignore[union-attr]
    assert title.endswith("…") and len(title) <= 41
    assert title[:-1] == " ".join(text.split())[:40].rstrip()

    exactly = history.create()
    history.add(exactly.id, "user", "x" * 40)
    assert history.get(exactly.id).title == "x" * 40  # type: ignore[union-attr]  (not cut, no …)

    named = history.create("My own title")
    history.add(named.id, "user", "this must not replace it")
    assert history.get(named.id).title == "My own title"  # type: ignore[union-attr]

    blank = history.create()
    history.add(blank.id, "user", "   \n ")
    assert history.get(blank.id).title == DEFAULT_TITLE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "field,value",
    [
        ("title", ""),
        ("title", "   "),
        ("title", "t" * 201),
        ("title", None),
        ("title", 5),
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", "hot"),
        ("temperature", True),
        ("temperature", float("nan")),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_p", None),
        ("max_tokens", 0),
        ("max_tokens", 32769),
        ("max_tokens", 1.5),
        ("max_tokens", "10"),
        ("system", 42),
    ],
)
def test_update_validation_names_field(history: History, field: str, value: object) -> None:
    c = history.create()
    with pytest.raises(ValueError, match=field):
        history.update(c.id, **{field: value})
    assert history.get(c.id) == c  # nothing changed


def test_update_changes_only_given_keys(history: History) -> None:
    c = history.create("t", "sys")
    u = history.update(c.id, temperature=0, top_p=1, max_tokens=32768)
    assert u is not None
    assert (u.title, u.system, u.temperature, u.top_p, u.max_tokens) == ("t", "sys", 0.0, 1.0, 32768)
    assert u.updated > c.updated and u.created == c.created
    assert history.update(c.id, title="x" * 200).title == "x" * 200  # type: ignore[union-attr]
    assert history.update(c.id) == history.get(c.id)  # no keys: unchanged
    assert history.update("missing", title="x") is None


def test_system_prompt_set_and_cleared(history: History) -> None:
    c = history.create()
    assert history.update(c.id, system="You are a pirate.").system == "You are a pirate."  # type: ignore[union-attr]
    assert history.get(c.id).system == "You are a pirate."  # type: ignore[union-attr]
    assert history.update(c.id, title="kept").system == "You are a pirate."  # type: ignore[union-attr]
    assert history.update(c.id, system=None).system is None  # type: ignore[union-attr]
    assert history.get(c.id).system is None  # type: ignore[union-attr]
    assert history.update(c.id, system="   ").system is None  # type: ignore[union-attr]  (blank = none)


def test_chat_messages_shape(history: History) -> None:
    c = history.create(system="Be brief.")
    history.add_exchange(c.id, "Hi", "Hello!")
    history.add(c.id, "user", "Bye")
    assert history.chat_messages(c.id) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    history.update(c.id, system=None)
    assert [m["role"] for m in history.chat_messages(c.id)] == ["user", "assistant", "user"]
    empty = history.create()
    assert history.chat_messages(empty.id) == []
    with pytest.raises(KeyError):
        history.chat_messages("missing")


def test_messages_and_exchange(history: History) -> None:
    c = history.create()
    user, assistant = history.add_exchange(c.id, "q", "a")
    assert isinstance(user, Message) and (user.role, assistant.role) == ("user", "assistant")
    assert assistant.id > user.id
    assert user.to_dict() == {"id": user.id, "role": "user", "content": "q", "created": user.created}
    assert history.messages(c.id) == [user, assistant]
    assert history.get(c.id).updated == assistant.created  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="role"):
        history.add(c.id, "system", "no system turns in messages")
    with pytest.raises(ValueError, match="content"):
        history.add(c.id, "user", None)  # type: ignore[arg-type]
    assert history.messages(c.id) == [user, assistant]


def test_unknown_conversation(history: History) -> None:
    with pytest.raises(KeyError):
        history.add("0" * 32, "user", "hello")
    with pytest.raises(KeyError):
        history.add_exchange("0" * 32, "hello", "hi")
    assert history.get("0" * 32) is None
    assert history.delete("0" * 32) is False
    assert history.messages("0" * 32) == []
    # The failed writes left nothing behind (no orphan messages).
    assert history._connection().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_exchange_is_one_transaction(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between the question and the answer rolls the question back too."""
    c = history.create()
    calls = itertools.count()
    real_add = History._add

    def failing_add(conn, cid, role, content, now):  # type: ignore[no-untyped-def]
        if next(calls) == 1:  # the assistant half
            raise RuntimeError("crash mid-exchange")
        return real_add(conn, cid, role, content, now)

    monkeypatch.setattr(History, "_add", staticmethod(failing_add))
    with pytest.raises(RuntimeError):
        history.add_exchange(c.id, "question", "answer")
    monkeypatch.undo()
    assert history.messages(c.id) == []
    assert history.get(c.id) == c  # title and updated rolled back as well
    history.add_exchange(c.id, "question", "answer")  # and the connection is usable again
    assert len(history.messages(c.id)) == 2


def test_threads_do_not_lose_or_mix_messages(db: Path) -> None:
    threads_n, exchanges = 16, 10
    errors: list[BaseException] = []
    ids: dict[int, str] = {}
    start = threading.Barrier(threads_n)
    with History(db) as history:

        def worker(n: int) -> None:
            try:
                start.wait()  # all threads hit the store at once
                cid = history.create(f"thread {n}").id
                ids[n] = cid
                for i in range(exchanges):
                    history.add_exchange(cid, f"t{n} q{i}", f"t{n} a{i}")
                    history.list()  # readers interleaved with writers
            except BaseException as exc:  # surfaced below: an exception in a thread would otherwise vanish
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert len(ids) == threads_n and len(set(ids.values())) == threads_n
        assert len(history.list()) == threads_n
        for n, cid in ids.items():
            got = [(m.role, m.content) for m in history.messages(cid)]
            want = [pair for i in range(exchanges) for pair in (("user", f"t{n} q{i}"), ("assistant", f"t{n} a{i}"))]
            assert got == want
    with History(db) as reopened:  # and all of it reached the file
        assert sum(len(reopened.messages(cid)) for cid in ids.values()) == threads_n * exchanges * 2


def test_not_a_database_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "history.sqlite"
    bad.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(UserError, match="--db"):
        History(bad)


def test_newer_schema_is_refused(db: Path) -> None:
    History(db).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(UserError, match="newer"):
        History(db)


def test_values_are_parameters_not_sql(history: History) -> None:
    nasty = "x'); DROP TABLE messages; --"
    c = history.create(nasty, nasty)
    history.add_exchange(c.id, nasty, nasty)
    assert history.get(c.id).title == nasty  # type: ignore[union-attr]
    assert [m.content for m in history.messages(c.id)] == [nasty, nasty]
    assert history.get(nasty) is None
