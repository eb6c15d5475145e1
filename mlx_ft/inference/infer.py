"""`infer`: answer one prompt (streamed to the terminal) or a file of them (batched), with a run or any model."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mlx_ft.atomic import write_text
from mlx_ft.chat_template import Message
from mlx_ft.data import DataError, check_conversation, read_records, recipes
from mlx_ft.data.formats import with_system
from mlx_ft.errors import UserError
from mlx_ft.inference import constrain, generation
from mlx_ft.inference.sampling import Constraint, Sampling
from mlx_ft.models import loader

# A batch line's text, when it has no `messages`; "text" is what each line of a .txt file becomes (one prompt a line).
PROMPT_KEYS = ("prompt", "input", "question", "instruction", "text")


def conversation(text: str, system: str | None) -> list[Message]:
    return with_system([{"role": "user", "content": text}], system)


@dataclass(frozen=True)
class TaskRef:
    """`--task RECIPE[:TASK]`: inputs are wrapped in that task's template, as the recipe's training data was, and
    (with `hold`) answers held to the task's pattern where the recipe says so."""

    recipe: recipes.Recipe
    task: str | None = None
    hold: bool = True

    @classmethod
    def parse(cls, spec: str, hold: bool = True) -> TaskRef:
        ref, _, task = spec.partition(":")
        recipe = recipes.load(ref)
        if task:
            try:
                recipe.task(task)
            except ValueError as e:
                raise UserError(str(e)) from None
        return cls(recipe, task or None, hold)

    def render(self, text: str, task: str | None = None) -> str:
        """`text` in the template of `task` (a batch line's own), else of the one named with --task."""
        return self.recipe.task(task or self.task).render(text)

    def held(self, task: str | None, tokenizer: Any) -> Constraint | None:
        """What an answer of `task` (a batch line's own, else the one named with --task) is held to."""
        found = self.recipe.task(task or self.task)
        return constrain.for_task(self.recipe.path, found, tokenizer) if self.hold else None


def _batch_prompt(value: Any, ref: TaskRef | None = None) -> list[Message]:
    """The conversation to answer on a batch line: `messages` (a final assistant turn is dropped: it is the expected
    answer), or one of PROMPT_KEYS as a single user message (in its task's template with --task; a line's own
    `task` field picks among a recipe's tasks)."""
    if not isinstance(value, dict):
        raise ValueError("a line must be a JSON object")
    if "messages" in value:
        messages = value["messages"]
        if not (
            isinstance(messages, list)
            and all(
                isinstance(m, dict)
                and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant", "tool")
                for m in messages
            )
        ):
            raise ValueError('"messages" must be a list of {"role", "content"} objects')
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        check_conversation([*messages, {"role": "assistant", "content": "-"}])
        return messages
    for key in PROMPT_KEYS:
        if isinstance(value.get(key), str) and value[key].strip():
            text = ref.render(value[key], value.get("task")) if ref else value[key]
            return [{"role": "user", "content": text}]
    raise ValueError(f'expected "messages" or a text field ({", ".join(PROMPT_KEYS)})')


def read_batch(path: Path, ref: TaskRef | None = None) -> tuple[list[Any], list[list[Message]]]:
    """The lines of a batch file and the conversation each asks to answer (file:line errors for bad lines)."""
    records, bad = read_records(path)
    rows, prompts = [], []
    problems = [f"{b.where}: {b.value}" for b in bad]
    for rec in records:
        try:
            prompts.append(_batch_prompt(rec.value, ref))
            rows.append(rec.value)
        except ValueError as e:
            problems.append(f"{rec.where}: {e}")
    if problems:
        raise DataError(problems)
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows, prompts


def run_one(loaded: loader.Loaded, text: str, sampling: Sampling, system: str | None, out: TextIO | None = None) -> str:
    """Stream the answer to `text` onto `out` (default: the sys.stdout of the moment) as it is generated; return
    it."""
    out = out or sys.stdout  # looked up per call: a default bound at import would outlive a redirected stdout
    pieces = []
    for chunk in generation.stream(loaded.model, loaded.tokenizer, conversation(text, system), sampling):
        out.write(chunk.text)
        out.flush()
        pieces.append(chunk.text)
    out.write("\n")
    out.flush()
    if chunk.finish_reason == "length":
        print(f"mlx_ft: stopped at --max-tokens {sampling.max_tokens}", file=sys.stderr)
    return "".join(pieces)


def run_file(
    loaded: loader.Loaded, src: Path, dest: Path, sampling: Sampling, system: str | None, ref: TaskRef | None = None
) -> int:
    """Answer every line of `src` in batches, with progress lines on stderr; write each line back with an `output`
    field to `dest` (atomically, once all are done). Returns how many were answered."""
    rows, prompts = read_batch(src, ref)
    held: list[Constraint | None] | None = None
    if ref is not None:  # a line with its own `messages` is not a task's input: nothing to hold it to
        compiled: dict[Any, Constraint | None] = {}
        held = []
        for row in rows:
            if "messages" in row:
                held.append(None)
                continue
            task = row.get("task")
            if task not in compiled:
                compiled[task] = ref.held(task, loaded.tokenizer)
            held.append(compiled[task])
    conversations = [with_system(p, system) for p in prompts]
    prompt_ids = generation.prompts_for(loaded.tokenizer, conversations)
    answers = [
        a.text
        for a in generation.answers(
            loaded.model, loaded.tokenizer, prompt_ids, sampling, stage="answering", constraints=held
        )
    ]
    write_text(dest, "".join(json.dumps({**r, "output": a}, ensure_ascii=False) + "\n" for r, a in zip(rows, answers)))
    return len(rows)
