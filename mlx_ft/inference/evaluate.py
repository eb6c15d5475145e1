"""`eval`: how well a run (or any model) does on a prepared split, and what training bought over the base model.

Loss and perplexity cover every learned token, exactly as validation in training does (same batches, same masked
loss); on a split of preference pairs they cover the chosen answers, and preference accuracy (the chosen answer's
summed log-probability above the rejected one's) and the mean log-probability margin come beside them. Generation
metrics score each example's final assistant turn (a pair's chosen answer), answered greedily in batches from the
prompt training put before it. With `compare_base`, the base model is scored first and the adapter is then put on
the same loaded model, so one load serves both columns.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_ft import data
from mlx_ft.atomic import atomic_dir
from mlx_ft.errors import UserError
from mlx_ft.inference import generation, scores
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.resources import local_or_shipped
from mlx_ft.training import loop as training_loop
from mlx_ft.training.batches import TokenizedChats, TokenizedPairs
from mlx_ft.training.preference import pair_scores

DEFAULT_MAX_SEQ_LENGTH = 2048
GROUP_FIELD = "task"  # examples carrying this field are scored per value as well


@dataclass
class Target:
    """One example to answer: the conversation before its final assistant turn, and that turn's text."""

    example: data.Example
    prompt: list[dict[str, Any]]
    expected: str


@dataclass
class EvalReport:
    source: str
    data_dir: Path
    split: str
    out: Path
    columns: dict[str, dict[str, Any]]  # "base" / "tuned" (or "model" for a plain model) -> metrics
    group_field: str | None = None
    groups: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # column -> group value -> metrics


def targets(examples: list[data.Example]) -> list[Target]:
    out = []
    for ex in examples:
        if ex.text is not None:
            continue  # plain text has no answer to generate; it still counts in the loss
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        out.append(Target(ex, ex.messages[:last], ex.messages[last]["content"]))
    return out


def _data_dir(spec: str | None, loaded: loader.Loaded) -> Path:
    if spec is None and loaded.cfg is None:
        raise UserError(f"{loaded.source} is not a run folder; say which data to evaluate on with --data DIR")
    return local_or_shipped(spec if spec is not None else loaded.cfg.data)  # type: ignore[union-attr]


def split_loss(loaded: loader.Loaded, examples: list[data.Example], batch_size: int) -> dict[str, float]:
    """Mean loss over the learned tokens of `examples`, and its perplexity."""
    cfg = loaded.cfg
    max_len = cfg.max_seq_length if cfg else DEFAULT_MAX_SEQ_LENGTH
    chats = TokenizedChats(examples, loaded.tokenizer, cfg.mask_prompt if cfg else True, max_len, "eval")
    if not len(chats):
        return {}
    loss = training_loop.evaluate(loaded.model, chats, min(batch_size, len(chats)), max_len, num_batches=-1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def split_preferences(loaded: loader.Loaded, examples: list[data.Example], batch_size: int) -> dict[str, Any]:
    """For a split of preference pairs: how often the model gives the chosen answer the higher log-probability, and
    the mean difference (empty for other data)."""
    pairs = [ex for ex in examples if ex.rejected is not None]
    if not pairs:
        return {}
    max_len = loaded.cfg.max_seq_length if loaded.cfg else DEFAULT_MAX_SEQ_LENGTH
    tokenized = TokenizedPairs(pairs, loaded.tokenizer, max_len, "pairs")
    if not len(tokenized):
        return {}
    loaded.model.eval()
    return pair_scores(loaded.model, tokenized, min(batch_size, len(tokenized)), max_len)


def _score_column(
    loaded: loader.Loaded,
    examples: list[data.Example],
    todo: list[Target],
    sampling: Sampling,
    batch_size: int,
    name: str,
) -> tuple[dict[str, Any], list[str]]:
    print(f"mlx_ft: scoring {name}: {loaded.label}", file=sys.stderr)
    column: dict[str, Any] = split_loss(loaded, examples, batch_size)  # unfused: exactly the model training scored
    column.update(split_preferences(loaded, examples, batch_size))
    loaded.fuse()
    outputs = generation.answer_many(
        loaded.model,
        loaded.tokenizer,
        [t.prompt for t in todo],
        sampling,
        desc=f"answering ({name})",
        tools=[t.example.tools for t in todo],  # the model answers with the tools it was offered in training
    )
    if todo:
        column.update(scores.score(outputs, [t.expected for t in todo]))
    return column, outputs


def evaluate(
    source: str,
    data_spec: str | None = None,
    split: str = "test",
    compare_base: bool = False,
    by_field: str | None = None,
    out: Path | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
) -> EvalReport:
    """Score `source` on `split` and write `metrics.json` and `predictions.jsonl` into `out` (default RUN/eval)."""
    loaded = loader.load(source, adapter=False)
    if compare_base and loaded.cfg is None:
        raise UserError(f"--compare-base needs a run folder (base model + adapter); {source} is a plain model")
    data_dir = _data_dir(data_spec, loaded)
    if not (data_dir / f"{split}.jsonl").is_file():
        raise UserError(f"{data_dir}: no {split}.jsonl to evaluate on (choose another with --split or --data)")
    examples = data.load_split(data_dir, split)[:limit]
    if not examples:
        raise UserError(f"{data_dir / f'{split}.jsonl'} has no examples")
    todo = targets(examples)
    longest = max((len(loaded.tokenizer.encode(t.expected, add_special_tokens=False)) for t in todo), default=0)
    # Twice the longest expected answer leaves room for any right answer and stops a rambling base model early.
    sampling = Sampling(max_tokens=max_tokens or min(1024, 2 * longest + 16))

    plan = (["base", "tuned"] if compare_base else []) if loaded.cfg else ["model"]
    plan = plan or ["tuned"]
    columns: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[str]] = {}
    for name in plan:
        if name == "tuned":
            loaded.apply_adapter()
        columns[name], outputs[name] = _score_column(loaded, examples, todo, sampling, batch_size, name)

    field_name = by_field or (GROUP_FIELD if any(GROUP_FIELD in t.example.meta for t in todo) else None)
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    if field_name:
        values = [str(t.example.meta.get(field_name, "(none)")) for t in todo]
        if by_field and all(v == "(none)" for v in values):
            raise UserError(
                f"no example in {data_dir / f'{split}.jsonl'} has a field {by_field!r} "
                "(prepare keeps `task`, and others named with --keep-field)"
            )
        groups = {name: scores.by_group(outs, [t.expected for t in todo], values) for name, outs in outputs.items()}

    # A run's results live in it (RUN/eval, or RUN/best/eval for its best adapter); a plain model's in ./eval/NAME.
    out = Path(out) if out else (Path(source) / "eval" if loaded.run else Path("eval") / Path(source).name)
    report = EvalReport(source, data_dir, split, out, columns, field_name, groups)
    _write(report, todo, outputs, sampling)
    return report


def _write(report: EvalReport, todo: list[Target], outputs: dict[str, list[str]], sampling: Sampling) -> None:
    summary = {
        "source": report.source,
        "data": str(report.data_dir),
        "split": report.split,
        "max_tokens": sampling.max_tokens,
        "metrics": report.columns,
        "by_field": report.group_field,
        "groups": report.groups,
    }
    rows = []
    for i, t in enumerate(todo):
        row: dict[str, Any] = {"where": t.example.where, "input": t.prompt, "expected": t.expected, **t.example.meta}
        for name, outs in outputs.items():
            row[name] = outs[i]
        row["scores"] = {name: scores.example_scores(outs[i], t.expected) for name, outs in outputs.items()}
        rows.append(row)
    with atomic_dir(report.out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (tmp / "predictions.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )


# ------------------------------------------------------------------------------------------------------ the table

_ROWS = [
    ("loss", "loss", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("preference_accuracy", "preference accuracy", "{:.1%}"),
    ("logp_margin", "log-prob margin", "{:.3f}"),
    ("exact_match", "exact match", "{:.1%}"),
    ("label_accuracy", "label accuracy", "{:.1%}"),
    ("bleu4", "BLEU-4", "{:.3f}"),
    ("rouge_l", "ROUGE-L", "{:.3f}"),
    ("length_ratio", "length ratio", "{:.2f}"),
]


def _table(columns: dict[str, dict[str, Any]], title: str) -> list[str]:
    names = list(columns)
    header = [title, *names] + (["change"] if names == ["base", "tuned"] else [])
    body = []
    for key, label, fmt in _ROWS:
        if all(key not in columns[n] for n in names):
            continue
        values = [columns[n].get(key) for n in names]
        # "-": not measured for that column; "n/a": measured, but undefined for these answers (see _NOT_APPLICABLE).
        cells = [label] + [
            "-" if key not in columns[n] else "n/a" if v is None else fmt.format(v) for n, v in zip(names, values)
        ]
        if len(header) > len(cells) and None not in values:
            delta = values[1] - values[0]
            cells.append(("+" if delta >= 0 else "") + fmt.format(delta))
        body.append(cells)
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *body]
    ]


_NOT_APPLICABLE = {
    "bleu4": "BLEU-4 n/a: no expected answer is 4 tokens long, so there is no 4-gram to match "
    "(exact match and ROUGE-L score such short answers)"
}


def _notes(tables: list[dict[str, dict[str, Any]]]) -> list[str]:
    """A line for each score some table shows as n/a, saying why."""
    return [
        note
        for key, note in _NOT_APPLICABLE.items()
        if any(key in col and col[key] is None for t in tables for col in t.values())
    ]


def _confusion(name: str, table: dict[str, dict[str, int]]) -> list[str]:
    cols = sorted({c for row in table.values() for c in row}, key=lambda c: (c == "(other)", c))
    width = max(len(x) for x in [*table, *cols, "expected \\ answered"])
    lines = [
        f"confusion ({name}): rows expected, columns answered",
        "  ".join(["expected \\ answered".ljust(width), *(c.rjust(width) for c in cols)]),
    ]
    for label, row in table.items():
        lines.append("  ".join([label.ljust(width), *(str(row.get(c, 0)).rjust(width) for c in cols)]))
    return lines


def format_report(report: EvalReport) -> str:
    n = next((c.get("n") for c in report.columns.values() if c.get("n") is not None), 0)
    lines = [f"{report.source} on {report.data_dir / report.split}.jsonl ({n} answers scored)", ""]
    lines += _table(report.columns, "metric")
    for name, col in report.columns.items():
        if col.get("confusion"):
            lines += ["", *_confusion(name, col["confusion"])]
    tables = [report.columns]
    if report.group_field:
        for value in sorted({v for g in report.groups.values() for v in g}):
            tables.append({name: g.get(value, {}) for name, g in report.groups.items()})
            lines += ["", *_table(tables[-1], f"{report.group_field} = {value}")]
    if notes := _notes(tables):
        lines += ["", *notes]
    lines += ["", f"written to {report.out}/metrics.json and predictions.jsonl"]
    return "\n".join(lines)
