"""Token lengths of prepared splits as the model will see them: chat examples rendered by the model's own chat
template, text examples by its plain tokenizer (both through `chat_template`, as training tokenizes them). `prepare`
prints and records them, so that a max_seq_length that cuts many examples shows before training rather than during
it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlx_ft import chat_template, models
from mlx_ft import config as config_mod
from mlx_ft.data.formats import Example
from mlx_ft.data.readers import DataError
from mlx_ft.errors import UserError


@dataclass(frozen=True)
class StatsSettings:
    model: str  # model source, as `train` takes it
    max_seq_length: int


@dataclass(frozen=True)
class SplitStats:
    examples: int
    min: int | None = None
    median: int | None = None  # the lower median: a length some example really has
    p95: int | None = None
    max: int | None = None
    truncated: int = 0  # examples the trainer would cut at max_seq_length
    mean: float | None = None


@dataclass(frozen=True)
class DataStats:
    model: str
    max_seq_length: int
    splits: dict[str, SplitStats]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings(model: str | None = None, max_seq_length: int | None = None) -> StatsSettings:
    """The given model and length, the missing ones taken from the config file `train` would read."""
    if model is None or max_seq_length is None:
        cfg = config_mod.load(config_mod.default_path())
        model = cfg.model if model is None else model
        max_seq_length = cfg.max_seq_length if max_seq_length is None else max_seq_length
    if max_seq_length < 1:
        raise UserError("--max-seq-length must be at least 1")
    return StatsSettings(model, max_seq_length)


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
        return max(len(chat_template.encode(tokenizer, side, tools=example.tools)) for side in pair_sides(example))
    return len(chat_template.encode(tokenizer, example.messages, tools=example.tools))


def pair_sides(example: Example) -> tuple[list[Any], list[Any]]:
    """A preference pair's two conversations: the prompt with the chosen answer, and with the rejected one."""
    assert example.rejected is not None
    return example.messages, [*example.messages[:-1], example.rejected]


def prompt_problem(tokenizer: Any, example: Example, max_seq_length: int) -> str | None:
    """Why a pair cannot train at max_seq_length: its prompt leaves no room for an answer (SFT examples are cut
    and counted instead; a pair cut to its prompt compares nothing)."""
    if example.rejected is None:
        return None
    n = len(chat_template.prompt_ids(tokenizer, example.messages[:-1], example.tools))
    if n < max_seq_length:
        return None
    return (
        f"the prompt of this pair takes {n} tokens, and max_seq_length {max_seq_length} leaves no room for its "
        "answers; shorten the prompt or raise --max-seq-length"
    )


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
    from jinja2 import TemplateError

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(how.model)
    chats = any(ex.text is None for examples in splits.values() for ex in examples)
    if chats and not chat_template.has_template(tokenizer):
        raise UserError(
            f"model {how.model!r} has no chat template to measure chat examples with; "
            "name a chat model with --model, or use --no-stats"
        )
    require_tool_support(tokenizer, (ex for examples in splits.values() for ex in examples), how.model)
    out, problems = {}, []
    total = sum(map(len, splits.values()))
    with tqdm(total=total, desc="token lengths", unit="ex", leave=False, disable=None) as bar:
        for name, examples in splits.items():
            lengths = []
            for ex in examples:
                try:
                    lengths.append(token_length(tokenizer, ex))
                    if problem := prompt_problem(tokenizer, ex, how.max_seq_length):
                        problems.append(f"{ex.where}: {problem}")
                except (ValueError, TemplateError) as e:
                    problems.append(f"{ex.where}: the chat template of {how.model} refuses this conversation: {e}")
                bar.update()
            out[name] = split_stats(lengths, how.max_seq_length)
    if problems:
        raise DataError(problems)
    return DataStats(how.model, how.max_seq_length, out)


def format_stats(stats: DataStats) -> str:
    lines = [f"token lengths under {stats.model} (max_seq_length {stats.max_seq_length}):"]
    width = max(len(str(s.examples)) for s in stats.splits.values())
    for name, s in stats.splits.items():
        line = f"  {name:<5} {s.examples:>{width}} examples"
        if s.examples:
            line += f"  min {s.min}  median {s.median}  p95 {s.p95}  max {s.max}  truncated {s.truncated}"
        lines.append(line)
    return "\n".join(lines)
