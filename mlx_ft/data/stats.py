"""Token lengths of prepared splits as the model will see them: chat examples rendered by the model's own chat
template, text examples by its plain tokenizer (both through `chat_template`, as training tokenizes them). `prepare`
prints and records them, so that a max_seq_length that cuts many examples shows before training rather than during
it.

What training does to an example past max_seq_length lives here too (`fit_rows`), so the counts `prepare` and the
studio report are the ones training meets: its end is cut; with truncate "prompt", first its prompt's start; a pair
left without an answer token is left out. `prepare` records how a set was fitted (`Fit`, prepare.json's "fit") and
training cuts the same way."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlx_ft import chat_template, models
from mlx_ft import config as config_mod
from mlx_ft.data.formats import Example
from mlx_ft.data.readers import DataError
from mlx_ft.errors import UserError

# How training meets an example longer than max_seq_length: "none" cuts its end (mlx-lm's way: a pair whose prompt
# fills the length keeps no answer token and is left out); "prompt" first cuts its prompt's start, keeping the answer
# whole where it fits, as TRL's truncation_mode="keep_end" does.
TRUNCATE = ("none", "prompt")
Row = tuple[list[int], list[int]]  # token ids and the 0/1 loss weight of each


@dataclass(frozen=True)
class StatsSettings:
    model: str  # model source, as `train` takes it
    max_seq_length: int
    truncate: str = "none"  # one of TRUNCATE: how training will cut long examples (prepare.json records it)
    skip_long: bool = False  # prepare leaves out every example longer than max_seq_length


@dataclass(frozen=True)
class Fit:
    """How a prepared set was fitted to max_seq_length (prepare.json's "fit"): training reads it, cuts the set's
    examples the same way, and says so when its own max_seq_length differs."""

    max_seq_length: int
    truncate: str = "none"
    skip_long: bool = False
    skipped_long: int = 0  # examples left out by skip_long

    @classmethod
    def from_dict(cls, value: Any) -> Fit | None:
        """The fit recorded in a prepare.json, or None where there is none (prepared without token statistics)
        or it is not one we wrote."""
        if not isinstance(value, dict):
            return None
        try:
            fit = cls(**value)
        except TypeError:
            return None
        ok = isinstance(fit.max_seq_length, int) and fit.truncate in TRUNCATE and isinstance(fit.skip_long, bool)
        return fit if ok else None


@dataclass(frozen=True)
class Long:
    """An example longer than max_seq_length, named by where it came from (file:line), and what happens to it:
    "cut" (its end), "prompt_cut" (its prompt's start; the answer kept), "left_out" (training keeps no answer token
    of it) or "skipped" (not stored: skip_long)."""

    where: str
    tokens: int
    fate: str


@dataclass(frozen=True)
class Measure:
    """One example: its tokens as training sees them, and what training's cut at max_seq_length does to it."""

    tokens: int
    prompt_cut: bool = False
    left_out: bool = False


@dataclass(frozen=True)
class SplitStats:
    examples: int
    min: int | None = None
    median: int | None = None  # the lower median: a length some example really has
    p95: int | None = None
    max: int | None = None
    truncated: int = 0  # examples the trainer would cut at max_seq_length
    mean: float | None = None
    left_out: int = 0  # of them, pairs training leaves out: no answer token is left
    prompt_cut: int = 0  # of them, examples whose prompt's start is cut (truncate "prompt")


@dataclass(frozen=True)
class DataStats:
    model: str
    max_seq_length: int
    splits: dict[str, SplitStats]
    truncate: str = "none"
    long: list[Long] = field(default_factory=list)  # every example past max_seq_length, skipped ones included

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["long"]  # one entry per long example: the studio shows them; prepare.json keeps the counts
        return out

    def count(self, fate: str) -> int:
        return sum(1 for x in self.long if x.fate == fate)


def settings(
    model: str | None = None, max_seq_length: int | None = None, truncate: str = "none", skip_long: bool = False
) -> StatsSettings:
    """The given model and length, the missing ones taken from the config file `train` would read."""
    if model is None or max_seq_length is None:
        cfg = config_mod.load(config_mod.default_path())
        model = cfg.model if model is None else model
        max_seq_length = cfg.max_seq_length if max_seq_length is None else max_seq_length
    if max_seq_length < 1:
        raise UserError("--max-seq-length must be at least 1")
    return StatsSettings(model, max_seq_length, truncate, skip_long)


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer as training loads it (mlx_lm's wrapper, which chat_template expects), without weights:
    a hub model downloads only its tokenizer files."""
    from mlx_lm.utils import load_tokenizer as mlx_lm_load_tokenizer  # heavy import, only when stats are asked for

    path = models.resolve(model)
    try:
        return mlx_lm_load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 -- hub, network and format failures all mean "no tokenizer to measure with"
        if Path(path).is_dir():
            raise  # a local folder that passed resolve's checks but fails to load is more likely our bug
        raise UserError(f"could not load the tokenizer of {model!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


def is_truncated(n_tokens: int, max_seq_length: int) -> bool:
    """Whether training cuts an example of `n_tokens`: it feeds max_seq_length ids and predicts one more, so it keeps
    max_seq_length + 1 of them (batches.TokenizedChats)."""
    return n_tokens > max_seq_length + 1


def token_length(tokenizer: Any, example: Example) -> int:
    """Tokens of the example as training sees it; of a pair, its longer side (both go through the model)."""
    if example.text is not None:
        return len(chat_template.text_tokens(tokenizer, example.text)[0])  # as training sees it: EOS appended
    if example.rejected is not None:
        return max(len(ids) for ids, _ in pair_rows(tokenizer, example))
    return len(chat_template.encode(tokenizer, example.messages, tools=example.tools))


def pair_sides(example: Example) -> tuple[list[Any], list[Any]]:
    """A preference pair's two conversations: the prompt with the chosen answer, and with the rejected one."""
    assert example.rejected is not None
    return example.messages, [*example.messages[:-1], example.rejected]


def pair_rows(tokenizer: Any, example: Example) -> list[Row]:
    """A pair's two sides as training tokenizes them (`batches.TokenizedPairs`): only the final answer learned, as
    the turns both sides share cancel out of a preference loss."""
    return [
        chat_template.training_tokens(tokenizer, side, last_only=True, tools=example.tools)
        for side in pair_sides(example)
    ]


def first_learned(mask: list[int]) -> int:
    """The first position whose token is learned (position 0 never is: nothing comes before it)."""
    return next((i for i in range(1, len(mask)) if mask[i]), len(mask))


def fit_rows(rows: list[Row], max_seq_length: int, truncate: str = "none") -> tuple[list[Row], int]:
    """Rows that share one prompt (a pair's two sides, or one chat sequence) cut as training cuts them, and how many
    ids were cut from the prompt's start. Training reads max_seq_length ids and predicts one more, so a row keeps
    max_seq_length + 1. With truncate "prompt" the prompt's start goes first, by the same count in every row so the
    sides still share their prompt, keeping the id just before the first answer id (it predicts that one); what is
    still too long loses its end, the answer's end included."""
    limit = max_seq_length + 1
    excess = max(len(ids) for ids, _ in rows) - limit
    if excess <= 0:
        return rows, 0
    start = 0
    if truncate == "prompt":
        start = max(0, min(excess, min(first_learned(mask) for _, mask in rows) - 1))
    return [(ids[start : start + limit], mask[start : start + limit]) for ids, mask in rows], start


def keeps_answers(rows: list[Row]) -> bool:
    """Whether every row still learns a token: a row cut down to its prompt teaches nothing, and a pair missing
    either answer compares nothing."""
    return all(any(mask[1:]) for _, mask in rows)


def measure(tokenizer: Any, example: Example, max_seq_length: int, truncate: str = "none") -> Measure:
    """The example's tokens as training sees it, and what training's cut does to it. A pair is tokenized and cut
    exactly as training does (`pair_rows`, `fit_rows`), so the pairs counted here as left out are the ones training
    leaves out; a chat is counted as cut (which of its turns survive depends on the run's mask_prompt)."""
    if example.rejected is None:
        n = token_length(tokenizer, example)
        cut_start = truncate == "prompt" and example.text is None and is_truncated(n, max_seq_length)
        return Measure(n, prompt_cut=cut_start)
    rows = pair_rows(tokenizer, example)
    kept, start = fit_rows(rows, max_seq_length, truncate)
    return Measure(max(len(ids) for ids, _ in rows), start > 0, not keeps_answers(kept))


def require_tool_support(tokenizer: Any, examples: Iterable[Example], model: str) -> None:
    """Refuse tool conversations for a model whose chat template cannot write them: it would drop the tools and
    calls silently (plain ChatML) or fail on them, and the model would learn answers to questions it never saw."""
    first = next((ex for ex in examples if ex.uses_tools()), None)
    if first is not None and not chat_template.supports_tools(tokenizer):
        raise UserError(
            f"{first.where} uses tools (tool definitions, calls or results), but the chat template of {model!r} "
            "cannot render them; use a model whose template supports tools (Qwen2.5, Qwen3, Llama 3.1), or one "
            "whose tokenizer_config.json has such a chat_template"
        )


def _nearest_rank(ordered: list[int], q: float) -> int:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def split_stats(lengths: list[int], max_seq_length: int) -> SplitStats:
    if not lengths:
        return SplitStats(0)
    ordered = sorted(lengths)
    return SplitStats(
        len(ordered),
        ordered[0],
        _nearest_rank(ordered, 0.5),
        _nearest_rank(ordered, 0.95),
        ordered[-1],
        sum(is_truncated(n, max_seq_length) for n in ordered),
        round(sum(ordered) / len(ordered), 1),
    )


def compute(splits: Mapping[str, Sequence[Example]], how: StatsSettings, tokenizer: Any = None) -> DataStats:
    """Token-length statistics per split (the tokenizer is loaded from `how.model` unless given)."""
    return fit_splits(splits, how, tokenizer)[1]


def _fate(m: Measure, how: StatsSettings) -> str:
    return "skipped" if how.skip_long else "left_out" if m.left_out else "prompt_cut" if m.prompt_cut else "cut"


def fit_splits(
    splits: Mapping[str, Sequence[Example]], how: StatsSettings, tokenizer: Any = None
) -> tuple[dict[str, list[Example]], DataStats]:
    """The splits as they will be stored, and their token-length statistics: with `how.skip_long`, without the
    examples longer than max_seq_length (listed in `DataStats.long` as "skipped", by where they came from)."""
    measures = _measures(splits, how, tokenizer)
    long = [
        Long(ex.where, m.tokens, _fate(m, how))
        for name, examples in splits.items()
        for ex, m in zip(examples, measures[name])
        if is_truncated(m.tokens, how.max_seq_length)
    ]
    kept = {name: list(zip(examples, measures[name])) for name, examples in splits.items()}
    if how.skip_long:
        kept = {
            name: [(ex, m) for ex, m in pairs if not is_truncated(m.tokens, how.max_seq_length)]
            for name, pairs in kept.items()
        }
    out = {name: _split_stats([m for _, m in pairs], how.max_seq_length) for name, pairs in kept.items()}
    stats = DataStats(how.model, how.max_seq_length, out, how.truncate, long)
    return {name: [ex for ex, _ in pairs] for name, pairs in kept.items()}, stats


def _split_stats(measures: list[Measure], max_seq_length: int) -> SplitStats:
    return dataclasses.replace(
        split_stats([m.tokens for m in measures], max_seq_length),
        left_out=sum(m.left_out for m in measures),
        prompt_cut=sum(m.prompt_cut for m in measures),
    )


def _measures(splits: Mapping[str, Sequence[Example]], how: StatsSettings, tokenizer: Any) -> dict[str, list[Measure]]:
    """Every example measured (`measure`), or every conversation the model's chat template cannot render."""
    from jinja2 import TemplateError

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(how.model)
    chats = any(ex.text is None for examples in splits.values() for ex in examples)
    if chats and not chat_template.has_template(tokenizer):
        raise UserError(
            f"model {how.model!r} has no chat template to measure chat examples with; "
            "name a chat model with --model, or use --no-stats"
        )
    require_tool_support(tokenizer, (ex for examples in splits.values() for ex in examples), how.model)
    out: dict[str, list[Measure]] = {}
    problems = []
    total = sum(map(len, splits.values()))
    with tqdm(total=total, desc="token lengths", unit="ex", leave=False, disable=None) as bar:
        for name, examples in splits.items():
            out[name] = []
            for ex in examples:
                try:
                    out[name].append(measure(tokenizer, ex, how.max_seq_length, how.truncate))
                except (ValueError, TemplateError) as e:
                    problems.append(f"{ex.where}: the chat template of {how.model} refuses this conversation: {e}")
                bar.update()
    if problems:
        raise DataError(problems)
    return out


def format_stats(stats: DataStats) -> str:
    lines = [f"token lengths under {stats.model} (max_seq_length {stats.max_seq_length}):"]
    width = max(len(str(s.examples)) for s in stats.splits.values())
    for name, s in stats.splits.items():
        line = f"  {name:<5} {s.examples:>{width}} examples"
        if s.examples:
            line += f"  min {s.min}  median {s.median}  p95 {s.p95}  max {s.max}  truncated {s.truncated}"
            line += f" (left out {s.left_out})" if s.left_out else ""
        lines.append(line)
    if left_out := sum(s.left_out for s in stats.splits.values()):
        lines.append(
            f"  {left_out} pairs have prompts that fill max_seq_length {stats.max_seq_length}: training leaves them "
            "out (no answer token is left); raise max_seq_length, or cut their prompts' start"
            " (prepare --truncate prompt; in the studio, the cut-the-prompt fix)"
        )
    return "\n".join(lines)
