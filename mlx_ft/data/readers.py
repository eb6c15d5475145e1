"""Raw files → records, each with the line it starts on: `.json` (an array), `.jsonl`, `.csv` (the header row gives
the keys), `.txt` (each non-empty line one `{"text": …}` record, for continued pre-training), and LLaMA-Factory's
`dataset_info.json`, which names local data files and how to read their columns. It may name only files in its own
folder: one that reaches outside (absolute, `..`, a symlink) is refused, before anything looks at that file.

Problems in the data come back as records too (their value is the message), so that all of them can be reported
at once, in file order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_ft.data.formats import Alpaca, Chat, Convert, JSONLimit, Preference, ShareGPTTags, Text, json_value
from mlx_ft.errors import UserError

MAX_REPORTED = 20
DATASET_INFO = "dataset_info.json"


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


# ---------------------------------------------------------------------------------------------------------- files


class _NotText(Exception):
    def __init__(self, problem: Record) -> None:
        super().__init__(f"{problem.where}: {problem.value}")
        self.problem = problem


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _NotText(Record(path, raw.count(b"\n", 0, e.start) + 1, f"not UTF-8 text (byte {e.start})")) from None


def _json_items(path: Path, text: str, opener: str = "[") -> Iterator[tuple[int, str | None, Any]]:
    """(line, key, value) for each item of a top-level JSON array (key None) or object, the line being where the
    item starts: json.load would lose the lines."""
    kind = "array" if opener == "[" else "object"

    def line(p: int) -> int:
        return text.count("\n", 0, p) + 1

    if not text.strip():  # json's own word for it, "Expecting value", tells a person nothing
        raise DataError([f"{path}: the file is empty"])
    # The whole file is judged by the strict parser first, so a stray, missing or trailing comma is an error at its
    # own line, exactly as json.load would say; the walk below then only has to find where each item starts.
    try:
        whole = json_value(text)
    except json.JSONDecodeError as e:
        raise DataError([f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})"]) from None
    except JSONLimit as e:  # nesting or a number past Python's limits: told at the item that holds it
        raise DataError([f"{path}:{line(_limit_start(text, opener))}: {e}"]) from None
    if not isinstance(whole, list if opener == "[" else dict):
        hint = " of examples (or use .jsonl, one example per line)" if opener == "[" else ""
        raise DataError([f"{path}:{line(len(text) - len(text.lstrip()))}: expected a JSON {kind}{hint}"])
    for start, key, value in _walk(text, opener):
        yield line(start), key, value


class _Unreadable(Exception):
    """An item of a JSON array or object that json cannot read, and where it starts."""

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self.start = start


def _walk(text: str, opener: str) -> Iterator[tuple[int, str | None, Any]]:
    """(start, key, value) for each item of the top-level array or object that `text` holds. An item that cannot be
    read raises _Unreadable: only when json.loads could not read the whole either, as the walk then goes past what
    it checked."""
    dec = json.JSONDecoder()
    closer = "]" if opener == "[" else "}"
    pos = _skip(text, _skip(text, 0) + 1)
    while pos < len(text) and text[pos] != closer:
        start, key = pos, None
        try:
            if opener == "{":
                key, pos = dec.raw_decode(text, pos)
                pos = _skip(text, _skip(text, pos) + 1)  # past the colon
            value, pos = dec.raw_decode(text, pos)
        except (RecursionError, ValueError):
            raise _Unreadable(start) from None
        yield start, key, value
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)


def _limit_start(text: str, opener: str) -> int:
    """Where the item that json.loads met a limit in starts (the walk meets it there again); the top level's start
    when the top level is not the array or object expected, or the walk reads every item (the limit depends on how
    deep the stack already is)."""
    top = _skip(text, 0)
    if text.startswith(opener, top):
        try:
            for _ in _walk(text, opener):
                pass
        except _Unreadable as e:
            return e.start
    return top


def _skip(text: str, pos: int) -> int:
    """The first position at or after `pos` that is not JSON whitespace."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_json(path: Path, raw: bytes) -> tuple[list[Record], list[Record]]:
    return [Record(path, n, value) for n, _, value in _json_items(path, _decode(path, raw))], []


def _read_jsonl(path: Path, raw: bytes) -> tuple[list[Record], list[Record]]:
    records, problems = [], []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(path, n, json_value(line.decode("utf-8-sig" if n == 1 else "utf-8"))))
        except UnicodeDecodeError:
            problems.append(Record(path, n, "not UTF-8 text"))
        except json.JSONDecodeError as e:
            problems.append(Record(path, n, f"invalid JSON: {e.msg} (column {e.colno})"))
        except JSONLimit as e:
            problems.append(Record(path, n, str(e)))
    return records, problems


def _read_csv(path: Path, raw: bytes) -> tuple[list[Record], list[Record]]:
    """Rows as {header: cell}; a record's line is the source line it starts on (a quoted cell may span lines)."""
    rows = csv.reader(io.StringIO(_decode(path, raw), newline=""))
    records: list[Record] = []
    problems: list[Record] = []
    try:
        header = [name.strip() for name in next(rows, [])]
        if len(set(header)) != len(header) or not all(header):
            return [], [Record(path, 1, "the header row must name every column once")]
        start = rows.line_num + 1
        for cells in rows:
            if len(cells) != len(header) and any(cells):
                problems.append(Record(path, start, f"{len(cells)} fields, but the header has {len(header)}"))
            elif any(cells):  # blank lines are not examples
                records.append(Record(path, start, dict(zip(header, cells))))
            start = rows.line_num + 1
    except csv.Error as e:
        problems.append(Record(path, rows.line_num, f"invalid CSV: {e}"))
    return records, problems


def _read_txt(path: Path, raw: bytes) -> tuple[list[Record], list[Record]]:
    """Each non-empty line a `{"text": line}` record: what LLaMA-Factory's pre-training `.txt` sets hold (one document
    a line)."""
    text = _decode(path, raw)
    records = [
        Record(path, n, {"text": line.rstrip("\r")}) for n, line in enumerate(text.split("\n"), start=1) if line.strip()
    ]
    return records, []


READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}


def read_records(path: Path) -> tuple[list[Record], list[Record]]:
    """All examples of a .json (array), .jsonl, .csv or .txt file, and the problems met reading them (as records
    whose value is the message)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(READERS)}")
    try:
        return reader(path, path.read_bytes())
    except _NotText as e:
        return [], [e.problem]


# --------------------------------------------------------------------------------------------- dataset_info.json


@dataclass(frozen=True)
class Source:
    """One data file to read, and how: a named format, or None to detect it per record; `convert` is set when a
    dataset_info.json entry says how its columns map."""

    path: Path
    format: str | None
    convert: Convert | None = None
    dataset: str | None = None


HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
IGNORED_KEYS = ("subset", "split", "folder")  # they choose among a hub repository's parts; a local file is one part
COLUMNS = {
    "alpaca": ("prompt", "query", "response", "history", "system", "tools"),
    "sharegpt": ("messages", "system", "tools"),
}
RANKING_COLUMNS = ("chosen", "rejected")  # the two answers of a `"ranking": true` entry's pairs
UNSUPPORTED_COLUMNS = {"images": "multimodal", "videos": "multimodal", "audios": "multimodal", "kto_tag": "KTO"}
TAGS = tuple(f.name for f in dataclasses.fields(ShareGPTTags))


class Unsupported(ValueError):
    """A dataset_info.json entry of a kind mlx_ft does not read: hub or script, KTO, multimodal. Taking a
    whole dataset_info.json skips these (saying why); naming one with --dataset is an error."""

    def __init__(self, message: str, hub: bool = False) -> None:
        super().__init__(message)
        self.hub = hub


class Outside(ValueError):
    """A dataset_info.json entry whose file_name leads out of the folder of that dataset_info.json (absolute, `..`,
    or a symlink). Always an error, chosen or not, never a skipped note; and said the same whether that file exists
    or not, so a dataset_info.json (an upload) cannot learn anything about the rest of the disk."""


def _entry_path(info: Path, entry: Any) -> Path | None:
    """The data file an entry names, inside the folder of `info` (symlinks resolved); None when it names none.
    Raises Outside before anything looks at the file, so whether it exists cannot show."""
    file_name = entry.get("file_name") if isinstance(entry, dict) else None
    if not isinstance(file_name, str) or not file_name:
        return None
    folder, path = info.parent, info.parent / file_name  # an absolute file_name replaces the folder
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: nothing to follow anywhere
        raise Outside(f"file_name {file_name!r} is not a path to a file; put the file beside {DATASET_INFO}") from None
    if not inside:
        raise Outside(f"file_name {file_name!r} points outside the folder of {DATASET_INFO}; put the file beside it")
    return path


def _names(entry: dict[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """entry[key] (columns or tags) as a {name: string} mapping whose names are all in `allowed`."""
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{key!r} must map names to strings")
    if value and not allowed:
        raise ValueError(f"{key!r} apply to the sharegpt formatting only")
    for name in value:
        if name in UNSUPPORTED_COLUMNS and key == "columns":
            raise Unsupported(f"columns.{name}: {UNSUPPORTED_COLUMNS[name]} datasets are not supported")
        if name not in allowed:
            raise ValueError(f"{key}.{name} is unknown (known: {', '.join(allowed)})")
    return value


def _entry_source(info: Path, name: str, entry: Any) -> Source:
    """How to read one dataset_info.json entry; ValueError says what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError("must be an object")
    if hub := [k for k in HUB_KEYS if k in entry]:
        raise Unsupported(f"{hub[0]}: only local files (file_name) are supported; download the data first", hub=True)
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise ValueError("'ranking' must be true or false")
    if extra := sorted(set(entry) - {"file_name", "formatting", "columns", "tags", "ranking", *IGNORED_KEYS}):
        raise ValueError(f"key {extra[0]!r} is not supported")
    path = _entry_path(info, entry)
    if path is None:
        raise ValueError("needs a 'file_name'")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in COLUMNS:
        raise ValueError(f"formatting {formatting!r} is not one of {', '.join(COLUMNS)}")
    columns = _names(entry, "columns", COLUMNS[formatting] + RANKING_COLUMNS)
    if not ranking and (pair := [c for c in RANKING_COLUMNS if c in columns]):
        raise ValueError(f'columns.{pair[0]} belongs to preference pairs: the entry needs "ranking": true')
    tags = _names(entry, "tags", TAGS if formatting == "sharegpt" else ())
    if ranking:
        answers = {c: columns.get(c, c) for c in RANKING_COLUMNS}
        if formatting == "sharegpt":
            chat = _sharegpt(tags, columns)
            return Source(path, "preference", Preference(chat, **answers, chat=chat), name)
        return Source(path, "preference", Preference(_alpaca(columns).prompt_messages, **answers), name)
    if formatting == "sharegpt":
        return Source(path, "sharegpt", _sharegpt(tags, columns), name)
    if set(columns) == {"prompt"}:  # LLaMA-Factory's pre-training entries name only the text column
        return Source(path, "text", Text(columns["prompt"]), name)
    return Source(path, "alpaca", _alpaca(columns), name)


def _sharegpt(tags: dict[str, str], columns: dict[str, str]) -> Chat:
    """A sharegpt entry's tags and columns, LLaMA-Factory's defaults for those it does not name (tools are read only
    when `columns.tools` names their column, as LLaMA-Factory does)."""
    return ShareGPTTags(**tags).chat(
        columns.get("messages", "conversations"), columns.get("system"), tools=columns.get("tools")
    )


def _alpaca(columns: dict[str, str]) -> Alpaca:
    """An alpaca entry's columns, LLaMA-Factory's defaults for those it does not name."""
    return Alpaca(
        prompt=columns.get("prompt", "instruction"),
        query=columns.get("query", "input"),
        response=columns.get("response", "output"),
        system=columns.get("system"),
        history=columns.get("history"),
        tools=columns.get("tools"),
    )


def _local(info: Path, entry: Any) -> bool:
    """Whether a dataset_info.json entry names a data file that is here (inside its folder: one outside is never
    looked at)."""
    try:
        path = _entry_path(info, entry)
    except Outside:
        return False
    return path is not None and path.is_file()


@dataclass
class _Info:
    """What one dataset_info.json yields: the sources to read, the entry names it knows, the problems with the
    chosen entries (errors), and the entries skipped when taking the whole file (notes)."""

    sources: list[Source] = dataclasses.field(default_factory=list)
    names: set[str] = dataclasses.field(default_factory=set)
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    hub: list[str] = dataclasses.field(default_factory=list)  # skipped hub/script entries, named in one note


def _dataset_info_sources(info: Path, wanted: list[str] | None) -> _Info:
    """The entries in `wanted`, or, without it, every entry whose kind is supported and whose file is here."""
    if not info.is_file():
        raise UserError(f"{info}: no such file")
    try:
        entries = list(_json_items(info, _decode(info, info.read_bytes()), "{"))
    except _NotText as e:
        raise DataError([str(e)]) from None
    out = _Info(names={name for _, name, _ in entries if name})
    for line, name, entry in entries:
        assert name is not None  # _json_items gives every item of an object its key
        where = f"{info}:{line}: dataset {name!r}"
        try:
            # Every entry, chosen or not, and first: a dataset_info.json that reaches outside its folder is refused
            # as a whole, before any file is looked at.
            _entry_path(info, entry)
        except Outside as e:
            out.problems.append(f"{where}: {e}")
            continue
        if wanted and name not in wanted:
            continue
        try:
            src = _entry_source(info, name, entry)
        except Unsupported as e:
            if wanted:
                out.problems.append(f"{where}: {e}")
            elif e.hub:
                out.hub.append(name)
            else:
                out.skipped.append(f"{where}: {e}")
            continue
        except ValueError as e:
            # Taking the whole file, an entry whose data is not here cannot be used anyway: a note, not an error.
            (out.skipped if not wanted and not _local(info, entry) else out.problems).append(f"{where}: {e}")
            continue
        if not wanted and not src.path.is_file():
            out.skipped.append(f"{where}: {src.path.name} is not here")
            continue
        out.sources.append(src)
    if out.hub:
        shown = ", ".join(out.hub[:5]) + (f" and {len(out.hub) - 5} more" if len(out.hub) > 5 else "")
        out.skipped.append(
            f"{info}: {len(out.hub)} hub or script entr{'y' if len(out.hub) == 1 else 'ies'} "
            f"({shown}): only local files are read; download one and name it with file_name"
        )
    return out


def sources(
    inputs: list[Path], fmt: str | None = None, datasets: list[str] | None = None
) -> tuple[list[Source], list[str]]:
    """What to read for `inputs`: plain files as they are (in format `fmt`, or detected), dataset_info.json files
    as the data files of their entries (`datasets`, or every supported one that exists locally), and one note per
    entry that taking a whole dataset_info.json skipped, with the reason."""
    out: list[Source] = []
    known: set[str] = set()
    problems: list[str] = []
    skipped: list[str] = []
    infos = [Path(p) for p in inputs if Path(p).name == DATASET_INFO]
    if datasets and not infos:
        raise UserError(f"--dataset picks entries of a {DATASET_INFO}; give one as an input")
    for p in map(Path, inputs):
        if p.name != DATASET_INFO:
            out.append(Source(p, fmt))
            continue
        found = _dataset_info_sources(p, datasets)
        out += found.sources
        known |= found.names
        problems += found.problems
        skipped += found.skipped
        if not datasets and not found.sources and not found.problems:
            problems += [f"{p}:1: no entry mlx_ft can read (a supported kind, with a local file_name)", *found.skipped]
    if missing := [d for d in datasets or [] if d not in known]:
        raise UserError(
            f"--dataset {missing[0]}: no such entry in {', '.join(map(str, infos))}; known: {', '.join(sorted(known))}"
        )
    if problems:
        raise DataError(problems)
    return out, skipped
