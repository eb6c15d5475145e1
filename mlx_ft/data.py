"""Raw datasets → the one internal format: OpenAI-style chat JSONL, `{"messages": [{"role", "content"}, …]}`.

Every problem is reported as `file:line: what is wrong` before anything is written. The train/valid/test split is a
hash of each example, so it is the same on every machine and an example keeps its split when data is appended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlx_ft.atomic import atomic_path
from mlx_ft.errors import UserError

SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20


class DataError(UserError):
    def __init__(self, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        super().__init__("\n".join(shown) + (f"\n… and {more} more problems" if more else ""))
        self.problems = problems


@dataclass(frozen=True)
class Record:
    file: Path
    line: int
    value: Any

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# ---------------------------------------------------------------------------------------------------------- reading


def _json_array_items(path: Path, text: str) -> Iterator[Record]:
    """Items of a top-level JSON array with the line each starts on (json.load would lose the lines)."""
    dec = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:].startswith("["):
        raise DataError([f"{path}:1: expected a JSON array of examples (or use .jsonl, one example per line)"])
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DataError([f"{path}:{text.count(chr(10), 0, pos) + 1}: unterminated JSON array"])
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError([f"{path}:{text.count(chr(10), 0, e.pos) + 1}: invalid JSON: {e.msg}"]) from None
        yield Record(path, line, value)


def read_records(path: Path) -> tuple[list[Record], list[str]]:
    """All examples of a .json (array) or .jsonl file, and the problems met reading them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            return [], [f"{path}:{line}: not UTF-8 text (byte {e.start})"]
        return list(_json_array_items(path, text)), []
    if path.suffix != ".jsonl":
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .json or .jsonl")
    records, problems = [], []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(path, n, json.loads(line.decode("utf-8-sig" if n == 1 else "utf-8"))))
        except UnicodeDecodeError:
            problems.append(f"{path}:{n}: not UTF-8 text")
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: invalid JSON: {e.msg} (column {e.colno})")
    return records, problems


# --------------------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Options:
    system: str | None = None  # system prompt added to every conversation that has none
    instruction: str | None = None  # text put before each input (io format)


def _text(rec: dict[str, Any], key: str) -> str:
    v = rec.get(key)
    if v is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(v, str):
        raise ValueError(f"field {key!r} must be a string, not {type(v).__name__}")
    if not v.strip():
        raise ValueError(f"field {key!r} is empty")
    return v


def _with_system(messages: list[dict[str, str]], opts: Options) -> list[dict[str, str]]:
    if opts.system and messages[0]["role"] != "system":
        return [{"role": "system", "content": opts.system}, *messages]
    return messages


def _from_qa(rec: dict[str, Any], opts: Options) -> list[dict[str, str]]:
    return _with_system(
        [{"role": "user", "content": _text(rec, "question")}, {"role": "assistant", "content": _text(rec, "answer")}],
        opts,
    )


def _from_io(rec: dict[str, Any], opts: Options) -> list[dict[str, str]]:
    prompt = _text(rec, "input")
    if opts.instruction:
        prompt = f"{opts.instruction}{prompt}"
    return _with_system(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(rec, "output")}], opts
    )


def _from_messages(rec: dict[str, Any], opts: Options) -> list[dict[str, str]]:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        out.append({"role": role, "content": _text(m, "content")})
    return _with_system(out, opts)


@dataclass(frozen=True)
class Format:
    keys: tuple[str, ...]  # fields whose presence identifies the format
    convert: Callable[[dict[str, Any], Options], list[dict[str, str]]]
    about: str


FORMATS: dict[str, Format] = {
    "messages": Format(("messages",), _from_messages, 'OpenAI chat: {"messages": [{"role", "content"}, …]}'),
    "qa": Format(("question", "answer"), _from_qa, '{"question": …, "answer": …}'),
    "io": Format(("input", "output"), _from_io, '{"input": …, "output": …} (optionally --instruction before input)'),
}


def detect_format(rec: Any) -> str | None:
    if isinstance(rec, dict):
        for name, fmt in FORMATS.items():
            if all(k in rec for k in fmt.keys):
                return name
    return None


def check_conversation(messages: list[dict[str, str]]) -> None:
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise ValueError("a system message may only come first")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns[-1] != "assistant":
        raise ValueError("the conversation must end with an assistant message")
    for a, b in zip(turns, turns[1:]):
        if a == b:
            raise ValueError(f"two {a} messages in a row")
    if turns[0] != "user":
        raise ValueError("the conversation must start with a user message (after an optional system message)")


# ------------------------------------------------------------------------------------------------------- preparing


def split_of(messages: list[dict[str, str]], seed: int, valid: float, test: float) -> tuple[str, float]:
    """The split an example belongs to, from a hash of its content: stable across machines and appends. The system
    prompt is left out of the hash, so rewording it never moves examples between splits."""
    turns = [m for m in messages if m["role"] != "system"]
    digest = hashlib.sha256(f"{seed}\0{json.dumps(turns, ensure_ascii=False, sort_keys=True)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return ("test" if u < test else "valid" if u < test + valid else "train"), u


@dataclass
class Report:
    out: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    skipped: int = 0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        extra = f"; dropped {self.duplicates} duplicates" if self.duplicates else ""
        extra += f"; skipped {self.skipped} invalid" if self.skipped else ""
        return f"{self.out}: {parts} ({self.format}){extra}"


def prepare(
    inputs: list[Path],
    out: Path,
    fmt: str | None = None,
    opts: Options = Options(),
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    skip_invalid: bool = False,
) -> Report:
    """Convert, validate, de-duplicate and split `inputs` into `out/{train,valid,test}.jsonl`."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise UserError("--valid and --test are fractions whose sum must stay below 1")
    problems: list[str] = []
    conversations: list[list[dict[str, str]]] = []
    formats_seen: set[str] = set()
    for path in inputs:
        records, read_problems = read_records(Path(path))
        problems += read_problems
        for rec in records:
            name = fmt or detect_format(rec.value)
            if name is None:
                problems.append(
                    f"{rec.where}: cannot tell the format; expected one of: "
                    + "; ".join(f.about for f in FORMATS.values())
                )
                continue
            if not isinstance(rec.value, dict):
                problems.append(f"{rec.where}: an example must be a JSON object")
                continue
            try:
                messages = FORMATS[name].convert(rec.value, opts)
                check_conversation(messages)
            except ValueError as e:
                problems.append(f"{rec.where}: {e}")
                continue
            formats_seen.add(name)
            conversations.append(messages)
    if problems and not skip_invalid:
        raise DataError(problems)
    if not conversations:
        raise UserError(f"no valid examples in {', '.join(map(str, inputs))}")

    seen: set[str] = set()
    unique = []
    for messages in conversations:
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(messages)

    placed: dict[str, list[tuple[float, list[dict[str, str]]]]] = {s: [] for s in SPLITS}
    for messages in unique:
        split, u = split_of(messages, seed, valid, test)
        placed[split].append((u, messages))
    # A tiny dataset can hash nothing into a split it asked for: lend it the train example nearest to that split.
    for split, frac in (("valid", valid), ("test", test)):
        if frac > 0 and not placed[split] and len(placed["train"]) > 1:
            placed["train"].sort(key=lambda p: p[0])
            placed[split].append(placed["train"].pop(0))

    out = Path(out)
    report = Report(out, "+".join(sorted(formats_seen)), duplicates=len(conversations) - len(unique),
                    skipped=len(problems))
    counts = {split: len(placed[split]) for split in SPLITS}
    report.counts.update(counts)
    recipe = {
        "inputs": [str(p) for p in inputs],
        "format": report.format,
        "seed": seed,
        "valid": valid,
        "test": test,
        "system": opts.system,
        "instruction": opts.instruction,
        "counts": counts,
        "duplicates_dropped": report.duplicates,
        "invalid_skipped": report.skipped,
    }
    # Every file is written under a temporary name first and all are renamed together at the end, so an interrupted
    # run never leaves a new train.jsonl beside an old valid.jsonl (which could put one example in both).
    with contextlib.ExitStack() as stack:
        for split in SPLITS:
            tmp = stack.enter_context(atomic_path(out / f"{split}.jsonl"))
            tmp.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for _, m in placed[split]),
                           encoding="utf-8")
        tmp = stack.enter_context(atomic_path(out / "prepare.json"))
        tmp.write_text(json.dumps(recipe, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


@dataclass(frozen=True)
class Example:
    where: str  # file:line, for error messages
    messages: list[dict[str, str]]


def load_split(data_dir: Path, split: str) -> list[Example]:
    """The conversations of one prepared split, validated (file:line errors) as `prepare` would."""
    path = Path(data_dir) / f"{split}.jsonl"
    records, problems = read_records(path)
    examples = []
    for rec in records:
        try:
            if not isinstance(rec.value, dict):
                raise ValueError("an example must be a JSON object")
            messages = _from_messages(rec.value, Options())
            check_conversation(messages)
        except ValueError as e:
            problems.append(f"{rec.where}: {e}")
            continue
        examples.append(Example(rec.where, messages))
    if problems:
        raise DataError(problems)
    return examples
