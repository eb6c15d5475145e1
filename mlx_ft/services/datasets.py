"""The studio's data sets: the ones it knows (uploaded into the data folder, shipped, recipes), taking new ones in
through `prepare` itself, and previews with the learned tokens marked by training's own tokenizing.

An upload is written into a fresh hidden folder inside the data folder, prepared there (every problem reported as
`file:line: what` with the names the user uploaded and the line its record starts on, never the scratch folder or a
prepared split's line), measured, and only then renamed to `data/<name>/` in one step:
a bad upload, a dry run or an interrupted one leaves nothing behind (what a killed one left, `remove_scratch`
sweeps away). Names are checked against one pattern and looked up, never joined onto a path as they come.

Examples longer than max_seq_length do not refuse a set: it is stored with a note per kind of cut, every long example
listed by where it came from, and `fixes`, the upload's fields that would keep them (a larger max_seq_length, the
prompts' start cut, or the long ones skipped), for the page to offer as buttons. How the set was fitted is recorded
in its prepare.json, and training cuts it the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mlx_ft import chat_template, data
from mlx_ft import config as config_mod
from mlx_ft.atomic import write_text
from mlx_ft.data import recipes
from mlx_ft.data import stats as data_stats
from mlx_ft.data.formats import FORMATS, Options
from mlx_ft.data.readers import DATASET_INFO, READERS
from mlx_ft.errors import UserError
from mlx_ft.resources import resource
from mlx_ft.training.batches import TokenizedChats, TokenizedPairs

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # no leading dot: hidden folders are ours (uploads in progress)
MAX_NAME_CHARS = 100
RAW = "raw"  # the uploaded files, kept beside the prepared splits they made
UPLOAD_PREFIX = ".upload-"
MAX_SEQ = int(config_mod.FIELDS["max_seq_length"].metadata["bounds"].hi)  # the longest a run takes

# The data layer speaks the terminal's words (its flags); a person on the studio's page has its fields and menus.
PAGE_WORDS = (
    ("name the format with --format", "choose the format in the Format menu"),
    (" (--group-field)", " (group_field)"),
    ("name a chat model with --model, or use --no-stats", "choose a chat model for the token counts"),
    ("--max-seq-length", "max_seq_length"),
)


class Refused(UserError):
    """A request the data folder cannot honour; `problems` lists every `file:line: what` when the data is bad."""

    def __init__(self, message: str, problems: list[str] | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.status = status


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # uploaded | shipped | recipe
    path: Path | None  # the prepared folder; None for a recipe not prepared yet
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "splits": self.splits,
        }


def check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not NAME.fullmatch(name) or name in (".", ".."):
        raise Refused(f"{what} {name!r}: use letters, digits, '_', '-' and '.' (not first), at most {MAX_NAME_CHARS}")
    return name


def _splits(folder: Path) -> dict[str, int]:
    try:
        counts = json.loads((folder / "prepare.json").read_text(encoding="utf-8")).get("counts")
        if isinstance(counts, dict):
            return {s: int(counts.get(s, 0)) for s in data.SPLITS}
    except (OSError, ValueError, TypeError):
        pass
    out = {}
    for s in data.SPLITS:
        try:
            out[s] = sum(1 for line in (folder / f"{s}.jsonl").open(encoding="utf-8") if line.strip())
        except OSError:
            out[s] = 0
    return out


def _prepared(folder: Path) -> bool:
    return (folder / "train.jsonl").is_file()


def _recipe_of(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "prepare.json").read_text(encoding="utf-8")).get("recipe"))
    except (OSError, ValueError, AttributeError):
        return False


def _children(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))
    except OSError:
        return []


def _shipped_root(name: str) -> Path | None:
    try:
        return resource(name)
    except FileNotFoundError:
        return None


def catalogue(data_dir: Path) -> list[Dataset]:
    """Every data set: those in the data folder, then the shipped prepared ones, then recipes not prepared yet."""
    out = [
        Dataset(p.name, "recipe" if _recipe_of(p) else "uploaded", p, _splits(p))
        for p in _children(Path(data_dir))
        if _prepared(p)
    ]
    seen = {d.name for d in out}
    shipped = _shipped_root("data")
    for p in _children(shipped) if shipped else []:
        if _prepared(p) and p.name not in seen:
            out.append(Dataset(p.name, "shipped", p, _splits(p)))
            seen.add(p.name)
    for name in recipe_names():
        if name not in seen:
            out.append(Dataset(name, "recipe", None, {}))
    return out


def recipe_names() -> list[str]:
    root = _shipped_root("recipes")
    return [p.name for p in _children(root) if (p / recipes.RECIPE_FILE).is_file()] if root else []


def find(data_dir: Path, name: str) -> Dataset:
    for d in catalogue(data_dir):
        if d.name == name:
            return d
    raise Refused(f"no data set {name!r}", status=404)


# ---------------------------------------------------------------------------------------------------- taking in


@dataclass
class Taken:
    name: str
    format: str
    splits: dict[str, int]
    stats: dict[str, Any]
    stored: bool
    notes: list[str]
    # Every example longer than max_seq_length: {"where": "file:line", "tokens": n, "fate": "cut" | "prompt_cut" |
    # "left_out" | "skipped"}, in file order, named as the user named the file.
    long: list[dict[str, Any]] = field(default_factory=list)
    # The ways to keep them, for buttons: {"id": "raise" | "truncate" | "skip", "label": ..., "fields": {...}}, where
    # `fields` are the upload's fields to send again (with the others as they were).
    fixes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def upload_path(filename: str | None) -> Path:
    """The relative path an uploaded file is stored under, refusing absolute names and any climbing out (`..`):
    a `dataset_info.json` folder keeps its layout, so each part is checked."""
    name = (filename or "").replace("\\", "/")
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise Refused(f"file name {filename!r}: give a plain or relative name (no absolute paths)")
    parts = name.split("/")
    for part in parts:
        # Any language's letters and spaces are fine in a file name; what could climb out or hide is not.
        if part in ("", ".", "..") or part.startswith(".") or len(part) > 255 or not part.isprintable():
            raise Refused(f"file name {filename!r}: part {part!r} is not allowed (no '..', hidden or empty parts)")
    return Path(*parts)


@contextmanager
def _scratch(data_dir: Path) -> Iterable[Path]:
    """A fresh hidden folder inside the data folder (so the final rename stays on one file system), removed after
    unless it was renamed away."""
    data_dir = Path(data_dir)
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=data_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # a data folder made only for an upload that stored nothing goes too
            with contextlib.suppress(OSError):
                data_dir.rmdir()


def remove_scratch(data_dir: Path) -> int:
    """Remove the scratch folders of uploads that never finished (a SIGKILL or a power cut skips `_scratch`'s
    cleanup): every `UPLOAD_PREFIX*` folder directly inside `data_dir`, and nothing else. An entry that is a symlink
    is unlinked, never followed, so a planted link cannot turn this into deleting elsewhere. It removes an upload in
    progress too: call it before the server takes requests. Returns how many it removed."""
    try:
        entries = [p for p in Path(data_dir).iterdir() if p.name.startswith(UPLOAD_PREFIX)]
    except OSError:  # no data folder yet: nothing was left
        return 0
    removed = 0
    for p in entries:
        try:
            if p.is_symlink():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)  # does not follow the symlinks inside either
            else:
                continue  # a plain file with our prefix was not made by an upload
        except OSError:  # gone meanwhile, or not ours to remove: the next start tries again
            continue
        removed += 1
    return removed


def page_words(message: str) -> str:
    for cli, page in PAGE_WORDS:
        message = message.replace(cli, page)
    return message


def _relative_problems(problems: Iterable[str], raw: Path) -> list[str]:
    """Problems as the page shows them: files named as the user uploaded them, fixes in the page's words."""
    prefix = f"{raw}{os.sep}"
    return [page_words(p.replace(prefix, "")) for p in problems]


def _stats(folder: Path, tokenizer: Any, model_label: str, max_seq_length: int) -> data_stats.DataStats:
    splits = {s: data.load_split(folder, s) for s in data.SPLITS}
    return data_stats.compute(splits, data_stats.StatsSettings(model_label, max_seq_length), tokenizer)


def _stats_dict(measured: data_stats.DataStats) -> dict[str, Any]:
    parts = [s for s in measured.splits.values() if s.examples]
    n = sum(s.examples for s in parts)
    tokens = {
        "min": min(s.min for s in parts),
        "mean": round(sum(s.mean * s.examples for s in parts) / n, 1),
        "max": max(s.max for s in parts),
    }
    return {
        "model": measured.model,
        "tokens": tokens,
        "over_max_seq_length": sum(s.truncated for s in parts),
        "max_seq_length": measured.max_seq_length,
        "truncate": measured.truncate,
        "left_out": sum(s.left_out for s in parts),
        "prompt_cut": sum(s.prompt_cut for s in parts),
        "skipped_long": measured.count("skipped"),
        "splits": {name: vars(s) for name, s in measured.splits.items()},
    }


def _where_key(where: str) -> tuple[str, int]:
    file, _, line = where.rpartition(":")
    return (file, int(line)) if line.isdigit() else (where, 0)


def _long(measured: data_stats.DataStats, raw: Path) -> list[dict[str, Any]]:
    """The long examples by where the user's file has them, in file order."""
    out = [{**vars(x), "where": _relative_problems([x.where], raw)[0]} for x in measured.long]
    return sorted(out, key=lambda x: _where_key(x["where"]))


def _length_notes(stats: dict[str, Any]) -> list[str]:
    """One note per thing training does to the examples longer than max_seq_length, with its count."""
    limit = stats["max_seq_length"]
    ends = stats["over_max_seq_length"] - stats["left_out"] - stats["prompt_cut"]
    notes = []
    if stats["skipped_long"]:
        notes.append(f"skipped {stats['skipped_long']} examples longer than max_seq_length {limit}: not stored")
    if stats["prompt_cut"]:
        notes.append(
            f"{stats['prompt_cut']} examples are longer than max_seq_length {limit}: training cuts their prompts' "
            "start to fit and keeps the answers"
        )
    if stats["left_out"]:
        notes.append(
            f"{stats['left_out']} pairs are longer than max_seq_length {limit}, their prompts filling it: training "
            "would leave them out (no answer token is left); choose a fix to keep them"
        )
    if ends:
        notes.append(f"{ends} examples are longer than max_seq_length {limit} and would be cut at the end in training")
    return notes


def _fixes(long: list[dict[str, Any]], stats: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """The upload's fields that would keep the long examples, each as a button: a larger max_seq_length (the
    smallest power of two that holds the longest, up to what a run takes), their prompts' start cut, or them left
    out."""
    remaining = [x for x in long if x["fate"] != "skipped"]
    if not remaining:
        return []
    limit, n = stats["max_seq_length"], len(remaining)
    fixes = []
    if limit < MAX_SEQ:
        longest = max(x["tokens"] for x in remaining)
        raised = min(1 << (longest - 1).bit_length(), MAX_SEQ)
        still = sum(data_stats.is_truncated(x["tokens"], raised) for x in remaining)
        keeps = f"{still} examples stay longer: a run takes no more" if still else "keeps every example whole"
        fixes.append(
            {"id": "raise", "label": f"Use max_seq_length {raised} ({keeps})", "fields": {"max_seq_length": raised}}
        )
    if stats["truncate"] != "prompt" and fmt != "text":
        fixes.append(
            {
                "id": "truncate",
                "label": f"Cut the start of the prompt of the {n} long examples to fit, keeping their answers "
                "(as TRL's truncation_mode keep_end)",
                "fields": {"truncate": "prompt"},
            }
        )
    fixes.append(
        {
            "id": "skip",
            "label": f"Skip the {n} examples longer than max_seq_length {limit}",
            "fields": {"skip_long": True},
        }
    )
    return fixes


def _refused_data(e: UserError, raw: Path) -> Refused:
    problems = _relative_problems(getattr(e, "problems", None) or [str(e)], raw)
    return Refused(problems[0], problems)


def _finish(tmp: Path, final: Path | None, raw: Path) -> None:
    """Point prepare.json's inputs at the stored copies, then rename the whole folder into place."""
    if final is None:
        return
    recipe_file = tmp / "prepare.json"
    recipe = json.loads(recipe_file.read_text(encoding="utf-8"))
    recipe["inputs"] = [
        str(Path(RAW) / Path(p).relative_to(raw)) if p.startswith(str(raw)) else p for p in recipe["inputs"]
    ]
    write_text(recipe_file, json.dumps(recipe, ensure_ascii=False, indent=2) + "\n")
    if final.exists():
        raise Refused(f"a data set {final.name!r} already exists; choose another name", status=409)
    os.rename(tmp, final)  # one step: the set is there whole, or not at all


def take(
    data_dir: Path,
    name: str | None,
    files: list[tuple[str, BinaryIO]],
    tokenizer: Any,
    model_label: str,
    max_seq_length: int,
    fmt: str | None = None,
    dry_run: bool = False,
    recipe: str | None = None,
    group_field: str | None = None,
    truncate: str = "none",
    skip_long: bool = False,
) -> Taken:
    """Prepare uploaded `files` (name, stream), or a shipped recipe's raw data, into `data_dir/<name>`, fitted to
    max_seq_length as `truncate` and `skip_long` say (data_stats.StatsSettings)."""
    if fmt is not None and fmt not in FORMATS:
        raise Refused(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    known = {d.name for d in catalogue(data_dir)} - ({recipe} if recipe else set())
    with _scratch(data_dir) as tmp:
        raw = tmp / RAW
        opts = Options()
        if recipe is not None:
            loaded = recipes.load(recipe)
            shipped = _shipped_root(f"data/{recipe}")
            sources = sorted(p for p in shipped.iterdir() if p.suffix.lower() in READERS) if shipped else []
            if not sources:
                raise Refused(f"recipe {recipe!r} ships no raw data to prepare")
            raw.mkdir()
            for p in sources:
                shutil.copyfile(p, raw / p.name)
            inputs = [raw / p.name for p in sources]
            opts = Options(system=loaded.system, recipe=loaded)
            name = name or recipe
        else:
            if not files:
                raise Refused("no files uploaded (multipart field 'files')")
            stored = []
            for filename, stream in files:
                rel = upload_path(filename)
                if rel.suffix.lower() not in READERS and rel.name != DATASET_INFO:
                    raise Refused(f"{filename}: unsupported file type {rel.suffix!r}; use {', '.join(READERS)}")
                target = raw / rel
                if target.exists():
                    raise Refused(f"{filename}: uploaded twice")
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    shutil.copyfileobj(stream, out)
                stored.append(target)
            infos = [p for p in stored if p.name == DATASET_INFO]
            inputs = infos or stored
            name = name or _default_name(stored[0])
        name = check_name(name)
        if name in known:
            raise Refused(f"a data set {name!r} already exists; choose another name", status=409)
        how = data_stats.StatsSettings(model_label, max_seq_length, truncate, skip_long)
        try:
            # Measured inside prepare, on the examples as read: every problem names the user's file and record.
            report = data.prepare(inputs, tmp, fmt, opts, group=group_field, stats=how, tokenizer=tokenizer)
        except UserError as e:
            raise _refused_data(e, raw) from None
        assert report.stats is not None
        stats = _stats_dict(report.stats)
        notes = [f"skipped {n}" for n in _relative_problems(report.skipped_datasets, raw)]
        if report.duplicates:
            notes.append(f"dropped {report.duplicates} exact duplicates")
        notes += _length_notes(stats)
        if not chat_template.has_template(tokenizer):
            notes.append(f"{model_label} has no chat template")
        long = _long(report.stats, raw)
        _finish(tmp, None if dry_run else Path(data_dir) / name, raw)
        fixes = _fixes(long, stats, report.format)
        return Taken(name, report.format, report.counts, stats, not dry_run, notes, long, fixes)


def _default_name(path: Path) -> str:
    stem = path.parent.name if path.name == DATASET_INFO and path.parent.name != RAW else path.stem
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip(".-") or "dataset"
    return cleaned[:MAX_NAME_CHARS]


def inspect(folder: Path, name: str, tokenizer: Any, model_label: str, max_seq_length: int) -> Taken:
    """A prepared folder as it is (a shipped set): its splits and token statistics, nothing written."""
    try:
        measured = _stats(folder, tokenizer, model_label, max_seq_length)
    except UserError as e:
        raise _refused_data(e, folder) from None
    stats = _stats_dict(measured)
    fmt = (
        json.loads((folder / "prepare.json").read_text(encoding="utf-8")).get("format", "messages")
        if (folder / "prepare.json").is_file()
        else "messages"
    )
    notes = ["a shipped set is used where it is", *_length_notes(stats)]
    return Taken(name, fmt, _splits(folder), stats, False, notes, _long(measured, folder))


# ------------------------------------------------------------------------------------------------------ preview


def _segments(tokenizer: Any, ids: list[int], mask: list[int], start: int = 0) -> list[dict[str, Any]]:
    """Runs of learned / unlearned tokens of `ids[start:]` as text. The first token is never a target (training
    predicts each token from the ones before it), so it is never learned. Each run's text is the growth of the
    decoded prefix, so a character split across two tokens lands whole in one run."""
    if start >= len(ids):
        return []
    hf = chat_template.hf_tokenizer(tokenizer)
    learned = [bool(m) and i > 0 for i, m in enumerate(mask)]
    bounds = [start] + [i for i in range(start + 1, len(ids)) if learned[i] != learned[i - 1]] + [len(ids)]
    out, before = [], hf.decode(ids[:start], skip_special_tokens=False) if start else ""
    for start, end in zip(bounds, bounds[1:]):
        upto = hf.decode(ids[:end], skip_special_tokens=False)
        text = upto[len(before) :] if upto.startswith(before) else hf.decode(ids[start:end], skip_special_tokens=False)
        out.append({"text": text, "learned": learned[start]})
        before = upto
    return out


def preview(
    folder: Path, split: str, n: int, tokenizer: Any, mask_prompt: bool, max_seq_length: int
) -> list[dict[str, Any]]:
    """The first `n` examples of a split as training tokenizes them (`TokenizedChats`, `TokenizedPairs`: the same
    chat template, mask and cut at max_seq_length, the set's own truncation), as text runs marked learned or not.

    Each example: `where`, `segments` (runs of {"text", "learned"}; of a pair, its chosen side), `truncated`, and
    where true, `left_out` (training keeps no answer token) and `prompt_cut` (its prompt's start is cut). A pair adds
    `pair`: {"prompt", "chosen", "rejected"}, each a list of runs: the prompt both sides share, once, then each
    answer, to be shown side by side."""
    if split not in data.SPLITS:
        raise Refused(f"split {split!r}: one of {', '.join(data.SPLITS)}")
    try:
        examples = data.load_split(folder, split)
    except UserError as e:
        raise _refused_data(e, folder) from None
    truncate = examples.fit.truncate if examples.fit else "none"  # as training will cut them
    out = []
    for ex in examples[:n]:
        try:
            if ex.rejected is not None:
                shown = _preview_pair(ex, tokenizer, max_seq_length, truncate)
            else:
                shown = _preview_chat(ex, tokenizer, mask_prompt, max_seq_length, truncate)
        except UserError as e:
            raise _refused_data(e, folder) from None
        out.append({"where": _relative_problems([ex.where], folder)[0], **shown})
    return out


def _preview_chat(
    ex: data.Example, tokenizer: Any, mask_prompt: bool, max_seq_length: int, truncate: str
) -> dict[str, Any]:
    chats = TokenizedChats([ex], tokenizer, mask_prompt, max_seq_length, desc="preview", truncate=truncate)
    if not len(chats):  # cut so short that no answer token is left: training leaves it out
        text = ex.text if ex.text is not None else chat_template.render(tokenizer, ex.messages, tools=ex.tools)
        return {"segments": [{"text": text, "learned": False}], "truncated": True, "left_out": True}
    ids, mask = chats[0]
    shown = {"segments": _segments(tokenizer, ids, mask), "truncated": bool(chats.truncated)}
    return {**shown, "prompt_cut": True} if chats.prompt_cut else shown


def _preview_pair(ex: data.Example, tokenizer: Any, max_seq_length: int, truncate: str) -> dict[str, Any]:
    """A pair's two sides as training cuts them; one it leaves out is shown whole, nothing marked learned."""
    pairs = TokenizedPairs([ex], tokenizer, max_seq_length, desc="preview", truncate=truncate)
    rows = list(pairs.items[0]) if len(pairs) else data_stats.pair_rows(tokenizer, ex)
    start = min(data_stats.first_learned(mask) for _, mask in rows)  # where the answers part
    if not len(pairs):
        rows = [(ids, [0] * len(ids)) for ids, _ in rows]
    (c_ids, c_mask), (r_ids, r_mask) = rows
    shown: dict[str, Any] = {
        "segments": _segments(tokenizer, c_ids, c_mask),
        "truncated": bool(pairs.truncated),
        "pair": {
            "prompt": _segments(tokenizer, c_ids[:start], c_mask[:start]),
            "chosen": _segments(tokenizer, c_ids, c_mask, start),
            "rejected": _segments(tokenizer, r_ids, r_mask, start),
        },
    }
    if not len(pairs):
        shown["left_out"] = True
    if pairs.prompt_cut:
        shown["prompt_cut"] = True
    return shown
