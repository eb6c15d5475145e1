"""Recipes: a task a model is trained for, declared once in `recipes/<name>/recipe.yaml`.

A recipe names its tasks; each task has the instruction template that wraps a raw input into the user's message.
That template is the one source of truth for the wording: `prepare --recipe` renders the training data with it, and
whatever later serves the task must send exactly the same text, or the model sees prompts it was never trained on.

    tasks:
      miner-name:
        template: "…矿机信息：{input}"   # {input} is replaced by the raw input, nothing else is interpreted
        max_tokens: 48                   # generation settings for the task (greedy)
        pattern: '(?P<brand>\\S+) …'      # optional: named fields parsed from the model's answer
        constrain: true                  # hold served answers to the pattern (default: true when there is one)
        get_route:                       # optional: a GET route for clients of an older service (`serve --task`)
          path: /model_generate/get-model-name
          param: simple_name             # the query parameter holding the input
          result: model_name             # the JSON key of the answer (the input comes back under `param`)
    plan:                                # optional: what `train --recipe NAME` trains, stage by stage, each from
      - {name: sft, config: lora_config.yaml}    # the run before it (default: lora_config.yaml alone)
      - {name: grpo, config: grpo_config.yaml}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlx_ft.errors import UserError
from mlx_ft.resources import local_or_shipped

PLACEHOLDER = "{input}"
RECIPE_FILE = "recipe.yaml"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class GetRoute:
    path: str
    param: str
    result: str


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    max_tokens: int = 64
    pattern: re.Pattern[str] | None = None
    get_route: GetRoute | None = None
    constrain: bool = False  # answers are held to `pattern` as they are generated (structured outputs)

    def render(self, text: str) -> str:
        """The user's message for the raw input `text`."""
        return self.template.replace(PLACEHOLDER, text)

    def fields(self, answer: str) -> dict[str, str | float] | None:
        """The pattern's named fields in `answer` (numbers as numbers), None when it does not match or the task has
        no pattern."""
        m = self.pattern.fullmatch(answer.strip()) if self.pattern else None
        if m is None:
            return None
        return {k: float(v) if v is not None and NUMBER.fullmatch(v) else v for k, v in m.groupdict().items()}


@dataclass(frozen=True)
class Stage:
    """One training stage of a recipe's plan: its name (the run folder's suffix) and its config file."""

    name: str
    config: Path


STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_CONFIG = "lora_config.yaml"


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path  # the recipe.yaml
    tasks: dict[str, Task]
    system: str | None = None  # system prompt for every conversation of the recipe
    plan: tuple[Stage, ...] = ()  # what `train --recipe` trains, in order (empty: nothing to train)

    def task(self, name: str | None) -> Task:
        """The task called `name`; a recipe with one task also answers to no name. ValueError otherwise."""
        if name is None:
            if len(self.tasks) == 1:
                return next(iter(self.tasks.values()))
            raise ValueError(f"missing field 'task': recipe {self.name} has several ({', '.join(self.tasks)})")
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; recipe {self.name} has: {', '.join(self.tasks)}")
        return self.tasks[name]


def _task(name: str, spec: Any, where: Path) -> Task:
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), str):
        raise UserError(f"{where}: task {name!r} needs a `template` string")
    template = spec["template"]
    if template.count(PLACEHOLDER) != 1:
        raise UserError(f"{where}: task {name!r}: the template must contain {PLACEHOLDER} exactly once")
    unknown = set(spec) - {"template", "max_tokens", "pattern", "get_route", "constrain"}
    if unknown:
        raise UserError(f"{where}: task {name!r}: unknown keys {', '.join(sorted(unknown))}")
    try:
        pattern = re.compile(spec["pattern"]) if spec.get("pattern") else None
    except re.error as e:
        raise UserError(f"{where}: task {name!r}: bad pattern: {e}") from None
    max_tokens = spec.get("max_tokens", 64)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise UserError(f"{where}: task {name!r}: max_tokens must be a positive integer")
    constrain = spec.get("constrain", pattern is not None)
    if not isinstance(constrain, bool):
        raise UserError(f"{where}: task {name!r}: constrain must be true or false")
    if constrain and pattern is None:
        raise UserError(f"{where}: task {name!r}: constrain needs a pattern to hold the answers to")
    return Task(name, template, max_tokens, pattern, _get_route(name, spec.get("get_route"), where), constrain)


def _get_route(name: str, spec: Any, where: Path) -> GetRoute | None:
    if spec is None:
        return None
    keys = ("path", "param", "result")
    if not isinstance(spec, dict) or set(spec) != set(keys) or not all(isinstance(spec[k], str) for k in keys):
        raise UserError(f"{where}: task {name!r}: get_route needs exactly path, param and result (strings)")
    if not spec["path"].startswith("/") or spec["path"].startswith(("/api/", "/v1/")):
        raise UserError(f"{where}: task {name!r}: get_route path must start with / and stay out of /api/ and /v1/")
    return GetRoute(spec["path"], spec["param"], spec["result"])


def load(ref: str | Path) -> Recipe:
    """A recipe from its folder, its recipe.yaml, or the name of a shipped one (`miners`)."""
    path = Path(ref)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        path = local_or_shipped(f"recipes/{ref}")
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"no recipe at {ref} (a folder with {RECIPE_FILE}, the file itself, or a shipped recipe name)")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), dict) or not spec["tasks"]:
        raise UserError(f"{path}: a recipe needs a `tasks` mapping with at least one task")
    system = spec.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{path}: `system` must be a string")
    tasks = {str(name): _task(str(name), task, path) for name, task in spec["tasks"].items()}
    return Recipe(str(spec.get("name") or path.parent.name), path, tasks, system, _plan(spec.get("plan"), path))


def _plan(spec: Any, where: Path) -> tuple[Stage, ...]:
    """The recipe's training stages: as its `plan` lists them, else its lora_config.yaml alone (if it has one). Each
    config file lies in the recipe's folder."""
    if spec is None:
        default = where.parent / DEFAULT_CONFIG
        return (Stage("sft", default),) if default.is_file() else ()
    if not isinstance(spec, list) or not spec:
        raise UserError(f"{where}: `plan` must be a list of stages, e.g. [{{name: sft, config: {DEFAULT_CONFIG}}}]")
    stages: list[Stage] = []
    for i, stage in enumerate(spec):
        if not isinstance(stage, dict) or set(stage) != {"name", "config"}:
            raise UserError(f"{where}: plan[{i}] needs exactly a name and a config file")
        name, config = stage["name"], stage["config"]
        if not isinstance(name, str) or not STAGE_NAME.fullmatch(name) or any(s.name == name for s in stages):
            raise UserError(f"{where}: plan[{i}]: the name must be a new short word of a-z, 0-9, _ and -")
        if not isinstance(config, str) or Path(config).name != config or not (where.parent / config).is_file():
            raise UserError(f"{where}: plan[{i}]: config must name a file in the recipe's folder, got {config!r}")
        stages.append(Stage(name, where.parent / config))
    return tuple(stages)
