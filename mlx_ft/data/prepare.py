"""Raw datasets → the one internal format: OpenAI-style chat JSONL, `{"messages": [{"role", "content"}, …]}`, or
`{"text": …}` lines for continued pre-training, or preference pairs: a chat line whose last assistant turn is the
chosen answer, plus `"rejected": {"role": "assistant", "content": …}`, the answer that should lose to it.

Reading files is `readers`, converting formats is `formats`, token-length statistics are `stats`; this module ties
them together. Every problem is reported as `file:line: what is wrong` before anything is written. The
train/valid/test split is a hash of each example, so it is the same on every machine and an example keeps its split
when data is appended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_ft.atomic import atomic_path
from mlx_ft.data import stats as data_stats
from mlx_ft.data.formats import FORMATS, Content, Example, Options, detect_format, format_needs, meta_fields, to_example
from mlx_ft.data.readers import DataError, Record, Source, read_records, sources
from mlx_ft.errors import UserError

SPLITS = ("train", "valid", "test")


def split_of(example: Example, seed: int, valid: float, test: float, group: str | None = None) -> tuple[str, float]:
    """The split an example belongs to, from a hash of its content: stable across machines and appends. The system
    prompt is left out of the hash, so rewording it never moves examples between splits. With `group`, the hash of
    the example's value of that field instead: examples sharing it stay together."""
    if group is not None:
        content = json.dumps(example.meta[group], ensure_ascii=False)
    elif example.text is not None:
        content = json.dumps(example.text, ensure_ascii=False)
    else:
        # A pair by its prompt alone: every pair answering one prompt lands in one split.
        kept = example.messages[:-1] if example.rejected is not None else example.messages
        turns = [m for m in kept if m["role"] != "system"]
        content = json.dumps(turns, ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(f"{seed}\0{content}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return ("test" if u < test else "valid" if u < test + valid else "train"), u


@dataclass
class Report:
    out: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    skipped: int = 0
    stats: data_stats.DataStats | None = None
    skipped_datasets: list[str] = field(default_factory=list)  # dataset_info.json entries left out, and why
    skipped_long: int = 0  # examples longer than max_seq_length left out (StatsSettings.skip_long)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        extra = f"; dropped {self.duplicates} duplicates" if self.duplicates else ""
        extra += f"; skipped {self.skipped} invalid" if self.skipped else ""
        extra += f"; skipped {self.skipped_long} longer than max_seq_length" if self.skipped_long else ""
        stats = f"\n{data_stats.format_stats(self.stats)}" if self.stats else ""
        notes = "".join(f"skipped {note}\n" for note in self.skipped_datasets)
        return f"{notes}{self.out}: {parts} ({self.format}){extra}{stats}"


class _NoFormat(ValueError):
    """A record whose keys fit no format: reported once per file for all records with the same keys."""


def _example(rec: Record, src: Source, opts: Options) -> tuple[str, Example]:
    """The record's format name and example; ValueError says what is wrong with it."""
    if not isinstance(rec.value, dict):
        raise ValueError("an example must be a JSON object")
    name = src.format or detect_format(rec.value)
    if name is None:
        raise _NoFormat()
    convert = src.convert or FORMATS[name].convert
    keep = rec.value.keys() if opts.keep is None else opts.keep
    return name, to_example(rec.where, convert(rec.value, opts), meta_fields(rec.value, keep))


def _no_format(path: Path, keys: tuple[str, ...], records: list[Record]) -> Record:
    """One problem for every record of a file whose keys are `keys` and fit no format: a CSV's at its header row."""
    fix = "rename them, or name the format with --format"
    if path.suffix.lower() == ".csv":
        return Record(
            path, 1, f"cannot tell the format from the header's columns ({', '.join(keys)}): {format_needs()}; {fix}"
        )
    shown = f"keys ({', '.join(keys)})" if keys else "no keys"
    more = f"; and {len(records) - 1} more lines like it" if len(records) > 1 else ""
    return Record(
        path, records[0].line, f"cannot tell the format of a record with {shown}: {format_needs()}; {fix}{more}"
    )


def _read_all(srcs: list[Source], opts: Options) -> tuple[list[Example], set[str], list[str], int]:
    """Every valid example, the format names seen, every problem (file:line: what is wrong) in file order, and how
    many records were invalid (more than the problems: records with the same unknown keys share one)."""
    examples, formats, problems, invalid = [], set(), [], 0
    for src in srcs:
        records, bad = read_records(src.path)
        unknown: dict[tuple[str, ...], list[Record]] = {}
        for rec in records:
            try:
                name, example = _example(rec, src, opts)
            except _NoFormat:
                unknown.setdefault(tuple(rec.value), []).append(rec)
                continue
            except ValueError as e:
                bad.append(Record(rec.file, rec.line, e))
                continue
            formats.add(name)
            examples.append(example)
        invalid += len(bad) + sum(map(len, unknown.values()))
        bad += [_no_format(src.path, keys, recs) for keys, recs in unknown.items()]
        problems += [f"{p.where}: {p.value}" for p in sorted(bad, key=lambda p: p.line)]
    return examples, formats, problems, invalid


def _unique(examples: list[Example]) -> list[Example]:
    """The examples without exact repeats, first occurrences kept in order."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = json.dumps(ex.row(), ensure_ascii=False, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def _place(
    examples: list[Example], seed: int, valid: float, test: float, group: str | None = None
) -> dict[str, list[Example]]:
    placed: dict[str, list[tuple[float, Example]]] = {s: [] for s in SPLITS}
    for ex in examples:
        split, u = split_of(ex, seed, valid, test, group)
        placed[split].append((u, ex))
    # A tiny dataset can hash nothing into a split it asked for: lend it the train example nearest to that split.
    for split, frac in (("valid", valid), ("test", test)):
        if frac > 0 and not placed[split] and len(placed["train"]) > 1:
            placed["train"].sort(key=lambda p: p[0])
            placed[split].append(placed["train"].pop(0))
    return {split: [ex for _, ex in placed[split]] for split in SPLITS}


def prepare(
    inputs: list[Path],
    out: Path,
    fmt: str | None = None,
    opts: Options = Options(),
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    skip_invalid: bool = False,
    datasets: list[str] | None = None,
    stats: data_stats.StatsSettings | None = None,
    group: str | None = None,
    tokenizer: Any = None,
) -> Report:
    """Convert, validate, de-duplicate and split `inputs` into `out/{train,valid,test}.jsonl`; with `stats`, measure
    token lengths under that model's chat template too (printed in the summary, written to prepare.json with how
    the set was fitted to max_seq_length, which training then follows; `tokenizer`: that model's, when the caller
    has it loaded), and leave out the long examples when it says `skip_long`. With `group`, examples sharing that
    field's value land in one split (paraphrases of one question, listings of one product): the test split then
    measures what was never seen, not near-copies of training examples."""
    _check_settings(fmt, valid, test)
    if group is not None and opts.keep is not None and group not in opts.keep:
        opts = dataclasses.replace(opts, keep=(*opts.keep, group))
    srcs, skipped_datasets = sources([Path(p) for p in inputs], fmt, datasets)
    examples, formats_seen, problems, invalid = _read_all(srcs, opts)
    if group is not None:
        examples, problems, invalid = _only_grouped(examples, group, problems, invalid)
    if problems and not skip_invalid:
        raise DataError(problems)
    if not examples:
        raise UserError(f"no valid examples in {', '.join(map(str, inputs))}{_empty_note(inputs)}")

    unique = _unique(examples)
    placed = _place(unique, seed, valid, test, group)
    measured = None
    if stats:  # measured before writing, so every problem and long example is named by the file the user gave
        placed, measured = _fit_lengths(placed, stats, tokenizer, len(unique))
    report = Report(
        Path(out),
        "+".join(sorted(formats_seen)),
        {split: len(placed[split]) for split in SPLITS},
        duplicates=len(examples) - len(unique),
        skipped=invalid,
        stats=measured,
        skipped_datasets=skipped_datasets,
        skipped_long=measured.count("skipped") if measured else 0,
    )
    recipe = _recipe(report, inputs, srcs, opts, group, stats, seed=seed, valid=valid, test=test)
    _write(report.out, placed, recipe)
    return report


def _check_settings(fmt: str | None, valid: float, test: float) -> None:
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise UserError("--valid and --test are fractions whose sum must stay below 1")


def _only_grouped(
    examples: list[Example], group: str, problems: list[str], invalid: int
) -> tuple[list[Example], list[str], int]:
    """The examples that have the --group-field, each one without it counted as invalid with its problem."""
    ungrouped = [f"{ex.where}: missing field {group!r} (--group-field)" for ex in examples if group not in ex.meta]
    return [ex for ex in examples if group in ex.meta], problems + ungrouped, invalid + len(ungrouped)


def _fit_lengths(
    placed: dict[str, list[Example]], stats: data_stats.StatsSettings, tokenizer: Any, n_unique: int
) -> tuple[dict[str, list[Example]], data_stats.DataStats]:
    """The splits fitted to max_seq_length as `stats` says, and their token statistics; an error when that leaves
    nothing."""
    placed, measured = data_stats.fit_splits(placed, stats, tokenizer)
    if not any(placed.values()):
        raise UserError(
            f"all {n_unique} examples are longer than max_seq_length {stats.max_seq_length}: skipping them "
            "leaves nothing; raise max_seq_length, or cut the prompts' start instead"
            " (prepare --truncate prompt; in the studio, the cut-the-prompt fix)"
        )
    return placed, measured


def _recipe(
    report: Report,
    inputs: list[Path],
    srcs: list[Source],
    opts: Options,
    group: str | None,
    stats: data_stats.StatsSettings | None,
    *,
    seed: int,
    valid: float,
    test: float,
) -> dict[str, Any]:
    """prepare.json: how the set was made and what came out."""
    return {
        "inputs": [str(p) for p in inputs],
        "datasets": sorted({s.dataset for s in srcs if s.dataset}) or None,
        "datasets_skipped": report.skipped_datasets or None,
        "format": report.format,
        "seed": seed,
        "valid": valid,
        "test": test,
        "system": opts.system,
        "instruction": opts.instruction,
        "recipe": str(opts.recipe.path) if opts.recipe else None,
        "group_field": group,
        "counts": report.counts,
        "duplicates_dropped": report.duplicates,
        "invalid_skipped": report.skipped,
        "stats": report.stats.to_dict() if report.stats else None,
        # How the set meets max_seq_length; training cuts it the same way and says what it leaves out (`Split.fit`).
        "fit": _fit(stats, report.skipped_long),
    }


def _write(out: Path, placed: dict[str, list[Example]], recipe: dict[str, Any]) -> None:
    # Every file is written under a temporary name first and all are renamed together at the end, so an interrupted
    # run never leaves a new train.jsonl beside an old valid.jsonl (which could put one example in both).
    with contextlib.ExitStack() as stack:
        for split in SPLITS:
            tmp = stack.enter_context(atomic_path(out / f"{split}.jsonl"))
            tmp.write_text(
                "".join(json.dumps(ex.row(), ensure_ascii=False) + "\n" for ex in placed[split]), encoding="utf-8"
            )
        tmp = stack.enter_context(atomic_path(out / "prepare.json"))
        tmp.write_text(json.dumps(recipe, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _empty_note(inputs: list[Path]) -> str:
    """Why there is nothing to read, when it is that the files hold nothing."""
    with contextlib.suppress(OSError):
        if all(not Path(p).read_bytes().strip() for p in inputs):
            return ": the file is empty" if len(inputs) == 1 else ": the files are empty"
    return ""


def _fit(stats: data_stats.StatsSettings | None, skipped_long: int) -> dict[str, Any] | None:
    if stats is None:
        return None
    return dataclasses.asdict(data_stats.Fit(stats.max_seq_length, stats.truncate, stats.skip_long, skipped_long))


class Split(list[Example]):
    """The examples of one prepared split, and how their set was fitted to max_seq_length when it was prepared
    (prepare.json's "fit"; None when it was prepared without token statistics): training cuts them the same way."""

    def __init__(self, examples: list[Example], fit: data_stats.Fit | None) -> None:
        super().__init__(examples)
        self.fit = fit


def stored_fit(data_dir: Path) -> data_stats.Fit | None:
    """The fit a prepared folder's prepare.json records (None: none recorded, or no readable prepare.json)."""
    try:
        recipe = json.loads((Path(data_dir) / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data_stats.Fit.from_dict(recipe.get("fit")) if isinstance(recipe, dict) else None


def _prepared_line(rec: dict[str, Any], opts: Options) -> Content:
    """A line of a prepared split: `{"text": …}`, `{"messages": […]}` or a pair, `{"messages": […], "rejected": …}`."""
    name = "text" if "text" in rec else "preference" if "rejected" in rec else "messages"
    return FORMATS[name].convert(rec, opts)


def common_system(examples: list[Example]) -> str | None:
    """The system prompt every conversation starts with, when they all share one: a model trained only with it
    should be used with it (inference defaults to it; the Modelfile's SYSTEM is it)."""
    firsts = {
        ex.messages[0]["content"] if ex.messages and ex.messages[0]["role"] == "system" else None
        for ex in examples
        if ex.text is None
    }
    return firsts.pop() if len(firsts) == 1 else None


def load_split(data_dir: Path, split: str) -> Split:
    """The examples of one prepared split (conversations, or `text` ones for continued pre-training), validated
    (file:line errors) as `prepare` would, with the fit their set was prepared with."""
    path = Path(data_dir) / f"{split}.jsonl"
    examples, _, problems, _ = _read_all([Source(path, "messages", _prepared_line)], Options(keep=None))
    if problems:
        raise DataError(problems)
    return Split(examples, stored_fit(data_dir))
