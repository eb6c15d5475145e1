"""A recipe's tasks answered by one engine (`serve --task RECIPE`): each input wrapped in its task's template from
recipe.yaml, the very text `prepare --recipe` trained on, and answered greedily, so the same input always gets the
same output and a bounded LRU cache answers repeats without generating. A list is answered in one batched
generation. The routes are in `tasks.py`.

A task with a pattern holds its answers to it as they are generated (`constrain`, on by default where the recipe has a
pattern): a tuned model's near miss (a field left out, a hashrate without its decimal) becomes an answer the pattern
parses. A request may turn that off (`"constrain": false`) or hold its answers to its own `regex` or `choice`."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Any

from mlx_ft.data import recipes
from mlx_ft.data.formats import with_system
from mlx_ft.errors import Invalid, NotFound, UserError
from mlx_ft.inference import constrain
from mlx_ft.inference.engine import Engine, TooLong
from mlx_ft.inference.sampling import Constraint, Sampling

CACHE_SIZE = 4096  # answers kept; one is a few hundred bytes
MAX_BATCH = 256  # inputs in one request
MAX_INPUT_CHARS = 4000  # one input; the context window is checked too


@dataclass(frozen=True)
class Served:
    recipe: recipes.Recipe
    task: recipes.Task


class TaskService:
    """The tasks of one or more recipes answered by one engine, with a cache of recent answers."""

    def __init__(
        self, engine: Engine | None, refs: list[str], cache_size: int = CACHE_SIZE, max_batch: int = MAX_BATCH
    ) -> None:
        self.engine, self.cache_size, self.max_batch = engine, cache_size, max_batch
        self.tasks: dict[str, Served] = {}
        for ref in refs:
            recipe = recipes.load(ref)
            for name, task in recipe.tasks.items():
                if name in self.tasks:
                    raise UserError(f"task {name!r} is in both recipe {self.tasks[name].recipe.name} and {recipe.name}")
                self.tasks[name] = Served(recipe, task)
        routes = [s.task.get_route.path for s in self.tasks.values() if s.task.get_route]
        if len(routes) != len(set(routes)):
            raise UserError(f"two tasks declare the same get_route path: {', '.join(routes)}")
        self._cache: OrderedDict[tuple[str, str, Constraint | None], dict[str, Any]] = OrderedDict()
        self._cache_lock = Lock()
        self._patterns = {  # each task's own constraint, compiled once: one that cannot stops serve before loading
            name: constrain.for_task(s.recipe.path, s.task) for name, s in self.tasks.items() if s.task.constrain
        }

    def served(self, name: str) -> Served:
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none (start serve with --task RECIPE)"
            raise NotFound(f"unknown task {name!r}; served: {known}")
        return self.tasks[name]

    def constraint(
        self, name: str, hold: bool | None = None, regex: Any = None, choice: Any = None
    ) -> Constraint | None:
        """What task `name`'s answers are held to: `regex` or `choice` when given, else its pattern when `hold` (None:
        as the recipe says), else nothing."""
        task = self.served(name).task
        if regex is not None and choice is not None:
            raise Invalid("give at most one of 'regex' and 'choice'")
        if (regex is not None or choice is not None) and hold is False:
            raise Invalid("'constrain': false with a 'regex' or 'choice' to hold the answers to: which one?")
        if regex is not None:
            held = constrain.regex(regex)
        elif choice is not None:
            held = constrain.choice(choice)
        elif hold if hold is not None else task.constrain:
            if name not in self._patterns:
                raise Invalid(f"task {name!r} has no pattern to hold its answers to; send a 'regex' or 'choice'")
            held = self._patterns[name]
        else:
            return None
        assert self.engine is not None
        constrain.check(held, self.engine.tokenizer)  # here, not in the generation thread (the first one takes ~1 s)
        return held

    def run(self, name: str, inputs: list[str], held: Constraint | None) -> list[dict[str, Any]]:
        """One result per input, `{"output", "fields", "parsed", "constrained", "cached"}`, in order; repeats from
        the cache. `held`: what the answers are held to (`constraint()`)."""
        served = self.served(name)
        if not inputs:
            raise Invalid("'inputs' is empty")
        if len(inputs) > self.max_batch:
            raise Invalid(f"{len(inputs)} inputs in one request; at most {self.max_batch}")
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text.strip():
                raise Invalid(f"input {i} must be a non-empty string")
            if len(text) > MAX_INPUT_CHARS:
                raise Invalid(f"input {i} is {len(text)} characters; at most {MAX_INPUT_CHARS}")
        results: dict[str, dict[str, Any]] = {}
        with self._cache_lock:
            for text in inputs:
                if (name, text, held) in self._cache:
                    self._cache.move_to_end((name, text, held))
                    results[text] = {**self._cache[(name, text, held)], "cached": True}
        todo = list(dict.fromkeys(t for t in inputs if t not in results))  # a repeat inside one batch is made once
        if todo:
            task = served.task
            system = self.engine.loaded.system or served.recipe.system
            try:
                prompts = [
                    self.engine.prompt(
                        with_system([{"role": "user", "content": task.render(t)}], system), task.max_tokens
                    )
                    for t in todo
                ]
            except TooLong as e:
                raise Invalid(str(e)) from None
            outputs = self.engine.answer_many(prompts, Sampling(max_tokens=task.max_tokens, constraint=held))
            with self._cache_lock:
                for text, output in zip(todo, outputs):
                    output = output.strip()
                    fields = task.fields(output)
                    result = {
                        "output": output,
                        "fields": fields,
                        "parsed": None if task.pattern is None else fields is not None,
                        "constrained": held is not None,
                    }
                    results[text] = {**result, "cached": False}
                    self._cache[(name, text, held)] = result
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return [results[t] for t in inputs]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "recipe": s.recipe.name,
                "max_tokens": s.task.max_tokens,
                "fields": list(s.task.pattern.groupindex) if s.task.pattern else None,
                "constrained": s.task.constrain,
                "get_route": dataclasses.asdict(s.task.get_route) if s.task.get_route else None,
            }
            for name, s in self.tasks.items()
        ]
