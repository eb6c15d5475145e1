"""`eval`: how well a run (or any model) does on a prepared split, and what training bought over the base model.

Loss and perplexity cover every learned token, exactly as validation in training does (same batches, same masked
loss); on a split of preference pairs they cover the chosen answers, and preference accuracy (the chosen answer's
summed log-probability above the rejected one's) and the mean log-probability margin come beside them. Generation
metrics score each example's final assistant turn (a pair's chosen answer), answered greedily in batches from the
prompt training put before it, each answer stopped near its own reference's length (`budgets`). With `compare_base`,
the base model is scored first and the adapter is then put on the same loaded model, so one load serves both columns.
With a recipe to hold answers to (`constrained_by`, `eval --constrained --recipe`), each column is answered a second
time with every answer held to its task's pattern, as `serve --task` holds them (columns "base constrained", "tuned
constrained"; generation metrics only, the loss does not change). A GRPO run's rewards (or any run's, with
`rewards`) score every answer of every column too: the mean weighted total ("reward") and each reward's mean
("reward_<name>"), as GRPO's validation reports them. Every pass prints progress lines (`mlx_ft.progress`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.nn as nn

from mlx_ft import data, progress
from mlx_ft.atomic import atomic_dir
from mlx_ft.data import recipes
from mlx_ft.errors import UserError
from mlx_ft.inference import constrain, generation, scores
from mlx_ft.inference.sampling import Constraint, Sampling
from mlx_ft.models import loader
from mlx_ft.resources import local_or_shipped
from mlx_ft.training import rewards as rewards_mod
from mlx_ft.training.batches import TokenizedChats
from mlx_ft.training.objectives import SFT, Preference
from mlx_ft.training.preference import pair_scores

DEFAULT_MAX_SEQ_LENGTH = 2048
DEFAULT_MAX_TOKENS = 1024  # the cap on every example's generation budget, unless --max-tokens sets another
GROUP_FIELD = "task"  # examples carrying this field are scored per value as well
SPLIT_HINT = " (choose another with --split or --data)"  # the terminal's words; the studio names no flags


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
    limit: int | None = None
    plan: Plan | None = None
    generated_tokens: dict[str, int] = field(default_factory=dict)  # column -> tokens its answers took
    generation_seconds: dict[str, float] = field(default_factory=dict)
    rewards: rewards_mod.Rewards | None = None  # what scored the answers' rewards, if anything did


@dataclass
class Plan:
    """What an eval will generate: its examples, the ones with an answer to generate, and each one's budget."""

    data_dir: Path
    split: str
    examples: list[data.Example]
    todo: list[Target]
    budgets: list[int]  # the most tokens each of `todo` may generate
    cap: int

    @property
    def budget_tokens(self) -> int:
        """The most tokens one pass (one column) can generate."""
        return sum(self.budgets)

    @property
    def budget_text(self) -> str:
        return f"per example: 2 x reference + 16 tokens (cap {self.cap})"


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


def budgets(tokenizer: Any, todo: list[Target], cap: int) -> list[int]:
    """Each example's generation budget: twice its own reference answer's tokens + 16, at most `cap`. Room for any
    right answer, while a rambling one stops near its reference's length: one long answer in the set no longer
    lets every example generate that long."""
    return [min(cap, 2 * len(tokenizer.encode(t.expected, add_special_tokens=False)) + 16) for t in todo]


def make_plan(
    tokenizer: Any, data_dir: Path, split: str, limit: int | None, max_tokens: int | None, hint: str = ""
) -> Plan:
    """The examples of `split` (the first `limit`) and their budgets under the cap `max_tokens`."""
    if not (data_dir / f"{split}.jsonl").is_file():
        raise UserError(f"{data_dir}: no {split}.jsonl to evaluate on{hint}")
    examples = data.load_split(data_dir, split)[:limit]
    if not examples:
        raise UserError(f"{data_dir / f'{split}.jsonl'} has no examples")
    todo = targets(examples)
    cap = max_tokens or DEFAULT_MAX_TOKENS
    return Plan(data_dir, split, examples, todo, budgets(tokenizer, todo, cap), cap)


def plan_for_run(
    run: Path, split: str = "test", limit: int | None = None, max_tokens: int | None = None, tokenizer: Any = None
) -> Plan:
    """What `eval RUN` would generate, without loading the model (only its tokenizer, unless one is given): for a
    cost estimate before the eval starts."""
    cfg = loader.run_config(str(run))
    if cfg is None:
        raise UserError(f"{run} is not a run folder")
    if tokenizer is None:
        from mlx_ft.data import stats as data_stats

        tokenizer = data_stats.load_tokenizer(cfg.model)
    return make_plan(tokenizer, local_or_shipped(cfg.data), split, limit, max_tokens)


def split_loss(
    loaded: loader.Loaded, examples: list[data.Example], batch_size: int, stage: str | None = None
) -> dict[str, float]:
    """Mean loss over the learned tokens of `examples`, and its perplexity."""
    cfg = loaded.cfg
    max_len = cfg.max_seq_length if cfg else DEFAULT_MAX_SEQ_LENGTH
    sft = SFT(cfg.mask_prompt if cfg else True)
    chats = sft.tokenize(examples, loaded.tokenizer, max_len, "eval")
    if not len(chats):
        return {}
    loss = mean_loss(sft, loaded.model, chats, min(batch_size, len(chats)), max_len, stage)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def mean_loss(
    sft: SFT, model: nn.Module, chats: TokenizedChats, batch_size: int, max_len: int, stage: str | None
) -> float:
    """Mean loss per learned token over all of `chats`: validation's own `SFT.evaluate` over every batch, with
    progress lines."""
    all_tokens = max(sum(len(ids) for ids, _ in chats.items), 1)
    reporter = progress.Reporter(stage, len(chats), "examples", "tok/s") if stage else None
    seen = tokens = 0

    def counted(lengths: list[int], learned: int) -> None:
        nonlocal seen, tokens
        seen, tokens = seen + len(lengths), tokens + sum(lengths)

    def report() -> None:
        if reporter is not None:
            reporter.update(seen, tokens, tokens / all_tokens)

    loss = sft.evaluate(model, chats, batch_size, max_len, -1, on_batch=counted, after_batch=report)["loss"]
    if reporter is not None:
        reporter.finish(tokens)
    return loss


def split_preferences(
    loaded: loader.Loaded, examples: list[data.Example], batch_size: int, stage: str | None = None
) -> dict[str, Any]:
    """For a split of preference pairs: how often the model gives the chosen answer the higher log-probability, and
    the mean difference (empty for other data)."""
    pairs = [ex for ex in examples if ex.rejected is not None]
    if not pairs:
        return {}
    max_len = loaded.cfg.max_seq_length if loaded.cfg else DEFAULT_MAX_SEQ_LENGTH
    tokenized = Preference.tokenize(pairs, loaded.tokenizer, max_len, "pairs")  # as DPO and ORPO read them
    if not len(tokenized):
        return {}
    loaded.model.eval()
    # pair_scores is one call: a line before it and one after
    reporter = progress.Reporter(stage, len(tokenized), "pairs") if stage else None
    scored = pair_scores(loaded.model, tokenized, min(batch_size, len(tokenized)), max_len)
    if reporter is not None:
        reporter.finish()
    return scored


@dataclass
class Column:
    """One model's scores on the split, its answers, and what generating them took."""

    metrics: dict[str, Any]
    outputs: list[str]
    generated_tokens: int
    seconds: float


def _score_column(loaded: loader.Loaded, plan: Plan, sampling: Sampling, batch_size: int, name: str) -> Column:
    print(f"mlx_ft: scoring {name}: {loaded.label}", file=sys.stderr)
    examples = plan.examples
    # Unfused: exactly the model training scored.
    column: dict[str, Any] = split_loss(loaded, examples, batch_size, f"scoring {name} loss")
    column.update(split_preferences(loaded, examples, batch_size, f"scoring {name} preferences"))
    loaded.fuse()
    answered = _answer_column(loaded, plan, sampling, name)
    return Column({**column, **answered.metrics}, answered.outputs, answered.generated_tokens, answered.seconds)


def _answer_column(
    loaded: loader.Loaded,
    plan: Plan,
    sampling: Sampling,
    name: str,
    constraints: list[Constraint | None] | None = None,
) -> Column:
    """The generation half of a column: every example answered (held to `constraints` when given) and scored."""
    todo = plan.todo
    # The model answers with the tools it was offered in training.
    prompts = generation.prompts_for(loaded.tokenizer, [t.prompt for t in todo], [t.example.tools for t in todo])
    tic = time.perf_counter()
    answers = generation.answers(
        loaded.model,
        loaded.tokenizer,
        prompts,
        sampling,
        plan.budgets,
        f"scoring {name}" if todo else None,
        constraints,
    )
    seconds = time.perf_counter() - tic
    outputs = [a.text for a in answers]  # as served: whole characters
    metrics = scores.score(outputs, [t.expected for t in todo]) if todo else {}
    return Column(metrics, outputs, sum(len(a.tokens) for a in answers), round(seconds, 3))


def held_answers(recipe: recipes.Recipe, todo: list[Target], tokenizer: Any) -> list[Constraint | None]:
    """What each example's answer is held to under `recipe`: its task's pattern (the example's `task` field names
    the task, or the recipe has one), None for a task that holds nothing."""
    by_task: dict[str, Constraint | None] = {}
    held = []
    for t in todo:
        name = t.example.meta.get(GROUP_FIELD)
        try:
            task = recipe.task(name if isinstance(name, str) else None)
        except ValueError as e:
            raise UserError(f"{t.example.where}: {e}") from None
        if task.name not in by_task:
            by_task[task.name] = constrain.for_task(recipe.path, task, tokenizer)
        held.append(by_task[task.name])
    if not any(held):
        raise UserError(f"recipe {recipe.name}: none of these examples' tasks has a pattern to hold answers to")
    return held


def eval_rewards(
    loaded: loader.Loaded, specs: list | None = None, recipe: str | None = None
) -> rewards_mod.Rewards | None:
    """The rewards eval scores answers with: `specs` (a config's `rewards` list) when given, reading `recipe` (default
    the run's); else a GRPO run's own, its reward_file and recipe included; None for any other run or model. A spec
    that cannot be used is a UserError line from `rewards.build`."""
    cfg = loaded.cfg
    if specs is not None:
        return rewards_mod.build(specs, _rewards_recipe(loaded, specs, recipe), None, loaded.tokenizer)
    if cfg is None or cfg.train_mode != "grpo":
        return None
    return rewards_mod.build(cfg.rewards, cfg.recipe, cfg.reward_file, loaded.tokenizer)


def _rewards_recipe(loaded: loader.Loaded, specs: list | None, recipe: str | None) -> str | None:
    """The recipe the rewards read: `recipe` for given `specs`, else (or by default) the run's."""
    return (recipe if specs is not None else None) or (loaded.cfg.recipe if loaded.cfg else None)


def reward_scores(
    rewards: rewards_mod.Rewards, todo: list[Target], outputs: list[str], recipe: recipes.Recipe | None = None
) -> list[dict[str, Any]]:
    """Each answer's rewards: `reward` (the weighted total) and `reward_<name>` per reward; where a choice reward
    holds the example to a label set (its `labels` option, or its task's labels in `recipe`, the example's `task`
    field naming the task), `no_label` says whether the answer is none of them."""
    rows = []
    for t, out in zip(todo, outputs, strict=True):
        values = rewards.score(data.last_user_text(t.prompt), out, t.expected)
        row: dict[str, Any] = {"reward": rewards.total(values)}
        row.update({f"reward_{n}": v for n, v in zip(rewards.names, values)})
        labels = _label_set(rewards, t, recipe)
        if labels is not None:
            row["no_label"] = out.strip() not in labels
        rows.append(row)
    return rows


def _label_set(rewards: rewards_mod.Rewards, t: Target, recipe: recipes.Recipe | None) -> tuple[str, ...] | None:
    if None in rewards.labels:
        return rewards.labels[None]
    if not rewards.labels or recipe is None:
        return None
    name = t.example.meta.get(GROUP_FIELD)
    try:
        task = recipe.task(name if isinstance(name, str) else None)
    except ValueError:
        return None
    return rewards.labels.get(task.name)


def mean_rewards(rows: list[dict[str, Any]], members: list[int] | None = None) -> dict[str, float]:
    """The mean of each key of `rows` (those at `members`), over the rows that have it."""
    picked = rows if members is None else [rows[i] for i in members]
    keys = dict.fromkeys(k for r in picked for k in r)
    return {k: sum(float(r[k]) for r in picked if k in r) / sum(k in r for r in picked) for k in keys}


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
    constrained_by: recipes.Recipe | None = None,
    rewards: list | None = None,
    rewards_recipe: str | None = None,
) -> EvalReport:
    """Score `source` on `split` and write `metrics.json` and `predictions.jsonl` into `out` (default RUN/eval).
    `max_tokens` caps every example's budget (default DEFAULT_MAX_TOKENS); `constrained_by`: also score every column
    with its answers held to this recipe's patterns; `rewards` (with `rewards_recipe`): score the answers with these
    rewards in place of a GRPO run's own (`eval_rewards`)."""
    loaded = loader.load(source, adapter=False)
    if compare_base and loaded.cfg is None:
        raise UserError(f"--compare-base needs a run folder (base model + adapter); {source} is a plain model")
    scoring = eval_rewards(loaded, rewards, rewards_recipe)  # before any pass: a bad spec costs one line, not an eval
    labels_recipe = None  # what tells which labels a choice reward holds each answer to, when its tasks do
    if scoring is not None and scoring.labels and (ref := _rewards_recipe(loaded, rewards, rewards_recipe)):
        labels_recipe = recipes.load(ref)
    data_dir = _data_dir(data_spec, loaded)
    plan = make_plan(loaded.tokenizer, data_dir, split, limit, max_tokens, SPLIT_HINT)
    todo = plan.todo
    sampling = Sampling(max_tokens=plan.cap)
    held = held_answers(constrained_by, todo, loaded.tokenizer) if constrained_by else None

    names = (["base", "tuned"] if compare_base else []) if loaded.cfg else ["model"]
    names = names or ["tuned"]
    columns: dict[str, Column] = {}
    for name in names:
        if name == "tuned":
            loaded.apply_adapter()
        columns[name] = _score_column(loaded, plan, sampling, batch_size, name)
        if held is not None:
            columns[f"{name} constrained"] = _answer_column(loaded, plan, sampling, f"{name} constrained", held)
    outputs = {name: c.outputs for name, c in columns.items()}
    earned: dict[str, list[dict[str, Any]]] = {}
    if scoring is not None and todo:
        for name, c in columns.items():
            earned[name] = reward_scores(scoring, todo, c.outputs, labels_recipe)
            c.metrics.update(mean_rewards(earned[name]))

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
        for name, rows in earned.items():
            for value, metrics in groups[name].items():
                metrics.update(mean_rewards(rows, [i for i, v in enumerate(values) if v == value]))

    # A run's results live in it (RUN/eval, or RUN/best/eval for its best adapter); a plain model's in ./eval/NAME.
    out = Path(out) if out else (Path(source) / "eval" if loaded.run else Path("eval") / Path(source).name)
    report = EvalReport(
        source,
        data_dir,
        split,
        out,
        {name: c.metrics for name, c in columns.items()},
        field_name,
        groups,
        limit,
        plan,
        {name: c.generated_tokens for name, c in columns.items()},
        {name: c.seconds for name, c in columns.items()},
        scoring,
    )
    _write(report, todo, outputs, earned)
    return report


def _write(
    report: EvalReport,
    todo: list[Target],
    outputs: dict[str, list[str]],
    earned: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    earned = earned or {}
    plan = report.plan
    assert plan is not None
    summary = {
        "source": report.source,
        "data": str(report.data_dir),
        "split": report.split,
        "limit": report.limit,
        "max_tokens": plan.cap,  # the cap on every example's budget
        "generation_budget": plan.budget_text,
        "budget_tokens": plan.budget_tokens,  # the most one column's answers could take
        "generated_tokens": report.generated_tokens,  # what each column's answers took
        "generation_seconds": report.generation_seconds,
        "metrics": report.columns,
        "by_field": report.group_field,
        "groups": report.groups,
        # each reward's name and weight, in order (null: no rewards scored)
        "rewards": dict(zip(report.rewards.names, report.rewards.weights)) if report.rewards else None,
    }
    rows = []
    for i, t in enumerate(todo):
        row: dict[str, Any] = {"where": t.example.where, "input": t.prompt, "expected": t.expected, **t.example.meta}
        for name, outs in outputs.items():
            row[name] = outs[i]
        row["scores"] = {
            name: {**scores.example_scores(outs[i], t.expected), **(earned[name][i] if name in earned else {})}
            for name, outs in outputs.items()
        }
        rows.append(row)
    with atomic_dir(report.out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (tmp / "predictions.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )


# ------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Metric:
    """A score's key in metrics.json, its label for people and how its values are shown."""

    key: str
    label: str
    kind: str  # "percent" (a share, shown as 12.5%), "integer" (a count), or "decimal" with `digits`
    digits: int = 3
    in_table: bool = True  # the terminal's table shows it (counts are said in its heading instead)

    def shown(self, value: Any) -> str:
        if value is None:
            return "n/a"
        if self.kind == "percent":
            return f"{value:.1%}"
        if self.kind == "integer":
            return f"{int(value):d}"
        return f"{value:.{self.digits}f}"


# The one table of what eval reports: the terminal's table, metrics.json's readers and the studio take labels here.
METRICS = [
    Metric("loss", "Loss", "decimal"),
    Metric("perplexity", "Perplexity", "decimal", 2),
    Metric("pairs", "Pairs", "integer", in_table=False),
    Metric("preference_accuracy", "Preference accuracy", "percent"),
    Metric("logp_margin", "Log-prob margin", "decimal"),
    Metric("n", "Answers scored", "integer", in_table=False),
    Metric("exact_match", "Exact match", "percent"),
    Metric("label_accuracy", "Label accuracy", "percent"),
    Metric("bleu4", "BLEU-4", "decimal"),
    Metric("rouge_l", "ROUGE-L", "decimal"),
    Metric("length_ratio", "Length ratio", "decimal", 2),
    Metric("reward", "Mean reward", "decimal"),  # each reward's own mean ("reward_<name>") follows it: `_metrics`
    Metric("no_label", "Not a label (choice)", "percent"),
]
REWARD_PREFIX = "reward_"


def _metrics(columns: dict[str, dict[str, Any]]) -> list[Metric]:
    """METRICS, with a row for each reward's mean after the mean reward (their names are the run's own)."""
    names = dict.fromkeys(k for c in columns.values() for k in c if k.startswith(REWARD_PREFIX))
    own = [Metric(k, f"Reward: {k.removeprefix(REWARD_PREFIX)}", "decimal") for k in names]
    out = []
    for m in METRICS:
        out.append(m)
        if m.key == "reward":
            out += own
    return out


def _terminal_label(label: str) -> str:
    """The table's lower-case spelling ("exact match"), acronyms kept ("BLEU-4")."""
    return label if label[1:2].isupper() else label[0].lower() + label[1:]


def labelled(columns: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each score some column has, in METRICS order: key, label, kind, and per column its value and its text."""
    rows = []
    for m in _metrics(columns):
        if all(m.key not in c for c in columns.values()):
            continue
        values = {name: c.get(m.key) for name, c in columns.items()}
        shown = {name: m.shown(v) if m.key in columns[name] else "-" for name, v in values.items()}
        rows.append({"key": m.key, "label": m.label, "kind": m.kind, "values": values, "shown": shown})
    return rows


def _table(columns: dict[str, dict[str, Any]], title: str) -> list[str]:
    names = list(columns)
    header = [title, *names] + (["change"] if names == ["base", "tuned"] else [])
    body = []
    for m in _metrics(columns):
        if not m.in_table or all(m.key not in columns[n] for n in names):
            continue
        values = [columns[n].get(m.key) for n in names]
        # "-": not measured for that column; "n/a": measured, but undefined for these answers (see _NOT_APPLICABLE).
        cells = [_terminal_label(m.label)]
        cells += ["-" if m.key not in columns[n] else m.shown(v) for n, v in zip(names, values)]
        if len(header) > len(cells) and None not in values:
            delta = values[1] - values[0]
            cells.append(("+" if delta >= 0 else "") + m.shown(delta))
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
    if report.rewards is not None:
        lines += ["", rewards_mod.describe(report.rewards)]
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
    if report.plan is not None and report.generated_tokens:
        generated = ", ".join(f"{name} {n:,}" for name, n in report.generated_tokens.items())
        lines += [
            "",
            f"generation budget: {report.plan.budget_text}, at most {report.plan.budget_tokens:,} tokens a column; "
            f"generated: {generated}",
        ]
    lines += ["", f"written to {report.out}/metrics.json and predictions.jsonl"]
    return "\n".join(lines)
