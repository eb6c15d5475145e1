"""A recipe's tasks answered by one engine (`serve --task RECIPE`): each input wrapped in its task's template from
recipe.yaml, the very text `prepare --recipe` trained on, and answered greedily, so the same input always gets the
same output and a bounded LRU cache answers repeats without generating. A list is answered in one batched
generation. The routes are in `tasks.py`."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Any

from mlx_ft.data import recipes
from mlx_ft.data.formats import with_system
from mlx_ft.errors import Invalid, NotFound, UserError
from mlx_ft.inference.engine import Engine, TooLong
from mlx_ft.inference.sampling import Sampling

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
        self._cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._cache_lock = Lock()

    def served(self, name: str) -> Served:
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none (start serve with --task RECIPE)"
            raise NotFound(f"unknown task {name!r}; served: {known}")
        return self.tasks[name]

    def run(self, name: str, inputs: list[str]) -> list[dict[str, Any]]:
        """One result per input, `{"output", "fields", "parsed", "cached"}`, in order; repeats from the cache."""
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
                if (name, text) in self._cache:
                    self._cache.move_to_end((name, text))
                    results[text] = {**self._cache[(name, text)], "cached": True}
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
            outputs = self.engine.answer_many(prompts, Sampling(temp=0.0, max_tokens=task.max_tokens))
            with self._cache_lock:
                for text, output in zip(todo, outputs):
                    output = output.strip()
                    fields = task.fields(output)
                    result = {
                        "output": output,
                        "fields": fields,
                        "parsed": None if task.pattern is None else fields is not None,
                    }
                    results[text] = {**result, "cached": False}
                    self._cache[(name, text)] = result
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
                "get_route": dataclasses.asdict(s.task.get_route) if s.task.get_route else None,
            }
            for name, s in self.tasks.items()
        ]
